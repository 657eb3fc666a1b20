"""Losses read only what their masks select, and sum exactly across batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phasemix.training import losses

B, L, V = 4, 3, 7


def batch(seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, (B, L)).astype(np.int32)
    mask = np.zeros((B, L), np.float32)
    mask[:, -1] = 1.0  # the answer token only
    return {"targets": jnp.asarray(targets), "loss_mask": jnp.asarray(mask)}


def test_answer_token_loss_ignores_other_positions():
    logits = jax.random.normal(jax.random.key(0), (B, L, V))
    b = batch()
    loss, sums = losses.masked_token_loss(logits, b)
    other = dict(b, targets=b["targets"].at[:, :-1].set((b["targets"][:, :-1] + 3) % V))
    loss_other, _ = losses.masked_token_loss(logits, other)
    assert float(loss) == float(loss_other)
    grad = jax.grad(lambda lg: losses.masked_token_loss(lg, b)[0])(logits)
    assert float(jnp.abs(grad[:, :-1]).max()) == 0.0
    assert float(jnp.abs(grad[:, -1]).min()) > 0.0
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[:, -1],
                                                               b["targets"][:, -1]).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(sums["count"]) == B


def test_accuracy_counts_answer_tokens():
    b = batch()
    logits = jax.nn.one_hot(b["targets"], V) * 10.0
    logits = logits.at[0, -1].set(jax.nn.one_hot((b["targets"][0, -1] + 1) % V, V) * 10.0)
    logits = logits.at[1, 0].set(0.0)  # wrong, but not an answer token
    metrics = losses.finalize(losses.masked_token_loss(logits, b)[1], "x_")
    assert metrics["x_accuracy"] == 0.75


def test_padding_weight_removes_rows():
    logits = jax.random.normal(jax.random.key(1), (B, L, V))
    b = batch()
    weighted = dict(b, weight=jnp.array([1.0, 1.0, 0.0, 0.0]))
    _, sums = losses.masked_token_loss(logits, weighted)
    _, first_two = losses.masked_token_loss(logits[:2], {k: v[:2] for k, v in b.items()})
    for key in sums:
        assert float(sums[key]) == pytest.approx(float(first_two[key]), rel=1e-6)


def test_classification_loss_and_accuracy():
    logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    labels = jnp.array([0, 1, 1])
    loss, sums = losses.classification_loss(logits, {"labels": labels})
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert losses.finalize(sums)["accuracy"] == pytest.approx(2 / 3)
