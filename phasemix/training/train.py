"""The training loop shared by every experiment: pure jitted steps, data parallel, resumable.

An experiment builds a `Task` (model hyper-parameters, loss, batches, evaluation sets, summary)
and calls `train_and_evaluate(config, workdir, task)`. Re-running the same command on the same
workdir resumes from the last checkpoint; SIGTERM saves a checkpoint before exiting.

Several processes (`phasemix.base.distributed`) run the same loop over one mesh of all their
devices: each feeds its rows of every batch, all save the checkpoint together, and process 0
alone writes metrics, summaries and figures. A checkpoint resumes on any number of processes.

`train_and_evaluate_vmapped` trains a group of runs as one vmapped program: runs that differ in
seed, learning rate, weight decay, init scale (`VMAPPED_FIELDS`, fed to the program as arrays
with a run axis) or in the data their tasks hold, each with its own workdir and checkpoints.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
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

from jax.experimental import multihost_utils

from phasemix.base import distributed, plotting, progress, run_io, validation
from phasemix.data import batching
from phasemix.training import (checkpointing, compilation, losses, model as model_lib,
                               optimizer as optimizer_lib, params as params_lib, sharding)

LossFn = Callable[[jax.Array, dict[str, jax.Array]], tuple[jax.Array, losses.Metrics]]
PREEMPTED_EXIT_CODE = run_io.PREEMPTED_EXIT_CODE
Diverged = run_io.Diverged  # raised when a metric becomes NaN or infinite (exit code 3)
# Checked first when a row has several non-finite values: the one closest to the cause.
DIVERGENCE_ORDER = ("batch_loss", "grad_norm", "weight_norm")
# Micro-batch slices computed side by side in the train step (one loop iteration).
CONCURRENT_SLICES = 4
# The per-step numbers summed over an evaluation window on the device (`TrainState.window`);
# a metric row logs their means over the window.
WINDOW_METRICS = ("batch_loss", "batch_accuracy", "grad_norm")
# steps_per_call=0 chooses these per backend (README, Speed): on a CPU measured fastest by
# benchmarks/train_step.py --steps_per_call_ab; on accelerators, where dispatch and the
# host's batch transfer set the pace of small models, more steps per call.
AUTO_STEPS_PER_CALL = {"cpu": 8}
AUTO_STEPS_PER_CALL_ACCELERATOR = 32


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # Sums of WINDOW_METRICS (and "steps", their count) since the last evaluation: part of
    # the checkpoint, so a run resumed inside a window logs the same means as one never cut.
    window: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
    """What an experiment hands to the loop."""

    model_config: model_lib.TransformerConfig
    loss_fn: LossFn
    train_batches: grain.MapDataset  # element i is the global batch of step i
    eval_sets: dict[str, batching.Arrays]  # name -> arrays; metrics logged as <name>_loss etc.
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]]  # metric rows -> summary
    # Optional: params -> a few of their arrays, saved at every evaluation as snapshots/<step>.npz
    # (e.g. a classifier's weights, whose distribution a figure follows through training).
    snapshot: Callable[[Any], dict[str, np.ndarray]] | None = None
    # Optional: a metric row -> the numbers the terminal's progress line shows (default:
    # `eval_accuracies`), for tasks whose headline metric is not a token accuracy.
    progress: Callable[[dict[str, Any]], str] | None = None


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
                      opt_state=optimizer.init(params), window=empty_window())


def empty_window() -> dict[str, jax.Array]:
    return {k: jnp.zeros((), jnp.float32) for k in (*WINDOW_METRICS, "steps")}


def apply_model(model: model_lib.Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    return model.apply({"params": params}, batch["inputs"], batch.get("pad_mask"))


def eval_accuracies(row: dict[str, Any]) -> str:
    """The progress line's default: every evaluation set's accuracy in a metric row."""
    return " ".join(f"{k}={v:.3f}" for k, v in row.items()
                    if k.endswith("accuracy") and not k.startswith("batch"))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: model_lib.Transformer,
               optimizer: optax.GradientTransformation, loss_fn: LossFn, micro_batches: int = 1,
               num_shards: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on one global batch. Pure: the same inputs give the same outputs.

    With `micro_batches` > 1 the batch's gradient is the sum of that many slices' summed-loss
    gradients over the total count: the same gradient (up to float rounding), computed as
    independent chains that XLA runs concurrently on the CPU's cores. `num_shards` is how
    many devices split the batch, so that every slice keeps rows on every device.
    """

    if micro_batches == 1:
        def loss_of(params):
            return loss_fn(apply_model(model, params, batch), batch)

        (loss, sums), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    else:
        def summed_loss(params, part):
            _, part_sums = loss_fn(apply_model(model, params, part), part)
            return part_sums["loss_sum"], part_sums

        def add_slice(total, part):
            part_total = jax.grad(summed_loss, has_aux=True)(state.params, part)
            return jax.tree.map(jnp.add, total, part_total), None

        # A loop over the slices, CONCURRENT_SLICES of them per iteration: a constant-size
        # program whatever the count (16 slices unrolled compiled 6x slower), with independent
        # chains inside an iteration for both cores, and each slice's activations in cache.
        parts = stack_micro_batches(batch, micro_batches, num_shards)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(
            jax.grad(summed_loss, has_aux=True), state.params,
            jax.tree.map(lambda x: x[0], parts)))
        (grads, sums), _ = jax.lax.scan(add_slice, zeros, parts,
                                        unroll=min(micro_batches, CONCURRENT_SLICES))
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = sums["loss_sum"] / count
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"batch_loss": loss,
               "batch_accuracy": sums["correct_sum"] / jnp.maximum(sums["count"], 1.0),
               "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array], num_steps: jax.Array,
                new_window: jax.Array, *, step_fn: Callable, schedule: optax.Schedule
                ) -> tuple[TrainState, dict[str, jax.Array]]:
    """The first `num_steps` of the stacked `batches` (steps_per_call, rows, ...) as
    `step_fn` steps in one program, their metrics added to `state.window` (emptied first if
    `new_window`). Returns the window's means and the learning rate of the last update.

    The trip count is a traced value, so the shorter call before an evaluation or checkpoint
    runs the same compiled program as the others, and every step is the same loop body
    whatever the call's length: the numbers equal those of one step per call bit for bit.
    """

    def body(i, state):
        batch = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False),
                             batches)
        state, metrics = step_fn(state, batch)
        window = {k: v + (metrics[k] if k in metrics else 1.0) for k, v in state.window.items()}
        return state.replace(window=window)

    window = jax.tree.map(lambda x: jnp.where(new_window, jnp.zeros_like(x), x), state.window)
    state = jax.lax.fori_loop(0, num_steps, body, state.replace(window=window))
    steps = jnp.maximum(state.window["steps"], 1.0)
    means = {k: state.window[k] / steps for k in WINDOW_METRICS}
    means["lr"] = jnp.asarray(schedule(state.step - 1), jnp.float32)
    return state, means


