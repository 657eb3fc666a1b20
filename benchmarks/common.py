"""Measurements shared by the benchmarks: XLA's FLOP count and a matmul FLOP/s peak."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def compiled_flops(jitted, *args) -> float:
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, list):  # older jax returns one dict per device program
        analysis = analysis[0]
    return float(analysis["flops"])


def time_matmul(n: int, iterations: int = 20) -> float:
    """FLOP/s of a jitted n x n float32 matmul chain (the machine's practical peak)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)

    @jax.jit
    def chain(x):
        for _ in range(iterations):
            x = (x @ a) * (1.0 / n)  # rescale keeps values finite; fused into the matmul
        return x

    chain(a).block_until_ready()
    start = time.perf_counter()
    chain(a).block_until_ready()
    return 2 * n**3 * iterations / (time.perf_counter() - start)
