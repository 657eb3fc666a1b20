"""A small Flax Linen transformer: causal decoder (next/answer token) or encoder classifier.

Shape suffixes: B batch, L sequence length, D model width, H heads, K head width, F MLP width,
V vocabulary, C classes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from phasemix.base import validation

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": nn.gelu,
    "relu": nn.relu,
    "silu": nn.silu,
}
POS_EMBEDDINGS = ("learned", "sinusoidal", "none")
POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of `Transformer`; `from_config` builds it from `config.model`."""

    vocab_size: int
    max_len: int
    num_layers: int = 1
    d_model: int = 128
    num_heads: int = 4
    d_mlp: int = 512
    activation: str = "gelu"
    pos_embedding: str = "learned"
    causal: bool = True
    num_classes: int | None = None  # None: a token head over the vocabulary (decoder).
    pooling: str = "cls"  # classifier only: first token ("cls") or masked mean.
    # Compute dtype of the matrix products and activations. Parameters (so the optimizer
    # state) stay float32; attention scores, softmax, logits and loss are float32 either way.
    dtype: str = "float32"
    # Decoder only: logits at the last position alone, (B, 1, V). The last block then runs its
    # attention queries, MLP and the head on that one position, which is all an answer-token
    # loss reads; the outputs and gradients are those of the full model at that position.
    last_position_only: bool = False
    # How the dense layers' kernel gradients are computed, not what: False, X^T dY as autodiff
    # writes it; True, (dY^T X)^T (`transposed_kernel_grad_dot`). The same gradients up to float
    # rounding. `train.build_programs` sets it where it measured faster (CPUs with YNNPACK).
    transposed_kernel_grads: bool = False

    @classmethod
    def from_config(cls, model: ml_collections.ConfigDict, **fixed) -> "TransformerConfig":
        """Takes the fields of `config.model` that name model hyper-parameters."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in model.items() if k in names}
        kwargs.update(fixed)
        return cls(**kwargs)

    def validate(self) -> "TransformerConfig":
        for name in ("num_layers", "d_model", "num_heads", "d_mlp", "vocab_size", "max_len"):
            validation.require(getattr(self, name) > 0, f"model.{name}", "must be positive",
                               getattr(self, name))
        validation.require(self.d_model % self.num_heads == 0, "model.num_heads",
                           f"must divide model.d_model={self.d_model}", self.num_heads)
        validation.require_choice(self.activation, ACTIVATIONS, "model.activation")
        validation.require_choice(self.pos_embedding, POS_EMBEDDINGS, "model.pos_embedding")
        validation.require_choice(self.pooling, POOLINGS, "model.pooling")
        validation.require_choice(self.dtype, ("float32", "bfloat16"), "model.dtype")
        validation.require(not (self.last_position_only and self.num_classes is not None),
                           "model.last_position_only", "applies to decoders only (num_classes "
                           f"is {self.num_classes})", self.last_position_only)
        if self.num_classes is not None:
            validation.require(self.num_classes >= 2, "model.num_classes", "must be >= 2",
                               self.num_classes)
        return self


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _kernel_dot(x: jax.Array, kernel: jax.Array, num_contracted: int) -> jax.Array:
    """x's last `num_contracted` dims against kernel's first ones (a dense layer's product)."""
    return lax.dot_general(x, kernel, _dense_dims(x.ndim, num_contracted))


def _dense_dims(x_ndim: int, num_contracted: int) -> lax.DotDimensionNumbers:
    return ((tuple(range(x_ndim - num_contracted, x_ndim)), tuple(range(num_contracted))),
            ((), ()))


def _kernel_dot_fwd(x, kernel, num_contracted):
    return lax.dot_general(x, kernel, _dense_dims(x.ndim, num_contracted)), (x, kernel)


def _kernel_dot_bwd(num_contracted, residuals, dy):
    x, kernel = residuals
    num_rows = x.ndim - num_contracted  # batch and position dims: summed over for the kernel
    num_features = kernel.ndim - num_contracted
    dx = lax.dot_general(dy, kernel, ((tuple(range(num_rows, dy.ndim)),
                                       tuple(range(num_contracted, kernel.ndim))), ((), ())))
    # dY^T X, (features..., contracted...), then transposed to the kernel's layout. XLA's CPU
    # kernels (YNNPACK) run this product 1.1-1.6x faster than X^T dY at a slice's rows. The
    # barrier keeps the product whole: without it XLA's simplifier merges the transpose into
    # the dot, and that dot is slower still.
    kernel_grad_T = lax.optimization_barrier(lax.dot_general(
        dy, x, ((tuple(range(num_rows)), tuple(range(num_rows))), ((), ()))))
    return dx, jnp.transpose(kernel_grad_T, (*range(num_features, kernel.ndim),
                                             *range(num_features)))


_kernel_dot.defvjp(_kernel_dot_fwd, _kernel_dot_bwd)


def transposed_kernel_grad_dot(x: jax.Array, kernel: jax.Array,
                               dimension_numbers: lax.DotDimensionNumbers,
                               precision: Any = None, preferred_element_type: Any = None
                               ) -> jax.Array:
    """`lax.dot_general` for Flax's Dense layers, whose kernel gradient is (dY^T X)^T.

    Takes the products Dense and DenseGeneral make (x's trailing dims against the kernel's
    leading ones, no batch dims, default precision); anything else goes to `lax.dot_general`.
    """
    (x_contracted, kernel_contracted), batch_dims = dimension_numbers
    n = len(x_contracted)
    if (precision is None and preferred_element_type is None and batch_dims == ((), ())
            and ((tuple(x_contracted), tuple(kernel_contracted)), ((), ()))
            == _dense_dims(x.ndim, n)):
        return _kernel_dot(x, kernel, n)
    return lax.dot_general(x, kernel, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)


def dense_dot(cfg: TransformerConfig) -> Callable[..., jax.Array] | None:
    """The dense layers' product for `cfg` (None: Flax's default, `lax.dot_general`)."""
    return transposed_kernel_grad_dot if cfg.transposed_kernel_grads else None


def head_dot(cfg: TransformerConfig) -> Callable[..., jax.Array] | None:
    """The output head's product: with a bfloat16 compute dtype, bfloat16 operands that
    accumulate into float32 logits, so that no logit is rounded to bfloat16's 8 bits before
    the softmax; in float32, the dense layers' own (`dense_dot`), unchanged."""
    if jnp.dtype(cfg.dtype) == jnp.float32:
        return dense_dot(cfg)
    return functools.partial(lax.dot_general, preferred_element_type=jnp.float32)


def sinusoidal_positions(max_len: int, d_model: int) -> jax.Array:
    """The fixed sin/cos table of Vaswani et al.; shape (max_len, d_model)."""
    position_L = jnp.arange(max_len)[:, None]
    freq_D2 = jnp.exp(-jnp.log(10_000.0) * jnp.arange(0, d_model, 2) / d_model)
    angle_LxD2 = position_L * freq_D2[None, :]
    table_LxD = jnp.zeros((max_len, d_model))
    table_LxD = table_LxD.at[:, 0::2].set(jnp.sin(angle_LxD2))
    return table_LxD.at[:, 1::2].set(jnp.cos(angle_LxD2[:, : d_model // 2]))


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, mask_BxQxL: jax.Array) -> jax.Array:
        """Queries are the last Q positions (Q = mask_BxQxL.shape[1]); keys are all L."""
        cfg = self.cfg
        head_dim = cfg.d_model // cfg.num_heads
        dtype = jnp.dtype(cfg.dtype)
        num_queries = mask_BxQxL.shape[1]
        qkv_BxLx3xHxK = nn.DenseGeneral((3, cfg.num_heads, head_dim), dtype=dtype,
                                        dot_general=dense_dot(cfg), name="qkv")(x_BxLxD)
        # The 1/sqrt(K) scale goes on the queries, not the logits: L/K times fewer elements,
        # and XLA fuses it into the copy that lays the queries out by head.
        q_BxQxHxK = qkv_BxLx3xHxK[:, x_BxLxD.shape[1] - num_queries:, 0] * head_dim**-0.5
        k_BxLxHxK, v_BxLxHxK = qkv_BxLx3xHxK[:, :, 1], qkv_BxLx3xHxK[:, :, 2]
        # Scores accumulate into float32 and the softmax runs in float32 whatever the compute
        # dtype (bfloat16 products, float32 sums): exp of a bfloat16 score is off by up to 2^-8
        # relative, and the probabilities of a long row would not sum to 1.
        logits_BxHxQxL = jnp.einsum("bqhk,bshk->bhqs", q_BxQxHxK, k_BxLxHxK,
                                    preferred_element_type=jnp.float32)
        logits_BxHxQxL = jnp.where(mask_BxQxL[:, None], logits_BxHxQxL,
                                   jnp.finfo(jnp.float32).min)
        probs_BxHxQxL = jax.nn.softmax(logits_BxHxQxL, axis=-1).astype(dtype)
        out_BxQxHxK = jnp.einsum("bhqs,bshk->bqhk", probs_BxHxQxL, v_BxLxHxK)
        return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), dtype=dtype,
                               dot_general=dense_dot(cfg), name="out")(out_BxQxHxK)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x)).

    The output covers the last Q positions, Q = mask_BxQxL.shape[1] (all L unless trimmed).
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, mask_BxQxL: jax.Array) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        h_BxLxD = nn.LayerNorm(dtype=dtype, name="ln_attn")(x_BxLxD)
        x_BxQxD = x_BxLxD[:, x_BxLxD.shape[1] - mask_BxQxL.shape[1]:]
        x_BxQxD = x_BxQxD + Attention(cfg, name="attn")(h_BxLxD, mask_BxQxL)
        h_BxQxD = nn.LayerNorm(dtype=dtype, name="ln_mlp")(x_BxQxD)
        h_BxQxF = ACTIVATIONS[cfg.activation](nn.Dense(
            cfg.d_mlp, dtype=dtype, dot_general=dense_dot(cfg), name="mlp_in")(h_BxQxD))
        return x_BxQxD + nn.Dense(cfg.d_model, dtype=dtype, dot_general=dense_dot(cfg),
                                  name="mlp_out")(h_BxQxF)


