"""BiMix on our own proxy runs: config checks, mixtures, the comparison, one real smoke study."""

import json
import pathlib

import numpy as np
import pytest

from conftest import run_python
from experiments import bimix
from phasemix.base import run_io, validation
from phasemix.training import mixture_run
from phasemix.analysis import mixture_strategies, proxy_law_fits
from phasemix.runs import sweep


@pytest.mark.parametrize("field,value,match", [
    ("base.mixture", (0.5, 0.4), r"^--config\.base\.mixture=\(0\.5, 0\.4\): must sum to 1"),
    ("base.mixture", (1.2, -0.2), r"^--config\.base\.mixture=.*negative share"),
    ("base.mixture", (0.5, 0.25, 0.25), r"^--config\.base\.mixture=.*one share per domain \(2\)"),
    ("base.domains.names", ("encyclopedia", "tweets"),
     r"^--config\.base\.domains\.names=.*unknown domain 'tweets'"),
    ("num_proxies", 4, r"^--config\.num_proxies=4: leaves 3 proxies .* the 4 parameters of the "
                       r"bimix law .* use >= 5"),
    ("extra_mixtures", ((0.3, 0.3),), r"^--config\.extra_mixtures\[0\]=.*sum to 1"),
    ("optimize_law", "step_only", r"^--config\.optimize_law='step_only'"),
    ("step_cut", 8, r"^--config\.step_cut=8: .*>= 1 after it"),
    ("min_weight", 0.6, r"^--config\.min_weight=0\.6"),
    ("base.model.preset", "huge", r"^--config\.base\.model\.preset='huge'"),
    ("base.mixture", ("(nan,0.5)",), r"^--config\.base\.mixture=.*must be numbers, one share "
                                     r"per domain \(2\)"),
    ("base.mixture", (float("nan"), 0.5), r"^--config\.base\.mixture=.*not finite"),
    ("laws", ("bimix", "bimix"), r"^--config\.laws=.*repeats a value"),
    ("dirichlet_alpha", float("inf"), r"^--config\.dirichlet_alpha=inf: must be finite"),
    ("fit.tol", -1.0, r"^--config\.fit\.tol=-1\.0"),
])
def test_bad_configs_name_the_flag(field, value, match):
    config = bimix.get_config("smoke")
    node = config
    *parents, leaf = field.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(validation.ConfigError, match=match):
        bimix.validate(config)


def test_proxies_for_more_law_parameters():
    """Ye et al.'s law has K + 3 = 7 parameters with 4 domains: 9 proxies leave 7 to fit after
    2 are held out, 8 leave only 6."""
    config = bimix.get_config()
    assert proxy_law_fits.law_param_count("ye", 4) == 7
    assert proxy_law_fits.law_param_count("bimix", 4) == 4
    config.num_proxies = 9
    bimix.validate(config)
    config.num_proxies = 8
    with pytest.raises(validation.ConfigError, match=r"num_proxies=8: .* ye law .* use >= 9"):
        bimix.validate(config)


def test_default_config_is_valid_and_mixtures_are_exact():
    config = bimix.get_config()
    bimix.validate(config)
    grid = mixture_strategies.proxy_grid(config)
    assert len(grid) == config.num_proxies
    assert grid == mixture_strategies.proxy_grid(config)  # seeded
    for override in grid:
        shares = np.array(override["mixture"])
        assert abs(shares.sum() - 1) <= mixture_run.MIX_TOL and np.all(shares >= 0)
        np.testing.assert_allclose(shares * mixture_strategies.RESOLUTION,
                                   np.round(shares * mixture_strategies.RESOLUTION), atol=1e-6)
    config.seed = 1
    assert mixture_strategies.proxy_grid(config) != grid
    assert mixture_strategies.quantize([1 / 3] * 3) == (0.3334, 0.3333, 0.3333)
    assert len({sweep.run_name(g) for g in grid}) == len(grid)


