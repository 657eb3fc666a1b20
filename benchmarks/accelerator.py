"""One command that measures phasemix on whatever backend JAX finds, into one JSON report.

  python -m benchmarks.accelerator --out=reports/h100      # <= 10 minutes on one GPU/TPU
  python -m benchmarks.accelerator --smoke --out=/tmp/acc  # the same sections, small

On a CPU backend the sizes are the smoke ones with or without --smoke (the full sizes, 512
vmapped runs and a 4,000-step bfloat16 demo, would take far longer than 10 minutes there).
Every step program is compiled first, several side by side (section `compile`), then each
is timed alone.

Writes `accelerator_report.json` into `--out` (default: the current folder) with:
  backend, device_kind   what JAX ran on;
  grokking_step          steps/s of the grokking demo's training program (as `grokking.run`
                         builds it; in the smoke the smoke variant's run, batch 64);
  small_lm_step          steps/s of the small LM's train step (benchmarks.vs_pytorch's
                         `BENCHES` and `jax_step`, built as the training loop builds it, in
                         its multi-step program train.train_steps), float32 and bfloat16.
                         Each step: its matrix-product FLOPs (common.matmul_flops), FLOP/s and
                         MFU against the device's peak for its dtype (`PEAKS`; null on a device
                         not in the table, e.g. any CPU), timed at one step per host call and
                         at the loop's k steps per call (`steps_per_s_k`, `flop_per_s_k`,
                         `mfu_k`);
  vmapped_seeds          the vmapped seed-group program (train.build_programs with num_runs=R,
                         the program `critical_data_size --config.vmap_runs` trains) for each
                         R, in run-steps/s against one run's program;
                         and `vmapped_runs`: whole runs through `grokking.run_vmapped` against
                         the same runs one after another through `grokking.run`;
  bf16_demo              a bfloat16 grokking demo: step at which it generalised, seconds;
  steps_per_call         [1, k]: the steps per host call of the step rates; `section_seconds`
                         (wall and CPU per section) and `notes`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from benchmarks import vs_pytorch
from benchmarks.common import matmul_flops
from experiments import critical_data_size, grokking
from phasemix.analysis import transitions
from phasemix.base import run_io, validation
from phasemix.training import compilation, optimizer as optimizer_lib, params as params_lib
from phasemix.training import sharding, train

REPORT_FILE = "accelerator_report.json"

_OUT = flags.DEFINE_string("out", ".", "Folder the report is written to (made if missing).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Small sizes and few steps: a CPU check of the "
                           "whole command in about 50 CPU-seconds.")

# Dense peak FLOP/s per chip by compute dtype, matched against `device_kind` in this order
# (first substring that matches). float32: the TF32 tensor-core peak on NVIDIA GPUs, which is
# how XLA runs float32 products at JAX's default precision there; TPUs have no float32
# matrix unit (their float32 products are bfloat16 passes), so no float32 peak: MFU null.
PEAKS: tuple[tuple[str, dict[str, float | None]], ...] = (
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float32": 494.7e12}),  # SXM
    ("H200", {"bfloat16": 989e12, "float32": 494.7e12}),
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": None}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": None}),  # v5e's device_kind
    ("TPU v5e", {"bfloat16": 197e12, "float32": None}),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section measures; `full` on an accelerator, `smoke` on a CPU."""

    seconds: float  # approximate timing seconds per measured step rate
    lm_batch_sizes: tuple[int, ...]  # small-LM batch sizes
    run_counts: tuple[int, ...]  # R of the vmapped seed groups
    vmapped_runs: tuple[int, ...]  # R of the whole-run comparison (each also run R times alone)
    run_steps: int  # steps of each seed-group run (its config; both sweep sections)
    demo_variant: str  # grokking config variant of the bfloat16 demo
    demo_steps: int | None  # its steps; None: the variant's own


FULL = Sizes(seconds=3.0, lm_batch_sizes=(64, 512, 4096), run_counts=(1, 8, 64, 256, 512),
             vmapped_runs=(8,), run_steps=300, demo_variant="", demo_steps=None)
