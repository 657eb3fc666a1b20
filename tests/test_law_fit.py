"""Multi-start Huber fits: recovery, determinism, diagnostics and the evaluation protocol."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from phasemix.analysis import law_fit, mixing_laws as ml

from test_mixing_laws import TRUTH, synthetic  # the same synthetic data

FIT = dict(num_starts=16, max_iter=150, pad_to=128)  # one compilation per law in this file


@pytest.fixture(scope="module")
def bimix_fit():
    law, steps, props, clean, noisy = synthetic("bimix")
    return law, steps, props, clean, noisy, law_fit.fit(law, jax.random.key(0), steps, props,
                                                        noisy, **FIT)


def test_huber_objective_by_hand():
    law = ml.make_law("step_only", 3)
    params = law.unconstrain(dict(beta=0.5, B=100.0, C=2.0))
    steps, props = np.array([1e4, 1e4]), np.full((2, 3), 1 / 3)
    pred = 3.0  # 100 / 1e4^0.5 + 2
    small, large = 0.005, 0.05  # log residuals inside and outside delta = 0.01
    loss = pred * np.exp(-np.array([small, large]))
    value = law_fit.huber_log_objective(law, params, steps, props, np.log(loss), np.ones(2), 0.01)
    expected = (0.5 * small ** 2 + 0.01 * (large - 0.005)) / 2 / 0.01 ** 2
    np.testing.assert_allclose(value, expected, rtol=1e-4)


def test_bimix_recovers_known_parameters(bimix_fit):
    law, steps, props, clean, _, result = bimix_fit
    got = law.constrain(result.params)
    np.testing.assert_allclose(got["alpha"], TRUTH["bimix"]["alpha"], atol=0.01)
    np.testing.assert_allclose(got["beta"], TRUTH["bimix"]["beta"], atol=0.05)
    np.testing.assert_allclose(got["C"], TRUTH["bimix"]["C"], rtol=0.05)
    assert law_fit.mre(clean, law_fit.predict(law, result.params, steps, props)) < 0.002
    assert np.all(np.asarray(result.start_losses) >= float(result.loss))


def test_step_only_recovers_known_parameters():
    law, steps, props, clean, noisy = synthetic("step_only")
    result = law_fit.fit(law, jax.random.key(0), steps, props, noisy, **FIT)
    got = law.constrain(result.params)
    np.testing.assert_allclose(got["beta"], 0.5, atol=0.05)
    np.testing.assert_allclose(got["C"], 2.8, rtol=0.05)


def test_same_key_same_fit_and_weights_matter(bimix_fit):
    law, steps, props, _, noisy, result = bimix_fit
    again = law_fit.fit(law, jax.random.key(0), steps, props, noisy, **FIT)
    for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    # Corrupt some rows: with weight 0 they are ignored, so the fit is still the truth's.
    corrupt = noisy.copy()
    corrupt[:10] *= 1.5
    weights = np.ones(len(noisy))
    weights[:10] = 0
    masked = law_fit.fit(law, jax.random.key(0), steps, props, corrupt, weights, **FIT)
    np.testing.assert_allclose(law.constrain(masked.params)["alpha"],
                               TRUTH["bimix"]["alpha"], atol=0.01)


def test_diagnostics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    steps = np.array([1, 1, 2, 2])
    assert law_fit.r2(y, y) == 1.0
    assert law_fit.mre(y, y * 1.1) == pytest.approx(0.1)
    # Predicting each step's mean: a perfect step trend with no mixture effect.
    step_means = np.array([1.5, 1.5, 3.5, 3.5])
    assert law_fit.r2(y, step_means) == pytest.approx(0.8)  # the step trend alone
    assert law_fit.within_step_r2(y, step_means, steps) == pytest.approx(0.0)
    assert law_fit.within_step_r2(y, step_means + 0.5, steps) < 0
    assert law_fit.spearman(y, step_means) > 0  # over all steps the trend ranks well
    assert law_fit.spearman(y, np.full(4, 2.0)) == 0.0
    assert law_fit.within_step_spearman(np.arange(6.0), np.arange(6.0)[::-1],
                                        np.zeros(6)) == pytest.approx(-1.0)


def test_protocol_splits_and_heldout_choice():
    steps = np.array([1, 2, 3, 1, 2, 3])
    mixtures = np.array([0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(
        law_fit.protocol_splits(steps, mixtures, step_cut=2, heldout_ids=[1]),
        ["fit", "fit", "extrap_step", "heldout_mix", "heldout_mix", "heldout_both"])
    ids = np.arange(26)
    first = law_fit.choose_heldout_mixtures(ids, 0.25, seed=3)
    assert len(first) == 6 and len(set(first)) == 6
    np.testing.assert_array_equal(first, law_fit.choose_heldout_mixtures(ids, 0.25, seed=3))
    assert not np.array_equal(first, law_fit.choose_heldout_mixtures(ids, 0.25, seed=4))
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="held-out fraction"):
            law_fit.choose_heldout_mixtures(ids, bad, seed=0)


def test_protocol_shows_the_step_trend_trap():
    """On BiMix data, a mixture-blind law scores a high R^2 over all steps but <= 0 within a
    step; BiMix itself extrapolates and generalises to held-out mixtures."""
    law, steps, props, _, noisy = synthetic("bimix", noise=0.001)
    mixtures = np.tile(np.arange(12), len(np.unique(steps)))
    heldout = law_fit.choose_heldout_mixtures(mixtures, 0.25, seed=0)
    kwargs = dict(step_cut=1e4, heldout_ids=heldout, **FIT)
    bimix = law_fit.evaluate_protocol(law, jax.random.key(1), steps, props, noisy, mixtures,
                                      **kwargs)
    blind = law_fit.evaluate_protocol(ml.make_law("step_only", 3, 1), jax.random.key(1), steps,
                                      props, noisy, mixtures, **kwargs)
    assert bimix.metrics["extrap_step"]["mre"] < 0.003
    assert bimix.metrics["heldout_mix"]["within_step_r2"] > 0.9
    assert bimix.metrics["heldout_mix"]["within_step_spearman"] > 0.8
    assert blind.metrics["heldout_mix"]["r2"] > 0.5
    assert blind.metrics["heldout_mix"]["within_step_r2"] <= 0
    assert blind.metrics["heldout_mix"]["within_step_spearman"] == 0
    assert {s: int(np.sum(bimix.split_N == s)) for s in law_fit.SPLITS} == {
        "fit": 36, "extrap_step": 27, "heldout_mix": 12, "heldout_both": 9}


def test_empty_fit_and_short_padding_are_errors():
    law = ml.make_law("bimix", 3)
    with pytest.raises(ValueError, match="no rows"):
        law_fit.fit(law, jax.random.key(0), [], np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="pad_to"):
        law_fit.fit(law, jax.random.key(0), np.ones(10), np.full((10, 3), 1 / 3), np.ones(10),
                    pad_to=8)
