"""Knowledge phase sweeps: grids per mode, critical points, sharpness, theory overlay, a real sweep."""

import pathlib

import numpy as np
import pytest

from experiments import knowledge_mixing, knowledge_phase
from phasemix.base import run_io, validation
from phasemix.data import synbio
from phasemix.analysis import capacity, knowledge_prediction, knowledge_sweeps
from phasemix.runs import sweep


def _rows(points, **fixed):
    """Result-table rows as the sweep writes them: config columns plus summary columns."""
    out = []
    for i, (ratio, accuracy) in enumerate(points):
        row = {"run": f"r{i}", "ratio": ratio, "seed": 0, "model.preset": "tiny-64",
               "bio_accuracy": accuracy, "people_trained": 500, "train_tokens": 4_096_000,
               "params": 800_000, "non_embedding_params": 100_000, "web_val_loss": 5.0,
               "exposures_mean": 150 * ratio, "tokens_per_bio": 100.0,
               "people_all_attributes": accuracy ** 5, "run_seconds": 60.0}
        row.update({f"accuracy_{a}": accuracy for a in synbio.ATTRIBUTES})
        row.update(fixed)
        out.append(row)
    return out


def test_every_mode_builds_its_grid():
    grids = {mode: knowledge_phase.overrides(knowledge_phase.get_config(f"{mode}_smoke"))
             for mode in knowledge_phase.MODES}
    assert [g["ratio"] for g in grids["ratio"]] == [0.2, 1.0]
    assert {g["ratio"] for g in grids["web"]} == {0.0} and len(grids["web"]) == 3
    assert len(grids["size"]) == 3 * 2
    base = knowledge_phase.get_config("longer_smoke").base
    assert [g["num_steps"] for g in grids["longer"]] == [base.num_steps, 2 * base.num_steps]
    variants = [(g.get("mix.keep_fraction"), g.get("mix.compact_fraction"))
                for g in grids["mitigation"]]
    assert variants == [(None, None), (0.5, None), (None, 0.1)]
    assert all(g["synbio.popularity_exponent"] == 1.0 for g in grids["frequency"])


@pytest.mark.parametrize("field,value,flag", [
    ("mode", "bogus", "mode"), ("ratios", (0.0, 0.5), "ratios"),
    ("level", 1.0, "level"), ("keep_fractions", (1.5,), "keep_fractions"),
    ("param_count", "flops", "param_count"), ("web_sweep", "/nonexistent", "web_sweep"),
    ("steps_multipliers", (1.5,), r"steps_multipliers=\(1.5,\): must be integers"),
])
def test_bad_config_names_the_flag(field, value, flag):
    config = knowledge_phase.get_config("smoke")
    config[field] = value
    with pytest.raises(validation.ConfigError, match=flag):
        knowledge_phase.validate(config)


def test_a_mitigation_sweep_without_mitigations_is_refused():
    config = knowledge_phase.get_config("mitigation_smoke")
    config.keep_fractions = ()
    knowledge_phase.validate(config)  # compact tuples alone are a legal comparison
    config.compact_fractions = ()
    with pytest.raises(validation.ConfigError, match=r"^--config.keep_fractions=\(\): is empty and "
                       "so are --config.compact_fractions and --config.tuple_fractions"):
        knowledge_phase.validate(config)
    config.tuple_fractions = (0.1,)  # added tuples alone are a legal comparison too
    knowledge_phase.validate(config)


@pytest.mark.parametrize("table,match", [
    ("hello,world\n1,2\nnot a table\n", "is not the table of a :web sweep"),
    ("model.preset,seed\n", "has no runs"),
    (b"\xcc\xff\x00", "cannot read"),
])
def test_a_web_sweep_that_is_not_one_is_refused_before_training(tmp_path, table, match):
    config = knowledge_phase.get_config("smoke")
    config.web_sweep = str(tmp_path)
    path = tmp_path / sweep.RESULTS_FILE
    path.write_bytes(table) if isinstance(table, bytes) else path.write_text(table)
    with pytest.raises(validation.ConfigError, match=f"^--config.web_sweep=.*{match}"):
        knowledge_phase.validate(config)


