"""The benchmarks' FLOP count: the figure the speed claims divide by."""

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.common import matmul_flops


def test_matmul_flops_counts_every_iteration_of_a_scan():
    a_4x8, b_8x3 = jnp.ones((4, 8)), jnp.ones((8, 3))
    once = matmul_flops(lambda a, b: a @ b, a_4x8, b_8x3)
    assert once == 2 * 4 * 8 * 3

    def scanned(a, b):  # the sliced train step is such a loop, partly unrolled
        return jax.lax.scan(lambda c, x: (c + x @ b, None), jnp.zeros(3), a, unroll=2)[0]

    assert matmul_flops(scanned, a_4x8, b_8x3) == once


def test_kernel_benchmark_times_every_dense_product_of_the_step():
    """`matmul_kernels`' products plus attention (and mean pooling, forward and input gradient)
    are the step's matrix-product FLOPs."""
    from benchmarks import matmul_kernels, vs_pytorch

    for name, bench in vs_pytorch.BENCHES.items():
        batch = vs_pytorch.make_batch(bench, 4)
        step, state, device_batch, _ = vs_pytorch.jax_step(bench, batch, 1)
        dense = sum(count * 2 * m * k * n for (_, m, k, n, _), count
                    in matmul_kernels.dense_products(bench, 4).items())
        pooling = 2 * 2 * 4 * bench.seq_len * bench.cfg.d_model if bench.cfg.pooling == "mean" else 0
        assert dense + pooling + vs_pytorch.attention_flops(bench, 4) == matmul_flops(
            step, state, device_batch), name


def test_the_numpy_kernel_multiplies_the_shape_it_is_timed_at():
    """m x k times k x n, with the left operand passed transposed (a view) for X^T dY."""
    from benchmarks import matmul_kernels

    for transposed in (False, True):
        left, right = matmul_kernels._operands(3, 4, 5, transposed)
        expected = (left.T if transposed else left) @ right
        out = matmul_kernels._numpy_runner(3, 4, 5, transposed)(2)
        assert out.shape == (3, 5)
        np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_ratios_are_per_round_and_the_spread_is_the_middle_half():
    from benchmarks import vs_pytorch

    ratios = vs_pytorch.round_ratios([2.0, 3.0, 1.0, 8.0, 5.0], [1.0, 1.0, 1.0, 2.0, 1.0])
    assert ratios == [2.0, 3.0, 1.0, 4.0, 5.0]
    assert vs_pytorch.quartiles(ratios) == (2.0, 4.0)
    assert vs_pytorch.quartiles([1.5]) == (1.5, 1.5)


@pytest.mark.parametrize("switch", ["ynnpack", "kernel_grads"])
def test_ynnpack_benchmark_compiles_one_computation_two_ways(switch):
    """Its two steps differ in kernels, not in what they compute: same loss, same update."""
    from benchmarks import vs_pytorch, ynnpack
    from experiments import critical_data_size

    bench = vs_pytorch.sweep_base_bench()
    assert bench.cfg.d_model == critical_data_size.get_config().base.model.d_model
    _, steps = ynnpack.both_steps(bench, 8, switch)
    texts = [str(step.trace(state, batch).jaxpr) for step, state, batch in steps.values()]
    barriers = [text.count("optimization_barrier") for text in texts]
    # Either switch: the "on" step alone takes the transposed kernel gradients (with YNNPACK
    # on they follow it, as in the experiments), and the two steps compute the same update.
    assert barriers[0] == 0 and barriers[1] > 0
    (state_off, metrics_off), (state_on, metrics_on) = (
        step(state, batch) for step, state, batch in (steps[False], steps[True]))
    np.testing.assert_allclose(metrics_off["batch_loss"], metrics_on["batch_loss"], rtol=1e-5)
    for off, on in zip(jax.tree.leaves(state_off.params), jax.tree.leaves(state_on.params)):
        np.testing.assert_allclose(off, on, rtol=1e-4, atol=1e-6)



