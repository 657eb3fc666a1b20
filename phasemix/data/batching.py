"""Deterministic, random-access mini-batches over an in-memory dataset, as a grain pipeline.

Element `step` of the dataset is the whole batch for that training step: the rows of a
permutation drawn from (seed, epoch). Because any step's batch can be computed directly, the
grain iterator's state is just the next step, and a resumed run sees exactly the batches an
uninterrupted one would have seen. `iterate` reads upcoming batches ahead in a grain thread
or worker processes while the device trains.
"""

from __future__ import annotations

import math
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from phasemix.base import validation

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
        # (epoch, its permutation) in one attribute: a read-ahead thread and the loop may both
        # read batches, and one assignment never pairs an epoch with another's permutation.
        self._cached = (-1, np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return self._num_steps

    def _permutation(self, epoch: int) -> np.ndarray:
        cached_epoch, perm = self._cached
        if epoch != cached_epoch:
            perm = np.random.default_rng([self._seed, epoch]).permutation(self._num_rows)
            self._cached = (epoch, perm)
        return perm

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


def validate(config: ml_collections.ConfigDict) -> None:
    """`config.data_prefetch` and `config.data_workers`, the read-ahead of `iterate`."""
    for field in ("data_prefetch", "data_workers"):
        value = config[field]
        validation.require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                           field, "must be a non-negative integer", value)
    validation.require(not config.data_workers or config.data_prefetch, "data_workers",
                       "needs --config.data_prefetch >= 1 (the batches its workers read ahead)",
                       config.data_workers)


def iterate(dataset: grain.MapDataset, prefetch: int = 0, workers: int = 0) -> StepIterator:
    """A checkpointable iterator over the steps of `dataset` (see `StepIterator`)."""
    return StepIterator(dataset, prefetch, workers)


class StepIterator(grain.DatasetIterator):
    """The elements of a step-indexed MapDataset in order, `prefetch` of them read ahead.

    With `workers` = 0, grain's read-ahead runs in one thread of this process; with more, in
    that many worker processes (`mp_prefetch`), each reading every workers-th step. Its state
    is the next step to RETURN, as for grain's own iterator ({"next_index": n}): batches read
    ahead but not yet consumed are not in it, so a checkpoint resumes exactly where the loop
    stood. The state is the same for any `prefetch`, `workers` or process count (every process
    walks the same steps), so a run may resume with other values of each. Like grain's
    `ElasticIterator`, it rebuilds the grain pipeline from the step it is set to.
    """

    def __init__(self, dataset: grain.MapDataset, prefetch: int = 0, workers: int = 0):
        super().__init__()
        if prefetch < 0 or workers < 0 or (workers and not prefetch):
            raise ValueError(f"prefetch={prefetch}, workers={workers}: need prefetch >= 1 "
                             "with workers, and neither negative")
        self._dataset = dataset
        self._prefetch, self._workers = prefetch, workers
        self._next_index = 0
        self._reader: grain.DatasetIterator | None = None

    def _open(self) -> grain.DatasetIterator:
        if self._reader is None:
            steps = self._dataset[self._next_index:]
            if self._workers:  # each worker reads its steps in turn; the buffers read ahead
                if not flags.FLAGS.is_parsed():  # outside an absl app (tests, notebooks):
                    flags.FLAGS.mark_as_parsed()  # grain's workers read its flags' defaults
                per_worker = math.ceil(self._prefetch / self._workers)
                steps = steps.to_iter_dataset(grain.ReadOptions(
                    num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
                    grain.MultiprocessingOptions(num_workers=self._workers,
                                                 per_worker_buffer_size=per_worker))
            else:  # one read thread: grain's default 16 made steps ~25x slower on 2 cores
                steps = steps.to_iter_dataset(grain.ReadOptions(
                    num_threads=min(self._prefetch, 1), prefetch_buffer_size=self._prefetch))
            self._reader = iter(steps)
        return self._reader

    def __next__(self) -> Any:
        self._assert_not_closed()
        batch = next(self._open())
        self._next_index += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"next_index": self._next_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self._set_next_index(int(state["next_index"]))

    def _get_next_index(self) -> int:  # grain.experimental.get_next_index
        return self._next_index

    def _set_next_index(self, index: int) -> None:  # grain.experimental.set_next_index
        if not 0 <= index <= len(self._dataset):
            raise IndexError(f"next_index {index} is outside the {len(self._dataset)} steps")
        self._close_reader()
        self._next_index = index

    def start_prefetch(self) -> None:
        """Starts reading ahead before the first `next` (grain's checkpoint handler calls it
        after a restore, so the reads overlap the rest of the restore)."""
        self._open().start_prefetch()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        self._close_reader()
        super().close()

    def __str__(self) -> str:
        return f"StepIterator(prefetch={self._prefetch}, workers={self._workers})"


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