def stack_micro_batches(batch: dict[str, jax.Array], micro_batches: int,
                        num_shards: int = 1) -> dict[str, jax.Array]:
    """The batch as (micro_batches, rows / micro_batches, ...) slices, for rows that lie in
    `num_shards` contiguous shards: slice j takes the j-th part of every shard, so no slice
    moves rows between devices."""

    def stack(x):
        x = x.reshape(num_shards, micro_batches, -1, *x.shape[1:]).swapaxes(0, 1)
        return x.reshape(micro_batches, -1, *x.shape[3:])

    return jax.tree.map(stack, batch)


def micro_batches_of(config: ml_collections.ConfigDict, task: Task, num_shards: int) -> int:
    """`config.micro_batches`, or with 0 (the default) `auto_micro_batches`'s choice."""
    rows, tokens_per_row = task.train_batches[0]["inputs"].shape
    requested = config.micro_batches
    if not requested:
        return auto_micro_batches(rows, tokens_per_row, num_shards)
    validation.require(rows % (requested * num_shards) == 0, "micro_batches",
                       f"must divide the {rows} rows of a batch per device ({num_shards} "
                       "devices)", requested)
    return requested


def auto_micro_batches(batch_size: int, tokens_per_row: int, num_shards: int) -> int:
    """On a CPU, slices of ~1,024 tokens (up to 64), or 4 or 2 of >= 256; on accelerators 1.

    Measured on 2-core CPUs (README, Speed): 4 slices made the small LM's step 1.1-1.3x faster
    than one at batch 64 and 512, and at batch 512 16 slices (1,024 tokens) another ~1.2x;
    slices of fewer than 256 tokens (the grokking model at batch 64) gained nothing.
    """
    if jax.default_backend() != "cpu":
        return 1
    rows = batch_size // num_shards
    for micro_batches in (64, 32, 16, 8, 4, 2):
        min_tokens = 1024 if micro_batches > CONCURRENT_SLICES else 256
        if rows % micro_batches == 0 and rows // micro_batches * tokens_per_row >= min_tokens:
            return micro_batches
    return 1


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


# Every config field the loop reads: each trainer experiment's get_config declares them all, so
# --print_config shows what a run depends on.
LOOP_FIELDS = ("seed", "num_steps", "batch_size", "eval_every", "eval_batch_size",
               "checkpoint_every", "micro_batches", "steps_per_call", "xla_cpu_ynnpack",
               "fsdp", "model.init_scale", "opt", "data_prefetch", "data_workers")


def declare_execution_fields(config: ml_collections.ConfigDict, *,
                             xla_cpu_ynnpack: bool = True) -> None:
    """How the loop executes a run, the same fields in every trainer config (run_io's
    EXECUTION_FIELDS: they change speed, not results, so a run may resume with others)."""
    # Slices of each batch whose gradients run as independent chains (the cores of a CPU
    # work on them at once); 0: auto_micro_batches decides (1 on accelerators).
    config.micro_batches = 0
    config.steps_per_call = 0  # optimizer steps per host dispatch; 0: chosen per backend
    config.data_prefetch = 0  # batches read ahead while the device trains; 0: read when needed
    config.data_workers = 0  # processes reading them ahead; 0: a thread of the trainer's own
    # On a CPU, YNNPACK's dot kernels (XLA's default); the grokking model turns them off for
    # its small products. No effect on accelerators.
    config.xla_cpu_ynnpack = xla_cpu_ynnpack
    # Devices that split each parameter and its optimizer state between them (FSDP; a divisor
    # of the devices); 1: every device holds the whole state.
    config.fsdp = 1


