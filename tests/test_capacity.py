"""Capacity-allocation theory: the web-law fit, the knapsack's thresholds, power-law fits."""

import math

import numpy as np
import pytest

from phasemix.data import synbio
from phasemix.analysis import capacity, transitions


def test_web_law_fit_recovers_a_known_law():
    truth = capacity.WebLaw(C=3.0, A=40.0, alpha=0.3)
    sizes = np.array([2e4, 5e4, 1e5, 2e5, 5e5])
    law = capacity.fit_web_law(sizes, truth.loss(sizes))
    assert law.alpha == pytest.approx(0.3, rel=0.05)
    np.testing.assert_allclose(law.loss(sizes), truth.loss(sizes), rtol=1e-3)


def test_web_law_needs_three_sizes_and_positive_losses():
    with pytest.raises(ValueError, match=">= 3 model sizes"):
        capacity.fit_web_law([1e4, 1e4, 2e4], [5.0, 5.1, 4.0])
    with pytest.raises(ValueError, match="finite and positive"):
        capacity.fit_web_law([1e4, 2e4, 4e4], [5.0, float("nan"), 4.0])


@pytest.fixture()
def knapsack():
    return capacity.Knapsack(web=capacity.WebLaw(C=3.0, A=40.0, alpha=0.3), num_people=500,
                             tokens_per_bio=100.0, bits_per_person=47.0)


def test_knapsack_is_all_or_nothing_at_the_margin(knapsack):
    ratio = 0.2
    p_web = float(knapsack.web_params(ratio))
    # At P_web the web's marginal gain per bit equals a fact's: r ln2 / (N T).
    web_gain = (1 - ratio) * knapsack.web.marginal(p_web) / knapsack.bits_per_param
    fact_gain = ratio * math.log(2) / (knapsack.num_people * knapsack.tokens_per_bio)
    assert web_gain == pytest.approx(fact_gain, rel=1e-9)
    assert knapsack.learned_fraction(0.99 * p_web, ratio) == 0
    # Every bit beyond P_web goes to people, until all are stored.
    full = p_web + knapsack.num_people * knapsack.bits_per_person / knapsack.bits_per_param
    assert knapsack.learned_fraction(full, ratio) == pytest.approx(1.0)
    assert knapsack.learned_fraction((p_web + full) / 2, ratio) == pytest.approx(0.5)


def test_critical_ratio_and_size_invert_each_other(knapsack):
    for ratio in (0.05, 0.2, 0.6):
        size = knapsack.critical_params(ratio)
        assert knapsack.critical_ratio(size) == pytest.approx(ratio, rel=1e-9)
        assert knapsack.learned_fraction(size, ratio) == pytest.approx(0.5)
    # Too small to hold half the people at any ratio.
    assert knapsack.critical_ratio(0.4 * 500 * 47 / 2) is None


def test_critical_ratio_falls_with_the_predicted_exponent(knapsack):
    sizes = np.geomspace(1e7, 1e9, 5)  # large P: small r, where the slope is -(alpha+1)
    fit = capacity.fit_power_law(sizes, [knapsack.critical_ratio(n) for n in sizes])
    assert fit.exponent == pytest.approx(knapsack.ratio_exponent, abs=0.02)


def test_power_law_interval_covers_the_truth_and_widens_with_noise():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e4, 1e6, 6)
    exact = capacity.fit_power_law(x, 2.0 * x ** -1.2)
    assert exact.exponent == pytest.approx(-1.2) and exact.r2 == pytest.approx(1.0)
    noisy = capacity.fit_power_law(x, 2.0 * x ** -1.2 * np.exp(rng.normal(0, 0.2, len(x))))
    assert noisy.exponent_low < -1.2 < noisy.exponent_high
    assert noisy.exponent_high - noisy.exponent_low > exact.exponent_high - exact.exponent_low
    assert math.isinf(capacity.fit_power_law(x[:2], x[:2] ** -1.0).exponent_high)
    with pytest.raises(ValueError, match="positive"):
        capacity.fit_power_law([1.0, 2.0], [0.0, 1.0])


def test_person_bits_add_up_the_value_counts():
    bio = synbio.make(synbio.default_config())
    counts = bio.value_counts()
    assert counts["birth_date"] == 28 * 12 * 200 and counts["major"] == 100
    assert capacity.person_bits(bio) == pytest.approx(sum(math.log2(n)
                                                          for n in counts.values()))


def test_crossing_interpolates_in_log_x_and_reports_the_bracket():
    found = transitions.crossing([0.4, 0.1, 0.2], [0.9, 0.0, 0.4], 0.5)
    assert (found["low"], found["high"]) == (0.2, 0.4)
    assert 0.2 < found["value"] < 0.4
    below = transitions.crossing([0.1, 0.2], [0.6, 0.9], 0.5)
    assert below["value"] is None and below["high"] == 0.1
    never = transitions.crossing([0.1, 0.2], [0.0, 0.1], 0.5)
    assert never["value"] is None and never["high"] is None and never["low"] == 0.2
