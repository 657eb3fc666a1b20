"""Hidden-state extraction and the principal axis used by the dataset PCA figure."""

import jax
import numpy as np

from phasemix.training import model as model_lib
from phasemix.analysis import representations


def test_first_principal_component_finds_the_spread_direction():
    rng = np.random.default_rng(0)
    t = rng.normal(size=500)
    direction = np.array([3.0, 4.0]) / 5.0
    features = np.outer(t, direction) * 10 + rng.normal(size=(500, 2)) * 0.1
    projection, explained = representations.first_principal_component(features)
    assert explained > 0.99
    assert abs(np.corrcoef(projection, t)[0, 1]) > 0.999


def test_final_hidden_states_match_the_model_and_batching():
    cfg = model_lib.TransformerConfig(vocab_size=13, max_len=3, d_model=16, num_heads=2,
                                      d_mlp=32).validate()
    tokens = np.random.default_rng(1).integers(0, 13, (50, 3)).astype(np.int32)
    params = model_lib.Transformer(cfg).init(jax.random.key(0), tokens[:1])["params"]
    hidden = representations.final_hidden_states(cfg, params, tokens, batch_size=16)
    assert hidden.shape == (50, 16)
    # The head applied to the hidden state reproduces the model's logits at that position.
    logits = model_lib.Transformer(cfg).apply({"params": params}, tokens)[:, -1]
    head = params["head"]
    np.testing.assert_allclose(hidden @ head["kernel"] + head["bias"], logits, atol=1e-4)
    assert not np.allclose(hidden[0], hidden[1])
