"""Mixture optimisation: BiMix's closed form against the general capped-simplex solver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasemix.analysis import mixing_laws as ml, mixture_opt as mo


def bimix_objective(alpha, k):
    return jax.tree_util.Partial(mo._bimix_objective, jnp.asarray(alpha, jnp.float32),
                                 jnp.asarray(k, jnp.float32))


def value(alpha, k, r):
    return float(np.sum(np.asarray(k) * np.asarray(r) ** -np.asarray(alpha)))


def test_repetition_caps_and_infeasible_bounds():
    caps = mo.repetition_caps([10, 50, 1000], total_tokens=200, max_epochs=4)
    np.testing.assert_allclose(caps, [0.2, 1.0, 1.0])
    with pytest.raises(ValueError, match="max_epochs"):
        mo.repetition_caps([10], total_tokens=100, max_epochs=0)
    with pytest.raises(ValueError, match="no mixture fits"):
        mo.check_bounds([0.5, 0.6], [1.0, 1.0])
    with pytest.raises(ValueError, match="no mixture fits"):
        mo.check_bounds([0.0, 0.0], [0.3, 0.3])
    with pytest.raises(ValueError, match="lo <= hi"):
        mo.check_bounds([0.4, 0.0], [0.3, 1.0])


def test_projection_onto_the_capped_simplex():
    lo, hi = jnp.array([0.1, 0.0, 0.0]), jnp.array([1.0, 0.3, 1.0])
    r = np.asarray(mo.project_capped_simplex(jnp.array([-1.0, 2.0, 0.5]), lo, hi))
    np.testing.assert_allclose(r, [0.1, 0.3, 0.6], atol=1e-6)
    inside = jnp.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(mo.project_capped_simplex(inside, lo, hi), inside, atol=1e-6)


def test_closed_form_equals_the_general_solver_when_no_bound_is_active():
    alpha, k = np.full(4, 0.15), np.array([1.0, 2.0, 3.0, 4.0])
    closed = mo.bimix_closed_form(alpha, k)
    np.testing.assert_allclose(mo.bimix_lagrange(alpha, k), closed, atol=1e-9)
    solved = mo.minimize_on_simplex(bimix_objective(alpha, k), 4)
    np.testing.assert_allclose(solved, closed, atol=1e-3)
    r, method = mo.bimix_optimal_mixture(alpha, k, lo_K=0.01, hi_K=0.9)
    assert method == "closed_form"
    np.testing.assert_allclose(r, closed, atol=1e-9)


def test_unequal_exponents_need_the_lagrange_root_not_the_papers_form():
    alpha, k = np.array([0.05, 0.3, 0.1, 0.2]), np.array([1.0, 2.0, 3.0, 4.0])
    exact = mo.bimix_lagrange(alpha, k)
    solved = mo.minimize_on_simplex(bimix_objective(alpha, k), 4)
    np.testing.assert_allclose(solved, exact, atol=1e-3)
    paper = mo.bimix_closed_form(alpha, k)
    assert np.max(np.abs(paper - exact)) > 0.005  # r ∝ (alpha K)^(1/(1+alpha)) is off here
    assert value(alpha, k, exact) < value(alpha, k, paper)


def test_active_bounds_use_the_solver_and_are_respected():
    alpha, k = np.array([0.05, 0.3, 0.1, 0.2]), np.array([1.0, 2.0, 3.0, 4.0])
    lo, hi = np.full(4, 0.05), np.array([1.0, 0.2, 1.0, 1.0])  # the unbounded optimum has 0.37
    r, method = mo.bimix_optimal_mixture(alpha, k, lo, hi)
    assert method == "projected_gradient"
    assert r.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.all(r >= lo - 1e-6) and np.all(r <= hi + 1e-6)
    assert r[1] == pytest.approx(0.2, abs=1e-5) and r[0] == pytest.approx(0.05, abs=1e-5)
    # No feasible point drawn at random does better.
    points = np.random.default_rng(0).dirichlet(np.ones(4), 2000).astype(np.float32)
    project = jax.jit(jax.vmap(mo.project_capped_simplex, in_axes=(0, None, None)))
    feasible = np.asarray(project(points, jnp.asarray(lo, jnp.float32),
                                  jnp.asarray(hi, jnp.float32)), np.float64)
    values = np.sum(k * feasible ** -alpha, axis=1)
    assert values.min() >= value(alpha, k, r) - 1e-5
    with pytest.raises(ValueError, match="minimum weight > 0"):
        mo.bimix_optimal_mixture(alpha, k, 0.0, hi)


def test_fitted_laws_give_the_same_optimum_through_either_route():
    alphas, scales = [0.05, 0.3, 0.1], [1.0, 3.0, 2.0]
    laws = [ml.make_law("bimix", 3, d) for d in range(3)]
    params = [law.unconstrain(dict(alpha=a, beta=0.5, B=50 * c, C=c))
              for law, a, c in zip(laws, alphas, scales)]
    weights = np.array([0.5, 0.2, 0.3])
    alpha, k = mo.bimix_coefficients([law.constrain(p) for law, p in zip(laws, params)],
                                     step=1e4, weights_K=weights)
    np.testing.assert_allclose(alpha, alphas, rtol=1e-5)
    np.testing.assert_allclose(k, weights * np.array(scales) * 1.5, rtol=1e-4)
    general = mo.minimize_on_simplex(mo.predicted_loss_fn(laws, params, 1e4, weights), 3,
                                     lo_K=0.01)
    np.testing.assert_allclose(general, mo.bimix_lagrange(alpha, k), atol=1e-3)


def test_optimal_mixture_takes_the_closed_form_for_bimix_and_the_solver_otherwise():
    laws = [ml.make_law("bimix", 3, d) for d in range(3)]
    params = [law.unconstrain(dict(alpha=a, beta=0.5, B=50.0, C=1.0))
              for law, a in zip(laws, [0.05, 0.3, 0.1])]
    r, method = mo.optimal_mixture(laws, params, 1e4, lo_K=0.01)
    assert method == "closed_form"
    general = mo.minimize_on_simplex(mo.predicted_loss_fn(laws, params, 1e4), 3, lo_K=0.01)
    np.testing.assert_allclose(r, general, atol=1e-3)
    # A cap that binds with a zero minimum weight has no Lagrange form: the general solver
    # takes over on the laws themselves (BiMix floors a zero share at epsilon).
    r, method = mo.optimal_mixture(laws, params, 1e4, lo_K=0.0, hi_K=[1.0, 0.2, 1.0])
    assert method == "projected_gradient"
    assert abs(r.sum() - 1) < 1e-5 and r[1] <= 0.2 + 1e-6
    ye = [ml.make_law("ye", 3, d) for d in range(3)]
    ye_params = [law.init(jax.random.key(d)) for d, law in enumerate(ye)]
    r, method = mo.optimal_mixture(ye, ye_params, 1e4, lo_K=0.05)
    assert method == "projected_gradient"
    expected = mo.minimize_on_simplex(mo.predicted_loss_fn(ye, ye_params, 1e4), 3, lo_K=0.05)
    np.testing.assert_allclose(r, expected, atol=1e-6)
