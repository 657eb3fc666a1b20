"""Wall time of the published-curve fits (`experiments.bimix_fit`), this tree against a baseline.

Runs `python -m experiments.bimix_fit` (default config: 4 laws x 5 groups x 4 sizes = 80 fits;
`--fit_flag` adds flags to every run) in a fresh process per tree, one
after the other, each with an empty XLA compilation cache; then this tree once more on the cache
its first run filled (what a rerun costs). Prints the wall seconds, the ratios, and how many fit
objectives differ between the trees by more than 0.1%:
  python -m benchmarks.fit_time --baseline=f3c9c06 --fit_flag=--config.num_splits=2 \
      --fit_flag=--config.zero_shares='("drop","epsilon")'  # 320 fits, as in `full` (that
      # commit's default; overrides rather than the variant, which it lacks)
  python -m benchmarks.fit_time                            # the default's 80 fits
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import common
from phasemix.data import published_curves
from phasemix.runs import sweep

_BASELINE = flags.DEFINE_string("baseline", None, "Git revision to compare against.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs go (default: a temporary folder).")
_FLAGS = flags.DEFINE_multi_string("fit_flag", [], "An extra flag for every run (repeat it), "
                                   "e.g. --fit_flag=--config.num_splits=1.")


def run_fits(tree: pathlib.Path, workdir: pathlib.Path, cache: pathlib.Path) -> float:
    """Wall seconds of one bimix_fit process from `tree`, compiling into/loading from `cache`."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    # The default curves path is relative to the tree; a baseline checkout lives elsewhere.
    curves = published_curves.DEFAULT_CURVES.resolve()
    subprocess.run([sys.executable, "-m", "experiments.bimix_fit", f"--workdir={workdir}",
                    f"--curves={curves}", *_FLAGS.value], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def objectives_differing(a: pathlib.Path, b: pathlib.Path, tolerance: float = 1e-3) -> str:
    rows_a, rows_b = (sweep.read_table(w / "table.csv") for w in (a, b))
    worse = sum(y["fit_objective"] > x["fit_objective"] * (1 + tolerance)
                for x, y in zip(rows_a, rows_b))
    better = sum(y["fit_objective"] < x["fit_objective"] * (1 - tolerance)
                 for x, y in zip(rows_a, rows_b))
    return f"{len(rows_a)} fits: {better} better, {worse} worse by > {tolerance:.1%}"


def main(argv):
    del argv
    root = pathlib.Path(__file__).resolve().parents[1]
    workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="fit_time_"))
    seconds = {}
    if _BASELINE.value:
        tree = common.checkout(_BASELINE.value, workdir / "baseline_tree", root)
        print(f"fitting from {_BASELINE.value} ...", flush=True)
        seconds["baseline"] = run_fits(tree, workdir / "baseline", workdir / "xla_baseline")
    print("fitting from this tree (empty compilation cache) ...", flush=True)
    seconds["cold"] = run_fits(root, workdir / "cold", workdir / "xla")
    print("again (the cache filled) ...", flush=True)
    seconds["warm"] = run_fits(root, workdir / "warm", workdir / "xla")
    for name, s in seconds.items():
        print(f"{name:<10} {s:8.1f} s")
    if "baseline" in seconds:
        print(f"this tree is {seconds['baseline'] / seconds['cold']:.2f}x faster cold, "
              f"{seconds['baseline'] / seconds['warm']:.2f}x on a rerun; "
              f"objectives vs baseline: {objectives_differing(workdir / 'baseline', workdir / 'cold')}")
        common.remove_checkout(workdir / "baseline_tree", root)


if __name__ == "__main__":
    app.run(main)
