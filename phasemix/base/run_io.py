"""The run output contract: config.json, metrics.jsonl, TensorBoard events, summary.json.

Files that are replaced as a whole are written atomically (temporary file + rename), so a run
killed mid-write never leaves a half-written JSON behind.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import tempfile
from typing import Any, Iterable

import ml_collections
import numpy as np

from phasemix.base import validation

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
# A run stopped by SIGTERM exits with this after its checkpoint: 128 + SIGTERM, as schedulers expect.
PREEMPTED_EXIT_CODE = 143


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which races with threads.
_FILE_MODE = 0o666 & ~_current_umask()


_TEMPORARY_SUFFIX = ".tmp"  # of `_write_atomic`'s files: .<name>.<random>.tmp


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Deletes the temporary files a killed writer left in `folder` (call it only where no
    other process is writing: a run's own workdir at its start)."""
    for stale in pathlib.Path(folder).glob(f".*{_TEMPORARY_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _write_atomic(path: str | os.PathLike, mode: str, write: Any) -> None:
    """`write(file)` into a temporary file beside `path`, then renames it over `path`, with the
    permissions a plain open() would give (tempfile's are owner-only, unreadable to the other
    users of a shared filesystem)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.",
                                     suffix=_TEMPORARY_SUFFIX, delete=False) as tmp:
        write(tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, _FILE_MODE)
    os.replace(tmp.name, path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as JSON, NaN and infinities as null (strict JSON readers reject them)."""
    def write(f):
        json.dump(nan_to_none(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")

    _write_atomic(path, "w", write)


SNAPSHOT_DIR = "snapshots"


def write_npz_atomic(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Saves arrays to `path` (.npz) through a temporary file, so a kill leaves no torn file."""
    _write_atomic(path, "wb", lambda f: np.savez(f, **arrays))


def read_snapshots(workdir: str | os.PathLike) -> dict[int, dict[str, np.ndarray]]:
    """step -> arrays, from the `snapshots/<step>.npz` files a run wrote at its evaluations."""
    out = {}
    for file in pathlib.Path(workdir, SNAPSHOT_DIR).glob("*.npz"):
        with np.load(file) as data:
            out[int(file.stem)] = {k: data[k] for k in data.files}
    return dict(sorted(out.items()))


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / jax scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_config(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
    """{'model.d_model': 128, ...}: one column per leaf, as the sweep tables use."""
    tree = config if isinstance(config, dict) else config_to_dict(config)
    return _flatten(tree)


def prepare_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> pathlib.Path:
    """Creates the workdir or checks that it holds this same run; then writes config.json.

    A workdir that holds another experiment, or this experiment with other settings, is an
    error: resuming it would splice two different runs together. Nothing is written before
    that check passes.
    """
    workdir = check_workdir(workdir, config)
    remove_stale_temporaries(workdir)  # a killed run's; this run is the folder's one writer
    write_config(workdir, config)
    return workdir


# Fields that change how a run executes, not what it computes (beyond float rounding): a
# workdir written with another value, or before the field existed, still resumes and still
# counts as the same run.
EXECUTION_FIELDS = ("micro_batches", "xla_cpu_ynnpack", "fsdp")


def config_differences(found: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Flattened field -> (found, wanted) where two configs differ, execution fields aside."""
    old, new = flatten_config(found), flatten_config(wanted)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and k.rsplit(".", 1)[-1] not in EXECUTION_FIELDS}


def check_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> pathlib.Path:
    """The checks of `prepare_workdir`, writing nothing (every process of a job runs them)."""
    workdir = pathlib.Path(workdir)
    config_path = workdir / CONFIG_FILE
    wanted = config_to_dict(config)
    if config_path.exists():
        try:
            found = read_json(config_path)
        except (OSError, json.JSONDecodeError) as e:
            raise validation.ConfigError(
                f"--workdir={workdir}: {config_path} is unreadable ({e}); use a new --workdir"
            ) from e
        if found.get("experiment") != wanted.get("experiment"):
            raise validation.ConfigError(
                f"--workdir={workdir} holds a run of experiment {found.get('experiment')!r}, "
                f"not {wanted.get('experiment')!r}; use a new --workdir")
        changed = config_differences(found, wanted)
        if changed:
            details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise validation.ConfigError(
                f"--workdir={workdir} holds the same experiment with other settings ({details}); "
                "re-run with the original flags to resume, or use a new --workdir")
    elif (workdir / CHECKPOINT_DIR).exists():
        raise validation.ConfigError(
            f"--workdir={workdir} holds checkpoints but no {CONFIG_FILE}; use a new --workdir")
    return workdir


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / CONFIG_FILE, config_to_dict(config))
    except OSError as e:
        raise validation.ConfigError(f"--workdir={workdir} is not writable: {e}") from e


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True):
        self._workdir = pathlib.Path(workdir)
        self._path = self._workdir / METRICS_FILE
        # Rows past the checkpoint a run resumes from were made by the killed process; the
        # resumed run will log those steps again.
        # From step 0 (no checkpoint) none is kept: the run logs step 0 again.
        kept = ([r for r in read_metrics(self._workdir) if r["step"] <= resume_step]
                if resume_step else [])
        self._rewrite(kept)
        self._file = open(self._path, "a")
        self._tensorboard, self._resume_step = tensorboard, resume_step
        self._tb = None  # opened at the first row: a finished run's rerun adds no events file

    def _rewrite(self, rows: Iterable[dict[str, Any]]) -> None:
        tmp = self._path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row, default=_to_builtin) + "\n")
        os.replace(tmp, self._path)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, default=_to_builtin, sort_keys=True) + "\n")
        self._file.flush()
        if self._tensorboard and self._tb is None:
            # TensorBoard drops the killed run's events from this step on.
            self._tb = _summary_writer_class()(str(self._workdir / TENSORBOARD_DIR),
                                               purge_step=self._resume_step + 1
                                               if self._resume_step else 0)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter (no TensorFlow needed), imported without PyTorch.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors: seconds
    of start-up in every run process (Colab has torch), and a second CUDA runtime beside JAX's
    on a GPU. We log Python floats, so where torch is not loaded yet it is hidden meanwhile.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def nan_to_none(value: Any) -> Any:
    """NaNs and infinities as None, numpy and JAX values as Python ones, in nested dicts, lists
    and tuples too: JSON has no NaN."""
    if hasattr(value, "tolist"):  # numpy / jax scalars and arrays
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value
