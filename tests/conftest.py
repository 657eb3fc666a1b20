"""Shared test fixtures: tiny configs and a runner for subprocesses with N simulated devices."""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One XLA compilation cache per test process, inherited by the subprocesses it starts (sweep
# workers, notebooks, multi-device runs): many tests train the same smoke programs, and a
# cache hit replaces a compile (test_train.py: 1.5x faster). Removed at exit, so every
# pytest run starts cold. Set JAX_COMPILATION_CACHE_DIR yourself to keep one across runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="phasemix-test-xla-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "jax" in sys.modules:  # imported before this file (by a plugin): tell it directly
        sys.modules["jax"].config.update("jax_compilation_cache_dir", _XLA_CACHE)
        sys.modules["jax"].config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_python(code: str, num_devices: int = 1, timeout: int = 300) -> dict:
    """Runs `code` in a fresh interpreter with `num_devices` CPU devices; returns its last JSON line."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def smoke_config():
    from experiments import grokking

    return grokking.get_config("smoke")
