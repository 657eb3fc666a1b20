"""Mixing laws fitted to the published 5-mix loss curves (`experiments/bimix_fit.py`).

Every fit is a `Job` (a law for one group of one model size, one zero-share policy, one
held-out draw), run on threads; each is fitted on steps <= step_cut of the mixtures not held
out and scored on the rest. Then the mixture each law predicts best, and the report: medians
over groups and draws (`headline`), as fixed-width text, and predicted against measured loss.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import pathlib
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from phasemix.base import results_table, validation
from phasemix.data.published_curves import DOMAINS

# The (split, metric) columns of the headline: medians over groups and held-out draws.
HEADLINE = (("extrap_step", "mre"), ("heldout_mix", "r2"), ("heldout_mix", "within_step_r2"),
            ("heldout_mix", "within_step_spearman"), ("heldout_mix", "mre"))


# --- Data -------------------------------------------------------------------------------------

def select(data: dict[str, np.ndarray], config: ml_collections.ConfigDict, model: str
           ) -> dict[str, np.ndarray]:
    """A model's rows up to max_step, checked to hold a fit and something to score."""
    keep = data["step_N"] <= config.max_step if config.max_step else np.ones_like(
        data["step_N"], bool)
    data = {k: v[keep] for k, v in data.items()}
    fit_steps = np.unique(data["step_N"][data["step_N"] <= config.step_cut])
    mixtures = np.unique(data["mixture_N"])
    validation.require(len(fit_steps) >= 3 and len(mixtures) >= 4, "models",
                       f"{model} has {len(fit_steps)} steps <= step_cut and {len(mixtures)} "
                       "mixtures; a fit needs >= 3 and >= 4: leave it out or move "
                       "--config.step_cut", model)
    return data


# --- Fitting ----------------------------------------------------------------------------------

def _heldout(config: ml_collections.ConfigDict, data: dict[str, np.ndarray], model_index: int,
             split: int) -> np.ndarray:
    from phasemix.analysis import law_fit

    return law_fit.choose_heldout_mixtures(data["mixture_N"], config.heldout_fraction,
                                           seed=[config.seed, split, model_index])


def fit_rows(config: ml_collections.ConfigDict, selected: dict[str, dict[str, np.ndarray]]
             ) -> int:
    """The most rows any fit of the run sees (steps <= step_cut of the mixtures kept)."""
    from phasemix.analysis import law_fit

    most = 0
    for model_index, model in enumerate(config.models):
        data = selected[model]
        for split in range(config.num_splits):
            splits = law_fit.protocol_splits(data["step_N"], data["mixture_N"], config.step_cut,
                                             _heldout(config, data, model_index, split))
            most = max(most, int(np.sum(splits == "fit")))
    return most


class Job(NamedTuple):
    """One fit: a law for one group of one model, one zero-share policy, one held-out draw."""

    model: str
    model_index: int
    split: int
    policy: str
    domain_index: int
    law_name: str


def jobs_for(config: ml_collections.ConfigDict) -> list[Job]:
    """Every fit of the run, the law innermost (so that the first jobs compile every family)."""
    return [Job(model, model_index, split, policy, d, law_name)
            for model_index, model in enumerate(config.models)
            for split in range(config.num_splits) for policy in config.zero_shares
            for d in range(len(DOMAINS)) for law_name in config.laws]


def fit_job(config: ml_collections.ConfigDict, job: Job, data: dict[str, np.ndarray],
            pad_to: int) -> tuple[dict, list[dict], Any]:
    """(table row, prediction rows, (law, fitted params)) of one fit."""
    from phasemix.analysis import law_fit, mixing_laws

    heldout = _heldout(config, data, job.model_index, job.split)
    d, domain = job.domain_index, DOMAINS[job.domain_index]
    loss_N = data["loss_NxK"][:, d]
    keep = np.isfinite(loss_N) & mixing_laws.zero_share_keep(data["props_NxK"], d, job.policy)
    dropped_zero = int(np.sum(np.isfinite(loss_N) & ~keep))
    law = mixing_laws.make_law(job.law_name, len(DOMAINS), d, config.epsilon)
    result = law_fit.evaluate_protocol(
        law, law_fit.fit_key(config.seed, job.split, job.model_index, d,
                             mixing_laws.LAW_NAMES.index(job.law_name)),
        data["step_N"][keep], data["props_NxK"][keep], loss_N[keep], data["mixture_N"][keep],
        step_cut=config.step_cut, heldout_ids=heldout, pad_to=pad_to,
        num_starts=config.fit.num_starts, max_iter=config.fit.max_iter,
        delta=config.fit.delta, tol=config.fit.tol)
    row = {"model": job.model, "law": job.law_name, "domain": domain,
           "zero_share": job.policy, "split": job.split,
           "heldout_mixtures": " ".join(map(str, heldout)),
           "rows_dropped_zero_share": dropped_zero,
           "fraction_dropped_zero_share": dropped_zero / int(np.sum(np.isfinite(loss_N))),
           "fit_objective": float(result.fit.loss),
           "fit_iterations": int(result.fit.iterations), **law_fit.fit_columns(result.fit)}
    for name, scores in result.metrics.items():
        row.update({f"{name}_{k}": v for k, v in scores.items()})
    predictions = [] if job.split else [
        {"model": job.model, "law": job.law_name, "domain": domain, "zero_share": job.policy,
         "mixture_id": int(m), "step": int(s), "split": str(sp), "loss": float(y),
         "pred": float(p)}
        for m, s, sp, y, p in zip(data["mixture_N"][keep], data["step_N"][keep],
                                  result.split_N, loss_N[keep], result.pred_N)]
    return row, predictions, (law, result.fit.params)


