"""The critical data size of a modular task, predicted from the modulus.

`critical_data_size` sweeps (one folder per op and modulus p, every run the grokking demo's
recipe) give each task's critical training-set size: the smallest grid size from which on both
seeds generalise within the step budget. The transition lies between that size and the grid
size below it; `critical_points` takes their geometric mean as the point estimate.

Two laws are fitted to those points in log space:
- per op: count = a_op * p^b_op (capacity.fit_power_law, with a 95% t interval on b_op);
- shared: count = a_op * p^b, one exponent for every op (least squares with an intercept
  per op).
The shared law holds if every op's own exponent interval contains the shared exponent; else
each op keeps its own. The verdict criterion was fixed before the runs.

`predicted_count` is the fit behind `--config.task.train_fraction=auto` (a fraction MARGIN x
the prediction) and the warning for an explicit fraction below the prediction. Its
coefficients (`FIT`) are the rows of docs/results/grokking/cds_fit.csv; a test keeps the two
equal. Run the analysis on a folder of sweeps:
  python -m phasemix.analysis.cds_law runs/cds_by_task docs/results/grokking --fit_p=31,53,73,97
"""

from __future__ import annotations

import csv
import math
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from phasemix.base import results_table
from phasemix.data import modular
from phasemix.analysis import capacity, transitions

MARGIN = 1.5  # auto fraction = MARGIN x the predicted critical count (the grid brackets +-25%)
MAX_FRACTION = 0.9  # an auto fraction above this leaves too little test data to measure
# op -> (coefficient a, exponent b) of count = a * p^b; fitted on the moduli named in
# docs/results/grokking/cds_fit.csv (`fit_moduli`: the moduli each op's fit used).
FIT: dict[str, tuple[float, float]] = {
    "add": (4.65107, 1.25155),  # the shared law on add and sub mod 31 and 53
    "sub": (6.95799, 1.25155),
}


def predicted_count(op: str, p: int) -> float | None:
    """The predicted critical training-set size of `a op b mod p`; None where the fit does
    not cover the op."""
    if op not in FIT:
        return None
    a, b = FIT[op]
    return float(a * p ** b)


def auto_fraction(op: str, p: int) -> float | None:
    """MARGIN x the predicted critical count, as a fraction of all pairs (None: not covered)."""
    count = predicted_count(op, p)
    return None if count is None else MARGIN * count / modular.num_pairs(op, p)


def read_runs(sweeps_root: str | pathlib.Path, commit: str = "") -> list[dict[str, Any]]:
    """One tidy row per run of every finished sweep folder under `sweeps_root` (a sweep
    still running is left out: its critical size needs every size of the grid)."""
    rows = []
    for results in sorted(pathlib.Path(sweeps_root).glob("*/results.csv")):
        if not (results.parent / "summary.json").is_file():
            continue
        with open(results, newline="") as f:
            for r in csv.DictReader(f):
                op, p, count = r["task.op"], int(r["task.p"]), int(r["task.train_count"])
                step = r["step_generalized"]
                rows.append({"op": op, "p": p, "train_count": count,
                             "train_fraction": count / modular.num_pairs(op, p), "seed": int(r["seed"]),
                             "num_steps": int(r["num_steps"]),
                             "step_memorized": int(r["step_memorized"]) if r["step_memorized"]
                             else None,
                             "step_generalized": int(step) if step else None,
                             "final_test_accuracy": float(r["final_test_accuracy"]),
                             "commit": commit})
    return rows


