"""The run output contract: config.json, metrics.jsonl, TensorBoard events, summary.json.

Files that are replaced as a whole are written atomically (temporary file + rename), so a run
killed mid-write never leaves a half-written JSON behind.

A run folder may also be a bucket URI (`--workdir=gs://bucket/run`): its paths are then
`etils.epath` paths (gcsfs underneath), and a file is written as one object upload, which
Cloud Storage makes visible whole or not at all, so no temporary file is needed there.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import sys
import tempfile
from typing import Any, Iterable, Iterator

import ml_collections
import numpy as np
from etils import epath

from phasemix.base import validation

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
# A run stopped by SIGTERM exits with this after its checkpoint: 128 + SIGTERM, as schedulers expect.
PREEMPTED_EXIT_CODE = 143
# A run whose loss or parameters became NaN or infinite exits with this (bad input is 1).
DIVERGED_EXIT_CODE = 3
DIVERGED = "diverged"  # summary.json's `status` of such a run; a finished run's is "finished"
# The flags that most often make a run diverge, named in its error.
DIVERGENCE_FLAGS = ("--config.opt.lr", "--config.model.init_scale", "--config.model.dtype")


# A path of a run folder: local (pathlib) or in a bucket (etils.epath, e.g. gs://bucket/run).
RunPath = pathlib.Path | epath.Path


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names a bucket (gs://bucket/..., or another scheme epath knows)."""
    return "://" in os.fspath(path)


def run_path(path: str | os.PathLike) -> RunPath:
    """`path` as a path object: epath for a bucket URI (pathlib would fold `gs://b/run` into a
    local folder `gs:/b/run`), pathlib.Path otherwise, so that local runs behave as before."""
    if isinstance(path, epath.Path) and is_remote(path):
        return path
    text = os.fspath(path)
    return epath.Path(text) if is_remote(text) else pathlib.Path(text)


class Diverged(validation.ConfigError):
    """A run whose metrics became non-finite: it stopped at the evaluation that saw it, kept
    its last good checkpoint, and recorded `status: diverged` in summary.json. The message is
    one line naming the step, the quantity and the flags most likely responsible."""

    def __init__(self, message: str, step: int | None = None, quantity: str | None = None):
        super().__init__(message)
        self.step, self.quantity = step, quantity

    def __reduce__(self):  # pickles (from a sweep's worker process) with its step and quantity
        return type(self), (str(self), self.step, self.quantity)


def divergence_message(step: int, quantity: str, value: Any, flag_prefix: str = "") -> str:
    """The one-line error of a diverged run; `flag_prefix` is where a sweep keeps the run's
    config (e.g. 'base.'), so that the flags named are the sweep's."""
    lr, *others = (f.replace("--config.", f"--config.{flag_prefix}") for f in DIVERGENCE_FLAGS)
    return (f"diverged at step {step}: {quantity} is {value}; lower {lr}, or check "
            f"{' and '.join(others)}")


