"""Capacity allocation (Gu et al. 2025) as numbers: a knapsack between web text and biographies.

A model of P parameters stores `bits_per_param` * P bits (about 2: Allen-Zhu & Li). Spending x
bits on web text gives the web loss F2(x / bits_per_param) = C + A * (x / bits_per_param)^-alpha
(nats per token, fitted on web-only runs across sizes). Storing one person costs the
information of their values, b = sum over attributes of log2(#possible values) bits, and lowers
the loss on that person's biography tokens by b * ln 2 nats per biography. Per token of the
training mixture, a bit spent on facts is therefore worth

    r * (1 / N) * (b ln2 / T) / b = r ln2 / (N T)      (T: tokens per biography)

nats whoever the person is (all people are equally frequent, so it is all or nothing), and a
bit spent on the web is worth (1 - r) * alpha * A * P^-(alpha+1) / bits_per_param. The optimum
fills the web side up to P_web, where the two are equal,

    P_web(r) = [((1 - r) / r) * alpha * A * N * T / (bits_per_param * ln 2)]^(1 / (alpha + 1)),

and spends the rest on people: the learned fraction is
clip(bits_per_param * (P - P_web) / (N * b), 0, 1). So the critical ratio falls as
P^-(alpha+1) (for small r) and the critical size grows as (1/r)^(1/(alpha+1)): the paper's
exponents. The token budget D cancels (both sides scale with it); it enters only through the
web law, which is fitted at the same budget, and through the exposures r * D / (N * T) that
the theory assumes are enough to store a fact (its regime is capacity-, not exposure-bound).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Sequence

import jax
import numpy as np
import scipy.stats

from phasemix.data import synbio
from phasemix.analysis import law_fit, mixing_laws

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class WebLaw:
    """F2(P) = C + A * P^-alpha: web loss (nats/token) against parameter count P."""

    C: float
    A: float
    alpha: float

    def loss(self, params: Any) -> np.ndarray:
        return self.C + self.A * np.asarray(params, np.float64) ** -self.alpha

    def marginal(self, params: Any) -> np.ndarray:
        """-dF2/dP: the web loss one more parameter saves."""
        return self.alpha * self.A * np.asarray(params, np.float64) ** -(self.alpha + 1)


def fit_web_law(params_M: Sequence[float], loss_M: Sequence[float], seed: int = 0) -> WebLaw:
    """Fits F2 to web losses of models of several sizes (the mixing-law fitter: Huber in log
    space, multi-start L-BFGS, with P in the role of the step)."""
    params_M, loss_M = np.asarray(params_M, np.float64), np.asarray(loss_M, np.float64)
    if len(np.unique(params_M)) < 3:
        raise ValueError(f"the web law has 3 parameters; it needs losses at >= 3 model sizes, "
                         f"got {len(np.unique(params_M))}")
    if not np.all(np.isfinite(loss_M)) or np.any(loss_M <= 0):
        raise ValueError(f"web losses must be finite and positive, got {loss_M.tolist()}")
    law = mixing_laws.make_law("step_only", 1)
    # One "domain" at proportion 1: the step-only law ignores it, the fitter checks it.
    result = law_fit.fit(law, jax.random.key(seed), params_M, np.ones((len(params_M), 1)),
                         loss_M)
    values = law.constrain(result.params)
    return WebLaw(C=float(values["C"]), A=float(values["B"]), alpha=float(values["beta"]))


def person_bits(bio: synbio.SynBio) -> float:
    """Bits that identify one person's 5 values among all possible values."""
    return float(sum(math.log2(n) for n in bio.value_counts().values()))


@dataclasses.dataclass(frozen=True)
class Knapsack:
    """The capacity-allocation model for one SynBio set and web law."""

    web: WebLaw
    num_people: int  # N (those trained on)
    tokens_per_bio: float  # T
    bits_per_person: float  # b
    bits_per_param: float = 2.0

    def _scale(self) -> float:  # alpha * A * N * T / (bits_per_param * ln 2)
        return (self.web.alpha * self.web.A * self.num_people * self.tokens_per_bio
                / (self.bits_per_param * LN2))

    def web_params(self, ratio: Any) -> np.ndarray:
        """P_web(r): parameters the web side takes before facts pay more per bit."""
        r = np.asarray(ratio, np.float64)
        return ((1 - r) / r * self._scale()) ** (1 / (self.web.alpha + 1))

    def learned_fraction(self, params: Any, ratio: Any) -> np.ndarray:
        """Predicted fraction of people stored by a model of `params` parameters at ratio r."""
        spare_bits = self.bits_per_param * (np.asarray(params, np.float64)
                                            - self.web_params(ratio))
        return np.clip(spare_bits / (self.num_people * self.bits_per_person), 0.0, 1.0)

    def critical_ratio(self, params: float, level: float = 0.5) -> float | None:
        """The r at which `level` of the people are stored; None if capacity never suffices."""
        room = params - level * self.num_people * self.bits_per_person / self.bits_per_param
        if room <= 0:
            return None
        return float(1 / (1 + room ** (self.web.alpha + 1) / self._scale()))

    def critical_params(self, ratio: float, level: float = 0.5) -> float:
        """The parameter count at which `level` of the people are stored at ratio r."""
        return float(self.web_params(ratio)
                     + level * self.num_people * self.bits_per_person / self.bits_per_param)

    @property
    def ratio_exponent(self) -> float:
        """Slope of log r_crit against log P for small r: -(alpha + 1)."""
        return -(self.web.alpha + 1)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x^exponent, fitted in log-log space with a t confidence interval."""

    coefficient: float
    exponent: float
    exponent_low: float
    exponent_high: float
    points: int
    r2: float

    def __call__(self, x: Any) -> np.ndarray:
        return self.coefficient * np.asarray(x, np.float64) ** self.exponent


def fit_power_law(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> PowerLaw:
    """Least squares of log y on log x; the interval is +-t(n-2) standard errors (infinite
    with 2 points, wide with 3: report it)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"a power law needs >= 2 (x, y) pairs, got {len(x)} and {len(y)}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a power law is fitted in log space: x and y must be positive")
    fit = scipy.stats.linregress(np.log(x), np.log(y))
    if len(x) > 2:
        half = scipy.stats.t.ppf(0.5 + confidence / 2, len(x) - 2) * fit.stderr
    else:
        half = math.inf
    return PowerLaw(coefficient=float(math.exp(fit.intercept)), exponent=float(fit.slope),
                    exponent_low=float(fit.slope - half), exponent_high=float(fit.slope + half),
                    points=len(x), r2=float(fit.rvalue ** 2))


