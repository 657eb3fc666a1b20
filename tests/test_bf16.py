"""bfloat16 compute (`--config.model.dtype=bfloat16`): bfloat16 products, float32 everything
that accumulates (parameters, optimizer state, attention scores, logits, loss)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from experiments import grokking
from phasemix.base import run_io
from phasemix.training import losses, model as model_lib, sharding, train

B, L, V = 4, 7, 11


def _dot_operand_dtypes(fn, *args) -> set[str]:
    """The operand dtypes of every matrix product in `fn`'s jaxpr (nested ones included)."""
    found: set[str] = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.update(str(v.aval.dtype) for v in eqn.invars)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    if isinstance(sub, jax_core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax_core.Jaxpr):
                        walk(sub)

    # A jitted function with compiler options is traced itself: it may not nest in make_jaxpr.
    walk(fn.trace(*args).jaxpr.jaxpr if hasattr(fn, "trace") else jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _bf16_smoke_config():
    config = grokking.get_config("smoke")
    config.model.dtype = "bfloat16"
    return config


def test_a_bf16_step_keeps_parameters_and_optimizer_state_float32():
    config = _bf16_smoke_config()
    config.opt.warmup_steps = 0  # so that the one step moves the parameters at full lr
    task = grokking.make_task(config)
    mesh = sharding.make_mesh()
    programs = train.build_programs(config, task, mesh)
    state = programs.init(jax.random.key(0))
    batch = sharding.put_batch(task.train_batches[0], mesh)
    # The products themselves run in bfloat16 (forward and backward).
    assert "bfloat16" in _dot_operand_dtypes(programs.step, state, batch)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = programs.step(state, batch)
    floats = [x for x in jax.tree.leaves((state.params, state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert len(floats) >= 3 * len(jax.tree.leaves(state.params))  # params, Adam's mu and nu
    assert {str(x.dtype) for x in floats} == {"float32"}
    assert metrics["batch_loss"].dtype == jnp.float32 and np.isfinite(metrics["batch_loss"])
    moved = [np.abs(np.asarray(a) - b).max() for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(before))]
    assert min(moved) > 0  # every parameter took a float32 update


@pytest.mark.parametrize("num_classes", [None, 3])
def test_bf16_logits_are_float32_accumulated_and_close_to_float32(num_classes):
    cfg = model_lib.TransformerConfig(vocab_size=V, max_len=L, num_layers=2, d_model=32,
                                      num_heads=4, d_mlp=64, causal=num_classes is None,
                                      num_classes=num_classes, pooling="mean")
    tokens_BxL = jax.random.randint(jax.random.key(1), (B, L), 0, V)
    f32 = model_lib.Transformer(cfg)
    bf16 = model_lib.Transformer(dataclasses.replace(cfg, dtype="bfloat16"))
    params = f32.init(jax.random.key(0), tokens_BxL)["params"]
    logits_f32 = f32.apply({"params": params}, tokens_BxL)
    logits_bf16 = bf16.apply({"params": params}, tokens_BxL)
    assert logits_bf16.dtype == jnp.float32
    assert "bfloat16" in _dot_operand_dtypes(
        lambda p: bf16.apply({"params": p}, tokens_BxL), params)
    # Accumulated in float32: most logits are not bfloat16 numbers (a bfloat16 head output
    # cast to float32 afterwards would make every one of them one).
    values = np.asarray(logits_bf16)
    rounded = np.asarray(logits_bf16.astype(jnp.bfloat16).astype(jnp.float32))
    assert np.mean(values != rounded) > 0.5
    # The same function up to bfloat16's 8-bit mantissa (logits here are O(1)).
    np.testing.assert_allclose(values, np.asarray(logits_f32), atol=0.1)
    assert np.abs(values - np.asarray(logits_f32)).max() > 0  # it did compute in bfloat16


def test_losses_compute_in_float32_from_bf16_logits():
    logits_BxLxV = jax.random.normal(jax.random.key(0), (B, L, V)).astype(jnp.bfloat16)
    batch = {"targets": jnp.zeros((B, L), jnp.int32), "loss_mask": jnp.ones((B, L))}
    loss, sums = losses.masked_token_loss(logits_BxLxV, batch)
    expected, _ = losses.masked_token_loss(logits_BxLxV.astype(jnp.float32), batch)
    assert loss.dtype == jnp.float32 and sums["loss_sum"].dtype == jnp.float32
    assert float(loss) == float(expected)
    labels = {"labels": jnp.zeros((B,), jnp.int32)}
    loss_c, _ = losses.classification_loss(logits_BxLxV[:, 0], labels)
    assert loss_c.dtype == jnp.float32
    assert float(loss_c) == float(losses.classification_loss(
        logits_BxLxV[:, 0].astype(jnp.float32), labels)[0])


def test_bf16_smoke_run_trains_like_float32(tmp_path):
    """The grokking smoke run in bfloat16 is finite, its loss falls, and its final train loss
    is within 5e-3 of the float32 run's.

    Measured on a 2-core CPU (seeds 0, 1, 2; final train loss float32 / bfloat16):
    2.8380 / 2.8382, 3.0388 / 3.0390, 2.9569 / 2.9575, so |difference| <= 6e-4 while the loss
    falls by ~0.8 over the run. 5e-3 is ~8x the largest difference measured; logits or a
    softmax rounded to bfloat16 would move the loss by more than that.
    """
    final = {}
    for dtype in ("float32", "bfloat16"):
        config = grokking.get_config("smoke")
        config.model.dtype = dtype
        summary = grokking.run(config, str(tmp_path / dtype))
        rows = run_io.read_metrics(tmp_path / dtype)
        train_losses = [r["train_loss"] for r in rows]
        assert all(np.isfinite(v) for r in rows for v in r.values())
        assert train_losses[-1] < train_losses[0] - 0.5, (dtype, train_losses)
        assert summary["final_step"] == config.num_steps
        final[dtype] = summary["final_train_loss"]
    assert abs(final["bfloat16"] - final["float32"]) <= 5e-3, final
