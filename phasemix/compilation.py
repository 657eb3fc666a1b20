"""Counts XLA compilations in this process, so a run can show it compiles nothing after step 1.

A recompilation in the loop (a shape or a Python value that changes between steps) costs
seconds each time on a CPU; the loop records how many happened and the summary reports it.
"""

from __future__ import annotations

import collections
import threading

import jax

# The event jax records around every backend compilation (jax/_src/dispatch.py).
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_names: collections.Counter[str] = collections.Counter()
_registered = False


def _on_duration(event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs
    if event == _BACKEND_COMPILE_EVENT:
        with _lock:
            _names[str(kwargs.get("fun_name", "?"))] += 1


def start_counting() -> None:
    """Registers the listener once per process (jax offers no way to remove one)."""
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            _registered = True


def snapshot() -> collections.Counter[str]:
    """Compilations so far, by function name."""
    start_counting()
    with _lock:
        return collections.Counter(_names)
