"""The compilation counter, a training loop that compiles nothing after its first step, and the
compiler options the programs are built with."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import grokking
from phasemix.training import compilation, sharding, train


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


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_loop_with_frequent_eval_and_checkpoints_compiles_once(tmp_path, micro_batches):
    config = grokking.get_config("smoke")
    config.num_steps, config.eval_every, config.checkpoint_every = 12, 2, 3
    config.micro_batches = micro_batches
    summary = grokking.run(config, str(tmp_path))
    assert summary["recompilations"] == 0, summary


def test_a_rerun_loads_its_programs_from_the_xla_cache(tmp_path):
    """The entry points keep compiled programs in --xla_cache: the second run adds none."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    cache = tmp_path / "xla"

    def run(name):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.grokking",
             "--config=experiments/grokking.py:smoke", f"--workdir={tmp_path / name}",
             f"--xla_cache={cache}"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return sorted(p.name for p in cache.iterdir())

    first = run("a")
    assert first  # the train step, eval and init were kept
    assert run("b") == first  # every program of the rerun came from the cache


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compiler option")
def test_grokking_programs_use_xla_dots_without_ynnpack_and_the_others_keep_it():
    config = grokking.get_config("smoke")
    mesh = sharding.make_mesh()
    task = grokking.make_task(config, jax.device_count())
    batch = sharding.put_batch(task.train_batches[0], mesh)

    def ynnpack_fusions_and_barriers(ynnpack: bool) -> tuple[int, int]:
        config.xla_cpu_ynnpack = ynnpack
        programs = train.build_programs(config, task, mesh)
        lowered = programs.step.lower(programs.init(jax.random.key(0)), batch)
        return (lowered.compile().as_text().count("__ynn_fusion"),
                lowered.as_text().count("optimization_barrier"))

    assert grokking.get_config().xla_cpu_ynnpack is False
    # With YNNPACK the dense layers take their kernel gradients as (dY^T X)^T, one barrier each
    # (4 per block and the head); with XLA's own dots as autodiff writes them.
    assert ynnpack_fusions_and_barriers(False) == (0, 0)
    fusions, barriers = ynnpack_fusions_and_barriers(True)
    assert fusions > 0 and barriers == 4 * config.model.num_layers + 1
    vmapped = train.build_programs(config, task, mesh, num_runs=2)  # kept as autodiff writes it
    hparams = train.stacked_hyperparameters([config, config])
    states = vmapped.init(jax.random.split(jax.random.key(0), 2), hparams)
    stacked = sharding.put_batch(jax.tree.map(lambda x: np.stack([x, x]), task.train_batches[0]),
                                 mesh, batch_axis=1)
    assert "optimization_barrier" not in vmapped.step.lower(states, stacked, hparams).as_text()


def test_an_option_this_xla_lacks_is_left_out():
    assert not compilation._cpu_accepts("xla_cpu_no_such_option_here", "")
