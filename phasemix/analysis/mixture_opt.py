"""Choosing a mixture from fitted laws: minimise predicted loss over a capped simplex.

The feasible set is {r : lo_i <= r_i <= hi_i, sum_i r_i = 1}: a minimum weight per domain
and a cap, e.g. from a repetition limit (a domain of D_i tokens seen at most E times in a
run of T tokens has r_i <= E * D_i / T).

For BiMix the objective sum_i K_i * r_i^-alpha_i (K_i = w_i * A_i * (B_i / s^beta_i + C_i))
is separable. Lagrange multipliers give r_i = (alpha_i * K_i / lambda)^(1 / (1 + alpha_i)),
with lambda set by sum_i r_i = 1 (`bimix_lagrange`, a 1-D root). The paper's closed form
r_i ∝ (alpha_i * K_i)^(1 / (1 + alpha_i)) (`bimix_closed_form`) is that solution only when
every alpha_i is the same; with unequal exponents it is an approximation. Where a bound is
active neither applies, and a projected-gradient solver on the capped simplex
(`minimize_on_simplex`) handles any law.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from phasemix.analysis.mixing_laws import Law, Params


def repetition_caps(domain_tokens_K: Any, total_tokens: float, max_epochs: float) -> np.ndarray:
    """hi_i = min(1, max_epochs * D_i / T): no domain repeated more than max_epochs times."""
    tokens = np.asarray(domain_tokens_K, np.float64)
    if total_tokens <= 0 or max_epochs <= 0 or np.any(tokens < 0):
        raise ValueError("total_tokens and max_epochs must be > 0 and domain tokens >= 0")
    return np.minimum(1.0, max_epochs * tokens / total_tokens)


def check_bounds(lo_K: Any, hi_K: Any) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) as arrays, or a ValueError saying why no mixture satisfies them."""
    lo, hi = np.asarray(lo_K, np.float64), np.asarray(hi_K, np.float64)
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"lo {lo.shape} and hi {hi.shape} must be vectors of one length")
    if np.any(lo < 0) or np.any(hi > 1) or np.any(lo > hi):
        raise ValueError(f"need 0 <= lo <= hi <= 1, got lo={lo.tolist()} hi={hi.tolist()}")
    if lo.sum() > 1 + 1e-9 or hi.sum() < 1 - 1e-9:
        raise ValueError(f"no mixture fits: sum(lo)={lo.sum():.4g} must be <= 1 <= "
                         f"sum(hi)={hi.sum():.4g}")
    return lo, hi


def _bounds(num: int, lo_K: Any, hi_K: Any) -> tuple[np.ndarray, np.ndarray]:
    lo = np.zeros(num) if lo_K is None else np.broadcast_to(np.asarray(lo_K, float), (num,))
    hi = np.ones(num) if hi_K is None else np.broadcast_to(np.asarray(hi_K, float), (num,))
    return check_bounds(lo, hi)


def project_capped_simplex(v_K: jax.Array, lo_K: jax.Array, hi_K: jax.Array,
                           iters: int = 60) -> jax.Array:
    """Euclidean projection onto {lo <= r <= hi, sum r = 1}: r = clip(v - tau), tau by bisection."""
    total = lambda tau: jnp.sum(jnp.clip(v_K - tau, lo_K, hi_K))  # noqa: E731 (decreasing)

    def halve(_, bracket):
        a, b = bracket
        mid = 0.5 * (a + b)
        return jnp.where(total(mid) > 1.0, mid, a), jnp.where(total(mid) > 1.0, b, mid)

    a, b = jax.lax.fori_loop(0, iters, halve, (jnp.min(v_K - hi_K), jnp.max(v_K - lo_K)))
    return jnp.clip(v_K - 0.5 * (a + b), lo_K, hi_K)


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _projected_gradient(loss_fn: jax.tree_util.Partial, r0_K: jax.Array,
                        lo_K: jax.Array, hi_K: jax.Array, num_steps: int) -> jax.Array:
    value_and_grad = jax.value_and_grad(loss_fn)

    def step(_, carry):
        r, eta = carry
        f, g = value_and_grad(r)

        def trial(eta):
            new = project_capped_simplex(r - eta * g, lo_K, hi_K)
            # Sufficient decrease for a projected step (Beck & Teboulle's backtracking).
            bound = f + g @ (new - r) + jnp.sum((new - r) ** 2) / (2 * eta)
            return new, ~(loss_fn(new) <= bound)

        def shrink(state):
            eta, _, count = state
            return eta / 2, trial(eta / 2)[1], count + 1

        eta, _, _ = jax.lax.while_loop(lambda s: s[1] & (s[2] < 60), shrink,
                                       (eta, trial(eta)[1], 0))
        new, rejected = trial(eta)
        return jnp.where(rejected, r, new), eta * 2.0  # let the step grow again

    r, _ = jax.lax.fori_loop(0, num_steps, step, (r0_K, jnp.asarray(1e-2, r0_K.dtype)))
    return r


def minimize_on_simplex(loss_fn: Callable[[jax.Array], jax.Array], num_domains: int,
                        lo_K: Any = None, hi_K: Any = None, r0_K: Any = None,
                        num_steps: int = 2000) -> np.ndarray:
    """argmin of `loss_fn(r_K)` (a JAX function) over the capped simplex, by projected gradient.

    A `jax.tree_util.Partial` carries its arrays as traced data, so one compilation serves
    every set of fitted coefficients; a plain function compiles once per function object.
    """
    if not isinstance(loss_fn, jax.tree_util.Partial):
        loss_fn = jax.tree_util.Partial(loss_fn)
    lo, hi = _bounds(num_domains, lo_K, hi_K)
    lo32, hi32 = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    start = np.full(num_domains, 1.0 / num_domains) if r0_K is None else np.asarray(r0_K)
    r0 = project_capped_simplex(jnp.asarray(start, jnp.float32), lo32, hi32)
    return np.asarray(_projected_gradient(loss_fn, r0, lo32, hi32, num_steps), np.float64)


