"""Greedy decoding, and the one-pass exact-match score that stands in for it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasemix.training import decoding, losses, model as model_lib


@pytest.fixture(scope="module")
def decoder():
    cfg = model_lib.TransformerConfig(vocab_size=13, max_len=16, d_model=16, num_heads=2,
                                      d_mlp=32)
    model = model_lib.Transformer(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    # A large init makes argmax decisive, so the test does not hinge on float ties.
    params = jax.tree.map(lambda p: 3 * p, params)
    return model, params


def _naive_greedy(forward, params, prompt, num_new):
    # One full forward pass per new token; the sequence sits in a fixed 16-slot buffer so that
    # one compilation serves every length (the decoder is causal: tested in test_model).
    tokens = list(prompt)
    for _ in range(num_new):
        buffer = np.zeros((1, 16), np.int32)
        buffer[0, :len(tokens)] = tokens
        logits = forward(params, jnp.asarray(buffer))
        tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
    return tokens[len(prompt):]


def test_batched_greedy_matches_token_by_token_decoding(decoder):
    model, params = decoder
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 13, size=n)) for n in (1, 3, 7, 5)]
    got = decoding.greedy_decode(model, params, prompts, num_new=4)
    assert got.shape == (4, 4)
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))  # one compilation for all
    for prompt, row in zip(prompts, got):
        assert list(row) == _naive_greedy(forward, params, prompt, 4)


def test_exact_match_in_one_pass_equals_greedy_decoding(decoder):
    model, params = decoder
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(1, 13, size=n)) for n in (2, 4, 6)]
    generated = decoding.greedy_decode(model, params, prompts, num_new=3)
    width = 10
    inputs, targets, mask = (np.zeros((3, width), np.int32) for _ in range(3))
    for row, (prompt, new) in enumerate(zip(prompts, generated)):
        sequence = prompt + list(new)
        inputs[row, :len(sequence) - 1] = sequence[:-1]
        targets[row, :len(sequence) - 1] = sequence[1:]
        mask[row, len(prompt) - 1:len(sequence) - 1] = 1  # predict the generated tokens
    # Row 2's gold continuation differs from what greedy decoding produced in its last token.
    wrong = (targets[2, len(prompts[2]) + 1] + 1) % 13
    targets[2, len(prompts[2]) + 1] = wrong
    batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets),
             "loss_mask": jnp.asarray(mask)}
    logits = model.apply({"params": params}, batch["inputs"])
    _, sums = losses.masked_token_loss(logits, batch, exact_match=True)
    assert float(sums["sequence_count"]) == 3
    assert float(sums["exact_sum"]) == 2
    assert losses.finalize(sums)["exact_match"] == pytest.approx(2 / 3)


def test_greedy_decode_rejects_prompts_past_max_len(decoder):
    model, params = decoder
    with pytest.raises(ValueError, match="max_len"):
        decoding.greedy_decode(model, params, [[1] * 14], num_new=4)