def test_size_mode_takes_one_ratio_grid_per_preset():
    config = knowledge_phase.get_config("size_smoke")
    config.ratios_per_preset = ((0.5, 1.0), (0.2,), (0.1, 0.2))
    grid = knowledge_phase.overrides(config)
    assert [(g["model.preset"], g["ratio"]) for g in grid] == [
        ("tiny-16", 0.5), ("tiny-16", 1.0), ("tiny-32", 0.2), ("tiny-48", 0.1),
        ("tiny-48", 0.2)]
    assert knowledge_sweeps.size_ratios(config) == [0.1, 0.2, 0.5, 1.0]
    config.ratios_per_preset = ((0.5,), (0.2,))
    with pytest.raises(validation.ConfigError, match="ratios_per_preset"):
        knowledge_phase.validate(config)
    config.ratios_per_preset = ((0.5,), (0.2,), (0.0,))
    with pytest.raises(validation.ConfigError, match="ratios_per_preset"):
        knowledge_phase.validate(config)


def test_web_mode_refuses_fewer_than_three_sizes():
    config = knowledge_phase.get_config("web_smoke")
    config.presets = ("tiny-16", "tiny-32")
    with pytest.raises(validation.ConfigError, match="presets"):
        knowledge_phase.validate(config)


def test_unknown_variant_is_refused():
    with pytest.raises(validation.ConfigError, match="variant"):
        knowledge_phase.get_config("rato")


def test_ratio_analysis_finds_the_critical_ratio_and_the_transition_width(tmp_path):
    config = knowledge_phase.get_config()
    rows = _rows([(0.05, 0.0), (0.1, 0.04), (0.15, 0.62), (0.3, 0.9)])
    summary = knowledge_sweeps.analyse_ratio(config, tmp_path, rows)
    assert 0.1 < summary["critical"] < 0.15
    assert (summary["critical_low"], summary["critical_high"]) == (0.1, 0.15)
    assert summary["transition_factor"] == pytest.approx(1.5)  # < 10% at 0.1, > 50% at 0.15
    assert (tmp_path / "accuracy_vs_ratio.png").exists()
    gradual = knowledge_sweeps.sharpness(knowledge_sweeps.per_point(
        _rows([(0.05, 0.05), (0.1, 0.2), (0.2, 0.35), (0.4, 0.55)]), ("ratio",)), "ratio")
    assert gradual["transition_factor"] == pytest.approx(8.0)


def test_seed_spread_of_the_critical_ratio():
    rows = _rows([(0.1, 0.0), (0.2, 1.0)]) + _rows([(0.1, 0.4), (0.2, 1.0)], seed=1)
    points = knowledge_sweeps.per_point(rows, ("ratio",))
    found = knowledge_sweeps.critical_point(points, "ratio", 0.5, rows)
    assert points[0]["bio_accuracy_mean"] == pytest.approx(0.2)
    assert found["critical_seed_std"] > 0


def _size_rows(exponent: float):
    """A size sweep whose accuracy steps up at r_c(P) = 0.1 * (P / 1e5)^exponent."""
    rows = []
    for preset, n in (("tiny-32", 3e4), ("tiny-48", 6e4), ("tiny-64", 1e5), ("tiny-96", 2e5)):
        critical = 0.1 * (n / 1e5) ** exponent
        for ratio in np.geomspace(0.01, 1.0, 13):
            rows += _rows([(float(ratio), 1.0 if ratio >= critical else 0.0)],
                          **{"model.preset": preset, "non_embedding_params": n})
    return rows


def test_size_analysis_fits_the_critical_ratio_power_law_and_overlays_the_theory(tmp_path):
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    law = capacity.WebLaw(C=3.0, A=40.0, alpha=0.3)
    sweep.write_table([{"model.preset": p, "seed": 0, "ratio": 0.0, "bio_accuracy": 0.0,
                        "non_embedding_params": n, "web_val_loss": float(law.loss(n)),
                        "tokens_per_bio": 100.0, "params": 8 * n}
                       for p, n in (("a", 2e4), ("b", 6e4), ("c", 2e5))],
                      web_dir / sweep.RESULTS_FILE)
    config = knowledge_phase.get_config("size")
    config.presets = ("tiny-32", "tiny-48", "tiny-64", "tiny-96")
    config.ratios = tuple(float(r) for r in np.geomspace(0.01, 1.0, 13))
    config.web_sweep = str(web_dir)
    summary = knowledge_sweeps.analyse_size(config, tmp_path, _size_rows(-1.0))
    fit = summary["critical_ratio_power_law"]
    # The grid's resolution (a factor 1.47) bounds how well the exponent is measured.
    assert fit["exponent"] == pytest.approx(-1.0, abs=0.25) and fit["points"] == 4
    assert summary["web_law"]["alpha"] == pytest.approx(0.3, rel=0.05)
    assert summary["theory_ratio_exponent"] == pytest.approx(-1.3, rel=0.05)
    assert set(summary["theory_critical_ratio"]) == set(config.presets)
    for name in ("accuracy_vs_size.png", "accuracy_heatmap.png", "critical_ratio_vs_size.png"):
        assert (tmp_path / name).exists(), name


