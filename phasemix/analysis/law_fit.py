"""Fitting mixing laws: Huber loss in log space, many L-BFGS starts at once, and diagnostics.

The fit follows the field's practice (Ye et al. `law.py`): a Huber loss on log(predicted) -
log(measured) with delta = 0.01, minimised from many starts, the best one kept. Here the
starts are drawn at random from a PRNG key and run together under `jax.vmap`; the whole
multi-start fit is one jitted program.

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
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import scipy.stats

from phasemix.analysis.mixing_laws import Law, Params

SPLITS = ("fit", "extrap_step", "heldout_mix", "heldout_both")
MIN_PAD = 64  # data are padded (weight 0) to a power of two >= this, to share compilations


class FitResult(NamedTuple):
    params: Params  # the best start's unconstrained parameters
    loss: jax.Array  # its objective
    start_losses: jax.Array  # objective at the end of every start, (num_starts,)
    iterations: jax.Array  # L-BFGS iterations of the best start


def huber_log_objective(law: Law, params: Params, steps_N: jax.Array, props_NxK: jax.Array,
                        log_loss_N: jax.Array, weights_N: jax.Array, delta: float) -> jax.Array:
    """Weighted mean Huber(log pred - log loss), divided by delta^2 so that values are O(1)."""
    residual_N = law.log_predict(params, steps_N, props_NxK) - log_loss_N
    huber_N = optax.losses.huber_loss(residual_N, delta=delta)
    return jnp.sum(weights_N * huber_N) / (jnp.sum(weights_N) * delta ** 2)


def _lbfgs(objective, params: Params, max_iter: int, tol: float) -> tuple[Params, jax.Array]:
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
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=objective)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        # A NaN gradient norm compares False, which ends a start that diverged.
        return (count == 0) | ((count < max_iter) &
                               (otu.tree_norm(otu.tree_get(state, "grad")) >= tol))

    params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
    return params, otu.tree_get(state, "count")


@functools.partial(jax.jit, static_argnames=("num_starts",))
def _fit(law: Law, key: jax.Array, steps_N: jax.Array, props_NxK: jax.Array,
         log_loss_N: jax.Array, weights_N: jax.Array, *, num_starts: int, max_iter: jax.Array,
         delta: jax.Array, tol: jax.Array) -> FitResult:
    # Only the number of starts shapes the program: iterations, delta and tol are traced, so
    # changing them costs no compilation.
    objective = functools.partial(huber_log_objective, law, steps_N=steps_N, props_NxK=props_NxK,
                                  log_loss_N=log_loss_N, weights_N=weights_N, delta=delta)
    starts = jax.vmap(law.init)(jax.random.split(key, num_starts))
    finals, iterations = jax.vmap(lambda p: _lbfgs(objective, p, max_iter, tol))(starts)
    losses = jax.vmap(objective)(finals)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    best = jnp.argmin(losses)
    return FitResult(jax.tree.map(lambda x: x[best], finals), losses[best], losses,
                     iterations[best])


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


def fit(law: Law, key: jax.Array, steps_N: Any, props_NxK: Any, loss_N: Any,
        weights_N: Any = None, *, num_starts: int = 64, max_iter: int = 500,
        delta: float = 0.01, tol: float = 1e-6, pad_to: int | None = None) -> FitResult:
    """Best of `num_starts` L-BFGS fits of `law` (Huber in log space); deterministic in `key`.

    Rows are padded (weight 0) to `pad_to`, or to a power of two >= MIN_PAD: fits of one
    law family and one padded size share a compilation.
    """
    n = len(loss_N)
    if n == 0:
        raise ValueError("no rows to fit")
    weights_N = np.ones(n, np.float32) if weights_N is None else np.asarray(weights_N, np.float32)
    size = padded_size(n) if pad_to is None else pad_to
    if size < n:
        raise ValueError(f"pad_to={pad_to} is below the {n} rows to fit")
    # The log of the data is taken once here, not in every objective evaluation of the loop.
    steps, props, log_loss = _pad(size, steps_N, props_NxK, np.log(np.asarray(loss_N, float)))
    weights = np.concatenate([weights_N, np.zeros(size - n, np.float32)])
    return _fit(law, key, steps, props, log_loss, weights, num_starts=num_starts,
                max_iter=jnp.int32(max_iter), delta=jnp.float32(delta), tol=jnp.float32(tol))


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
    """Fits on the `fit` split, predicts every row, and scores each split."""
    steps_N, props_NxK, loss_N = (np.asarray(a) for a in (steps_N, props_NxK, loss_N))
    split_N = protocol_splits(steps_N, mixture_N, step_cut, heldout_ids)
    on = split_N == "fit"
    result = fit(law, key, steps_N[on], props_NxK[on], loss_N[on], **fit_kwargs)
    pred_N = predict(law, result.params, steps_N, props_NxK, fit_kwargs.get("pad_to"))
    scores = {split: metrics(loss_N[split_N == split], pred_N[split_N == split],
                             steps_N[split_N == split]) for split in SPLITS}
    return ProtocolResult(result, pred_N, split_N, scores)
