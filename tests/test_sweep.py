"""The sweep runner: grids, up-front errors, skipping finished runs, the tidy table."""

import os
import pathlib

import pytest

from experiments import critical_data_size, grokking
from phasemix.base import progress, validation
from phasemix.runs import sweep


def test_grid_is_the_cartesian_product_in_order():
    assert sweep.grid({"a": [1, 2], "b": ["x", "y"]}, fixed={"c": 0}) == [
        {"c": 0, "a": 1, "b": "x"}, {"c": 0, "a": 1, "b": "y"},
        {"c": 0, "a": 2, "b": "x"}, {"c": 0, "a": 2, "b": "y"}]
    assert sweep.run_name({"task.train_count": 300, "opt.lr": 0.003}) == \
        "task.train_count=300,opt.lr=0.003"


@pytest.mark.parametrize("overrides,match", [
    ([], "grid is empty"),
    ([{"task.modulus": 7}], "no config field 'modulus'"),
    ([{"optim.lr": 1.0}], "no config field 'optim'"),
    ([{"seed": 0}, {"seed": 0}], "repeats runs"),
    ([{"task.p": 1}], r"run task.p=1: --config.task.p=1"),
])
def test_bad_sweeps_fail_before_any_run(tmp_path, overrides, match):
    def never_called(config, workdir):
        raise AssertionError("a run started")

    with pytest.raises(validation.ConfigError, match=match):
        sweep.run_sweep(grokking.get_config("smoke"), overrides, tmp_path / "s", never_called,
                        validate_fn=grokking.validate)
    assert not (tmp_path / "s").exists()


def test_contradictory_and_empty_axes():
    with pytest.raises(validation.ConfigError, match="contradictory"):
        sweep.grid({"seed": [0, 1]}, fixed={"seed": 2})
    with pytest.raises(validation.ConfigError, match="no values"):
        sweep.grid({"seed": []})


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(validation.ConfigError, match="not writable"):
        sweep.run_sweep(grokking.get_config("smoke"), [{"seed": 0}], blocker / "sub",
                        lambda c, w: {})


def fake_run(config, workdir):
    """Stands in for a training run: writes the files a finished run leaves."""
    from phasemix.base import run_io

    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    run_io.write_json_atomic(pathlib.Path(workdir) / "config.json", run_io.config_to_dict(config))
    summary = {"final_step": config.num_steps, "double_seed": 2 * config.seed}
    run_io.write_json_atomic(pathlib.Path(workdir) / "summary.json", summary)
    with open(pathlib.Path(workdir).parent.parent / "calls.txt", "a") as f:
        f.write(f"{config.seed}\n")
    return summary


def stopping_run(config, workdir):
    """Records its process; seed 0 stops as a preempted run does (SystemExit), others wait."""
    import os
    import time

    folder = pathlib.Path(workdir).parent.parent
    (folder / f"pid_{config.seed}").write_text(str(os.getpid()))
    if config.seed == 0:
        raise SystemExit(143)
    time.sleep(600)


def saving_run(config, workdir):
    """Waits; on SIGTERM takes 1 s to save, as a checkpointing run does, then exits 143."""
    import signal
    import time

    folder = pathlib.Path(workdir).parent.parent

    def save_and_exit(signum, frame):
        time.sleep(1)
        (folder / f"saved_{config.seed}").write_text("")
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, save_and_exit)
    (folder / f"pid_{config.seed}").write_text(str(os.getpid()))
    time.sleep(600)


