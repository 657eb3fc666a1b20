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
Prediction first, no training: the measured capacity (a knowledge_capacity table) and the
web law give each size's critical ratio and the exponent, written before the size sweep that
tests them (which then sets measured beside predicted with --config.predicted_csv=...):
  python -m experiments.knowledge_phase --config=experiments/knowledge_phase.py:predict \
      --config.web_sweep=runs/kp_web --config.capacity_table=docs/results/knowledge/capacity.csv \
      --config.predicted_csv=docs/results/knowledge/predicted.csv --workdir=runs/kp_predict
Below the threshold, more steps (1x, 2x, 4x):     :longer
Mitigations at a sub-critical ratio (subsample, compact tuples):     :mitigation
Threshold frequency (power-law popularity, accuracy against exposures per size):     :frequency
Smoke variants for tests: :smoke (ratio), :web_smoke, :size_smoke, :longer_smoke,
:mitigation_smoke, :frequency_smoke, :predict_smoke.

Any knowledge_mixing field is a flag under `base` (--config.base.synbio.num_people=2000); the
grids are --config.ratios='(0.1,0.2)' --config.presets='("tiny-32","tiny-64")'
--config.seeds='(0,1)'. Re-running a sweep runs only the runs that are missing; --shard=i/n
runs part i of n (see launch/).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import ml_collections

from phasemix.base import results_table, run_io, validation
from phasemix.analysis import knowledge_prediction, knowledge_sweeps
from phasemix.runs import cli, knowledge_mixing, sweep

MODES = ("ratio", "size", "longer", "web", "mitigation", "frequency", "predict")
PARAM_COUNTS = ("non_embedding_params", "params")


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
    config.compact_fractions = (0.1, 0.3)  # mitigation: this share of bio tokens as tuples
    # Mitigation: compact tuples added at this fraction tau of all training tokens, the
    # paper's compact knowledge mixing (biographies keep r; the web gives up tau).
    config.tuple_fractions = ()
    config.frequency_ratio = 0.3  # frequency mode: r, with power-law popularity
    config.popularity_exponent = 1.0  # frequency mode: person i drawn with weight (i+1)^-e
    config.frequency_people = 2000  # frequency mode: N
    # Capacity theory: a finished :web sweep to fit the web law from; bits per parameter
    # (Allen-Zhu & Li: about 2); which parameters count as capacity.
    config.web_sweep = ml_collections.config_dict.placeholder(str)
    config.bits_per_param = 2.0
    config.param_count = "non_embedding_params"
    # Predict mode: a knowledge_capacity table (capacity.csv) whose sizes reached their
    # capacity, and the growth of learned bits per doubling of N below which they count so.
    config.capacity_table = ml_collections.config_dict.placeholder(str)
    config.saturation = 1.1
    # The prediction file: predict mode writes it (default <workdir>/predicted.csv); size mode
    # reads it and sets each size's measured critical ratio beside its prediction.
    config.predicted_csv = ml_collections.config_dict.placeholder(str)
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
    with run_io.flags_under("base."):
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
    validation.require(all(0 < t < 1 for t in config.tuple_fractions), "tuple_fractions",
                       "must be in (0, 1)", config.tuple_fractions)
    if config.mode == "mitigation":
        validation.require(len(config.keep_fractions) + len(config.compact_fractions)
                           + len(config.tuple_fractions) > 0, "keep_fractions",
                           "is empty and so are --config.compact_fractions and "
                           "--config.tuple_fractions: the "
                           "mitigation sweep needs at least one mitigation to compare",
                           config.keep_fractions)
    if config.mode in ("size", "web", "frequency"):
        validation.require(len(set(config.presets)) >= (3 if config.mode == "web" else 1),
                           "presets", "the web law has 3 parameters: it needs >= 3 sizes",
                           config.presets)
    validation.require(config.saturation > 1, "saturation", "must be > 1", config.saturation)
    if config.mode == "predict":
        validation.require(config.web_sweep is not None, "web_sweep", "is required: the "
                           "prediction needs a web-only law fit (run the :web sweep first)",
                           config.web_sweep)
        validation.require(config.capacity_table is not None and pathlib.Path(
            config.capacity_table).is_file(), "capacity_table", "must be a knowledge_capacity "
            "capacity.csv (e.g. docs/results/knowledge/capacity.csv)", config.capacity_table)
    elif config.predicted_csv is not None:
        validation.require(config.mode == "size" and pathlib.Path(config.predicted_csv).is_file(),
                           "predicted_csv", "must be a predict mode's table, read by the size "
                           "mode", config.predicted_csv)
    if config.web_sweep is not None:
        validation.require((run_io.run_path(config.web_sweep) / sweep.RESULTS_FILE).is_file(),
                           "web_sweep", "has no results.csv: run the :web sweep there first",
                           config.web_sweep)
        try:  # fails here, before the sweep trains, if that table is not one
            knowledge_sweeps.load_knapsack(config)
        except ValueError as e:  # e.g. a NaN or negative loss the web law cannot fit
            if isinstance(e, validation.ConfigError):
                raise
            validation.fail("web_sweep", f"{run_io.run_path(config.web_sweep) / sweep.RESULTS_FILE}"
                            f" cannot be fitted by the web law: {e}", config.web_sweep)


