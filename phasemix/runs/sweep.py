"""Sweeps: a grid of config overrides, each run in its own workdir, one tidy table for all.

A sweep is a base config plus a list of override dicts (`grid` builds the Cartesian product of
axes). Every run keeps the run output contract in `<sweep_dir>/runs/<name>/`; the table
`<sweep_dir>/results.csv` has one row per run with the flattened config and the run's summary
as columns. Re-running the same sweep skips finished runs and resumes interrupted ones.

Runs execute one after another in this process (`workers=1`), in `workers` spawned processes,
each pinned to its own share of the CPUs (Linux) so that the processes do not fight over them, or
(`group_fn` given) as vmapped groups: runs that differ only in `vmapped_fields` (seed, learning
rate, weight decay, init scale, training-set size, ...), each group one vmapped program.
Which is fastest depends on the machine: `benchmarks/sweep_runner.py` measures it; groups are
the default on accelerators (`vmapped_groups_by_default`).

On a cluster, `shard=Shard(i, n)` runs only every n-th run of the grid, from the i-th: n jobs
(a SLURM job array, a loop over TPU VMs) share the sweep folder, and each rewrites the table
with every run finished so far, by any of them, so that it ends as the unsharded sweep's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import ml_collections
from absl import logging

from phasemix.base import distributed, progress, run_io, validation
# The on-disk layout, shared with the analyses that read finished sweeps (re-exported).
# The on-disk layout, re-exported: sweeps and their analyses call sweep.read_table etc.
from phasemix.base.results_table import (  # noqa: F401
    RESULTS_FILE, RUNS_DIR, read_table, run_name, write_table)

RunFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
# Trains a vmapped group (runs that differ only in the sweep's `vmapped_fields`) as one
# program: (configs, workdirs) -> summaries.
GroupRunFn = Callable[[list[ml_collections.ConfigDict], list[str]], list[dict[str, Any]]]
ValidateFn = Callable[[ml_collections.ConfigDict], None]
RUN_SECONDS_FILE = "sweep_seconds.json"  # in a run's folder: the sweep's wall time for it


@dataclasses.dataclass(frozen=True)
class Shard:
    """Part `index` (0-based) of `count`: the runs at grid positions index, index + count, ..."""

    index: int
    count: int

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard | None:
    """'i/n' (the --shard flag) -> Shard(i, n); None or '' -> the whole grid."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        validation.fail_flag("shard", "must be i/n, e.g. 0/4 for the first of 4 parts", text)
    index, count = int(match[1]), int(match[2])
    validation.require_flag(count >= 1 and index < count, "shard",
                            f"needs 0 <= i < n (i is 0-based), got i={index}, n={count}", text)
    return Shard(index, count)


