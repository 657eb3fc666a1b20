"""Locating phase transitions: per run (when a metric crosses a threshold) and per sweep.

The sweep-level analysis follows Zhu et al. 2024: for each data size, how many seeds
generalise within the step budget and how long they take; the critical data size is the
smallest size from which on most seeds generalise, and each size is labelled insufficient,
critical or surplus.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

INSUFFICIENT, CRITICAL, SURPLUS = "insufficient", "critical", "surplus"


def first_step_at_least(rows: Iterable[Mapping[str, Any]], key: str, threshold: float) -> int | None:
    """The first logged step whose `key` is >= threshold, or None if it never is."""
    for row in rows:
        value = row.get(key)
        if value is not None and value >= threshold:
            return int(row["step"])
    return None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (0 for one value; None, None for none)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def per_size(runs: Iterable[Mapping[str, Any]], size_key: str) -> list[dict[str, Any]]:
    """One row per data size: seeds, fraction generalised, mean/std steps to memorise/generalise.

    Step statistics are over the seeds that reached the event within the budget; the
    fraction says how many did.
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run[size_key], []).append(run)
    out = []
    for size in sorted(groups):
        group = groups[size]
        memorized = [r["step_memorized"] for r in group if r.get("step_memorized") is not None]
        generalized = [r["step_generalized"] for r in group
                       if r.get("step_generalized") is not None]
        mem_mean, mem_std = mean_std(memorized)
        gen_mean, gen_std = mean_std(generalized)
        out.append({"size": size, "seeds": len(group),
                    "fraction_memorized": len(memorized) / len(group),
                    "fraction_generalized": len(generalized) / len(group),
                    "step_memorized_mean": mem_mean, "step_memorized_std": mem_std,
                    "step_generalized_mean": gen_mean, "step_generalized_std": gen_std,
                    "final_test_accuracy_mean": statistics.fmean(
                        r["final_test_accuracy"] for r in group)})
    return out


def critical_data_size(stats: Sequence[Mapping[str, Any]], majority: float = 0.5) -> dict[str, Any]:
    """The smallest size from which on (it and every larger size) more than `majority` of
    the seeds generalise, with the seed spread as its uncertainty.

    `lower` is the smallest size at which any seed generalised, `upper` the smallest size
    from which on every seed did; the transition lies between them. All are None when no
    size qualifies (the budget was too short, or every size was too small).
    """
    sizes = [s["size"] for s in stats]
    critical = None
    for i in range(len(stats)):
        if all(s["fraction_generalized"] > majority for s in stats[i:]):
            critical = sizes[i]
            break
    lower = next((s["size"] for s in stats if s["fraction_generalized"] > 0), None)
    upper = None
    for i in range(len(stats)):
        if all(s["fraction_generalized"] == 1.0 for s in stats[i:]):
            upper = sizes[i]
            break
    generalizing = [s for s in stats if s["step_generalized_mean"] is not None]
    peak = max(generalizing, key=lambda s: s["step_generalized_mean"])["size"] if generalizing else None
    return {"critical_size": critical, "critical_size_lower": lower, "critical_size_upper": upper,
            "peak_steps_size": peak}


def label_sizes(stats: Sequence[Mapping[str, Any]], cds: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Adds `regime`: insufficient below the critical size; critical from it up to where every
    seed generalises; surplus above."""
    critical, upper = cds["critical_size"], cds["critical_size_upper"]
    labelled = []
    for s in stats:
        if critical is None or s["size"] < critical:
            regime = INSUFFICIENT
        elif upper is None or s["size"] <= upper:
            regime = CRITICAL
        else:
            regime = SURPLUS
        labelled.append({**s, "regime": regime})
    return labelled


def regime_summary(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Headline facts of a sample-wise sweep: are all three regimes present, and does the
    generalisation delay peak at the critical sizes and fall above them?"""
    regimes = {s["regime"] for s in stats}
    critical_steps = [s["step_generalized_mean"] for s in stats
                      if s["regime"] == CRITICAL and s["step_generalized_mean"] is not None]
    surplus_steps = [s["step_generalized_mean"] for s in stats
                     if s["regime"] == SURPLUS and s["step_generalized_mean"] is not None]
    mem = [s["step_memorized_mean"] for s in stats if s["step_memorized_mean"] is not None]
    gen = [s["step_generalized_mean"] for s in stats if s["step_generalized_mean"] is not None]

    def spread(values):  # max / min: how much a quantity varies across data sizes
        return max(values) / min(values) if values and min(values) > 0 else math.nan

    return {
        "regimes_present": sorted(regimes),
        "all_three_regimes": regimes == {INSUFFICIENT, CRITICAL, SURPLUS},
        "peak_in_critical_regime": bool(critical_steps) and bool(surplus_steps)
        and max(critical_steps) > max(surplus_steps),
        "step_memorized_spread": spread(mem),
        "step_generalized_spread": spread(gen),
    }


def crossing(x: Sequence[float], y: Sequence[float], level: float) -> dict[str, Any]:
    """Where y first rises to `level` along increasing x (a ratio, a size, a frequency).

    `value` interpolates linearly in log x between the last point below the level and the
    first at or above it (`low`, `high`: the bracket, the grid's resolution). When the first
    point is already above, `value` is None and `high` is that point (the crossing lies below
    the grid); when no point reaches the level, `value` and `high` are None.
    """
    order = np.argsort(np.asarray(x, np.float64))
    x = np.asarray(x, np.float64)[order]
    y = np.asarray(y, np.float64)[order]
    above = np.flatnonzero(y >= level)
    if len(above) == 0:
        return {"value": None, "low": float(x[-1]) if len(x) else None, "high": None}
    i = int(above[0])
    if i == 0:
        return {"value": None, "low": None, "high": float(x[0])}
    t = (level - y[i - 1]) / (y[i] - y[i - 1])
    value = math.exp(math.log(x[i - 1]) + t * (math.log(x[i]) - math.log(x[i - 1])))
    return {"value": float(value), "low": float(x[i - 1]), "high": float(x[i])}


def binned_means(x: Sequence[float], y: Sequence[float], num_bins: int = 8,
                 min_count: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean y in log-spaced bins of x (x > 0): (bin mean x, mean y, count), bins of at least
    `min_count` points only."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = x > 0
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-9), num_bins + 1)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, num_bins - 1)
    counts = np.bincount(which, minlength=num_bins)
    ok = counts >= min_count
    mean_x = np.bincount(which, x, num_bins)[ok] / counts[ok]
    mean_y = np.bincount(which, y, num_bins)[ok] / counts[ok]
    return mean_x, mean_y, counts[ok]
