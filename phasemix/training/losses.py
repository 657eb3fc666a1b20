"""Losses and accuracies as pure functions of logits and a batch.

Every function returns *sums* plus a count, so metrics of several batches (or of shards on
several devices) combine exactly: mean = sum / count. Log-softmax, loss and sums are float32
whatever dtype the logits come in (the model's are float32 already; a no-op then).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Metrics = dict[str, jax.Array]


def masked_token_loss(logits_BxLxV: jax.Array, batch: dict[str, jax.Array],
                      exact_match: bool = False) -> tuple[jax.Array, Metrics]:
    """Cross-entropy and accuracy on the tokens where `batch['loss_mask']` is 1.

    For modular arithmetic the mask selects the answer token only, so no other position's
    target can change the loss. Logits may cover only the last positions (a decoder with
    `last_position_only`); targets and mask are then read at those positions. With
    `exact_match`, also counts the rows whose masked tokens are *all* argmax-correct: with
    teacher forcing that is exactly "greedy decoding from the unmasked prefix reproduces the
    masked tokens", so one forward pass scores a greedy-decoding evaluation. Returns
    (mean loss, summed metrics).
    """
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    num_positions = logits_BxLxV.shape[1]
    targets_BxL = batch["targets"][:, -num_positions:]
    mask_BxL = batch["loss_mask"][:, -num_positions:].astype(jnp.float32)
    if "weight" in batch:  # rows of padding in an evaluation batch
        mask_BxL = mask_BxL * batch["weight"][:, None]
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
    correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL).astype(jnp.float32)
    count = mask_BxL.sum()
    loss_sum = (nll_BxL * mask_BxL).sum()
    metrics = {"loss_sum": loss_sum, "correct_sum": (correct_BxL * mask_BxL).sum(),
               "count": count}
    if exact_match:
        scored_B = (mask_BxL > 0).any(-1)
        all_right_B = jnp.all((correct_BxL > 0) | (mask_BxL == 0), axis=-1) & scored_B
        metrics["exact_sum"] = all_right_B.astype(jnp.float32).sum()
        metrics["sequence_count"] = scored_B.astype(jnp.float32).sum()
    return loss_sum / jnp.maximum(count, 1.0), metrics


def classification_loss(logits_BxC: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]:
    """Cross-entropy and accuracy of one label per example; `batch['weight']` masks padding rows."""
    logits_BxC = logits_BxC.astype(jnp.float32)
    labels_B = batch["labels"]
    weight_B = batch["weight"] if "weight" in batch else jnp.ones(labels_B.shape)
    weight_B = weight_B.astype(jnp.float32)
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    correct_B = (jnp.argmax(logits_BxC, axis=-1) == labels_B).astype(jnp.float32)
    count = weight_B.sum()
    loss_sum = (nll_B * weight_B).sum()
    metrics = {"loss_sum": loss_sum, "correct_sum": (correct_B * weight_B).sum(), "count": count}
    return loss_sum / jnp.maximum(count, 1.0), metrics


def finalize(metric_sums: Metrics, prefix: str = "") -> dict[str, float]:
    """Summed metrics -> {prefix+'loss', prefix+'accuracy'[, prefix+'exact_match']} as floats."""
    count = max(float(metric_sums["count"]), 1.0)
    finals = {f"{prefix}loss": float(metric_sums["loss_sum"]) / count,
              f"{prefix}accuracy": float(metric_sums["correct_sum"]) / count}
    if "exact_sum" in metric_sums:
        finals[f"{prefix}exact_match"] = (float(metric_sums["exact_sum"])
                                          / max(float(metric_sums["sequence_count"]), 1.0))
    return finals
