"""Fitting mixing laws: Huber loss in log space, many L-BFGS starts at once, and diagnostics.

The fit follows the field's practice (Ye et al. `law.py`): a Huber loss on log(predicted) -
log(measured) with delta = 0.01, minimised from many starts, the best one kept. Here the
starts are drawn at random from a PRNG key and run together under `jax.vmap`; the whole
multi-start fit is one jitted program. Steps and losses are fitted with their geometric means
moved to where the random starts lie, and the parameters mapped back, so that no fit depends on
the unit of either (training steps or tokens). A start stops once its objective stops falling;
each fit says whether its best start converged and which bounded parameter ended on a bound.

The evaluation protocol fits on early steps of some mixtures and scores the rest:
- `extrap_step`: the fitted mixtures at later steps (extrapolation in s): MRE;
- `heldout_mix`: the held-out mixtures at the fitted steps: R^2, within-step R^2, Spearman;
- `heldout_both`: the held-out mixtures at later steps.
R^2 over all steps is inflated by the step trend (a law blind to the mixture scores well), so
`within_step_r2` and `within_step_spearman` score only the differences between mixtures at
the same step.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import scipy.stats

from phasemix.analysis.mixing_laws import LOSS_REF, STEP_REF, Law, Params

SPLITS = ("fit", "extrap_step", "heldout_mix", "heldout_both")
MIN_PAD = 64  # data are padded (weight 0) to a power of two >= this, to share compilations
# A start has converged once its objective falls by less than RTOL (relative) on PATIENCE
# iterations in a row: the float32 gradient norm at the optimum of the published curves is
# 1e-4 to 0.2, never below a gradient tolerance of 1e-6, while the objective stops moving.
# On 305M, every law and group: the best start then ends within 5e-6 of its objective after
# 600 iterations, after a median of 43.
RTOL = 1e-5
PATIENCE = 5
BOUND_TOL = 1e-3  # a bounded parameter this close to an end (fraction of its range) is at it
MIN_FIT_STEPS = 3  # distinct steps the protocol's fit needs: a step law has 3 parameters
MIN_FIT_MIXTURES = 2  # distinct mixtures it needs to see any mixture effect
PROPS_TOL = 1e-4  # each row's proportions must sum to 1 within this


class FitResult(NamedTuple):
    """A multi-start fit, its parameters in the units of the data given."""

    params: Params  # the best start's unconstrained parameters
    loss: jax.Array  # its objective
    start_losses: jax.Array  # objective at the end of every start, (num_starts,)
    iterations: int  # L-BFGS iterations of the best start
    converged: bool  # whether the best start met the stopping criterion before max_iter
    at_bound: tuple[str, ...]  # its bounded parameters that end at a bound, e.g. ("alpha",)
    step_scale: float  # steps were fitted as steps / step_scale (geometric mean at STEP_REF)
    loss_scale: float  # losses as loss / loss_scale (geometric mean at LOSS_REF)


class _Fitted(NamedTuple):
    params: Params  # in the fitted (scaled) units
    loss: jax.Array
    start_losses: jax.Array
    iterations: jax.Array
    converged: jax.Array


def huber_log_objective(law: Law, params: Params, steps_N: jax.Array, props_NxK: jax.Array,
                        log_loss_N: jax.Array, weights_N: jax.Array, delta: float) -> jax.Array:
    """Weighted mean Huber(log pred - log loss), divided by delta^2 so that values are O(1)."""
    residual_N = law.log_predict(params, steps_N, props_NxK) - log_loss_N
    huber_N = optax.losses.huber_loss(residual_N, delta=delta)
    return jnp.sum(weights_N * huber_N) / (jnp.sum(weights_N) * delta ** 2)


def _lbfgs(objective, params: Params, max_iter: jax.Array, tol: jax.Array, rtol: jax.Array
           ) -> tuple[Params, jax.Array, jax.Array]:
    """One start: (parameters, iterations, converged).

    It stops once converged (gradient norm < tol, or an objective that falls by less than rtol,
    relative, on PATIENCE iterations in a row), at max_iter, or on a non-finite objective.
    """
    # A backtracking line search rather than optax's default zoom search. Many of its starts
    # stall for good far from the optimum (a synthetic step-only fit: 34% of 32 starts reach
    # it, 100% with zoom), which the many starts absorb; zoom cost more than it saved on the
    # published curves (8 zoom starts x 100 iterations: 67 of 320 fits worse by > 1%, all Ye;
    # 16 x 100 ran > 2.5x longer than 32 backtracking starts x 200). Under vmap every start
    # waits for the longest search, and a stalled start backtracks to the limit on every
    # iteration: 5 halvings instead of 20 x 0.8 found the same optima on the published curves
    # for 2.2-2.9x less CPU per fit (measured on 305M, every law and group).
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=5, decrease_factor=0.5, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state, calm = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=objective)
        new_value = otu.tree_get(state, "value")  # the line search's, at the new parameters
        small = value - new_value <= rtol * jnp.abs(value)
        return optax.apply_updates(params, updates), state, jnp.where(small, calm + 1, 0)

    def converged(carry):
        _, state, calm = carry
        return ((otu.tree_get(state, "count") > 0)
                & ((otu.tree_norm(otu.tree_get(state, "grad")) < tol) | (calm >= PATIENCE)))

    def keep_going(carry):
        _, state, _ = carry
        count = otu.tree_get(state, "count")
        # A NaN objective or gradient ends a start that diverged.
        finite = (jnp.isfinite(otu.tree_get(state, "value"))
                  & jnp.isfinite(otu.tree_norm(otu.tree_get(state, "grad"))))
        return (count == 0) | ((count < max_iter) & finite & ~converged(carry))

    carry = jax.lax.while_loop(keep_going, step, (params, opt.init(params), jnp.int32(0)))
    return carry[0], otu.tree_get(carry[1], "count"), converged(carry)


@functools.partial(jax.jit, static_argnames=("num_starts",))
def _fit(law: Law, key: jax.Array, steps_N: jax.Array, props_NxK: jax.Array,
         log_loss_N: jax.Array, weights_N: jax.Array, *, num_starts: int, max_iter: jax.Array,
         delta: jax.Array, tol: jax.Array, rtol: jax.Array) -> _Fitted:
    # Only the number of starts shapes the program: iterations, delta and tolerances are
    # traced, so changing them costs no compilation.
    objective = functools.partial(huber_log_objective, law, steps_N=steps_N, props_NxK=props_NxK,
                                  log_loss_N=log_loss_N, weights_N=weights_N, delta=delta)
    starts = jax.vmap(law.init)(jax.random.split(key, num_starts))
    finals, iterations, converged = jax.vmap(
        lambda p: _lbfgs(objective, p, max_iter, tol, rtol))(starts)
    losses = jax.vmap(objective)(finals)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    best = jnp.argmin(losses)
    return _Fitted(jax.tree.map(lambda x: x[best], finals), losses[best], losses,
                   iterations[best], converged[best] & jnp.isfinite(losses[best]))


@jax.jit
def _rescale(law: Law, params: Params, step_scale: jax.Array, loss_scale: jax.Array) -> Params:
    return law.rescale(params, step_scale, loss_scale)


def at_bound(law: Law, params: Params, tol: float = BOUND_TOL) -> tuple[str, ...]:
    """The bounded parameters within `tol` of their range from an end: "alpha", "t[2]", ...

    There the fit would have gone further (BiMix with alpha at 0 ignores the mixture).
    """
    out = []
    for name, _ in law.bounds.items():
        u = np.atleast_1d(np.asarray(jax.nn.sigmoid(params[name]), np.float64))
        near = (u < tol) | (u > 1 - tol)
        scalar = np.ndim(params[name]) == 0
        out += [name if scalar else f"{name}[{j}]" for j in np.flatnonzero(near)]
    return tuple(out)


def fit_key(seed: int, *ids: int) -> jax.Array:
    """A fit's PRNG key: `seed` folded with ids (law, domain, ...), so every fit has its own."""
    key = jax.random.key(seed)
    for i in ids:
        key = jax.random.fold_in(key, i)
    return key


