"""Bad input and divergence lose nothing: one line naming the flag, a non-zero exit, no
traceback, and every file already in the workdir byte-identical afterwards."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ABSL_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # absl's INFO/WARNING lines, not errors
GROKKING = ("experiments.grokking", "--config=experiments/grokking.py:smoke")
CDS = ("experiments.critical_data_size", "--config=experiments/critical_data_size.py:smoke")
# A one-run sweep of short runs: seconds.
CDS_SMALL = (*CDS, "--config.seeds=(0,)", "--config.base.num_steps=20",
             "--config.base.checkpoint_every=10")


def run_cli(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line the command wrote to stderr besides absl's log lines."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not ABSL_LOG_LINE.match(l)]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines
    return lines[0]


def check_refused(proc: subprocess.CompletedProcess, flag: str, before: dict[str, bytes],
                  folder: pathlib.Path, code: int | None = None) -> str:
    assert proc.returncode != 0 if code is None else proc.returncode == code, proc.stderr[-3000:]
    line = error_line(proc)
    assert flag in line, line
    assert snapshot(folder) == before
    return line


@pytest.fixture
def used_folder(tmp_path) -> pathlib.Path:
    """A workdir with earlier contents (files the refused command must not touch)."""
    folder = tmp_path / "work"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "kept.txt").write_text("earlier results\n")
    (folder / "results.csv").write_text("run,status\nold,finished\n")
    return folder


@pytest.fixture(scope="module")
def finished_grokking(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("grokking") / "run"
    proc = run_cli(*GROKKING, f"--workdir={workdir}", "--config.num_steps=20",
                   "--config.checkpoint_every=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> pathlib.Path:
    """A finished critical_data_size sweep of two sizes, one seed."""
    workdir = tmp_path_factory.mktemp("cds") / "sweep"
    proc = run_cli(*CDS_SMALL, f"--workdir={workdir}", "--config.train_counts=(100,300)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


# --- Divergence -------------------------------------------------------------------------------

def test_grokking_divergence_stops_with_exit_3_and_a_rerun_says_so_again(tmp_path):
    workdir = tmp_path / "g"
    command = (*GROKKING, f"--workdir={workdir}", "--config.opt.lr=1e9")
    proc = run_cli(*command)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = error_line(proc)
    assert re.search(r"diverged at step \d+: \w+ is (nan|inf|-inf)", line), line
    for flag in ("--config.opt.lr", "--config.model.init_scale", "--config.model.dtype"):
        assert flag in line
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] == int(re.search(r"step (\d+)", line)[1]) <= 10
    # Every metric row written is finite: the diverged evaluation is not among them.
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0]
    before = snapshot(workdir)
    again = run_cli(*command)
    rerun_line = check_refused(again, "--config.opt.lr", before, workdir, code=3)
    assert "step 0/" not in again.stderr and "Resumed" not in again.stderr  # no training
    assert line[len("error: "):] in rerun_line and "summary.json" in rerun_line


def test_sweep_marks_a_diverged_run_and_names_the_sweeps_flags(tmp_path):
    workdir = tmp_path / "cds"
    proc = run_cli(*CDS_SMALL, f"--workdir={workdir}", "--config.train_counts=(100,)",
                   "--config.base.opt.lr=1e9")
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = error_line(proc)
    assert "--config.base.opt.lr" in line and "diverged" in line
    with open(workdir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"]) for r in rows] == [("task.train_count=100,seed=0",
                                                        "diverged")]
    before = snapshot(workdir)
    again = run_cli(*CDS_SMALL, f"--workdir={workdir}", "--config.train_counts=(100,)",
                    "--config.base.opt.lr=1e9")
    check_refused(again, "--config.base.opt.lr", before, workdir, code=3)


# --- Ranges, named by the full flag, before anything is written ---------------------------------

@pytest.mark.parametrize("args,flag", [
    (("experiments.knowledge_mixing", "--config=experiments/knowledge_mixing.py:smoke",
      "--config.num_steps=0"), "--config.num_steps"),
    ((*GROKKING, "--config.eval_every=0"), "--config.eval_every"),
    (("experiments.bimix", "--config=experiments/bimix.py:smoke", "--config.base.num_steps=0"),
     "--config.base.num_steps"),
    (("experiments.bimix", "--config=experiments/bimix.py:smoke",
      "--config.base.batch_size=0"), "--config.base.batch_size"),
    ((*CDS, "--config.base.eval_batch_size=-1"), "--config.base.eval_batch_size"),
    ((*CDS, "--config.train_counts=(100,0)"), "--config.train_counts"),
])
def test_out_of_range_values_name_their_full_flag(used_folder, args, flag):
    before = snapshot(used_folder)
    check_refused(run_cli(*args, f"--workdir={used_folder}"), flag, before, used_folder)


def test_a_bad_value_leaves_a_finished_run_untouched(finished_grokking):
    before = snapshot(finished_grokking)
    proc = run_cli(*GROKKING, f"--workdir={finished_grokking}", "--config.num_steps=20",
                   "--config.checkpoint_every=10", "--config.batch_size=0")
    check_refused(proc, "--config.batch_size", before, finished_grokking)


@pytest.mark.parametrize("module", [GROKKING, ("experiments.knowledge_mixing",
                                               "--config=experiments/knowledge_mixing.py:smoke"),
                                    CDS])
def test_an_empty_workdir_is_refused_and_nothing_is_written_here(tmp_path, module):
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "kept.txt").write_text("x")
    env_root = [f"--config={ROOT / module[1].split('=', 1)[1].split(':')[0]}:"
                f"{module[1].split(':')[-1]}"]
    proc = run_cli(module[0], *env_root, "--workdir=", cwd=here)
    check_refused(proc, "--workdir", {"kept.txt": b"x"}, here)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("mine")
    for args in (GROKKING, CDS):
        proc = run_cli(*args, f"--workdir={target}")
        check_refused(proc, "--workdir", {"a_file": b"mine"}, tmp_path)


@pytest.mark.parametrize("flag_arg,flag", [("--steps=-5", "--steps"),
                                           ("--batch_sizes=abc", "--batch_sizes"),
                                           ("--repeats=0", "--repeats")])
def test_benchmark_counts_must_be_positive(tmp_path, flag_arg, flag):
    proc = run_cli("benchmarks.train_step", flag_arg, cwd=ROOT)
    assert proc.returncode != 0
    assert flag in error_line(proc)
    assert "steps/s" not in proc.stdout


@pytest.mark.parametrize("loss", ["nan", "-1.5"])
def test_web_sweep_table_with_unusable_losses_names_the_flag(tmp_path, used_folder, loss):
    table = tmp_path / "web"
    table.mkdir()
    with open(table / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model.preset", "seed", "bio_accuracy", "non_embedding_params",
                         "web_val_loss", "tokens_per_bio"])
        for i, (preset, params) in enumerate([("tiny-16", 1e4), ("tiny-32", 4e4),
                                              ("tiny-48", 9e4)]):
            writer.writerow([preset, 0, 0.1, params, loss if i == 1 else 3.0 - i * 0.2, 40])
    before = snapshot(used_folder)
    proc = run_cli("experiments.knowledge_phase", "--config=experiments/knowledge_phase.py:smoke",
                   f"--config.web_sweep={table}", f"--workdir={used_folder}")
    line = check_refused(proc, "--config.web_sweep", before, used_folder)
    assert str(table / "results.csv") in line


# --- Finished sweeps are never lost -----------------------------------------------------------

def test_a_smaller_grid_on_a_finished_sweep_is_refused(finished_sweep):
    before = snapshot(finished_sweep)
    proc = run_cli(*CDS_SMALL, f"--workdir={finished_sweep}", "--config.train_counts=(300,)")
    line = check_refused(proc, "--config.train_counts", before, finished_sweep)
    assert "task.train_count=100,seed=0" in line


def test_a_damaged_checkpoint_leaves_the_sweeps_tables_as_they_were(finished_sweep, tmp_path):
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(finished_sweep, copy)
    # The PCA figure restores the largest run's parameters: damage its checkpoint.
    files = [p for p in (copy / "runs" / "task.train_count=300,seed=0" / "checkpoints").rglob("*")
             if p.is_file() and p.stat().st_size > 64]
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = snapshot(copy)
    proc = run_cli(*CDS_SMALL, f"--workdir={copy}", "--config.train_counts=(100,300)")
    check_refused(proc, "checkpoint", before, copy)


def test_a_damaged_checkpoint_of_a_finished_run_changes_nothing(finished_grokking, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_grokking, copy)
    for path in (copy / "checkpoints").rglob("*"):
        if path.is_file() and path.stat().st_size > 64:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = snapshot(copy)
    proc = run_cli(*GROKKING, f"--workdir={copy}", "--config.num_steps=20",
                   "--config.checkpoint_every=10")
    check_refused(proc, "checkpoint", before, copy)


def test_a_sweep_rerun_with_a_larger_grid_keeps_every_finished_run(tmp_path):
    """Library level: a grid that adds runs extends the table; one that drops runs is refused
    naming the grid's flag, with results.csv as it was."""
    import ml_collections

    from phasemix.base import validation
    from phasemix.runs import sweep

    base = ml_collections.ConfigDict({"experiment": "toy", "num_steps": 1, "x": 0})

    def run_fn(config, workdir):
        from phasemix.base import run_io

        run_io.prepare_workdir(workdir, config)
        if config.x == 99:
            raise RuntimeError("boom")
        summary = {"final_step": 1, "y": config.x * 2}
        run_io.write_json_atomic(pathlib.Path(workdir) / "summary.json", summary)
        return summary

    flags = {"x": "xs"}
    rows = sweep.run_sweep(base, sweep.grid({"x": [1, 2]}), tmp_path, run_fn, grid_flags=flags)
    assert [(r["x"], r["y"], r["status"]) for r in rows] == [(1, 2, "finished"), (2, 4, "finished")]
    rows = sweep.run_sweep(base, sweep.grid({"x": [1, 2, 3]}), tmp_path, run_fn, grid_flags=flags)
    assert [r["y"] for r in rows] == [2, 4, 6]
    table = (tmp_path / "results.csv").read_bytes()
    with pytest.raises(validation.ConfigError, match=r"^--config\.xs: .*x=1"):
        sweep.run_sweep(base, sweep.grid({"x": [2, 3]}), tmp_path, run_fn, grid_flags=flags)
    assert (tmp_path / "results.csv").read_bytes() == table


