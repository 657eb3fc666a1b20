"""XLA's matrix-product kernels against PyTorch's, on the products of a train step's dense layers.

For each dense layer of a `vs_pytorch` model, times the forward product X @ W and the backward
ones dY @ W^T and X^T @ dY, jitted in JAX at the rows of one micro-batch slice (as the phasemix
step runs them) and with `torch.mm` at the whole batch (as PyTorch's eager step runs them;
transposes as views, as autograd passes them), alternately in this one process; ratios are
medians over rounds. XLA compiles them with the model's compiler options (the grokking model's
without YNNPACK, as its experiments run). JAX runs 16 products per call, each feeding the next
through one elementwise add, so that the per-call dispatch cost does not count and XLA cannot
hoist them. Attention's batched products are left out. It says how fast a train step can be
relative to PyTorch's when both are bound by these products.
Needs the `bench` extra:
  python -m benchmarks.matmul_kernels
  python -m benchmarks.matmul_kernels --models=small_lm --batch_sizes=512 --rounds=7
"""

from __future__ import annotations

import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.vs_pytorch import (_BATCH_SIZES, _MODELS, _ROUNDS, _SECONDS, BENCHES, Bench,
                                   steps_per_second)
from phasemix import compilation, train


def dense_products(bench: Bench, rows: int) -> dict[tuple[str, int, int, int, bool], int]:
    """{(name, m, k, n, left operand transposed): times per step} of the dense layers' forward
    and backward products for `rows` examples (the last block at one position, if trimmed)."""
    cfg = bench.cfg
    tokens = rows * bench.seq_len
    products: dict[tuple[str, int, int, int, bool], int] = {}

    def add(name: str, count: int, fan_in: int, fan_out: int) -> None:
        for key in ((f"{name} X@W", count, fan_in, fan_out, False),
                    (f"{name} dY@W^T", count, fan_out, fan_in, False),
                    (f"{name} X^T@dY", fan_in, count, fan_out, True)):
            products[key] = products.get(key, 0) + 1

    for i in range(cfg.num_layers):
        trimmed = cfg.last_position_only and i == cfg.num_layers - 1
        after_attention = rows if trimmed else tokens
        add("qkv", tokens, cfg.d_model, 3 * cfg.d_model)
        add("attn_out", after_attention, cfg.d_model, cfg.d_model)
        add("mlp_in", after_attention, cfg.d_model, cfg.d_mlp)
        add("mlp_out", after_attention, cfg.d_mlp, cfg.d_model)
    if cfg.num_classes:  # the classifier's head sees one pooled row per example
        add("head", rows, cfg.d_model, cfg.num_classes)
    else:
        add("head", rows if cfg.last_position_only else tokens, cfg.d_model, cfg.vocab_size)
    return products


PRODUCTS_PER_CALL = 16  # JAX repeats a product inside one call: no dispatch cost per product


def _operands(m: int, k: int, n: int, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    left = rng.standard_normal((k, m) if transposed else (m, k), np.float32)
    return left, rng.standard_normal((k, n), np.float32)


def _jax_runner(m: int, k: int, n: int, transposed: bool, options: dict[str, Any]):
    """Runs a number of XLA products (compiled with `options`), PRODUCTS_PER_CALL per call."""
    def body(_, carry):  # each product feeds the next, so that XLA cannot hoist it
        a, b, total = carry
        out = (a.T if transposed else a) @ b
        return a + 1e-30 * out[0, 0], b, total + out[0, 0]

    products = jax.jit(lambda a, b: jax.lax.fori_loop(
        0, PRODUCTS_PER_CALL, body, (a, b, jnp.float32(0)))[2], compiler_options=options)
    left, right = map(jnp.asarray, _operands(m, k, n, transposed))

    def run(count):
        for _ in range(max(1, count // PRODUCTS_PER_CALL)):
            out = products(left, right)
        out.block_until_ready()

    return run


def _torch_runner(m: int, k: int, n: int, transposed: bool):
    """Runs a number of `torch.mm` products."""
    import torch

    left, right = map(torch.from_numpy, _operands(m, k, n, transposed))
    left = left.t() if transposed else left

    def run(count):
        for _ in range(count):
            torch.mm(left, right)

    return run


def main(argv):
    del argv
    import torch

    print(f"jax {jax.__version__}, torch {torch.__version__} with {torch.get_num_threads()} threads")
    for name in _MODELS.value:
        bench = BENCHES[name]
        for batch_size in map(int, _BATCH_SIZES.value):
            slices = train.auto_micro_batches(batch_size, bench.seq_len, 1)
            options = compilation.compiler_options(jax.devices()[0].platform,
                                                   bench.xla_cpu_ynnpack)
            print(f"\n{name}, batch {batch_size}: phasemix in {slices} slice(s) of "
                  f"{batch_size // slices} rows, PyTorch in one")
            print(f"{'product':<16} {'phasemix m x k x n':>20} {'PyTorch m x k x n':>20} "
                  f"{'jax GFLOP/s':>12} {'torch GFLOP/s':>14} {'jax/torch':>10}")
            seconds = {"jax": 0.0, "torch": 0.0}
            for ((label, *jax_shape), count), ((_, *torch_shape), _) in zip(
                    dense_products(bench, batch_size // slices).items(),
                    dense_products(bench, batch_size).items()):
                run_jax = _jax_runner(*jax_shape, options)
                run_torch = _torch_runner(*torch_shape)
                run_jax(PRODUCTS_PER_CALL)
                run_torch(2)
                rates = {"jax": [], "torch": []}
                for _ in range(_ROUNDS.value):
                    rates["jax"].append(steps_per_second(
                        lambda n: run_jax(n * PRODUCTS_PER_CALL), _SECONDS.value)[0] * PRODUCTS_PER_CALL)
                    rates["torch"].append(steps_per_second(run_torch, _SECONDS.value)[0])
                jax_rate, torch_rate = (statistics.median(rates[key]) for key in ("jax", "torch"))
                ratio = statistics.median(a / (slices * b) for a, b in zip(rates["jax"], rates["torch"]))
                seconds["jax"] += count * slices / jax_rate
                seconds["torch"] += count / torch_rate
                flops = 2 * jax_shape[0] * jax_shape[1] * jax_shape[2]
                print(f"{label:<16} {' x '.join(map(str, jax_shape[:3])):>20} "
                      f"{' x '.join(map(str, torch_shape[:3])):>20} {flops * jax_rate / 1e9:>12.1f} "
                      f"{flops * slices * torch_rate / 1e9:>14.1f} {ratio:>9.2f}x", flush=True)
            print(f"all products of a step: XLA's kernels {seconds['torch'] / seconds['jax']:.2f}x "
                  f"PyTorch's speed ({seconds['jax'] * 1e3:.1f} ms vs {seconds['torch'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    # The models, batch sizes, rounds and seconds flags are vs_pytorch's; a product is quick.
    flags.FLAGS.set_default("seconds", 0.3)
    app.run(main)
