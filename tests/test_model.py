"""The transformer: shapes, causality, padding, and the grokking init rescale."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasemix.base import validation
from phasemix.training import losses, model as model_lib, optimizer, params as params_lib, train

B, L, V = 3, 7, 11


def make(causal=True, num_classes=None, **kw):
    cfg = model_lib.TransformerConfig(vocab_size=V, max_len=L, num_layers=2, d_model=16,
                                      num_heads=4, d_mlp=32, causal=causal,
                                      num_classes=num_classes, **kw).validate()
    model = model_lib.Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(1), (B, L), 0, V)
    return model, jax.jit(model.init)(jax.random.key(0), tokens)["params"], tokens


@pytest.mark.parametrize("pos", model_lib.POS_EMBEDDINGS)
def test_decoder_logits_shape_and_finite(pos):
    model, params, tokens = make(pos_embedding=pos)
    logits = model.apply({"params": params}, tokens)
    chex.assert_shape(logits, (B, L, V))
    chex.assert_tree_all_finite(logits)


def test_decoder_is_causal_through_gradients():
    """d logits[t] / d (token or position embedding at s) vanishes exactly when s > t."""
    model, params, _ = make()
    tokens = jnp.arange(L)[None, :] % V  # one distinct token per position
    grad_at = jax.jit(jax.grad(lambda p, t: model.apply({"params": p}, tokens)[0, t].sum()))
    for t in range(L):
        grad = grad_at(params, t)
        for s in range(L):
            future = s > t
            assert (jnp.abs(grad["pos_embed"]["embedding"][s]).max() == 0) == future, (t, s)
            assert (jnp.abs(grad["embed"]["embedding"][tokens[0, s]]).max() == 0) == future


def test_last_position_only_matches_the_full_model_there():
    """Same parameters, same last-position logits and the same answer-loss gradients."""
    full, params, tokens = make()
    trimmed, _, _ = make(last_position_only=True)
    logits_full = full.apply({"params": params}, tokens)
    logits_last = trimmed.apply({"params": params}, tokens)
    chex.assert_shape(logits_last, (B, 1, V))
    np.testing.assert_allclose(logits_last[:, 0], logits_full[:, -1], rtol=1e-5, atol=1e-6)
    batch = {"targets": tokens, "loss_mask": jnp.zeros((B, L)).at[:, -1].set(1.0)}
    grads = [jax.jit(jax.grad(lambda p, m=m: losses.masked_token_loss(
                 m.apply({"params": p}, tokens), batch)[0]))(params) for m in (full, trimmed)]
    # Float32 sums in another order: on an AVX2 machine one of 176 entries differed by 1.5e-7
    # (gradients here are ~0.01-0.3); a wrong position or mask would differ by ~1e-2.
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(validation.ConfigError, match="--config.model.last_position_only"):
        make(causal=False, num_classes=2, last_position_only=True)


@pytest.mark.parametrize("num_classes", [None, 2])
def test_transposed_kernel_grads_are_the_same_gradients_through_the_barrier(num_classes):
    """Same logits and the same gradients of every parameter, decoder and classifier (Dense
    and both DenseGenerals: multi-dim features and multi-dim contraction); and the step really
    takes the other product (its barrier is in the gradient's jaxpr)."""
    plain, params, tokens = make(num_classes=num_classes, pos_embedding="learned")
    transposed, _, _ = make(num_classes=num_classes, pos_embedding="learned",
                            transposed_kernel_grads=True)

    def loss(model):
        return lambda p, t: (model.apply({"params": p}, t) ** 2).mean()

    logits = [jax.jit(m.apply)({"params": params}, tokens) for m in (plain, transposed)]
    np.testing.assert_array_equal(logits[1], logits[0])
    grads = [jax.jit(jax.grad(loss(m)))(params, tokens) for m in (plain, transposed)]
    # Float32 sums in another order (~1e-7); a wrong axis or a missing transpose is O(1).
    chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    jaxprs = [str(jax.make_jaxpr(jax.grad(loss(m)))(params, tokens)) for m in (plain, transposed)]
    assert "optimization_barrier" not in jaxprs[0]
    assert jaxprs[1].count("optimization_barrier") == 4 * 2 + 1  # 4 per block, the head


def test_transposed_kernel_dot_leaves_other_products_to_dot_general():
    x, kernel = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
    batched = (((2,), (1,)), ((0,), (0,)))  # a batch dim: not a dense layer's product
    np.testing.assert_array_equal(model_lib.transposed_kernel_grad_dot(x, kernel, batched),
                                  jax.lax.dot_general(x, kernel, batched))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: model_lib.transposed_kernel_grad_dot(
        x, k, batched).sum()))(kernel))
    assert "optimization_barrier" not in jaxpr


def test_encoder_sees_future_and_ignores_padding():
    model, params, tokens = make(causal=False, num_classes=2, pooling="mean")
    pad_mask = jnp.arange(L)[None, :] < jnp.array([[L], [4], [2]])
    logits = model.apply({"params": params}, tokens, pad_mask)
    chex.assert_shape(logits, (B, 2))
    # Changing tokens under padding changes nothing; changing a real token does.
    noisy = jnp.where(pad_mask, tokens, (tokens + 5) % V)
    np.testing.assert_allclose(model.apply({"params": params}, noisy, pad_mask), logits,
                               atol=1e-6)
    changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % V)
    assert not np.allclose(model.apply({"params": params}, changed, pad_mask), logits)


def test_cls_pooling_reads_later_tokens_in_encoder():
    model, params, tokens = make(causal=False, num_classes=3, pooling="cls")
    logits = model.apply({"params": params}, tokens)
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % V)
    assert not np.allclose(model.apply({"params": params}, changed), logits)


def test_init_scale_multiplies_every_parameter():
    model, _, tokens = make()
    opt = optimizer.make_optimizer(optimizer.default_config(), 10)
    base = train.init_state(jax.random.key(0), tokens_BxL=tokens, model=model, optimizer=opt, init_scale=1.0)
    scaled = train.init_state(jax.random.key(0), tokens_BxL=tokens, model=model, optimizer=opt,
                              init_scale=3.0)
    for a, b in zip(jax.tree.leaves(base.params), jax.tree.leaves(scaled.params)):
        np.testing.assert_allclose(b, 3.0 * a, rtol=1e-6)
    # LayerNorm scales start at 1, so they too must have become 3.
    assert float(scaled.params["ln_final"]["scale"][0]) == pytest.approx(3.0)
    assert float(params_lib.global_norm(scaled.params)) == pytest.approx(
        3.0 * float(params_lib.global_norm(base.params)), rel=1e-5)


def test_layer_norms_add_up_to_global_norm():
    _, params, _ = make()
    per_layer = params_lib.layer_norms(params)
    assert set(per_layer) == {"embed", "pos_embed", "block_0", "block_1", "ln_final", "head"}
    total = np.sqrt(sum(float(v) ** 2 for v in per_layer.values()))
    assert total == pytest.approx(float(params_lib.global_norm(params)), rel=1e-5)


@pytest.mark.parametrize("field,value", [("d_model", 0), ("num_layers", -1), ("num_heads", 3),
                                         ("activation", "tanh"), ("pos_embedding", "rope")])
def test_bad_model_config_names_the_flag(field, value):
    cfg = model_lib.TransformerConfig(vocab_size=V, max_len=L, d_model=16, num_heads=4)
    bad = model_lib.TransformerConfig(**{**cfg.__dict__, field: value})
    with pytest.raises(validation.ConfigError, match=f"--config.model.{field}"):
        bad.validate()