# --- BiMix ------------------------------------------------------------------------------------

def bimix_closed_form(alpha_K: Any, k_K: Any) -> np.ndarray:
    """The paper's r_i ∝ (alpha_i * K_i)^(1 / (1 + alpha_i)); exact when all alpha_i are equal."""
    alpha, k = np.asarray(alpha_K, np.float64), np.asarray(k_K, np.float64)
    log_r = np.log(alpha * k) / (1 + alpha)
    r = np.exp(log_r - log_r.max())
    return r / r.sum()


def bimix_lagrange(alpha_K: Any, k_K: Any, iters: int = 200) -> np.ndarray:
    """The exact unbounded minimiser of sum_i K_i r_i^-alpha_i on the simplex (any alphas)."""
    alpha, k = np.asarray(alpha_K, np.float64), np.asarray(k_K, np.float64)
    if np.any(alpha <= 0) or np.any(k <= 0):
        raise ValueError("BiMix optimum needs alpha_i > 0 and K_i > 0 for every domain")
    log_ak = np.log(alpha * k)
    shares = lambda log_lam: np.exp((log_ak - log_lam) / (1 + alpha))  # noqa: E731
    # At log_lam = min(log_ak) every share is >= 1; at the upper end every share <= 1/K.
    lo, hi = log_ak.min(), log_ak.max() + (1 + alpha.max()) * np.log(len(alpha))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if shares(mid).sum() > 1 else (lo, mid)
    r = shares(0.5 * (lo + hi))
    return r / r.sum()


def bimix_coefficients(coefficients: Sequence[dict[str, Any]], step: float,
                       weights_K: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(alpha_K, K_K) at `step` from each domain's constrained BiMix coefficients."""
    alpha = np.array([float(c["alpha"]) for c in coefficients])
    k = np.array([float(c["A"]) * (float(c["B"]) * step ** -float(c["beta"]) + float(c["C"]))
                  for c in coefficients])
    weights = np.ones(len(k)) if weights_K is None else np.asarray(weights_K, np.float64)
    return alpha, weights * k


def _bimix_objective(alpha_K: jax.Array, k_K: jax.Array, r_K: jax.Array) -> jax.Array:
    return jnp.sum(k_K * jnp.exp(-alpha_K * jnp.log(r_K)))


def bimix_optimal_mixture(alpha_K: Any, k_K: Any, lo_K: Any = None, hi_K: Any = None,
                          num_steps: int = 2000) -> tuple[np.ndarray, str]:
    """(r_K, method): the Lagrange optimum if it respects the bounds, else the general solver."""
    alpha, k = np.asarray(alpha_K, np.float64), np.asarray(k_K, np.float64)
    lo, hi = _bounds(len(alpha), lo_K, hi_K)
    r = bimix_lagrange(alpha, k)
    if np.all(r >= lo) and np.all(r <= hi):
        return r, "closed_form"
    if np.any(lo <= 0):
        raise ValueError("a bound is active and some minimum weight is 0: BiMix is infinite at "
                         "r_i = 0; give every domain a minimum weight > 0")
    loss_fn = jax.tree_util.Partial(_bimix_objective, jnp.asarray(alpha, jnp.float32),
                                    jnp.asarray(k, jnp.float32))
    return minimize_on_simplex(loss_fn, len(alpha), lo, hi, r0_K=r, num_steps=num_steps), \
        "projected_gradient"


# --- Any fitted laws --------------------------------------------------------------------------

def _predicted_loss(laws: tuple[Law, ...], params: tuple[Params, ...], step: jax.Array,
                    weights_K: jax.Array, r_K: jax.Array) -> jax.Array:
    steps_1, props_1xK = jnp.reshape(step, (1,)), r_K[None, :]
    losses = jnp.stack([law.predict(p, steps_1, props_1xK)[0] for law, p in zip(laws, params)])
    return jnp.sum(weights_K * losses)


def predicted_loss_fn(laws: Sequence[Law], params: Sequence[Params], step: float,
                      weights_K: Any = None) -> Callable[[jax.Array], jax.Array]:
    """r_K -> sum_i w_i * L_i(step, r): the objective of `minimize_on_simplex` for any laws."""
    weights = jnp.ones(len(laws)) if weights_K is None else jnp.asarray(weights_K, jnp.float32)
    return jax.tree_util.Partial(_predicted_loss, tuple(laws), tuple(params),
                                 jnp.asarray(step, jnp.float32), weights)


def optimal_mixture(laws: Sequence[Law], params: Sequence[Params], step: float,
                    weights_K: Any = None, lo_K: Any = None, hi_K: Any = None
                    ) -> tuple[np.ndarray, str]:
    """(r_K, method): the mixture the fitted per-domain laws predict best at `step`.

    BiMix laws take the exact Lagrange optimum when it respects the bounds; any other law,
    and BiMix fits the Lagrange form cannot take (an exponent fitted to 0, or a bound active
    with a zero minimum weight), go to the projected-gradient solver on the laws themselves.
    """
    if all(law.name == "bimix" for law in laws):
        coefficients = [law.constrain(p) for law, p in zip(laws, params)]
        alpha, k = bimix_coefficients(coefficients, step, weights_K)
        try:
            return bimix_optimal_mixture(alpha, k, lo_K, hi_K)
        except ValueError:
            pass
    fn = predicted_loss_fn(laws, params, step, weights_K)
    return minimize_on_simplex(fn, len(laws), lo_K, hi_K), "projected_gradient"