def test_workers_exit_when_their_run_is_preempted_or_the_sweep_dies(tmp_path):
    """A preempted run ends its worker and the sweep (no next run in that process; rerun to
    resume); SIGKILL of the sweep's process makes its workers exit instead of training on as
    orphans; SIGTERM to it stops the workers and waits while they save."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    def start(folder, seeds, run="stopping_run"):
        code = (f"import sys; sys.path.insert(0, 'tests'); from test_sweep import {run};"
                "from experiments import grokking; from phasemix.runs import sweep;"
                f"sweep.run_sweep(grokking.get_config('smoke'), sweep.grid({{'seed': {seeds}}}),"
                f" {str(folder)!r}, {run}, workers=2)")
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_for(condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.2)

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:  # a dead, not yet reaped child is a zombie
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:  # reaped in between
            return False

    preempted, killed, terminated = (tmp_path / n for n in ("preempted", "killed", "terminated"))
    procs = [start(preempted, [0, 2]), start(killed, [1, 2]),
             start(terminated, [1, 2], run="saving_run")]
    try:
        assert procs[0].wait(timeout=180) != 0  # the pool broke: the sweep stopped
        pids = [(preempted / f"pid_{seed}") for seed in (0, 2)]
        assert not pids[1].exists() or pids[1].read_text() != pids[0].read_text()
        waiting = [killed / "pid_1", killed / "pid_2"]
        wait_for(lambda: all(p.exists() for p in waiting), timeout=180)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        wait_for(lambda: not any(alive(int(p.read_text())) for p in waiting), timeout=30)
        wait_for(lambda: all((terminated / f"pid_{s}").exists() for s in (1, 2)), timeout=180)
        procs[2].send_signal(signal.SIGTERM)
        assert procs[2].wait(timeout=60) == 143
        assert all((terminated / f"saved_{s}").exists() for s in (1, 2))  # waited for both
    finally:
        for proc in procs:
            proc.kill()
        for pid_file in tmp_path.glob("*/pid_*"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def failing_run(config, workdir):
    """`fake_run`, except that seed 1 raises."""
    if config.seed == 1:
        raise ValueError("seed 1 went wrong")
    return fake_run(config, workdir)


def test_a_failing_run_in_a_worker_raises_its_error_with_the_worker_traceback(tmp_path):
    base = grokking.get_config("smoke")
    with pytest.raises(ValueError, match="seed 1 went wrong") as raised:
        sweep.run_sweep(base, sweep.grid({"seed": [0, 1, 2]}), tmp_path, failing_run, workers=2)
    assert "in failing_run" in str(raised.value.__cause__)
    assert not (tmp_path / "runs" / "seed=1" / "summary.json").exists()


def test_worker_cpus_are_equal_shares_or_one_each_in_turn(monkeypatch):
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert sweep.worker_cpus(2) == [{0, 1, 2, 3}, {4, 5, 6, 7}]
    assert sweep.worker_cpus(3) == [{0, 1}, {2, 3, 4}, {5, 6, 7}]
    assert sweep.worker_cpus(10)[7:] == [{7}, {0}, {1}]


def affinity_run(config, workdir):
    """`fake_run`, with the CPUs its process may use in the summary."""
    from phasemix.base import run_io

    summary = {**fake_run(config, workdir),
               "cpus": "+".join(map(str, sorted(os.sched_getaffinity(0))))}
    run_io.write_json_atomic(pathlib.Path(workdir) / "summary.json", summary)
    return summary


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs Linux and two CPUs")
def test_each_worker_runs_on_its_own_cpus(tmp_path):
    base = grokking.get_config("smoke")
    rows = sweep.run_sweep(base, sweep.grid({"seed": [0, 1, 2, 3]}), tmp_path, affinity_run,
                           workers=2)
    shares = {"+".join(map(str, sorted(cpus))) for cpus in sweep.worker_cpus(2)}
    assert {str(r["cpus"]) for r in rows} == shares  # both workers ran, each on its own share


def environment_run(config, workdir):
    """`fake_run`, with the memory variables its process started with in the summary."""
    from phasemix.base import run_io

    summary = {**fake_run(config, workdir),
               **{name: os.environ.get(name, "unset")
                  for name in (sweep.MEMORY_FRACTION, sweep.PREALLOCATE)}}
    run_io.write_json_atomic(pathlib.Path(workdir) / "summary.json", summary)
    return summary


def test_workers_get_an_equal_share_of_the_accelerator_memory_or_the_users():
    share = sweep.worker_environment
    assert share(2, "gpu", {}) == {sweep.MEMORY_FRACTION: "0.45"}
    assert share(3, None, {}) == {sweep.MEMORY_FRACTION: "0.3"}
    assert share(2, "gpu", {sweep.MEMORY_FRACTION: "0.5"}) == {}  # the user's, respected
    with pytest.raises(validation.ConfigError, match=r"^--config.workers=3: "
                       r"XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 gives each worker .* set it to at "
                       r"most 0.333, or unset it \(each worker then gets 0.3\)$"):
        share(3, "gpu", {sweep.MEMORY_FRACTION: "0.4"})
    with pytest.raises(validation.ConfigError, match=r"^--config.workers=2: "
                       r"XLA_CLIENT_MEM_FRACTION=0.6 gives"):  # jaxlib's newer name
        share(2, None, {"XLA_CLIENT_MEM_FRACTION": "0.6"})
    assert share(2, "cpu", {sweep.MEMORY_FRACTION: "0.75"}) == {}  # no effect on a CPU
    with pytest.raises(validation.ConfigError, match=r"^--config.workers=2: must be 1 on a TPU"):
        share(2, "tpu", {})
    assert share(1, "tpu", {}) == {sweep.MEMORY_FRACTION: "0.9"}


def test_a_sweep_process_with_workers_does_not_preallocate_but_its_workers_do(monkeypatch):
    monkeypatch.setattr(sweep, "_preallocate_turned_off", False)
    config = critical_data_size.get_config()
    assert config.workers == 2
    monkeypatch.setenv(sweep.PREALLOCATE, "true")  # the user's: left alone
    sweep.keep_memory_for_workers(config)
    assert os.environ[sweep.PREALLOCATE] == "true" and sweep.worker_environment(2, "gpu", {}) == {
        sweep.MEMORY_FRACTION: "0.45"}
    monkeypatch.delenv(sweep.PREALLOCATE)
    for trains_here in (critical_data_size.get_config("smoke"),  # workers=1
                        critical_data_size.get_config().copy_and_resolve_references()):
        trains_here.vmap_runs = trains_here.workers > 1  # vmapped groups train in this process
        sweep.keep_memory_for_workers(trains_here)
        assert sweep.PREALLOCATE not in os.environ
    sweep.keep_memory_for_workers(config)
    assert os.environ[sweep.PREALLOCATE] == "false"
    assert sweep.worker_environment(2, "gpu", {}) == {sweep.PREALLOCATE: None,
                                                      sweep.MEMORY_FRACTION: "0.45"}


def test_more_than_one_worker_on_a_tpu_is_refused_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "backend_platform", lambda: "tpu")
    config = critical_data_size.get_config("smoke")
    config.workers = 2
    with pytest.raises(validation.ConfigError, match=r"^--config.workers=2: must be 1 on a TPU"):
        critical_data_size.run(config, str(tmp_path))
    assert not (tmp_path / "runs").exists()
    # Vmapped groups train in this process: the number of workers does not matter.
    config.vmap_runs = True
    monkeypatch.setattr(sweep, "_check_writable", lambda folder: validation.fail(
        "workdir", "checked after the workers"))
    with pytest.raises(validation.ConfigError, match="checked after the workers"):
        critical_data_size.run(config, str(tmp_path))


def test_each_spawned_worker_starts_with_its_memory_share(tmp_path, monkeypatch):
    monkeypatch.delenv(sweep.MEMORY_FRACTION, raising=False)
    monkeypatch.delenv("XLA_CLIENT_MEM_FRACTION", raising=False)
    # As `keep_memory_for_workers` leaves the sweep's own process: not preallocating.
    monkeypatch.setenv(sweep.PREALLOCATE, "false")
    monkeypatch.setattr(sweep, "_preallocate_turned_off", True)
    rows = sweep.run_sweep(grokking.get_config("smoke"), sweep.grid({"seed": [0, 1]}), tmp_path,
                           environment_run, workers=2)
    assert [(r[sweep.MEMORY_FRACTION], r[sweep.PREALLOCATE]) for r in rows] == [
        ("0.45", "unset")] * 2
    assert sweep.MEMORY_FRACTION not in os.environ  # the sweep's own process is unchanged
    assert os.environ[sweep.PREALLOCATE] == "false"


def late_reporting_run(config, workdir):
    """`fake_run`, returning only once both runs' summaries are on disk: whichever worker
    reports first, the other run's summary is already there to be picked up."""
    import time

    runs = pathlib.Path(workdir).parent
    if config.seed == 1:
        while not (runs / "seed=0" / "summary.json").exists():
            time.sleep(0.05)
    summary = fake_run(config, workdir)
    if config.seed == 1:
        (runs / "seed=1" / "done").write_text("")
    else:
        while not (runs / "seed=1" / "done").exists():
            time.sleep(0.05)
    return summary


