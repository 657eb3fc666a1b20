"""The layout a sweep leaves on disk, for the code that reads it back.

`<sweep_dir>/results.csv` (RESULTS_FILE) has one row per run; each run keeps its outputs in
`<sweep_dir>/runs/<run_name(overrides)>/` (RUNS_DIR). `read_table` reads such a table with its
numbers parsed back; `write_table` writes one. `phasemix.runs.sweep` writes this layout and
re-exports these names, so that analyses of finished sweeps need not import the sweep runner.
"""

from __future__ import annotations

import csv
import io
import os
import re
from typing import Any, Iterable, Mapping

from phasemix.base import run_io

RESULTS_FILE = "results.csv"
RUNS_DIR = "runs"


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
    """A readable, filesystem-safe folder name such as `task.train_count=400,seed=1`."""
    name = ",".join(f"{k}={_format_value(v)}" for k, v in overrides.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a results table, with numbers parsed back (empty cells become None)."""

    def parse(value: str | None) -> Any:
        if value is None or value == "":  # None: a row shorter than the header
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return {"True": True, "False": False}.get(value, value)

    if run_io.is_remote(path):  # a sweep folder in a bucket (gs://...)
        lines = io.StringIO(run_io.run_path(path).read_text(), newline="")
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(lines)]
    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_table(rows: Iterable[Mapping[str, Any]], path: run_io.RunPath) -> None:
    """CSV with the union of all rows' columns (pandas.read_csv reads it); written atomically."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    run_io.write_text_atomic(path, buffer.getvalue())


def current_commit() -> str:
    """The short hash of the checkout phasemix runs from, for a table's `commit` column
    ('unknown' outside a git checkout, e.g. an installed wheel)."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"
