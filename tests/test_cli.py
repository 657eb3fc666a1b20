"""The command line every experiment shares (phasemix/runs/cli.py): --help, --print_config and
the refusal of another experiment's config, run as the user runs them."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT
from phasemix.base import run_io, validation
from phasemix.training import train

EXPERIMENTS = ("grokking", "sentiment_grokking", "critical_data_size", "knowledge_mixing",
               "knowledge_phase", "knowledge_capacity", "bimix", "bimix_fit")
SWEEPS = ("critical_data_size", "knowledge_phase", "knowledge_capacity", "bimix")
# Where each experiment's config holds the trainer's fields (None: it trains nothing).
TRAINER = {"grokking": "", "sentiment_grokking": "", "knowledge_mixing": "",
           "critical_data_size": "base.", "knowledge_phase": "base.",
           "knowledge_capacity": "base.", "bimix": "base.", "bimix_fit": None}
TRAINER_FIELDS = ("fsdp", "micro_batches", "xla_cpu_ynnpack", "model.init_scale", "steps_per_call",
                  "data_prefetch", "data_workers")


def run_cli(experiment: str, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"experiments.{experiment}", *flags],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def tree_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_variants_load_and_name_their_experiment(experiment):
    """VARIANTS (what --help lists) are exactly what get_config takes, and every config names
    its experiment, the stem of its file, which the cli checks --config against."""
    module = importlib.import_module(f"experiments.{experiment}")
    assert module.VARIANTS[0] == "" and len(set(module.VARIANTS)) == len(module.VARIANTS)
    for variant in module.VARIANTS:
        config = module.get_config(variant)
        assert config.experiment == experiment, variant
        prefix = TRAINER[experiment]
        if prefix is not None:
            trainer_config = config.base if prefix else config
            for field in train.LOOP_FIELDS:
                parent, _, leaf = field.rpartition(".")
                assert leaf in (trainer_config[parent] if parent else trainer_config), (
                    variant, field)
    with pytest.raises(validation.ConfigError, match="--config: unknown variant 'nope'"):
        module.get_config("nope")


def test_a_trainer_config_without_a_loop_field_is_refused_by_name(smoke_config):
    del smoke_config.fsdp
    with pytest.raises(validation.ConfigError, match=r"^--config.fsdp: is missing"):
        train.validate_loop_config(smoke_config, 1)
    smoke_config.fsdp = 1
    del smoke_config.model.init_scale
    with pytest.raises(validation.ConfigError, match=r"^--config.model.init_scale: is missing"):
        train.validate_loop_config(smoke_config, 1)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_help_lists_the_experiments_own_flags_one_line_each(experiment):
    proc = run_cli(experiment, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    flag_lines = lines[lines.index("flags:") + 1:]
    assert all(line.startswith("  --") for line in flag_lines), flag_lines
    named = [line.split()[0].split("=")[0] for line in flag_lines]
    expected = ["--workdir", "--config", "--config.<field>", "--print_config", "--xla_cache",
                "--coordinator_address", "--num_processes", "--process_id", "--distributed",
                "--distributed_timeout", "--heartbeat_timeout", "--helpfull"]
    if experiment in SWEEPS:
        expected.append("--shard")
    if experiment == "bimix_fit":
        expected += ["--curves", "--valid_weights"]
    assert sorted(named) == sorted(expected)  # each once, nothing of absl's own
    config_line = next(line for line in flag_lines if line.startswith("  --config="))
    assert f"experiments/{experiment}.py" in config_line
    variants = importlib.import_module(f"experiments.{experiment}").VARIANTS
    assert "smoke" in variants
    for variant in variants[1:]:
        assert f":{variant}," in config_line or config_line.endswith(f":{variant}."), variant
    override_line = next(line for line in flag_lines if line.startswith("  --config.<field>"))
    assert "--print_config" in override_line


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_print_config_prints_the_resolved_config_and_writes_nothing(experiment, tmp_path):
    prefix = TRAINER[experiment] or ""
    override = (f"--config.{prefix}opt.lr=0.125" if TRAINER[experiment] is not None
                else "--config.step_cut=12345")
    workdir = tmp_path / "w"
    proc = run_cli(experiment, f"--config=experiments/{experiment}.py:smoke", override,
                   f"--workdir={workdir}", "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    fields = run_io.flatten_config(json.loads(proc.stdout))
    assert fields["experiment"] == experiment
    if TRAINER[experiment] is None:
        assert fields["step_cut"] == 12345
        assert fields["fit.num_starts"] == 4  # the smoke variant's, not the default's 32
    else:
        assert fields[f"{prefix}opt.lr"] == 0.125
        for field in TRAINER_FIELDS:
            assert f"{prefix}{field}" in fields, field
        assert fields[f"{prefix}fsdp"] == 1
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("experiment, other", [
    ("grokking", "sentiment_grokking"), ("bimix_fit", "grokking"),
    ("critical_data_size", "grokking")])
def test_another_experiments_config_is_refused_in_one_line(experiment, other, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    run_io.write_json_atomic(workdir / run_io.CONFIG_FILE, {"experiment": experiment})
    (workdir / "metrics.jsonl").write_text('{"step": 0}\n')
    before = tree_digest(workdir)
    proc = run_cli(experiment, f"--config=experiments/{other}.py:smoke", f"--workdir={workdir}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: --config: experiments/{other}.py:smoke is a {other} config; "
        f"experiments.{experiment} needs experiments/{experiment}.py"]
    assert proc.stdout == ""
    assert tree_digest(workdir) == before
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json", "metrics.jsonl"]
