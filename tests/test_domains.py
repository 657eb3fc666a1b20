"""Multi-domain corpora: real offline domains, seeded document splits, SlimPajama streaming."""

import collections
import json
import math
import pathlib
import sys
import types

import numpy as np
import pytest

from phasemix.base import validation
from phasemix.data import domains, tokenizer


def config(**overrides):
    cfg = domains.default_config()
    cfg.max_chars = 300_000  # a few hundred documents per domain: fast, still real text
    cfg.num_people = 2000
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def corpus():
    return domains.load(config())


def test_every_offline_domain_is_split_by_document(corpus):
    assert [d.name for d in corpus] == list(domains.OFFLINE)
    every_document = []
    for d in corpus:
        assert d.train and d.valid, d.name
        assert not set(d.train) & set(d.valid), d.name  # disjoint: split by document
        assert len(d.valid) == round(0.05 * (len(d.train) + len(d.valid)))
        assert sum(map(len, d.train)) + sum(map(len, d.valid)) <= 300_000 + max(
            map(len, d.train + d.valid))  # the prefix stops at the first document past max_chars
        assert d.total_chars >= sum(map(len, d.train + d.valid))
        every_document += d.train + d.valid
    assert len(set(every_document)) == len(every_document)  # no document in two domains
    by_name = {d.name: d for d in corpus}
    assert "synthetic" in by_name["biographies"].description
    assert f"Python {sys.version_info[0]}.{sys.version_info[1]}" in by_name["code"].description


def test_splits_are_deterministic_by_seed(corpus):
    again = domains.load(config())
    assert [(d.train, d.valid) for d in again] == [(d.train, d.valid) for d in corpus]
    other = domains.load(config(split_seed=1, names=("encyclopedia", "biographies")))
    for d in other:
        mine = next(c for c in corpus if c.name == d.name)
        assert d.valid != mine.valid


def test_documents_really_differ_by_domain(corpus):
    """A unigram nearest-domain classifier trained on each domain's train documents puts
    nearly every held-out document in its own domain."""
    counts = {d.name: collections.Counter(w for t in d.train for w in tokenizer.words(t))
              for d in corpus}
    vocab = set().union(*counts.values())
    log_p = {}
    for name, c in counts.items():
        total = sum(c.values()) + len(vocab)
        log_p[name] = collections.defaultdict(lambda t=total: -math.log(t),
                                              {w: math.log((n + 1) / total) for w, n in c.items()})
    right = total = 0
    for d in corpus:
        for text in d.valid:
            words = tokenizer.words(text)
            guess = max(log_p, key=lambda n: sum(log_p[n][w] for w in words))
            right += guess == d.name
            total += 1
    assert right / total > 0.95


def test_code_is_the_standard_library_only():
    import json as stdlib_module

    sources = domains.python_stdlib()
    assert pathlib.Path(stdlib_module.__file__).read_text() in sources
    assert pathlib.Path(np.__file__).read_text() not in sources  # site-packages left out


