"""Data-mixing laws as pure JAX functions: loss of one eval domain from training step and mixture.

Every law is `log_predict(params, steps_N, props_NxK) -> log loss_N` for one eval domain (the
space it is fitted in; `predict` is its exp), where
`params` is a dict of unconstrained arrays (what an optimiser moves). Positivity and bounds
come from the parametrisation: scales are exp(raw), exponents lo + (hi - lo) * sigmoid(raw).
`constrain` turns raw parameters into the paper's named coefficients, `unconstrain` does the
inverse (used to generate synthetic data and to check recovered values).

`rescale` maps parameters fitted on s / sigma and L / lambda back to s and L (exactly: every
law is invariant to the unit of s and of the loss), which lets the fitter work in a unit where
its random starts fit; `bounds` names the bounded parameters, so that a fit can report one
that ends on its bound.

Laws (s = training step, r = mixture proportions summing to 1, s0 = STEP_REF):
- bimix (Ge et al. 2024): L_i = (A_i / r_i^alpha_i) * (B_i / s^beta_i + C_i). A_i is not
  identifiable apart from B_i and C_i (only A_i*B_i and A_i*C_i enter), so A_i = 1.
- ye (Ye et al. 2024) with a step term: L_i = (c_i + k_i * exp(sum_j t_ij r_j)) *
  (1 + B_i / s^beta_i). The step term multiplies, as in BiMix, so that the two laws differ
  only in their mixture term; as s grows it tends to Ye's law. On the simplex k_i is not
  identifiable apart from t_i (k*exp(t.r) = exp((t + log k).r) when sum r = 1), so k_i = 1.
- linear (RegMix-style regression): log L_i = sum_j w_ij r_j - b_i * log(s / s0). Linear in
  the proportions in the space every law is fitted in (log loss); the intercept is
  sum_j w_ij r_j itself, since the proportions sum to 1.
- step_only (control): L_i = B_i / s^beta_i + C_i, blind to the mixture. Its R^2 over all
  steps shows how much of a law's R^2 the step trend alone earns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, jax.Array]
STEP_REF = 1e4  # B is fitted as its value at s0 = 1e4 steps: log B and beta then decouple
# The fitter divides losses by their geometric mean / LOSS_REF: the middle, in log, of the
# LM losses of 1 to 10 that the random starts cover.
LOSS_REF = 3.0
ZERO_SHARE_POLICIES = ("drop", "epsilon")

# Bounds of exponents and of the unbounded-sign coefficients (lo, hi).
ALPHA = (0.0, 2.0)
BETA = (0.0, 3.0)
T_BOUND = (-30.0, 30.0)
W_BOUND = (-20.0, 20.0)
SLOPE = (-2.0, 2.0)


def _bounded(raw: jax.Array, lo_hi: tuple[float, float]) -> jax.Array:
    lo, hi = lo_hi
    return lo + (hi - lo) * jax.nn.sigmoid(raw)


def _unbounded(value: Any, lo_hi: tuple[float, float]) -> jax.Array:
    lo, hi = lo_hi
    u = (jnp.asarray(value, jnp.float32) - lo) / (hi - lo)
    return jnp.log(u) - jnp.log1p(-u)


def _shift_bounded(raw: jax.Array, shift: jax.Array, lo_hi: tuple[float, float]) -> jax.Array:
    """The raw value of lo + (hi - lo) * sigmoid(raw) + shift; NaN where that leaves (lo, hi).

    With u = sigmoid(raw) and 1 - u = sigmoid(-raw) each computed apart, a raw value far out
    on either side survives a zero shift (1 - u rounds to 0 in float32 beyond raw ~ 17).
    """
    lo, hi = lo_hi
    d = shift / (hi - lo)
    moved = jnp.log(jax.nn.sigmoid(raw) + d) - jnp.log(jax.nn.sigmoid(-raw) - d)
    return jnp.where(d == 0, raw, moved)  # no shift: the raw value itself, bit for bit


def _log_steps(steps_N: jax.Array) -> jax.Array:
    return jnp.log(jnp.asarray(steps_N, jnp.float32) / STEP_REF)


def _log_step_factor(params: Params, steps_N: jax.Array) -> jax.Array:
    """log(B / s^beta) in the s0 units: log_b - beta * log(s / s0)."""
    return params["log_b"] - _bounded(params["beta"], BETA) * _log_steps(steps_N)


# --- BiMix ------------------------------------------------------------------------------------

def bimix_log_predict(params: Params, steps_N: jax.Array, props_NxK: jax.Array, *,
                      domain: jax.Array, eps: jax.Array) -> jax.Array:
    """log of (1 / r^alpha) * (B / s^beta + C); r = max(r_domain, eps) so that r = 0 stays
    finite."""
    share = jnp.maximum(jnp.take(props_NxK, domain, axis=1), eps)
    alpha = _bounded(params["alpha"], ALPHA)
    return -alpha * jnp.log(share) + jnp.logaddexp(_log_step_factor(params, steps_N),
                                                   params["log_c"])


def bimix_init(key: jax.Array, num_domains: int) -> Params:
    ka, kb, kc, kd = jax.random.split(key, 4)
    return bimix_unconstrain({
        "alpha": jax.random.uniform(ka, (), minval=0.005, maxval=0.5),
        "beta": jax.random.uniform(kb, (), minval=0.05, maxval=1.5),
        "B_ref": jnp.exp(jax.random.uniform(kc, (), minval=-4.0, maxval=1.0)),
        "C": jax.random.uniform(kd, (), minval=0.5, maxval=5.0)}, num_domains)


def bimix_constrain(params: Params) -> dict[str, jax.Array]:
    beta = _bounded(params["beta"], BETA)
    b_ref = jnp.exp(params["log_b"])
    return {"A": jnp.ones(()), "alpha": _bounded(params["alpha"], ALPHA), "beta": beta,
            "B_ref": b_ref, "B": b_ref * STEP_REF ** beta, "C": jnp.exp(params["log_c"])}


def bimix_unconstrain(values: dict[str, Any], num_domains: int) -> Params:
    """From alpha, beta, C and B_ref (= B / s0^beta; or B itself); A, if given, must be 1."""
    del num_domains
    beta = jnp.asarray(values["beta"], jnp.float32)
    b_ref = values["B_ref"] if "B_ref" in values else values["B"] / STEP_REF ** beta
    scale = values.get("A", 1.0)  # only A*B and A*C are identifiable: fold A into them
    return {"alpha": _unbounded(values["alpha"], ALPHA), "beta": _unbounded(beta, BETA),
            "log_b": jnp.log(jnp.asarray(b_ref * scale, jnp.float32)),
            "log_c": jnp.log(jnp.asarray(values["C"] * scale, jnp.float32))}


def bimix_rescale(params: Params, log_step_scale: jax.Array, log_loss_scale: jax.Array
                  ) -> Params:
    """Fitted on s / sigma and L / lambda: B gains sigma^beta and lambda, C gains lambda."""
    beta = _bounded(params["beta"], BETA)
    return {**params, "log_b": params["log_b"] + beta * log_step_scale + log_loss_scale,
            "log_c": params["log_c"] + log_loss_scale}


# --- Ye et al. --------------------------------------------------------------------------------

def ye_log_predict(params: Params, steps_N: jax.Array, props_NxK: jax.Array, *,
                   domain: jax.Array, eps: jax.Array) -> jax.Array:
    """log of (c + exp(t . r)) * (1 + B / s^beta)."""
    del domain, eps
    t = _bounded(params["t"], T_BOUND)
    return (jnp.logaddexp(params["log_c"], props_NxK @ t)
            + jax.nn.softplus(_log_step_factor(params, steps_N)))


def ye_init(key: jax.Array, num_domains: int) -> Params:
    kc, kt, kb, kd = jax.random.split(key, 4)
    return ye_unconstrain({
        "c": jax.random.uniform(kc, (), minval=0.1, maxval=3.0),
        "t": jax.random.uniform(kt, (num_domains,), minval=-2.0, maxval=1.5),
        "beta": jax.random.uniform(kb, (), minval=0.05, maxval=1.5),
        "B_ref": jnp.exp(jax.random.uniform(kd, (), minval=-5.0, maxval=0.0))}, num_domains)


def ye_constrain(params: Params) -> dict[str, jax.Array]:
    beta = _bounded(params["beta"], BETA)
    b_ref = jnp.exp(params["log_b"])
    return {"c": jnp.exp(params["log_c"]), "k": jnp.ones(()), "t": _bounded(params["t"], T_BOUND),
            "beta": beta, "B_ref": b_ref, "B": b_ref * STEP_REF ** beta}


def ye_unconstrain(values: dict[str, Any], num_domains: int) -> Params:
    """From c, t (K values), beta and B_ref (or B); k, if given, is folded into t."""
    beta = jnp.asarray(values["beta"], jnp.float32)
    b_ref = values["B_ref"] if "B_ref" in values else values["B"] / STEP_REF ** beta
    t = jnp.broadcast_to(jnp.asarray(values["t"], jnp.float32), (num_domains,))
    t = t + jnp.log(jnp.asarray(values.get("k", 1.0), jnp.float32))
    return {"log_c": jnp.log(jnp.asarray(values["c"], jnp.float32)), "t": _unbounded(t, T_BOUND),
            "beta": _unbounded(beta, BETA), "log_b": jnp.log(jnp.asarray(b_ref, jnp.float32))}


def ye_rescale(params: Params, log_step_scale: jax.Array, log_loss_scale: jax.Array) -> Params:
    """Fitted on s / sigma and L / lambda: B gains sigma^beta; c and exp(t . r) gain lambda,
    t as t + log lambda (the proportions sum to 1)."""
    beta = _bounded(params["beta"], BETA)
    return {**params, "log_b": params["log_b"] + beta * log_step_scale,
            "log_c": params["log_c"] + log_loss_scale,
            "t": _shift_bounded(params["t"], log_loss_scale, T_BOUND)}


# --- Linear (RegMix-style) --------------------------------------------------------------------

def linear_log_predict(params: Params, steps_N: jax.Array, props_NxK: jax.Array, *,
                       domain: jax.Array, eps: jax.Array) -> jax.Array:
    """w . r - b * log(s / s0)."""
    del domain, eps
    w = _bounded(params["w"], W_BOUND)
    return props_NxK @ w - _bounded(params["b"], SLOPE) * _log_steps(steps_N)


def linear_init(key: jax.Array, num_domains: int) -> Params:
    kw, kb = jax.random.split(key)
    return linear_unconstrain({
        "w": jax.random.uniform(kw, (num_domains,), minval=0.0, maxval=2.0),
        "b": jax.random.uniform(kb, (), minval=-0.1, maxval=0.3)}, num_domains)


def linear_constrain(params: Params) -> dict[str, jax.Array]:
    return {"w": _bounded(params["w"], W_BOUND), "b": _bounded(params["b"], SLOPE)}


def linear_unconstrain(values: dict[str, Any], num_domains: int) -> Params:
    w = jnp.broadcast_to(jnp.asarray(values["w"], jnp.float32), (num_domains,))
    return {"w": _unbounded(w, W_BOUND), "b": _unbounded(values["b"], SLOPE)}


def linear_rescale(params: Params, log_step_scale: jax.Array, log_loss_scale: jax.Array
                   ) -> Params:
    """Fitted on s / sigma and L / lambda: every w_j gains b log sigma + log lambda (the
    proportions sum to 1)."""
    shift = _bounded(params["b"], SLOPE) * log_step_scale + log_loss_scale
    return {**params, "w": _shift_bounded(params["w"], shift, W_BOUND)}


# --- Step-only control ------------------------------------------------------------------------

def step_only_log_predict(params: Params, steps_N: jax.Array, props_NxK: jax.Array, *,
                          domain: jax.Array, eps: jax.Array) -> jax.Array:
    """log of B / s^beta + C, whatever the mixture."""
    del props_NxK, domain, eps
    return jnp.logaddexp(_log_step_factor(params, steps_N), params["log_c"])


def step_only_init(key: jax.Array, num_domains: int) -> Params:
    kb, kc, kd = jax.random.split(key, 3)
    return step_only_unconstrain({
        "beta": jax.random.uniform(kb, (), minval=0.05, maxval=1.5),
        "B_ref": jnp.exp(jax.random.uniform(kc, (), minval=-4.0, maxval=1.0)),
        "C": jax.random.uniform(kd, (), minval=0.5, maxval=5.0)}, num_domains)


def step_only_constrain(params: Params) -> dict[str, jax.Array]:
    beta = _bounded(params["beta"], BETA)
    b_ref = jnp.exp(params["log_b"])
    return {"beta": beta, "B_ref": b_ref, "B": b_ref * STEP_REF ** beta,
            "C": jnp.exp(params["log_c"])}


def step_only_unconstrain(values: dict[str, Any], num_domains: int) -> Params:
    del num_domains
    beta = jnp.asarray(values["beta"], jnp.float32)
    b_ref = values["B_ref"] if "B_ref" in values else values["B"] / STEP_REF ** beta
    return {"beta": _unbounded(beta, BETA), "log_b": jnp.log(jnp.asarray(b_ref, jnp.float32)),
            "log_c": jnp.log(jnp.asarray(values["C"], jnp.float32))}


step_only_rescale = bimix_rescale  # the same B, beta and C


# --- The law object ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LawFns:
    """The functions of one law family (module-level, so that equal laws hash equal)."""

    log_predict: Callable[..., jax.Array]
    init: Callable[[jax.Array, int], Params]
    constrain: Callable[[Params], dict[str, jax.Array]]
    unconstrain: Callable[[dict[str, Any], int], Params]
    uses_mixture: bool
    rescale: Callable[[Params, jax.Array, jax.Array], Params]
    bounds: tuple[tuple[str, tuple[float, float]], ...]  # (raw parameter, (lo, hi) of its value)


FAMILIES = {
    "bimix": LawFns(bimix_log_predict, bimix_init, bimix_constrain, bimix_unconstrain, True,
                    bimix_rescale, (("alpha", ALPHA), ("beta", BETA))),
    "ye": LawFns(ye_log_predict, ye_init, ye_constrain, ye_unconstrain, True, ye_rescale,
                 (("t", T_BOUND), ("beta", BETA))),
    "linear": LawFns(linear_log_predict, linear_init, linear_constrain, linear_unconstrain, True,
                     linear_rescale, (("w", W_BOUND), ("b", SLOPE))),
    "step_only": LawFns(step_only_log_predict, step_only_init, step_only_constrain,
                        step_only_unconstrain, False, step_only_rescale, (("beta", BETA),)),
}
LAW_NAMES = tuple(FAMILIES)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Law:
    """One law for one eval domain. `domain` and `eps` are traced data, so a jitted fit
    compiles once per law family and data shape, not once per domain."""

    name: str = dataclasses.field(metadata=dict(static=True))
    num_domains: int = dataclasses.field(metadata=dict(static=True))
    domain: jax.Array  # which proportion is the eval domain's own share (BiMix reads it)
    eps: jax.Array  # BiMix's floor on r_i (the `epsilon` zero-share policy)

    @property
    def fns(self) -> LawFns:
        return FAMILIES[self.name]

    def log_predict(self, params: Params, steps_N: jax.Array, props_NxK: jax.Array
                    ) -> jax.Array:
        """Log of the predicted loss: the fits work in log space, so they never take its exp."""
        return self.fns.log_predict(params, steps_N, props_NxK, domain=self.domain,
                                    eps=self.eps)

    def predict(self, params: Params, steps_N: jax.Array, props_NxK: jax.Array) -> jax.Array:
        return jnp.exp(self.log_predict(params, steps_N, props_NxK))

    def init(self, key: jax.Array) -> Params:
        """A random start (unconstrained), drawn from ranges that cover LM losses of 1 to 10."""
        return self.fns.init(key, self.num_domains)

    def constrain(self, params: Params) -> dict[str, jax.Array]:
        return self.fns.constrain(params)

    def unconstrain(self, values: dict[str, Any]) -> Params:
        return self.fns.unconstrain(values, self.num_domains)

    def rescale(self, params: Params, step_scale: Any, loss_scale: Any) -> Params:
        """Parameters fitted on (s / step_scale, L / loss_scale) as parameters for (s, L): the
        same predictions in the original units. A value the bounds cannot hold comes back
        non-finite."""
        return self.fns.rescale(params, jnp.log(jnp.asarray(step_scale, jnp.float32)),
                                jnp.log(jnp.asarray(loss_scale, jnp.float32)))

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Raw parameter -> the (lo, hi) its value lies in (the others are unbounded)."""
        return dict(self.fns.bounds)


def make_law(name: str, num_domains: int, domain: int = 0, eps: float = 1e-12) -> Law:
    """The `name` law for eval domain `domain` of `num_domains` training domains."""
    if name not in FAMILIES:
        raise ValueError(f"unknown law {name!r}; use one of {list(FAMILIES)}")
    if not 0 <= domain < num_domains:
        raise ValueError(f"domain {domain} is not in [0, {num_domains})")
    return Law(name, num_domains, jnp.asarray(domain, jnp.int32), jnp.asarray(eps, jnp.float32))


def zero_share_keep(props_NxK: np.ndarray, domain: int, policy: str) -> np.ndarray:
    """Rows a fit of eval domain `domain` keeps: `drop` removes r_domain = 0, `epsilon` none.

    Apply the same mask to every law compared, so that they are scored on the same rows.
    """
    if policy not in ZERO_SHARE_POLICIES:
        raise ValueError(f"unknown zero-share policy {policy!r}; use one of "
                         f"{list(ZERO_SHARE_POLICIES)}")
    props_NxK = np.asarray(props_NxK)
    if policy == "drop":
        return props_NxK[:, domain] > 0
    return np.ones(len(props_NxK), bool)
