r"""Knowledge phase transitions (Gu et al. 2025): sweeps over mixing ratio and model size,
critical points, the capacity-allocation theory, mitigations and the threshold frequency.

Every run is a `knowledge_mixing` run (SynBio + web text at ratio r); the sweep runner trains
them (2 worker processes by default) and this module analyses the table.

Ratio sweep (default; the knowledge_mixing default run, tiny-64 and 500 people, at r = 0.1,
0.15, 0.2, 0.3; two pairs of runs at ~25 min each on a 2-core CPU):
  python -m experiments.knowledge_phase --workdir=runs/kp_ratio
  (--config.ratios='(0.05,0.075,0.1,0.15,0.2,0.3)' is the 6-point sweep of the README, ~75 min)
Theory first: web-only runs across sizes fit F2(P) = C + A P^-alpha and print the predicted
critical ratio of each size, before any SynBio run:
  python -m experiments.knowledge_phase --config=experiments/knowledge_phase.py:web \
      --workdir=runs/kp_web
Size x ratio (the size transition, critical ratio per size, its power law; with
--config.web_sweep=runs/kp_web the theory's predictions are drawn beside the measurements;
3 presets x 4 ratios = 12 runs, ~2.5 hours on a 2-core CPU, estimated from the ratio sweep):
  python -m experiments.knowledge_phase --config=experiments/knowledge_phase.py:size \
      --config.web_sweep=runs/kp_web --workdir=runs/kp_size
The README's size sweep samples each size around its own threshold (9 runs):
  ... :size --config.presets='("tiny-48","tiny-64","tiny-96")' \
      --config.ratios_per_preset='((0.2,0.3,0.45,0.7),(0.15,0.2,0.3),(0.15,0.2))'
Below the threshold, more steps (1x, 2x, 4x):     :longer
Mitigations at a sub-critical ratio (subsample, compact tuples):     :mitigation
Threshold frequency (power-law popularity, accuracy against exposures per size):     :frequency
Smoke variants for tests: :smoke (ratio), :web_smoke, :size_smoke, :longer_smoke,
:mitigation_smoke, :frequency_smoke.

Any knowledge_mixing field is a flag under `base` (--config.base.synbio.num_people=2000); the
grids are --config.ratios='(0.1,0.2)' --config.presets='("tiny-32","tiny-64")'
--config.seeds='(0,1)'. Re-running a sweep runs only the runs that are missing; --shard=i/n
runs part i of n (see launch/).
"""

from __future__ import annotations

import csv
import pathlib
import statistics
import time
from typing import Any

import ml_collections
import numpy as np

from experiments import knowledge_mixing
from phasemix.base import plotting, run_io, validation
from phasemix.data import synbio
from phasemix.analysis import capacity, transitions
from phasemix.runs import cli, sweep

