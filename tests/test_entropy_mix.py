"""Entropy-driven mixtures on sequences whose entropies can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phasemix.analysis import entropy_mix as em


def h(*probs):
    return -sum(p * math.log(p) for p in probs if p > 0)


def test_alternating_sequence():
    seq = np.array([0, 1, 0, 1, 0, 1])  # bigrams: (0,1) x3, (1,0) x2
    assert em.shannon_entropy(seq) == pytest.approx(math.log(2))
    assert em.joint_entropy(seq) == pytest.approx(h(3 / 5, 2 / 5))
    assert em.conditional_entropy(seq) == pytest.approx(0.0, abs=1e-12)  # next is determined
    # C = [[0, 3], [2, 0]]: singular values 3 and 2, so rho has eigenvalues 9/13 and 4/13.
    assert em.von_neumann_entropy(seq) == pytest.approx(h(9 / 13, 4 / 13))


def test_constant_and_uniform_sequences():
    assert em.entropies([7, 7, 7, 7]) == pytest.approx(
        {"shannon": 0.0, "conditional": 0.0, "joint": 0.0, "von_neumann": 0.0}, abs=1e-12)
    # All 9 bigrams of 3 tokens once each (a de Bruijn sequence, 0 0 1 0 2 1 1 2 2 0).
    seq = [0, 0, 1, 0, 2, 1, 1, 2, 2, 0]
    assert em.joint_entropy(seq) == pytest.approx(math.log(9))
    assert em.conditional_entropy(seq) == pytest.approx(math.log(3))
    # Every token has the same successor counts: C is all ones, rank 1, so S = 0.
    assert em.von_neumann_entropy(seq) == pytest.approx(0.0, abs=1e-9)


def test_bigrams_stay_inside_each_sequence():
    # As two documents, (1, 0) never occurs: each document is a single repeated bigram.
    docs = [np.array([0, 1]), np.array([0, 1])]
    assert em.joint_entropy(docs) == pytest.approx(0.0)
    assert em.joint_entropy(np.array([0, 1, 0, 1])) == pytest.approx(h(2 / 3, 1 / 3))
    with pytest.raises(ValueError, match="2 tokens"):
        em.conditional_entropy([np.array([5])])


def test_proportions_by_normalisation_and_softmax():
    np.testing.assert_allclose(em.proportions([1.0, 3.0]), [0.25, 0.75])
    np.testing.assert_allclose(em.proportions([0.0, math.log(3)], "softmax"), [0.25, 0.75])
    hot = em.proportions([1.0, 2.0], "softmax", temperature=100.0)
    cold = em.proportions([1.0, 2.0], "softmax", temperature=0.01)
    np.testing.assert_allclose(hot, [0.5, 0.5], atol=0.01)
    np.testing.assert_allclose(cold, [0.0, 1.0], atol=1e-6)
    for args, match in ((([-1.0, 2.0],), ">= 0"), (([1.0], "softmax", 0.0), "temperature"),
                        (([1.0], "rank"), "unknown method"), (([math.nan],), "finite")):
        with pytest.raises(ValueError, match=match):
            em.proportions(*args)


def test_entropy_mixture_by_domain():
    prose_tokens = [0, 0, 1, 0, 2, 1, 1, 2, 2, 0]  # 0: 4 times, 1 and 2: 3 times
    mix = em.entropy_mixture({"code": [0, 1, 0, 1], "prose": prose_tokens}, measure="shannon")
    code, prose = math.log(2), h(0.4, 0.3, 0.3)
    assert mix["code"] == pytest.approx(code / (code + prose))
    assert sum(mix.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown entropy"):
        em.entropy_mixture({"a": [0, 1]}, measure="renyi")