def test_size_analysis_with_per_preset_grids_finds_each_critical_ratio(tmp_path):
    config = knowledge_phase.get_config("size")
    config.presets = ("tiny-32", "tiny-64", "tiny-96")
    full = [float(r) for r in np.geomspace(0.01, 1.0, 13)]
    # Each size sampled on its own 5 ratios around r_c = 0.1 * (P / 1e5)^-1.
    config.ratios_per_preset = (tuple(full[7:12]), tuple(full[3:8]), tuple(full[1:6]))
    wanted = {(p, r) for p, grid in knowledge_sweeps.size_grid(config).items() for r in grid}
    rows = [r for r in _size_rows(-1.0) if (r["model.preset"], r["ratio"]) in wanted]
    summary = knowledge_sweeps.analyse_size(config, tmp_path, rows)
    critical = {s["preset"]: s["critical"] for s in summary["per_size"]}
    for preset, n in (("tiny-32", 3e4), ("tiny-64", 1e5), ("tiny-96", 2e5)):
        assert critical[preset] == pytest.approx(0.1 * (n / 1e5) ** -1.0, rel=0.5), preset
    assert summary["critical_ratio_power_law"]["exponent"] == pytest.approx(-1.0, abs=0.3)
    # Only ratios sampled at >= 2 sizes get a critical size.
    assert all(sum(r == e["ratio"] for _, r in wanted) >= 2 for e in summary["per_ratio"])
    assert (tmp_path / "accuracy_vs_ratio_by_size.png").exists()


def test_ratio_sweep_end_to_end(tmp_path):
    """One real (smoke) knowledge run through the sweep, analysed: files and consistency."""
    config = knowledge_phase.get_config("smoke")
    config.ratios = (1.0,)
    summary = knowledge_phase.run(config, str(tmp_path))
    rows = sweep.read_table(tmp_path / sweep.RESULTS_FILE)
    analysis = sweep.read_table(tmp_path / "analysis.csv")
    assert len(rows) == 1 and analysis[0]["bio_accuracy_mean"] == pytest.approx(
        rows[0]["bio_accuracy"])
    assert run_io.read_json(tmp_path / "summary.json")["mode"] == "ratio"
    assert summary["runs"] == 1
    for name in ("config.json", "accuracy_vs_ratio.png"):
        assert (tmp_path / name).exists(), name
    assert (pathlib.Path(tmp_path) / "runs" / "ratio=1,seed=0" / "people.csv").exists()



def test_frequency_analysis_reads_the_per_person_table_knowledge_mixing_writes():
    assert knowledge_sweeps.PEOPLE_FILE == knowledge_mixing.PEOPLE_FILE == "people.csv"

@pytest.mark.slow
def test_web_then_size_smoke_sweeps_predict_and_measure(tmp_path):
    """The theory-first workflow on smoke runs: web-only sweep, then size x ratio with it."""
    web = knowledge_phase.get_config("web_smoke")
    web_summary = knowledge_phase.run(web, str(tmp_path / "web"))
    assert web_summary["web_law"]["alpha"] > 0
    size = knowledge_phase.get_config("size_smoke")
    size.web_sweep = str(tmp_path / "web")
    summary = knowledge_phase.run(size, str(tmp_path / "size"))
    assert set(summary["theory_critical_ratio"]) == set(size.presets)
    assert (tmp_path / "size" / "accuracy_vs_size.png").exists()


def _capacity_table(bits_by_preset_and_n):
    """Tidy capacity rows (as knowledge_capacity writes capacity.csv), one seed per point."""
    return [{"preset": preset, "params": 8 * ne, "non_embedding_params": ne, "num_people": n,
             "seed": 0, "learned_bits": bits}
            for (preset, ne), by_n in bits_by_preset_and_n.items() for n, bits in by_n.items()]


