"""The training loop shared by every experiment: pure jitted steps, data parallel, resumable.

An experiment builds a `Task` (model hyper-parameters, loss, batches, evaluation sets, summary)
and calls `train_and_evaluate(config, workdir, task)`. Re-running the same command on the same
workdir resumes from the last checkpoint; SIGTERM saves a checkpoint before exiting.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from phasemix import (batching, checkpointing, losses, model as model_lib, optimizer as
                      optimizer_lib, params as params_lib, plotting, progress, run_io, sharding,
                      validation)

LossFn = Callable[[jax.Array, dict[str, jax.Array]], tuple[jax.Array, losses.Metrics]]
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Task:
    """What an experiment hands to the loop."""

    model_config: model_lib.TransformerConfig
    loss_fn: LossFn
    train_batches: grain.MapDataset  # element i is the global batch of step i
    eval_sets: dict[str, batching.Arrays]  # name -> arrays; metrics logged as <name>_loss etc.
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]]  # metric rows -> summary


class Preempted(SystemExit):
    """Raised after a SIGTERM-triggered checkpoint; exits the process with code 143."""

    def __init__(self, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


def init_state(key: jax.Array, *, tokens_BxL: jax.Array, model: model_lib.Transformer,
               optimizer: optax.GradientTransformation, init_scale: float) -> TrainState:
    """Initial parameters, multiplied by `init_scale`, and the optimizer state."""
    params = model.init(key, tokens_BxL)["params"]
    params = params_lib.scale_params(params, init_scale)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def apply_model(model: model_lib.Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    return model.apply({"params": params}, batch["inputs"], batch.get("pad_mask"))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: model_lib.Transformer,
               optimizer: optax.GradientTransformation,
               loss_fn: LossFn) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on one global batch. Pure: the same inputs give the same outputs."""

    def loss_of(params):
        return loss_fn(apply_model(model, params, batch), batch)

    (loss, sums), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"batch_loss": loss,
               "batch_accuracy": sums["correct_sum"] / jnp.maximum(sums["count"], 1.0),
               "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, stacked: dict[str, jax.Array], *, model: model_lib.Transformer,
              loss_fn: LossFn) -> losses.Metrics:
    """Summed loss/accuracy over a whole evaluation set stacked as (num_batches, B, ...)."""

    def one_batch(batch):
        return loss_fn(apply_model(model, params, batch), batch)[1]

    per_batch = jax.lax.map(one_batch, stacked)
    return jax.tree.map(lambda x: x.sum(0), per_batch)


def weight_norms(params: Any) -> dict[str, jax.Array]:
    norms = {f"weight_norm/{k}": v for k, v in params_lib.layer_norms(params).items()}
    return {"weight_norm": params_lib.global_norm(params), **norms}


def validate_loop_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    validation.require_positive(config, "num_steps", "batch_size", "eval_every",
                                "checkpoint_every", "eval_batch_size")
    for field in ("batch_size", "eval_batch_size"):
        validation.require(config[field] % num_devices == 0, field,
                           f"must be a multiple of the {num_devices} devices", config[field])
    validation.require(config.model.init_scale > 0, "model.init_scale", "must be positive",
                       config.model.init_scale)
    optimizer_lib.validate(config.opt)


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass(frozen=True)
class Programs:
    """The jitted functions of one config on one mesh, with the shardings they use."""

    init: Callable[[jax.Array], TrainState]  # PRNG key -> initial state
    step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]
    evaluate: Callable[[Any, dict[str, jax.Array]], losses.Metrics]  # params, stacked set
    norms: Callable[[Any], dict[str, jax.Array]]
    abstract_state: TrainState  # shapes, dtypes and shardings, for restoring checkpoints