def fit_all(config: ml_collections.ConfigDict, selected: dict[str, dict[str, np.ndarray]],
            pad_to: int) -> list[tuple[dict, list[dict], Any]]:
    """Every job's result, in job order, fitted on `config.threads` threads.

    A fit holds no Python lock while XLA runs it, so threads share the cores. The first job of
    each law family runs alone on its thread before that family's other jobs start, so that no
    family compiles twice; results do not depend on the number of threads.
    """
    jobs = jobs_for(config)
    threads = config.threads or os.cpu_count() or 1
    if threads == 1:
        return [fit_job(config, job, selected[job.model], pad_to) for job in jobs]
    first = {}
    for i, job in enumerate(jobs):
        first.setdefault(job.law_name, i)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        def submit(i):
            return pool.submit(fit_job, config, jobs[i], selected[jobs[i].model], pad_to)

        futures = {i: submit(i) for i in first.values()}
        for i in first.values():
            futures[i].result()  # compiled
        futures.update({i: submit(i) for i in range(len(jobs)) if i not in futures})
        return [futures[i].result() for i in range(len(jobs))]


def share_bounds(config: ml_collections.ConfigDict, model: str, observed_MxK: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each group's lowest and highest share for the optimised mixture, checked to allow one."""
    from phasemix.analysis import mixture_opt

    lo = np.full(len(DOMAINS), config.opt.min_weight)
    hi = np.full(len(DOMAINS), config.opt.max_weight)
    if config.opt.cap_at_trained_max:
        hi = np.minimum(hi, observed_MxK.max(axis=0))
    try:
        mixture_opt.check_bounds(lo, hi)
    except ValueError as e:
        capped = (" (with --config.opt.cap_at_trained_max, each group's highest share is the "
                  f"largest {model} was trained on)" if config.opt.cap_at_trained_max else "")
        raise validation.ConfigError(f"--config.opt.min_weight={config.opt.min_weight}: "
                                     f"{e}{capped}") from e
    return lo, hi


def optimal_mixtures(config: ml_collections.ConfigDict, model: str, fitted: dict,
                     data: dict[str, np.ndarray]) -> list[dict]:
    """Per policy and mixture-aware law: the mixture it predicts best at opt.step, and the
    predicted loss there against the best mixture that was trained."""
    from phasemix.analysis import law_fit, mixture_opt

    weights = np.asarray(config.opt.domain_weights, float)
    observed = np.unique(data["props_NxK"], axis=0)
    lo, hi = share_bounds(config, model, observed)
    out = []
    for policy in config.zero_shares:
        for law_name in config.laws:
            if law_name == "step_only":
                continue
            laws, params = zip(*(fitted[(policy, law_name, d)] for d in range(len(DOMAINS))))
            r, method = mixture_opt.optimal_mixture(laws, params, config.opt.step, weights,
                                                    lo, hi)

            def predicted(mix_MxK):
                steps = np.full(len(mix_MxK), config.opt.step)
                return sum(w * law_fit.predict(law, p, steps, mix_MxK)
                           for w, law, p in zip(weights, laws, params))

            on_observed = predicted(observed)
            best = int(np.argmin(on_observed))
            out.append({"model": model, "zero_share": policy, "law": law_name,
                        "method": method, "max_share": dict(zip(DOMAINS, hi.tolist())),
                        "mixture": dict(zip(DOMAINS, np.round(r, 4).tolist())),
                        "predicted_loss": float(predicted(r[None, :])[0]),
                        "best_trained_mixture": dict(zip(DOMAINS, observed[best].tolist())),
                        "best_trained_predicted_loss": float(on_observed[best])})
    return out


# --- Outputs ----------------------------------------------------------------------------------

def headline(rows: list[dict]) -> list[dict]:
    """Per (zero_share, law, model): medians over groups and held-out draws."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["zero_share"], row["law"], row["model"]), []).append(row)
    out = []
    for (policy, law, model), group in groups.items():
        entry = {"zero_share": policy, "law": law, "model": model}
        for split, metric in HEADLINE:
            values = [r[f"{split}_{metric}"] for r in group
                      if not math.isnan(r[f"{split}_{metric}"])]
            entry[f"{split}_{metric}"] = float(np.median(values)) if values else math.nan
        out.append(entry)
    return out


def format_table(entries: list[dict]) -> str:
    """The headline as fixed-width text."""
    names = ["zero_share", "law", "model"] + [f"{s}_{m}" for s, m in HEADLINE]
    short = ["zero", "law", "model", "extrap MRE", "held R2", "held within R2",
             "held within rho", "held MRE"]
    lines = ["  ".join(f"{s:>15}" for s in short)]
    for e in entries:
        cells = []
        for n in names:
            v = e[n]
            cells.append(f"{v:>15.4f}" if isinstance(v, float) else f"{v:>15}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def plot_predictions(predictions_csv: pathlib.Path, path: pathlib.Path, zero_share: str) -> None:
    """Predicted against measured loss, one panel per law x model, coloured by split."""
    from phasemix.base import plotting

    rows = [r for r in results_table.read_table(predictions_csv) if r["zero_share"] == zero_share]
    plotting.predicted_vs_measured(
        rows, "law", "model", path,
        f"Predicted vs measured group loss (zero share: {zero_share}; all 5 groups)")