def steps_per_call_of(config: ml_collections.ConfigDict, platform: str | None = None) -> int:
    """`config.steps_per_call`, or with 0 the backend's default, at most the longest call
    the run can make (calls stop at every evaluation and checkpoint)."""
    requested = config.steps_per_call or AUTO_STEPS_PER_CALL.get(
        platform or jax.default_backend(), AUTO_STEPS_PER_CALL_ACCELERATOR)
    return max(1, min(requested, config.eval_every, config.checkpoint_every, config.num_steps))


def call_end(start: int, config: ml_collections.ConfigDict, steps_per_call: int) -> int:
    """Where a call that starts at step `start` stops: after `steps_per_call` steps, or at the
    next evaluation, checkpoint or the last step if one comes first."""
    boundaries = [start + steps_per_call, config.num_steps]
    for every in (config.eval_every, config.checkpoint_every):
        boundaries.append((start // every + 1) * every)
    return min(boundaries)


def validate_loop_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    for field in LOOP_FIELDS:
        parent, _, leaf = field.rpartition(".")
        if leaf not in (config[parent] if parent else config):
            validation.fail(field, "is missing from the config; the trainer reads it (declare "
                            "it in the experiment's get_config)")
    validation.require_seeds(config)
    validation.require_positive(config, "num_steps", "batch_size", "eval_every",
                                "checkpoint_every", "eval_batch_size")
    for field in ("batch_size", "eval_batch_size"):
        validation.require(config[field] % num_devices == 0, field,
                           f"must be a multiple of the {num_devices} devices", config[field])
    fsdp = config.fsdp
    validation.require(isinstance(fsdp, int) and fsdp >= 1 and num_devices % fsdp == 0, "fsdp",
                       f"must be a positive divisor of the {num_devices} devices", fsdp)
    micro_batches = config.micro_batches  # 0 = auto
    validation.require(isinstance(micro_batches, int) and micro_batches >= 0, "micro_batches",
                       "must be 0 (auto) or a positive number of slices", micro_batches)
    steps_per_call = config.steps_per_call  # 0 = auto
    validation.require(isinstance(steps_per_call, int) and not isinstance(steps_per_call, bool)
                       and steps_per_call >= 0, "steps_per_call",
                       "must be 0 (auto) or a positive number of steps", steps_per_call)
    ynnpack = config.xla_cpu_ynnpack
    validation.require(isinstance(ynnpack, bool), "xla_cpu_ynnpack", "must be True or False",
                       ynnpack)
    validation.require_positive(config, "model.init_scale")
    optimizer_lib.validate(config.opt)
    batching.validate(config)


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self, enabled: bool = True):
        self.raised = False
        self._enabled = enabled
        self._previous = None

    def __enter__(self):
        if self._enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# The config fields whose values the runs of one vmapped program may each have their own of
# (besides the data each run's task holds): `hyperparameters` turns them into program inputs.
VMAPPED_FIELDS = ("seed", "opt.lr", "opt.weight_decay", "model.init_scale")


def hyperparameters(config: ml_collections.ConfigDict) -> dict[str, float]:
    """A run's numbers that its programs take as inputs, not as constants of their code: the
    peak learning rate, the weight decay and the init scale (the seed enters as the key)."""
    return {"lr": config.opt.lr, "weight_decay": config.opt.weight_decay,
            "init_scale": config.model.init_scale}


def stacked_hyperparameters(configs: list[ml_collections.ConfigDict]) -> dict[str, np.ndarray]:
    """Every run's `hyperparameters`, float32 with a leading run axis (a vmapped program's)."""
    per_run = [hyperparameters(c) for c in configs]
    return {k: np.asarray([h[k] for h in per_run], np.float32) for k in per_run[0]}


def _optimizer_of(config: ml_collections.ConfigDict, hparams: dict[str, Any]
                  ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW and its schedule with `hparams`' numbers: Python numbers for one run (the same
    program as `optimizer.make_optimizer(config.opt, ...)`), traced scalars under vmap."""
    lr, num_steps = hparams["lr"], config.num_steps
    return (optimizer_lib.make_optimizer(config.opt, num_steps, lr, hparams["weight_decay"]),
            optimizer_lib.make_schedule(config.opt, num_steps, lr))


def _init_run(key: jax.Array, hparams: dict[str, Any], *, config: ml_collections.ConfigDict,
              **kwargs) -> TrainState:
    optimizer, _ = _optimizer_of(config, hparams)
    return init_state(key, optimizer=optimizer, init_scale=hparams["init_scale"], **kwargs)


def _step_run(state: TrainState, batch: dict[str, jax.Array], hparams: dict[str, Any], *,
              config: ml_collections.ConfigDict, **kwargs) -> tuple[TrainState, dict[str, Any]]:
    optimizer, _ = _optimizer_of(config, hparams)
    return train_step(state, batch, optimizer=optimizer, **kwargs)


def _steps_run(state: TrainState, batches: dict[str, jax.Array], num_steps: jax.Array,
               new_window: jax.Array, hparams: dict[str, Any], *,
               config: ml_collections.ConfigDict, **kwargs) -> tuple[TrainState, dict[str, Any]]:
    optimizer, schedule = _optimizer_of(config, hparams)
    step_fn = functools.partial(train_step, optimizer=optimizer, **kwargs)
    return train_steps(state, batches, num_steps, new_window, step_fn=step_fn, schedule=schedule)


@dataclasses.dataclass(frozen=True)
class _RunFunctions:
    """One run's pure functions before jit; init, step and steps take its `hyperparameters`
    as their last argument."""

    init: Callable
    step: Callable
    steps: Callable
    evaluate: Callable
    norms: Callable

    def bound(self, hparams: dict[str, float]) -> _RunFunctions:
        """With one run's numbers fixed: constants of the compiled programs."""
        return dataclasses.replace(self, **{name: functools.partial(
            getattr(self, name), hparams=hparams) for name in ("init", "step", "steps")})

    def vmapped(self) -> _RunFunctions:
        """Over a leading run axis of every argument, bar the steps' shared trip count and
        window flag."""
        return _RunFunctions(init=jax.vmap(self.init), step=jax.vmap(self.step),
                             steps=jax.vmap(self.steps, in_axes=(0, 0, None, None, 0)),
                             evaluate=jax.vmap(self.evaluate), norms=jax.vmap(self.norms))


@dataclasses.dataclass(frozen=True)
class Programs:
    """The jitted functions of one config on one mesh, with the shardings they use.

    With `num_runs` set, every function is vmapped over a leading axis of that many runs
    (states, batches and evaluation sets stacked), so several runs train as one program, and
    init, step and steps take the runs' `stacked_hyperparameters` as their last argument.
    """

    init: Callable[..., TrainState]  # PRNG key(s)[, hyperparameters] -> initial state(s)
    step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]  # state, batch[, hparams]
    # state, batches stacked (steps_per_call, ...) after the run axis, number of steps to
    # run, whether the window starts anew[, hparams] -> state, the window's means and lr
    # (train_steps)
    steps: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    evaluate: Callable[[Any, dict[str, jax.Array]], losses.Metrics]  # params, stacked set
    norms: Callable[[Any], dict[str, jax.Array]]
    abstract_state: TrainState  # of ONE run: shapes, dtypes, shardings for restoring
    batch_axis: int  # where the example axis of a train batch is (1 when vmapped)
    steps_per_call: int  # the stacked batches' length in `steps`