def attribute_bits(accuracy: Any, pool_size: int) -> np.ndarray:
    """Bits per person that an attribute answered with exact-match `accuracy` carries at least.

    With values uniform over `pool_size` choices, what the model knows of a value V from its
    answer A is I(V; A) = log2(K) - H(V | A). Fano's inequality bounds the conditional entropy
    of the errors, H(V | A) <= H_b(acc) + (1 - acc) log2(K - 1), with equality when the wrong
    answers spread evenly over the other values; so this is a lower bound on the information
    stored (0 at or below chance accuracy 1/K).
    """
    acc = np.clip(np.asarray(accuracy, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        binary = -(np.where(acc > 0, acc * np.log2(acc), 0.0)
                   + np.where(acc < 1, (1 - acc) * np.log2(1 - acc), 0.0))
    wrong = (1 - acc) * math.log2(pool_size - 1) if pool_size > 1 else 0.0
    # At or below chance (1/K) the answers say nothing of the value that a model could use.
    return np.where(acc > 1 / pool_size, math.log2(pool_size) - binary - wrong, 0.0)


def learned_bits(num_people: int, accuracy: dict[str, float], pool_sizes: dict[str, int]) -> float:
    """Bits the model stores about N people: the sum over attributes of N x `attribute_bits`
    (Allen-Zhu & Li's count of knowledge bits, with Fano's bound for partly right answers)."""
    missing = set(pool_sizes) ^ set(accuracy)
    if missing:
        raise ValueError(f"accuracy and pool sizes name different attributes: {sorted(missing)}")
    return float(sum(num_people * attribute_bits(accuracy[a], pool_sizes[a])
                     for a in pool_sizes))


def capacity_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One tidy row per run: size, N, exposures, accuracy per attribute, learned bits."""
    out = []
    for row in rows:
        accuracy = {a: row[f"final_accuracy_{a}"] for a in synbio.ATTRIBUTES}
        pools = {a: row[f"pool_{a}"] for a in synbio.ATTRIBUTES}
        n = row["people_trained"]
        bits = learned_bits(n, accuracy, pools)
        out.append({"preset": row["model.preset"], "params": row["params"],
                    "non_embedding_params": row["non_embedding_params"], "num_people": n,
                    "seed": row["seed"], "exposures": row["exposures_mean"],
                    "num_steps": row["num_steps"],
                    **{f"accuracy_{a}": accuracy[a] for a in synbio.ATTRIBUTES},
                    "bio_accuracy": row["final_bio_accuracy"],
                    "bits_per_person": sum(math.log2(k) for k in pools.values()),
                    "learned_bits": bits, "bits_per_param": bits / row["params"],
                    "bits_per_non_embedding_param": bits / row["non_embedding_params"]})
    return out


def capacity_per_size(table: list[dict[str, Any]], saturation: float) -> list[dict[str, Any]]:
    """Per preset: seed-mean learned bits against N, the largest (the capacity) and whether
    the last doubling of N stopped adding bits."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in table):
        rows = [r for r in table if r["preset"] == preset]
        people = sorted({r["num_people"] for r in rows})
        mean_bits = [statistics.mean(r["learned_bits"] for r in rows if r["num_people"] == n)
                     for n in people]
        best = max(range(len(people)), key=lambda i: mean_bits[i])
        best_rows = [r for r in rows if r["num_people"] == people[best]]
        plateau = len(people) >= 2 and mean_bits[-1] < saturation * mean_bits[-2]
        out.append({"preset": preset, "params": rows[0]["params"],
                    "non_embedding_params": rows[0]["non_embedding_params"],
                    "capacity_people": people[best], "capacity_bits": mean_bits[best],
                    "capacity_bits_min": min(r["learned_bits"] for r in best_rows),
                    "capacity_bits_max": max(r["learned_bits"] for r in best_rows),
                    "bits_per_param": mean_bits[best] / rows[0]["params"],
                    "bits_per_non_embedding_param":
                        mean_bits[best] / rows[0]["non_embedding_params"],
                    "plateau_reached": plateau, "seeds": len(best_rows)})
    return out
