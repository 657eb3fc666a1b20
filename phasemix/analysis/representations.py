"""What a trained model makes of its inputs: final hidden states and their principal axis."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from phasemix.training import model as model_lib


def final_hidden_states(model_config: model_lib.TransformerConfig, params: Any,
                        tokens_NxL: np.ndarray, position: int = -1,
                        batch_size: int = 4096) -> np.ndarray:
    """The final-LayerNorm output at `position` for every row: (N, d_model)."""
    model = model_lib.Transformer(model_config)

    @jax.jit
    def hidden(tokens_BxL):
        _, state = model.apply({"params": params}, tokens_BxL, capture_intermediates=(
            lambda module, method: module.name == "ln_final"), mutable=["intermediates"])
        return state["intermediates"]["ln_final"]["__call__"][0][:, position]

    return np.concatenate([np.asarray(hidden(tokens_NxL[i:i + batch_size]))
                           for i in range(0, len(tokens_NxL), batch_size)])


def first_principal_component(features_NxD: np.ndarray) -> tuple[np.ndarray, float]:
    """Projections on the first principal axis, and the fraction of variance it explains."""
    centered = features_NxD - features_NxD.mean(0, keepdims=True)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[0], float(singular[0] ** 2 / np.sum(singular**2))