def diverged_summary(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The summary of a run that diverged earlier in `workdir`, else None."""
    try:
        summary = read_json(run_path(workdir) / SUMMARY_FILE)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == DIVERGED else None


def require_workdir(workdir: str | os.PathLike | None, flag: str = "workdir") -> RunPath:
    """Refuses an empty --workdir (it would write into the current folder), a file, or a
    folder that cannot be created or written; writes nothing."""
    text = "" if workdir is None else os.fspath(workdir)
    validation.require_flag(text.strip() != "", flag,
                            "is empty: name the run's folder (e.g. --workdir=runs/name)", text)
    if is_remote(text):
        return _require_remote_workdir(text, flag)
    path = pathlib.Path(os.path.expanduser(text))
    validation.require_flag(not path.exists() or path.is_dir(), flag, "is a file, not a folder",
                            text)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    validation.require_flag(existing.is_dir(), flag,
                            f"cannot be created: {existing} is a file", text)
    validation.require_flag(os.access(existing, os.W_OK | os.X_OK), flag,
                            f"is not writable ({existing} is read-only)", text)
    return path


def _require_remote_workdir(text: str, flag: str) -> epath.Path:
    """A bucket URI's checks: its bucket exists (gcsfs would otherwise create a mistyped
    bucket on the first write) and the run's path is not an object (a file)."""
    path = epath.Path(text)
    scheme, rest = text.split("://", 1)
    bucket = rest.split("/", 1)[0]
    validation.require_flag(bucket != "", flag, "names no bucket (e.g. gs://bucket/run)", text)
    try:
        bucket_exists = epath.Path(f"{scheme}://{bucket}").exists()
        is_object = path.exists() and not path.is_dir()
    except ImportError as e:  # epath reaches gs:// through gcsfs (or TensorFlow)
        raise validation.ConfigError(
            f"--{flag}={text}: writing to {scheme}:// needs gcsfs ({e}); pip install gcsfs"
        ) from e
    except Exception as e:  # noqa: BLE001 (no credentials, no network: each client its type)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise validation.ConfigError(
            f"--{flag}={text}: cannot reach the bucket ({type(e).__name__}: {first}); "
            "check `gcloud auth application-default login` and the bucket's name") from e
    validation.require_flag(bucket_exists, flag, f"bucket {bucket!r} does not exist (or these "
                            "credentials cannot see it)", text)
    validation.require_flag(not is_object, flag, "is a file, not a folder", text)
    return path


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
    if is_remote(folder):  # bucket writes make no temporaries
        return
    for stale in pathlib.Path(folder).glob(f".*{_TEMPORARY_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _write_atomic(path: str | os.PathLike, mode: str, write: Any) -> None:
    """`write(file)` into a temporary file beside `path`, then renames it over `path`, with the
    permissions a plain open() would give (tempfile's are owner-only, unreadable to the other
    users of a shared filesystem). In a bucket, one object upload, atomic by itself."""
    if is_remote(path):
        buffer = io.BytesIO() if "b" in mode else io.StringIO()
        write(buffer)
        data = buffer.getvalue()
        run_path(path).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.",
                                     suffix=_TEMPORARY_SUFFIX, delete=False) as tmp:
        write(tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, _FILE_MODE)
    os.replace(tmp.name, path)


@contextlib.contextmanager
def unchanged_on_failure(folder: str | os.PathLike,
                         keep: Iterable[str] = ()) -> Iterator[None]:
    """Puts back the files directly in `folder` (tables, figures, summaries; not its
    subfolders, nor names in `keep`) as they were, if the block raises: a sweep whose analysis
    fails leaves its earlier results, not a mix of old and new ones. Files the block created
    are removed again. `Diverged` leaves the files as the block wrote them."""
    folder = run_path(folder)
    before = {}
    if folder.is_dir():
        before = {p.name: p.read_bytes() for p in folder.iterdir()
                  if p.is_file() and p.name not in keep}
    try:
        yield
    except Diverged:  # not a failure of the tables: they record which runs diverged
        raise
    except BaseException:
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and path.name not in keep and path.name not in before:
                    path.unlink(missing_ok=True)
        for name, data in before.items():
            path = folder / name
            if not path.is_file() or path.read_bytes() != data:
                _write_atomic(path, "wb", lambda f, data=data: f.write(data))
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`data` replaces `path` whole (a figure, an archive)."""
    _write_atomic(path, "wb", lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`text` replaces `path` whole, through a temporary file of its own (safe beside other
    writers of the same path, e.g. sweep shards on other hosts)."""
    _write_atomic(path, "w", lambda f: f.write(text))


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
    for file in (run_path(workdir) / SNAPSHOT_DIR).glob("*.npz"):
        with file.open("rb") as f, np.load(f) as data:
            out[int(file.stem)] = {k: data[k] for k in data.files}
    return dict(sorted(out.items()))


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / jax scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with run_path(path).open() as f:
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


def prepare_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> RunPath:
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
EXECUTION_FIELDS = ("micro_batches", "xla_cpu_ynnpack", "fsdp", "steps_per_call", "data_prefetch",
                    "data_workers")


