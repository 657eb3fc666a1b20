"""The iterator of training batches: read ahead in a thread or worker processes, its state (the
next step to consume) through the orbax checkpointer, and its config fields."""

from __future__ import annotations

import pathlib
import time

import grain
import jax
import ml_collections
import numpy as np
import pytest

from phasemix.base import validation
from phasemix.data import batching
from phasemix.training import checkpointing, train

ABSTRACT = {"w": jax.ShapeDtypeStruct((3,), np.float32)}


class MarksReads:
    """A step source that leaves a file per step read, seen from threads and worker processes."""

    def __init__(self, batches: grain.MapDataset, folder: pathlib.Path):
        self._batches, self._folder = batches, folder

    def __len__(self):
        return len(self._batches)

    def __getitem__(self, step):
        (self._folder / str(step)).touch()
        return self._batches[step]


def wait_for(path: pathlib.Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was never read"
        time.sleep(0.01)


def epoch_batches(num_steps: int = 12) -> grain.MapDataset:
    arrays = {"inputs": np.arange(80).reshape(40, 2)}
    return batching.epoch_batches(arrays, batch_size=8, seed=3, num_steps=num_steps)


@pytest.mark.parametrize("prefetch, workers", [(0, 0), (3, 0), (3, 1)])
def test_the_saved_state_is_the_batches_consumed_not_those_read_ahead(prefetch, workers,
                                                                      tmp_path):
    dataset = epoch_batches()
    reads = tmp_path / "reads"
    reads.mkdir()
    iterator = batching.iterate(grain.MapDataset.source(MarksReads(dataset, reads)), prefetch,
                                workers)
    for step in range(4):
        np.testing.assert_array_equal(next(iterator)["inputs"], dataset[step]["inputs"])
    if prefetch:
        wait_for(reads / str(4 + prefetch - 1))  # steps 4.. read ahead, not consumed
    checkpointer = checkpointing.Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(4, {"w": np.zeros(3, np.float32)}, iterator)
    checkpointer.wait()
    iterator.close()
    assert iterator.get_state() == {"next_index": 4}

    fresh = batching.iterate(dataset, prefetch, workers)
    checkpointer.restore(4, ABSTRACT, fresh)
    checkpointer.close()
    for step in range(4, len(dataset)):
        np.testing.assert_array_equal(next(fresh)["inputs"], dataset[step]["inputs"])
    with pytest.raises(StopIteration):
        next(fresh)
    fresh.close()


def test_the_restore_reads_the_iterator_state_through_grain(tmp_path):
    """With as many processes as saved it, the iterator's own saved state is restored (here
    not the checkpoint's step); with another count, where grain's handler finds no file of
    its own, the position is the step."""
    dataset = epoch_batches()
    iterator = batching.iterate(dataset, prefetch=2)
    for _ in range(3):
        next(iterator)
    checkpointer = checkpointing.Checkpointer(tmp_path)
    checkpointer.save(5, {"w": np.ones(3, np.float32)}, iterator)
    checkpointer.wait()
    fresh = batching.iterate(dataset, prefetch=2)
    state = checkpointer.restore(5, ABSTRACT, fresh)
    np.testing.assert_array_equal(state["w"], np.ones(3))
    np.testing.assert_array_equal(next(fresh)["inputs"], dataset[3]["inputs"])
    data = tmp_path / "5" / "data"
    (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
    other = batching.iterate(dataset, prefetch=2)
    checkpointer.restore(5, ABSTRACT, other)
    np.testing.assert_array_equal(next(other)["inputs"], dataset[5]["inputs"])
    checkpointer.close()
    for it in (iterator, fresh, other):
        it.close()


def test_setting_a_state_drops_the_batches_read_ahead():
    dataset = epoch_batches()
    iterator = batching.iterate(dataset, prefetch=4)
    next(iterator)
    iterator.set_state({"next_index": 9})
    assert grain.experimental.get_next_index(iterator) == 9
    np.testing.assert_array_equal(next(iterator)["inputs"], dataset[9]["inputs"])
    grain.experimental.set_next_index(iterator, 2)
    np.testing.assert_array_equal(next(iterator)["inputs"], dataset[2]["inputs"])
    with pytest.raises(IndexError, match="outside the 12 steps"):
        iterator.set_state({"next_index": 13})
    iterator.close()
    with pytest.raises(ValueError, match="closed"):
        next(iterator)


@pytest.mark.parametrize("prefetch, workers, field, message", [
    (-1, 0, "data_prefetch", "must be a non-negative integer"),
    (2, 1.5, "data_workers", "must be a non-negative integer"),
    (True, 0, "data_prefetch", "must be a non-negative integer"),
    (0, 2, "data_workers", "needs --config.data_prefetch >= 1"),
])
def test_bad_read_ahead_fields_are_refused_by_name(prefetch, workers, field, message):
    config = ml_collections.ConfigDict({"data_prefetch": prefetch, "data_workers": workers})
    value = config[field]
    with pytest.raises(validation.ConfigError, match=rf"^--config.{field}={value!r}: {message}"):
        batching.validate(config)


def test_the_trainer_checks_the_read_ahead_fields(smoke_config):
    smoke_config.data_prefetch, smoke_config.data_workers = 0, 1
    with pytest.raises(validation.ConfigError, match=r"^--config.data_workers=1: needs"):
        train.validate_loop_config(smoke_config, 1)