def test_progress_counts_each_run_once_when_workers_report_out_of_order(tmp_path, capsys):
    sweep.run_sweep(grokking.get_config("smoke"), sweep.grid({"seed": [0, 1]}), tmp_path,
                    late_reporting_run, workers=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if " finished " in line]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]


def test_sweep_eta_counts_the_runs_in_flight_and_only_this_jobs_part():
    bar = progress.RunsProgress(grid_total=12, todo=5, parallel=2, part="shard 0/2")
    first = bar.line(grid_done=3, run_seconds=10.0, extra="finished seed=0 in 10s")
    # 4 runs left, 2 at a time, 10 s each: 20 s (a rate over elapsed time would say 40 s).
    assert first.startswith("run 3/12 (25%) finished seed=0 in 10s | shard 0/2: 1/5 |")
    assert first.endswith("ETA 0m20s")
    for seconds in (30.0, 20.0, 20.0):  # mean 20 s; the last run left has a worker to itself
        line = bar.line(grid_done=4, run_seconds=seconds)
    assert line.endswith("ETA 0m20s") and "shard 0/2: 4/5" in line
    assert bar.line(grid_done=12, run_seconds=5.0).endswith("ETA 0m00s")
    assert "shard" not in progress.RunsProgress(2, 2, 1).line(1, 1.0)