def _run_functions(config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh,
                   model: model_lib.Transformer) -> _RunFunctions:
    tokens = jnp.asarray(task.train_batches[0]["inputs"][:1])
    step_kwargs = dict(config=config, model=model, loss_fn=task.loss_fn, num_shards=mesh.size,
                       micro_batches=micro_batches_of(config, task, mesh.size))
    return _RunFunctions(
        init=functools.partial(_init_run, config=config, tokens_BxL=tokens, model=model),
        step=functools.partial(_step_run, **step_kwargs),
        steps=functools.partial(_steps_run, **step_kwargs),
        evaluate=functools.partial(eval_step, model=model, loss_fn=task.loss_fn),
        norms=weight_norms)


def build_programs(config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh,
                   num_runs: int | None = None) -> Programs:
    """jit with explicit shardings: batches split over every device; the state replicated, or
    split over the mesh's 'fsdp' axis if it has one."""
    platform, ynnpack = mesh.devices.flat[0].platform, config.xla_cpu_ynnpack
    # Vmapped runs keep autodiff's kernel gradients: under vmap, XLA's CPU dot emitter
    # (jaxlib 0.10.2) aborts on the barrier's layout when a layer's input is a slice or a mean.
    model = model_lib.Transformer(dataclasses.replace(
        task.model_config, transposed_kernel_grads=num_runs is None
        and compilation.transposed_kernel_grads(platform, ynnpack)))
    fns = _run_functions(config, task, mesh, model)
    one_key, hparams = jax.random.key(0), hyperparameters(config)
    abstract = jax.eval_shape(functools.partial(fns.init, hparams=hparams), one_key)
    if num_runs is None:
        fns, init_args = fns.bound(hparams), (one_key,)
    else:
        fns = fns.vmapped()
        init_args = (jax.random.split(one_key, num_runs), jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((num_runs,), jnp.float32), hparams))
    state_sharding = sharding.tree_shardings(jax.eval_shape(fns.init, *init_args), mesh)
    # Outputs read on the host are replicated: with several processes, a host can only read
    # an array whose every element is on its own devices.
    jit = functools.partial(jax.jit, compiler_options=compilation.compiler_options(
        platform, ynnpack))
    batch_axis = 0 if num_runs is None else 1
    replicated = sharding.replicated(mesh)
    per_run = () if num_runs is None else (replicated,)  # the hyperparameters
    step = jit(fns.step, in_shardings=(state_sharding, sharding.batch_sharding(
        mesh, batch_axis), *per_run), out_shardings=(state_sharding, replicated),
               donate_argnums=0)
    steps = jit(fns.steps, in_shardings=(state_sharding, sharding.batch_sharding(
        mesh, batch_axis + 1), replicated, replicated, *per_run),
                out_shardings=(state_sharding, replicated), donate_argnums=0)
    return Programs(
        init=jit(fns.init, out_shardings=state_sharding), step=step, steps=steps,
        evaluate=jit(fns.evaluate, out_shardings=replicated),
        norms=jit(fns.norms, out_shardings=replicated),
        abstract_state=jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract, sharding.tree_shardings(abstract, mesh)),
        batch_axis=batch_axis, steps_per_call=steps_per_call_of(config, platform))