def test_token_streams_counts_and_spread_windows(corpus, tmp_path):
    tok = tokenizer.build([t for d in corpus for t in d.train], 2000)
    streams = domains.token_streams(corpus, tok, seed=0, split_seed=0, cache_dir=tmp_path)
    rows = domains.describe(corpus, streams)
    assert [r["domain"] for r in rows] == [d.name for d in corpus]
    assert all(r["tokens_train"] > r["tokens_valid"] > 0 for r in rows)
    assert sum(r["natural_share"] for r in rows) == pytest.approx(1.0)
    # Reviews and code are whole packages; the summaries and the biographies are far smaller.
    natural = {r["domain"]: r["natural_share"] for r in rows}
    assert min(natural["reviews"], natural["code"]) > max(natural["encyclopedia"],
                                                          natural["biographies"])
    # The run's seed reorders the train documents only; validation is the same for every run.
    other = domains.token_streams(corpus, tok, seed=1, split_seed=0, cache_dir=tmp_path)
    code = streams["code"]
    assert not np.array_equal(other["code"].train, code.train)
    np.testing.assert_array_equal(other["code"].valid, code.valid)
    windows = domains.valid_windows(code.valid, seq_len=32, count=8)
    assert windows["inputs"].shape == (8, 32)
    np.testing.assert_array_equal(windows["inputs"][0], code.valid[:32])
    last = (len(code.valid) // 33 - 1) * 33  # the last whole window
    np.testing.assert_array_equal(windows["targets"][-1], code.valid[last + 1:last + 33])


@pytest.mark.parametrize("overrides,match", [
    (dict(names=("reviews", "poetry")), r"^--config\.domains\.names=.*unknown domain 'poetry'"),
    (dict(names=("reviews",)), r"^--config\.domains\.names=.*at least 2"),
    (dict(names=("code", "code")), r"^--config\.domains\.names=.*repeats"),
    (dict(source="pile"), r"^--config\.domains\.source='pile'"),
    (dict(valid_fraction=1.0), r"^--config\.domains\.valid_fraction=1\.0"),
    (dict(max_chars=1, names=("encyclopedia", "code")), r"^--config\.domains\.max_chars=1: .*"
                                                         "too few"),
    (dict(source="slimpajama", names=("reviews", "code")), r"unknown domain 'reviews' for "
                                                           "source 'slimpajama'"),
])
def test_bad_domain_configs_name_the_flag(overrides, match):
    with pytest.raises(validation.ConfigError, match=match):
        domains.load(config(**overrides))


def test_a_domain_without_documents_is_an_error(monkeypatch):
    monkeypatch.setattr(domains, "python_stdlib", lambda: ("", "   \n"))
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.base\.domains\.names=.*'code' has no documents"):
        domains.load(config(names=("encyclopedia", "code")), "base.domains")


# --- SlimPajama, with a fake `datasets` module --------------------------------------------------

class FakeStream:
    def __init__(self, rows):
        self.rows = rows

    def shuffle(self, seed, buffer_size):
        return FakeStream(self.rows[::-1])

    def __iter__(self):
        return iter(self.rows)


def _slimpajama_rows():
    """80 documents cycling over 4 sets; the arXiv ones are 10x longer."""
    sets = ["RedPajamaCommonCrawl", "RedPajamaGithub", "RedPajamaArXiv", "RedPajamaBook"]
    rows = []
    for i in range(80):
        name = sets[i % 4]
        text = f"{name} document {i} " * (10 if name == "RedPajamaArXiv" else 1)
        rows.append({"text": text, "meta": {"redpajama_set_name": name}})
    return rows


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []

    def load_dataset(path, split=None, streaming=False):
        calls.append(dict(path=path, split=split, streaming=streaming))
        return FakeStream(_slimpajama_rows())

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def slimpajama(tmp_path, **overrides):
    fields = dict(source="slimpajama", names=("commoncrawl", "github", "arxiv"),
                  docs_per_domain=8, valid_fraction=0.25, cache_dir=str(tmp_path))
    return config(**{**fields, **overrides})


def test_slimpajama_groups_by_set_caches_and_splits(fake_datasets, tmp_path):
    cfg = slimpajama(tmp_path)
    corpus = domains.load(cfg)
    assert fake_datasets == [dict(path="cerebras/SlimPajama-627B", split="train",
                                  streaming=True)]
    assert [d.name for d in corpus] == ["commoncrawl", "github", "arxiv"]
    for d in corpus:
        wanted = domains.SLIMPAJAMA_SETS[d.name]
        assert (len(d.train), len(d.valid)) == (6, 2)  # docs_per_domain, split 75/25
        assert all(t.startswith(wanted) for t in d.train + d.valid)
        assert not set(d.train) & set(d.valid)
        assert "SlimPajama" in d.description
    # Streaming stops once every set has its 8 documents: 4 sets x 8 rows from the end.
    sizes = {d.name: d.total_chars for d in corpus}
    assert sizes["arxiv"] > 5 * sizes["commoncrawl"]  # natural size: every document seen
    [cached] = tmp_path.iterdir()
    assert sorted(json.loads(cached.read_text())["texts"]) == ["arxiv", "commoncrawl", "github"]
    again = domains.load(cfg)  # from the cache: no second stream
    assert len(fake_datasets) == 1
    assert [(d.train, d.valid) for d in again] == [(d.train, d.valid) for d in corpus]


def test_slimpajama_missing_set_and_stream_errors(fake_datasets, monkeypatch, tmp_path):
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.domains\.names=.*'wikipedia' has no documents"):
        domains.load(slimpajama(tmp_path, names=("github", "wikipedia")))
    module = types.ModuleType("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    module.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.domains\.hf_path='cerebras/SlimPajama-627B'.*no "
                             "internet"):
        domains.load(slimpajama(tmp_path / "other"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(validation.ConfigError, match="pip install datasets"):
        domains.load(slimpajama(tmp_path / "other"))
