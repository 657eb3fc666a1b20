"""Deterministic, random-access mini-batches over an in-memory dataset, as a grain pipeline.

Element `step` of the dataset is the whole batch for that training step: the rows of a
permutation drawn from (seed, epoch). Because any step's batch can be computed directly, the
grain iterator's state is just the next step, and a resumed run sees exactly the batches an
uninterrupted one would have seen.
"""

from __future__ import annotations

import grain
import numpy as np

Arrays = dict[str, np.ndarray]


class EpochBatches:
    """Random-access source: step -> batch of `batch_size` rows, reshuffled every epoch."""

    def __init__(self, arrays: Arrays, batch_size: int, seed: int, num_steps: int):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"arrays have different numbers of rows: {sizes}")
        self._arrays = arrays
        self._num_rows = sizes.pop()
        if not 0 < batch_size <= self._num_rows:
            raise ValueError(f"batch_size={batch_size} must be in [1, {self._num_rows}]")
        self._batch_size = batch_size
        self._seed = seed
        self._num_steps = num_steps
        self._steps_per_epoch = self._num_rows // batch_size
        self._cached_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._num_steps

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._cached_epoch:
            self._perm = np.random.default_rng([self._seed, epoch]).permutation(self._num_rows)
            self._cached_epoch = epoch
        return self._perm

    def __getitem__(self, step: int) -> Arrays:
        epoch, within = divmod(int(step), self._steps_per_epoch)
        rows = self._permutation(epoch)[within * self._batch_size:(within + 1) * self._batch_size]
        return {k: v[rows] for k, v in self._arrays.items()}


def epoch_batches(arrays: Arrays, batch_size: int, seed: int, num_steps: int) -> grain.MapDataset:
    return grain.MapDataset.source(EpochBatches(arrays, batch_size, seed, num_steps))


class _Rows:
    """Keeps rows [start, stop) of every array of a batch (picklable, unlike a lambda)."""

    def __init__(self, rows: slice):
        self.rows = rows

    def __call__(self, batch: Arrays) -> Arrays:
        return {k: v[self.rows] for k, v in batch.items()}


def process_shard(dataset: grain.MapDataset, rows: slice) -> grain.MapDataset:
    """Element `step` becomes this process's `rows` of the global batch of that step.

    Every process walks the same steps, so the iterator state (the next step) is the same on
    all of them, and a checkpoint written by N processes resumes on any number.
    """
    return dataset.map(_Rows(rows))


class _PadRows:
    """Pads every array of a batch with zero rows to `rows`, with a `weight` column: 1 (or the
    batch's own weight) on its rows, 0 on the padding (picklable, unlike a lambda)."""

    def __init__(self, rows: int):
        self.rows = rows

    def __call__(self, batch: Arrays) -> Arrays:
        num_rows = len(next(iter(batch.values())))
        weighted = {**batch, "weight": batch.get("weight", np.ones(num_rows, np.float32))}
        return {k: np.pad(v, [(0, self.rows - num_rows)] + [(0, 0)] * (v.ndim - 1))
                for k, v in weighted.items()}


def pad_rows(dataset: grain.MapDataset, rows: int) -> grain.MapDataset:
    """Every batch padded to `rows` rows of weight 0, which the losses leave out: batches of
    one shape for runs whose batches differ in rows (one program trains them together). The
    iterator state is unchanged (the next step), so checkpoints are those of the unpadded."""
    return dataset.map(_PadRows(rows))


def iterate(dataset: grain.MapDataset) -> grain.DatasetIterator:
    """A checkpointable iterator; no read threads (they were ~25x slower on 2 cores)."""
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return iter(dataset.to_iter_dataset(read_options))


def pad_and_stack(arrays: Arrays, batch_size: int) -> Arrays:
    """Pads rows with zeros to a multiple of `batch_size` and reshapes to (num_batches, B, ...).

    A `weight` column (1 for real rows, 0 for padding) lets the losses ignore the padding, so
    one compiled evaluation serves every set of the same padded size.
    """
    num_rows = len(next(iter(arrays.values())))
    num_batches = max(-(-num_rows // batch_size), 1)
    padded_rows = num_batches * batch_size
    out = {}
    for key, value in {**arrays, "weight": np.ones(num_rows, np.float32)}.items():
        padding = [(0, padded_rows - num_rows)] + [(0, 0)] * (value.ndim - 1)
        padded = np.pad(value, padding)
        out[key] = padded.reshape(num_batches, batch_size, *value.shape[1:])
    return out


def pad_batches(stacked: Arrays, num_batches: int) -> Arrays:
    """A `pad_and_stack` result with batches of zeros (weight 0) added up to `num_batches`, so
    that sets of different sizes stack (their sums are unchanged: the padding counts 0)."""
    return {k: np.pad(v, [(0, num_batches - len(v))] + [(0, 0)] * (v.ndim - 1))
            for k, v in stacked.items()}