def _holds_window(checkpointer: checkpointing.Checkpointer, step: int) -> bool:
    """Whether the checkpoint at `step` has `TrainState.window` (those saved before it was
    added have not); when its metadata cannot be read, the restore itself reports why."""
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that it read metadata without handlers
    try:
        tree = checkpointer._manager.item_metadata(step)["state"].tree
    except Exception:  # orbax raises many types; the restore that follows names the problem
        return True
    finally:
        absl_logger.setLevel(level)
    return not isinstance(tree, dict) or "window" in tree


def _without_window(abstract_state: TrainState) -> dict[str, Any]:
    return {"step": abstract_state.step, "params": abstract_state.params,
            "opt_state": abstract_state.opt_state}


def _with_empty_window(restored: dict[str, Any], abstract_state: TrainState) -> TrainState:
    window = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding),
                          abstract_state.window)
    return TrainState(window=window, **restored)


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _unstack(tree: Any, num_runs: int) -> list[Any]:
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(num_runs)]


class _Run:
    """One run's files: workdir, checkpoints, data iterator and metrics writer."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, task: Task,
                 rows: slice | None):
        self.config, self.task = config, task
        # Every process checks the workdir before any writes to it, so that a refused workdir
        # stops all of them with the same error; then process 0 alone writes.
        self.workdir = run_io.check_workdir(workdir, config)
        diverged = run_io.diverged_summary(self.workdir)
        if diverged is not None:  # training again would diverge again: say so, change nothing
            raise Diverged(f"{diverged.get('error', 'diverged')} (recorded in "
                           f"{self.workdir / run_io.SUMMARY_FILE}; use a new --workdir to "
                           "train with other settings)", diverged.get("diverged_step"),
                           diverged.get("diverged_quantity"))
        distributed.barrier("workdir_checked")
        if distributed.is_primary():
            run_io.remove_stale_temporaries(self.workdir)  # a killed run's
            run_io.write_config(self.workdir, config)
        distributed.barrier("workdir_written")
        self.checkpointer = checkpointing.Checkpointer(self.workdir / run_io.CHECKPOINT_DIR)
        batches = task.train_batches if rows is None else batching.process_shard(
            task.train_batches, rows)
        self.data_iter = batching.iterate(batches, config.data_prefetch, config.data_workers)
        self.start_step = self.checkpointer.latest_step() or 0
        self.writer: run_io.MetricsWriter | None = None
        self.elapsed_before = 0.0

    def restore(self, abstract_state: TrainState) -> TrainState:
        if _holds_window(self.checkpointer, self.start_step):
            state = self.checkpointer.restore(self.start_step, abstract_state, self.data_iter)
        else:
            state = _with_empty_window(self.checkpointer.restore(
                self.start_step, _without_window(abstract_state), self.data_iter),
                abstract_state)
            logging.warning("Step %d's checkpoint predates window sums: the batch metrics of "
                            "the next evaluation average the steps after it only.",
                            self.start_step)
        rows = [r for r in run_io.read_metrics(self.workdir) if r["step"] <= self.start_step]
        self.elapsed_before = rows[-1]["elapsed_seconds"] if rows else 0.0
        logging.info("Resumed from step %d in %s", self.start_step, self.checkpointer.directory)
        return state

    def summarize(self, compiled: dict[str, int]) -> dict[str, Any]:
        rows = run_io.read_metrics(self.workdir)
        summary = {**self.task.summarize(rows), "final_step": rows[-1]["step"],
                   "wall_seconds": rows[-1]["elapsed_seconds"],
                   # Compilations in the process that finished the run, after its first
                   # train step and evaluation: 0 unless something retraces in the loop.
                   "recompilations": sum(compiled.values())}
        for key, value in rows[-1].items():
            if key.endswith(("_accuracy", "_loss", "_exact_match")) and not key.startswith("batch"):
                summary[f"final_{key}"] = value
        if distributed.is_primary():
            run_io.write_json_atomic(self.workdir / run_io.SUMMARY_FILE, summary)
        return summary

    def diverge(self, step: int, quantity: str, value: Any) -> Diverged:
        """Records the divergence in summary.json (process 0) and returns the error to raise.
        The diverged state is never saved: the newest checkpoint is the last good one."""
        message = run_io.divergence_message(step, quantity, value)
        if distributed.is_primary():
            run_io.write_json_atomic(self.workdir / run_io.SUMMARY_FILE, {
                "status": run_io.DIVERGED, "diverged_step": step, "diverged_quantity": quantity,
                "last_checkpoint_step": self.checkpointer.latest_step(), "error": message})
        return Diverged(message, step, quantity)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.checkpointer.close()
        self.data_iter.close()  # stops its read-ahead thread or worker processes


def first_non_finite(row: dict[str, Any]) -> tuple[str, Any] | None:
    """(name, value) of a metric row's first NaN or infinite number, else None."""
    bad = [k for k, v in row.items() if isinstance(v, (int, float)) and not np.isfinite(v)]
    if not bad:
        return None
    bad.sort(key=lambda k: (DIVERGENCE_ORDER.index(k) if k in DIVERGENCE_ORDER
                            else len(DIVERGENCE_ORDER)))
    return bad[0], row[bad[0]]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: Task) -> dict[str, Any]:
    """Trains `config.num_steps` steps (resuming if the workdir has a checkpoint); returns the summary."""
    return _train_runs([config], [workdir], [task], vectorized=False)[0]