def test_rerun_skips_finished_runs_and_table_has_config_and_summary(tmp_path):
    base = grokking.get_config("smoke")
    first = sweep.run_sweep(base, sweep.grid({"seed": [0, 1]}), tmp_path, fake_run)
    (tmp_path / "runs" / "seed=1" / "summary.json").unlink()  # as if killed mid-run
    rows = sweep.run_sweep(base, sweep.grid({"seed": [0, 1, 2]}), tmp_path, fake_run)
    assert (tmp_path / "calls.txt").read_text().split() == ["0", "1", "1", "2"]
    assert [r["run"] for r in rows] == ["seed=0", "seed=1", "seed=2"]
    # A summary is not enough: a run killed after writing one but before the sweep recorded
    # it (its last outputs may be missing) is run again.
    (tmp_path / "runs" / "seed=2" / sweep.RUN_SECONDS_FILE).unlink()
    rows = sweep.run_sweep(base, sweep.grid({"seed": [0, 1, 2]}), tmp_path, fake_run)
    assert (tmp_path / "calls.txt").read_text().split() == ["0", "1", "1", "2", "2"]
    assert all(r["run_seconds"] is not None for r in rows)
    table = sweep.read_table(tmp_path / "results.csv")
    assert [r["double_seed"] for r in table] == [0, 2, 4]
    assert table[0]["task.p"] == base.task.p and table[2]["sweep.seed"] == 2
    assert len(first) == 2


