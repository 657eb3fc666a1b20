"""A model's train step with and without one of its CPU kernel choices, compiled side by side.

`--switch=ynnpack` (default): `xla_cpu_ynnpack` (a config field) decides whether XLA hands a CPU
step's products to YNNPACK or keeps its own dot kernels (the kernel gradients follow it, as in
the experiments). `--switch=kernel_grads`: the dense
layers' kernel gradients as autodiff writes them (X^T dY) or transposed (`model.
transposed_kernel_grad_dot`), both with the model's YNNPACK setting. This compiles the same step
both ways and times them alternately in this one process (median of per-round ratios, with
their middle half), since this VM's speed drifts too much between processes. Models as in
`vs_pytorch` (`sweep_base`: critical_data_size's base run, `knowledge_base`: the default
knowledge_mixing run's, batch 32); `--one_cpu` pins to one CPU (Linux), as a sweep pins each of
as many workers as CPUs:
  python -m benchmarks.ynnpack
  python -m benchmarks.ynnpack --models=sweep_base --batch_sizes=512 --one_cpu
  python -m benchmarks.ynnpack --models=knowledge_base --batch_sizes=32 --one_cpu
  python -m benchmarks.ynnpack --switch=kernel_grads --models=knowledge_base --batch_sizes=32 --one_cpu
"""

from __future__ import annotations

import dataclasses
import os
import statistics

import jax
from absl import app, flags

from benchmarks import vs_pytorch
from benchmarks.vs_pytorch import _BATCH_SIZES, _MODELS, _ROUNDS, _SECONDS
from phasemix.training import train

SWITCHES = {"ynnpack": "xla_cpu_ynnpack",  # --switch -> the Bench field it flips
            "kernel_grads": "transposed_kernel_grads"}
_SWITCH = flags.DEFINE_enum("switch", "ynnpack", list(SWITCHES),
                            "The choice compiled both ways.")
_ONE_CPU = flags.DEFINE_bool("one_cpu", False, "Pin this process to one CPU, as a sweep "
                             "pins each worker when there are as many workers as CPUs.")


def both_steps(bench: vs_pytorch.Bench, batch_size: int, switch: str = "ynnpack"
               ) -> tuple[int, dict[bool, tuple]]:
    """Slices, and {on: (step, state, device batch)} of one step compiled both ways."""
    batch = vs_pytorch.make_batch(bench, batch_size)
    micro_batches = train.auto_micro_batches(*batch["inputs"].shape, 1)
    steps = {}
    for on in (False, True):
        variant = dataclasses.replace(bench, **{SWITCHES[switch]: on})
        steps[on] = vs_pytorch.jax_step(variant, batch, micro_batches)[:3]
    return micro_batches, steps


def main(argv):
    del argv
    if _ONE_CPU.value:  # before JAX starts its CPU backend, which sizes its threads to the CPUs
        if not hasattr(os, "sched_setaffinity"):
            raise app.UsageError("--one_cpu needs Linux (os.sched_setaffinity)")
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {cpus} CPU(s); "
          f"{_SWITCH.value} off and on")
    print(f"{'model':<10} {'batch':>5} {'slices':>6} {'off steps/s':>12} {'on steps/s':>11} "
          f"{'off/on':>7} {'middle half':>11}")
    all_benches = vs_pytorch.benches()
    for name in _MODELS.value:
        for batch_size in map(int, _BATCH_SIZES.value):
            micro_batches, steps = both_steps(all_benches[name], batch_size, _SWITCH.value)
            runners = {ynnpack: vs_pytorch.jax_runner(*s) for ynnpack, s in steps.items()}
            rates = vs_pytorch.alternated_rates(runners, _ROUNDS.value, _SECONDS.value)
            ratios = vs_pytorch.round_ratios(rates[False], rates[True])
            low, high = vs_pytorch.quartiles(ratios)
            print(f"{name:<10} {batch_size:>5} {micro_batches:>6} "
                  f"{statistics.median(rates[False]):>12.1f} {statistics.median(rates[True]):>11.1f} "
                  f"{statistics.median(ratios):>6.2f}x {f'{low:.2f}-{high:.2f}':>11}", flush=True)


if __name__ == "__main__":
    flags.FLAGS.set_default("models", ["grokking", "sweep_base", "small_lm"])
    flags.FLAGS.set_default("rounds", 9)
    flags.FLAGS.set_default("seconds", 1.5)
    app.run(main)
