"""Word-level tokenizer for the sentiment reviews, built from the training split only.

Text is lowercased, IMDB's `<br />` tags are dropped, and it is split like BERT's basic
tokenizer: runs of word characters, and every other non-space character on its own. Ids 0-2
are PAD, UNK and CLS; every sequence starts with CLS (for `cls` pooling). The vocabulary is
the `vocab_size - 3` most frequent training words, ties broken alphabetically.

For language modelling (the SynBio/web mixture) `token_ids` encodes a text with no CLS or
padding, and `build(..., required_words=...)` guarantees words (every word of every SynBio
value) a place in the vocabulary whatever their frequency, so a value never turns into UNK
and always tokenises the same way alone and in context.

Word-level rather than BPE by measurement: on the IMDB train split a 20k vocabulary leaves
~2% of tokens UNK and a 10k one ~4.5%, which a sentiment classifier barely notices, and
building it takes seconds with no extra dependency.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
from absl import logging

from phasemix.base import run_io, validation

PAD, UNK, CLS = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<cls>")
# Bump when `words` or the vocabulary rule changes: it is part of every cache key.
VERSION = 1
_FORMAT = "phasemix-word-tokenizer"
_BR = re.compile(r"<br\s*/?>")
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lowercased words and punctuation marks of `text`, `<br />` tags removed."""
    return _WORD.findall(_BR.sub(" ", text.lower()))


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A fixed vocabulary: `vocab[i]` is the token with id i; the specials come first."""

    vocab: tuple[str, ...]

    def __post_init__(self):
        if self.vocab[:len(SPECIALS)] != SPECIALS or len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab must start with the specials and hold no duplicates")

    @functools.cached_property
    def ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens_NxL int32, pad_mask_NxL bool): CLS, the first max_len - 1 words, then PAD.

        `pad_mask` is True on real tokens (CLS included) and False on padding.
        """
        validation.require(max_len >= 2, "task.max_len",
                           "needs room for CLS and at least one word", max_len)
        tokens_NxL = np.full((len(texts), max_len), PAD, np.int32)
        get = self.ids.get
        for i, text in enumerate(texts):
            row = [CLS] + [get(w, UNK) for w in words(text)[:max_len - 1]]
            tokens_NxL[i, :len(row)] = row
        return tokens_NxL, tokens_NxL != PAD

    def token_ids(self, text: str) -> np.ndarray:
        """ids_T int32 of `text`'s words, UNK for unknown ones; no CLS, no padding."""
        get = self.ids.get
        return np.array([get(w, UNK) for w in words(text)], np.int32)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Readable text of `ids` (lowercased; spacing around punctuation is a guess).

        For showing generations; compare them with gold values on ids, not on this text.
        """
        out = ""
        for token in self.decode(ids):
            glue = out.endswith(("(", "'", "$", "#")) or (len(token) == 1 and not token.isalnum()
                                                          and token not in "(&$#")
            out += token if glue or not out else " " + token
        return out

    def decode(self, ids: Sequence[int]) -> list[str]:
        """The tokens of `ids`, padding dropped (for inspecting examples)."""
        return [self.vocab[i] for i in ids if i != PAD]

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary as JSON, atomically."""
        run_io.write_json_atomic(path, {"format": _FORMAT, "version": VERSION,
                                        "vocab": list(self.vocab)})


def load(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer saved by `Tokenizer.save`; a damaged file is a ConfigError naming it."""
    try:
        data = run_io.read_json(path)
        if data.get("format") != _FORMAT:
            raise ValueError(f"'format' is {data.get('format')!r}, expected {_FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"tokenizer version {data.get('version')}, this code is {VERSION}")
        return Tokenizer(tuple(data["vocab"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise validation.ConfigError(f"{path}: not a usable tokenizer file: {e}") from e


def build(texts: Sequence[str], vocab_size: int, required_words: Iterable[str] = (), *,
          flag: str = "task.vocab_size") -> Tokenizer:
    """The specials, `required_words`, then the most frequent other words of `texts`.

    `texts` is the train split. The vocabulary holds at most `vocab_size` tokens (fewer when
    the texts have fewer distinct words), so ids stay < vocab_size. `flag` names the config
    field that sets `vocab_size`, for error messages.
    """
    required = sorted(set(required_words) - set(SPECIALS))
    validation.require(vocab_size > len(SPECIALS) + len(required), flag,
                       f"must be at least {len(SPECIALS) + len(required) + 1} "
                       f"({len(SPECIALS)} special tokens, {len(required)} required words "
                       "and one more word)" if required else
                       f"must be at least {len(SPECIALS) + 1} ({len(SPECIALS)} special tokens "
                       "plus one word)", vocab_size)
    counts = collections.Counter(itertools.chain.from_iterable(words(t) for t in texts))
    for w in required:
        counts.pop(w, None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    room = vocab_size - len(SPECIALS) - len(required)
    return Tokenizer(SPECIALS + tuple(required) + tuple(w for w, _ in ranked[:room]))


def cache_path(texts: Sequence[str], vocab_size: int, cache_dir: str | os.PathLike,
               key: str, required_words: Iterable[str] = ()) -> pathlib.Path:
    """Where `build_or_load` keeps this tokenizer: named by `key`, keyed by a hash of everything.

    The hash covers the texts too (~0.1 s for IMDB), so a changed split (seed, test fraction,
    dataset version) can never pick up a stale vocabulary.
    """
    digest = hashlib.sha256(json.dumps([key, vocab_size, VERSION]).encode())
    required = sorted(set(required_words))
    if required:  # only then, so existing cache names stay valid
        digest.update(json.dumps(["required", required]).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    name = f"tokenizer-{slug}-v{vocab_size}-{digest.hexdigest()[:16]}.json"
    return pathlib.Path(cache_dir) / name


def build_or_load(texts: Sequence[str], vocab_size: int, cache_dir: str | os.PathLike,
                  key: str, required_words: Iterable[str] = (), *,
                  flag: str = "task.vocab_size") -> Tokenizer:
    """`build(texts, vocab_size, required_words)`, cached on disk under `cache_dir`.

    `key` should name the dataset and split seed (e.g. f"{train.name} seed={split_seed}").
    A damaged cache file is rebuilt with a warning rather than failing the run: the
    tokenizer is a pure function of its inputs, so rebuilding loses nothing.
    """
    required_words = tuple(required_words)
    path = cache_path(texts, vocab_size, cache_dir, key, required_words)
    if path.exists():
        try:
            return load(path)
        except validation.ConfigError as e:
            logging.warning("%s; rebuilding it.", e)
    tokenizer = build(texts, vocab_size, required_words, flag=flag)
    tokenizer.save(path)
    return tokenizer
