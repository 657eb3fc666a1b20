"""The shared `main` of experiment entry points: flags, quiet logs, clear config errors.

Multi-process flags (see launch/README.md): --coordinator_address, --num_processes and
--process_id start a job by hand; inside a SLURM step with several tasks, or on a TPU VM, they
are found automatically; --distributed=off forces one process.

--help lists an experiment's flags one line each, its config variants included; --print_config
prints the config a command would run (variant and --config.<field> overrides applied) and
exits. A config of another experiment (its `experiment` field) is refused before anything runs.
"""

from __future__ import annotations

import functools
import json
import logging as std_logging
import os
import pathlib
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


# The multi-process flags, in the order --help lists them: (name, what the value looks like).
_DISTRIBUTED_FLAGS = (("coordinator_address", "HOST:PORT"), ("num_processes", "N"),
                      ("process_id", "I"), ("distributed", "auto|off"),
                      ("distributed_timeout", "SECONDS"), ("heartbeat_timeout", "SECONDS"))
# What absl takes for "print the help" (--helpfull, all of absl's flags too, stays absl's).
_HELP_ARGS = frozenset({"--help", "-help", "--helpshort", "-helpshort", "-?", "--help=true",
                        "--helpshort=true"})


def _main_module_name() -> str:
    """The key absl files the entry point's own flags under, so that --helpfull lists them
    first, as the experiment's."""
    return sys.argv[0]


def _define_distributed_flags() -> None:
    module = _main_module_name()
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0, which runs the coordinator (multi-process).",
                        module_name=module)
    flags.DEFINE_integer("num_processes", None, "How many processes the job has.",
                         module_name=module)
    flags.DEFINE_integer("process_id", None, "This process's index, in [0, num_processes).",
                         module_name=module)
    flags.DEFINE_enum("distributed", "auto", ["auto", "off"],
                      "auto: --coordinator_address, --num_processes and --process_id, else "
                      "SLURM's or the TPU VM's environment; off: one process.",
                      module_name=module)
    flags.DEFINE_float("distributed_timeout", distributed.DEFAULT_TIMEOUT_S,
                       "Seconds to reach the coordinator and for every process to join.",
                       module_name=module)
    flags.DEFINE_integer("heartbeat_timeout", distributed.DEFAULT_HEARTBEAT_TIMEOUT_S,
                         "Seconds of silence after which a process counts as dead and the "
                         "others stop.", module_name=module)


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


def _shown_path(path: str) -> str:
    """`path` relative to the current folder when it lies inside it (as a user types it)."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith(os.pardir) else relative


def _entry_point(config_file: str) -> str:
    """How the experiment was started: `experiments.grokking` for `python -m`, else its file."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else _shown_path(config_file)


def _variants(config_file: str) -> tuple[str, ...]:
    """The config file's variants (its VARIANTS), '' (the default) first."""
    main = sys.modules.get("__main__")
    same = getattr(main, "__file__", None) and os.path.abspath(main.__file__) == os.path.abspath(
        config_file)
    return tuple(getattr(main, "VARIANTS", ("",))) if same else ("",)


def _config_help(config_file: str) -> str:
    named = [f":{v}" for v in _variants(config_file) if v]
    return (f"Config file[:variant]: {_shown_path(config_file)}, the default"
            f"{'; variants: ' + ', '.join(named) if named else ''}.")


def _example_override(config: ml_collections.ConfigDict) -> str:
    """A --config.<field> flag of this config: its learning rate where it has one."""
    fields = run_io.flatten_config(config)
    field = next((f for f in ("opt.lr", "base.opt.lr") if f in fields), "seed")
    return f"--config.{field}={fields.get(field, 0)}"


def _help_text(config_file: str, sweep: bool) -> str:
    """The experiment's docstring and its flags, one line each."""
    f = flags.FLAGS
    config = f["config"].value
    example = (_example_override(config) if isinstance(config, ml_collections.ConfigDict)
               else "--config.seed=0")

    def described(name: str) -> str:
        default = f[name].default
        shown = "" if default in (None, "") else f" (default: {default})"
        text = re.sub(r"^<[^>]*>: ", "", f[name].help)  # absl's enum help starts "<a|b>: "
        return text.rstrip(".") + shown

    rows = [("--workdir=DIR", described("workdir")),
            ("--config=FILE[:VARIANT]", f["config"].help.rstrip(".")),
            ("--config.<field>=VALUE", f"Overrides any field of the config, e.g. {example}; "
                                       "--print_config lists every field"),
            ("--print_config", f["print_config"].help.rstrip(".")),
            ("--xla_cache=DIR", described("xla_cache"))]
    if sweep:
        rows.append(("--shard=i/n", described("shard")))
    rows += [(f"--{name}={value}", described(name)) for name, value in _DISTRIBUTED_FLAGS]
    ours = {"workdir", "config", "print_config", "xla_cache", "shard",
            *(name for name, _ in _DISTRIBUTED_FLAGS)}
    # Flags the experiment defines itself (e.g. bimix_fit's --curves).
    rows += [(f"--{flag.name}=VALUE", described(flag.name))
             for flag in f.flags_by_module_dict().get(_main_module_name(), [])
             if flag.name not in ours]
    rows.append(("--helpfull", "Every flag, absl's own and one per config field included"))
    width = max(len(left) for left, _ in rows) + 2
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    lines = [doc, "", "flags:"] if doc else ["flags:"]
    lines += [f"  {left:<{width}}{text}." for left, text in rows]
    return "\n".join(lines)


