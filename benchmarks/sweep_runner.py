"""Sweep wall time against the sum of its single-run times, per execution mode.

Runs the same small grid (4 seeds of one grokking config) three ways in one invocation, into
fresh folders: one after another in this process (whose per-run times are the baseline sum),
in parallel worker processes, and as one vmapped program over the seeds:
  python -m benchmarks.sweep_runner
  python -m benchmarks.sweep_runner --workers=2 --num_steps=600

Each run is the default sweep's base run as it is (3,000 steps, evaluated every 25): with short
runs, compilation (once per run sequentially and per worker, once in all when vmapped) is a
large share of the wall time and flatters the vmapped mode.
"""

from __future__ import annotations

import tempfile
import time

from absl import app, flags, logging

from benchmarks.common import positive_ints
from experiments import critical_data_size, grokking
from phasemix.runs import sweep

_WORKERS = flags.DEFINE_integer("workers", 2, "Processes of the parallel mode.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "Steps of each run (0: the sweep's own).")
_RUNS = flags.DEFINE_integer("runs", 4, "Runs in the grid (seeds).")


def timed_sweep(workers: int, vmapped: bool = False) -> tuple[float, float]:
    """(sweep wall seconds, sum of the runs' own wall seconds incl. compilation)."""
    base = critical_data_size.get_config().base
    if _NUM_STEPS.value:
        base.num_steps = _NUM_STEPS.value
        base.checkpoint_every = min(base.checkpoint_every, _NUM_STEPS.value)
    grid = sweep.grid({"task.train_count": [900], "seed": list(range(_RUNS.value))})
    with tempfile.TemporaryDirectory() as folder:
        start = time.monotonic()
        rows = sweep.run_sweep(base, grid, folder, grokking.run, grokking.validate, workers,
                               group_fn=grokking.run_vmapped if vmapped else None)
        wall = time.monotonic() - start
    return wall, sum(r["run_seconds"] for r in rows)


def main(argv):
    del argv
    positive_ints(_WORKERS, _RUNS)
    positive_ints(_NUM_STEPS, at_least=0)
    logging.set_verbosity(logging.WARNING)
    wall, single_runs = timed_sweep(1)
    results = {"sequential (1 process)": wall,
               f"process-parallel ({_WORKERS.value} processes)": timed_sweep(_WORKERS.value)[0],
               f"vmap over {_RUNS.value} seeds (1 process)": timed_sweep(1, vmapped=True)[0]}
    print(f"sum of the {_RUNS.value} single-run times (sequential mode): {single_runs:.1f} s")
    print(f"{'mode':<34} {'sweep wall s':>12} {'wall / sum of runs':>19} {'speed-up':>9}")
    for mode, seconds in results.items():
        print(f"{mode:<34} {seconds:>12.1f} {seconds / single_runs:>19.2f} "
              f"{single_runs / seconds:>8.2f}x")


if __name__ == "__main__":
    app.run(main)
