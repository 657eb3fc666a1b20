"""One command that measures phasemix on whatever backend JAX finds, into one JSON report.

  python -m benchmarks.accelerator --out=reports/h100      # <= 10 minutes on one GPU/TPU
  python -m benchmarks.accelerator --smoke --out=/tmp/acc  # the same sections, small

On a CPU backend the sizes are the smoke ones with or without --smoke (the full sizes, 512
vmapped runs and a 4,000-step bfloat16 demo, would take far longer than 10 minutes there).

Writes `accelerator_report.json` into `--out` (default: the current folder) with:
  backend, device_kind   what JAX ran on;
  grokking_step          steps/s of the grokking demo's train step at its batch of 512;
  small_lm_step          steps/s of the small LM's train step, float32 and bfloat16, its
                         matrix-product FLOPs per step (common.matmul_flops), FLOP/s and MFU
                         against the device's peak for that dtype (`PEAKS`; null on a device
                         not in the table, e.g. any CPU). Both steps are benchmarks.vs_pytorch's
                         (`BENCHES`, `jax_step`), built as the training loop builds them;
  vmapped_seeds          the step of a vmapped group of seeds (train.build_programs with
                         num_runs=R, a program `critical_data_size --config.vmap_runs` trains)
                         for each R, in run-steps/s against R sequential runs of the single-run
                         step;
                         and `vmapped_runs`: whole runs through `grokking.run_vmapped` against
                         the same runs one after another through `grokking.run`;
  bf16_demo              a bfloat16 grokking demo: step at which it generalised, seconds;
  steps_per_call         1: the loop dispatches one step per call; and `notes`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from benchmarks import vs_pytorch
from benchmarks.common import matmul_flops
from experiments import critical_data_size, grokking
from phasemix.analysis import transitions
from phasemix.base import run_io, validation
from phasemix.training import sharding, train

REPORT_FILE = "accelerator_report.json"

_OUT = flags.DEFINE_string("out", ".", "Folder the report is written to (made if missing).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Small sizes and few steps: a CPU check of the "
                           "whole command in under 2 minutes.")

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
    grokking_batch_size: int | None  # of the demo's step; None: the demo's own (512)
    lm_batch_sizes: tuple[int, ...]  # small-LM batch sizes
    run_counts: tuple[int, ...]  # R of the vmapped groups of seeds
    vmapped_runs: tuple[int, ...]  # R of the whole-run comparison (each also run R times alone)
    run_steps: int  # steps of each run of that comparison
    demo_variant: str  # grokking config variant of the bfloat16 demo


FULL = Sizes(seconds=3.0, grokking_batch_size=None, lm_batch_sizes=(64, 512, 4096),
             run_counts=(1, 8, 64, 256, 512), vmapped_runs=(8,), run_steps=300,
             demo_variant="")
SMOKE = Sizes(seconds=0.3, grokking_batch_size=64, lm_batch_sizes=(16,), run_counts=(1, 2, 4),
              vmapped_runs=(2,), run_steps=10, demo_variant="smoke")


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak for `dtype` products from `PEAKS`, or None if unknown."""
    for name, peaks in PEAKS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def rate(step, state, batch, seconds: float) -> float:
    """Steps/s of a donated-state `step` on one device batch, after two warm-up steps."""
    runner = vs_pytorch.jax_runner(step, state, batch)
    runner(2)
    return vs_pytorch.steps_per_second(runner, seconds)[0]


def bench_step(name: str, dtype: str, batch_size: int, seconds: float,
               device_kind: str) -> dict[str, Any]:
    """Steps/s, FLOPs, FLOP/s and MFU of `vs_pytorch.BENCHES[name]`'s train step in `dtype`,
    in as many micro-batch slices as the loop would choose (1 on accelerators)."""
    base = vs_pytorch.BENCHES[name]
    bench = dataclasses.replace(base, cfg=dataclasses.replace(base.cfg, dtype=dtype))
    batch = vs_pytorch.make_batch(bench, batch_size)
    micro_batches = train.auto_micro_batches(*batch["inputs"].shape, 1)
    step, state, device_batch, num_params = vs_pytorch.jax_step(bench, batch, micro_batches)
    flops = matmul_flops(step, state, device_batch)
    steps_per_s = rate(step, state, device_batch, seconds)
    peak = peak_flops(device_kind, dtype)
    return {"dtype": dtype, "batch_size": batch_size, "params": num_params,
            "micro_batches": micro_batches, "steps_per_s": steps_per_s,
            "flops_per_step": flops, "flop_per_s": steps_per_s * flops,
            "peak_flop_per_s": peak,
            "mfu": None if peak is None else steps_per_s * flops / peak}