def test_a_run_trains_on_the_exact_mixture_and_scores_every_domain(tmp_path):
    config = bimix.get_config("smoke").base
    config.cache_dir = str(tmp_path / "cache")
    config.mixture = (0.25, 0.75)
    task = mixture_run.make_task(config)
    for step in range(config.num_steps):
        domain_B = task.train_batches[step]["domain"]
        assert np.bincount(domain_B, minlength=2).tolist() == [2, 6]  # 0.25 and 0.75 of 8
    assert sorted(task.eval_sets) == ["valid_biographies", "valid_encyclopedia"]
    assert all(s["inputs"].shape == (16, 16) for s in task.eval_sets.values())
    summary = mixture_run.run_mixture(config, str(tmp_path / "run"))
    rows = run_io.read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 2, 4, 6, 8]
    assert all(np.isfinite(r["valid_encyclopedia_loss"]) and np.isfinite(
        r["valid_biographies_loss"]) for r in rows)
    assert summary["avg_valid_loss"] == pytest.approx(np.mean(
        [rows[-1]["valid_encyclopedia_loss"], rows[-1]["valid_biographies_loss"]]))
    assert summary["recompilations"] == 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


# --- The study on synthetic curves (no training) ------------------------------------------------

# A known BiMix law per domain: L_i = r_i^-alpha_i * (B_i * s^-beta_i + C_i).
TRUE_LAW = {"encyclopedia": dict(alpha=0.08, beta=0.5, B=3.0, C=3.5),
            "biographies": dict(alpha=0.02, beta=0.8, B=5.0, C=1.5)}


