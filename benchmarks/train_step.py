"""Steps/second of the grokking train step, and its FLOP/s as a fraction of a plain matmul's.

Both are measured in the same process, alternating, so the ratio holds on any machine:
  python -m benchmarks.train_step
  python -m benchmarks.train_step --batch_sizes=64,512 --repeats=5

With --steps_per_call_ab=1,8 it instead compares steps per host dispatch, each against the
first value, in one process: steps/s of the training loop's dispatch (host batch stacking, one
transfer and one call per `steps_per_call` steps) for the grokking demo's step and the default
knowledge_mixing run's small LM, alternating rounds; then (unless --nodemo) the wall seconds
until the grokking demo generalises, run once per value in a fresh process:
  python -m benchmarks.train_step --steps_per_call_ab=1,8

FLOPs per step are its matrix products' (`common.matmul_flops`; XLA's cost analysis counts a
loop body once, and the sliced step on a CPU is a loop).
"""

from __future__ import annotations

import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import grain
import jax
import numpy as np
from absl import app, flags

from benchmarks.common import matmul_flops, positive_ints, time_matmul
from experiments import grokking, knowledge_mixing
from phasemix.analysis import transitions
from phasemix.base import run_io
from phasemix.training import losses, presets, sharding, train

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "512"], "Batch sizes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating timing rounds (median is reported).")
_STEPS = flags.DEFINE_integer("steps", 50, "Train steps per timing round.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 1024, "Size of the square float32 matmul peak.")
_AB = flags.DEFINE_list("steps_per_call_ab", [], "Steps per call to compare, the first being "
                        "the baseline (e.g. 1,8); empty: the FLOP/s table instead.")
_DEMO = flags.DEFINE_boolean("demo", True, "With --steps_per_call_ab: also time the grokking "
                             "demo until it generalises (minutes per value).")


def grokking_step(batch_size: int):
    config = grokking.get_config()
    config.batch_size = batch_size
    mesh = sharding.make_mesh()
    task = grokking.make_task(config, jax.device_count())
    programs = train.build_programs(config, task, mesh)
    batches = [sharding.put_batch(task.train_batches[i], mesh) for i in range(4)]
    state = programs.init(jax.random.key(0))
    flops = matmul_flops(programs.step, state, batches[0])
    return programs.step, state, batches, flops


def time_steps(step, state, batches, num_steps: int):
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(num_steps):
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    return state, num_steps / (time.perf_counter() - start)


def loop_programs(config, task: train.Task):
    """The loop's multi-step program, its initial state, and the batches it cycles through."""
    mesh = sharding.make_mesh()
    programs = train.build_programs(config, task, mesh)
    return programs, mesh, programs.init(jax.random.key(0))


def small_lm_task() -> tuple:
    """The default knowledge_mixing run's model and batch shape, on random tokens (no data)."""
    config = knowledge_mixing.get_config()
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.seq_len)
    batches = [{"inputs": rng.integers(0, config.vocab_size, shape).astype(np.int32),
                "targets": rng.integers(0, config.vocab_size, shape).astype(np.int32),
                "loss_mask": np.ones(shape, np.float32)} for _ in range(8)]
    task = train.Task(model_config=presets.causal_lm_config(config, config.vocab_size),
                      loss_fn=losses.masked_token_loss,
                      train_batches=grain.MapDataset.source(batches), eval_sets={},
                      summarize=lambda rows: {})
    return config, task


