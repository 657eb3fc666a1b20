"""Several optimizer steps per host dispatch: the same numbers as one step per call, window
averages of the batch metrics, exact resume inside a window, the ETA's rate, bad input."""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
import pytest

from experiments import grokking
from phasemix.base import progress, run_io, validation
from phasemix.training import checkpointing, optimizer, sharding, train
from test_train import SigtermAt, comparable


def smoke(steps_per_call: int, **overrides):
    config = grokking.get_config("smoke")  # eval_every 10, checkpoint_every 20, 60 steps
    config.steps_per_call = steps_per_call
    for key, value in overrides.items():
        config[key] = value
    return config


def checkpoint_leaves(workdir, config) -> dict[int, list[np.ndarray]]:
    """Every kept checkpoint's state (parameters, optimizer state, window sums) on the host."""
    task = grokking.make_task(config)
    abstract = train.build_programs(config, task, sharding.make_mesh()).abstract_state
    checkpointer = checkpointing.Checkpointer(workdir / run_io.CHECKPOINT_DIR)
    try:
        return {step: jax.tree.leaves(jax.device_get(checkpointer.restore_state(step, abstract)))
                for step in sorted(int(p.name) for p in (workdir / run_io.CHECKPOINT_DIR).iterdir()
                                   if p.name.isdigit())}
    finally:
        checkpointer.close()


def test_five_steps_per_call_equal_one_step_per_call_bit_for_bit(tmp_path):
    summaries, rows, leaves = {}, {}, {}
    for k in (1, 5):
        config = smoke(k)
        summaries[k] = grokking.run(config, str(tmp_path / str(k)))
        rows[k] = comparable(run_io.read_metrics(tmp_path / str(k)))
        leaves[k] = checkpoint_leaves(tmp_path / str(k), config)
    assert [r["step"] for r in rows[5]] == list(range(0, 61, 10))
    assert rows[5] == rows[1]  # every number of every row, exactly
    assert sorted(leaves[5]) == sorted(leaves[1]) == [40, 60]
    for step in leaves[1]:
        assert len(leaves[5][step]) == len(leaves[1][step])
        for a, b in zip(leaves[5][step], leaves[1][step]):
            assert a.dtype == b.dtype and np.array_equal(a, b), step
    assert summaries[5]["recompilations"] == summaries[1]["recompilations"] == 0
    assert summaries[5]["final_train_loss"] == summaries[1]["final_train_loss"]


def test_batch_metrics_are_window_means_and_lr_is_the_schedules(tmp_path):
    config = smoke(4, num_steps=30)  # calls of 4, 4, 2 steps per window of 10
    grokking.run(config, str(tmp_path))
    rows = run_io.read_metrics(tmp_path)
    # The same steps one at a time: the means of their metrics over each window.
    task = grokking.make_task(config)
    mesh = sharding.make_mesh()
    programs = train.build_programs(config, task, mesh)
    state = programs.init(jax.random.key(config.seed))
    per_step = []
    for step in range(config.num_steps):
        state, metrics = programs.step(state, sharding.put_batch(task.train_batches[step], mesh))
        per_step.append(jax.device_get(metrics))
    schedule = optimizer.make_schedule(config.opt, config.num_steps)
    assert "batch_loss" not in rows[0] and "lr" not in rows[0]  # step 0: nothing trained yet
    for row in rows[1:]:
        window = per_step[row["step"] - config.eval_every:row["step"]]
        for key in train.WINDOW_METRICS:
            mean = np.mean([m[key] for m in window], dtype=np.float64)
            assert row[key] == pytest.approx(mean, rel=1e-5), (row["step"], key)
        # The rate of the row's last update (optax counts updates from 0).
        assert row["lr"] == pytest.approx(float(schedule(row["step"] - 1)), rel=1e-6)
    assert rows[2]["lr"] == pytest.approx(config.opt.lr)  # step 20: after warmup, before decay
    assert rows[-1]["lr"] < config.opt.lr  # wsd: decaying over the last fifth


def test_a_run_resumed_inside_a_window_matches_one_never_stopped(tmp_path):
    config = smoke(5)
    grokking.run(config, str(tmp_path / "full"))
    task = grokking.make_task(config)
    # SIGTERM while batch 12 is fetched ends that call after it: step 13 is saved, mid-window.
    killed = dataclasses.replace(
        task, train_batches=grain.MapDataset.source(SigtermAt(task.train_batches, at=12)))
    with pytest.raises(train.Preempted) as stop:
        train.train_and_evaluate(config, str(tmp_path / "resumed"), killed)
    assert stop.value.step == 13
    saved = checkpoint_leaves(tmp_path / "resumed", config)
    assert sorted(saved) == [13]
    resumed = grokking.run(config, str(tmp_path / "resumed"))
    assert comparable(run_io.read_metrics(tmp_path / "resumed")) == comparable(
        run_io.read_metrics(tmp_path / "full"))
    for a, b in zip(*(checkpoint_leaves(tmp_path / w, config)[60] for w in ("resumed", "full"))):
        assert np.array_equal(a, b)
    assert resumed["recompilations"] == 0
    # Checkpoints every 7 steps: calls stop there too (5, 7, 10, 14, 15, 20, ...), same rows.
    other = smoke(5, checkpoint_every=7)
    grokking.run(other, str(tmp_path / "every7"))
    assert comparable(run_io.read_metrics(tmp_path / "every7")) == comparable(
        run_io.read_metrics(tmp_path / "full"))


@pytest.mark.parametrize("start, expected", [
    (0, 8), (8, 10), (10, 18), (18, 20), (56, 60), (57, 60),
])
def test_calls_stop_at_evaluations_checkpoints_and_the_end(start, expected):
    config = smoke(8)  # eval_every 10, checkpoint_every 20, num_steps 60
    config.checkpoint_every = 20
    assert train.call_end(start, config, 8) == expected


def test_auto_steps_per_call_never_exceeds_the_longest_call():
    assert train.steps_per_call_of(smoke(0), "cpu") == train.AUTO_STEPS_PER_CALL["cpu"]
    assert train.steps_per_call_of(smoke(0), "gpu") == 10  # 32, cut to eval_every
    assert train.steps_per_call_of(smoke(0, eval_every=50, checkpoint_every=100),
                                   "tpu") == train.AUTO_STEPS_PER_CALL_ACCELERATOR
    assert train.steps_per_call_of(smoke(3), "gpu") == 3


@pytest.mark.parametrize("value", [-1, True])  # (the config refuses a float itself)
def test_bad_steps_per_call_fails_before_writing(tmp_path, value):
    with pytest.raises(validation.ConfigError, match=f"^--config.steps_per_call={value!r}: "):
        grokking.run(smoke(value), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_the_rate_counts_from_start_rate(monkeypatch):
    clock = iter([0.0, 100.0, 110.0])  # created; start_rate after a 100 s compile; a line
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.Progress(total=1000, done=0)
    bar.start_rate(0)
    line = bar.line(500, "x")
    assert "50.0 steps/s" in line and "ETA 0m10s" in line and "elapsed 1m50s" in line
