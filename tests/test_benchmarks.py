"""The benchmarks' FLOP count: the figure the speed claims divide by."""

import jax
import jax.numpy as jnp

from benchmarks.common import matmul_flops


def test_matmul_flops_counts_every_iteration_of_a_scan():
    a_4x8, b_8x3 = jnp.ones((4, 8)), jnp.ones((8, 3))
    once = matmul_flops(lambda a, b: a @ b, a_4x8, b_8x3)
    assert once == 2 * 4 * 8 * 3

    def scanned(a, b):  # the sliced train step is such a loop, partly unrolled
        return jax.lax.scan(lambda c, x: (c + x @ b, None), jnp.zeros(3), a, unroll=2)[0]

    assert matmul_flops(scanned, a_4x8, b_8x3) == once