# Compiling dominates on a CPU (a few seconds a program): few programs, short timings, and
# the same R in both sweep sections, whose programs are then compiled once; 16 steps, so
# that the runs call the loop's default 8 steps at a time, as the grokking step is timed.
SMOKE = Sizes(seconds=0.1, lm_batch_sizes=(16,), run_counts=(2,), vmapped_runs=(2,),
              run_steps=16, demo_variant="smoke", demo_steps=20)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak for `dtype` products from `PEAKS`, or None if unknown."""
    for name, peaks in PEAKS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


class LoopRunner:
    """Calls a multi-step program (`train.train_steps`: stacked batches, a traced trip count)
    on one device-resident stack of batches, from the last state it reached (donated)."""

    def __init__(self, steps, state, stacked, *extra):
        # extra: a vmapped program's stacked hyperparameters (its last argument)
        self._steps, self._state, self._stacked, self._extra = steps, state, stacked, extra

    def _call(self, steps_per_call: int):
        return self._steps(self._state, self._stacked, np.int32(steps_per_call),
                           np.bool_(False), *self._extra)

    def compiled(self) -> LoopRunner:
        """Compiles the program (the calls then reuse it): compilations may run side by side
        in threads, each on a core of its own, where calls are timed one at a time."""
        self._steps.lower(self._state, self._stacked, np.int32(1), np.bool_(False),
                          *self._extra).compile()
        return self

    def rate(self, steps_per_call: int, seconds: float) -> float:
        """Steps/s at `steps_per_call` steps per host call, after two warm-up calls."""

        def run(calls: int) -> None:
            for _ in range(calls):
                self._state, means = self._call(steps_per_call)
            jax.block_until_ready(means)

        run(2)
        return steps_per_call * vs_pytorch.steps_per_second(run, seconds)[0]


def side_by_side(fns: list[Callable[[], Any]]) -> list[Any]:
    """`fn()` of each, in threads on as many cores: XLA compiles a program on one core."""
    with concurrent.futures.ThreadPoolExecutor(min(len(fns), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda fn: fn(), fns))


def loop_steps_per_call() -> int:
    """k: the steps per host call that the training loop makes by default on this backend."""
    return train.AUTO_STEPS_PER_CALL.get(jax.default_backend(),
                                         train.AUTO_STEPS_PER_CALL_ACCELERATOR)


# A timed program: the facts of its row (its k steps per call among them) and its runner.
Program = tuple[dict[str, Any], LoopRunner]


def bench_program(name: str, dtype: str, batch_size: int) -> Program:
    """`vs_pytorch.BENCHES[name]`'s train step in `dtype`, in as many micro-batch slices as
    the loop would choose (1 on accelerators), inside the loop's multi-step program
    (`train.train_steps`) for the loop's k steps per call, compiled."""
    base = vs_pytorch.BENCHES[name]
    bench = dataclasses.replace(base, cfg=dataclasses.replace(base.cfg, dtype=dtype))
    batch = vs_pytorch.make_batch(bench, batch_size)
    micro_batches = train.auto_micro_batches(*batch["inputs"].shape, 1)
    step, state, device_batch, num_params = vs_pytorch.jax_step(bench, batch, micro_batches)
    schedule = optimizer_lib.make_schedule(optimizer_lib.default_config(), 10_000)
    # The step's own function inside: only the outermost jit takes compiler options.
    steps = jax.jit(functools.partial(train.train_steps, step_fn=step.__wrapped__,
                                      schedule=schedule), donate_argnums=0,
                    compiler_options=compilation.compiler_options(jax.default_backend(),
                                                                  bench.xla_cpu_ynnpack))
    k = loop_steps_per_call()
    stacked = jax.tree.map(lambda x: jnp.stack([x] * k), device_batch)
    facts = {"dtype": dtype, "batch_size": batch_size, "params": num_params,
             "micro_batches": micro_batches, "steps_per_call_k": k,
             "flops_per_step": matmul_flops(step, state, device_batch)}
    return facts, LoopRunner(steps, state, stacked).compiled()


