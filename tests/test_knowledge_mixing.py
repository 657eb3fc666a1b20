"""The knowledge-mixing run: streams, exposures, evaluation rows, the run contract, bad input."""

import json

import numpy as np
import pytest

from experiments import knowledge_mixing
from phasemix import knowledge, run_io, synbio, tokenizer, validation


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
    with pytest.raises(ValueError, match="seq_len"):
        knowledge.query_arrays(tok, [query], seq_len=4)


def test_smoke_run_writes_the_contract_with_an_exact_ratio(tmp_path):
    config = knowledge_mixing.get_config("smoke")
    summary = knowledge_mixing.run(config, str(tmp_path))
    assert summary["bio_token_fraction"] == pytest.approx(0.3, abs=1 / (16 * 30))
    assert summary["recompilations"] == 0
    assert 0 <= summary["bio_accuracy"] <= 1 and summary["exposures_min"] >= 1
    assert summary["params"] > summary["non_embedding_params"] > 0
    for name in ("config.json", "metrics.jsonl", "summary.json", "knowledge_curves.png",
                 "samples.json", "tokenizer.json"):
        assert (tmp_path / name).exists(), name
    on_disk = run_io.read_json(tmp_path / "summary.json")
    assert on_disk["people_all_attributes"] == summary["people_all_attributes"]
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert samples and {"prompt", "gold", "generated"} <= set(samples[0])
    rows = run_io.read_metrics(tmp_path)
    assert rows[-1]["web_val_loss"] < rows[0]["web_val_loss"]  # it learns the web text


@pytest.mark.parametrize("field,value,flag", [
    ("ratio", 0.0, "ratio"), ("ratio", 1.5, "ratio"),
    ("mix.keep_fraction", 0.0, "mix.keep_fraction"),
    ("mix.compact_fraction", 1.0, "mix.compact_fraction"),
    ("model.preset", "gigantic", "model.preset"),
])
def test_bad_config_names_the_flag(field, value, flag):
    config = knowledge_mixing.get_config("smoke")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(validation.ConfigError, match=flag):
        knowledge_mixing.validate(config)