def test_smoke_sweep_end_to_end(tmp_path):
    """Two processes, real runs: table, analysis, figures; a re-run trains nothing."""
    config = critical_data_size.get_config("smoke")
    config.workers = 2
    summary = critical_data_size.run(config, str(tmp_path))
    assert summary["runs"] == 4
    table = sweep.read_table(tmp_path / "results.csv")
    assert sorted((r["task.train_count"], r["seed"]) for r in table) == [
        (100, 0), (100, 1), (300, 0), (300, 1)]
    assert all(r["final_step"] == config.base.num_steps for r in table)
    assert all(r["recompilations"] == 0 for r in table)
    for name in ("steps_vs_size.png", "accuracy_by_size.png", "weight_norm_by_size.png",
                 "per_size.csv", "summary.json", "config.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    stamp = (tmp_path / "runs" / "task.train_count=100,seed=0" / "metrics.jsonl").stat().st_mtime
    critical_data_size.run(config, str(tmp_path))
    assert (tmp_path / "runs" / "task.train_count=100,seed=0" /
            "metrics.jsonl").stat().st_mtime == stamp


def test_model_wise_smoke_sweep(tmp_path):
    config = critical_data_size.get_config("model_smoke")
    grid = critical_data_size.overrides(config)
    assert [(g["model.d_model"], g["model.d_mlp"]) for g in grid] == [(16, 64), (32, 128)]
    summary = critical_data_size.run(config, str(tmp_path))
    assert [m["d_model"] for m in summary["critical_size_by_model"]] == [16, 32]
    assert (tmp_path / "accuracy_heatmap.png").stat().st_size > 0
    per_model = sweep.read_table(tmp_path / "per_model.csv")
    assert [r["d_model"] for r in per_model] == [16, 32]


def test_bad_mode_and_empty_axis_name_the_flag():
    config = critical_data_size.get_config("smoke")
    config.mode = "layer"
    with pytest.raises(validation.ConfigError, match="--config.mode='layer'"):
        critical_data_size.overrides(config)
    config = critical_data_size.get_config("smoke")
    config.seeds = ()
    with pytest.raises(validation.ConfigError, match="--config.seeds"):
        critical_data_size.overrides(config)
    config = critical_data_size.get_config("smoke")
    config.train_counts = (100, 100)
    with pytest.raises(validation.ConfigError, match=r"--config.train_counts=\(100, 100\): repeats"):
        critical_data_size.overrides(config)
    # Each study's config has only its own size flag: the other one is an unknown flag.
    assert "train_fractions" not in critical_data_size.get_config("smoke")
    assert "train_counts" not in critical_data_size.get_config("sentiment_smoke")
    config = critical_data_size.get_config("smoke")
    config.study = "sentiment"  # without the sentiment variant's base config
    with pytest.raises(validation.ConfigError, match="--config.study='sentiment': needs a "
                       "sentiment_grokking base config, not 'grokking'"):
        critical_data_size.overrides(config)


def test_a_bad_grid_value_names_the_sweep_flag_it_came_from(tmp_path):
    config = critical_data_size.get_config("smoke")
    config.train_counts = (100, 20000)  # of 529 pairs
    with pytest.raises(validation.ConfigError, match=r"^--config.train_counts: the value 20000 "
                       r"\(run task.train_count=20000,seed=0\): must be in \[1, 528\]"):
        critical_data_size.run(config, str(tmp_path))
    assert not (tmp_path / "runs").exists()
    # A comma inside one string value: the tuple syntax is shown.
    with pytest.raises(validation.ConfigError, match=r"^--config.ops: the value 'add,sub' .*"
                       r"must be one of .*several strings are written --config.ops='\("):
        sweep.run_sweep(grokking.get_config("smoke"), [{"task.op": "add,sub"}], tmp_path / "s",
                        fake_run, validate_fn=grokking.validate, grid_flags={"task.op": "ops"})


def test_sweep_errors_name_the_base_flag_the_grid_flag_or_the_workers(tmp_path):
    config = critical_data_size.get_config("smoke")
    config.base.task.p = 1  # set under --config.base, not by the grid
    with pytest.raises(validation.ConfigError, match=r"^--config.base.task.p=1: .* \(run "
                       r"task.train_count=100,seed=0\)$"):
        critical_data_size.run(config, str(tmp_path))
    config = critical_data_size.get_config("smoke")
    config.train_counts = (100, "abc")  # a member of the wrong type
    with pytest.raises(validation.ConfigError, match=r"^--config.train_counts: the value 'abc' "
                       r".*must be of type int, not str"):
        critical_data_size.run(config, str(tmp_path))
    config = critical_data_size.get_config("model_smoke")
    config.widths = (16, 30)  # 4 heads
    with pytest.raises(validation.ConfigError, match=r"^--config.widths=\(16, 30\): each width "
                       r"must be a multiple of the 4 heads"):
        critical_data_size.run(config, str(tmp_path))
    config = critical_data_size.get_config("smoke")
    config.workers = 0
    with pytest.raises(validation.ConfigError, match=r"^--config.workers=0: must be a positive "
                       r"number of processes$"):
        critical_data_size.run(config, str(tmp_path))
    assert not (tmp_path / "runs").exists()


def test_a_table_row_shorter_than_its_header_reads_as_empty_cells(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,c\n1,x\n")
    assert sweep.read_table(tmp_path / "t.csv") == [{"a": 1, "b": "x", "c": None}]



def vmapped_sweep_grid() -> list[dict]:
    """8 runs of 2 training-set sizes (40 < the batch of 64: full-batch, padded rows when
    vmapped) x 2 weight decays x 2 seeds, with 3 learning rates and 2 init scales among them."""
    grid = sweep.grid({"task.train_count": (40, 150), "opt.weight_decay": (1.0, 0.3),
                       "seed": (0, 1)})
    return [{**run, "opt.lr": (1e-3, 2e-3, 3e-3)[i % 3],
             "model.init_scale": 0.8 if i in (1, 6) else 1.0} for i, run in enumerate(grid)]


def assert_rows_close(expected: list[dict], got: list[dict], where: str) -> None:
    """Equal keys and values, numbers to 1e-6 (relative or absolute)."""
    assert len(got) == len(expected), where
    for want, row in zip(expected, got):
        assert row.keys() == want.keys(), where
        for key, value in want.items():
            if isinstance(value, float) and isinstance(row[key], float):
                assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-6), (where, key)
            else:
                assert row[key] == value, (where, key)


@pytest.mark.slow  # 8 sequential runs compile 8 programs (~1 minute on 2 idle cores)
def test_a_vmapped_sweep_equals_the_sequential_sweep_and_resumes(tmp_path):
    """One program trains the 8 runs; each run's metrics equal its own sequential run's, the
    tables are equal but for timing, and a group stopped by SIGTERM resumes to the same, as
    one program or one run alone."""
    import dataclasses
    import shutil

    import grain

    from phasemix.base import run_io
    from phasemix.training import train
    from test_train import SigtermAt, comparable

    base = grokking.get_config("smoke")
    base.num_steps, base.eval_every, base.checkpoint_every = 40, 10, 20
    base.eval_batch_size = 128  # test sets of 489 and 379 pairs: 4 and 3 batches, padded to 4
    grid = vmapped_sweep_grid()
    sequential = sweep.run_sweep(base, grid, tmp_path / "seq", grokking.run)
    groups = []

    def stopped_at_step_25(configs, workdirs):
        groups.append(len(configs))
        tasks = [grokking.make_task(c) for c in configs]
        tasks[0] = dataclasses.replace(tasks[0], train_batches=grain.MapDataset.source(
            SigtermAt(tasks[0].train_batches, at=25)))
        return train.train_and_evaluate_vmapped(configs, workdirs, tasks, grokking.DATA_FIELDS)

    def group_fn(configs, workdirs):
        groups.append(len(configs))
        return grokking.run_vmapped(configs, workdirs)

    with pytest.raises(train.Preempted) as stop:
        sweep.run_sweep(base, grid, tmp_path / "vmap", grokking.run, group_fn=stopped_at_step_25,
                        vmapped_fields=grokking.VMAPPED_FIELDS)
    assert stop.value.step == 26
    # One run of the stopped group resumed alone (a group whose other run diverged goes on so).
    first = sweep.run_name(grid[0])  # 40 pairs: its batches were padded in the group
    shutil.copytree(tmp_path / "vmap" / "runs" / first, tmp_path / "alone")
    grokking.run(sweep.apply_overrides(base, grid[0]), str(tmp_path / "alone"))
    assert_rows_close(comparable(run_io.read_metrics(tmp_path / "seq" / "runs" / first)),
                      comparable(run_io.read_metrics(tmp_path / "alone")), "resumed alone")
    vmapped = sweep.run_sweep(base, grid, tmp_path / "vmap", grokking.run, group_fn=group_fn,
                              vmapped_fields=grokking.VMAPPED_FIELDS)
    assert groups == [8, 8]
    for row in sequential:
        alone = comparable(run_io.read_metrics(tmp_path / "seq" / "runs" / row["run"]))
        together = comparable(run_io.read_metrics(tmp_path / "vmap" / "runs" / row["run"]))
        assert [r["step"] for r in together] == list(range(0, 41, 10))
        assert_rows_close(alone, together, row["run"])
    timing = ("wall_seconds", "run_seconds")
    seq, vmap = [[{k: v for k, v in r.items() if k not in timing} for r in sweep.read_table(
        tmp_path / name / sweep.RESULTS_FILE)] for name in ("seq", "vmap")]
    assert_rows_close(seq, vmap, "results.csv")
    assert {r["train_size"] for r in vmap} == {40, 150}
    assert len({r["final_train_loss"] for r in vmap}) == 8  # eight different runs
    assert all(r["recompilations"] == 0 for r in vmapped)


def test_vmapped_groups_split_by_shape_fields_and_size():
    import jax

    base = grokking.get_config("smoke")
    todo = [(str(i), sweep.apply_overrides(base, run)) for i, run in enumerate(
        [*vmapped_sweep_grid(), {"model.d_model": 16}, {"model.d_model": 16, "seed": 3}])]
    groups = sweep._vmapped_groups(todo, grokking.VMAPPED_FIELDS, max_runs=0)
    assert [[name for name, _ in g] for g in groups] == [[str(i) for i in range(8)], ["8", "9"]]
    groups = sweep._vmapped_groups(todo, grokking.VMAPPED_FIELDS, max_runs=3)
    assert [len(g) for g in groups] == [3, 3, 2, 2]
    assert [len(g) for g in sweep._vmapped_groups(todo, ("seed",), max_runs=0)] == [1] * 8 + [2]
    with pytest.raises(validation.ConfigError, match="--config.max_vmapped_runs=-1"):
        sweep.run_sweep(base, [{}], "unused", fake_run, group_fn=fake_run, max_vmapped_runs=-1)
    assert sweep.vmapped_groups_by_default() == (jax.default_backend() in ("gpu", "tpu"))