def train_and_evaluate_vmapped(configs: list[ml_collections.ConfigDict], workdirs: list[str],
                               tasks: list[Task], data_fields: tuple[str, ...] = ()
                               ) -> list[dict[str, Any]]:
    """Trains several runs as one vmapped program, in lockstep, each with its own workdir.

    The runs may differ in `VMAPPED_FIELDS` (seed, so data split, batch order and init;
    learning rate, weight decay, init scale) and in `data_fields`, the caller's fields that
    change only the data its tasks hold (e.g. the size of a training subset). Train batches of
    fewer rows (full-batch runs on smaller sets) are padded with rows of weight 0, evaluation
    sets to a common number of batches. Every other field must be equal: it may shape arrays
    or the program. Each run's metrics, summary and checkpoints are its own run's.
    """
    check_vmappable(configs, data_fields)
    return _train_runs(configs, workdirs, tasks, vectorized=True)


def check_vmappable(configs: list[ml_collections.ConfigDict],
                    data_fields: tuple[str, ...] = ()) -> None:
    """Refuses runs that differ in a field one vmapped program cannot vary, naming them."""
    free = set(VMAPPED_FIELDS) | set(data_fields)
    flat = [run_io.flatten_config(c) for c in configs]
    keys = set().union(*flat)
    differ = sorted(k for k in keys - free if any(f.get(k) != flat[0].get(k) for f in flat))
    if differ:
        raise validation.ConfigError(
            f"vmapped runs may differ only in {', '.join(sorted(free))}; these differ in "
            f"{', '.join(differ)}, which one program cannot vary: train them in separate groups")


def _train_runs(configs: list[ml_collections.ConfigDict], workdirs: list[str],
                tasks: list[Task], vectorized: bool) -> list[dict[str, Any]]:
    compilation.start_counting()
    if vectorized:
        tasks = _with_common_rows(tasks)
    _check_runs(configs, tasks, vectorized)
    loop = _Loop(configs, workdirs, tasks, vectorized)
    try:
        loop.setup(configs, tasks)
        loop.train()
    finally:
        loop.close()
    compiled = loop.recompilations()
    if compiled:
        logging.warning("compiled in the training loop after the first step (slow): %s",
                        dict(compiled))
    distributed.barrier("metrics_closed")  # process 0 has written every row the summary reads
    return [run.summarize(compiled) for run in loop.runs]


def _check_runs(configs: list[ml_collections.ConfigDict], tasks: list[Task],
                vectorized: bool) -> None:
    """Every run's loop settings and model, before any workdir is touched."""
    for c, t in zip(configs, tasks):
        validate_loop_config(c, jax.device_count())
        micro_batches_of(c, t, jax.device_count())  # checks an explicit choice divides
        t.model_config.validate()
    fsdp = configs[0].fsdp
    if vectorized and fsdp > 1:
        validation.fail("fsdp", "is not supported for vmapped runs: train them one by one", fsdp)


def _with_common_rows(tasks: list[Task]) -> list[Task]:
    """Tasks whose train batches differ in rows (full-batch runs on training sets smaller than
    the batch) with every batch padded to the most rows: a `weight` of 1 on real rows, 0 on
    padding, which the losses leave out, so that each run trains as it would alone."""
    rows = [len(t.train_batches[0]["inputs"]) for t in tasks]
    if len(set(rows)) == 1:
        return tasks
    return [dataclasses.replace(t, train_batches=batching.pad_rows(t.train_batches, max(rows)))
            for t in tasks]