def padded_size(n: int) -> int:
    return max(MIN_PAD, 2 ** math.ceil(math.log2(max(n, 1))))


def _pad(n_to: int, *arrays: np.ndarray) -> list[np.ndarray]:
    """Pads along axis 0 by repeating the first row (finite, and given weight 0)."""
    out = []
    for a in arrays:
        a = np.asarray(a, np.float32)
        fill = np.repeat(a[:1], n_to - len(a), axis=0)
        out.append(np.concatenate([a, fill], axis=0))
    return out


def _bad_rows(name: str, bad_N: np.ndarray, values_N: np.ndarray, need: str) -> None:
    if np.any(bad_N):
        first = int(np.flatnonzero(bad_N)[0])
        value = np.asarray(values_N[first]).tolist()
        raise ValueError(f"{name}: {int(bad_N.sum())} of {len(bad_N)} values are not {need} "
                         f"(first: row {first}, {value}); drop those rows first")


def check_rows(law: Law, steps_N: Any, props_NxK: Any, loss_N: Any, weights_N: Any = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, proportions, losses, weights) as float64 arrays, each checked; ValueError names
    the argument and its first bad row."""
    loss_N = np.asarray(loss_N, np.float64).reshape(-1)
    n = len(loss_N)
    if n == 0:
        raise ValueError("no rows to fit")
    steps_N = np.asarray(steps_N, np.float64).reshape(-1)
    props_NxK = np.asarray(props_NxK, np.float64)
    weights_N = np.ones(n) if weights_N is None else np.asarray(weights_N, np.float64)
    shapes = {"steps_N": steps_N.shape, "props_NxK": props_NxK.shape,
              "weights_N": weights_N.shape}
    expected = {"steps_N": (n,), "props_NxK": (n, law.num_domains), "weights_N": (n,)}
    for name, shape in shapes.items():
        if shape != expected[name]:
            raise ValueError(f"{name} has shape {shape}; with {n} losses and a law of "
                             f"{law.num_domains} domains it must be {expected[name]}")
    with np.errstate(invalid="ignore"):
        _bad_rows("loss_N", ~(np.isfinite(loss_N) & (loss_N > 0)), loss_N, "finite and > 0")
        _bad_rows("steps_N", ~(np.isfinite(steps_N) & (steps_N > 0)), steps_N,
                  "finite and > 0")
        share_ok = np.all(np.isfinite(props_NxK) & (props_NxK >= 0), axis=1)
        _bad_rows("props_NxK", ~share_ok, props_NxK, "finite and >= 0")
        total_N = props_NxK.sum(axis=1)
        _bad_rows("props_NxK row sums", np.abs(total_N - 1) > PROPS_TOL, total_N,
                  f"1 within {PROPS_TOL} (proportions of a mixture)")
        _bad_rows("weights_N", ~(np.isfinite(weights_N) & (weights_N >= 0)), weights_N,
                  "finite and >= 0")
    if not weights_N.sum() > 0:
        raise ValueError("weights_N: every weight is 0, so there are no rows to fit")
    return steps_N, props_NxK, loss_N, weights_N


def _geometric_mean(x_N: np.ndarray, weights_N: np.ndarray) -> float:
    return float(np.exp(np.sum(weights_N * np.log(x_N)) / np.sum(weights_N)))


def fit(law: Law, key: jax.Array, steps_N: Any, props_NxK: Any, loss_N: Any,
        weights_N: Any = None, *, num_starts: int = 64, max_iter: int = 500,
        delta: float = 0.01, tol: float = 1e-6, rtol: float = RTOL,
        pad_to: int | None = None) -> FitResult:
    """Best of `num_starts` L-BFGS fits of `law` (Huber in log space); deterministic in `key`.

    The fit does not depend on the units of steps or losses: it fits steps / step_scale and
    loss / loss_scale (their weighted geometric means moved to STEP_REF and LOSS_REF, where the
    random starts lie) and maps the parameters back, so that `params` predict in the units
    given and multiplying every step (or loss) by a constant changes no prediction. A start
    stops once converged (`_lbfgs`) or at `max_iter`; the result says whether the best one
    converged and which bounded parameters ended on a bound. Bad input (no rows, non-finite or
    non-positive steps or losses, mismatched shapes) is a ValueError naming the argument.

    Rows are padded (weight 0) to `pad_to`, or to a power of two >= MIN_PAD: fits of one
    law family and one padded size share a compilation.
    """
    steps_N, props_NxK, loss_N, weights_N = check_rows(law, steps_N, props_NxK, loss_N,
                                                       weights_N)
    n = len(loss_N)
    for name, value, low in (("num_starts", num_starts, 1), ("max_iter", max_iter, 1)):
        if not (isinstance(value, (int, np.integer)) and value >= low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be finite and > 0, got {delta!r}")
    for name, value in (("tol", tol), ("rtol", rtol)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    size = padded_size(n) if pad_to is None else pad_to
    if size < n:
        raise ValueError(f"pad_to={pad_to} is below the {n} rows to fit")
    step_scale = _geometric_mean(steps_N, weights_N) / STEP_REF
    loss_scale = _geometric_mean(loss_N, weights_N) / LOSS_REF
    # The log of the data is taken once here, not in every objective evaluation of the loop.
    steps, props, log_loss = _pad(size, steps_N / step_scale, props_NxK,
                                  np.log(loss_N) - math.log(loss_scale))
    weights = np.concatenate([weights_N, np.zeros(size - n)]).astype(np.float32)
    raw = _fit(law, key, steps, props, log_loss, weights, num_starts=num_starts,
               max_iter=jnp.int32(max_iter), delta=jnp.float32(delta), tol=jnp.float32(tol),
               rtol=jnp.float32(rtol))
    params = _rescale(law, raw.params, jnp.float32(step_scale), jnp.float32(loss_scale))
    lost = [k for k, v in params.items() if not np.all(np.isfinite(np.asarray(v)))]
    if lost and np.isfinite(float(raw.loss)):
        raise ValueError(f"the {law.name} fit's {lost} leave their bounds "
                         f"{[law.bounds.get(k) for k in lost]} in the units given (steps "
                         f"{step_scale:.4g} x, losses {loss_scale:.4g} x those fitted); "
                         f"divide the steps or losses to bring their geometric means nearer "
                         f"{STEP_REF:g} and {LOSS_REF:g}")
    return FitResult(params, raw.loss, raw.start_losses, int(raw.iterations),
                     bool(raw.converged), at_bound(law, raw.params), step_scale, loss_scale)


@jax.jit
def _predict(law: Law, params: Params, steps_N: jax.Array, props_NxK: jax.Array) -> jax.Array:
    return law.predict(params, steps_N, props_NxK)


def predict(law: Law, params: Params, steps_N: Any, props_NxK: Any,
            pad_to: int | None = None) -> np.ndarray:
    """`law.predict` on host arrays (padded, so that sizes share a compilation)."""
    n = len(steps_N)
    if n == 0:
        return np.zeros(0, np.float32)
    steps, props = _pad(max(padded_size(n), pad_to or 0), steps_N, props_NxK)
    return np.asarray(_predict(law, params, steps, props))[:n]


def fit_columns(result: FitResult, prefix: str = "") -> dict[str, Any]:
    """A fit's table columns: `converged`, `iterations` and `at_bound` (names, space-separated;
    empty when none), each name led by `prefix`."""
    return {f"{prefix}converged": result.converged, f"{prefix}iterations": result.iterations,
            f"{prefix}at_bound": " ".join(result.at_bound)}


def warn_fits(rows: Sequence[dict[str, Any]], group_keys: Sequence[str],
              prefixes: Sequence[str] = ("",), file: Any = None) -> list[str]:
    """Prints (to stderr) and returns one warning line per group of table rows whose fits did
    not converge or ended with a parameter on a bound.

    Rows carry `law` and the `fit_columns` of each prefix; groups are the distinct values of
    `group_keys` (e.g. model and eval domain), in the order they first appear.
    """
    groups: dict[tuple, list[str]] = {}
    for row in rows:
        problems = groups.setdefault(tuple(row[k] for k in group_keys), [])
        for prefix in prefixes:
            what = f"{row['law']}{' (' + prefix.rstrip('_') + ')' if prefix else ''}"
            if not row[f"{prefix}converged"]:
                problems.append(f"{what} did not converge in {row[f'{prefix}iterations']} "
                                "iterations")
            if row[f"{prefix}at_bound"]:
                problems.append(f"{what} has {row[f'{prefix}at_bound']} at a bound")
    lines = [f"warning: law fits of {'/'.join(map(str, group))}: {'; '.join(problems)}"
             for group, problems in groups.items() if problems]
    for line in lines:
        print(line, file=file or sys.stderr)
    return lines


# --- Diagnostics ------------------------------------------------------------------------------

def r2(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    if len(y) < 2:
        return math.nan
    total = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - pred) ** 2) / total) if total > 0 else math.nan


def within_step_r2(y: np.ndarray, pred: np.ndarray, steps: np.ndarray) -> float:
    """R^2 against each step's own mean, pooled over steps with >= 2 rows.

    1 - sum_s sum (y - pred)^2 / sum_s sum (y - mean_s y)^2: only the differences between
    mixtures at the same step count. A mixture-blind law scores <= 0.
    """
    y, pred, steps = (np.asarray(a, np.float64) for a in (y, pred, steps))
    residual = total = 0.0
    for s in np.unique(steps):
        at = steps == s
        if at.sum() < 2:
            continue
        residual += np.sum((y[at] - pred[at]) ** 2)
        total += np.sum((y[at] - y[at].mean()) ** 2)
    return float(1.0 - residual / total) if total > 0 else math.nan


def spearman(y: np.ndarray, pred: np.ndarray) -> float:
    """Rank correlation; 0 where the predictions are constant (they rank nothing)."""
    y, pred = np.asarray(y), np.asarray(pred)
    if len(y) < 2 or np.ptp(y) == 0:
        return math.nan
    if np.ptp(pred) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(y, pred).statistic)


def within_step_spearman(y: np.ndarray, pred: np.ndarray, steps: np.ndarray) -> float:
    """Mean over steps (with >= 3 rows) of the rank correlation between mixtures."""
    values = [spearman(y[steps == s], pred[steps == s]) for s in np.unique(steps)
              if np.sum(steps == s) >= 3]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def mre(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean relative error |pred - y| / y."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    return float(np.mean(np.abs(pred - y) / y)) if len(y) else math.nan


def metrics(y: np.ndarray, pred: np.ndarray, steps: np.ndarray) -> dict[str, float]:
    """Every diagnostic of one set of rows."""
    y, pred, steps = np.asarray(y), np.asarray(pred), np.asarray(steps)
    return {"n": int(len(y)), "mre": mre(y, pred), "r2": r2(y, pred),
            "within_step_r2": within_step_r2(y, pred, steps),
            "spearman": spearman(y, pred),
            "within_step_spearman": within_step_spearman(y, pred, steps)}


# --- Evaluation protocol ----------------------------------------------------------------------

def choose_heldout_mixtures(mixture_ids: Any, fraction: float,
                            seed: int | Sequence[int]) -> np.ndarray:
    """round(fraction * M) of the M distinct mixtures (>= 1, leaving >= 2 to fit), by seed."""
    ids = np.unique(np.asarray(mixture_ids))
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    if len(ids) < 3:
        raise ValueError(f"{len(ids)} mixtures: need >= 3 to hold some out")
    count = min(max(1, round(fraction * len(ids))), len(ids) - 2)
    return np.sort(np.random.default_rng(seed).choice(ids, size=count, replace=False))


def protocol_splits(steps_N: Any, mixture_N: Any, step_cut: float,
                    heldout_ids: Any) -> np.ndarray:
    """The split (a name of SPLITS) of every row."""
    later = np.asarray(steps_N) > step_cut
    held = np.isin(np.asarray(mixture_N), np.asarray(heldout_ids))
    return np.select([~held & ~later, ~held & later, held & ~later],
                     ["fit", "extrap_step", "heldout_mix"], "heldout_both")


class ProtocolResult(NamedTuple):
    fit: FitResult
    pred_N: np.ndarray  # prediction of every row
    split_N: np.ndarray  # its split
    metrics: dict[str, dict[str, float]]  # split -> diagnostics


def evaluate_protocol(law: Law, key: jax.Array, steps_N: Any, props_NxK: Any, loss_N: Any,
                      mixture_N: Any, *, step_cut: float, heldout_ids: Any,
                      **fit_kwargs: Any) -> ProtocolResult:
    """Fits on the `fit` split, predicts every row, and scores each split.

    Every row is checked as `fit` checks its own (a ValueError names the argument), and the
    split must hold a fit: >= MIN_FIT_STEPS distinct steps <= step_cut and >= MIN_FIT_MIXTURES
    mixtures not held out, and some row after step_cut to extrapolate to.
    """
    steps_N, props_NxK, loss_N, _ = check_rows(law, steps_N, props_NxK, loss_N)
    mixture_N = np.asarray(mixture_N).reshape(-1)
    if len(mixture_N) != len(loss_N):
        raise ValueError(f"mixture_N has {len(mixture_N)} rows, the losses {len(loss_N)}")
    if not math.isfinite(step_cut):
        raise ValueError(f"step_cut must be finite, got {step_cut!r}")
    split_N = protocol_splits(steps_N, mixture_N, step_cut, heldout_ids)
    on = split_N == "fit"
    fit_steps, fit_mixtures = np.unique(steps_N[on]), np.unique(mixture_N[on])
    where = (f"step_cut={step_cut:g} (steps {steps_N.min():g} to {steps_N.max():g}) with "
             f"mixtures {np.atleast_1d(heldout_ids).tolist()} held out")
    if not on.any():
        raise ValueError(f"no rows to fit: no row of a mixture not held out lies at or below "
                         f"{where}")
    if len(fit_steps) < MIN_FIT_STEPS:
        raise ValueError(f"{len(fit_steps)} distinct steps to fit ({fit_steps.tolist()}) at "
                         f"or below {where}; the protocol needs >= {MIN_FIT_STEPS}")
    if len(fit_mixtures) < MIN_FIT_MIXTURES:
        raise ValueError(f"{len(fit_mixtures)} mixture(s) to fit below {where}; the protocol "
                         f"needs >= {MIN_FIT_MIXTURES}")
    if not np.any(steps_N > step_cut):
        raise ValueError(f"no row lies above {where}: nothing to extrapolate to")
    result = fit(law, key, steps_N[on], props_NxK[on], loss_N[on], **fit_kwargs)
    pred_N = predict(law, result.params, steps_N, props_NxK, fit_kwargs.get("pad_to"))
    scores = {split: metrics(loss_N[split_N == split], pred_N[split_N == split],
                             steps_N[split_N == split]) for split in SPLITS}
    return ProtocolResult(result, pred_N, split_N, scores)
