"""The compilation counter, and a training loop that compiles nothing after its first step."""

import jax
import jax.numpy as jnp

from experiments import grokking
from phasemix import compilation


def test_counter_sees_a_retrace():
    @jax.jit
    def doubled(x):
        return 2 * x

    before = compilation.snapshot()
    doubled(jnp.ones(2))
    doubled(jnp.ones(2))  # cached: no compilation
    doubled(jnp.ones(3))  # new shape: compiles again
    counted = compilation.snapshot() - before
    assert counted["jit(doubled)"] == 2, counted


def test_loop_with_frequent_eval_and_checkpoints_compiles_once(tmp_path):
    config = grokking.get_config("smoke")
    config.num_steps, config.eval_every, config.checkpoint_every = 12, 2, 3
    summary = grokking.run(config, str(tmp_path))
    assert summary["recompilations"] == 0, summary