def critical_points(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (op, p): the critical size, the grid size below it, and their geometric mean."""
    points = []
    for op, p in sorted({(r["op"], r["p"]) for r in runs}):
        mine = [{**r, "size": r["train_count"]} for r in runs if r["op"] == op and r["p"] == p]
        stats = transitions.per_size(mine, "size")
        cds = transitions.critical_data_size(stats)
        sizes = [s["size"] for s in stats]
        critical = cds["critical_size"]
        below = max((s for s in sizes if critical is not None and s < critical), default=None)
        estimate = (math.sqrt(critical * below) if critical is not None and below is not None
                    else None)
        points.append({"op": op, "p": p, "pairs": modular.num_pairs(op, p), "grid": len(sizes),
                       "seeds": len({r["seed"] for r in runs if r["op"] == op and r["p"] == p}),
                       "critical_count": critical, "grid_below": below,
                       "estimate": estimate,
                       "censored": ("above_grid" if critical is None else
                                    "below_grid" if below is None else ""),
                       "any_seed_from": cds["critical_size_lower"],
                       "all_seeds_from": cds["critical_size_upper"]})
    return points


def _shared_fit(points: Sequence[dict[str, Any]]) -> tuple[dict[str, float], float, float]:
    """log count = c_op + b log p: (a_op per op, b, residual std in log space)."""
    ops = sorted({q["op"] for q in points})
    x = np.array([[math.log(q["p"])] + [float(q["op"] == o) for o in ops] for q in points])
    y = np.log([q["estimate"] for q in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    dof = max(len(y) - x.shape[1], 1)
    return ({o: float(math.exp(c)) for o, c in zip(ops, coef[1:])}, float(coef[0]),
            float(math.sqrt(np.sum(resid ** 2) / dof)))


def fit_laws(points: Sequence[dict[str, Any]], fit_moduli: Sequence[int],
             commit: str = "") -> list[dict[str, Any]]:
    """One row per op and law ('per_op', 'shared') fitted on `fit_moduli`, with the verdict
    `chosen` marking the law that `predicted_count` uses for that op."""
    usable = [q for q in points if q["estimate"] is not None and q["p"] in fit_moduli]
    rows = []
    per_op = {}
    for op in sorted({q["op"] for q in usable}):
        mine = [q for q in usable if q["op"] == op]
        if len(mine) >= 2:
            per_op[op] = capacity.fit_power_law([q["p"] for q in mine],
                                                [q["estimate"] for q in mine])
    shared = _shared_fit(usable) if len({q["op"] for q in usable}) >= 1 and len(usable) >= 3 \
        else None
    holds = shared is not None and all(
        f.exponent_low <= shared[1] <= f.exponent_high for f in per_op.values())

    def fit_list(op: str) -> str:  # the moduli of the op that the fit used
        return ",".join(str(q["p"]) for q in sorted(usable, key=lambda q: q["p"])
                        if q["op"] == op)

    for op, f in per_op.items():
        rows.append({"op": op, "law": "per_op", "coefficient": f.coefficient,
                     "exponent": f.exponent, "exponent_low": f.exponent_low,
                     "exponent_high": f.exponent_high, "points": f.points, "r2": f.r2,
                     "chosen": not holds, "fit_moduli": fit_list(op), "commit": commit})
    if shared is not None:
        coefficients, exponent, spread = shared
        for op, a in coefficients.items():
            rows.append({"op": op, "law": "shared", "coefficient": a, "exponent": exponent,
                         "exponent_low": None, "exponent_high": None,
                         "points": sum(q["op"] == op for q in usable), "r2": None,
                         "log_residual_std": spread, "chosen": holds or op not in per_op,
                         "fit_moduli": fit_list(op), "commit": commit})
    return rows


def check_predictions(points: Sequence[dict[str, Any]], fit: dict[str, tuple[float, float]],
                      held_out: Sequence[int]) -> list[dict[str, Any]]:
    """Held-out moduli: a hit when the prediction lies in the measured bracket (grid size
    below the critical one, critical size]; `safe` when MARGIN x the prediction reaches the
    measured critical size (the auto fraction would have generalised)."""
    rows = []
    for q in points:
        if q["p"] not in held_out or q["op"] not in fit:
            continue
        a, b = fit[q["op"]]
        predicted = a * q["p"] ** b
        low, high = q["grid_below"] or 0, q["critical_count"]
        rows.append({"op": q["op"], "p": q["p"], "predicted_count": predicted,
                     "measured_low": q["grid_below"], "measured_high": high,
                     "hit": high is not None and low < predicted <= high,
                     "safe": high is not None and MARGIN * predicted >= high})
    return rows


def main(argv: Sequence[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", help="folder of critical_data_size sweeps, one per op and p")
    parser.add_argument("out", help="folder for cds_by_task.csv, cds_points.csv, cds_fit.csv")
    parser.add_argument("--fit_p", default="31,53,73,97", help="moduli the laws are fitted on")
    parser.add_argument("--commit", default="", help="commit that trained the runs")
    args = parser.parse_args(argv)
    commit = args.commit or results_table.current_commit()
    fit_moduli = [int(p) for p in args.fit_p.split(",")]
    runs = read_runs(args.sweeps, commit)
    if not runs:
        sys.exit(f"error: {args.sweeps}: no critical_data_size sweep folders with results.csv")
    points = critical_points(runs)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_table.write_table(runs, out / "cds_by_task.csv")
    results_table.write_table([{**q, "commit": commit} for q in points], out / "cds_points.csv")
    fits = fit_laws(points, fit_moduli, commit)
    if not fits:  # a law needs >= 2 moduli of an op with a measured critical size
        print(f"no law fitted yet: {len(points)} task(s) measured, "
              f"{sum(q['estimate'] is not None for q in points)} with a bracketed critical size")
        return
    results_table.write_table(fits, out / "cds_fit.csv")
    chosen = {r["op"]: (r["coefficient"], r["exponent"]) for r in fits if r["chosen"]}
    held = sorted({q["p"] for q in points} - set(fit_moduli))
    checks = check_predictions(points, chosen, held)
    if checks:
        results_table.write_table([{**c, "commit": commit} for c in checks], out / "cds_predictions.csv")
    for r in fits:
        print(f"{r['op']:>9} {r['law']:>7}: count = {r['coefficient']:.3g} p^{r['exponent']:.3f}"
              + (f" [{r['exponent_low']:.3f}, {r['exponent_high']:.3f}]"
                 if r["exponent_low"] is not None else "")
              + ("  (chosen)" if r["chosen"] else ""))
    if checks:
        print(f"held-out moduli {held}: {sum(c['hit'] for c in checks)}/{len(checks)} in the "
              f"measured bracket, {sum(c['safe'] for c in checks)}/{len(checks)} safe at "
              f"{MARGIN}x")


if __name__ == "__main__":
    main(sys.argv[1:])
