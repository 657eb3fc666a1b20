"""Mixing laws: formulas, parametrisation, r = 0, and recovery of Ye's and the linear law."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasemix.analysis import law_fit, mixing_laws as ml

K = 3
STEPS = np.array([2e3, 4e3, 7e3, 1e4, 1.5e4, 2e4, 3e4])
TRUTH = {
    "bimix": dict(alpha=0.12, beta=0.45, B=60.0, C=2.4),
    "ye": dict(c=1.6, t=[-1.2, 0.4, 0.9], beta=0.5, B=40.0),
    "linear": dict(w=[1.1, 1.35, 1.25], b=0.06),
    "step_only": dict(beta=0.5, B=90.0, C=2.8),
}


def grid(num_mixtures: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every (mixture, step) pair of Dirichlet mixtures with no share below 0.03."""
    props = np.random.default_rng(seed).dirichlet(np.ones(K), num_mixtures)
    props = np.maximum(props, 0.03)
    props /= props.sum(1, keepdims=True)
    s, m = np.meshgrid(STEPS, np.arange(num_mixtures), indexing="ij")
    return s.ravel(), props[m.ravel()]


def synthetic(name: str, noise: float = 0.002, seed: int = 0, domain: int = 1):
    law = ml.make_law(name, K, domain)
    steps, props = grid(seed=seed)
    clean = np.asarray(law.predict(law.unconstrain(TRUTH[name]), steps, props))
    noisy = clean * np.exp(np.random.default_rng(seed + 1).normal(0, noise, len(clean)))
    return law, steps, props, clean, noisy


def test_formulas_match_the_papers_forms():
    steps = np.array([1e3, 5e4])
    props = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    r = props[:, 1]
    law = ml.make_law("bimix", K, 1)
    # A = 2 is folded into B and C: the same predictions as the paper's (A / r^a)(B/s^b + C).
    values = dict(A=2.0, alpha=0.1, beta=0.4, B=30.0, C=1.5)
    expected = 2.0 / r ** 0.1 * (30.0 / steps ** 0.4 + 1.5)
    np.testing.assert_allclose(law.predict(law.unconstrain(values), steps, props), expected,
                               rtol=1e-5)
    law = ml.make_law("ye", K)
    t = np.array([-1.0, 0.3, 0.5])
    values = dict(c=1.2, k=0.7, t=t, beta=0.3, B=10.0)
    expected = (1.2 + 0.7 * np.exp(props @ t)) * (1 + 10.0 / steps ** 0.3)
    np.testing.assert_allclose(law.predict(law.unconstrain(values), steps, props), expected,
                               rtol=1e-5)
    law = ml.make_law("linear", K)
    w = np.array([1.0, 1.5, 0.5])
    expected = np.exp(props @ w - 0.2 * np.log(steps / ml.STEP_REF))
    np.testing.assert_allclose(law.predict(law.unconstrain(dict(w=w, b=0.2)), steps, props),
                               expected, rtol=1e-5)
    law = ml.make_law("step_only", K)
    expected = 50.0 / steps ** 0.5 + 3.0
    np.testing.assert_allclose(law.predict(law.unconstrain(dict(beta=0.5, B=50.0, C=3.0)),
                                           steps, props), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ml.LAW_NAMES)
def test_constrain_inverts_unconstrain(name):
    law = ml.make_law(name, K)
    back = law.constrain(law.unconstrain(TRUTH[name]))
    for key, value in TRUTH[name].items():
        np.testing.assert_allclose(back[key], value, rtol=1e-4)


@pytest.mark.parametrize("name", ml.LAW_NAMES)
def test_any_parameters_give_a_positive_loss_and_bounded_exponents(name):
    law = ml.make_law(name, K, domain=2, eps=1e-3)
    steps, props = grid()
    for seed in range(3):
        raw = jax.tree.map(lambda x: 5.0 * jax.random.normal(jax.random.key(seed), x.shape),
                           law.init(jax.random.key(0)))
        loss = np.asarray(law.predict(raw, steps, props))
        assert np.all(loss > 0) and np.all(np.isfinite(loss))
        values = law.constrain(raw)
        for key, (lo, hi) in (("alpha", ml.ALPHA), ("beta", ml.BETA)):
            if key in values:
                assert lo <= float(values[key]) <= hi


def test_zero_share_is_finite_with_epsilon_and_dropped_with_drop():
    props = np.array([[0.0, 0.5, 0.5], [0.25, 0.25, 0.5]])
    law = ml.make_law("bimix", K, domain=0, eps=0.01)
    params = law.unconstrain(dict(alpha=0.5, beta=0.5, B=10.0, C=1.0))
    loss = np.asarray(law.predict(params, np.array([1e4, 1e4]), props))
    np.testing.assert_allclose(loss[0] / loss[1], (0.01 / 0.25) ** -0.5, rtol=1e-5)
    np.testing.assert_array_equal(ml.zero_share_keep(props, 0, "drop"), [False, True])
    np.testing.assert_array_equal(ml.zero_share_keep(props, 0, "epsilon"), [True, True])
    with pytest.raises(ValueError, match="zero-share policy"):
        ml.zero_share_keep(props, 0, "impute")


def test_bad_law_arguments():
    with pytest.raises(ValueError, match="unknown law"):
        ml.make_law("doremi", K)
    with pytest.raises(ValueError, match="domain 3"):
        ml.make_law("bimix", K, domain=3)


def test_domain_is_traced_so_domains_share_one_compilation():
    predict = jax.jit(lambda law, p, s, r: law.predict(p, s, r))
    steps, props = grid()
    laws = [ml.make_law("bimix", K, d) for d in range(K)]
    params = laws[0].unconstrain(TRUTH["bimix"])
    out = [predict(law, params, steps, props) for law in laws]
    assert predict._cache_size() == 1
    assert not np.allclose(out[0], out[1])  # each reads its own share


@pytest.mark.parametrize("name", ["ye", "linear"])
def test_fit_recovers_the_parameters_of_noisy_synthetic_data(name):
    # BiMix and the step-only law are recovered in test_law_fit (one compilation per law).
    law, steps, props, clean, noisy = synthetic(name)
    result = law_fit.fit(law, jax.random.key(0), steps, props, noisy, num_starts=8,
                         max_iter=150, pad_to=128)
    got = law.constrain(result.params)
    # Relative error of the predictions against the noise-free curves: below the 0.2% noise.
    assert law_fit.mre(clean, law_fit.predict(law, result.params, steps, props)) < 0.002
    if name == "ye":
        np.testing.assert_allclose(got["t"], TRUTH["ye"]["t"], atol=0.15)
        np.testing.assert_allclose(got["beta"], 0.5, atol=0.05)
        np.testing.assert_allclose(got["c"], 1.6, rtol=0.1)
    else:
        np.testing.assert_allclose(got["w"], TRUTH["linear"]["w"], atol=0.02)
        np.testing.assert_allclose(got["b"], 0.06, atol=0.005)
    assert float(jnp.max(result.start_losses)) >= float(result.loss)
