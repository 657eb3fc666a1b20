"""Parameter-tree utilities: the grokking init rescale, L2 norms, parameter counts."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Params = Any


def scale_params(params: Params, init_scale: float) -> Params:
    """Multiplies every parameter by `init_scale` (alpha of the grokking configuration)."""
    return jax.tree.map(lambda p: p * init_scale, params)


def global_norm(params: Params) -> jax.Array:
    """L2 norm of all parameters together."""
    leaves = jax.tree.leaves(params)
    return jnp.sqrt(sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves))


def layer_norms(params: Params) -> dict[str, jax.Array]:
    """L2 norm of each top-level module (embed, block_0, ..., head)."""
    return {name: global_norm(sub) for name, sub in params.items()}


def count_params(params: Params, exclude: tuple[str, ...] = ()) -> int:
    """Number of scalars, leaving out the top-level modules named in `exclude`."""
    return sum(int(p.size) for name, sub in params.items() if name not in exclude
               for p in jax.tree.leaves(sub))
