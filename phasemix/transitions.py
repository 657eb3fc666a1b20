"""Locating phase transitions in a run's metric history."""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def first_step_at_least(rows: Iterable[Mapping[str, Any]], key: str, threshold: float) -> int | None:
    """The first logged step whose `key` is >= threshold, or None if it never is."""
    for row in rows:
        value = row.get(key)
        if value is not None and value >= threshold:
            return int(row["step"])
    return None
