"""Modular arithmetic tasks `a op b = c (mod p)` as answer-token prediction.

Each example is the sequence [a, b, =] with vocabulary 0..p-1 for numbers and p for "=";
the model must put the answer c at the "=" position, and the loss mask selects only that
position. The train set is the first `n` pairs of a seeded permutation, so with one seed a
smaller train set is always a subset of a larger one; every other pair is the test set.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from phasemix.base import validation

SEQ_LEN = 3


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _answer(op: str, a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":  # a * b^(p-2) = a / b for prime p (Fermat)
        return (a * np.array([pow(int(x), p - 2, p) for x in b])) % p
    return (a * a + a * b + b * b) % p  # "x2_xy_y2"


# A lower bound of a split's memory per equation: all_pairs' a, b, c and pair_order's
# permutation (int64 each), with the examples' inputs, targets and loss mask (3 x 4 bytes each).
BYTES_PER_PAIR = 4 * 8 + 3 * 3 * 4
OPS = ("add", "sub", "mul", "div", "x2_xy_y2")


def validate(task: ml_collections.ConfigDict) -> None:
    validation.require_choice(task.op, OPS, "task.op")
    validation.require(task.p >= 2, "task.p", "the modulus must be >= 2", task.p)
    if task.op == "div":
        validation.require(_is_prime(task.p), "task.p",
                           "division needs a prime modulus (every b != 0 must be invertible)",
                           task.p)
    total = num_pairs(task.op, task.p)
    validation.require_memory(total * BYTES_PER_PAIR, "task.p", f"its {total:,} equations",
                              task.p)
    # Checked even where train_count overrides it, so that a mistyped value never passes.
    # "auto" is resolved by the experiment (a predicted critical data size) before the split.
    if task.train_fraction == "auto":
        return
    validation.require(isinstance(task.train_fraction, (int, float))
                       and 0 < task.train_fraction < 1, "task.train_fraction",
                       "must be in (0, 1) or 'auto'", task.train_fraction)
    if task.train_count is not None:
        validation.require(1 <= task.train_count < total, "task.train_count",
                           f"must be in [1, {total - 1}] (there are {total} pairs; the rest "
                           "is the test set)", task.train_count)
    else:
        validation.require(int(task.train_fraction * total) >= 1, "task.train_fraction",
                           f"leaves no training pair out of {total}", task.train_fraction)


def num_pairs(op: str, p: int) -> int:
    return p * (p - 1) if op == "div" else p * p


def all_pairs(op: str, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (a, b, c) of the task, in a fixed order; division skips b = 0."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    if op == "div":
        a, b = a[b != 0], b[b != 0]
    return a, b, _answer(op, a, b, p)


def train_size(task: ml_collections.ConfigDict) -> int:
    if task.train_count is not None:
        return int(task.train_count)
    return int(task.train_fraction * num_pairs(task.op, task.p))


def to_examples(a: np.ndarray, b: np.ndarray, c: np.ndarray, p: int) -> dict[str, np.ndarray]:
    """Token arrays for the decoder: inputs [a, b, =], the answer as the target at '='."""
    equals = np.full_like(a, p)
    inputs = np.stack([a, b, equals], axis=1).astype(np.int32)
    targets = np.zeros_like(inputs)
    targets[:, -1] = c
    loss_mask = np.zeros(inputs.shape, np.float32)
    loss_mask[:, -1] = 1.0
    return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask}


def pair_order(op: str, p: int, seed: int) -> np.ndarray:
    """The seeded order of `all_pairs`: the train set of size n is its first n entries."""
    return np.random.default_rng([seed, 0]).permutation(num_pairs(op, p))


def split(task: ml_collections.ConfigDict, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, test) examples; train sets of one seed nest inside each other."""
    a, b, c = all_pairs(task.op, task.p)
    order = pair_order(task.op, task.p, seed)
    n = train_size(task)
    train_rows, test_rows = order[:n], order[n:]
    return (to_examples(a[train_rows], b[train_rows], c[train_rows], task.p),
            to_examples(a[test_rows], b[test_rows], c[test_rows], task.p))