MODES = ("ratio", "size", "longer", "web", "mitigation", "frequency")
PARAM_COUNTS = ("non_embedding_params", "params")
ACCURACY = "bio_accuracy"  # mean exact match over attributes and templates (the paper's metric)


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "smoke") + tuple(f"{m}{s}" for m in MODES for s in ("", "_smoke"))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: the ratio sweep. Other modes and their smoke variants: see the docstring."""
    mode, _, smoke = variant.partition("_")
    mode = mode or "ratio"
    if mode == "smoke":
        mode, smoke = "ratio", "smoke"
    if mode not in MODES or smoke not in ("", "smoke"):
        validation.unknown_variant(variant, f"one of {list(MODES)}, each optionally with "
                                   "'_smoke', or 'smoke'")
    config = ml_collections.ConfigDict()
    config.experiment = "knowledge_phase"
    config.mode = mode
    config.base = knowledge_mixing.get_config("smoke" if smoke else "")
    # Ratio and size modes. At the default size the transition lies between 0.15 and 0.3
    # (README); 4 points keep the sweep to two rounds of 2 parallel runs.
    config.ratios = (0.1, 0.15, 0.2, 0.3)
    config.presets = ("tiny-32", "tiny-48", "tiny-64")  # size, web and frequency modes
    # Size mode: one ratio grid per preset (same order as presets), so that each size is
    # sampled around its own critical ratio; empty: every preset at `ratios`.
    config.ratios_per_preset = ()
    config.seeds = (0,)
    config.level = 0.5  # accuracy at which a ratio / size / frequency counts as critical
    # Longer and mitigation modes: below the threshold (accuracy 0.04 at the default size), and
    # 2x steps there give the exposures per biography that r = 0.3 has at 1x.
    config.sub_critical_ratio = 0.15
    config.steps_multipliers = (1, 2, 4)  # longer mode
    config.keep_fractions = (0.5, 0.25)  # mitigation: subsample the people
    config.compact_fractions = (0.1, 0.3)  # mitigation: compact tuples (tau)
    config.frequency_ratio = 0.3  # frequency mode: r, with power-law popularity
    config.popularity_exponent = 1.0  # frequency mode: person i drawn with weight (i+1)^-e
    config.frequency_people = 2000  # frequency mode: N
    # Capacity theory: a finished :web sweep to fit the web law from; bits per parameter
    # (Allen-Zhu & Li: about 2); which parameters count as capacity.
    config.web_sweep = ml_collections.config_dict.placeholder(str)
    config.bits_per_param = 2.0
    config.param_count = "non_embedding_params"
    config.workers = 2  # parallel runs, each pinned to its share of the CPUs (1: in this process)
    if smoke:
        config.ratios = (0.2, 1.0)
        config.presets = ("tiny-16", "tiny-32", "tiny-48")
        config.sub_critical_ratio = 0.2
        config.steps_multipliers = (1, 2)
        config.keep_fractions = (0.5,)
        config.compact_fractions = (0.1,)
        config.frequency_people = 50
        config.workers = 1
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    with sweep.flags_under("base."):
        knowledge_mixing.validate(config.base)
    validation.require_choice(config.mode, MODES, "mode")
    validation.require_choice(config.param_count, PARAM_COUNTS, "param_count")
    validation.require(0 < config.level < 1, "level", "must be in (0, 1)", config.level)
    validation.require(config.bits_per_param > 0, "bits_per_param", "must be positive",
                       config.bits_per_param)
    for field in ("ratios", "sub_critical_ratio", "frequency_ratio"):
        values = config[field] if field == "ratios" else (config[field],)
        validation.require(len(values) > 0 and all(0 < r <= 1 for r in values), field,
                           "ratios must be in (0, 1]", config[field])
    if config.ratios_per_preset:
        validation.require(len(config.ratios_per_preset) == len(config.presets),
                           "ratios_per_preset", f"needs one ratio grid per preset "
                           f"{tuple(config.presets)}", config.ratios_per_preset)
        validation.require(all(len(g) > 0 and all(0 < r <= 1 for r in g)
                               for g in config.ratios_per_preset), "ratios_per_preset",
                           "every grid needs ratios in (0, 1]", config.ratios_per_preset)
    for field in ("presets", "seeds", "steps_multipliers"):
        validation.require(len(config[field]) > 0, field, "needs at least one value",
                           config[field])
    validation.require(all(isinstance(m, int) and m >= 1 for m in config.steps_multipliers),
                       "steps_multipliers", "must be integers >= 1", config.steps_multipliers)
    validation.require(all(0 < k < 1 for k in config.keep_fractions), "keep_fractions",
                       "must be in (0, 1)", config.keep_fractions)
    validation.require(all(0 < c < 1 for c in config.compact_fractions), "compact_fractions",
                       "must be in (0, 1)", config.compact_fractions)
    if config.mode == "mitigation":
        validation.require(len(config.keep_fractions) + len(config.compact_fractions) > 0,
                           "keep_fractions", "is empty and so is --config.compact_fractions: the "
                           "mitigation sweep needs at least one mitigation to compare",
                           config.keep_fractions)
    if config.mode in ("size", "web", "frequency"):
        validation.require(len(set(config.presets)) >= (3 if config.mode == "web" else 1),
                           "presets", "the web law has 3 parameters: it needs >= 3 sizes",
                           config.presets)
    if config.web_sweep is not None:
        validation.require((pathlib.Path(config.web_sweep) / sweep.RESULTS_FILE).is_file(),
                           "web_sweep", "has no results.csv: run the :web sweep there first",
                           config.web_sweep)
        try:  # fails here, before the sweep trains, if that table is not one
            load_knapsack(config)
        except ValueError as e:  # e.g. a NaN or negative loss the web law cannot fit
            if isinstance(e, validation.ConfigError):
                raise
            validation.fail("web_sweep", f"{pathlib.Path(config.web_sweep) / sweep.RESULTS_FILE}"
                            f" cannot be fitted by the web law: {e}", config.web_sweep)


def overrides(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The grid of the mode: one override dict per run."""
    seeds = {"seed": config.seeds}
    if config.mode == "ratio":
        return sweep.grid({"ratio": config.ratios, **seeds})
    if config.mode == "size":
        return [{"model.preset": preset, "ratio": ratio, "seed": seed}
                for preset, ratios in size_grid(config).items() for ratio in ratios
                for seed in config.seeds]
    if config.mode == "web":
        return sweep.grid({"model.preset": config.presets, **seeds}, {"ratio": 0.0})
    if config.mode == "longer":
        base = config.base
        return [{"ratio": config.sub_critical_ratio, "num_steps": base.num_steps * m,
                 "eval_every": base.eval_every * m, "checkpoint_every": base.checkpoint_every * m,
                 "seed": s} for m in config.steps_multipliers for s in config.seeds]
    if config.mode == "mitigation":
        fixed = {"ratio": config.sub_critical_ratio}
        variants = ([{}] + [{"mix.keep_fraction": k} for k in config.keep_fractions]
                    + [{"mix.compact_fraction": c} for c in config.compact_fractions])
        return [{**fixed, **v, "seed": s} for v in variants for s in config.seeds]
    return sweep.grid({"model.preset": config.presets, **seeds},
                      {"ratio": config.frequency_ratio,
                       "synbio.popularity_exponent": config.popularity_exponent,
                       "synbio.num_people": config.frequency_people,
                       "final_eval_people": config.frequency_people})


