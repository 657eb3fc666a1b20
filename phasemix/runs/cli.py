"""The shared `main` of experiment entry points: flags, quiet logs, clear config errors.

Multi-process flags (see launch/README.md): --coordinator_address, --num_processes and
--process_id start a job by hand; inside a SLURM step with several tasks, or on a TPU VM, they
are found automatically; --distributed=off forces one process.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import re
import sys
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from phasemix.base import distributed, run_io, validation

RunFn = Callable[..., dict[str, Any]]  # (config, workdir[, shard=...]) -> summary
XLA_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "phasemix", "xla")


def use_compilation_cache(path: str) -> None:
    """Keeps compiled XLA programs in `path` ('' : off), for this process and the processes it
    starts (sweep workers): a rerun, or the next run of a sweep, loads what the first compiled.

    JAX_COMPILATION_CACHE_DIR, where set, wins. Programs that compiled in under 0.2 s are not
    kept (JAX keeps >= 1 s by default; a fit's many small predict programs take ~0.3 s each).
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, where set, wins.
    """
    path = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", path)
    min_secs = float(os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2"))
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)


def _not_orbax(record) -> bool:
    # Orbax logs every save/restore step at INFO through absl; keep its warnings only.
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _define_distributed_flags() -> None:
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0, which runs the coordinator (multi-process).")
    flags.DEFINE_integer("num_processes", None, "How many processes the job has.")
    flags.DEFINE_integer("process_id", None, "This process's index, in [0, num_processes).")
    flags.DEFINE_enum("distributed", "auto", ["auto", "off"],
                      "auto: use the flags above, else SLURM's or the TPU VM's environment.")
    flags.DEFINE_float("distributed_timeout", distributed.DEFAULT_TIMEOUT_S,
                       "Seconds to reach the coordinator and for every process to join.")
    flags.DEFINE_integer("heartbeat_timeout", distributed.DEFAULT_HEARTBEAT_TIMEOUT_S,
                         "Seconds of silence after which a process counts as dead and the "
                         "others stop.")


def _start_distributed() -> None:
    f = flags.FLAGS
    launch = distributed.detect(f.coordinator_address, f.num_processes, f.process_id,
                                mode=f.distributed)
    distributed.initialize(launch, f.distributed_timeout, f.heartbeat_timeout)
    if launch.multi_process and not distributed.is_primary():
        logging.set_verbosity(logging.WARNING)  # process 0 reports progress for the job


def _exit_on_config_error(error: Exception) -> None:
    """Exits with one line naming the flag for a bad --config (a config file's unknown variant,
    an override of a field the config lacks), where absl and ml_collections print a traceback."""
    if isinstance(error, flags.Error):
        text = str(error)
        if "ConfigError: " in text:  # raised by get_config; ml_collections quotes its traceback
            sys.exit(f"error: {text.rsplit('ConfigError: ', 1)[1].strip()}")
        sys.exit(f"error: {text}\nPass --helpshort or --helpfull to see help on flags.")
    if isinstance(error, (AttributeError, KeyError)):  # ml_collections: no such field
        text = str(error)
        field = re.search(r"'([^'\\]+)\\?'", text)
        suggestion = re.search(r'Did you mean "([^"]+)"', text)
        sys.exit(f"error: a --config.<field> flag names a field the config does not have"
                 f"{f': {field[1]!r}' if field else ''}"
                 f"{f' (did you mean {suggestion[1]!r}?)' if suggestion else ''}")
    raise error


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        _exit_on_config_error(e)  # exits, or re-raises what is not a config error


def main(run: RunFn, config_file: str, default_workdir: str, sweep: bool = False) -> None:
    """Defines --config (path[:variant]) and --workdir, then runs `run(config, workdir)`.

    With `sweep`, also --shard=i/n: run only that part of the grid, as `run(..., shard=...)`.
    """
    try:  # the overrides on the command line are checked here, against the default config
        config_flags.DEFINE_config_file("config", default=config_file,
                                        help_string="Config file, path[:variant].")
    except (flags.Error, AttributeError, KeyError) as e:
        _exit_on_config_error(e)
    flags.DEFINE_string("workdir", default_workdir, "Output folder; re-running resumes it.")
    flags.DEFINE_string("xla_cache", XLA_CACHE_DIR, "Folder that keeps compiled XLA programs "
                        "between runs ('' : off; JAX_COMPILATION_CACHE_DIR wins).")
    _define_distributed_flags()
    if sweep:
        flags.DEFINE_string("shard", None, "i/n: run only part i (0-based) of n of the grid, "
                            "e.g. from a SLURM job array; the parts share one results table.")

    def _main(argv: list[str]) -> None:
        del argv
        logging.get_absl_handler().addFilter(_not_orbax)
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        if not isinstance(config, ml_collections.ConfigDict):  # a file that failed to load
            sys.exit(f"error: --config: could not load {flags.FLAGS['config'].config_filename}"
                     " (the part before any ':' must be a config file's path)")
        if not validation.is_folder_or_absent(flags.FLAGS.xla_cache):
            sys.exit(f"error: --xla_cache={flags.FLAGS.xla_cache}: is a file, not a folder")
        use_compilation_cache(flags.FLAGS.xla_cache)
        try:
            validation.require_seeds(config)
            validation.require_cache_dirs(config)
            _start_distributed()
            if sweep:
                from phasemix.runs import sweep as sweep_lib

                summary = run(config, workdir, shard=sweep_lib.parse_shard(flags.FLAGS.shard))
            else:
                summary = run(config, workdir)
        except run_io.Diverged as e:  # exit 3, not bad input's 1: the flags were valid
            print(f"error: {e}", file=sys.stderr)
            sys.exit(run_io.DIVERGED_EXIT_CODE)
        except validation.ConfigError as e:
            sys.exit(f"error: {e}")
        if distributed.is_primary():
            print(json.dumps(summary, indent=2, sort_keys=True, default=str))
            print(f"outputs in {workdir}")

    app.run(_main, flags_parser=_parse_flags)