def _parse_flags(argv: list[str], config_file: str, sweep: bool) -> list[str]:
    # absl's --help lists the flags of modules it found by frames, none of ours; print our own.
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(arg in _HELP_ARGS for arg in args):
        print(_help_text(config_file, sweep))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        _exit_on_config_error(e)  # exits, or re-raises what is not a config error


def require_own_config(config: ml_collections.ConfigDict, config_file: str,
                       given: str) -> None:
    """Refuses a config of another experiment (config.experiment names it), before any field
    of it is read: the experiment's own config file is named after it."""
    expected = pathlib.Path(config_file).stem
    found = config.get("experiment")
    if found != expected:
        what = (f"is a {found} config" if isinstance(found, str)
                else "is not an experiment's config (it has no `experiment` field)")
        validation.fail_flag("config", f"{given} {what}; {_entry_point(config_file)} needs "
                             f"{_shown_path(config_file)}")


def main(run: RunFn, config_file: str, default_workdir: str, sweep: bool = False) -> None:
    """Defines --config (path[:variant]) and --workdir, then runs `run(config, workdir)`.

    With `sweep`, also --shard=i/n: run only that part of the grid, as `run(..., shard=...)`.
    --print_config prints the config instead and exits.
    """
    module = _main_module_name()
    try:  # the overrides on the command line are checked here, against the default config
        config_flags.DEFINE_config_file("config", default=config_file,
                                        help_string=_config_help(config_file))
    except (flags.Error, AttributeError, KeyError) as e:
        _exit_on_config_error(e)
    flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS["config"])
    flags.DEFINE_string("workdir", default_workdir, "Output folder, local or in a bucket "
                        "(gs://bucket/run); re-running the command "
                        "resumes it.", module_name=module)
    flags.DEFINE_bool("print_config", False, "Prints the config (variant and overrides "
                      "applied) as JSON and exits; trains and writes nothing.",
                      module_name=module)
    flags.DEFINE_string("xla_cache", XLA_CACHE_DIR, "Folder that keeps compiled XLA programs "
                        "between runs ('' : off; JAX_COMPILATION_CACHE_DIR wins).",
                        module_name=module)
    _define_distributed_flags()
    if sweep:
        flags.DEFINE_string("shard", None, "i/n: run only part i (0-based) of n of the grid, "
                            "e.g. from a SLURM job array; the parts share one results table.",
                            module_name=module)

    def _main(argv: list[str]) -> None:
        del argv
        logging.get_absl_handler().addFilter(_not_orbax)
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        given = flags.FLAGS["config"].config_filename
        if not isinstance(config, ml_collections.ConfigDict):  # a file that failed to load
            sys.exit(f"error: --config: could not load {given}"
                     " (the part before any ':' must be a config file's path)")
        try:
            require_own_config(config, config_file, given)
        except validation.ConfigError as e:
            sys.exit(f"error: {e}")
        if flags.FLAGS.print_config:
            try:
                print(json.dumps(run_io.config_to_dict(config), indent=2, sort_keys=True))
                sys.stdout.flush()
            except BrokenPipeError:  # e.g. `--print_config | head`: the reader has enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        if not validation.is_folder_or_absent(flags.FLAGS.xla_cache):
            sys.exit(f"error: --xla_cache={flags.FLAGS.xla_cache}: is a file, not a folder")
        use_compilation_cache(flags.FLAGS.xla_cache)
        try:
            validation.require_seeds(config)
            validation.require_cache_dirs(config)
            if sweep:
                from phasemix.runs import sweep as sweep_lib

                sweep_lib.keep_memory_for_workers(config)
            _start_distributed()
            if sweep:
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

    app.run(_main, flags_parser=functools.partial(_parse_flags, config_file=config_file,
                                                  sweep=sweep))
