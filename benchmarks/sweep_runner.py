"""Sweep wall time against the sum of its single-run times, per execution mode.

Runs the same small grid (4 grokking runs) sequentially in one process and in parallel
worker processes, in one invocation, into fresh folders:
  python -m benchmarks.sweep_runner
  python -m benchmarks.sweep_runner --workers=2 --num_steps=600
"""

from __future__ import annotations

import tempfile
import time

from absl import app, flags, logging

from experiments import critical_data_size, grokking
from phasemix import sweep

_WORKERS = flags.DEFINE_integer("workers", 2, "Processes of the parallel mode.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 600, "Steps of each run.")
_RUNS = flags.DEFINE_integer("runs", 4, "Runs in the grid (seeds).")


def timed_sweep(workers: int) -> tuple[float, float]:
    """(sweep wall seconds, sum of the runs' own wall seconds incl. compilation)."""
    base = critical_data_size.get_config().base
    base.num_steps = _NUM_STEPS.value
    base.checkpoint_every = _NUM_STEPS.value
    grid = sweep.grid({"task.train_count": [900], "seed": list(range(_RUNS.value))})
    with tempfile.TemporaryDirectory() as folder:
        start = time.monotonic()
        rows = sweep.run_sweep(base, grid, folder, grokking.run, grokking.validate, workers)
        wall = time.monotonic() - start
    return wall, sum(r["run_seconds"] for r in rows)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = {}
    for mode, workers in (("sequential (1 process)", 1),
                          (f"process-parallel ({_WORKERS.value} processes)", _WORKERS.value)):
        results[mode] = timed_sweep(workers)
    base_wall = results["sequential (1 process)"][0]
    print(f"{'mode':<34} {'sweep wall s':>12} {'sum of runs s':>14} {'wall/sum':>9} "
          f"{'speed-up':>9}")
    for mode, (wall, total) in results.items():
        print(f"{mode:<34} {wall:>12.1f} {total:>14.1f} {wall / total:>9.2f} "
              f"{base_wall / wall:>8.2f}x")


if __name__ == "__main__":
    app.run(main)
