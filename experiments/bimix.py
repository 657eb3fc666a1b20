"""BiMix on our own proxy runs: fit mixing laws to small LMs, propose a mixture, test it.

Run (offline: 4 real domains, see phasemix/data/domains.py; the whole study on a 2-core CPU):
  python -m experiments.bimix --workdir=runs/bimix
Smoke (2 domains, seconds per run; used by the tests):
  python -m experiments.bimix --config=experiments/bimix.py:smoke --workdir=/tmp/bimix

1. Trains `num_proxies` small LMs (`config.base`) on mixtures drawn from a Dirichlet
   (seeded by `seed`), logging each domain's validation loss every `base.eval_every` steps.
2. Fits every law of `laws` (BiMix, Ye et al., the step-only control; phasemix/analysis/law_fit.py)
   per domain, on steps <= step_cut of the proxies not held out; scores later steps and the
   held-out proxies (fits.csv, predictions.csv, predicted_vs_measured.png).
3. Refits `optimize_law` on every proxy row and minimises the predicted average validation
   loss at the final step over the simplex, each share >= min_weight (and, with
   cap_at_trained_max, <= the largest share any proxy trained on).
4. Trains the optimised, uniform, natural (by domain size) and entropy-driven (conditional
   entropy, normalised) mixtures over `seeds` and compares their average validation loss
   (comparison.csv, strategies.png, summary.json).
Every run is a sweep run in <workdir>/runs/; results.csv has them all. Re-running the command
runs only what is missing.

Overrides: --config.num_proxies=16 --config.seeds='(0,1,2)' --config.base.num_steps=2000
--config.base.domains.names='("reviews","code")' --config.base.mixture='(0.5,0.5)' (one share
per domain) --config.laws='("bimix","ye","linear","step_only")'
--config.extra_mixtures='((0.4,0.3,0.2,0.1),)' (compared too) --config.workers=1.

The default takes 26 minutes on a 2-core CPU (measured; see get_config).
"""

from __future__ import annotations

import itertools
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np

