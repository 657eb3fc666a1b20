"""Batched greedy decoding from a causal decoder, with fixed shapes (one compilation).

Prompts of different lengths share one (B, P + T) buffer: each row's prompt sits at positions
0..len-1 and its new tokens are written after it. A causal decoder never reads a position to
the right of the one it predicts from, so the padding past each prompt changes nothing.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from phasemix.training import model as model_lib


@functools.partial(jax.jit, static_argnames=("model", "num_new"))
def _greedy(params: Any, buffer_BxS: jax.Array, lengths_B: jax.Array, *,
            model: model_lib.Transformer, num_new: int) -> jax.Array:
    rows_B = jnp.arange(buffer_BxS.shape[0])

    def one_token(t, buffer_BxS):
        logits_BxSxV = model.apply({"params": params}, buffer_BxS)
        next_B = jnp.argmax(logits_BxSxV[rows_B, lengths_B + t - 1], axis=-1)
        return buffer_BxS.at[rows_B, lengths_B + t].set(next_B.astype(buffer_BxS.dtype))

    buffer_BxS = jax.lax.fori_loop(0, num_new, one_token, buffer_BxS)
    positions_BxT = lengths_B[:, None] + jnp.arange(num_new)[None]
    return jnp.take_along_axis(buffer_BxS, positions_BxT, axis=1)


def greedy_decode(model: model_lib.Transformer, params: Any, prompts: Sequence[Sequence[int]],
                  num_new: int, pad_id: int = 0) -> np.ndarray:
    """The `num_new` tokens that greedy decoding appends to each prompt: (len(prompts), num_new)."""
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("greedy_decode needs at least one prompt, none of them empty")
    lengths_B = np.array([len(p) for p in prompts], np.int32)
    width = int(lengths_B.max()) + num_new
    if width > model.cfg.max_len:
        raise ValueError(f"prompt ({lengths_B.max()}) + new tokens ({num_new}) exceed the "
                         f"model's max_len={model.cfg.max_len}")
    buffer_BxS = np.full((len(prompts), width), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        buffer_BxS[row, :len(prompt)] = prompt
    return np.asarray(_greedy(params, jnp.asarray(buffer_BxS), jnp.asarray(lengths_B),
                              model=model, num_new=num_new))
