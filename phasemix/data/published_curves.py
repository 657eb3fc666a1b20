"""The published 5-mix loss curves (Ye et al. 2024's data) read into per-model tables.

The CSV has one row per (model, mixture, step, Pile eval sub-domain); its 22 sub-domains are
aggregated into the 5 training groups with the weights of pile_valid_weight.json, renormalised
within each group. Every row is checked, and an error names the flag, the file and its line.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import Any

import numpy as np

from phasemix.base import validation

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]  # phasemix/data/../..
DEFAULT_CURVES = REPO_ROOT / ".." / "shared" / "data" / "mixing_laws" / "5mix_losses.csv"
WEIGHTS_FILE = "pile_valid_weight.json"
DOMAINS = ("academic", "prose", "dialogue", "symbolic", "internet")
GROUPS = {  # training group -> its Pile validation sub-domains (the data README)
    "academic": ("ArXiv", "PubMed_Abstracts", "PhilPapers", "NIH_ExPorter", "FreeLaw",
                 "USPTO_Backgrounds", "PubMed_Central"),
    "prose": ("PG19", "Books3", "BookCorpus2"),
    "dialogue": ("Ubuntu_IRC", "OpenSubtitles", "EuroParl", "Enron_Emails", "HackerNews",
                 "YoutubeSubtitles"),
    "symbolic": ("DM_Mathematics", "Github"),
    "internet": ("Pile-CC", "OpenWebText2", "StackExchange", "Wikipedia_en"),
}
PROP_COLUMNS = tuple(f"p_{d}" for d in DOMAINS)
COLUMNS = ("model", "mixture_id", *PROP_COLUMNS, "step", "eval_domain", "loss")
MIX_TOL = 1e-6  # a mixture's proportions must sum to 1 within this


def _curves_error(path: Any, message: str) -> validation.ConfigError:
    return validation.ConfigError(f"--curves={path}: {message}")


def read_group_weights(path: str | pathlib.Path) -> dict[str, float]:
    """Sub-domain -> weight within its group (the file's weights renormalised per group)."""
    path = pathlib.Path(path)
    if not path.is_file():
        found = "not a file" if path.exists() else "file not found"
        raise validation.ConfigError(f"--valid_weights={path}: {found} (it comes with "
                                     "the curves as pile_valid_weight.json)")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise validation.ConfigError(f"--valid_weights={path}: not a JSON file of weights "
                                     f"({e})") from e
    if not isinstance(raw, dict):
        raise validation.ConfigError(f"--valid_weights={path}: must map each sub-domain to "
                                     "its weight")
    out = {}
    for group, members in GROUPS.items():
        missing = [m for m in members if m not in raw]
        if missing:
            raise validation.ConfigError(f"--valid_weights={path}: no weight for {missing}")
        values = [raw[m] for m in members]
        if not all(validation.is_finite_number(v) and v >= 0 for v in values) or sum(values) <= 0:
            raise validation.ConfigError(f"--valid_weights={path}: the weights of {group} "
                                         f"{dict(zip(members, values))} must be numbers >= 0 "
                                         "with a positive sum")
        total = sum(values)
        out.update({m: raw[m] / total for m in members})
    return out


def _read_curve_rows(path: pathlib.Path, group_of: dict[str, str],
                     props: dict[tuple[str, int], tuple[float, ...]],
                     losses: dict[tuple[str, int, int], dict[str, float]]) -> None:
    """Fills `props` and `losses` from the curves CSV, checking every row."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise _curves_error(path, f"missing columns {missing}")
        for row in reader:
            where = f"line {reader.line_num}"
            if None in row.values():
                raise _curves_error(path, f"{where}: has fewer fields than the header")
            try:
                mixture, step = int(row["mixture_id"]), int(float(row["step"]))
                p = tuple(float(row[c]) for c in PROP_COLUMNS)
                loss = float(row["loss"])
            except ValueError as e:
                raise _curves_error(path, f"{where}: {e}") from e
            if not all(map(math.isfinite, p)) or min(p) < 0 or abs(sum(p) - 1) > MIX_TOL:
                raise _curves_error(path, f"{where}: mixture {p} has a negative or non-finite "
                                    f"weight or does not sum to 1 (sum {sum(p):.9g}, "
                                    f"tolerance {MIX_TOL})")
            if not (math.isfinite(loss) and loss > 0) or step <= 0:
                raise _curves_error(path, f"{where}: loss must be finite and > 0 and step > 0")
            if row["eval_domain"] not in group_of:
                raise _curves_error(path, f"{where}: unknown eval domain {row['eval_domain']!r}")
            known = props.setdefault((row["model"], mixture), p)
            if known != p:
                raise _curves_error(path, f"{where}: mixture {mixture} of {row['model']} was "
                                    f"{known} on an earlier line, here {p}")
            losses.setdefault((row["model"], mixture, step), {})[row["eval_domain"]] = loss


def load_curves(path: str | pathlib.Path, weights_path: str | pathlib.Path | None = None
                ) -> dict[str, dict[str, np.ndarray]]:
    """model -> {mixture_N, step_N, props_NxK, loss_NxK}: one row per (mixture, step), one loss
    column per training group (NaN where some of the group's sub-domains are missing).

    Every row is checked; an error names the file and its line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        found = "not a file" if path.exists() else "file not found"
        raise _curves_error(path, f"{found}; pass --curves=PATH to the published 5-mix "
                            "curves (5mix_losses.csv, see ../shared/data/mixing_laws/README.md)")
    weights = read_group_weights(weights_path or path.with_name(WEIGHTS_FILE))
    group_of = {m: g for g, members in GROUPS.items() for m in members}
    props: dict[tuple[str, int], tuple[float, ...]] = {}
    losses: dict[tuple[str, int, int], dict[str, float]] = {}
    try:
        _read_curve_rows(path, group_of, props, losses)
    except UnicodeDecodeError as e:
        raise _curves_error(path, f"not a UTF-8 CSV file ({e})") from e
    if not losses:
        raise _curves_error(path, "has no rows after its header")
    out: dict[str, dict[str, list]] = {}
    for (model, mixture, step), by_domain in sorted(losses.items()):
        group_losses = []
        for group in DOMAINS:
            members = GROUPS[group]
            complete = all(m in by_domain for m in members)
            group_losses.append(sum(weights[m] * by_domain[m] for m in members) if complete
                                else math.nan)
        table = out.setdefault(model, {"mixture_N": [], "step_N": [], "props_NxK": [],
                                       "loss_NxK": []})
        table["mixture_N"].append(mixture)
        table["step_N"].append(step)
        table["props_NxK"].append(props[(model, mixture)])
        table["loss_NxK"].append(group_losses)
    return {model: {k: np.asarray(v, np.int64 if k == "mixture_N" else np.float64)
                    for k, v in table.items()} for model, table in out.items()}
