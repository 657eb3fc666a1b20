"""The shared `main` of experiment entry points: flags, quiet logs, clear config errors."""

from __future__ import annotations

import json
import logging as std_logging
import sys
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from phasemix import validation

RunFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]


def _not_orbax(record) -> bool:
    # Orbax logs every save/restore step at INFO through absl; keep its warnings only.
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(run: RunFn, config_file: str, default_workdir: str) -> None:
    """Defines --config (path[:variant]) and --workdir, then runs `run(config, workdir)`."""
    config_flags.DEFINE_config_file("config", default=config_file,
                                    help_string="Config file, path[:variant].")
    flags.DEFINE_string("workdir", default_workdir, "Output folder; re-running resumes it.")

    def _main(argv: list[str]) -> None:
        del argv
        logging.get_absl_handler().addFilter(_not_orbax)
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        try:
            summary = run(config, workdir)
        except validation.ConfigError as e:
            sys.exit(f"error: {e}")
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        print(f"outputs in {workdir}")

    app.run(_main)