from phasemix.base import run_io, validation
from phasemix.training import mixture_run
from phasemix.analysis import entropy_mix, mixture_strategies, proxy_law_fits
from phasemix.runs import cli, sweep


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: the CPU study. `smoke`: 2 domains, tiny runs, for tests.

    Default: 12 proxies + 4 strategies x 2 seeds = 20 runs of tiny-32 (2 layers, d=32;
    4,096-word vocabulary; 294k parameters, 25k of them outside the embeddings and head),
    1,000 steps x 16 x 64 tokens (1.0M tokens, a third of a pass over each domain), 9
    evaluations of 256 windows per domain. Measured on the project's 2-core CPU while two
    other experiments kept both cores busy (so no faster than idle): one run took 245
    CPU-seconds in a sweep worker (279 s wall; ~35 s of it
    loading data and compiling); two seeds of the uniform mixture: 244 and 245 s. The fits
    of the default (3 laws x 4 domains, twice each) on curves of that shape: 44 CPU-seconds.
    The whole default study, measured alone on that CPU: 1,546 s (25.8 min) wall, ~145 s per
    run on 2 workers plus the fits (README: what it found).
    """
    if variant not in ("", "smoke"):
        validation.unknown_variant(variant, "'' or 'smoke'")
    smoke = variant == "smoke"
    config = ml_collections.ConfigDict()
    config.experiment = "bimix"
    config.seed = 0  # the proxies' Dirichlet draws, the held-out proxies, the fits' starts
    # Every run; proxies and strategies set label/mixture/seed.
    config.base = mixture_run.run_config(smoke)
    config.num_proxies = 12
    config.dirichlet_alpha = 1.0  # 1: uniform over the simplex
    config.seeds = (0, 1)  # each compared strategy is trained with every one of these seeds
    config.laws = ("bimix", "ye", "step_only")  # of phasemix.analysis.mixing_laws.LAW_NAMES
    config.optimize_law = "bimix"  # the law whose optimum is trained
    config.step_cut = 625  # fit on steps <= step_cut; later steps score the extrapolation
    config.heldout_fraction = 0.25  # of the proxies, kept out of the fit
    config.epsilon = 1e-3  # BiMix's floor on a zero share (r_i = max(r_i, epsilon))
    config.fit = ml_collections.ConfigDict(dict(
        num_starts=32, max_iter=200, delta=0.01, tol=1e-6))  # as experiments/bimix_fit.py
    config.min_weight = 0.02  # every share of the optimised mixture is at least this
    config.cap_at_trained_max = True  # and at most the largest share a proxy trained on
    config.entropy = ml_collections.ConfigDict(dict(
        measure="conditional",  # of entropy_mix.MEASURES
        method="normalize",  # of entropy_mix.METHODS
        # Equal-size samples (the first tokens of each train stream; fewer if a domain is
        # smaller): plug-in entropies grow with the sample, so sizes must match.
        tokens=300_000))
    config.extra_mixtures = ()  # more mixtures to compare, e.g. ((0.4, 0.3, 0.2, 0.1),)
    config.workers = 2  # parallel runs, each pinned to its share of the CPUs (1: in this process)
    if smoke:
        config.num_proxies = 5
        config.seeds = (0,)
        config.laws = ("bimix",)  # each law family costs one compilation
        config.step_cut = 6
        config.fit.num_starts = 4
        config.fit.max_iter = 40
        config.entropy.tokens = 20_000
        config.workers = 1
    return config



def validate(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no data, before anything is read or trained."""
    from phasemix.analysis import mixing_laws

    mixture_run.validate_run(config.base, "base.")
    num_domains = len(config.base.domains.names)
    validation.require(len(config.laws) > 0, "laws", "name at least one law", config.laws)
    validation.require_unique(config, "laws")
    for law in config.laws:
        validation.require_choice(law, mixing_laws.LAW_NAMES, "laws")
    aware = [law for law in config.laws if mixing_laws.FAMILIES[law].uses_mixture]
    validation.require_choice(config.optimize_law, aware, "optimize_law")
    validation.require(0 < config.heldout_fraction < 1, "heldout_fraction", "must be in (0, 1)",
                       config.heldout_fraction)
    validation.require(config.num_proxies >= 3, "num_proxies",
                       "needs >= 3 (some are held out, >= 2 are fitted)", config.num_proxies)
    for law in config.laws:
        params = proxy_law_fits.law_param_count(law, num_domains)
        fitted = config.num_proxies - proxy_law_fits.heldout_count(config.num_proxies,
                                                                   config.heldout_fraction)
        needed = next(n for n in itertools.count(3)
                      if n - proxy_law_fits.heldout_count(n, config.heldout_fraction) >= params)
        validation.require(fitted >= params, "num_proxies",
                           f"leaves {fitted} proxies to fit after holding out "
                           f"{config.num_proxies - fitted}: fewer than the {params} parameters "
                           f"of the {law} law with {num_domains} domains; use >= {needed}",
                           config.num_proxies)
    validation.require_positive(config, "dirichlet_alpha")
    validation.require(len(config.seeds) > 0, "seeds", "needs at least one seed", config.seeds)
    validation.require_unique(config, "seeds")
    steps = proxy_law_fits.eval_steps(config)
    fit_steps = [s for s in steps if s <= config.step_cut]
    validation.require(len(fit_steps) >= 3 and len(fit_steps) < len(steps), "step_cut",
                       f"must leave >= 3 evaluation steps to fit and >= 1 after it (evaluations "
                       f"at {steps})", config.step_cut)
    validation.require(0 < config.min_weight <= 1 / num_domains, "min_weight",
                       f"must be in (0, 1/{num_domains}]", config.min_weight)
    validation.require(0 < config.epsilon < 1, "epsilon", "must be in (0, 1)", config.epsilon)
    validation.require_choice(config.entropy.measure, entropy_mix.MEASURES, "entropy.measure")
    validation.require_choice(config.entropy.method, entropy_mix.METHODS, "entropy.method")
    validation.require(config.entropy.tokens > 1, "entropy.tokens", "must be > 1",
                       config.entropy.tokens)
    for i, weights in enumerate(config.extra_mixtures):
        mixture_run.check_mixture(weights, num_domains, f"extra_mixtures[{i}]")
    validation.require_positive(config, "fit.num_starts", "fit.max_iter", "fit.delta")
    validation.require(config.fit.tol >= 0, "fit.tol", "must be >= 0", config.fit.tol)


# --- The study --------------------------------------------------------------------------------

def run(config: ml_collections.ConfigDict, workdir: str,
        shard: sweep.Shard | None = None) -> dict[str, Any]:
    validate(config)
    workdir_path = run_io.require_workdir(workdir)
    # A study that fails part-way leaves the tables and figures of its last success.
    with run_io.unchanged_on_failure(workdir_path):
        return _study(config, workdir_path, shard)


