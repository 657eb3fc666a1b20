"""Named causal-LM sizes, from CPU-tiny to the paper's Pythia sizes, and their parameter counts."""

from __future__ import annotations

import jax
import ml_collections
import jax.numpy as jnp

from phasemix.base import validation
from phasemix.training import model as model_lib, params as params_lib

# name -> (num_layers, d_model, num_heads, d_mlp). The tiny ones train in minutes on a 2-core
# CPU; the pythia-* ones follow Pythia's shapes (Biderman et al. 2023) for accelerators.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny-16": (2, 16, 2, 64),
    "tiny-32": (2, 32, 2, 128),
    "tiny-48": (2, 48, 3, 192),
    "tiny-64": (2, 64, 4, 256),
    "tiny-96": (2, 96, 4, 384),
    "tiny-128": (2, 128, 4, 512),
    "small-256": (4, 256, 4, 1024),
    "pythia-14m": (6, 128, 4, 512),
    "pythia-70m": (6, 512, 8, 2048),
    "pythia-160m": (12, 768, 12, 3072),
    "pythia-410m": (24, 1024, 16, 4096),
}
EMBEDDING_MODULES = ("embed", "pos_embed", "head")


def model_fields(preset: str) -> dict[str, int]:
    """The `config.model` fields a preset sets."""
    validation.require_choice(preset, PRESETS, "model.preset")
    num_layers, d_model, num_heads, d_mlp = PRESETS[preset]
    return dict(num_layers=num_layers, d_model=d_model, num_heads=num_heads, d_mlp=d_mlp)


def causal_lm_config(config: ml_collections.ConfigDict,
                     vocab_size: int) -> model_lib.TransformerConfig:
    """The causal LM of a run config: `config.model` with its preset's sizes, the vocabulary
    and `config.seq_len` (the knowledge and BiMix runs)."""
    return model_lib.TransformerConfig.from_config(
        config.model, **model_fields(config.model.preset), vocab_size=vocab_size,
        max_len=config.seq_len, causal=True)


def param_counts(cfg: model_lib.TransformerConfig) -> dict[str, int]:
    """Parameters with and without the token/position embeddings and the output head."""
    shapes = jax.eval_shape(model_lib.Transformer(cfg).init, jax.random.key(0),
                            jnp.zeros((1, cfg.max_len), jnp.int32))["params"]
    return {"params": params_lib.count_params(shapes),
            "non_embedding_params": params_lib.count_params(shapes, exclude=EMBEDDING_MODULES)}
