"""One process of a multi-process test job: grokking's smoke run, optionally faulted at a step.

  python tests/distributed_worker.py WORKDIR KILL_PROCESS KILL_AT SIGNAL [cli flags...]

Process KILL_PROCESS sends itself SIGNAL (KILL or TERM) when it fetches the batch of step
KILL_AT (-1: never), once every checkpoint before that step is on disk (saves are asynchronous:
one still in flight when a process dies is lost, and the test wants a known resume point).
The remaining flags are those of phasemix.runs.cli (--coordinator_address, ...)
and --config.<field>=<value> overrides of the smoke config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import sys
import time

import grain

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import grokking  # noqa: E402
from phasemix.base import distributed
from phasemix.training import train


class SignalAt:
    """A batch source that sends this process `signum` when the batch of step `at` is fetched,
    after waiting for the checkpoint `wait_for` (a folder) to be committed."""

    def __init__(self, batches, at: int, signum: int, wait_for: pathlib.Path | None):
        self._batches, self._at, self._signum = batches, at, signum
        self._wait_for = wait_for

    def __len__(self):
        return len(self._batches)

    def __getitem__(self, step):
        if step == self._at:
            deadline = time.monotonic() + 120
            while self._wait_for is not None and not self._wait_for.is_dir():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self._wait_for} was never written")
                time.sleep(0.1)
            os.kill(os.getpid(), self._signum)
        return self._batches[step]


def main(argv: list[str]) -> None:
    workdir, kill_process, kill_at, signame = argv[1], int(argv[2]), int(argv[3]), argv[4]
    flags, overrides = {}, {}
    for arg in argv[5:]:
        key, _, value = arg.lstrip("-").partition("=")
        if key.startswith("config."):
            overrides[key[len("config."):]] = json.loads(value)
        else:
            flags[key] = value
    launch = distributed.detect(flags.get("coordinator_address"),
                                int(flags["num_processes"]) if "num_processes" in flags else None,
                                int(flags["process_id"]) if "process_id" in flags else None)
    distributed.initialize(launch, float(flags.get("distributed_timeout", 60)),
                           int(flags.get("heartbeat_timeout", 10)))
    import jax

    config = grokking.get_config("smoke")
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    task = grokking.make_task(config, jax.device_count())
    if jax.process_index() == kill_process:
        saved = kill_at - kill_at % config.checkpoint_every  # the last checkpoint before it
        wait_for = pathlib.Path(workdir, "checkpoints", str(saved)) if saved else None
        task = dataclasses.replace(task, train_batches=grain.MapDataset.source(
            SignalAt(task.train_batches, kill_at, getattr(signal, f"SIG{signame}"), wait_for)))
    summary = train.train_and_evaluate(config, workdir, task)
    print(json.dumps({"process": jax.process_index(), "summary": summary}, default=str))


if __name__ == "__main__":
    main(sys.argv)
