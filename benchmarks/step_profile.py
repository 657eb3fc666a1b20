"""Where a train step's CPU time goes: matrix products, everything else, and idle threads.

Traces a few steps with `jax.profiler`, takes every XLA operation each CPU thread ran from the
trace and sorts them by the compiled program into products (dots, and fusions holding one) and
the rest. Prints per step: the wall time, each thread's busy share, the products' CPU time and
speed, the other operations' CPU time, and the step's whole work spread evenly over the CPUs with
no idle at all (what these kernels could do at best), beside the PyTorch eager step timed in the
same rounds and the 1.3x target of the performance issue; then the costliest non-product
operations by their JAX name. Models as in `vs_pytorch`:
  python -m benchmarks.step_profile
  python -m benchmarks.step_profile --models=knowledge_base --batch_sizes=32 --top=20
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re
import statistics
import tempfile
import time

import jax
from absl import app, flags

from benchmarks import vs_pytorch
from benchmarks.common import TARGET_SPEEDUP, matmul_flops, positive_ints
from benchmarks.vs_pytorch import _BATCH_SIZES, _MODELS, _ROUNDS, _SECONDS
from phasemix.training import train

_STEPS = flags.DEFINE_integer("steps", 5, "Steps traced.")
_TOP = flags.DEFINE_integer("top", 12, "Costliest non-product operations listed.")
_VS_PYTORCH = flags.DEFINE_bool("vs_pytorch", True, "Time the PyTorch eager step beside it "
                                "(needs the `bench` extra).")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\((.*)$")
_CONTROL_FLOW = ("while", "conditional", "call")  # their events hold their body's events


@dataclasses.dataclass(frozen=True)
class Op:
    is_product: bool
    jax_name: str  # the JAX operation it came from (metadata op_name), "" if none


def compiled_ops(hlo_text: str) -> dict[str, Op]:
    """The compiled program's thunks by instruction name (as the profiler names them), control
    flow left out: whether each is a product, and its JAX name."""
    bodies: dict[str, list[tuple[str, str, str]]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif current is not None and (match := _INSTRUCTION.match(line)):
            current.append(match.groups())

    def holds_product(computation: str) -> bool:
        for _, opcode, rest in bodies.get(computation, []):
            if opcode in ("dot", "convolution"):
                return True
            called = re.search(r"calls=%([\w.\-]+)", rest)
            if opcode == "fusion" and called and holds_product(called.group(1)):
                return True
        return False

    # Instructions of fused computations and of reductions' regions run inside their caller's
    # thunk; the others (the entry, loop bodies and conditions) are the thunks the trace names.
    inlined = set()
    for instructions in bodies.values():
        for _, opcode, rest in instructions:
            inlined.update(re.findall(r"calls=%([\w.\-]+)", rest))
            if opcode != "call":
                inlined.update(re.findall(r"to_apply=%([\w.\-]+)", rest))
    ops = {}
    for computation, instructions in bodies.items():
        if computation in inlined:
            continue
        for name, opcode, rest in instructions:
            if opcode in _CONTROL_FLOW or opcode == "parameter":
                continue
            called = re.search(r"calls=%([\w.\-]+)", rest)
            product = opcode in ("dot", "convolution") or (
                opcode == "fusion" and called is not None and holds_product(called.group(1)))
            jax_name = re.search(r'op_name="([^"]*)"', rest)
            ops[name] = Op(product, short_jax_name(jax_name.group(1) if jax_name else ""))
    return ops


def short_jax_name(op_name: str) -> str:
    """'jit(train_step)/while/body/closed_call/jvp(Transformer)/block_0/mul' ->
    'jvp(Transformer)/block_0/mul'."""
    parts = [p for p in op_name.split("/")
             if not p.startswith("jit(") and p not in ("while", "body", "closed_call", "cond")]
    return "/".join(parts)


@dataclasses.dataclass
class StepProfile:
    """CPU time per step (seconds) by thread and by kind, from a trace of a few steps."""

    wall: float  # wall seconds per step while traced
    busy_by_thread: dict[str, float]
    products: float
    others: float
    others_by_name: collections.Counter  # JAX name -> CPU seconds per step
    count_by_name: collections.Counter  # JAX name -> executions per step


def profile_ops(events: list[tuple[str, str, float]], ops: dict[str, Op], steps: int,
                wall: float) -> StepProfile:
    """Sums (thread, operation name, seconds) events of `steps` steps into a StepProfile."""
    busy, others_by_name = collections.Counter(), collections.Counter()
    counts = collections.Counter()
    products = others = 0.0
    for thread, name, seconds in events:
        op = ops.get(name)
        if op is None:  # profiler's own regions, thread pool bookkeeping, control flow
            continue
        busy[thread] += seconds / steps
        if op.is_product:
            products += seconds / steps
        else:
            others += seconds / steps
            others_by_name[op.jax_name or name] += seconds / steps
            counts[op.jax_name or name] += 1 / steps
    return StepProfile(wall, dict(busy), products, others, others_by_name, counts)


def trace_steps(run_steps, steps: int) -> tuple[list[tuple[str, str, float]], float]:
    """Events (thread, name, seconds) of `run_steps(steps)` under the profiler, and its wall
    seconds per step."""
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        run_steps(steps)
        wall = (time.perf_counter() - start) / steps
        jax.profiler.stop_trace()
        (path,) = pathlib.Path(trace_dir).rglob("*.xplane.pb")
        events = []
        for plane in ProfileData.from_file(str(path)).planes:
            if plane.name == "/host:CPU":
                for line in plane.lines:
                    events.extend((line.name, e.name, e.duration_ns * 1e-9) for e in line.events)
    return events, wall


def main(argv):
    del argv
    positive_ints(_STEPS, _TOP, _BATCH_SIZES, _ROUNDS)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {cpus} CPU(s)")
    for name in _MODELS.value:
        bench = vs_pytorch.benches()[name]
        for batch_size in map(int, _BATCH_SIZES.value):
            batch = vs_pytorch.make_batch(bench, batch_size)
            slices = train.auto_micro_batches(*batch["inputs"].shape, 1)
            step, state, device_batch, _ = vs_pytorch.jax_step(bench, batch, slices)
            flops = matmul_flops(step, state, device_batch)
            ops = compiled_ops(step.lower(state, device_batch).compile().as_text())
            runners = {"jax": vs_pytorch.jax_runner(step, state, device_batch)}
            if _VS_PYTORCH.value:
                t_step = vs_pytorch.torch_step(bench, batch)[0]
                runners["torch"] = lambda n, t_step=t_step: [t_step() for _ in range(n)]
            rates = vs_pytorch.alternated_rates(runners, _ROUNDS.value, _SECONDS.value)
            events, traced_wall = trace_steps(runners["jax"], _STEPS.value)
            report(name, batch_size, slices, cpus, flops,
                   profile_ops(events, ops, _STEPS.value, traced_wall),
                   1 / statistics.median(rates["jax"]),
                   1 / statistics.median(rates["torch"]) if "torch" in rates else None)


def report(name: str, batch_size: int, slices: int, cpus: int, flops: float,
           profile: StepProfile, step_seconds: float, torch_seconds: float | None) -> None:
    ms = 1e3
    # Threads that ran more than 1% of the step (the runtime's client threads run a few tiny
    # operations).
    busy = sorted((b / profile.wall for b in profile.busy_by_thread.values()
                   if b > 0.01 * profile.wall), reverse=True)
    work = profile.products + profile.others
    print(f"\n{name}, batch {batch_size} in {slices} slice(s): {step_seconds * ms:.1f} ms per "
          f"step (median of the rounds; {profile.wall * ms:.1f} ms traced); {len(busy)} "
          f"thread(s) ran its operations, busy {', '.join(f'{b:.0%}' for b in busy)} of the "
          f"traced steps")
    print(f"  CPU time per step: products {profile.products * ms:.1f} ms "
          f"({flops / max(profile.products, 1e-12) / 1e9:.1f} GFLOP/s per thread), other "
          f"operations {profile.others * ms:.1f} ms; spread evenly over {cpus} CPU(s) with no "
          f"idle: {work / cpus * ms:.1f} ms")
    if torch_seconds is not None:
        print(f"  PyTorch eager step, same rounds: {torch_seconds * ms:.1f} ms; "
              f"{TARGET_SPEEDUP}x faster than it: {torch_seconds / TARGET_SPEEDUP * ms:.1f} ms")
    print("  costliest other operations (CPU ms per step, executions per step):")
    for jax_name, seconds in profile.others_by_name.most_common(_TOP.value):
        print(f"    {seconds * ms:7.2f} {profile.count_by_name[jax_name]:5.0f}  {jax_name}")


if __name__ == "__main__":
    flags.FLAGS.set_default("models", ["small_lm"])
    flags.FLAGS.set_default("rounds", 3)
    app.run(main)
