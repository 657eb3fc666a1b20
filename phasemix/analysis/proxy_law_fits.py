"""Mixing laws fitted to the proxy runs of the BiMix study (`experiments/bimix.py`), and the
mixture the chosen law predicts best.

Every evaluation after step 0 of every proxy is a row; each law and domain is fitted by the
protocol (steps <= step_cut of the proxies not held out, scored on the rest) and once more
on every row, which `optimize` minimises over the simplex.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import ml_collections
import numpy as np

from phasemix.base import results_table, run_io, validation


def law_param_count(name: str, num_domains: int) -> int:
    """How many numbers a fit of law `name` moves."""
    import jax

    from phasemix.analysis import mixing_laws

    law = mixing_laws.make_law(name, num_domains)
    shapes = jax.eval_shape(law.init, jax.random.key(0))
    return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))


def heldout_count(num_mixtures: int, fraction: float) -> int:
    """How many of `num_mixtures` proxies the fits hold out at `fraction`."""
    from phasemix.analysis import law_fit

    return len(law_fit.choose_heldout_mixtures(np.arange(num_mixtures), fraction, seed=0))


def eval_steps(config: ml_collections.ConfigDict) -> list[int]:
    """The steps after 0 at which every run is evaluated: the rows of the law fits."""
    base = config.base
    return sorted(set(range(base.eval_every, base.num_steps + 1, base.eval_every))
                  | {base.num_steps})



def proxy_curves(workdir: pathlib.Path, grid: list[dict[str, Any]],
                 names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{mixture_N, step_N, props_NxK, loss_NxK}: every evaluation after step 0 of every proxy,
    read from the runs' metrics.jsonl."""
    out: dict[str, list] = {"mixture_N": [], "step_N": [], "props_NxK": [], "loss_NxK": []}
    for i, override in enumerate(grid):
        run_dir = workdir / results_table.RUNS_DIR / results_table.run_name(override)
        for row in run_io.read_metrics(run_dir):
            if row["step"] > 0:
                out["mixture_N"].append(i)
                out["step_N"].append(row["step"])
                out["props_NxK"].append(override["mixture"])
                out["loss_NxK"].append([row[f"valid_{n}_loss"] for n in names])
    return {k: np.asarray(v, np.int64 if k == "mixture_N" else np.float64)
            for k, v in out.items()}


def _coefficients(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        v = np.asarray(v)
        if v.ndim:  # Ye's t and the linear law's w: one coefficient per training domain
            out.update({f"coef_{k}_{n}": float(x) for n, x in zip(names, v)})
        else:
            out[f"coef_{k}"] = float(v)
    return out


def fit_laws(config: ml_collections.ConfigDict, curves: dict[str, np.ndarray],
             names: tuple[str, ...]) -> tuple[list[dict], list[dict], dict]:
    """(fits rows, prediction rows, law -> [(law, params of the fit on every row)] per domain).

    Each law and domain is fitted twice: by the protocol (steps <= step_cut of the proxies not
    held out; scored on the rest), and on every proxy row, for the mixture optimisation.
    """
    from phasemix.analysis import law_fit, mixing_laws

    heldout = law_fit.choose_heldout_mixtures(curves["mixture_N"], config.heldout_fraction,
                                              seed=[config.seed, 1])
    pad_to = law_fit.padded_size(len(curves["step_N"]))  # one compilation per law family
    rows, predictions, fitted = [], [], {}
    for law_name in config.laws:
        for d, domain in enumerate(names):
            law = mixing_laws.make_law(law_name, len(names), d, config.epsilon)
            key = law_fit.fit_key(config.seed, mixing_laws.LAW_NAMES.index(law_name), d)
            loss_N = curves["loss_NxK"][:, d]
            result = law_fit.evaluate_protocol(
                law, key, curves["step_N"], curves["props_NxK"], loss_N, curves["mixture_N"],
                step_cut=config.step_cut, heldout_ids=heldout, pad_to=pad_to,
                **config.fit.to_dict())
            full_key = law_fit.fit_key(config.seed, 99, mixing_laws.LAW_NAMES.index(law_name), d)
            full = law_fit.fit(law, full_key, curves["step_N"], curves["props_NxK"], loss_N,
                               pad_to=pad_to, **config.fit.to_dict())
            fitted.setdefault(law_name, []).append((law, full.params))
            row = {"law": law_name, "domain": domain,
                   "heldout_proxies": " ".join(map(str, heldout)),
                   "fit_objective": float(result.fit.loss),
                   "all_rows_objective": float(full.loss), **law_fit.fit_columns(result.fit),
                   **law_fit.fit_columns(full, "all_rows_")}
            for split, scores in result.metrics.items():
                row.update({f"{split}_{k}": v for k, v in scores.items()})
            row.update(_coefficients(law.constrain(full.params), names))
            rows.append(row)
            predictions += [{"law": law_name, "domain": domain, "proxy": int(m), "step": int(s),
                             "split": str(sp), "loss": float(y), "pred": float(p)}
                            for m, s, sp, y, p in zip(curves["mixture_N"], curves["step_N"],
                                                      result.split_N, loss_N, result.pred_N)]
    law_fit.warn_fits(rows, ("domain",), prefixes=("", "all_rows_"))
    return rows, predictions, fitted


def predicted_average(fitted: list[tuple], step: float, mix_MxK: Any) -> np.ndarray:
    """The laws' average over domains of the predicted loss of each mixture at `step`."""
    from phasemix.analysis import law_fit

    mix_MxK = np.asarray(mix_MxK, np.float64)
    steps = np.full(len(mix_MxK), float(step))
    return np.mean([law_fit.predict(law, p, steps, mix_MxK) for law, p in fitted], axis=0)


def optimize(config: ml_collections.ConfigDict, fitted: dict, curves: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """The mixture `optimize_law` predicts best (average over domains) at the final step."""
    from phasemix.analysis import mixture_opt

    laws_params = fitted[config.optimize_law]
    num_domains = len(laws_params)
    step = config.base.num_steps
    lo = np.full(num_domains, config.min_weight)
    hi = np.ones(num_domains)
    if config.cap_at_trained_max:
        hi = np.maximum(np.minimum(hi, curves["props_NxK"].max(axis=0)), lo)
    try:
        mixture_opt.check_bounds(lo, hi)
    except ValueError as e:
        raise validation.ConfigError(f"--config.min_weight={config.min_weight}: {e}") from e
    facts = {"min_share": lo.tolist(), "max_share": hi.tolist(), "step": step}
    r, method = mixture_opt.optimal_mixture(*zip(*laws_params), step,
                                            np.full(num_domains, 1 / num_domains), lo, hi)
    return r, {"method": method, **facts}



def plot_predictions(predictions_csv: pathlib.Path, path: pathlib.Path) -> None:
    """Predicted against measured validation loss: a row per law, a column per domain."""
    from phasemix.base import plotting

    plotting.predicted_vs_measured(results_table.read_table(predictions_csv), "law", "domain",
                                   path, "Predicted vs measured validation loss of the proxies")