def _study(config: ml_collections.ConfigDict, workdir_path: pathlib.Path,
           shard: sweep.Shard | None) -> dict[str, Any]:
    began = time.monotonic()
    names = tuple(config.base.domains.names)
    domain_rows, mixtures = mixture_strategies.prepare(config)
    proxies = mixture_strategies.proxy_grid(config)
    common = dict(validate_fn=mixture_run.validate_run, workers=config.workers, shard=shard,
                  base_flag="base")
    # The compared runs, added by the second call, are not known yet: not "dropped".
    rows = sweep.run_sweep(config.base, proxies, workdir_path, mixture_run.run_mixture,
                           **common, check_dropped=False)
    sweep.require_none_diverged(rows, workdir_path)  # the fits need every proxy's curve
    run_io.write_json_atomic(workdir_path / run_io.CONFIG_FILE, run_io.config_to_dict(config))
    sweep.write_table(domain_rows, workdir_path / "domains.csv")
    if len(rows) < len(proxies):  # other shards still train proxies: re-run when they are done
        return {"proxies": len(proxies), "proxies_finished": len(rows), "shard": str(shard)}

    curves = proxy_law_fits.proxy_curves(workdir_path, proxies, names)
    fit_rows, predictions, fitted = proxy_law_fits.fit_laws(config, curves, names)
    sweep.write_table(fit_rows, workdir_path / "fits.csv")
    sweep.write_table(predictions, workdir_path / "predictions.csv")
    proxy_law_fits.plot_predictions(workdir_path / "predictions.csv",
                                    workdir_path / "predicted_vs_measured.png")
    optimum, opt_facts = proxy_law_fits.optimize(config, fitted, curves)
    strategies = {**mixtures, "optimized": mixture_strategies.quantize(optimum),
                  **{f"extra{i}": mixture_strategies.quantize(m)
                     for i, m in enumerate(config.extra_mixtures)}}
    compared = [{"label": label, "mixture": mix, "seed": seed}
                for label, mix in strategies.items() for seed in config.seeds]
    rows = sweep.run_sweep(config.base, proxies + compared, workdir_path,
                           mixture_run.run_mixture, **common)
    sweep.require_none_diverged(rows, workdir_path)
    if len(rows) < len(proxies) + len(compared):
        return {"runs": len(proxies) + len(compared), "runs_finished": len(rows),
                "shard": str(shard)}

    comparison = mixture_strategies.compare(config, strategies, rows, fitted, names)
    sweep.write_table(comparison, workdir_path / "comparison.csv")
    mixture_strategies.plot_strategies(
        workdir_path / "comparison.csv", workdir_path / "strategies.png",
        f"{config.base.model.preset}, {config.base.num_steps} steps, "
        f"{len(config.seeds)} seed(s); domains {', '.join(names)}")
    fit_quality = [{k: r[k] for k in ("law", "domain", "extrap_step_mre", "heldout_mix_r2",
                                      "heldout_mix_within_step_r2", "heldout_both_mre",
                                      "heldout_both_r2")} for r in fit_rows]
    summary = {
        "domains": names, "proxies": len(proxies), "seeds": list(config.seeds),
        "proxy_zero_shares": int(np.sum(np.asarray([p["mixture"] for p in proxies]) == 0)),
        "mixtures": {k: dict(zip(names, v)) for k, v in strategies.items()},
        "optimization": {"law": config.optimize_law, **opt_facts},
        "versus_uniform": mixture_strategies.headline(comparison),
        "avg_valid_loss": {c["strategy"]: {"mean": c["avg_valid_loss_mean"],
                                           "std": c["avg_valid_loss_std"]} for c in comparison},
        "fit_quality": fit_quality,
        "domain_facts": domain_rows,
        "note": "beyond_seed_spread: |mean difference| > the larger seed std of the two "
                "strategies; fit quality: extrap_step = fitted proxies at steps > step_cut, "
                "heldout_mix = held-out proxies at fitted steps, heldout_both = both",
        # This invocation's wall time (a resumed study counts only what it ran).
        "wall_seconds": time.monotonic() - began,
    }
    summary = run_io.nan_to_none(summary)
    run_io.write_json_atomic(workdir_path / run_io.SUMMARY_FILE, summary)
    print("\n".join([f"{q['law']:>10} {q['domain']:>12}: extrapolation MRE "
                      f"{q['extrap_step_mre']:.4f}, held-out R^2 {q['heldout_mix_r2']:.3f}, "
                      f"within-step R^2 {q['heldout_mix_within_step_r2']:.3f}"
                      for q in fit_quality]
                    + [v["verdict"] for v in summary["versus_uniform"].values()]), flush=True)
    return summary


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/bimix", sweep=True)