def config_differences(found: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Flattened field -> (found, wanted) where two configs differ, execution fields aside."""
    old, new = flatten_config(found), flatten_config(wanted)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and k.rsplit(".", 1)[-1] not in EXECUTION_FIELDS}


def check_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> RunPath:
    """The checks of `prepare_workdir`, writing nothing (every process of a job runs them)."""
    workdir = require_workdir(workdir)
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


def write_config(workdir: RunPath, config: ml_collections.ConfigDict) -> None:
    try:
        if not is_remote(workdir):  # a bucket has no folders to create
            workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / CONFIG_FILE, config_to_dict(config))
    except OSError as e:
        raise validation.ConfigError(f"--workdir={workdir} is not writable: {e}") from e


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    path = run_path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    A bucket has no appends: there the whole file is uploaded again at each row (one object
    write, so a reader sees every row up to the newest or the previous version whole)."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True):
        self._workdir = run_path(workdir)
        self._path = self._workdir / METRICS_FILE
        self._remote = is_remote(self._workdir)
        # Rows past the checkpoint a run resumes from were made by the killed process; the
        # resumed run will log those steps again.
        # From step 0 (no checkpoint) none is kept: the run logs step 0 again.
        kept = ([r for r in read_metrics(self._workdir) if r["step"] <= resume_step]
                if resume_step else [])
        self._lines = [json.dumps(row, default=_to_builtin) + "\n" for row in kept]
        self._rewrite(kept)
        self._file = None if self._remote else open(self._path, "a")
        self._tensorboard, self._resume_step = tensorboard, resume_step
        self._tb = None  # opened at the first row: a finished run's rerun adds no events file

    def _rewrite(self, rows: Iterable[dict[str, Any]]) -> None:
        if self._remote:
            self._path.write_text("".join(self._lines))
            return
        tmp = self._path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row, default=_to_builtin) + "\n")
        os.replace(tmp, self._path)

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=_to_builtin, sort_keys=True) + "\n"
        if self._remote:
            self._lines.append(line)
            self._path.write_text("".join(self._lines))
        else:
            self._file.write(line)
            self._file.flush()
        if self._tensorboard and self._tb is None:
            # TensorBoard drops the killed run's events from this step on.
            self._tb = _summary_writer_class()(os.fspath(self._workdir / TENSORBOARD_DIR),
                                               purge_step=self._resume_step + 1
                                               if self._resume_step else 0)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self._file is not None:
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
    else:
        sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    from tensorboardX import record_writer

    # Event files in a bucket go through epath, as every other file of the run does (one set
    # of credentials), rather than through tensorboardX's own google-cloud-storage client.
    record_writer.register_writer_factory("gs", _BucketRecordWriterFactory())
    return SummaryWriter


class _BucketRecordWriter:
    """An event file in a bucket: kept in memory, uploaded whole at each flush (every two
    minutes and at close: tensorboardX's schedule), since an object cannot be appended to."""

    def __init__(self, path: str):
        self._path, self._buffer = run_path(path), io.BytesIO()

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        self._path.write_bytes(self._buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _BucketRecordWriterFactory:
    def open(self, path: str) -> _BucketRecordWriter:
        return _BucketRecordWriter(path)

    def directory_check(self, path: str) -> None:
        del path  # a bucket has no folders to create


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


@contextlib.contextmanager
def flags_under(prefix: str) -> Iterator[None]:
    """Names a nested config's errors by their full flag: checks of `config.base` that fail
    on `num_steps` say --config.base.num_steps, the flag a user passes to the sweep."""
    try:
        yield
    except Diverged:
        raise
    except validation.ConfigError as e:
        if not prefix or e.field is None or e.reason is None:
            raise
        field = f"{prefix}{e.field}"
        shown = "" if e.value is None else f"={e.value!r}"
        raise validation.ConfigError(f"--config.{field}{shown}: {e.reason}", field, e.value,
                                     e.reason) from e
