"""Steps/second of the grokking train step, and its FLOP/s as a fraction of a plain matmul's.

Both are measured in the same process, alternating, so the ratio holds on any machine:
  python -m benchmarks.train_step
  python -m benchmarks.train_step --batch_sizes=64,512 --repeats=5

FLOPs per step are its matrix products' (`common.matmul_flops`; XLA's cost analysis counts a
loop body once, and the sliced step on a CPU is a loop).
"""

from __future__ import annotations

import statistics
import time

import jax
from absl import app, flags

from benchmarks.common import matmul_flops, positive_ints, time_matmul
from experiments import grokking
from phasemix.training import sharding, train

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "512"], "Batch sizes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating timing rounds (median is reported).")
_STEPS = flags.DEFINE_integer("steps", 50, "Train steps per timing round.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 1024, "Size of the square float32 matmul peak.")


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


def main(argv):
    del argv
    positive_ints(_BATCH_SIZES, _REPEATS, _STEPS, _MATMUL_N)
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
