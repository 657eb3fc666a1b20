"""BiMix and its peers fitted to the published 5-mix loss curves (Ye et al. 2024 data).

Run (every law x eval group x model size, one held-out draw, r_i = 0 rows dropped: 80 fits;
21.6-28.6 s on a 2-core CPU in four of five measurements, 36.0 s in one; 15-20 s once
~/.cache/phasemix/xla holds the compiled fits; `python -m benchmarks.fit_time`):
  python -m experiments.bimix_fit --workdir=runs/bimix_fit
  python -m experiments.bimix_fit --curves=/path/to/5mix_losses.csv --workdir=runs/bimix_fit
`full`: also the r_i -> epsilon policy and a second held-out draw (320 fits; 44-57 s, 34-40 s
on a rerun); the README's table is its medians over the two draws:
  python -m experiments.bimix_fit --config=experiments/bimix_fit.py:full --workdir=runs/bimix_fit

Smoke (one model size, few starts; used by the tests):
  python -m experiments.bimix_fit --config=experiments/bimix_fit.py:smoke --workdir=/tmp/bimix

Overrides, e.g. --config.zero_shares='("epsilon",)' --config.epsilon=1e-3
--config.step_cut=15000 --config.fit.num_starts=128 --config.models='("70M",)'.

The curves (--curves, default ../shared/data/mixing_laws/5mix_losses.csv from the repository
root) are never copied into the workdir. The 22 Pile eval sub-domains are aggregated into
the 5 training groups with the weights of pile_valid_weight.json (--valid_weights, default:
next to the curves), renormalised within each group. Each (model, group) is fitted on steps
<= step_cut of the mixtures not held out, then scored on later steps (extrapolation in s)
and on the held-out mixtures (R^2, within-step R^2, Spearman). Outputs: table.csv (one row per
law x group x model x zero-share policy x held-out draw), predictions.csv, predicted_vs_measured.png,
summary.json (medians over groups and draws), optimal_mixtures.json.
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
import numpy as np

from phasemix.base import run_io, validation
from phasemix.data.published_curves import (DEFAULT_CURVES, DOMAINS, MIX_TOL, WEIGHTS_FILE,
                                            load_curves)
from phasemix.analysis import published_law_fits
from phasemix.runs import cli, sweep


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "full", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: every law on the four sizes with 26 mixtures, one held-out draw, one zero-share
    policy. `full`: two draws and both policies. `smoke`: one size, seconds."""
    from phasemix.analysis import mixing_laws

    config = ml_collections.ConfigDict()
    config.experiment = "bimix_fit"
    config.seed = 0  # random starts and held-out draws derive from it
    # 1B is left out: 6 mixtures, 4 of them with a single checkpoint (pass it to see it fail).
    config.models = ("70M", "160M", "305M", "410M")
    config.laws = mixing_laws.LAW_NAMES  # bimix | ye | linear | step_only
    # Steps above max_step are dropped (0 keeps all): 30k is the horizon every size below 1B
    # shares; the few runs that go on to 100k (6 of 26 at 70M, 2 at 160M) would weigh the
    # extrapolation score towards themselves.
    config.max_step = 30000
    config.step_cut = 20000  # fit on steps <= step_cut, extrapolate to the later ones
    config.heldout_fraction = 0.25  # of each size's mixtures, held out of the fit
    config.num_splits = 1  # held-out draws (each its own fit); the table keeps every draw
    config.threads = 0  # fits run concurrently on this many threads (0: one per CPU core)
    # How BiMix meets r_i = 0: `drop` removes those rows (for every law, so that all are
    # scored on the same rows); `epsilon` keeps them with r_i = max(r_i, epsilon).
    config.zero_shares = ("drop",)
    config.epsilon = 1e-3
    config.fit = ml_collections.ConfigDict(dict(
        # 16 starts x 100 iterations left 24 of the 320 `full` fits > 1% above these (Ye).
        num_starts=32,  # random L-BFGS starts per fit, run together under vmap
        max_iter=200,  # L-BFGS iterations per start
        delta=0.01,  # Huber threshold on log residuals (Ye et al.)
        tol=1e-6,  # stop a start when its gradient norm is below this
    ))
    # The mixture each fitted law predicts best at `opt.step` (first held-out draw).
    config.opt = ml_collections.ConfigDict(dict(
        step=30000,
        domain_weights=(0.2, 0.2, 0.2, 0.2, 0.2),  # weights of the 5 group losses; sum to 1
        min_weight=0.01,  # lower bound of every proportion (BiMix is infinite at 0)
        max_weight=1.0,  # upper bound (e.g. a repetition cap)
        # Also cap each share at the largest one trained (e.g. dialogue <= 0.094): beyond it
        # every law extrapolates, and the linear law then sends ~90% to dialogue.
        cap_at_trained_max=True,
    ))
    if variant == "full":
        config.num_splits = 2
        config.zero_shares = ("drop", "epsilon")
    elif variant == "smoke":
        config.models = ("305M",)
        config.num_splits = 1
        config.zero_shares = ("drop",)
        # Two laws: each law family costs one XLA compilation (~5 s here); the others are
        # covered by the unit tests.
        config.laws = ("bimix", "step_only")
        config.fit.num_starts = 4
        config.fit.max_iter = 40
    elif variant:
        validation.unknown_variant(variant, "'', 'full' or 'smoke'")
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no data, before anything is read or written."""
    from phasemix.analysis import mixing_laws

    validation.require(len(config.models) > 0, "models", "name at least one model size",
                       config.models)
    validation.require(len(config.laws) > 0, "laws", "name at least one law", config.laws)
    for law in config.laws:
        validation.require_choice(law, mixing_laws.LAW_NAMES, "laws")
    validation.require(len(config.zero_shares) > 0, "zero_shares", "name at least one policy",
                       config.zero_shares)
    for policy in config.zero_shares:
        validation.require_choice(policy, mixing_laws.ZERO_SHARE_POLICIES, "zero_shares")
    validation.require(0 < config.heldout_fraction < 1, "heldout_fraction",
                       "must be in (0, 1)", config.heldout_fraction)
    validation.require(0 < config.epsilon < 1, "epsilon", "must be in (0, 1)", config.epsilon)
    validation.require(config.max_step >= 0, "max_step", "must be >= 0 (0 keeps every step)",
                       config.max_step)
    validation.require(not config.max_step or config.step_cut < config.max_step, "step_cut",
                       f"must be below max_step={config.max_step}, or nothing is left to "
                       "extrapolate to", config.step_cut)
    validation.require_positive(config, "step_cut", "num_splits", "fit.num_starts",
                                "fit.max_iter", "fit.delta", "opt.step")
    validation.require(config.threads >= 0, "threads", "must be >= 0 (0: one per core)",
                       config.threads)
    validation.require(config.fit.tol >= 0, "fit.tol", "must be >= 0", config.fit.tol)
    validation.require_unique(config, "models", "laws", "zero_shares")
    try:
        weights = np.asarray(config.opt.domain_weights, float)
    except (TypeError, ValueError):  # e.g. a flag the parser kept as a string
        validation.fail("opt.domain_weights", f"must be numbers, one per group {DOMAINS}",
                        config.opt.domain_weights)
    validation.require(weights.shape == (len(DOMAINS),), "opt.domain_weights",
                       f"needs one weight per group {DOMAINS}", config.opt.domain_weights)
    validation.require(np.all(weights >= 0) and abs(weights.sum() - 1) <= MIX_TOL,  # NaN fails
                       "opt.domain_weights", f"must be >= 0 and sum to 1 (within {MIX_TOL})",
                       config.opt.domain_weights)
    lo, hi = config.opt.min_weight, config.opt.max_weight
    validation.require(0 < lo <= 1 / len(DOMAINS), "opt.min_weight",
                       f"must be in (0, 1/{len(DOMAINS)}]", lo)
    validation.require(1 / len(DOMAINS) <= hi <= 1, "opt.max_weight",
                       f"must be in [1/{len(DOMAINS)}, 1]", hi)


def run(config: ml_collections.ConfigDict, workdir: str, curves: str | pathlib.Path =
        DEFAULT_CURVES, valid_weights: str | pathlib.Path | None = None) -> dict[str, Any]:
    from phasemix.analysis import law_fit

    validate(config)
    data = load_curves(curves, valid_weights)
    for model in config.models:
        validation.require(model in data, "models", f"not in {curves} (it has {sorted(data)})",
                           model)
    selected = {model: published_law_fits.select(data[model], config, model)
                for model in config.models}
    for model, data_of_model in selected.items():  # before any fit, not after them
        published_law_fits.share_bounds(config, model,
                                        np.unique(data_of_model["props_NxK"], axis=0))
    workdir_path = run_io.prepare_workdir(workdir, config)
    # One padded size for every fit: one compilation per law family.
    pad_to = law_fit.padded_size(published_law_fits.fit_rows(config, selected))
    rows, predictions, optima = [], [], []
    fitted: dict[str, dict] = {model: {} for model in config.models}  # first draw's laws
    for job, (row, job_predictions, law_params) in zip(
            published_law_fits.jobs_for(config),
            published_law_fits.fit_all(config, selected, pad_to)):
        rows.append(row)
        predictions += job_predictions
        if job.split == 0:
            fitted[job.model][(job.policy, job.law_name, job.domain_index)] = law_params
    law_fit.warn_fits(rows, ("model", "zero_share", "split", "domain"))
    for model in config.models:
        optima += published_law_fits.optimal_mixtures(config, model, fitted[model],
                                                      selected[model])
    sweep.write_table(rows, workdir_path / "table.csv")
    sweep.write_table(predictions, workdir_path / "predictions.csv")
    run_io.write_json_atomic(workdir_path / "table.json", run_io.nan_to_none(rows))
    run_io.write_json_atomic(workdir_path / "optimal_mixtures.json", optima)
    entries = published_law_fits.headline(rows)
    published_law_fits.plot_predictions(workdir_path / "predictions.csv",
                                        workdir_path / "predicted_vs_measured.png",
                                        config.zero_shares[0])
    print(published_law_fits.format_table(entries))
    missing = {model: int(np.sum(np.isnan(d["loss_NxK"]))) for model, d in selected.items()}
    summary = run_io.nan_to_none({
        "curves": str(pathlib.Path(curves).resolve()),
        "models": list(config.models), "laws": list(config.laws),
        "step_cut": config.step_cut, "max_step": config.max_step,
        "heldout_fraction": config.heldout_fraction, "num_splits": config.num_splits,
        "group_losses_missing_subdomains": missing,
        "fraction_dropped_zero_share": {
            f"{m}/{d}": r["fraction_dropped_zero_share"] for r in rows
            for m, d in [(r["model"], r["domain"])]
            if r["split"] == 0 and r["zero_share"] == "drop" and r["law"] == config.laws[0]},
        "headline": entries,
        "note": "medians over the 5 groups and the held-out draws; within-step scores count "
                "only the differences between mixtures at one step",
    })
    run_io.write_json_atomic(workdir_path / run_io.SUMMARY_FILE, summary)
    return summary


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_string("curves", str(DEFAULT_CURVES), "The 5-mix loss curves (CSV).")
    flags.DEFINE_string("valid_weights", None,
                        f"Pile eval sub-domain weights; default: {WEIGHTS_FILE} by the curves.")
    cli.main(lambda config, workdir: run(config, workdir, flags.FLAGS.curves,
                                         flags.FLAGS.valid_weights),
             config_file=__file__, default_workdir="runs/bimix_fit")
