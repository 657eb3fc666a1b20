"""Shared by the benchmarks: matmul FLOP counts, a matmul FLOP/s peak, baseline checkouts."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

TARGET_SPEEDUP = 1.3  # the performance issue's target over PyTorch eager


def positive_ints(*holders: Any, at_least: int = 1) -> None:
    """Exits with one line naming the flag if an integer (or list-of-integers) flag is below
    `at_least` or not an integer: a benchmark of -5 steps would print negative rates."""
    for holder in holders:
        values = holder.value if isinstance(holder.value, list) else [holder.value]
        for value in values:
            try:
                number = int(str(value).strip())
            except ValueError:
                number = None
            if number is None or number < at_least:
                shown = ",".join(map(str, values)) if isinstance(holder.value, list) else value
                many = isinstance(holder.value, list)
                what = (("positive integers" if many else "a positive integer") if at_least == 1
                        else f"{'integers' if many else 'an integer'} >= {at_least}")
                sys.exit(f"error: --{holder.name}={shown}: must be {what}")


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


def matmul_flops(fn, *args) -> float:
    """FLOPs of the matrix products (dot_general) in `fn`'s jaxpr, 2 per multiply-add.

    Counts what PyTorch's FlopCounterMode counts, so two frameworks' steps can be checked for
    doing the same work (XLA's cost analysis also counts elementwise ops). A scan's body counts
    once per iteration; a while loop's body once (its trip count is not in the jaxpr).
    """
    import numpy as np
    from jax.extend import core as jax_core

    def walk(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs_shape = eqn.invars[0].aval.shape
                contracted = np.prod([lhs_shape[d] for d in lhs_contract])
                total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * contracted
            repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    if isinstance(sub, jax_core.ClosedJaxpr):
                        total += repeats * walk(sub.jaxpr)
                    elif isinstance(sub, jax_core.Jaxpr):
                        total += repeats * walk(sub)
        return total

    if hasattr(fn, "trace"):  # a jitted function: traced itself, since one with compiler
        return walk(fn.trace(*args).jaxpr.jaxpr)  # options may not be nested in make_jaxpr
    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def checkout(revision: str, where: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    """A detached `git worktree` of `revision` at `where` (kept if it is already there)."""
    if not where.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(where), revision], cwd=root,
                       check=True, capture_output=True)
    return where


def remove_checkout(where: pathlib.Path, root: pathlib.Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=root, check=False,
                   capture_output=True)
