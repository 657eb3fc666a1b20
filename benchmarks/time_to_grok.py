"""Wall time until the default grokking demo generalises, for this tree and a baseline commit.

Runs `python -m experiments.grokking` (the README's demo, default config) in a fresh process
for each tree, one after the other on the same machine, and reads from each run's own
metrics.jsonl the step at which test accuracy first reached 0.95 and the wall seconds the run
had spent by then (compilation included; process start-up not). The baseline tree is checked
out with `git worktree` from `--baseline` (a commit, tag or branch):
  python -m benchmarks.time_to_grok --baseline=6705e93
  python -m benchmarks.time_to_grok                   # this tree only
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import common
from experiments import grokking
from phasemix.base import run_io
from phasemix.analysis import transitions

_BASELINE = flags.DEFINE_string("baseline", None, "Git revision to compare against.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs go (default: a temporary folder).")
_FLAGS = flags.DEFINE_list("run_flags", [], "Extra flags for both runs, e.g. --config.seed=1.")


def run_demo(tree: pathlib.Path, workdir: pathlib.Path) -> dict[str, float | int | None]:
    """Runs the demo from `tree` into `workdir` unless it already finished there."""
    start = time.perf_counter()
    if not (workdir / run_io.SUMMARY_FILE).exists():
        subprocess.run([sys.executable, "-m", "experiments.grokking", f"--workdir={workdir}",
                        *_FLAGS.value], cwd=tree, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    process_seconds = time.perf_counter() - start
    rows = run_io.read_metrics(workdir)
    step = transitions.first_step_at_least(rows, "test_accuracy", grokking.GENERALIZED_AT)
    seconds = next((r["elapsed_seconds"] for r in rows if r["step"] == step), None)
    return {"step_generalized": step, "seconds_to_generalize": seconds,
            "run_seconds": rows[-1]["elapsed_seconds"], "process_seconds": process_seconds,
            "steps": rows[-1]["step"]}


def main(argv):
    del argv
    root = pathlib.Path(__file__).resolve().parents[1]
    workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="time_to_grok_"))
    trees = {"this tree": root}
    if _BASELINE.value:
        baseline_tree = common.checkout(_BASELINE.value, workdir / "baseline_tree", root)
        trees = {f"baseline {_BASELINE.value}": baseline_tree, **trees}
    results = {}
    for name, tree in trees.items():
        print(f"running the demo from {name} ...", flush=True)
        results[name] = run_demo(tree, workdir / name.replace(" ", "_"))
    print(f"{'tree':<22} {'step generalised':>17} {'s to generalise':>16} "
          f"{'s for all steps':>16} {'process s':>10}")
    for name, r in results.items():
        print(f"{name:<22} {r['step_generalized']!s:>17} {r['seconds_to_generalize'] or 0:>16.1f} "
              f"{r['run_seconds']:>16.1f} {r['process_seconds']:>10.1f}")
    if _BASELINE.value:
        before, after = results[f"baseline {_BASELINE.value}"], results["this tree"]
        if before["seconds_to_generalize"] and after["seconds_to_generalize"]:
            print(f"time to generalise: {before['seconds_to_generalize'] / after['seconds_to_generalize']:.2f}x "
                  f"faster; whole run {before['run_seconds'] / after['run_seconds']:.2f}x")
        common.remove_checkout(workdir / "baseline_tree", root)


if __name__ == "__main__":
    app.run(main)
