"""The knowledge-mixing run: streams, exposures, evaluation rows, the run contract, bad input."""

import json
import logging

import numpy as np
import pytest

from experiments import knowledge_mixing
from phasemix.base import run_io, validation
from phasemix.data import knowledge, synbio, tokenizer
from phasemix.runs import sweep


@pytest.fixture(scope="module")
def small():
    config = synbio.default_config()
    config.num_people = 30
    bio = synbio.make(config)
    tok = tokenizer.build(["a few web words here"], 4000, bio.required_words())
    return bio, tok


def test_bio_stream_counts_every_exposure_and_only_kept_people(small):
    bio, tok = small
    stream = knowledge.bio_stream(bio, tok, 20_000, seed=0)
    assert len(stream.tokens) >= 20_000
    exposures = stream.exposures(len(stream.tokens), len(bio))
    assert exposures.sum() == len(stream.person_D)
    assert exposures.max() - exposures.min() <= 1  # uniform popularity: epochs of everyone
    # Each draw starts with the separator, and the draws' spans tile the stream.
    starts = np.concatenate([[0], stream.end_D[:-1]])
    assert np.all(stream.tokens[starts] == knowledge.SEPARATOR)
    kept = np.array([3, 7, 11])
    subset = knowledge.bio_stream(bio, tok, 5_000, seed=0, people=kept)
    assert set(subset.person_D.tolist()) == set(kept.tolist())


def test_compact_tuples_take_their_share_of_the_bio_tokens(small):
    bio, tok = small
    plain = knowledge.bio_stream(bio, tok, 30_000, seed=0)
    mixed = knowledge.bio_stream(bio, tok, 30_000, seed=0, compact_fraction=0.3)
    bio_marker = tok.ids["bio"]
    assert (plain.tokens == bio_marker).sum() == 0
    # Compact tuples are ~26 tokens each; their share of the stream is close to 0.3.
    compact_tokens = (mixed.tokens == bio_marker).sum() * (len(bio.compact(0).split()) + 1)
    assert 0.2 < compact_tokens / len(mixed.tokens) < 0.4


def test_query_rows_score_exactly_the_value_tokens(small):
    bio, tok = small
    query = bio.queries([0], templates=[0])[0]
    arrays = knowledge.query_arrays(tok, [query], seq_len=32)
    scored = arrays["targets"][0][arrays["loss_mask"][0] == 1]
    np.testing.assert_array_equal(scored, tok.token_ids(query.value))
    assert arrays["inputs"][0, 0] == knowledge.SEPARATOR
    with pytest.raises(validation.ConfigError, match=r"--config.seq_len=4: is shorter than a "
                       r"biography query \(\d+ tokens\)"):
        knowledge.query_arrays(tok, [query], seq_len=4)


def test_smoke_run_writes_the_contract_with_an_exact_ratio(tmp_path, caplog):
    config = knowledge_mixing.get_config("smoke")
    with caplog.at_level(logging.INFO):
        summary = knowledge_mixing.run(config, str(tmp_path))
    assert summary["bio_token_fraction"] == pytest.approx(0.3, abs=1 / (16 * 30))
    assert summary["recompilations"] == 0
    assert 0 <= summary["bio_accuracy"] <= 1 and summary["exposures_min"] >= 1
    assert summary["params"] > summary["non_embedding_params"] > 0
    assert 10 < summary["tokens_per_bio"] < 200
    for name in ("config.json", "metrics.jsonl", "summary.json", "knowledge_curves.png",
                 "samples.json", "tokenizer.json", "people.csv"):
        assert (tmp_path / name).exists(), name
    on_disk = run_io.read_json(tmp_path / "summary.json")
    assert on_disk["people_all_attributes"] == summary["people_all_attributes"]
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert samples and {"prompt", "gold", "generated"} <= set(samples[0])
    rows = run_io.read_metrics(tmp_path)
    assert rows[-1]["web_val_loss"] < rows[0]["web_val_loss"]  # it learns the web text
    # The progress line shows the paper's metric, the attributes' mean exact match.
    last_exact = np.mean([rows[-1][f"{n}_exact_match"] for n in knowledge_mixing.ATTRIBUTE_SETS])
    assert f"{config.num_steps}/{config.num_steps} (100%) bio_exact_match={last_exact:.3f}" \
        in caplog.text
    people = sweep.read_table(tmp_path / "people.csv")
    assert len(people) == config.final_eval_people
    # The per-person accuracies average to the run's final accuracy over the same people.
    assert np.mean([p["accuracy"] for p in people]) == pytest.approx(
        summary["final_bio_accuracy"], abs=1e-6)