def _stacked_batches(task: train.Task, steps_per_call: int) -> dict[str, np.ndarray]:
    """The task's first batches as one call of the loop's multi-step program takes them."""
    return jax.tree.map(lambda *xs: np.stack(xs),
                        *[task.train_batches[i] for i in range(steps_per_call)])


def run_program(configs: list, tasks: list[train.Task], vmapped: bool) -> Program:
    """The multi-step program that `grokking.run` trains the first of `configs` with, or
    (`vmapped`) all of them as one seed group (train.build_programs with num_runs, the program
    `critical_data_size --config.vmap_runs` trains), compiled, on their first batches."""
    mesh = sharding.make_mesh()
    if not vmapped:
        configs, tasks = configs[:1], tasks[:1]
    config = configs[0]
    programs = train.build_programs(config, tasks[0], mesh, len(configs) if vmapped else None)
    k = programs.steps_per_call
    keys = [jax.random.key(c.seed) for c in configs]
    extra = ()  # a vmapped program takes the runs' hyperparameters as its last argument
    if vmapped:
        extra = (sharding.put_replicated(train.stacked_hyperparameters(configs), mesh),)
    state = programs.init(jnp.stack(keys) if vmapped else keys[0], *extra)
    facts: dict[str, Any] = {"steps_per_call_k": k}
    if not vmapped:  # the facts of a step row
        batch = sharding.put_batch(tasks[0].train_batches[0], mesh)
        facts = {"dtype": config.model.dtype, "batch_size": int(batch["inputs"].shape[0]),
                 "params": params_lib.count_params(state.params),
                 "micro_batches": train.micro_batches_of(config, tasks[0], mesh.size),
                 "steps_per_call_k": k,
                 "flops_per_step": matmul_flops(programs.step, state, batch)}
    stacked = [_stacked_batches(t, k) for t in tasks]
    host = jax.tree.map(lambda *xs: np.stack(xs), *stacked) if vmapped else stacked[0]
    batches = sharding.put_batch(host, mesh, batch_axis=programs.batch_axis + 1)
    return facts, LoopRunner(programs.steps, state, batches, *extra).compiled()


def step_row(program: Program, seconds: float, device_kind: str) -> dict[str, Any]:
    """Steps/s, FLOP/s and MFU at one step per host call and at the program's k (`_k` keys):
    one program, whose trip count is a traced value, as in the training loop."""
    facts, runner = program
    k, flops = facts["steps_per_call_k"], facts["flops_per_step"]
    peak = peak_flops(device_kind, facts["dtype"])
    steps_per_s, steps_per_s_k = runner.rate(1, seconds), runner.rate(k, seconds)
    return {**facts, "peak_flop_per_s": peak,
            "steps_per_s": steps_per_s, "flop_per_s": steps_per_s * flops,
            "mfu": None if peak is None else steps_per_s * flops / peak,
            "steps_per_s_k": steps_per_s_k, "flop_per_s_k": steps_per_s_k * flops,
            "mfu_k": None if peak is None else steps_per_s_k * flops / peak}