class Transformer(nn.Module):
    """Token ids (B, L) -> logits: (B, L, V) for a decoder, (B, C) for a classifier."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, tokens_BxL: jax.Array, pad_mask_BxL: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        _, seq_len = tokens_BxL.shape
        if pad_mask_BxL is None:
            pad_mask_BxL = jnp.ones(tokens_BxL.shape, dtype=bool)
        x_BxLxD = nn.Embed(cfg.vocab_size, cfg.d_model, name="embed")(tokens_BxL)
        if cfg.pos_embedding == "learned":
            x_BxLxD += nn.Embed(cfg.max_len, cfg.d_model, name="pos_embed")(
                jnp.arange(seq_len))[None]
        elif cfg.pos_embedding == "sinusoidal":
            x_BxLxD += sinusoidal_positions(cfg.max_len, cfg.d_model)[None, :seq_len]
        x_BxLxD = x_BxLxD.astype(dtype)

        # A query attends to keys that are real tokens and, for a decoder, not in its future.
        mask_BxLxL = jnp.broadcast_to(pad_mask_BxL[:, None, :], (*tokens_BxL.shape, seq_len))
        if cfg.causal:
            mask_BxLxL = mask_BxLxL & jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))[None]
        for i in range(cfg.num_layers):
            trim = cfg.last_position_only and i == cfg.num_layers - 1
            block_mask = mask_BxLxL[:, -1:] if trim else mask_BxLxL
            x_BxLxD = Block(cfg, name=f"block_{i}")(x_BxLxD, block_mask)
        x_BxLxD = nn.LayerNorm(dtype=dtype, name="ln_final")(x_BxLxD)

        # The head's logits are float32 (`head_dot`); the bias adds to them in float32.
        if cfg.num_classes is None:  # (B, L, V), or (B, 1, V) with last_position_only
            logits_BxLxV = nn.Dense(cfg.vocab_size, dtype=dtype, dot_general=head_dot(cfg),
                                    name="head")(x_BxLxD)
            return logits_BxLxV.astype(jnp.float32)
        if cfg.pooling == "cls":
            pooled_BxD = x_BxLxD[:, 0]
        else:
            weight_BxL = pad_mask_BxL.astype(dtype)
            pooled_BxD = jnp.einsum("bld,bl->bd", x_BxLxD, weight_BxL) / jnp.maximum(
                weight_BxL.sum(-1, keepdims=True), 1)
        logits_BxC = nn.Dense(cfg.num_classes, dtype=dtype, dot_general=head_dot(cfg),
                              name="head")(pooled_BxD)
        return logits_BxC.astype(jnp.float32)
