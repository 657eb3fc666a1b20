"""Analyses of knowledge phase-transition sweeps (`experiments/knowledge_phase.py`).

Each mode's sweep table (one row per `knowledge_mixing` run) becomes seed means per grid point,
critical points (where the accuracy crosses a level, with the grid bracket), the sharpness of
the transition, the capacity theory's predictions from a web-only sweep, and the mode's
figures: ratio, size, web, longer, mitigation and frequency.
"""

from __future__ import annotations

import csv
import pathlib
import statistics
from typing import Any

import ml_collections
import numpy as np

from phasemix.base import plotting, results_table, run_io, validation
from phasemix.data import synbio
from phasemix.analysis import capacity, knowledge_prediction, transitions

ACCURACY = "bio_accuracy"  # mean exact match over attributes and templates (the paper's metric)
# The per-person table (exposures, exact-match accuracy) every knowledge_mixing run writes;
# the same name as experiments.PEOPLE_FILE (a test checks they agree).
PEOPLE_FILE = "people.csv"


def size_grid(config: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
    """Size mode: preset -> its ratios (`ratios_per_preset`, else `ratios` for every preset)."""
    grids = config.ratios_per_preset or [config.ratios] * len(config.presets)
    return {preset: tuple(grid) for preset, grid in zip(config.presets, grids)}


def size_ratios(config: ml_collections.ConfigDict) -> list[float]:
    """Every ratio of the size grid, sorted."""
    return sorted({r for grid in size_grid(config).values() for r in grid})


def per_point(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Seed means (and std of the accuracy) per grid point `keys`, in sorted order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for point, group in sorted(groups.items()):
        mean, std = transitions.mean_std([r[ACCURACY] for r in group])
        entry = {**dict(zip(keys, point)), "seeds": len(group), f"{ACCURACY}_mean": mean,
                 f"{ACCURACY}_std": std}
        for key in ("people_all_attributes", "web_val_loss", "exposures_mean", "params",
                    "non_embedding_params", "people_trained", "threshold_exposures",
                    *(f"accuracy_{a}" for a in synbio.ATTRIBUTES)):
            values = [r[key] for r in group if r.get(key) is not None]
            entry[key] = statistics.fmean(values) if values else None
        out.append(entry)
    return out


def critical_point(points: list[dict[str, Any]], x_key: str, level: float,
                   rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Where the seed-mean accuracy crosses `level` along x (log-interpolated, with the grid
    bracket), and the spread of the per-seed crossings when there are several seeds."""
    found = transitions.crossing([p[x_key] for p in points],
                                 [p[f"{ACCURACY}_mean"] for p in points], level)
    out = {"critical": found["value"], "critical_low": found["low"],
           "critical_high": found["high"], "critical_seed_std": None}
    if rows:
        by_seed: dict[Any, list[dict[str, Any]]] = {}
        for row in rows:
            by_seed.setdefault(row["seed"], []).append(row)
        per_seed = [transitions.crossing([r[x_key] for r in g], [r[ACCURACY] for r in g],
                                         level)["value"] for g in by_seed.values()]
        per_seed = [v for v in per_seed if v is not None]
        if len(per_seed) > 1:
            out["critical_seed_std"] = statistics.stdev(per_seed)
    return out


def sharpness(points: list[dict[str, Any]], x_key: str, low: float = 0.1,
              high: float = 0.5) -> dict[str, Any]:
    """The smallest factor in x that takes the accuracy from < `low` to > `high` (a test of a
    sharp transition: within 2x), with the pair of grid points that achieve it."""
    best = None
    for a in points:
        for b in points:
            if (b[x_key] > a[x_key] and a[f"{ACCURACY}_mean"] < low
                    and b[f"{ACCURACY}_mean"] > high):
                factor = b[x_key] / a[x_key]
                if best is None or factor < best[0]:
                    best = (factor, a[x_key], b[x_key])
    if best is None:
        return {"transition_factor": None, "below_low_at": None, "above_high_at": None}
    return {"transition_factor": best[0], "below_low_at": best[1], "above_high_at": best[2]}


def load_knapsack(config: ml_collections.ConfigDict) -> tuple[capacity.WebLaw, dict[str, Any]]:
    """The web law fitted on the :web sweep at `config.web_sweep`, and its facts."""
    path = run_io.run_path(config.web_sweep) / results_table.RESULTS_FILE
    needed = ("model.preset", "seed", ACCURACY, config.param_count, "web_val_loss",
              "tokens_per_bio")
    try:
        rows = results_table.read_table(path)
        validation.require(bool(rows), "web_sweep", f"{path} has no runs", config.web_sweep)
        missing = [k for k in needed if k not in rows[0]]
        validation.require(not missing, "web_sweep", f"{path} is not the table of a :web sweep "
                           f"(it lacks {missing})", config.web_sweep)
        points = per_point(rows, ("model.preset",))
        validation.require(all(isinstance(p[k], (int, float)) for p in points
                               for k in (config.param_count, "web_val_loss")), "web_sweep",
                           f"{path} has runs without {config.param_count} or web_val_loss",
                           config.web_sweep)
        validation.require(len(points) >= 3, "web_sweep", f"{path} has {len(points)} model "
                           "sizes; the web law has 3 parameters: it needs >= 3", config.web_sweep)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        validation.fail("web_sweep", f"cannot read {path}: {e}", config.web_sweep)
    law = capacity.fit_web_law([p[config.param_count] for p in points],
                               [p["web_val_loss"] for p in points])
    return law, {"tokens_per_bio": statistics.fmean(r["tokens_per_bio"] for r in rows),
                 "web_points": points}


def knapsack_for(config: ml_collections.ConfigDict, law: capacity.WebLaw, tokens_per_bio: float,
                 num_people: int) -> capacity.Knapsack:
    bio = synbio.make(config.base.synbio)
    return capacity.Knapsack(web=law, num_people=num_people, tokens_per_bio=tokens_per_bio,
                             bits_per_person=capacity.person_bits(bio),
                             bits_per_param=config.bits_per_param)


def _theory_summary(config, law: capacity.WebLaw, knapsack: capacity.Knapsack,
                    sizes: dict[str, float]) -> dict[str, Any]:
    return {
        "web_law": {"C": law.C, "A": law.A, "alpha": law.alpha},
        "theory_bits_per_person": knapsack.bits_per_person,
        "theory_tokens_per_bio": knapsack.tokens_per_bio,
        "theory_ratio_exponent": knapsack.ratio_exponent,
        "theory_critical_ratio": {p: knapsack.critical_ratio(n, config.level)
                                  for p, n in sizes.items()},
        "theory_critical_params": {f"{r:g}": knapsack.critical_params(r, config.level)
                                   for r in (size_ratios(config) if config.mode == "size"
                                             else config.ratios)},
    }


def analyse_ratio(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                  rows: list[dict[str, Any]]) -> dict[str, Any]:
    points = per_point(rows, ("ratio",))
    summary = {**critical_point(points, "ratio", config.level, rows),
               **sharpness(points, "ratio"), "per_ratio": points}
    if config.web_sweep is not None:
        law, facts = load_knapsack(config)
        knapsack = knapsack_for(config, law, facts["tokens_per_bio"], rows[0]["people_trained"])
        summary.update(_theory_summary(config, law, knapsack,
                                       {rows[0]["model.preset"]: rows[0][config.param_count]}))
    series = {"mean over attributes": {
        "x": [p["ratio"] for p in points], "y": [p[f"{ACCURACY}_mean"] for p in points],
        "err": [p[f"{ACCURACY}_std"] for p in points], "color": "black"}}
    for a in synbio.ATTRIBUTES:
        series[a] = {"x": [p["ratio"] for p in points],
                     "y": [p[f"accuracy_{a}"] for p in points], "style": ".--",
                     "linewidth": 0.8}
    plotting.xy_lines(series, workdir / "accuracy_vs_ratio.png",
                      f"{config.base.model.preset}, {rows[0]['people_trained']} people, "
                      f"{rows[0]['train_tokens']:,} tokens, {len(config.seeds)} seed(s)",
                      "mixing ratio r (share of SynBio tokens)", "exact-match accuracy",
                      hline=config.level)
    return summary


def analyse_size(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 rows: list[dict[str, Any]]) -> dict[str, Any]:
    x_key = config.param_count
    points = per_point(rows, ("model.preset", "ratio"))
    per_size, per_ratio = [], []
    for preset in config.presets:
        mine = [p for p in points if p["model.preset"] == preset]
        seeds = [r for r in rows if r["model.preset"] == preset]
        per_size.append({"preset": preset, "params": mine[0][x_key],
                         **critical_point(mine, "ratio", config.level, seeds),
                         **sharpness(mine, "ratio")})
    for ratio in size_ratios(config):
        mine = [p for p in points if p["ratio"] == ratio]
        if len(mine) < 2:  # a critical size needs >= 2 sizes at this ratio
            continue
        seeds = [r for r in rows if r["ratio"] == ratio]
        per_ratio.append({"ratio": ratio, **critical_point(mine, x_key, config.level, seeds)})
    measured = [s for s in per_size if s["critical"] is not None]
    summary: dict[str, Any] = {"per_size": per_size, "per_ratio": per_ratio,
                               "per_point": points, "critical_ratio_power_law": None}
    if len(measured) >= 2:
        law = capacity.fit_power_law([s["params"] for s in measured],
                                     [s["critical"] for s in measured])
        summary["critical_ratio_power_law"] = law.__dict__
    summary["power_law_note"] = (
        f"fitted over {len(measured)} sizes with a measured critical ratio (>= 3 needed for an "
        "interval)" if len(measured) >= 2 else
        f"only {len(measured)} size(s) crossed {config.level} within the ratio grid: no fit")
    theory = None
    if config.web_sweep is not None:
        web_law, facts = load_knapsack(config)
        theory = knapsack_for(config, web_law, facts["tokens_per_bio"], rows[0]["people_trained"])
        summary.update(_theory_summary(config, web_law, theory,
                                       {s["preset"]: s["params"] for s in per_size}))
    if config.predicted_csv is not None:  # the prediction committed before this sweep
        summary["prediction"] = knowledge_prediction.compare(
            results_table.read_table(config.predicted_csv), per_size)
        results_table.write_table(summary["prediction"], workdir / "predicted_vs_measured.csv")
    _size_figures(config, workdir, points, per_size, summary, theory)
    return summary


def _size_figures(config, workdir, points, per_size, summary, theory) -> None:
    x_key = config.param_count
    series = {}
    ratios = size_ratios(config)
    for i, ratio in enumerate(ratios):
        mine = sorted((p for p in points if p["ratio"] == ratio), key=lambda p: p[x_key])
        series[f"r={ratio:g}"] = {"x": [p[x_key] for p in mine],
                                  "y": [p[f"{ACCURACY}_mean"] for p in mine],
                                  "err": [p[f"{ACCURACY}_std"] for p in mine],
                                  "color": plotting.color(i, len(ratios))}
    by_size = {}
    for i, preset in enumerate(config.presets):
        mine = sorted((p for p in points if p["model.preset"] == preset),
                      key=lambda p: p["ratio"])
        by_size[f"{preset} ({mine[0][x_key]:,.0f})"] = {
            "x": [p["ratio"] for p in mine], "y": [p[f"{ACCURACY}_mean"] for p in mine],
            "err": [p[f"{ACCURACY}_std"] for p in mine],
            "color": plotting.color(i, len(config.presets))}
    plotting.xy_lines(by_size, workdir / "accuracy_vs_ratio_by_size.png",
                      "Accuracy against mixing ratio, one line per model size",
                      "mixing ratio r (share of SynBio tokens)", "exact-match accuracy",
                      hline=config.level)
    plotting.xy_lines(series, workdir / "accuracy_vs_size.png",
                      "Accuracy against model size, one line per mixing ratio",
                      f"parameters ({x_key})", "exact-match accuracy", hline=config.level)
    plotting.heatmap({(p["model.preset"], p["ratio"]): p[f"{ACCURACY}_mean"] for p in points},
                     workdir / "accuracy_heatmap.png", "Exact-match accuracy (seed mean)",
                     "mixing ratio r", "model preset", "accuracy")
    sizes = [s["params"] for s in per_size]
    series = {}
    measured = [s for s in per_size if s["critical"] is not None]
    if measured:
        series["measured (grid bracket)"] = {
            "x": [s["params"] for s in measured], "y": [s["critical"] for s in measured],
            "err": [[s["critical"] - s["critical_low"] for s in measured],
                    [s["critical_high"] - s["critical"] for s in measured]],
            "style": "o", "color": "black"}
    fit = summary["critical_ratio_power_law"]
    if fit is not None:
        series[f"fit: exponent {fit['exponent']:.2f} "
               f"[{fit['exponent_low']:.2f}, {fit['exponent_high']:.2f}]"] = {
            "x": sizes, "y": [fit["coefficient"] * n ** fit["exponent"] for n in sizes],
            "style": "-", "color": "tab:blue"}
    if theory is not None:
        grid = np.geomspace(min(sizes), max(sizes), 30)
        predicted = [(n, theory.critical_ratio(n, config.level)) for n in grid]
        predicted = [(n, r) for n, r in predicted if r is not None]
        if predicted:
            series[f"capacity theory (slope {theory.ratio_exponent:.2f} at small r)"] = {
                "x": [n for n, _ in predicted], "y": [r for _, r in predicted],
                "style": "--", "color": "tab:red"}
    forecast = [r for r in summary.get("prediction", ())
                if r["predicted_critical_ratio"] is not None]
    if forecast:
        series["predicted before the sweep"] = {
            "x": [r["params"] for r in forecast],
            "y": [r["predicted_critical_ratio"] for r in forecast], "style": "s",
            "color": "tab:green"}
    if series:
        plotting.xy_lines(series, workdir / "critical_ratio_vs_size.png",
                          f"Critical ratio (accuracy {config.level:g}) against model size",
                          f"parameters ({x_key})", "critical ratio", log_y=True)


def analyse_web(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                rows: list[dict[str, Any]]) -> dict[str, Any]:
    points = per_point(rows, ("model.preset",))
    sizes = {p["model.preset"]: p[config.param_count] for p in points}
    law = capacity.fit_web_law(list(sizes.values()), [p["web_val_loss"] for p in points])
    # What the SynBio runs of the size sweep will train on: the base people, uniform.
    knapsack = knapsack_for(config, law, statistics.fmean(r["tokens_per_bio"] for r in rows),
                            config.base.synbio.num_people)
    summary = {"per_size": points, **_theory_summary(config, law, knapsack, sizes)}
    grid = np.geomspace(min(sizes.values()), max(sizes.values()), 30)
    plotting.xy_lines({
        "web-only runs": {"x": list(sizes.values()),
                          "y": [p["web_val_loss"] for p in points], "style": "o",
                          "color": "black"},
        f"F2 = {law.C:.2f} + {law.A:.3g} P^-{law.alpha:.3f}": {
            "x": grid, "y": law.loss(grid), "style": "-", "color": "tab:blue"}},
        workdir / "web_law.png", "Web validation loss against model size (web text only)",
        f"parameters ({config.param_count})", "web val loss (nats/token)", log_y=True)
    lines = [f"web law: F2(P) = {law.C:.3f} + {law.A:.4g} * P^-{law.alpha:.3f}",
             f"theory: {knapsack.num_people} people x {knapsack.bits_per_person:.1f} bits, "
             f"{knapsack.tokens_per_bio:.0f} tokens per biography, {config.bits_per_param:g} "
             f"bits/param; critical-ratio exponent {knapsack.ratio_exponent:.3f}"]
    for preset, n in sizes.items():
        r = knapsack.critical_ratio(n, config.level)
        lines.append(f"  {preset:>10} ({n:,.0f} params): predicted critical ratio "
                     + ("none: too small for half the people" if r is None else f"{r:.3g}"))
    print("\n".join(lines), flush=True)
    return summary


def analyse_longer(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                   rows: list[dict[str, Any]]) -> dict[str, Any]:
    points = per_point(rows, ("num_steps",))
    plotting.xy_lines({"mean over attributes": {
        "x": [p["num_steps"] for p in points], "y": [p[f"{ACCURACY}_mean"] for p in points],
        "err": [p[f"{ACCURACY}_std"] for p in points]}},
        workdir / "accuracy_vs_steps.png",
        f"r={config.sub_critical_ratio:g}: more training below the threshold",
        "training steps", "exact-match accuracy", hline=config.level)
    return {"per_steps": points}


def analyse_mitigation(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                       rows: list[dict[str, Any]]) -> dict[str, Any]:
    for row in rows:
        row.setdefault("mix.tuple_fraction", 0.0)  # tables from before the tuple stream
        row["variant"] = ("tuples" if row["mix.tuple_fraction"] > 0 else
                          "compact" if row["mix.compact_fraction"] > 0 else
                          "subsample" if row["mix.keep_fraction"] < 1 else "baseline")
    points = per_point(rows, ("variant", "mix.keep_fraction", "mix.compact_fraction",
                              "mix.tuple_fraction"))
    for p in points:  # people-equivalents of facts learned: accuracy x people trained on
        p["people_learned"] = p[f"{ACCURACY}_mean"] * p["people_trained"]
    baseline = next(p for p in points if p["variant"] == "baseline")
    labels = [f"{p['variant']} keep={p['mix.keep_fraction']:g} "
              + (f"added tau={p['mix.tuple_fraction']:g}" if p["variant"] == "tuples"
                 else f"replaced={p['mix.compact_fraction']:g}") for p in points]
    plotting.bar_panels(labels, {
        "accuracy on the people trained on": [p[f"{ACCURACY}_mean"] for p in points],
        "people learned (accuracy x people)": [p["people_learned"] for p in points]},
        workdir / "mitigations.png", f"Mitigations at r={config.sub_critical_ratio:g}")
    return {"per_variant": points, "baseline_accuracy": baseline[f"{ACCURACY}_mean"],
            "best_subsample_accuracy": max((p[f"{ACCURACY}_mean"] for p in points
                                            if p["variant"] == "subsample"), default=None),
            "best_compact_accuracy": max((p[f"{ACCURACY}_mean"] for p in points
                                          if p["variant"] == "compact"), default=None),
            "best_tuples_accuracy": max((p[f"{ACCURACY}_mean"] for p in points
                                         if p["variant"] == "tuples"), default=None)}


def analyse_frequency(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                      rows: list[dict[str, Any]]) -> dict[str, Any]:
    points = per_point(rows, ("model.preset",))
    series = {}
    for row in rows:
        if row["seed"] != config.seeds[0]:
            continue
        people = results_table.read_table(workdir / results_table.RUNS_DIR / row["run"]
                                          / PEOPLE_FILE)
        x, y, _ = transitions.binned_means([p["exposures"] for p in people],
                                           [p["accuracy"] for p in people])
        series[row["model.preset"]] = {"x": x, "y": y}
    plotting.xy_lines(series, workdir / "accuracy_vs_exposures.png",
                      f"Accuracy against exposures, popularity (i+1)^-"
                      f"{config.popularity_exponent:g}, r={config.frequency_ratio:g}",
                      "exposures of the person (log bins)", "exact-match accuracy",
                      hline=config.level)
    measured = [p for p in points if p["threshold_exposures"] is not None]
    fit = (capacity.fit_power_law([p[config.param_count] for p in measured],
                                  [p["threshold_exposures"] for p in measured]).__dict__
           if len(measured) >= 2 else None)
    return {"per_size": points, "threshold_exposures_power_law": fit}



# Each mode's analysis of the finished sweep: (config, workdir, rows) -> summary entries.
ANALYSES = {"ratio": analyse_ratio, "size": analyse_size, "web": analyse_web,
            "longer": analyse_longer, "mitigation": analyse_mitigation,
            "frequency": analyse_frequency}
# The summary entry of each mode that is written as analysis.csv instead.
TABLES = {"ratio": "per_ratio", "size": "per_point", "web": "per_size", "longer": "per_steps",
          "mitigation": "per_variant", "frequency": "per_size"}
