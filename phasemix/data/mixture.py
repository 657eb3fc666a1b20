"""Deterministic, exact, random-access mixtures of token streams (SynBio + web, BiMix domains).

Each domain is one long token stream cut into windows of `seq_len + 1` tokens (inputs and
next-token targets). Training sequences are dealt to the domains by Webster (Sainte-Lague)
apportionment of the first n sequences, n = step * batch_size: every domain's count stays
within about one sequence of n * weight at every step, and, because divisor methods are house
monotone, no domain's count ever shrinks as n grows. So the mixture is exact over the whole
run (not only in expectation), and step s's batch is computed directly from s: the grain
iterator state is the step, and a resumed run sees the very batches of an unbroken one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Arrays = dict[str, np.ndarray]


def apportion(weights_K: np.ndarray, total: int) -> np.ndarray:
    """Webster's apportionment of `total` items by `weights_K` (integers summing to `total`)."""
    weights_K = np.asarray(weights_K, np.float64)
    counts_K = np.floor(total * weights_K + 0.5).astype(np.int64)
    # Rounding can miss the total by at most K/2; fix it seat by seat with Webster's priorities.
    # Ties favour the lower domain index both ways (it gains first, loses last), which keeps
    # the counts monotone in `total` even for equal weights.
    while counts_K.sum() < total:
        counts_K[np.argmax(weights_K / (counts_K + 0.5))] += 1
    while counts_K.sum() > total:
        priority_K = np.where(counts_K > 0, weights_K / np.maximum(counts_K - 0.5, 1e-12), np.inf)
        counts_K[len(counts_K) - 1 - np.argmin(priority_K[::-1])] -= 1
    return counts_K


def num_windows(stream_N: np.ndarray, seq_len: int) -> int:
    return len(stream_N) // (seq_len + 1)


class MixtureBatches:
    """Random-access source: step -> {'inputs', 'targets', 'loss_mask', 'domain'} of B rows.

    Rows are grouped by domain in a batch (domain 0 first); a domain's j-th sequence is window
    j of its stream, cycling when the stream runs out (`epochs` reports how often).
    """

    def __init__(self, streams: Sequence[np.ndarray], weights: Sequence[float], batch_size: int,
                 seq_len: int, num_steps: int):
        if len(streams) != len(weights):
            raise ValueError(f"{len(streams)} streams but {len(weights)} weights")
        self._windows = [np.asarray(s, np.int32)[:num_windows(s, seq_len) * (seq_len + 1)]
                         .reshape(-1, seq_len + 1) for s in streams]
        for k, (weight, windows) in enumerate(zip(weights, self._windows)):
            if weight > 0 and len(windows) == 0:
                raise ValueError(f"domain {k} has weight {weight} but fewer than "
                                 f"{seq_len + 1} tokens")
        self._weights = np.asarray(weights, np.float64)
        self._batch_size = batch_size
        self._seq_len = seq_len
        self._num_steps = num_steps

    def __len__(self) -> int:
        return self._num_steps

    def sequences_before(self, step: int) -> np.ndarray:
        """How many sequences each domain has contributed in steps [0, step)."""
        return apportion(self._weights, int(step) * self._batch_size)

    def epochs(self, step: int | None = None) -> np.ndarray:
        """Passes over each domain's stream after `step` steps (default: the whole run)."""
        used_K = self.sequences_before(self._num_steps if step is None else step)
        return used_K / np.maximum([len(w) for w in self._windows], 1)

    def __getitem__(self, step: int) -> Arrays:
        start_K = self.sequences_before(step)
        stop_K = self.sequences_before(step + 1)
        rows, domains = [], []
        for k, (start, stop) in enumerate(zip(start_K, stop_K)):
            if stop > start:
                windows = self._windows[k]
                rows.append(windows[np.arange(start, stop) % len(windows)])
                domains.append(np.full(stop - start, k, np.int32))
        windows_BxL1 = np.concatenate(rows)
        return {"inputs": windows_BxL1[:, :-1], "targets": windows_BxL1[:, 1:],
                "loss_mask": np.ones((self._batch_size, self._seq_len), np.float32),
                "domain": np.concatenate(domains)}

