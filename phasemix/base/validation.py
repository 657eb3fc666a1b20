"""Config validation: every error names the flag a user would pass to fix it."""

from __future__ import annotations

import math
import os
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the offending flag.

    Raised by `fail`, it also keeps the config field, its value and the reason apart, so that
    a sweep can name the grid flag a per-run value came from.
    """

    def __init__(self, message: str, field: str | None = None, value: Any = None,
                 reason: str | None = None):
        super().__init__(message)
        self.field, self.value, self.reason = field, value, reason


def fail(field: str, message: str, value: Any = None) -> None:
    shown = "" if value is None else f"={value!r}"
    raise ConfigError(f"--config.{field}{shown}: {message}", field, value, message)


def require(condition: bool, field: str, message: str, value: Any = None) -> None:
    if not condition:
        fail(field, message, value)


def require_unique(config: Any, *fields: str) -> None:
    """Each field (a sweep's list of values) repeats no value."""
    for field in fields:
        values = list(config[field])
        require(len(set(values)) == len(values), field, "repeats a value", config[field])


def require_choice(value: Any, choices: Iterable[Any], field: str) -> None:
    choices = list(choices)
    require(value in choices, field, f"must be one of {choices}", value)


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def require_positive(config: Any, *fields: str) -> None:
    """Each dotted field of `config` must be > 0."""
    for field in fields:
        value = config
        for part in field.split("."):
            value = value[part]
        require(value is not None and value > 0 and math.isfinite(value), field,
                "must be positive" if value is None or value <= 0 else "must be finite", value)


def _leaves(config: Any, prefix: str = "") -> Iterable[tuple[str, str, Any]]:
    """(dotted field, key, value) of every non-dict value of a nested config."""
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", key, value


def require_seeds(config: Any) -> None:
    """Every field of `config` (nested) named seed, *_seed or seeds holds non-negative ints:
    NumPy's and JAX's generators take no negative seed, and would say so in a traceback."""
    for field, key, value in _leaves(config):
        if key == "seed" or key.endswith("_seed") or key == "seeds":
            values = value if key == "seeds" and isinstance(value, (tuple, list)) else [value]
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
            require(ok, field, "must be non-negative integers" if key == "seeds"
                    else "must be a non-negative integer", value)


def is_folder_or_absent(path: str) -> bool:
    """Whether `path` (~ expanded) can be a cache folder: one, or nothing yet (it will be made)."""
    path = os.path.expanduser(str(path))
    return not os.path.exists(path) or os.path.isdir(path)


def require_cache_dirs(config: Any) -> None:
    """Every field named cache_dir (nested) is unset, absent (it will be made) or a folder."""
    for field, key, value in _leaves(config):
        if key == "cache_dir" and value:
            require(is_folder_or_absent(value), field, "is a file, not a folder", value)


def physical_memory_bytes() -> int | None:
    """This machine's memory, where the OS tells it (None elsewhere)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def require_memory(nbytes: float, field: str, what: str, value: Any = None) -> None:
    """Refuses a size whose data alone needs more than this machine's memory, before a run
    spends minutes building it and dies out of memory."""
    total = physical_memory_bytes()
    if total is not None and nbytes > total:
        fail(field, f"{what} would take at least {nbytes / 2**30:,.1f} GiB, more than this "
             f"machine's {total / 2**30:,.1f} GiB of memory", value)


def fail_flag(flag: str, message: str, value: Any = None) -> None:
    """Like `fail`, for a command-line flag that is not in the config (e.g. --num_processes)."""
    shown = "" if value is None else f"={value!r}"
    raise ConfigError(f"--{flag}{shown}: {message}")


def require_flag(condition: bool, flag: str, message: str, value: Any = None) -> None:
    if not condition:
        fail_flag(flag, message, value)


def unknown_variant(variant: str, choices: str) -> None:
    """A config file's get_config was given a variant it does not have (`--config=path:variant`)."""
    fail_flag("config", f"unknown variant {variant!r} (after the ':'); use {choices}")