def test_runners_take_turns_within_each_round():
    from benchmarks import vs_pytorch

    calls, round_ends = [], []

    def runner(key):
        def run(n):
            calls.append(key)
            time.sleep(1e-5 * n)  # a step takes 10 us
        return run

    rates = vs_pytorch.alternated_rates({"a": runner("a"), "b": runner("b")}, 3, 2e-3,
                                        after_round=lambda: round_ends.append(len(calls)))
    assert calls[:2] == ["a", "b"]  # one warm-up call each
    assert len(rates["a"]) == len(rates["b"]) == 3 and len(round_ends) == 3
    for start, end in zip([2, *round_ends[:-1]], round_ends):  # a's turn, then b's, per round
        keys = calls[start:end]
        assert keys == sorted(keys) and set(keys) == {"a", "b"}


def test_step_profile_sorts_every_operation_of_a_traced_step():
    """Each product of the compiled step is found in the trace, control flow (a scan's while
    loop, whose event spans its body's) is not counted, so no thread is busier than the wall."""
    from benchmarks import step_profile, vs_pytorch
    from phasemix.training import model as model_lib

    bench = vs_pytorch.Bench(model_lib.TransformerConfig(
        vocab_size=11, max_len=4, d_model=16, num_heads=2, d_mlp=32), "lm", 4)
    batch = vs_pytorch.make_batch(bench, 8)
    step, state, device_batch, _ = vs_pytorch.jax_step(bench, batch, 8)  # a loop of 2 x 4
    text = step.lower(state, device_batch).compile().as_text()
    loops = re.findall(r"%([\w.\-]+) = [^\n]* while\(", text)
    ops = step_profile.compiled_ops(text)
    assert loops and not set(loops) & set(ops)
    runner = vs_pytorch.jax_runner(step, state, device_batch)
    runner(1)
    events, wall = step_profile.trace_steps(runner, 2)
    traced = {name for _, name, _ in events}
    products = {name for name, op in ops.items() if op.is_product}
    assert products and products <= traced
    profile = step_profile.profile_ops(events, ops, 2, wall)
    assert profile.products > 0 and profile.others > 0
    assert sum(profile.busy_by_thread.values()) == pytest.approx(
        profile.products + profile.others)
    assert max(profile.busy_by_thread.values()) <= wall * 1.05
    assert "jvp(Transformer)/block_0/tanh" in profile.others_by_name  # the GELU, by JAX name


def test_step_profile_reads_products_through_nested_fusions():
    from benchmarks import step_profile

    text = "\n".join([
        "%inner (p: f32[2,2]) -> f32[2,2] {",
        "  ROOT %dot.1 = f32[2,2]{1,0} dot(%p, %p), lhs_contracting_dims={1}",
        "}",
        "%outer (p: f32[2,2]) -> f32[2,2] {",
        "  ROOT %f = f32[2,2]{1,0} fusion(%p), kind=kLoop, calls=%inner",
        "}",
        "ENTRY %main (a: f32[2,2]) -> f32[2,2] {",
        "  %a = f32[2,2]{1,0} parameter(0)",
        '  %ynn_fusion.3 = f32[2,2]{1,0} fusion(%a), kind=kCustom, calls=%outer, '
        'metadata={op_name="jit(train_step)/while/body/closed_call/jvp(Transformer)/head/'
        'dot_general"}',
        '  ROOT %tanh_fusion = f32[2,2]{1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%other',
        "}",
    ])
    ops = step_profile.compiled_ops(text)
    assert ops["ynn_fusion.3"] == step_profile.Op(True, "jvp(Transformer)/head/dot_general")
    assert ops["tanh_fusion"] == step_profile.Op(False, "")
    assert "a" not in ops
    profile = step_profile.profile_ops(
        [("t0", "ynn_fusion.3", 0.4), ("t1", "tanh_fusion", 0.2), ("t1", "Region", 5.0)],
        ops, 2, 1.0)
    assert (profile.products, profile.others) == (0.2, 0.1)
    assert profile.busy_by_thread == {"t0": 0.2, "t1": 0.1}


def test_read_ahead_settings_parse_and_a_bad_one_names_the_flag():
    from benchmarks import data_prefetch

    assert data_prefetch.parse_settings(["0:0", "2:0", "4:2"]) == [(0, 0), (2, 0), (4, 2)]
    for bad in ("2", "a:1", "-1:0", "0:1"):
        with pytest.raises(SystemExit, match=r"^error: --settings=0:0,"):
            data_prefetch.parse_settings(["0:0", bad])