class _Loop:
    """Trains one run, or several vmapped in lockstep, from where their checkpoints stand.

    Holds what the steps share: the runs' files (`_Run`), the compiled programs, the mesh, the
    train state (stacked over the runs when vmapped), the evaluation sets on the devices, the
    progress line, and the compilation counts that tell a retrace in the loop from the first
    compiles. Process 0 alone writes; every process runs the same calls.
    """

    def __init__(self, configs: list[ml_collections.ConfigDict], workdirs: list[str],
                 tasks: list[Task], vectorized: bool):
        self.config, self.task = configs[0], tasks[0]  # the shared settings
        self.vectorized = vectorized
        self.num_runs = len(configs)
        self.mesh = sharding.make_mesh(fsdp=self.config.fsdp)
        self.multi_process = jax.process_count() > 1
        rows = None  # each process reads its rows of every global batch
        if self.multi_process:
            rows = sharding.process_rows(self.mesh, len(self.task.train_batches[0]["inputs"]))
        self.runs = [_Run(c, w, t, rows) for c, w, t in zip(configs, workdirs, tasks)]
        # The vmapped programs' last argument: each run's learning rate, weight decay, scale.
        self.per_run_args = ((sharding.put_replicated(stacked_hyperparameters(configs),
                                                      self.mesh),) if vectorized else ())
        self.pending: Callable[[], None] | None = None  # the last evaluation's rows to finish
        # Compilation counts: whether a row was logged (every program has then run once), the
        # count once the first call after it was dispatched, and what the first save compiled.
        self.logged = False
        self.compiled_at: collections.Counter | None = None
        self.save_compiles: collections.Counter | None = None

    def setup(self, configs: list[ml_collections.ConfigDict], tasks: list[Task]) -> None:
        """The common start step, the programs, the evaluation sets and the first state."""
        starts = {run.start_step for run in self.runs}
        if len(starts) > 1:
            raise validation.ConfigError(
                f"vmapped runs must resume from the same step, found {sorted(starts)}; "
                "run them one by one (sweep workers mode) instead")
        self.start_step = starts.pop()
        self.programs = build_programs(self.config, self.task, self.mesh,
                                       self.num_runs if self.vectorized else None)
        self.eval_sets = self._eval_sets(tasks)
        self.state = self._restore_or_init(configs)
        if distributed.is_primary():
            for run in self.runs:
                run.writer = run_io.MetricsWriter(run.workdir, resume_step=self.start_step)
        self.bar = progress.Progress(self.config.num_steps, self.start_step)
        self.t0 = time.monotonic()

    def _eval_sets(self, tasks: list[Task]) -> dict[str, Any]:
        """Every evaluation set padded to whole batches, stacked over the runs if vmapped."""
        # Never pad past the largest evaluation set (a huge --config.eval_batch_size would
        # only allocate zeros), still a multiple of the devices.
        largest = max((len(next(iter(arrays.values()))) for t in tasks
                       for arrays in t.eval_sets.values()), default=1)
        devices = jax.device_count()
        eval_batch = min(self.config.eval_batch_size, -(-largest // devices) * devices)
        eval_sets = {}
        for name in self.task.eval_sets:
            padded = [batching.pad_and_stack(t.eval_sets[name], eval_batch) for t in tasks]
            if self.vectorized:  # sets of other sizes: as many batches, the extra ones empty
                most = max(len(p["weight"]) for p in padded)
                host = _stack([batching.pad_batches(p, most) for p in padded])
            else:
                host = padded[0]
            eval_sets[name] = sharding.put_global(host, self.mesh,
                                                  batch_axis=self.programs.batch_axis + 1)
        return eval_sets

    def _restore_or_init(self, configs: list[ml_collections.ConfigDict]) -> TrainState:
        if self.start_step:
            states = [run.restore(self.programs.abstract_state) for run in self.runs]
            if not self.vectorized:
                return states[0]
            return sharding.put_replicated(_stack(jax.device_get(states)), self.mesh)
        keys = [jax.random.key(c.seed) for c in configs]
        return self.programs.init(jnp.stack(keys) if self.vectorized else keys[0],
                                  *self.per_run_args)

    def train(self) -> None:
        """Steps to `num_steps`, evaluating, checkpointing and stopping on SIGTERM on the way.

        One process handles SIGTERM itself; several agree, through JAX's preemption service
        (which catches SIGTERM on each), on the first step all of them reach, and save there.
        """
        with _SigtermFlag(enabled=not self.multi_process) as sigterm:
            if self.start_step == 0:
                self.start_rows(0, None)()
            done = self.start_step
            while done < self.config.num_steps:
                done = self._advance(done, sigterm)
            self._finish_pending()
        for run in self.runs:
            run.checkpointer.wait()

    def _advance(self, done: int, sigterm: _SigtermFlag) -> int:
        """One call from step `done`, then its evaluation, checkpoint or preemption stop."""
        config = self.config
        end = call_end(done, config, self.programs.steps_per_call)
        self.state, means, end = self.dispatch(done, end, sigterm)
        if done == self.start_step:  # compiled: the rate counts from here
            self.bar.start_rate(done)
        self._finish_pending()  # the rows of the last evaluation, read while this call runs
        if self.logged and self.compiled_at is None:
            self.compiled_at = compilation.snapshot()
        evaluated = end % config.eval_every == 0 or end == config.num_steps
        if evaluated:
            self.pending = self.start_rows(end, means)
        preempted = (multihost_utils.reached_preemption_sync_point(end)
                     if self.multi_process else sigterm.raised)
        # At the last step too: the run is saved, but a sweep must not start the next.
        if end % config.checkpoint_every == 0 or end == config.num_steps or preempted:
            self._finish_pending()  # a diverged state is never saved
            if not evaluated:
                self.check_before_save(end, means)
            self.save(end)
        if preempted:
            for run in self.runs:
                run.checkpointer.wait()
            logging.warning("SIGTERM: saved step %d; re-run the same command to resume.", end)
            raise Preempted(end)
        return end

    def _finish_pending(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending()

    def dispatch(self, start: int, end: int, sigterm: _SigtermFlag
                 ) -> tuple[TrainState, dict[str, jax.Array], int]:
        """Steps start..end as one call: the host stacks their batches, padded with zeros
        to the program's length, and moves them to the devices in one transfer. A SIGTERM
        while the batches are built ends the call at the batch being built, so that the
        checkpoint comes as soon as with one step per call. Returns where the call ends."""
        per_run_batches = [[] for _ in self.runs]
        for step in range(start, end):
            for run, batches in zip(self.runs, per_run_batches):
                batches.append(next(run.data_iter))
            if sigterm.raised:
                end = step + 1
                break
        host_runs = []
        for batches in per_run_batches:
            padding = jax.tree.map(np.zeros_like, batches[0])
            host_runs.append(_stack(batches + [padding] * (self.programs.steps_per_call
                                                           - len(batches))))
        host = _stack(host_runs) if self.vectorized else host_runs[0]
        stacked_axis = self.programs.batch_axis + 1  # the example axis behind (runs,) steps
        state_after, means = self.programs.steps(
            self.state, sharding.put_batch(host, self.mesh, batch_axis=stacked_axis),
            np.int32(end - start), np.bool_(start % self.config.eval_every == 0),
            *self.per_run_args)
        return state_after, means, end

    def per_run(self, tree: Any) -> list[Any]:
        """A device tree read to the host, as one tree per run."""
        host = jax.device_get(tree)
        return _unstack(host, self.num_runs) if self.vectorized else [host]

    def start_rows(self, step: int, train_metrics: dict[str, Any] | None) -> Callable[[], None]:
        """Starts the evaluation of the state at `step` on the device and returns what reads
        it, checks it for divergence and writes the metric rows: called once the next call
        is dispatched, so that the device trains while the host waits for the numbers."""
        params = self.state.params
        evaluated = {name: self.programs.evaluate(params, stacked)
                     for name, stacked in self.eval_sets.items()}
        norms = self.programs.norms(params)
        snapshots = None  # read now: the arrays may be parameters the next call donates
        if self.task.snapshot is not None:  # picked on device: only the chosen arrays move
            snapshots = self.per_run(self.task.snapshot(params))
        return functools.partial(self._finish_rows, step, evaluated, norms, train_metrics,
                                 snapshots)

    def _finish_rows(self, step: int, evaluated: dict[str, losses.Metrics],
                     norms: dict[str, jax.Array], train_metrics: dict[str, Any] | None,
                     snapshots: list[dict[str, np.ndarray]] | None) -> None:
        rows = [{"step": step} for _ in self.runs]
        for name, sums_tree in evaluated.items():
            for row, sums in zip(rows, self.per_run(sums_tree)):
                row.update(losses.finalize(sums, f"{name}_"))
        for tree in (norms, train_metrics):
            if tree is not None:
                for row, values in zip(rows, self.per_run(tree)):
                    row.update({k: float(v) for k, v in values.items()})
        # The values were read to the host for the metric rows anyway: checking them costs no
        # extra transfer or synchronisation. Before any file of this step.
        self.stop_if_diverged(step, rows)
        if snapshots is not None:
            for run, arrays in zip(self.runs, snapshots):
                if run.writer is not None:
                    run_io.write_npz_atomic(run.workdir / run_io.SNAPSHOT_DIR / f"{step}.npz",
                                            arrays)
        for run, row in zip(self.runs, rows):
            row["elapsed_seconds"] = run.elapsed_before + time.monotonic() - self.t0
            if run.writer is not None:  # process 0
                run.writer.write(row)
        self.logged = True
        logging.info("%s", self.bar.line(step, (self.task.progress or eval_accuracies)(rows[0])))

    def stop_if_diverged(self, step: int, rows: list[dict[str, Any]]) -> None:
        errors = []
        for run, row in zip(self.runs, rows):
            found = first_non_finite(row)
            if found is not None:
                errors.append(run.diverge(step, *found))
        if errors:  # in a vmapped group, the runs that did not diverge are not finished
            raise errors[0]

    def check_before_save(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """A checkpoint between evaluations: its state is read to the host anyway, so its
        window's mean loss and gradient norm (non-finite if any step's was) and its weight
        norm are checked first (a diverged state is never saved)."""
        norms = self.programs.norms(self.state.params)
        values = self.per_run({**{k: metrics[k] for k in DIVERGENCE_ORDER if k in metrics},
                               "weight_norm": norms["weight_norm"]})
        self.stop_if_diverged(step, [{k: float(v) for k, v in tree.items()} for tree in values])

    def save(self, step: int) -> None:
        # Orbax compiles a few programs at its first save across processes (it slices
        # replicated arrays so that each process writes a part): once, so not counted.
        before = None if self.save_compiles is not None else compilation.snapshot()
        states = [self.state]
        if self.vectorized:  # split on the host: slicing device arrays would compile per leaf
            states = [sharding.put_replicated(s, self.mesh)
                      for s in _unstack(jax.device_get(self.state), self.num_runs)]
        for run, run_state in zip(self.runs, states):
            run.checkpointer.save(step, run_state, run.data_iter)
        if before is not None:  # (before the first evaluation they fall in the baseline)
            self.save_compiles = (compilation.snapshot() - before
                                  if self.compiled_at is not None else collections.Counter())

    def recompilations(self) -> collections.Counter:
        """Compilations after every program's first run, less the first save's."""
        now = compilation.snapshot()
        compiled = now - (self.compiled_at if self.compiled_at is not None else now)
        return compiled - (self.save_compiles or collections.Counter())

    def close(self) -> None:
        for run in self.runs:
            run.close()


def restore_params(config: ml_collections.ConfigDict, workdir: str, task: Task) -> Any:
    """The parameters of a run's newest checkpoint, for analysis after training."""
    programs = build_programs(config, task, sharding.make_mesh())
    checkpointer = checkpointing.Checkpointer(run_io.run_path(workdir) / run_io.CHECKPOINT_DIR)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise checkpointing.CheckpointError(f"{workdir} has no checkpoint")
        if _holds_window(checkpointer, step):
            return checkpointer.restore_state(step, programs.abstract_state).params
        return checkpointer.restore_state(step, _without_window(programs.abstract_state))["params"]
    finally:
        checkpointer.close()


def plot_run(workdir: str, title: str, markers: dict[str, int | None] | None = None) -> None:
    """The standard figure of a run, drawn from its metrics.jsonl."""
    plotting.training_curves(run_io.read_metrics(workdir), run_io.run_path(workdir) / "curves.png",
                             title, markers)