# --- The same classes on a second sweep experiment ------------------------------------------

CAPACITY = ("experiments.knowledge_capacity", "--config=experiments/knowledge_capacity.py:smoke")


@pytest.fixture(scope="module")
def finished_capacity(tmp_path_factory) -> pathlib.Path:
    """A finished knowledge_capacity smoke sweep (N = 20 and 40, one seed)."""
    workdir = tmp_path_factory.mktemp("capacity") / "sweep"
    proc = run_cli(*CAPACITY, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_a_smaller_capacity_grid_on_a_finished_sweep_is_refused(finished_capacity):
    before = snapshot(finished_capacity)
    proc = run_cli(*CAPACITY, f"--workdir={finished_capacity}",
                   "--config.people_per_preset=((20,),)")
    line = check_refused(proc, "--config.people_per_preset", before, finished_capacity)
    assert "synbio.num_people=40" in line


def test_a_diverging_capacity_sweep_marks_its_runs_and_exits_3(tmp_path):
    workdir = tmp_path / "capacity"
    proc = run_cli(*CAPACITY, f"--workdir={workdir}", "--config.base.opt.lr=1e9")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "--config.base.opt.lr" in error_line(proc)
    with open(workdir / "results.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["diverged", "diverged"]
    assert not (workdir / "capacity.csv").exists()  # no analysis of diverged runs
