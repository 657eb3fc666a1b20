"""Multi-process JAX: start-up from flags or the cluster's environment, with timeouts, not hangs.

One process runs per host (TPU, CPU) or per GPU (SLURM). `initialize` must run before anything
touches a JAX backend; `cli.main` calls it. With no flags and no multi-process cluster in the
environment it does nothing, so a single process starts exactly as before.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import itertools
import os
import socket
import sys
import threading
import time
from typing import Mapping

import jax
import numpy as np

from phasemix.base import validation

DEFAULT_TIMEOUT_S = 300  # to connect to the coordinator and for every process to join
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # after which a silent process counts as dead
_barrier_ids = itertools.count()


class DistributedError(validation.ConfigError):
    """Processes that cannot form one job; the message names the flag to fix."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins the job: `source` says where the numbers came from."""

    source: str = "single"  # single | flags | slurm | tpu
    coordinator_address: str | None = None  # None: JAX finds it (slurm, tpu)
    num_processes: int | None = None  # None: JAX finds it (tpu)
    process_id: int | None = None

    @property
    def multi_process(self) -> bool:
        return self.source != "single"


def on_tpu_vm() -> bool:
    # What JAX itself checks for a Cloud TPU VM: libtpu installed and TPU chips visible.
    return importlib.util.find_spec("libtpu") is not None and bool(
        glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def detect(coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, mode: str = "auto",
           environ: Mapping[str, str] | None = None) -> Launch:
    """Explicit flags win; else a SLURM step with several tasks, else a TPU VM; else one process."""
    environ = os.environ if environ is None else environ
    if mode not in ("auto", "off"):
        validation.fail_flag("distributed", "must be 'auto' or 'off'", mode)
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    given = {k: v for k, v in explicit.items() if v is not None}
    if mode == "off":
        if given:
            validation.fail_flag("distributed", f"is 'off' but {sorted(given)} are set", mode)
        return Launch()
    if given:
        missing = sorted(k for k in explicit if k not in given)
        if missing:
            validation.fail_flag(missing[0], f"is needed with --{', --'.join(sorted(given))}")
        validation.require_flag(isinstance(num_processes, int) and num_processes >= 1,
                                "num_processes", "must be at least 1", num_processes)
        validation.require_flag(isinstance(process_id, int) and 0 <= process_id < num_processes,
                                "process_id", f"must be in [0, {num_processes}) for "
                                f"--num_processes={num_processes}", process_id)
        _split_address(coordinator_address)
        return Launch("flags", coordinator_address, num_processes, process_id)
    tasks = environ.get("SLURM_NTASKS")
    if tasks is not None and int(tasks) > 1 and "SLURM_PROCID" in environ:
        if "SLURM_STEP_NODELIST" not in environ:
            raise DistributedError(
                f"SLURM_NTASKS={tasks} but this is not a job step: start the processes with "
                "`srun` (see launch/README.md), or pass --distributed=off for one process")
        # JAX derives the coordinator (first node, a port from the job id) from SLURM's variables.
        return Launch("slurm", None, int(tasks), int(environ["SLURM_PROCID"]))
    if on_tpu_vm():
        return Launch("tpu")  # JAX reads the worker list from the TPU VM's metadata
    return Launch()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        validation.fail_flag("coordinator_address", "must be host:port, e.g. 10.0.0.1:1234",
                             address)
    return host.strip("[]"), int(port)


def _wait_for_coordinator(address: str, timeout_s: float, flag: str) -> None:
    """Polls the coordinator's port, so an absent coordinator is a clear error, not an abort."""
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"{flag}: no coordinator answered at {address} within "
                    f"--distributed_timeout={timeout_s:g}s ({e}). Process 0 runs the "
                    "coordinator: check that it started, and that this host can reach that "
                    "address and port") from e
            time.sleep(0.5)


def _abort_after(timeout_s: float, message: str) -> threading.Timer:
    """Ends the process with `message` if not cancelled in time.

    jax.distributed.initialize blocks until every process has joined and, past its own
    timeout, aborts the interpreter with a C++ stack trace; this fires first, with a message
    that says which flag to check.
    """

    def fire() -> None:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def initialize(launch: Launch, timeout_s: float = DEFAULT_TIMEOUT_S,
               heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S) -> None:
    """Joins the job described by `launch` (nothing for a single process); then checks it."""
    if not launch.multi_process:
        return
    validation.require_flag(timeout_s > 0, "distributed_timeout", "must be positive", timeout_s)
    validation.require_flag(heartbeat_timeout_s > 0, "heartbeat_timeout", "must be positive",
                            heartbeat_timeout_s)
    # Cross-process collectives on CPU (tests, local_multiprocess.sh) go over TCP; GPUs and TPUs
    # use their own, and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    start = time.monotonic()
    if launch.source == "flags":
        coordinator = f"--coordinator_address={launch.coordinator_address}"
        if launch.process_id != 0:
            _wait_for_coordinator(launch.coordinator_address, timeout_s, coordinator)
        advice = (f"start --num_processes={launch.num_processes} processes, each with its own "
                  "--process_id and the same --num_processes and --coordinator_address")
    else:
        coordinator = f"the coordinator found by {launch.source}"
        advice = f"check that every process of the {launch.source} job started"
    remaining = max(timeout_s - (time.monotonic() - start), 1.0)
    timer = _abort_after(remaining, f"not every process joined {coordinator} within "
                                    f"--distributed_timeout={timeout_s:g}s: {advice}")
    try:
        jax.distributed.initialize(
            coordinator_address=launch.coordinator_address,
            num_processes=launch.num_processes, process_id=launch.process_id,
            cluster_detection_method="deactivate" if launch.source == "flags" else None,
            initialization_timeout=int(remaining) + 30,  # the timer above fires first
            heartbeat_timeout_seconds=int(heartbeat_timeout_s))
    finally:
        timer.cancel()
    _check_agreement(launch)


def _check_agreement(launch: Launch) -> None:
    """Every process must have been started with the same process count, and ids 0..n-1."""
    from jax.experimental import multihost_utils

    n, me = jax.process_count(), jax.process_index()
    wanted = launch.num_processes if launch.num_processes is not None else n
    seen = multihost_utils.process_allgather(np.array([wanted, me], np.int64))
    counts, ids = sorted(set(seen[:, 0].tolist())), sorted(seen[:, 1].tolist())
    if counts != [n] or ids != list(range(n)):
        raise DistributedError(
            f"--num_processes: the {n} processes that joined were started with "
            f"--num_processes={counts} and --process_id={ids}; every process needs the same "
            f"--num_processes (= the number started) and a distinct --process_id")


def is_multi_process() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_primary() -> bool:
    """Process 0 writes the files a run shares: metrics, summaries, figures."""
    # Checked first so that a single process does not start a backend just to ask.
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def barrier(name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Waits until every process gets here (a no-op for one process); raises after `timeout_s`."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return
    import orbax.checkpoint as ocp

    # The coordination service's barrier: no XLA program, so nothing is compiled in the loop.
    sync = ocp.multihost.get_barrier_sync_fn()
    sync(key=f"phasemix_{name}_{next(_barrier_ids)}", timeout_ms=int(timeout_s * 1000))
