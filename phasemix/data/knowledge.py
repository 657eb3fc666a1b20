"""Token streams and evaluation sets of the knowledge study (SynBio biographies + web text).

Documents are joined into one stream per domain, each starting with the separator token
(`tokenizer.CLS`), so a biography in training and an evaluation prompt both start right after
it. The biography stream is rendered draw by draw (every draw re-shuffles sentences and
re-draws templates) for exactly as many tokens as the run will read, so the exposures each
person gets are known before training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from phasemix.base import validation
from phasemix.data import batching, synbio, tokenizer as tokenizer_lib

SEPARATOR = tokenizer_lib.CLS
_RENDER_BLOCK = 4096  # biographies rendered and tokenised per block


def join_documents(tok: tokenizer_lib.Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """One int32 stream: SEPARATOR, document 0, SEPARATOR, document 1, ..."""
    pieces = []
    for text in texts:
        pieces.append(np.array([SEPARATOR], np.int32))
        pieces.append(tok.token_ids(text))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


def web_stream(tok: tokenizer_lib.Tokenizer, texts: Sequence[str], seed: int,
               cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The web documents in a seeded order, tokenised; cached on disk (encoding takes seconds)."""
    order = np.random.default_rng([seed, 11]).permutation(len(texts))
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256("\0".join(tok.vocab).encode())
        digest.update(order.tobytes())
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        path = pathlib.Path(cache_dir) / f"web-{digest.hexdigest()[:16]}.npy"
        if path.exists():
            try:
                return np.load(path)
            except (OSError, ValueError):
                pass  # a damaged cache is rebuilt: the stream is a pure function of its inputs
    stream = join_documents(tok, [texts[i] for i in order])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, stream)
        os.replace(tmp, path)
    return stream


@dataclasses.dataclass(frozen=True)
class BioStream:
    """A run's biography tokens and which draw (person) each span of them came from."""

    tokens: np.ndarray  # int32, at least the requested number of tokens
    person_D: np.ndarray  # person of each draw, in stream order
    end_D: np.ndarray  # token offset just past each draw

    def exposures(self, tokens_read: int, num_people: int) -> np.ndarray:
        """Per person: draws whose every token lies within the first `tokens_read` tokens."""
        done = self.end_D <= tokens_read
        return np.bincount(self.person_D[done], minlength=num_people)


TUPLE_SEED_OFFSET = 7919  # the tuple stream's draws: a seed apart from the biographies'


def _draws(bio: synbio.SynBio, start: int, stop: int, seed: int,
           people: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """SynBio's draws, or with `people` epochs of seeded permutations of just those people."""
    if people is None:
        return bio.draws(start, stop, seed)
    epoch_D, within_D = np.divmod(np.arange(start, stop, dtype=np.int64), len(people))
    person_D = np.empty_like(epoch_D)
    for epoch in np.unique(epoch_D).tolist():
        perm = np.random.default_rng([seed, 13, epoch]).permutation(people)
        person_D[epoch_D == epoch] = perm[within_D[epoch_D == epoch]]
    return person_D, epoch_D


def bio_stream(bio: synbio.SynBio, tok: tokenizer_lib.Tokenizer, num_tokens: int, seed: int,
               people: np.ndarray | None = None, compact_fraction: float = 0.0) -> BioStream:
    """Biography draws rendered in order until `num_tokens` tokens.

    `people` restricts the stream to those people (subsampling the knowledge set); with
    `compact_fraction` > 0 that share of the tokens is compact tuples ("Bio: N ... B ...")
    interleaved with the biographies (compact knowledge mixing).
    """
    pieces, person_D, end_D = [], [], []
    total, compact_total, start = 0, 0, 0
    while total < num_tokens:
        person_B, exposure_B = _draws(bio, start, start + _RENDER_BLOCK, seed, people)
        start += _RENDER_BLOCK
        for person, sentences in zip(person_B, bio.render(person_B, exposure_B)):
            ids = tok.token_ids(" ".join(sentences))
            pieces += [np.array([SEPARATOR], np.int32), ids]
            total += len(ids) + 1
            person_D.append(person)
            end_D.append(total)
            if compact_fraction and compact_total < compact_fraction * total:
                compact = tok.token_ids(bio.compact(int(person)))
                pieces += [np.array([SEPARATOR], np.int32), compact]
                total += len(compact) + 1
                compact_total += len(compact) + 1
            if total >= num_tokens:
                break
    return BioStream(np.concatenate(pieces), np.array(person_D, np.int64),
                     np.array(end_D, np.int64))


def tuple_stream(bio: synbio.SynBio, tok: tokenizer_lib.Tokenizer, num_tokens: int, seed: int,
                 people: np.ndarray | None = None) -> np.ndarray:
    """Compact tuples ("Bio: N ... B ...") of people drawn as biographies are, until
    `num_tokens` tokens: the paper's compact knowledge mixing, added beside the biographies.

    The draws use their own seed (`seed` + TUPLE_SEED_OFFSET), so the tuples' order is not
    the biographies' order.
    """
    pieces, total, start = [], 0, 0
    while total < num_tokens:
        person_B, _ = _draws(bio, start, start + _RENDER_BLOCK, seed + TUPLE_SEED_OFFSET, people)
        start += _RENDER_BLOCK
        for person in person_B.tolist():
            ids = tok.token_ids(bio.compact(int(person)))
            pieces += [np.array([SEPARATOR], np.int32), ids]
            total += len(ids) + 1
            if total >= num_tokens:
                break
    return np.concatenate(pieces)


def query_arrays(tok: tokenizer_lib.Tokenizer, queries: Sequence[synbio.Query],
                 seq_len: int) -> batching.Arrays:
    """Teacher-forced rows: SEPARATOR + prompt + value, with the loss on the value's tokens.

    `masked_token_loss(..., exact_match=True)` then scores each row as greedy decoding would.
    Rows are as long as the longest query (a causal model needs no more), at most `seq_len`.
    """
    encoded = [(np.concatenate([[SEPARATOR], tok.token_ids(q.prompt)]), tok.token_ids(q.value))
               for q in queries]
    width = max((len(p) + len(v) - 1 for p, v in encoded), default=1)
    if width > seq_len:
        validation.fail("seq_len", f"is shorter than a biography query ({width + 1} tokens): "
                        f"use >= {width + 1}", seq_len)
    inputs_NxL = np.zeros((len(queries), width), np.int32)
    targets_NxL = np.zeros_like(inputs_NxL)
    mask_NxL = np.zeros((len(queries), width), np.float32)
    for row, (prompt, value) in enumerate(encoded):
        sequence = np.concatenate([prompt, value])
        inputs_NxL[row, :len(sequence) - 1] = sequence[:-1]
        targets_NxL[row, :len(sequence) - 1] = sequence[1:]
        mask_NxL[row, len(prompt) - 1:len(sequence) - 1] = 1.0
    return {"inputs": inputs_NxL, "targets": targets_NxL, "loss_mask": mask_NxL}


def window_arrays(stream: np.ndarray, seq_len: int, max_windows: int) -> batching.Arrays:
    """Up to `max_windows` consecutive next-token windows of a stream, loss on every token."""
    count = min(len(stream) // (seq_len + 1), max_windows)
    windows = stream[:count * (seq_len + 1)].reshape(count, seq_len + 1)
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
            "loss_mask": np.ones((count, seq_len), np.float32)}