def grid(axes: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The Cartesian product of `axes` (last axis fastest), each merged with `fixed`."""
    fixed = dict(fixed or {})
    for key, values in axes.items():
        if not values:
            raise validation.ConfigError(f"sweep axis {key!r} has no values")
        if key in fixed and any(v != fixed[key] for v in values):
            raise validation.ConfigError(
                f"contradictory overrides: {key} is fixed to {fixed[key]!r} and swept over "
                f"{list(values)}")
    keys = list(axes)
    return [{**fixed, **dict(zip(keys, combo))}
            for combo in itertools.product(*(axes[k] for k in keys))]


def apply_overrides(base: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `base` with dotted `overrides` set; an unknown field is a ConfigError."""
    config = copy.deepcopy(base)
    for dotted, value in overrides.items():
        node = config
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise validation.ConfigError(f"sweep override {dotted!r}: no config field "
                                             f"{part!r} (known: {sorted(node.keys())})")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise validation.ConfigError(f"sweep override {dotted!r}: no config field {leaf!r} "
                                         f"(known: {sorted(node.keys())})")
        try:
            node[leaf] = value
        except TypeError as e:
            reason = (f"must be of type {node.get_type(leaf).__name__}, not "
                      f"{type(value).__name__}")
            raise validation.ConfigError(f"sweep override {dotted}={value!r}: {e}", dotted,
                                         value, reason) from e
    return config




def _finished(workdir: run_io.RunPath,
              config: ml_collections.ConfigDict) -> tuple[dict[str, Any], float | None] | None:
    """The run's summary and sweep seconds if it completed with exactly this config, else None."""
    try:
        found = run_io.read_json(workdir / run_io.CONFIG_FILE)
        if run_io.config_differences(found, run_io.config_to_dict(config)):
            return None
        summary = run_io.read_json(workdir / run_io.SUMMARY_FILE)
    except (OSError, ValueError):
        return None
    diverged = summary.get("status") == run_io.DIVERGED
    if summary.get("final_step") != config.get("num_steps") and not diverged:
        return None
    # Written by the sweep once the run has returned: a summary alone may be one the run
    # writes before its last outputs (a run killed then is run again, and trains nothing).
    try:
        seconds = run_io.read_json(workdir / RUN_SECONDS_FILE)["run_seconds"]
    except (OSError, ValueError, KeyError):
        return None
    return summary, seconds


def _check_writable(sweep_dir: run_io.RunPath) -> None:
    if run_io.is_remote(sweep_dir):  # a bucket: no folders to create, no temporary to probe with
        run_io.require_workdir(sweep_dir)
        return
    try:
        (sweep_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        # A name of its own: shards on other hosts may probe the same folder at the same time.
        with tempfile.NamedTemporaryFile(dir=sweep_dir, prefix=".write_probe."):
            pass
    except OSError as e:
        raise validation.ConfigError(f"--workdir={sweep_dir} is not writable: {e}") from e


def _run_one(run_fn: RunFn, config: ml_collections.ConfigDict, workdir: str) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    summary = run_fn(config, workdir)
    return summary, time.monotonic() - start


def _start_worker(parent_pid: int) -> None:
    """Quiet logs; on Linux, SIGTERM when the sweep's process dies (even by SIGKILL), so that
    a worker checkpoints its run and exits instead of training on as an orphan."""
    logging.set_verbosity(logging.WARNING)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)


def worker_cpus(workers: int) -> list[set[int] | None]:
    """The CPUs each of `workers` processes may use: an equal contiguous share of this
    process's, or one each in turn when there are more workers than CPUs; None where the OS
    cannot pin (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return [None] * workers
    cpus = sorted(os.sched_getaffinity(0))
    if workers >= len(cpus):
        return [{cpus[i % len(cpus)]} for i in range(workers)]
    return [set(cpus[i * len(cpus) // workers:(i + 1) * len(cpus) // workers])
            for i in range(workers)]


# JAX's share of an accelerator's memory that each process preallocates (JAX's default: 0.75,
# so two processes on one GPU run out of memory); jaxlib also reads the newer name.
MEMORY_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
_MEMORY_FRACTION_NAMES = (MEMORY_FRACTION, "XLA_CLIENT_MEM_FRACTION")
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
WORKERS_MEMORY = 0.9  # of an accelerator's memory, split equally between the workers
_preallocate_turned_off = False  # by `keep_memory_for_workers`, in this process only


def keep_memory_for_workers(config: ml_collections.ConfigDict) -> None:
    """Keeps a sweep's process that only hands runs to worker processes (`config.workers` > 1,
    runs not vmapped) from taking an accelerator's memory: JAX preallocates 75% of a GPU when
    its backend starts, which an experiment's checks do (a device count), and the workers
    would find too little left. Call it before anything starts a backend; the workers
    preallocate their own shares again."""
    global _preallocate_turned_off
    vmapped = config.get("vmap_runs", False)
    if vmapped is None:  # the backend's default, read without starting it
        vmapped = backend_platform() in ("gpu", "tpu")
    in_workers = config.get("workers", 1) > 1 and not vmapped
    if in_workers and PREALLOCATE not in os.environ:
        os.environ[PREALLOCATE] = "false"
        _preallocate_turned_off = True


def backend_platform() -> str | None:
    """The platform JAX runs on here, found without starting a backend (on a GPU that would
    preallocate its memory in this process): the started backend's, else the first of
    JAX_PLATFORMS, else 'tpu' on a TPU VM; None where it is not known (a GPU or the CPU)."""
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return jax.default_backend()
    if jax.config.jax_platforms:
        return jax.config.jax_platforms.split(",")[0].strip().lower()
    return "tpu" if distributed.on_tpu_vm() else None


def worker_environment(workers: int, platform: str | None = None,
                       environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The variables each of `workers` processes on one machine starts with, on top of this
    process's (None: unset): an equal share of the accelerator's memory, unless the user set
    one (respected if the workers fit in it). A TPU's chips cannot be shared between processes:
    more than one worker is refused there."""
    environ = os.environ if environ is None else environ
    if workers > 1 and platform == "tpu":
        validation.fail("workers", "must be 1 on a TPU, whose chips one process takes whole; "
                        "use --shard=i/n over TPU VMs, or vmapped seed groups", workers)
    env: dict[str, str | None] = {PREALLOCATE: None} if _preallocate_turned_off else {}
    given = next((name for name in _MEMORY_FRACTION_NAMES if environ.get(name)), None)
    if given is None:
        return {**env, MEMORY_FRACTION: f"{WORKERS_MEMORY / workers:.3g}"}
    try:
        fraction = float(environ[given])
    except ValueError:
        fraction = float("nan")
    # On the CPU the variable has no effect: no reason to refuse.
    if platform != "cpu" and not fraction * workers <= 1:
        validation.fail("workers", f"{given}={environ[given]} gives each worker that share of "
                        f"the accelerator's memory, more than all of it for {workers} workers; "
                        f"set it to at most {1 / workers:.3g}, or unset it (each worker then "
                        f"gets {WORKERS_MEMORY / workers:.3g})", workers)
    return env