def dispatch_rate(programs, mesh, state, batches: list, num_steps: int):
    """Steps/s of the loop's dispatch: per call, the host stacks `steps_per_call` batches and
    puts them on the device in one transfer (as train._train_runs does)."""
    k = programs.steps_per_call

    def call(state, i):
        host = jax.tree.map(lambda *xs: np.stack(xs),
                            *[batches[(i + j) % len(batches)] for j in range(k)])
        return programs.steps(state, sharding.put_batch(host, mesh, batch_axis=1),
                              np.int32(k), np.bool_(i == 0))

    state, means = call(state, 0)  # compiles
    jax.block_until_ready(means)
    calls = max(num_steps // k, 1)
    start = time.perf_counter()
    for c in range(calls):
        state, means = call(state, c * k)
    jax.block_until_ready(means)
    return state, calls * k / (time.perf_counter() - start)


def demo_seconds(steps_per_call: int, workdir: pathlib.Path) -> tuple[float | None, float]:
    """(seconds until test accuracy 0.95, seconds for all steps) of the grokking demo."""
    subprocess.run([sys.executable, "-m", "experiments.grokking", f"--workdir={workdir}",
                    f"--config.steps_per_call={steps_per_call}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=pathlib.Path(__file__).resolve().parents[1])
    rows = run_io.read_metrics(workdir)
    step = transitions.first_step_at_least(rows, "test_accuracy", grokking.GENERALIZED_AT)
    return (next((r["elapsed_seconds"] for r in rows if r["step"] == step), None),
            rows[-1]["elapsed_seconds"])


def steps_per_call_ab(values: list[int]) -> None:
    print(f"devices: {jax.devices()}; steps per call {values}, ratios against {values[0]}")
    grok = grokking.get_config()
    setups = {"grokking demo step": (grok, grokking.make_task(grok, jax.device_count())),
              "small LM (knowledge_mixing)": small_lm_task()}
    for name, (config, task) in setups.items():
        batches = [task.train_batches[i] for i in range(8)]
        runners = {}
        for k in values:
            config = config.copy_and_resolve_references()
            config.steps_per_call, config.eval_every = k, max(values)
            runners[k] = list(loop_programs(config, task))
        rates = {k: [] for k in values}
        for _ in range(_REPEATS.value):  # alternate, so drifts in clock speed hit all alike
            for k, (programs, mesh, state) in runners.items():
                runners[k][2], rate = dispatch_rate(programs, mesh, state, batches,
                                                    _STEPS.value)
                rates[k].append(rate)
        base = rates[values[0]]
        for k in values:
            ratios = [a / b for a, b in zip(rates[k], base)]
            print(f"{name:<28} steps_per_call={k:<3} {statistics.median(rates[k]):>9.1f} steps/s"
                  f"  x{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-"
                  f"{max(ratios):.2f})")
    if not _DEMO.value:
        return
    with tempfile.TemporaryDirectory(prefix="steps_per_call_ab_") as tmp:
        results = {k: demo_seconds(k, pathlib.Path(tmp) / str(k)) for k in values}
    base_grok, base_all = results[values[0]]
    for k, (grok_s, all_s) in results.items():
        ratio = f"x{base_grok / grok_s:.2f}" if grok_s and base_grok else "n/a"
        print(f"grokking demo steps_per_call={k:<3} generalised after "
              f"{grok_s if grok_s is None else round(grok_s, 1)} s ({ratio} faster), all steps "
              f"{all_s:.1f} s (x{base_all / all_s:.2f})")


def main(argv):
    del argv
    positive_ints(_BATCH_SIZES, _REPEATS, _STEPS, _MATMUL_N)
    if _AB.value:
        positive_ints(_AB)
        steps_per_call_ab([int(v) for v in _AB.value])
        return
    print(f"devices: {jax.devices()}")
    print(f"{'batch':>6} {'steps/s':>9} {'GFLOP/step':>11} {'step GFLOP/s':>13} "
          f"{'matmul GFLOP/s':>15} {'fraction':>9}")
    for batch_size in map(int, _BATCH_SIZES.value):
        step, state, batches, flops = grokking_step(batch_size)
        rates, peaks = [], []
        for _ in range(_REPEATS.value):  # alternate, so drifts in clock speed hit both alike
            state, rate = time_steps(step, state, batches, _STEPS.value)
            rates.append(rate)
            peaks.append(time_matmul(_MATMUL_N.value))
        rate, peak = statistics.median(rates), statistics.median(peaks)
        print(f"{batch_size:>6} {rate:>9.1f} {flops / 1e9:>11.3f} {rate * flops / 1e9:>13.2f} "
              f"{peak / 1e9:>15.2f} {rate * flops / peak:>9.2%}")


if __name__ == "__main__":
    app.run(main)
