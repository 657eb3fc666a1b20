"""Model size presets: shapes that match their namesakes, and errors that name the flag."""

import pytest

from phasemix.base import validation
from phasemix.training import model as model_lib, presets


def test_pythia_70m_has_pythias_non_embedding_count():
    # Pythia-70M: 18,915,328 non-embedding parameters (Biderman et al. 2023, Table 1).
    cfg = model_lib.TransformerConfig(vocab_size=50304, max_len=2048,
                                      **presets.model_fields("pythia-70m"))
    assert presets.param_counts(cfg)["non_embedding_params"] == 18_915_328


def test_tiny_presets_grow_with_their_width():
    counts = [presets.param_counts(model_lib.TransformerConfig(
        vocab_size=1000, max_len=64, **presets.model_fields(name)))["non_embedding_params"]
        for name in ("tiny-16", "tiny-32", "tiny-64", "tiny-128")]
    assert counts == sorted(counts) and counts[-1] > 50 * counts[0]


def test_unknown_preset_names_the_flag():
    with pytest.raises(validation.ConfigError, match="model.preset"):
        presets.model_fields("huge")