@contextlib.contextmanager
def _environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """`changes` applied to this process's environment meanwhile: a spawned process starts
    with the environment of the process that starts it, before its first import."""
    before = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            _set_variable(name, value)
        yield
    finally:
        for name, value in before.items():
            _set_variable(name, value)


def _set_variable(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _worker_loop(connection: multiprocessing.connection.Connection, parent_pid: int,
                 cpus: set[int] | None) -> None:
    """Trains the runs the sweep sends, one at a time, until it sends None. A preempted run
    (SystemExit) ends the process with its exit code: the sweep stops, rerun to resume."""
    if cpus is not None:
        # Before JAX starts its CPU backend, which sizes its thread pools to the CPUs this
        # process may use. (XLA_FLAGS such as --xla_cpu_multi_thread_eigen=false left YNNPACK's
        # and the runtime's threads running: a "single-threaded" worker used 1.8 cores.)
        os.sched_setaffinity(0, cpus)
    _start_worker(parent_pid)
    while (task := connection.recv()) is not None:
        run_fn, config, workdir = task
        try:
            reply = ("done", _run_one(run_fn, config, workdir))
        except run_io.Diverged as error:  # a result of the sweep, not a failure
            reply = ("diverged", error)
        except Exception as error:  # re-raised in the sweep's process
            reply = ("error", error, traceback.format_exc())
        try:
            connection.send(reply)
        except Exception:  # an exception that does not pickle
            connection.send(("error", RuntimeError(repr(reply[1])), reply[2]))


class _WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process, as its cause."""


def _run_in_workers(todo: list[tuple[str, ml_collections.ConfigDict]], run_fn: RunFn,
                    workers: int, sweep_dir: run_io.RunPath,
                    record: Callable[[str, dict[str, Any], float], None],
                    record_diverged: Callable[[str, run_io.Diverged, float], None],
                    failed: Callable[[str, BaseException], BaseException]) -> None:
    """Trains `todo` in `workers` spawned processes, recording each run as it finishes.

    A run that fails, or a worker that dies (a preempted run), stops the sweep: the other
    workers get SIGTERM, which checkpoints their runs, and the sweep raises. This is our own
    small pool because `concurrent.futures.ProcessPoolExecutor` (Python 3.11) can miss the
    death of a worker it started on demand after its manager thread began waiting, and hang.
    """
    if not todo:  # a rerun of a finished sweep: no worker to start
        return
    context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    started: list[tuple[multiprocessing.connection.Connection, Any]] = []
    finished = False
    previous_handler = _stop_on_sigterm()
    try:
        count = min(workers, len(todo))
        with _environment(worker_environment(count, backend_platform())):
            for cpus in worker_cpus(count):
                ours, theirs = context.Pipe()
                process = context.Process(target=_worker_loop, args=(theirs, os.getpid(), cpus))
                process.start()
                theirs.close()  # so that the worker's death reads as end-of-file here
                started.append((ours, process))
        queued, idle = list(todo), list(started)
        busy: dict[multiprocessing.connection.Connection, tuple[str, Any]] = {}
        while queued or busy:
            while queued and idle:
                connection, process = idle.pop()
                name, config = queued.pop(0)
                connection.send((run_fn, config, str(sweep_dir / RUNS_DIR / name)))
                busy[connection] = (name, process)
            for connection in multiprocessing.connection.wait(list(busy)):
                name, process = busy.pop(connection)
                try:
                    reply = connection.recv()
                except EOFError:
                    process.join()
                    raise _worker_died(name, process.exitcode) from None
                if reply[0] == "error":
                    raise failed(name, reply[1]) from _WorkerTraceback(
                        f"run {name}:\n{reply[2]}")
                idle.append((connection, process))
                if reply[0] == "diverged":
                    record_diverged(name, reply[1], None)
                else:
                    record(name, *reply[1])
        finished = True
    finally:
        for connection, process in started:
            if finished:
                connection.send(None)
            elif process.is_alive():
                process.terminate()
        for _, process in started:
            process.join()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _stop_on_sigterm() -> Any:
    """Makes SIGTERM to the sweep's process (a scheduler's preemption, `kill`) stop
    the sweep as a failed run does: its workers get SIGTERM and the sweep waits while they
    checkpoint, then exits with the preempted code; without this it died at once, before the
    workers had saved. Returns the previous handler (None off the main thread: not set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the wait
        _say("SIGTERM: the workers are saving their runs; rerun the same command to resume")
        raise SystemExit(run_io.PREEMPTED_EXIT_CODE)

    return signal.signal(signal.SIGTERM, stop)


def _worker_died(name: str, exit_code: int | None) -> BaseException:
    if exit_code == run_io.PREEMPTED_EXIT_CODE:
        _say(f"run {name} was preempted: the sweep stops; rerun the same command to resume")
        return SystemExit(exit_code)
    return RuntimeError(f"the worker training run {name} died (exit code {exit_code}; "
                        "negative: killed by that signal, e.g. -9 when out of memory); "
                        "rerun the same command to resume from the last checkpoints")


def vmapped_groups_by_default() -> bool:
    """Whether a sweep trains vmapped groups when its config leaves the choice open: on GPUs
    and TPUs, where one program of many small runs keeps the device busy; on a CPU, worker
    processes (docs/performance.md, Whole runs)."""
    import jax

    return jax.default_backend() in ("gpu", "tpu")


def _vmapped_groups(todo: list[tuple[str, ml_collections.ConfigDict]],
                    vmapped_fields: Sequence[str], max_runs: int
                    ) -> list[list[tuple[str, ml_collections.ConfigDict]]]:
    """Runs whose configs are equal but for `vmapped_fields`, grouped in grid order, each group
    split into parts of at most `max_runs` runs (0: any number) to bound its memory."""
    groups: dict[str, list[tuple[str, ml_collections.ConfigDict]]] = {}
    for name, config in todo:
        key = repr(sorted((k, repr(v)) for k, v in run_io.flatten_config(config).items()
                          if k not in vmapped_fields))
        groups.setdefault(key, []).append((name, config))
    size = max_runs or max(len(todo), 1)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def run_sweep(base: ml_collections.ConfigDict, overrides: Sequence[Mapping[str, Any]],
              sweep_dir: str | os.PathLike, run_fn: RunFn, validate_fn: ValidateFn | None = None,
              workers: int = 1, group_fn: GroupRunFn | None = None,
              vmapped_fields: Sequence[str] = ("seed",), max_vmapped_runs: int = 0,
              shard: Shard | None = None,
              grid_flags: Mapping[str, str] | None = None,
              base_flag: str = "", check_dropped: bool = True) -> list[dict[str, Any]]:
    """Runs every override set not yet finished (of `shard`'s part only, if given) and returns
    the table's rows (grid order): every run finished so far, whichever shard ran it.

    Everything is checked before the first run starts: an empty grid, unknown fields, two
    runs that would share a folder, invalid configs (`validate_fn`), an unwritable folder.
    `grid_flags` maps an override's field to the sweep's flag its values come from (e.g.
    'task.train_count' -> 'train_counts'), so that a bad value's error names that flag;
    `base_flag` is where the sweep's config holds `base` (e.g. 'base'), for the other fields.
    With `group_fn`, the runs that differ only in `vmapped_fields` (which `group_fn` must
    accept varying) train as one program, at most `max_vmapped_runs` at a time (0: all).
    In a job of several processes the runs are trained by all of them, one after another.

    A run that diverges (`run_io.Diverged`) is a result: its row has status 'diverged' and the
    sweep goes on. A grid that leaves out runs the folder has finished is refused
    (`check_dropped`; off for a first part of a study whose later call adds the rest).
    """
    if not overrides:
        raise validation.ConfigError("the sweep grid is empty: nothing to run")
    validation.require(isinstance(workers, int) and workers >= 1, "workers",
                       "must be a positive number of processes", workers)
    validation.require(isinstance(max_vmapped_runs, int) and max_vmapped_runs >= 0,
                       "max_vmapped_runs", "must be 0 (no limit) or a positive number of runs",
                       max_vmapped_runs)
    if workers > 1 and distributed.is_multi_process():
        validation.fail("workers", "must be 1 in a multi-process job, whose processes train "
                        "each run together; use --shard to spread runs over jobs", workers)
    if workers > 1 and group_fn is None:  # refused before any run if the workers cannot
        worker_environment(workers, backend_platform())  # share the accelerator
    sweep_dir = run_io.run_path(sweep_dir)  # a local folder or a bucket's gs://... path
    runs = []
    for override in overrides:
        try:
            config = apply_overrides(base, override)
            if validate_fn is not None:
                validate_fn(config)
        except validation.ConfigError as e:
            raise _run_config_error(e, override, grid_flags or {}, base_flag) from e
        runs.append((run_name(override), dict(override), config))
    names = [name for name, _, _ in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise validation.ConfigError(f"the sweep grid repeats runs: {duplicates}")
    if check_dropped:
        _refuse_dropped_runs(sweep_dir, runs, grid_flags or {})
    _check_writable(sweep_dir)
    overrides_of = {name: override for name, override, _ in runs}
    prefix = f"{base_flag}." if base_flag else ""

    results: dict[str, tuple[dict[str, Any], float | None]] = {}
    # This process's own runs are recorded when their workers report them, not when their
    # summaries appear on disk: else a run would be counted twice in the progress line.
    own: set[str] = set()

    def collect_finished() -> None:  # including those other shards finished meanwhile
        for name, _, config in runs:
            if name not in results and name not in own:
                found = _finished(sweep_dir / RUNS_DIR / name, config)
                if found is not None:
                    results[name] = found

    collect_finished()
    todo = [(name, config) for position, (name, _, config) in enumerate(runs)
            if name not in results and (shard is None or shard.owns(position))]
    own.update(name for name, _ in todo)
    mode = "vmapped groups" if group_fn else f"{workers} worker(s)"
    part = "" if shard is None else f" in shard {shard}"
    _say(f"sweep {sweep_dir}: {len(runs)} runs, {len(results)} already finished, "
        f"{len(todo)} to run{part} with {mode}")

    def table_rows() -> list[dict[str, Any]]:
        rows = []
        for name, override, config in runs:
            if name not in results:
                continue
            summary, seconds = results[name]
            summary = dict(summary)
            status = summary.pop("status", FINISHED)
            if status == run_io.DIVERGED and prefix:  # the flags as this sweep spells them
                summary["error"] = str(summary.get("error", "")).replace(
                    "--config.", f"--config.{prefix}")
            rows.append({"run": name, "status": status,
                         **{f"sweep.{k}": v for k, v in override.items()},
                         **run_io.flatten_config(config), **summary,
                         "run_seconds": seconds})
        return rows

    bar = progress.RunsProgress(len(runs), len(todo), 1 if group_fn else workers,
                                "" if shard is None else f"shard {shard}")

    def record(name: str, summary: dict[str, Any], seconds: float | None) -> None:
        results[name] = (summary, seconds)
        if distributed.is_primary():
            run_io.write_json_atomic(sweep_dir / RUNS_DIR / name / RUN_SECONDS_FILE,
                                     {"run_seconds": seconds})
        collect_finished()
        if distributed.is_primary():
            write_table(table_rows(), sweep_dir / RESULTS_FILE)
        done = (f"{name} diverged at step {summary.get('diverged_step')}"
                if summary.get("status") == run_io.DIVERGED
                else f"finished {name} in {seconds:.0f}s")
        _say(bar.line(len(results), seconds or 0.0, done))

    def record_diverged(name: str, error: run_io.Diverged, seconds: float | None) -> None:
        """A diverged run is a result: marked in the table, and the sweep goes on."""
        summary = run_io.diverged_summary(sweep_dir / RUNS_DIR / name) or {
            "status": run_io.DIVERGED, "diverged_step": error.step,
            "diverged_quantity": error.quantity, "error": str(error)}
        record(name, summary, seconds)

    def failed(name: str, error: BaseException) -> BaseException:
        """A run's bad config, named by the sweep's flag (else the error itself)."""
        if isinstance(error, validation.ConfigError) and error.reason is not None:
            return _run_config_error(error, overrides_of[name], grid_flags or {}, base_flag)
        return error

    def run_one(name: str, config: ml_collections.ConfigDict) -> None:
        start = time.monotonic()
        try:
            summary, seconds = _run_one(run_fn, config, str(sweep_dir / RUNS_DIR / name))
        except run_io.Diverged as error:
            record_diverged(name, error, time.monotonic() - start)
            return
        except validation.ConfigError as error:
            raise failed(name, error) from error
        record(name, summary, seconds)

    if group_fn is not None:
        for group in _vmapped_groups(todo, vmapped_fields, max_vmapped_runs):
            start = time.monotonic()
            try:
                summaries = group_fn([c for _, c in group],
                                     [str(sweep_dir / RUNS_DIR / name) for name, _ in group])
            except run_io.Diverged as error:
                # The runs of the group that diverged are results; the others, stopped with
                # them, are trained one by one from their checkpoints.
                for name, config in group:
                    if run_io.diverged_summary(sweep_dir / RUNS_DIR / name) is not None:
                        record_diverged(name, error, None)
                    else:
                        run_one(name, config)
                continue
            except validation.ConfigError as error:
                raise failed(group[0][0], error) from error
            seconds = (time.monotonic() - start) / len(group)  # each run's share of the group
            for (name, _), summary in zip(group, summaries):
                record(name, summary, seconds)
    elif workers <= 1:
        for name, config in todo:
            run_one(name, config)
    else:
        _run_in_workers(todo, run_fn, workers, sweep_dir, record, record_diverged, failed)
    collect_finished()
    rows = table_rows()
    if distributed.is_primary():
        write_table(rows, sweep_dir / RESULTS_FILE)
    diverged = [row["run"] for row in rows if row["status"] == run_io.DIVERGED]
    if diverged:
        _say(f"{len(diverged)} run(s) diverged (status column of {sweep_dir / RESULTS_FILE}): "
             f"{', '.join(diverged)}")
    return rows


FINISHED = "finished"  # the `status` of a run that trained every step (else run_io.DIVERGED)


def finished_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of runs that trained every step: the ones an analysis can use."""
    return [dict(row) for row in rows if row.get("status", FINISHED) == FINISHED]


def require_none_diverged(rows: Iterable[Mapping[str, Any]], sweep_dir: str | os.PathLike
                          ) -> None:
    """For a study whose analysis needs every run: raises `Diverged` (exit code 3) naming the
    runs that diverged and the flags to change, once the others have trained."""
    diverged = [row for row in rows if row.get("status", FINISHED) == run_io.DIVERGED]
    if diverged:
        first = diverged[0]
        raise run_io.Diverged(
            f"{len(diverged)} run(s) of the sweep diverged (status column of "
            f"{run_io.run_path(sweep_dir) / RESULTS_FILE}), e.g. run {first['run']}: "
            f"{first.get('error', 'diverged')}", first.get("diverged_step"),
            first.get("diverged_quantity"))


def _refuse_dropped_runs(sweep_dir: run_io.RunPath, runs: list[tuple[str, dict[str, Any], Any]],
                         grid_flags: Mapping[str, str]) -> None:
    """A grid that leaves out runs the folder finished would rewrite the tables and figures
    without them: refused, naming the flag whose values no longer include theirs."""
    folder = sweep_dir / RUNS_DIR
    if not folder.is_dir():
        return
    names = {name for name, _, _ in runs}
    dropped = sorted(p.name for p in folder.iterdir()
                     if p.name not in names and (p / RUN_SECONDS_FILE).is_file())
    if not dropped:
        return
    values: dict[str, set[str]] = {}
    for _, override, _ in runs:
        for key, value in override.items():
            values.setdefault(key, set()).add(run_name({key: value}).partition("=")[2])
    flag = "workdir"
    for part in dropped[0].split(","):
        key, _, value = part.partition("=")
        if key in grid_flags and value not in values.get(key, set()):
            flag = f"config.{grid_flags[key]}"
            break
    raise validation.ConfigError(
        f"--{flag}: the grid leaves out {len(dropped)} finished run(s) of {sweep_dir} (e.g. "
        f"{dropped[0]}), which its tables and figures would drop; rerun with a grid that "
        "includes them (extra values are added), or use a new --workdir")


def _run_config_error(error: validation.ConfigError, override: Mapping[str, Any],
                      grid_flags: Mapping[str, str], base_flag: str) -> validation.ConfigError:
    """A run's invalid config, named by the flag a user would change: the sweep's flag that
    set the value, else the base config's field (under `base_flag`)."""
    run, field = run_name(override), error.field
    if error.reason is not None and field in override and field in grid_flags:
        flag, value = grid_flags[field], override[field]
        hint = (f" (several strings are written --config.{flag}='(\"a\",\"b\")')"
                if isinstance(value, str) and "," in value else "")
        return validation.ConfigError(f"--config.{flag}: the value {value!r} (run {run}): "
                                      f"{error.reason}{hint}")
    if error.reason is not None and field is not None and field not in override and base_flag:
        shown = "" if error.value is None else f"={error.value!r}"
        return validation.ConfigError(f"--config.{base_flag}.{field}{shown}: {error.reason} "
                                      f"(run {run})")
    return validation.ConfigError(f"run {run}: {error}")


def _say(line: str) -> None:
    if distributed.is_primary():
        print(line, flush=True)