def overrides(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The grid of the mode: one override dict per run."""
    seeds = {"seed": config.seeds}
    if config.mode == "predict":  # no runs: the prediction reads finished tables
        return []
    if config.mode == "ratio":
        return sweep.grid({"ratio": config.ratios, **seeds})
    if config.mode == "size":
        return [{"model.preset": preset, "ratio": ratio, "seed": seed}
                for preset, ratios in knowledge_sweeps.size_grid(config).items()
                for ratio in ratios
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
                    + [{"mix.compact_fraction": c} for c in config.compact_fractions]
                    + [{"mix.tuple_fraction": t} for t in config.tuple_fractions])
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
            "mix.tuple_fraction": "tuple_fractions",
            "synbio.num_people": "frequency_people", "final_eval_people": "frequency_people",
            "synbio.popularity_exponent": "popularity_exponent"}


def run(config: ml_collections.ConfigDict, workdir: str,
        shard: sweep.Shard | None = None) -> dict[str, Any]:
    validate(config)
    grid = overrides(config)
    workdir_path = run_io.require_workdir(workdir)
    # A sweep that fails part-way leaves the tables and figures of its last success.
    with run_io.unchanged_on_failure(workdir_path):
        if config.mode == "predict":
            return _predict(config, workdir_path)
        return _sweep(config, grid, workdir_path, shard)


def _predict(config: ml_collections.ConfigDict, workdir_path: pathlib.Path) -> dict[str, Any]:
    """No training: each size's critical ratio from the measured capacity and the web law."""
    law, facts = knowledge_sweeps.load_knapsack(config)
    sizes = {p["model.preset"]: p[config.param_count] for p in facts["web_points"]}
    missing = [p for p in config.presets if p not in sizes]
    validation.require(not missing, "presets", f"{missing} have no run in the :web sweep at "
                       f"{config.web_sweep}", config.presets)
    try:
        bits = knowledge_prediction.measured_bits_per_param(
            sweep.read_table(config.capacity_table), config.param_count, config.saturation)
    except (KeyError, knowledge_prediction.PredictionError) as e:
        validation.fail("capacity_table", f"gives no capacity to predict from: {e}",
                        config.capacity_table)
    knapsack = knowledge_sweeps.knapsack_for(config, law, facts["tokens_per_bio"],
                                             config.base.synbio.num_people)
    rows = knowledge_prediction.predict(knapsack, {p: sizes[p] for p in config.presets}, bits,
                                        config.level)
    commit = results_table.current_commit()
    out = config.predicted_csv or workdir_path / "predicted.csv"
    sweep.write_table([{**r, "param_count": config.param_count, "commit": commit}
                       for r in rows], out)
    run_io.write_json_atomic(workdir_path / run_io.CONFIG_FILE, run_io.config_to_dict(config))
    summary = run_io.nan_to_none({"mode": "predict", "predicted_csv": str(out), "per_size": rows})
    run_io.write_json_atomic(workdir_path / run_io.SUMMARY_FILE, summary)
    for r in rows:
        ratio = r["predicted_critical_ratio"]
        print(f"{r['preset']:>10} ({r['params']:,.0f} params, {r['bits_per_param']:.2f} bits "
              f"each, {r['capacity_source']}): predicted critical ratio "
              + ("none: half the people do not fit" if ratio is None else f"{ratio:.3g}"),
              flush=True)
    print(f"predicted exponent {rows[0]['predicted_exponent']}; written to {out}", flush=True)
    return summary


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
    analysis = knowledge_sweeps.ANALYSES[config.mode](config, workdir_path, rows)
    table = analysis.pop(knowledge_sweeps.TABLES[config.mode])
    sweep.write_table(table, workdir_path / "analysis.csv")
    summary = {"mode": config.mode, "runs": len(rows), **analysis,
               # This invocation's wall time (a resumed sweep counts only what it ran).
               "wall_seconds": time.monotonic() - began}
    summary = run_io.nan_to_none(summary)
    run_io.write_json_atomic(workdir_path / run_io.SUMMARY_FILE, summary)
    return summary


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/knowledge_phase", sweep=True)
