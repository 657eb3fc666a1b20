"""XLA's matrix-product kernels against PyTorch's and NumPy's (OpenBLAS), on the products of a
train step's dense layers.

For each dense layer of a `vs_pytorch` model, times the forward product X @ W and the backward
ones dY @ W^T and X^T @ dY, jitted in JAX at the rows of one micro-batch slice (as the phasemix
step runs them), and with `torch.mm` and NumPy at the whole batch (as PyTorch's eager step runs
them; transposes as views, as autograd passes them), alternately in this one process; times are
medians over rounds. XLA compiles them with the model's compiler options (the grokking model's
without YNNPACK, as its experiments run). JAX runs 16 products per call, each feeding the next
through one elementwise add, so that the per-call dispatch cost does not count and XLA cannot
hoist them. Attention's batched products are left out. It says how fast a train step can be
relative to PyTorch's when both are bound by these products; with --step it also times
PyTorch's whole step and says how much of a step 1.3x faster than it the products would take
at the fastest of the three kernels, each timed alone (products inside a step can run slower
than alone, so this is an optimistic bound).
Needs the `bench` extra:
  python -m benchmarks.matmul_kernels
  python -m benchmarks.matmul_kernels --models=small_lm --batch_sizes=64,512 --rounds=7 --step
"""

from __future__ import annotations

import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import TARGET_SPEEDUP
from benchmarks.vs_pytorch import (_BATCH_SIZES, _MODELS, _ROUNDS, _SECONDS, BENCHES, Bench,
                                   make_batch, steps_per_second, torch_step)
from phasemix.training import compilation, train


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


_STEP = flags.DEFINE_bool("step", False, "Also time PyTorch's whole train step, and say how much "
                          "of a step TARGET_SPEEDUP times faster its products would fill.")
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


def _numpy_runner(m: int, k: int, n: int, transposed: bool):
    """Runs a number of NumPy products (its bundled OpenBLAS; a transpose is a BLAS flag)."""
    left, right = _operands(m, k, n, transposed)
    left = left.T if transposed else left

    def run(count):
        for _ in range(count):
            out = np.matmul(left, right)
        return out

    return run


KERNELS = ("jax", "torch", "numpy")


def time_products(bench: Bench, batch_size: int, options: dict[str, Any]
                  ) -> list[tuple[str, tuple, tuple, int, dict[str, float]]]:
    """(label, phasemix shape, whole-batch shape, times per step, {kernel: seconds per step})
    for each dense product: XLA at one slice's rows, PyTorch and NumPy at the whole batch's."""
    slices = train.auto_micro_batches(batch_size, bench.seq_len, 1)
    out = []
    for ((label, *jax_shape), count), ((_, *whole_shape), _) in zip(
            dense_products(bench, batch_size // slices).items(),
            dense_products(bench, batch_size).items()):
        run_jax = _jax_runner(*jax_shape, options)
        runners = {"jax": lambda n, run=run_jax: run(n * PRODUCTS_PER_CALL),
                   "torch": _torch_runner(*whole_shape), "numpy": _numpy_runner(*whole_shape)}
        for run in runners.values():
            run(1)
        rates = {key: [] for key in KERNELS}
        for _ in range(_ROUNDS.value):  # alternated, so the VM's drifts hit every kernel alike
            for key, run in runners.items():
                rates[key].append(steps_per_second(run, _SECONDS.value)[0])
        per_call = {"jax": count * slices / PRODUCTS_PER_CALL, "torch": count, "numpy": count}
        seconds = {key: per_call[key] / statistics.median(rates[key]) for key in KERNELS}
        out.append((label, tuple(jax_shape[:3]), tuple(whole_shape[:3]), count, seconds))
    return out


def torch_step_seconds(bench: Bench, batch_size: int) -> float:
    """Seconds per PyTorch eager train step (median of the rounds)."""
    step, _ = torch_step(bench, make_batch(bench, batch_size))
    step()
    return statistics.median(1 / steps_per_second(lambda n: [step() for _ in range(n)],
                                                  _SECONDS.value)[0]
                             for _ in range(_ROUNDS.value))


def main(argv):
    del argv
    import torch

    print(f"jax {jax.__version__}, torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads, numpy {np.__version__}")
    for name in _MODELS.value:
        bench = BENCHES[name]
        for batch_size in map(int, _BATCH_SIZES.value):
            slices = train.auto_micro_batches(batch_size, bench.seq_len, 1)
            options = compilation.compiler_options(jax.devices()[0].platform,
                                                   bench.xla_cpu_ynnpack)
            print(f"\n{name}, batch {batch_size}: phasemix in {slices} slice(s) of "
                  f"{batch_size // slices} rows, PyTorch and NumPy in one")
            print(f"{'product':<16} {'phasemix m x k x n':>20} {'whole m x k x n':>20} "
                  f"{'jax GFLOP/s':>12} {'torch GFLOP/s':>14} {'numpy GFLOP/s':>14} "
                  f"{'jax/torch':>10}")
            rows = time_products(bench, batch_size, options)
            totals = {key: sum(r[4][key] for r in rows) for key in KERNELS}
            fastest = sum(min(r[4].values()) for r in rows)
            for label, jax_shape, whole_shape, count, seconds in rows:
                gflops = {key: count * 2 * np.prod(whole_shape) / seconds[key] / 1e9
                          for key in KERNELS}
                print(f"{label:<16} {' x '.join(map(str, jax_shape)):>20} "
                      f"{' x '.join(map(str, whole_shape)):>20} {gflops['jax']:>12.1f} "
                      f"{gflops['torch']:>14.1f} {gflops['numpy']:>14.1f} "
                      f"{seconds['torch'] / seconds['jax']:>9.2f}x", flush=True)
            print(f"all products of a step: XLA's kernels {totals['torch'] / totals['jax']:.2f}x "
                  f"PyTorch's speed ({totals['jax'] * 1e3:.1f} ms vs {totals['torch'] * 1e3:.1f} "
                  f"ms; NumPy's {totals['numpy'] * 1e3:.1f} ms); the fastest of the three for "
                  f"each product: {fastest * 1e3:.1f} ms")
            if _STEP.value:
                step = torch_step_seconds(bench, batch_size)
                target = step / TARGET_SPEEDUP
                print(f"PyTorch's whole step {step * 1e3:.1f} ms, of which its products "
                      f"{totals['torch'] * 1e3:.1f} ms and the rest {(step - totals['torch']) * 1e3:.1f}"
                      f" ms; {TARGET_SPEEDUP}x its speed is {target * 1e3:.1f} ms per step: the "
                      f"products alone at the fastest kernels take {fastest / target:.0%} of it, "
                      f"leaving {(target - fastest) * 1e3:.1f} ms for everything else", flush=True)


if __name__ == "__main__":
    # The models, batch sizes, rounds and seconds flags are vs_pytorch's; a product is quick.
    flags.FLAGS.set_default("seconds", 0.3)
    app.run(main)
