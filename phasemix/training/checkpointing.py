"""Orbax checkpoints of the train state and the grain iterator, saved and restored together
(grain's `CheckpointSave` / `CheckpointRestore` items beside the state's).

The directory may be in a bucket (gs://bucket/run/checkpoints): orbax writes there through
epath and TensorStore's gcs driver, and marks a finished checkpoint with its commit file
(Cloud Storage has no atomic folder rename)."""

from __future__ import annotations

import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from phasemix.base import run_io, validation


class CheckpointError(validation.ConfigError):
    """A checkpoint that exists but cannot be restored."""


class Checkpointer:
    """Keeps the newest `max_to_keep` checkpoints under `directory`."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        path = run_io.run_path(directory)
        self.directory = path if run_io.is_remote(path) else path.absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator)))

    def restore(self, step: int, abstract_state: Any,
                data_iterator: grain.DatasetIterator) -> Any:
        """Returns the state; `data_iterator` is moved to where it stood at `step`.

        A checkpoint that fails to load raises `CheckpointError` naming its folder; nothing is
        deleted or overwritten, so the user can inspect or move it.
        """
        _drop_closed_loop_tracebacks()
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        same_processes = self._saved_by_as_many_processes(step)
        if same_processes:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            if not same_processes:
                # Every checkpoint is saved once the batches of steps [0, step) are consumed,
                # on every process alike (each takes its rows of the same global batches).
                grain.experimental.set_next_index(data_iterator, step)
        except Exception as e:  # orbax raises many types for damaged files
            _quiet_failed_restore()
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} is corrupt or incompatible with this "
                f"config ({type(e).__name__}: {_gist(e)}). Nothing was overwritten: move "
                "that folder away to resume from an earlier checkpoint, or use a new --workdir."
            ) from e
        return restored.state

    def _saved_by_as_many_processes(self, step: int) -> bool:
        """Whether grain's handler can restore this process's iterator from `step`.

        It saves one `process_<i>-of-<n>.json` per process and restores only the file of the
        restoring process's own i and n (grain 0.2.18, and its source since for every iterator
        but `ElasticIterator`, which shards examples, not these global batches), so on another
        number of processes the iterator is set from the step instead.
        """
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return (self.directory / str(step) / "data" / name).exists()

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """The train state alone (for analysis), without touching any data iterator."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} could not be read "
                                  f"({type(e).__name__}: {_gist(e)})") from e
        return restored.state

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _gist(error: BaseException) -> str:
    """The first line of an orbax error and of its cause, without the TensorStore spec."""
    lines = []
    while error is not None and len(lines) < 2:
        text = str(error).split(" See full TensorStore details")[0].strip()
        lines.append(text.splitlines()[0][:200] if text else type(error).__name__)
        error = error.__cause__
    return ", caused by: ".join(lines)


def _drop_closed_loop_tracebacks() -> None:
    """A failed restore leaves TensorStore reads in flight that call back into orbax's closed
    event loop, each reporting "Event loop is closed" as an unraisable exception, some before
    the failure reaches us: so that one report, which is never ours, is dropped from the start."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop = True
    sys.unraisablehook = hook


def _quiet_failed_restore() -> None:
    """The rest of a failed restore's noise, printed as the interpreter exits ("Task exception
    was never retrieved", "coroutine ... was never awaited"): the error itself is being
    reported and the process is about to stop."""
    import logging
    import threading
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None
    warnings.simplefilter("ignore", RuntimeWarning)
