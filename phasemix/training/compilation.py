"""Counts XLA compilations in this process, so a run can show it compiles nothing after step 1,
and chooses the options the programs are compiled with.

A recompilation in the loop (a shape or a Python value that changes between steps) costs
seconds each time on a CPU; the loop records how many happened and the summary reports it.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

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


# XLA's CPU dots without YNNPACK (an empty list of YNNPACK fusion kinds): its own kernels, which
# run the grokking model's small products 1.07-1.19x faster, and the small LM's 0.6-0.8x as fast
# (README, Speed). The option is experimental: a JAX release may drop it.
NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_accepts(option: str, value: str) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(
            jnp.float32(0)).compile()
        return True
    except Exception as error:  # jit names the unknown option in its error
        logging.warning("XLA here does not take %s=%r, so it is left out: %s", option, value,
                        error)
        return False


def transposed_kernel_grads(platform: str, ynnpack: bool = True) -> bool:
    """Whether dense layers take their kernel gradients as (dY^T X)^T (`model.TransformerConfig.
    transposed_kernel_grads`): on a CPU with YNNPACK's kernels, where train steps measured
    1.02-1.27x faster on two CPUs and the knowledge model's 1.4x on one (benchmarks.ynnpack
    --switch=kernel_grads); with XLA's own CPU dots (the grokking model) it was within noise,
    and on accelerators it is unmeasured."""
    return platform == "cpu" and ynnpack


def compiler_options(platform: str, ynnpack: bool = True) -> dict[str, Any]:
    """Options for `jax.jit(..., compiler_options=...)`: on a CPU, `ynnpack=False` turns
    YNNPACK's dot kernels off, where this JAX's XLA has the option."""
    if platform != "cpu" or ynnpack:
        return {}
    return {k: v for k, v in NO_YNNPACK.items() if _cpu_accepts(k, v)}