def synthetic_law_run(config, workdir):
    """Stands in for training: writes the losses TRUE_LAW gives this run's mixture (SYNTHETIC
    curves; a seed adds a small deterministic offset so that seeds differ)."""
    names = tuple(config.domains.names)
    run_io.prepare_workdir(workdir, config)
    offset = 0.001 * config.seed
    rows = []
    for step in range(0, config.num_steps + 1, config.eval_every):
        row = {"step": step}
        for name, share in zip(names, config.mixture):
            law = TRUE_LAW[name]
            row[f"valid_{name}_loss"] = (share ** -law["alpha"] * (
                law["B"] * max(step, 1) ** -law["beta"] + law["C"]) + offset)
        rows.append(row)
    with open(pathlib.Path(workdir) / run_io.METRICS_FILE, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    last = {f"final_{k}": v for k, v in rows[-1].items() if k != "step"}
    summary = {**last, "final_step": config.num_steps,
               "avg_valid_loss": float(np.mean(list(last.values())))}
    run_io.write_json_atomic(pathlib.Path(workdir) / run_io.SUMMARY_FILE, summary)
    return summary


def test_study_on_synthetic_curves_finds_the_true_optimum(tmp_path, monkeypatch):
    from phasemix.analysis import mixture_opt

    monkeypatch.setattr(mixture_run, "run_mixture", synthetic_law_run)
    config = bimix.get_config("smoke")
    config.base.cache_dir = str(tmp_path / "cache")
    config.seeds = (0, 1)
    config.fit.num_starts, config.fit.max_iter = 16, 200
    workdir = tmp_path / "study"
    summary = bimix.run(config, str(workdir))
    for name in ("config.json", "results.csv", "fits.csv", "predictions.csv", "comparison.csv",
                 "domains.csv", "summary.json", "predicted_vs_measured.png", "strategies.png"):
        assert (workdir / name).exists(), name
    assert len(sweep.read_table(workdir / sweep.RESULTS_FILE)) == 5 + 4 * 2
    fits = {r["domain"]: r for r in sweep.read_table(workdir / "fits.csv")}
    for name, law in TRUE_LAW.items():
        assert fits[name]["coef_alpha"] == pytest.approx(law["alpha"], abs=2e-3)
        assert fits[name]["heldout_both_mre"] < 1e-3
    # The optimum of the true law, under the same bounds, is what the study trained.
    alpha, k = mixture_opt.bimix_coefficients(
        [dict(A=1.0, **law) for law in TRUE_LAW.values()], config.base.num_steps, [0.5, 0.5])
    hi = summary["optimization"]["max_share"]
    expected, _ = mixture_opt.bimix_optimal_mixture(alpha, k, [0.02, 0.02], hi)
    np.testing.assert_allclose(list(summary["mixtures"]["optimized"].values()), expected,
                               atol=2e-3)
    comparison = sweep.read_table(workdir / "comparison.csv")
    assert [r["strategy"] for r in comparison] == list(mixture_strategies.STRATEGIES)
    best = min(comparison, key=lambda r: r["avg_valid_loss_mean"])
    assert best["strategy"] == "optimized"
    assert summary["versus_uniform"]["optimized"]["beats_uniform"]
    assert best["avg_valid_loss_std"] == pytest.approx(0.001 / np.sqrt(2))
    # Re-running the command trains nothing again.
    monkeypatch.setattr(mixture_run, "run_mixture", None)
    assert bimix.run(config, str(workdir))["mixtures"] == summary["mixtures"]


def _comparison_rows():
    """Result-table rows of two seeds of every strategy (no training)."""
    losses = {"uniform": (4.00, 4.02), "natural": (4.10, 4.13), "entropy": (3.99, 4.02),
              "optimized": (3.90, 3.93)}
    rows = []
    for label, values in losses.items():
        for seed, value in enumerate(values):
            rows.append({"label": label, "seed": seed, "avg_valid_loss": value,
                         "final_valid_encyclopedia_loss": value + 0.5,
                         "final_valid_biographies_loss": value - 0.5})
    return rows


def test_comparison_and_headline_against_uniform():
    config = bimix.get_config("smoke")
    strategies = {k: (0.5, 0.5) for k in mixture_strategies.STRATEGIES}
    table = mixture_strategies.compare(config, strategies, _comparison_rows(), {},
                                       ("encyclopedia", "biographies"))
    assert [r["strategy"] for r in table] == list(mixture_strategies.STRATEGIES)
    optimized = table[-1]
    assert optimized["avg_valid_loss_mean"] == pytest.approx(3.915)
    assert optimized["minus_uniform_mean"] == pytest.approx(-0.095)
    assert optimized["valid_encyclopedia_loss_mean"] == pytest.approx(4.415)
    head = mixture_strategies.headline(table)
    assert head["optimized"]["beats_uniform"] and head["optimized"]["beyond_seed_spread"]
    assert head["entropy"]["beats_uniform"] and not head["entropy"]["beyond_seed_spread"]
    assert not head["natural"]["beats_uniform"]
    one_seed = [dict(r, avg_valid_loss_std=0.0) for r in table]  # one seed: no spread to beat
    verdict = mixture_strategies.headline(one_seed)["optimized"]
    assert verdict["beyond_seed_spread"] is None and "no seed spread): lower" in verdict["verdict"]


@pytest.mark.slow  # ~90 CPU-s on a loaded 2-core CPU: 9 real runs, each traced anew
def test_smoke_study_end_to_end(tmp_path):
    """The whole study on 2 real domains: 5 proxies, fits, the optimum, 4 strategies.

    In a fresh interpreter with JAX's persistent compilation cache, so that the 9 runs,
    which share every program shape, compile once.
    """
    workdir, cache = tmp_path / "study", tmp_path / "cache"
    summary = run_python(f"""
import json
import jax
jax.config.update("jax_compilation_cache_dir", {str(tmp_path / "xla")!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
from experiments import bimix
config = bimix.get_config("smoke")
config.base.cache_dir = {str(cache)!r}
print(json.dumps(bimix.run(config, {str(workdir)!r})))
""", timeout=600)
    for name in ("config.json", "results.csv", "fits.csv", "predictions.csv", "comparison.csv",
                 "domains.csv", "summary.json", "predicted_vs_measured.png", "strategies.png"):
        assert (workdir / name).exists(), name
    results = sweep.read_table(workdir / sweep.RESULTS_FILE)
    assert len(results) == 5 + len(mixture_strategies.STRATEGIES)
    assert all(r["final_step"] == 8 for r in results)
    comparison = sweep.read_table(workdir / "comparison.csv")
    assert [r["strategy"] for r in comparison] == list(mixture_strategies.STRATEGIES)
    fits = sweep.read_table(workdir / "fits.csv")
    assert [(r["law"], r["domain"]) for r in fits] == [("bimix", "encyclopedia"),
                                                       ("bimix", "biographies")]
    assert all(r["fit_n"] > 0 and r["heldout_mix_n"] > 0 and r["extrap_step_n"] > 0
               for r in fits)
    optimized = summary["mixtures"]["optimized"]
    assert sum(optimized.values()) == pytest.approx(1, abs=1e-6)
    assert min(optimized.values()) >= 0.02
    assert set(summary["versus_uniform"]) == {"natural", "entropy", "optimized"}
    assert json.loads((workdir / "summary.json").read_text())["proxies"] == 5
    metrics = (workdir / "runs" / results[0]["run"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics] == [0, 2, 4, 6, 8]
    assert all("valid_biographies_loss" in json.loads(m) for m in metrics)