def grokking_step(sizes: Sizes, device_kind: str) -> dict[str, Any]:
    """The demo's train step (its model, float32, its batch size unless `sizes` sets one)."""
    config = grokking.get_config()
    return bench_step("grokking", config.model.dtype,
                      sizes.grokking_batch_size or config.batch_size, sizes.seconds, device_kind)


def small_lm_step(sizes: Sizes, device_kind: str) -> list[dict[str, Any]]:
    """The small LM's step per compute dtype and batch size."""
    return [bench_step("small_lm", dtype, batch_size, sizes.seconds, device_kind)
            for dtype in ("float32", "bfloat16") for batch_size in sizes.lm_batch_sizes]


def seed_group_config(smoke: bool):
    """The runs a vmapped seed group trains: `critical_data_size`'s base run at 900 train
    pairs (as benchmarks.sweep_runner), or its smoke base."""
    if smoke:
        return critical_data_size.get_config("smoke").base
    base = critical_data_size.get_config().base
    base.task.train_count = 900
    return base


def vmapped_seeds(sizes: Sizes, smoke: bool) -> list[dict[str, Any]]:
    """Run-steps/s of the R-run vmapped step against the single-run step run R times."""
    base = seed_group_config(smoke)
    mesh = sharding.make_mesh()
    single = None
    rows = []
    for num_runs in sizes.run_counts:
        configs = [base.copy_and_resolve_references() for _ in range(num_runs)]
        for seed, config in enumerate(configs):
            config.seed = seed
        tasks = [grokking.make_task(c, jax.device_count()) for c in configs]
        if single is None:  # the sequential baseline: one run's step, as `grokking.run` has it
            programs = train.build_programs(base, tasks[0], mesh)
            batch = sharding.put_batch(tasks[0].train_batches[0], mesh)
            single = rate(programs.step, programs.init(jax.random.key(0)), batch,
                          sizes.seconds)
        programs = train.build_programs(base, tasks[0], mesh, num_runs)
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *[t.train_batches[0] for t in tasks])
        batch = sharding.put_batch(stacked, mesh, batch_axis=programs.batch_axis)
        hparams = sharding.put_replicated(train.stacked_hyperparameters(configs), mesh)
        state = programs.init(jnp.stack([jax.random.key(c.seed) for c in configs]), hparams)
        steps_per_s = rate(lambda s, b: programs.step(s, b, hparams), state, batch,
                           sizes.seconds)
        rows.append({"runs": num_runs, "vmapped_steps_per_s": steps_per_s,
                     "vmapped_run_steps_per_s": num_runs * steps_per_s,
                     "sequential_run_steps_per_s": single,
                     "speedup": num_runs * steps_per_s / single})
    return rows


def vmapped_runs(sizes: Sizes, smoke: bool, folder: pathlib.Path) -> list[dict[str, Any]]:
    """Whole runs (compilation, evaluation, metrics and checkpoints included): R seeds through
    `grokking.run_vmapped` in one program, and the same R one after another."""
    rows = []
    for num_runs in sizes.vmapped_runs:
        configs = []
        for seed in range(num_runs):
            config = seed_group_config(smoke)
            config.seed = seed
            config.num_steps = sizes.run_steps
            config.eval_every = max(1, sizes.run_steps // 2)
            config.checkpoint_every = sizes.run_steps
            configs.append(config)
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
        for name, fn in (("grokking_step", lambda: grokking_step(sizes, device.device_kind)),
                         ("small_lm_step", lambda: small_lm_step(sizes, device.device_kind)),
                         ("vmapped_seeds", lambda: vmapped_seeds(sizes, smoke)),
                         ("vmapped_runs", lambda: vmapped_runs(sizes, smoke, folder)),
                         ("bf16_demo", lambda: bf16_demo(sizes, folder))):
            section_start, section_cpu = time.perf_counter(), time.process_time()
            print(f"{name} ...", file=sys.stderr, flush=True)
            report[name] = fn()
            sections[name] = {"wall": time.perf_counter() - section_start,
                              "cpu": time.process_time() - section_cpu}
    report["steps_per_call"] = 1
    report["section_seconds"] = sections
    report["total_seconds"] = time.perf_counter() - start
    # Of this process, all its threads: on a machine shared with other jobs, wall seconds
    # grow with the load and CPU seconds do not.
    report["total_cpu_seconds"] = time.process_time() - cpu_start
    report["notes"] = [
        "steps_per_call is 1: the training loop dispatches one jitted step per Python call "
        "(no multi-step dispatch yet), so host overhead per step is in every steps/s here.",
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