def test_web_only_run_trains_on_web_text_alone():
    config = knowledge_mixing.get_config("smoke")
    config.ratio = 0.0
    task, extras = knowledge_mixing.make_task(config)
    assert all((task.train_batches[s]["domain"] == 1).all() for s in (0, config.num_steps - 1))
    assert extras["exposures"].sum() == 0
    # Biographies are still rendered, so the capacity theory knows their length.
    summary = task.summarize([{"step": 0, "web_val_loss": 5.0, **{
        f"{n}_exact_match": 0.0 for n in knowledge_mixing.ATTRIBUTE_SETS}}])
    assert summary["bio_token_fraction"] == 0 and summary["tokens_per_bio"] > 10


def test_threshold_exposures_where_half_the_answers_are_right(tmp_path):
    exposures = np.repeat([1, 2, 4, 8, 16, 32], 10)
    people = np.arange(len(exposures))
    # People seen >= 8 times answer all 25 queries right, the others none.
    asked = np.repeat(people, 25)
    right = asked[exposures[asked] >= 8]
    found = knowledge_mixing._per_person(str(tmp_path), right, asked, people, exposures)
    assert 4 < found["threshold_exposures"] <= 8
    assert found["threshold_exposures_low"] == pytest.approx(4, rel=0.3)
    assert len(sweep.read_table(tmp_path / "people.csv")) == len(people)
    uniform = knowledge_mixing._per_person(str(tmp_path), right, asked, people,
                                           np.full(len(people), 9))
    assert uniform["threshold_exposures"] is None  # all seen equally often: no threshold


@pytest.mark.parametrize("field,value,flag", [
    ("ratio", -0.1, "ratio"), ("ratio", 1.5, "ratio"),
    ("mix.keep_fraction", 0.0, "mix.keep_fraction"),
    ("mix.compact_fraction", 1.0, "mix.compact_fraction"),
    ("model.preset", "gigantic", "model.preset"),
    ("synbio.num_people", 0, "synbio.num_people=0: must be positive"),
    ("synbio.popularity_exponent", -1.0, "synbio.popularity_exponent=-1.0"),
])
def test_bad_config_names_the_flag(field, value, flag):
    config = knowledge_mixing.get_config("smoke")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(validation.ConfigError, match=flag):
        knowledge_mixing.validate(config)


@pytest.mark.parametrize("field,value", [("keep_fraction", 0.5), ("compact_fraction", 0.1)])
def test_a_mitigation_without_synbio_is_refused_not_ignored(field, value):
    config = knowledge_mixing.get_config("smoke")
    config.ratio = 0.0
    knowledge_mixing.validate(config)  # web text alone is a legal run
    config.mix[field] = value
    with pytest.raises(validation.ConfigError, match=rf"^--config.mix.{field}={value}: has no "
                       r"effect at --config.ratio=0"):
        knowledge_mixing.validate(config)


def test_tuples_are_added_beside_the_biographies_at_their_token_fraction():
    """tau = 0.25 at r = 0.3: a quarter of the rows are compact tuples, the biographies keep
    their 0.3 (the paper's compact knowledge mixing adds, it does not replace)."""
    config = knowledge_mixing.get_config("smoke")
    config.ratio, config.mix.tuple_fraction = 0.3, 0.25
    task, extras = knowledge_mixing.make_task(config)
    domains = np.concatenate([task.train_batches[s]["domain"] for s in range(config.num_steps)])
    rows = config.num_steps * config.batch_size
    assert np.bincount(domains, minlength=3).tolist() == [round(0.3 * rows), round(0.25 * rows),
                                                           rows - round(0.3 * rows)
                                                           - round(0.25 * rows)]
    tuples = np.concatenate([task.train_batches[s]["inputs"][
        task.train_batches[s]["domain"] == 1] for s in range(config.num_steps)])
    assert (tuples == extras["tokenizer"].ids["bio"]).sum() > 0  # "Bio:" opens every tuple
    summary = task.summarize([{"step": 0, "web_val_loss": 5.0, **{
        f"{n}_exact_match": 0.0 for n in knowledge_mixing.ATTRIBUTE_SETS}}])
    assert summary["bio_token_fraction"] == pytest.approx(0.3, abs=0.01)
    assert summary["tuple_token_fraction"] == pytest.approx(0.25, abs=0.01)
    config.mix.tuple_fraction = 0.75  # r + tau > 1
    with pytest.raises(validation.ConfigError, match="mix.tuple_fraction"):
        knowledge_mixing.validate(config)
