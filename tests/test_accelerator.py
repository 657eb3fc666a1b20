"""`python -m benchmarks.accelerator`: the one-command device check and its report."""

import json
import math
import os
import subprocess
import sys

from benchmarks import accelerator
from phasemix.training import train
from tests.conftest import ROOT


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "benchmarks.accelerator", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_peaks_come_from_the_table_by_device_kind_and_dtype():
    assert accelerator.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert accelerator.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert accelerator.peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert accelerator.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert accelerator.peak_flops("TPU v4", "bfloat16") == 275e12
    assert accelerator.peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert accelerator.peak_flops("TPU v4", "float32") is None  # no float32 matrix unit
    assert accelerator.peak_flops("cpu", "float32") is None


def test_an_out_path_that_is_a_file_fails_in_one_line_before_measuring(tmp_path):
    not_a_folder = tmp_path / "report"
    not_a_folder.write_text("keep me")
    proc = _run("--smoke", f"--out={not_a_folder}", timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: --out={str(not_a_folder)!r}: is a file, not a folder"]
    assert not_a_folder.read_text() == "keep me"


# ~50 CPU seconds (programs compiled two at a time on a 2-core CPU), the default suite's
# check that the device command runs end to end and reports every field.
def test_smoke_report_has_every_section_with_positive_finite_numbers(tmp_path):
    proc = _run("--smoke", f"--out={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / accelerator.REPORT_FILE).read_text())
    assert report["backend"] == "cpu" and report["device_kind"] == "cpu"
    k = train.AUTO_STEPS_PER_CALL["cpu"]
    assert report["smoke"] is True and report["steps_per_call"] == [1, k]
    assert any("steps_per_call" in note for note in report["notes"])
    assert _positive(report["total_seconds"]) and _positive(report["total_cpu_seconds"])
    sections = report["section_seconds"]
    assert set(sections) == {"compile", "grokking_step", "small_lm_step", "vmapped_seeds",
                             "vmapped_runs", "bf16_demo"}
    assert sum(s["wall"] for s in sections.values()) <= report["total_seconds"]

    step_rows = [report["grokking_step"], *report["small_lm_step"]]
    assert {r["dtype"] for r in report["small_lm_step"]} == {"float32", "bfloat16"}
    for row in step_rows:
        for key in ("steps_per_s", "steps_per_s_k", "flops_per_step", "flop_per_s",
                    "flop_per_s_k", "params", "batch_size"):
            assert _positive(row[key]), (key, row)
        assert row["steps_per_call_k"] == k
        assert math.isclose(row["flop_per_s"], row["steps_per_s"] * row["flops_per_step"])
        assert math.isclose(row["flop_per_s_k"], row["steps_per_s_k"] * row["flops_per_step"])
        assert row["mfu"] is None and row["mfu_k"] is None  # no CPU in the table
        assert row["peak_flop_per_s"] is None
    # The same model in either dtype does the same products.
    assert len({r["flops_per_step"] for r in report["small_lm_step"]}) == 1

    assert [r["runs"] for r in report["vmapped_seeds"]] == list(accelerator.SMOKE.run_counts)
    for row in report["vmapped_seeds"]:
        for key in ("vmapped_steps_per_s", "vmapped_run_steps_per_s",
                    "sequential_run_steps_per_s", "speedup", "steps_per_call"):
            assert _positive(row[key]), (key, row)
        assert math.isclose(row["vmapped_run_steps_per_s"],
                            row["runs"] * row["vmapped_steps_per_s"])
        assert math.isclose(row["speedup"], row["vmapped_run_steps_per_s"]
                            / row["sequential_run_steps_per_s"])
    assert [r["runs"] for r in report["vmapped_runs"]] == list(accelerator.SMOKE.vmapped_runs)
    for row in report["vmapped_runs"]:
        for key in ("vmapped_seconds", "sequential_seconds", "speedup"):
            assert _positive(row[key]), (key, row)

    demo = report["bf16_demo"]
    assert demo["variant"] == "smoke" and demo["num_steps"] == accelerator.SMOKE.demo_steps
    assert _positive(demo["run_seconds"]) and demo["seconds_with_setup"] >= demo["run_seconds"]
    # A loss, not a blow-up: 20 steps leave it near the uniform guess's log(24) = 3.2.
    assert 0 < demo["final_train_loss"] < 6
    # The smoke run is too short to generalise: no step, no time, rather than a made-up one.
    assert demo["step_generalized"] is None or demo["step_generalized"] > 0