def grid_flags(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Each grid field -> the sweep flag its values come from (named in a bad value's error)."""
    ratio_flag = {"ratio": "ratios", "size": "ratios", "frequency": "frequency_ratio"}.get(
        config.mode, "sub_critical_ratio")
    return {"seed": "seeds", "model.preset": "presets", "ratio": ratio_flag,
            "mix.keep_fraction": "keep_fractions", "mix.compact_fraction": "compact_fractions",
            "synbio.num_people": "frequency_people", "final_eval_people": "frequency_people",
            "synbio.popularity_exponent": "popularity_exponent"}


def size_grid(config: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
    """Size mode: preset -> its ratios (`ratios_per_preset`, else `ratios` for every preset)."""
    grids = config.ratios_per_preset or [config.ratios] * len(config.presets)
    return {preset: tuple(grid) for preset, grid in zip(config.presets, grids)}


def size_ratios(config: ml_collections.ConfigDict) -> list[float]:
    """Every ratio of the size grid, sorted."""
    return sorted({r for grid in size_grid(config).values() for r in grid})


# --- Analysis -------------------------------------------------------------------------------

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
    """The smallest factor in x that takes the accuracy from < `low` to > `high` (the
    study's test of a sharp transition: within 2x), with the pair of grid points that achieve it."""
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
    path = pathlib.Path(config.web_sweep) / sweep.RESULTS_FILE
    needed = ("model.preset", "seed", ACCURACY, config.param_count, "web_val_loss",
              "tokens_per_bio")
    try:
        rows = sweep.read_table(path)
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


def _analyse_ratio(config, workdir: pathlib.Path, rows) -> dict[str, Any]:
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


def _analyse_size(config, workdir: pathlib.Path, rows) -> dict[str, Any]:
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
    if series:
        plotting.xy_lines(series, workdir / "critical_ratio_vs_size.png",
                          f"Critical ratio (accuracy {config.level:g}) against model size",
                          f"parameters ({x_key})", "critical ratio", log_y=True)


def _analyse_web(config, workdir: pathlib.Path, rows) -> dict[str, Any]:
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


def _analyse_longer(config, workdir: pathlib.Path, rows) -> dict[str, Any]:
    points = per_point(rows, ("num_steps",))
    plotting.xy_lines({"mean over attributes": {
        "x": [p["num_steps"] for p in points], "y": [p[f"{ACCURACY}_mean"] for p in points],
        "err": [p[f"{ACCURACY}_std"] for p in points]}},
        workdir / "accuracy_vs_steps.png",
        f"r={config.sub_critical_ratio:g}: more training below the threshold",
        "training steps", "exact-match accuracy", hline=config.level)
    return {"per_steps": points}


def _analyse_mitigation(config, workdir: pathlib.Path, rows) -> dict[str, Any]:
    for row in rows:
        row["variant"] = ("compact" if row["mix.compact_fraction"] > 0 else
                          "subsample" if row["mix.keep_fraction"] < 1 else "baseline")
    points = per_point(rows, ("variant", "mix.keep_fraction", "mix.compact_fraction"))
    for p in points:  # people-equivalents of facts learned: accuracy x people trained on
        p["people_learned"] = p[f"{ACCURACY}_mean"] * p["people_trained"]
    baseline = next(p for p in points if p["variant"] == "baseline")
    labels = [f"{p['variant']} keep={p['mix.keep_fraction']:g} tau={p['mix.compact_fraction']:g}"
              for p in points]
    plotting.bar_panels(labels, {
        "accuracy on the people trained on": [p[f"{ACCURACY}_mean"] for p in points],
        "people learned (accuracy x people)": [p["people_learned"] for p in points]},
        workdir / "mitigations.png", f"Mitigations at r={config.sub_critical_ratio:g}")
    return {"per_variant": points, "baseline_accuracy": baseline[f"{ACCURACY}_mean"],
            "best_subsample_accuracy": max((p[f"{ACCURACY}_mean"] for p in points
                                            if p["variant"] == "subsample"), default=None),
            "best_compact_accuracy": max((p[f"{ACCURACY}_mean"] for p in points
                                          if p["variant"] == "compact"), default=None)}


def _analyse_frequency(config, workdir: pathlib.Path, rows) -> dict[str, Any]:
    points = per_point(rows, ("model.preset",))
    series = {}
    for row in rows:
        if row["seed"] != config.seeds[0]:
            continue
        people = sweep.read_table(workdir / sweep.RUNS_DIR / row["run"]
                                  / knowledge_mixing.PEOPLE_FILE)
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


ANALYSES = {"ratio": _analyse_ratio, "size": _analyse_size, "web": _analyse_web,
            "longer": _analyse_longer, "mitigation": _analyse_mitigation,
            "frequency": _analyse_frequency}
TABLES = {"ratio": "per_ratio", "size": "per_point", "web": "per_size", "longer": "per_steps",
          "mitigation": "per_variant", "frequency": "per_size"}


def run(config: ml_collections.ConfigDict, workdir: str,
        shard: sweep.Shard | None = None) -> dict[str, Any]:
    validate(config)
    grid = overrides(config)
    workdir_path = run_io.require_workdir(workdir)
    # A sweep that fails part-way leaves the tables and figures of its last success.
    with run_io.unchanged_on_failure(workdir_path):
        return _sweep(config, grid, workdir_path, shard)


def _sweep(config: ml_collections.ConfigDict, grid: list[dict[str, Any]],
           workdir_path: pathlib.Path, shard: sweep.Shard | None) -> dict[str, Any]:
    began = time.monotonic()
    rows = sweep.run_sweep(config.base, grid, workdir_path, knowledge_mixing.run,
                           validate_fn=knowledge_mixing.validate, workers=config.workers,
                           shard=shard, grid_flags=grid_flags(config), base_flag="base")
    sweep.require_none_diverged(rows, workdir_path)  # the analyses need every grid point
    run_io.write_json_atomic(workdir_path / run_io.CONFIG_FILE, run_io.config_to_dict(config))
    if len(rows) < len(grid):  # other shards still running: they write the analysis
        return {"runs": len(grid), "runs_finished": len(rows), "shard": str(shard)}
    analysis = ANALYSES[config.mode](config, workdir_path, rows)
    table = analysis.pop(TABLES[config.mode])
    sweep.write_table(table, workdir_path / "analysis.csv")
    summary = {"mode": config.mode, "runs": len(rows), **analysis,
               # This invocation's wall time (a resumed sweep counts only what it ran).
               "wall_seconds": time.monotonic() - began}
    summary = run_io.nan_to_none(summary)
    run_io.write_json_atomic(workdir_path / run_io.SUMMARY_FILE, summary)
    return summary


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/knowledge_phase", sweep=True)
