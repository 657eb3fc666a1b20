"""The BiMix fitting experiment: the smoke run on the published curves, loading, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from experiments import bimix_fit
from phasemix.base import run_io, validation
from phasemix.data import published_curves
from phasemix.analysis import published_law_fits
from phasemix.runs import sweep

CURVES = published_curves.DEFAULT_CURVES
needs_curves = pytest.mark.skipif(
    not CURVES.exists(),
    reason=f"the published 5-mix curves are not at {CURVES} (../shared/data/mixing_laws)")

HEADER = ",".join(published_curves.COLUMNS)
MIX_A = "0.5,0.25,0.0,0.125,0.125"


def write_curves(tmp_path, lines: list[str], weights: dict | None = None):
    """A small curves file in the published format, with its weights file beside it."""
    path = tmp_path / "curves.csv"
    path.write_text("\n".join([HEADER] + lines) + "\n")
    members = [m for group in published_curves.GROUPS.values() for m in group]
    (tmp_path / published_curves.WEIGHTS_FILE).write_text(json.dumps(weights or dict.fromkeys(members,
                                                                                       1.0)))
    return path


def rows_for(model, mixture, mix, step, losses: dict[str, float]) -> list[str]:
    return [f"{model},{mixture},{mix},{step},{d},{loss}" for d, loss in losses.items()]


@needs_curves
def test_smoke_run_on_the_published_curves(tmp_path):
    config = bimix_fit.get_config("smoke")
    summary = bimix_fit.run(config, str(tmp_path / "run"))
    out = tmp_path / "run"
    for name in ("config.json", "summary.json", "table.csv", "table.json", "predictions.csv",
                 "optimal_mixtures.json", "predicted_vs_measured.png"):
        assert (out / name).stat().st_size > 0, name
    table = sweep.read_table(out / "table.csv")
    assert len(table) == len(config.laws) * len(published_curves.DOMAINS)  # 1 size, policy and draw
    for row in table:
        assert row["fit_n"] > 0 and row["extrap_step_n"] > 0 and row["heldout_mix_n"] > 0
        assert 0 < row["extrap_step_mre"] < 0.2
        if row["law"] == "step_only":  # blind to the mixture: never better than step means
            assert row["heldout_mix_within_step_r2"] <= 0
    # 5 of 305M's 26 mixtures hold no academic data: the `drop` policy reports removing them.
    assert summary["fraction_dropped_zero_share"]["305M/academic"] == pytest.approx(5 / 26)
    assert {(e["law"], e["model"]) for e in summary["headline"]} == {
        ("bimix", "305M"), ("step_only", "305M")}
    assert run_io.read_json(out / "summary.json")["headline"] == summary["headline"]
    optimum = run_io.read_json(out / "optimal_mixtures.json")[0]
    assert sum(optimum["mixture"].values()) == pytest.approx(1.0, abs=1e-3)
    assert all(optimum["mixture"][d] <= optimum["max_share"][d] + 1e-4
               for d in published_curves.DOMAINS)


@needs_curves
def test_fits_on_threads_give_the_same_table_as_one_thread():
    config = bimix_fit.get_config("smoke")
    config.laws = ("bimix", "ye")
    data = published_curves.load_curves(CURVES)
    selected = {m: published_law_fits.select(data[m], config, m) for m in config.models}
    pad_to = 256
    rows = {}
    for threads in (1, 3):
        config.threads = threads
        rows[threads] = [row for row, _, _ in published_law_fits.fit_all(config, selected, pad_to)]
    assert [(r["law"], r["domain"]) for r in rows[3]] == [
        (j.law_name, published_curves.DOMAINS[j.domain_index])
        for j in published_law_fits.jobs_for(config)]
    assert run_io.nan_to_none(rows[3]) == run_io.nan_to_none(rows[1])  # bit for bit


def test_group_loss_is_the_weighted_mean_renormalised_within_the_group(tmp_path):
    losses = {m: 3.0 for group in published_curves.GROUPS.values() for m in group}
    losses.update(DM_Mathematics=1.0, Github=2.0)  # the symbolic group
    weights = {m: 1.0 for m in losses}
    weights.update(DM_Mathematics=0.1, Github=0.3)
    lines = rows_for("70M", 0, MIX_A, 1000, losses)
    del losses["PG19"]  # a prose sub-domain missing at step 2000: no prose loss there
    lines += rows_for("70M", 0, MIX_A, 2000, losses)
    data = published_curves.load_curves(write_curves(tmp_path, lines, weights))["70M"]
    np.testing.assert_allclose(data["step_N"], [1000, 2000])
    np.testing.assert_allclose(data["props_NxK"][0], [0.5, 0.25, 0.0, 0.125, 0.125])
    symbolic = published_curves.DOMAINS.index("symbolic")
    np.testing.assert_allclose(data["loss_NxK"][:, symbolic], 0.25 * 1.0 + 0.75 * 2.0)
    prose = published_curves.DOMAINS.index("prose")
    assert data["loss_NxK"][0, prose] == 3.0 and np.isnan(data["loss_NxK"][1, prose])


@pytest.mark.parametrize("mix,match", [("0.5,0.25,0.0,0.125,0.1249", "does not sum to 1"),
                                       ("0.5,0.5,-0.125,0.0,0.125", "negative or non-finite weight")])
def test_a_bad_mixture_names_the_file_and_line(tmp_path, mix, match):
    lines = rows_for("70M", 0, MIX_A, 1000, {"ArXiv": 3.0}) + rows_for("70M", 1, mix, 1000,
                                                                       {"ArXiv": 3.0})
    path = write_curves(tmp_path, lines)
    with pytest.raises(validation.ConfigError, match=f"--curves={path}: line 3: .*"):
        published_curves.load_curves(path)
    with pytest.raises(validation.ConfigError, match=match):
        published_curves.load_curves(path)


def test_other_bad_curves(tmp_path):
    with pytest.raises(validation.ConfigError, match="--curves=.*file not found"):
        published_curves.load_curves(tmp_path / "absent.csv")
    path = write_curves(tmp_path, rows_for("70M", 0, MIX_A, 1000, {"ArXiv": 3.0}) +
                        rows_for("70M", 0, "0.5,0.25,0.125,0.0,0.125", 2000, {"ArXiv": 3.0}))
    with pytest.raises(validation.ConfigError, match="line 3: mixture 0 of 70M was"):
        published_curves.load_curves(path)
    path = write_curves(tmp_path, rows_for("70M", 0, MIX_A, 1000, {"Pile-XX": 3.0}))
    with pytest.raises(validation.ConfigError, match="unknown eval domain 'Pile-XX'"):
        published_curves.load_curves(path)
    (tmp_path / "bad.csv").write_text("model,step,loss\n70M,1,2\n")
    with pytest.raises(validation.ConfigError, match="missing columns"):
        published_curves.load_curves(tmp_path / "bad.csv")
    path = write_curves(tmp_path, [])
    with pytest.raises(validation.ConfigError, match="has no rows after its header"):
        published_curves.load_curves(path)
    path = write_curves(tmp_path, ["70M,0,0.5,0.25"])
    with pytest.raises(validation.ConfigError, match="line 2: has fewer fields than the header"):
        published_curves.load_curves(path)
    path = write_curves(tmp_path, rows_for("70M", 0, "nan,0.25,0.0,0.125,0.125", 1000,
                                           {"ArXiv": 3.0}))
    with pytest.raises(validation.ConfigError, match="line 2: .*negative or non-finite"):
        published_curves.load_curves(path)
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(validation.ConfigError, match="binary.csv: not a UTF-8 CSV"):
        published_curves.load_curves(tmp_path / "binary.csv")
    with pytest.raises(validation.ConfigError, match=f"--curves={tmp_path}: not a file"):
        published_curves.load_curves(tmp_path)


@pytest.mark.parametrize("text,match", [
    ("not json", "not a JSON file of weights"), ("[1, 2]", "must map each sub-domain"),
    ('{"ArXiv": 1}', "no weight for"), (None, "the weights of academic .* must be numbers >= 0")])
def test_bad_weights_files_name_the_flag(tmp_path, text, match):
    path = write_curves(tmp_path, rows_for("70M", 0, MIX_A, 1000, {"ArXiv": 3.0}))
    members = [m for group in published_curves.GROUPS.values() for m in group]
    weights = tmp_path / "weights.json"
    weights.write_text(text if text is not None else json.dumps(dict.fromkeys(members, 0)))
    with pytest.raises(validation.ConfigError, match=f"--valid_weights={weights}: {match}"):
        published_curves.load_curves(path, weights)


@pytest.mark.parametrize("field,value", [
    ("heldout_fraction", 0.0), ("heldout_fraction", 1.0), ("laws", ("bimix", "doremi")),
    ("zero_shares", ("impute",)), ("step_cut", 40000), ("fit.num_starts", 0),
    ("opt.domain_weights", (0.2, 0.2, 0.2, 0.2, 0.3)),
    ("opt.domain_weights", (0.5, 0.5, 0.2, 0.0, -0.2)), ("opt.min_weight", 0.0),
    ("epsilon", 0.0), ("models", ("305M", "305M")), ("laws", ("bimix", "bimix")),
    ("opt.domain_weights", ("abc",))])
def test_bad_config_names_the_flag_before_anything_is_written(tmp_path, field, value):
    config = bimix_fit.get_config("smoke")
    parent, _, leaf = field.rpartition(".")
    (config[parent] if parent else config)[leaf] = value
    with pytest.raises(validation.ConfigError, match=f"--config.{field}"):
        bimix_fit.run(config, str(tmp_path / "run"), curves=CURVES)
    assert not (tmp_path / "run").exists()


@needs_curves
def test_a_size_without_enough_steps_is_refused_by_name(tmp_path):
    config = bimix_fit.get_config("smoke")
    config.models = ("1B",)  # 6 mixtures; at most 2 checkpoints by 30k steps
    with pytest.raises(validation.ConfigError, match="--config.models='1B': 1B has"):
        bimix_fit.run(config, str(tmp_path / "run"))


def test_command_line_reports_a_missing_curves_file(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bimix_fit", f"--curves={tmp_path / 'no.csv'}",
         f"--workdir={tmp_path / 'run'}", "--config=experiments/bimix_fit.py:smoke"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode != 0
    assert f"error: --curves={tmp_path / 'no.csv'}: file not found" in proc.stderr