def build_programs(config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh) -> Programs:
    """jit with explicit shardings: state replicated, batches split over the 'data' axis."""
    model = model_lib.Transformer(task.model_config)
    optimizer = optimizer_lib.make_optimizer(config.opt, config.num_steps)
    tokens = jnp.asarray(task.train_batches[0]["inputs"][:1])
    init_fn = functools.partial(init_state, tokens_BxL=tokens, model=model, optimizer=optimizer,
                                init_scale=config.model.init_scale)
    abstract_state = jax.eval_shape(init_fn, jax.random.key(0))
    state_sharding = sharding.tree_replicated(abstract_state, mesh)
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_sharding)
    step = jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, loss_fn=task.loss_fn),
        in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    return Programs(
        init=jax.jit(init_fn, out_shardings=state_sharding),
        step=step,
        evaluate=jax.jit(functools.partial(eval_step, model=model, loss_fn=task.loss_fn)),
        norms=jax.jit(weight_norms),
        abstract_state=abstract_state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: Task) -> dict[str, Any]:
    """Trains `config.num_steps` steps (resuming if the workdir has a checkpoint); returns the summary."""
    mesh = sharding.make_mesh()
    validate_loop_config(config, sharding.num_data_shards(mesh))
    task.model_config.validate()
    workdir = run_io.prepare_workdir(workdir, config)
    programs = build_programs(config, task, mesh)
    eval_sets = {name: sharding.put_batch(batching.pad_and_stack(arrays, config.eval_batch_size),
                                          mesh, batch_axis=1)
                 for name, arrays in task.eval_sets.items()}

    def evaluate(params) -> dict[str, float]:
        row: dict[str, float] = {}
        for name, stacked in eval_sets.items():
            row.update(losses.finalize(jax.device_get(programs.evaluate(params, stacked)),
                                       f"{name}_"))
        row.update({k: float(v) for k, v in jax.device_get(programs.norms(params)).items()})
        return row

    checkpointer = checkpointing.Checkpointer(workdir / run_io.CHECKPOINT_DIR)
    data_iter = batching.iterate(task.train_batches)
    start_step = checkpointer.latest_step() or 0
    elapsed_before = 0.0
    if start_step:
        state = checkpointer.restore(start_step, programs.abstract_state, data_iter)
        rows = [r for r in run_io.read_metrics(workdir) if r["step"] <= start_step]
        elapsed_before = rows[-1]["elapsed_seconds"] if rows else 0.0
        logging.info("Resumed from step %d in %s", start_step, checkpointer.directory)
    else:
        state = programs.init(jax.random.key(config.seed))
    writer = run_io.MetricsWriter(workdir, resume_step=start_step)
    bar = progress.Progress(config.num_steps, start_step)
    t0 = time.monotonic() - elapsed_before

    def log_row(step: int, train_metrics: dict[str, Any] | None) -> dict[str, Any]:
        row = {"step": step, **evaluate(state.params)}
        if train_metrics is not None:
            row.update({k: float(v) for k, v in jax.device_get(train_metrics).items()})
        row["elapsed_seconds"] = time.monotonic() - t0
        if not all(np.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"non-finite metrics at step {step}: {row}")
        writer.write(row)
        shown = " ".join(f"{k}={row[k]:.3f}" for k in row if k.endswith("accuracy")
                         and not k.startswith("batch"))
        logging.info("%s", bar.line(step, shown))
        return row

    try:
        with _SigtermFlag() as sigterm:
            if start_step == 0:
                log_row(0, None)
            for step in range(start_step, config.num_steps):
                batch = sharding.put_batch(next(data_iter), mesh)
                state, metrics = programs.step(state, batch)
                done = step + 1
                if done % config.eval_every == 0 or done == config.num_steps:
                    log_row(done, metrics)
                if done % config.checkpoint_every == 0 or done == config.num_steps:
                    checkpointer.save(done, state, data_iter)
                if sigterm.raised and done < config.num_steps:
                    checkpointer.save(done, state, data_iter)
                    checkpointer.wait()
                    logging.warning("SIGTERM: saved step %d; re-run the same command to resume.",
                                    done)
                    raise Preempted(done)
        checkpointer.wait()
    finally:
        writer.close()
        checkpointer.close()

    rows = run_io.read_metrics(workdir)
    summary = {**task.summarize(rows), "final_step": rows[-1]["step"],
               "wall_seconds": rows[-1]["elapsed_seconds"]}
    for key, value in rows[-1].items():
        if key.endswith(("_accuracy", "_loss")) and not key.startswith("batch"):
            summary[f"final_{key}"] = value
    run_io.write_json_atomic(workdir / run_io.SUMMARY_FILE, summary)
    return summary


def plot_run(workdir: str, title: str, markers: dict[str, int | None] | None = None) -> None:
    """The standard figure of a run, drawn from its metrics.jsonl."""
    plotting.training_curves(run_io.read_metrics(workdir), pathlib.Path(workdir) / "curves.png",
                             title, markers)
