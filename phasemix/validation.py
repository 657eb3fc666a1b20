"""Config validation: every error names the flag a user would pass to fix it."""

from __future__ import annotations

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


def require_choice(value: Any, choices: Iterable[Any], field: str) -> None:
    choices = list(choices)
    require(value in choices, field, f"must be one of {choices}", value)


def require_positive(config: Any, *fields: str) -> None:
    """Each dotted field of `config` must be > 0."""
    for field in fields:
        value = config
        for part in field.split("."):
            value = value[part]
        require(value is not None and value > 0, field, "must be positive", value)


def require_seeds(config: Any, prefix: str = "") -> None:
    """Every field of `config` (nested) named seed, *_seed or seeds holds non-negative ints:
    NumPy's and JAX's generators take no negative seed, and would say so in a traceback."""
    for key, value in config.items():
        field = f"{prefix}{key}"
        if hasattr(value, "items"):
            require_seeds(value, f"{field}.")
        elif key == "seed" or key.endswith("_seed") or key == "seeds":
            values = value if key == "seeds" and isinstance(value, (tuple, list)) else [value]
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
            require(ok, field, "must be non-negative integers" if key == "seeds"
                    else "must be a non-negative integer", value)


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