def _web_table(path, law):
    path.mkdir()
    sweep.write_table([{"model.preset": p, "seed": 0, "ratio": 0.0, "bio_accuracy": 0.0,
                        "non_embedding_params": n, "web_val_loss": float(law.loss(n)),
                        "tokens_per_bio": 100.0, "params": 8 * n}
                       for p, n in (("tiny-32", 2e4), ("tiny-48", 6e4), ("tiny-64", 2e5))],
                      path / sweep.RESULTS_FILE)


def test_only_sizes_whose_learned_bits_stopped_growing_give_a_capacity():
    table = _capacity_table({("tiny-16", 1000): {1000: 900.0, 2000: 1500.0, 4000: 1540.0},
                             ("tiny-32", 4000): {2000: 3000.0, 4000: 6000.0}})
    bits = knowledge_prediction.measured_bits_per_param(table, "non_embedding_params", 1.1)
    assert bits == {"tiny-16": pytest.approx(1540.0 / 1000)}  # tiny-32 still doubles
    with pytest.raises(knowledge_prediction.PredictionError, match="no size has reached"):
        knowledge_prediction.measured_bits_per_param(table[-2:], "non_embedding_params", 1.1)


def test_predictions_use_each_measured_capacity_and_the_hit_criterion_is_1_5x():
    law = capacity.WebLaw(C=3.0, A=40.0, alpha=0.3)
    knapsack = capacity.Knapsack(web=law, num_people=500, tokens_per_bio=100.0,
                                 bits_per_person=30.0)
    sizes = {"a": 2e4, "b": 6e4, "c": 2e5}
    rows = knowledge_prediction.predict(knapsack, sizes, {"a": 1.0, "b": 3.0}, level=0.5)
    by = {r["preset"]: r for r in rows}
    for preset, bits in (("a", 1.0), ("b", 3.0), ("c", 2.0)):  # c: the mean of a and b
        expected = capacity.Knapsack(web=law, num_people=500, tokens_per_bio=100.0,
                                     bits_per_person=30.0, bits_per_param=bits)
        assert by[preset]["predicted_critical_ratio"] == pytest.approx(
            expected.critical_ratio(sizes[preset], 0.5))
    assert by["c"]["capacity_source"] == knowledge_prediction.MEAN_OF_MEASURED
    assert by["a"]["predicted_exponent"] < 0  # bigger models need a smaller share of facts
    measured = [{"preset": "a", "critical": by["a"]["predicted_critical_ratio"] * 1.4,
                 "critical_low": 0.1, "critical_high": 0.3},
                {"preset": "b", "critical": by["b"]["predicted_critical_ratio"] / 1.6,
                 "critical_low": 0.01, "critical_high": 0.03}]
    hits = {r["preset"]: r["hit"] for r in knowledge_prediction.compare(rows, measured)}
    assert hits == {"a": True, "b": False, "c": False}


def test_predict_mode_writes_the_prediction_without_training(tmp_path):
    law = capacity.WebLaw(C=3.0, A=40.0, alpha=0.3)
    _web_table(tmp_path / "web", law)
    table = _capacity_table({("tiny-32", 2e4): {2000: 2e4, 4000: 2.1e4},
                             ("tiny-48", 6e4): {4000: 9e4, 8000: 9.5e4}})
    sweep.write_table(table, tmp_path / "capacity.csv")
    config = knowledge_phase.get_config("predict")
    config.web_sweep, config.capacity_table = str(tmp_path / "web"), str(tmp_path / "capacity.csv")
    config.predicted_csv = str(tmp_path / "predicted.csv")
    summary = knowledge_phase.run(config, str(tmp_path / "run"))
    rows = sweep.read_table(tmp_path / "predicted.csv")
    assert [r["preset"] for r in rows] == list(config.presets)
    assert [r["capacity_source"] for r in rows] == ["measured", "measured",
                                                    knowledge_prediction.MEAN_OF_MEASURED]
    assert rows[0]["bits_per_param"] == pytest.approx(2.1e4 / 2e4)
    assert all(r["commit"] and r["predicted_critical_ratio"] > 0 for r in rows)
    assert summary["predicted_csv"] == config.predicted_csv
    assert not (tmp_path / "run" / sweep.RUNS_DIR).exists()  # nothing was trained
    config.capacity_table = str(tmp_path / "web" / sweep.RESULTS_FILE)  # not a capacity table
    with pytest.raises(validation.ConfigError, match="^--config.capacity_table=.*no capacity"):
        knowledge_phase.run(config, str(tmp_path / "run2"))