def seed_group_configs(sizes: Sizes, smoke: bool, num_runs: int) -> list:
    """The runs of a vmapped seed group, seeds 0..num_runs-1, `sizes.run_steps` steps each:
    `critical_data_size`'s base run at 900 train pairs (as benchmarks.sweep_runner), or its
    smoke base. Both sweep sections train these, so that they compile the same programs."""
    configs = []
    for seed in range(num_runs):
        if smoke:
            config = critical_data_size.get_config("smoke").base
        else:
            config = critical_data_size.get_config().base
            config.task.train_count = 900
        config.seed = seed
        config.num_steps = sizes.run_steps
        config.eval_every = max(1, sizes.run_steps // 2)
        config.checkpoint_every = sizes.run_steps
        configs.append(config)
    return configs


@dataclasses.dataclass
class Prepared:
    """The programs of the timed step sections, compiled."""

    grokking: Program
    small_lm: list[Program]  # per compute dtype and batch size
    single_run: Program  # one run of the seed groups: their sequential baseline
    seed_groups: dict[int, Program]  # R -> R runs vmapped


def prepare(sizes: Sizes, smoke: bool) -> Prepared:
    """Every program the step sections time, compiled side by side (a program compiles on
    one core; the timings then run one at a time): the grokking step, the small LM's per
    compute dtype and batch size, one seed-group run and each R-run seed group.

    The grokking step is the demo's run; in the smoke, the seed groups' run (the smoke
    variant's), whose program the sweep sections compile anyway."""
    groups = {}
    for num_runs in sizes.run_counts:
        configs = seed_group_configs(sizes, smoke, num_runs)
        groups[num_runs] = (configs, [grokking.make_task(c, jax.device_count())
                                      for c in configs])

    def small_lm() -> list[Program]:
        # One after another: their dtypes share one initialisation program (the parameters
        # are float32 in both), which the second then finds in the compilation cache.
        return [bench_program("small_lm", dtype, batch_size)
                for dtype in ("float32", "bfloat16") for batch_size in sizes.lm_batch_sizes]

    jobs = {"small_lm": small_lm,
            "single_run": functools.partial(run_program, *groups[sizes.run_counts[0]], False)}
    if not smoke:
        demo = grokking.get_config()
        jobs["grokking"] = functools.partial(
            run_program, [demo], [grokking.make_task(demo, jax.device_count())], False)
    jobs.update({f"group_{r}": functools.partial(run_program, *group, True)
                 for r, group in groups.items()})
    done = dict(zip(jobs, side_by_side(list(jobs.values()))))
    return Prepared(grokking=done.get("grokking", done["single_run"]),
                    small_lm=done["small_lm"], single_run=done["single_run"],
                    seed_groups={r: done[f"group_{r}"] for r in groups})


def vmapped_seeds(prepared: Prepared, seconds: float) -> list[dict[str, Any]]:
    """Run-steps/s of R runs vmapped against one run's, each dispatched as the training loop
    dispatches it (its multi-step program at its steps per call)."""
    facts, runner = prepared.single_run
    single = runner.rate(facts["steps_per_call_k"], seconds)
    rows = []
    for num_runs, (facts, runner) in prepared.seed_groups.items():
        k = facts["steps_per_call_k"]
        steps_per_s = runner.rate(k, seconds)
        rows.append({"runs": num_runs, "steps_per_call": k, "vmapped_steps_per_s": steps_per_s,
                     "vmapped_run_steps_per_s": num_runs * steps_per_s,
                     "sequential_run_steps_per_s": single,
                     "speedup": num_runs * steps_per_s / single})
    return rows


def vmapped_runs(sizes: Sizes, smoke: bool, folder: pathlib.Path) -> list[dict[str, Any]]:
    """Whole runs (compilation, evaluation, metrics and checkpoints included): R seeds through
    `grokking.run_vmapped` in one program, and the same R one after another."""
    rows = []
    for num_runs in sizes.vmapped_runs:
        configs = seed_group_configs(sizes, smoke, num_runs)
        start = time.perf_counter()
        grokking.run_vmapped(configs, [str(folder / f"vmapped_{num_runs}" / str(c.seed))
                                       for c in configs])
        vmapped = time.perf_counter() - start
        start = time.perf_counter()
        for config in configs:
            grokking.run(config, str(folder / f"sequential_{num_runs}" / str(config.seed)))
        sequential = time.perf_counter() - start
        rows.append({"runs": num_runs, "steps": sizes.run_steps, "vmapped_seconds": vmapped,
                     "sequential_seconds": sequential, "speedup": sequential / vmapped})
    return rows


def bf16_demo(sizes: Sizes, folder: pathlib.Path) -> dict[str, Any]:
    """The grokking demo (or its smoke variant) in bfloat16, timed from its own metrics."""
    config = grokking.get_config(sizes.demo_variant)
    config.model.dtype = "bfloat16"
    config.num_steps = sizes.demo_steps or config.num_steps
    start = time.perf_counter()
    summary = grokking.run(config, str(folder / "bf16_demo"))
    process_seconds = time.perf_counter() - start
    rows = run_io.read_metrics(folder / "bf16_demo")
    step = transitions.first_step_at_least(rows, "test_accuracy", grokking.GENERALIZED_AT)
    return {"variant": sizes.demo_variant or "default", "num_steps": config.num_steps,
            "step_generalized": step,
            "seconds_to_generalize": next((r["elapsed_seconds"] for r in rows
                                           if r["step"] == step), None),
            "run_seconds": summary["wall_seconds"], "seconds_with_setup": process_seconds,
            "final_train_loss": summary["final_train_loss"],
            "final_test_accuracy": summary["final_test_accuracy"]}


def measure(smoke: bool) -> dict[str, Any]:
    """Every section at the smoke sizes (`smoke`, or a CPU backend) or the full ones."""
    smoke = smoke or jax.default_backend() == "cpu"
    sizes = SMOKE if smoke else FULL
    device = jax.devices()[0]
    start = time.perf_counter()
    report: dict[str, Any] = {
        "backend": jax.default_backend(), "device_kind": device.device_kind,
        "device_count": jax.device_count(), "jax_version": jax.__version__, "smoke": smoke,
        "sizes": dataclasses.asdict(sizes)}
    sections = {}  # wall and CPU seconds each section took, so a slow one shows
    cpu_start = time.process_time()
    with tempfile.TemporaryDirectory(prefix="accelerator_") as tmp:
        folder = pathlib.Path(tmp)
        if not jax.config.jax_compilation_cache_dir:
            # A program two sections compile alike (the sweep sections' runs) compiles once;
            # a cache of this run's own, so that every run starts cold.
            jax.config.update("jax_compilation_cache_dir", str(folder / "xla"))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        kind = device.device_kind

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            section_start, section_cpu = time.perf_counter(), time.process_time()
            print(f"{name} ...", file=sys.stderr, flush=True)
            result = fn()
            sections[name] = {"wall": time.perf_counter() - section_start,
                              "cpu": time.process_time() - section_cpu}
            return result

        prepared = timed("compile", lambda: prepare(sizes, smoke))
        report["grokking_step"] = timed("grokking_step", lambda: step_row(
            prepared.grokking, sizes.seconds, kind))
        report["small_lm_step"] = timed("small_lm_step", lambda: [
            step_row(p, sizes.seconds, kind) for p in prepared.small_lm])
        report["vmapped_seeds"] = timed("vmapped_seeds",
                                        lambda: vmapped_seeds(prepared, sizes.seconds))
        report["vmapped_runs"] = timed("vmapped_runs",
                                       lambda: vmapped_runs(sizes, smoke, folder))
        report["bf16_demo"] = timed("bf16_demo", lambda: bf16_demo(sizes, folder))
    report["steps_per_call"] = [1, loop_steps_per_call()]
    report["section_seconds"] = sections
    report["total_seconds"] = time.perf_counter() - start
    # Of this process, all its threads: on a machine shared with other jobs, wall seconds
    # grow with the load and CPU seconds do not.
    report["total_cpu_seconds"] = time.process_time() - cpu_start
    report["notes"] = [
        "Every step rate is of the training loop's multi-step program (train.train_steps) on "
        "device-resident batches: grokking_step and small_lm_step at steps_per_call 1 (one "
        "step per Python call, its host overhead in every step) and at k (`_k` keys, the "
        "loop's default on this backend); vmapped_seeds at the steps per call its runs take.",
        "FLOPs per step are the matrix products of the jitted train step (forward and "
        "backward, attention included; benchmarks.common.matmul_flops); MFU = FLOP/s / the "
        "device's dense peak for the step's compute dtype (PEAKS in benchmarks/accelerator.py; "
        "null for devices not listed, CPUs included).",
        "vmapped_seeds compares train steps only; vmapped_runs whole runs, compilation, "
        "evaluations, metrics and checkpoints included.",
    ]
    return report


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    out = pathlib.Path(_OUT.value).expanduser()
    try:  # checked before minutes of measuring, not after
        validation.require_flag(validation.is_folder_or_absent(str(out)), "out",
                                "is a file, not a folder", _OUT.value)
    except validation.ConfigError as error:
        sys.exit(f"error: {error}")
    report = measure(_SMOKE.value)
    out.mkdir(parents=True, exist_ok=True)
    run_io.write_json_atomic(out / REPORT_FILE, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
