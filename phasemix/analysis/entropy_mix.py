"""Training-free mixtures from the entropy of each domain's tokens (BiMix, Ge et al. 2024).

All entropies are in nats, computed from counts over a domain's token sequences; bigrams are
taken inside each sequence, never across the boundary between two sequences.
- shannon: H(X) of the unigram distribution.
- joint: H(X_t, X_t+1) of the bigram distribution.
- conditional: H(X_t+1 | X_t) = H(X_t, X_t+1) - H(X_t), with H(X_t) from the bigrams' first
  tokens (so that it is the exact conditional entropy of the bigram distribution).
- von_neumann: -tr(rho log rho) for rho = C C^T / tr(C C^T), where C is the bigram count
  matrix (row: previous token, column: next token). rho is the normalised Gram matrix of the
  tokens' next-token count profiles, embedding-free; its eigenvalues are the squared singular
  values of C, normalised. It is 0 when every token has the same successor profile up to
  scale, and log(V) at most. The paper uses embeddings instead; this is our definition.

Proportions come from the entropies by normalisation (r_i = H_i / sum_j H_j) or by a softmax
with a temperature (r = softmax(H / temperature)).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

MEASURES = ("shannon", "conditional", "joint", "von_neumann")
METHODS = ("normalize", "softmax")
MAX_VON_NEUMANN_VOCAB = 8192  # its SVD costs O(V^3)


def _as_sequences(tokens: Any) -> list[np.ndarray]:
    """One 1-D int array, or an iterable of them (a domain's documents)."""
    if isinstance(tokens, np.ndarray) and tokens.ndim == 1:
        return [tokens]
    seqs = [np.asarray(t) for t in tokens]
    if seqs and all(s.ndim == 0 for s in seqs):  # a flat list of ints
        return [np.asarray(seqs)]
    for s in seqs:
        if s.ndim != 1:
            raise ValueError(f"each token sequence must be 1-D, got shape {s.shape}")
    return seqs


def _entropy(counts: np.ndarray) -> float:
    counts = np.asarray(counts, np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def _bigrams(seqs: list[np.ndarray]) -> np.ndarray:
    pairs = [np.stack([s[:-1], s[1:]], axis=1) for s in seqs if len(s) >= 2]
    if not pairs:
        raise ValueError("no sequence has 2 tokens: bigram entropies are undefined")
    return np.concatenate(pairs)


def shannon_entropy(tokens: Any) -> float:
    seqs = _as_sequences(tokens)
    flat = np.concatenate(seqs) if seqs else np.zeros(0, int)
    if flat.size == 0:
        raise ValueError("no tokens")
    return _entropy(np.unique(flat, return_counts=True)[1])


def joint_entropy(tokens: Any) -> float:
    return _entropy(np.unique(_bigrams(_as_sequences(tokens)), axis=0, return_counts=True)[1])


def conditional_entropy(tokens: Any) -> float:
    pairs = _bigrams(_as_sequences(tokens))
    joint = _entropy(np.unique(pairs, axis=0, return_counts=True)[1])
    return joint - _entropy(np.unique(pairs[:, 0], return_counts=True)[1])


def von_neumann_entropy(tokens: Any) -> float:
    pairs = _bigrams(_as_sequences(tokens))
    vocab, index = np.unique(pairs, return_inverse=True)
    if len(vocab) > MAX_VON_NEUMANN_VOCAB:
        raise ValueError(f"{len(vocab)} distinct tokens: the von Neumann entropy's SVD is O(V^3);"
                         f" map rare tokens to one id to stay <= {MAX_VON_NEUMANN_VOCAB}")
    index = index.reshape(pairs.shape)
    counts = np.zeros((len(vocab), len(vocab)))
    np.add.at(counts, (index[:, 0], index[:, 1]), 1.0)
    eigenvalues = np.linalg.svd(counts, compute_uv=False) ** 2
    return _entropy(eigenvalues)


ENTROPIES = {"shannon": shannon_entropy, "conditional": conditional_entropy,
             "joint": joint_entropy, "von_neumann": von_neumann_entropy}


def entropies(tokens: Any) -> dict[str, float]:
    """Every measure of one domain's tokens."""
    return {name: fn(tokens) for name, fn in ENTROPIES.items()}


def proportions(entropies_K: Iterable[float], method: str = "normalize",
                temperature: float = 1.0) -> np.ndarray:
    """Mixture proportions from per-domain entropies: H / sum(H), or softmax(H / temperature)."""
    h = np.asarray(list(entropies_K), np.float64)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {list(METHODS)}")
    if h.size == 0 or not np.all(np.isfinite(h)):
        raise ValueError(f"need finite entropies, got {h.tolist()}")
    if method == "normalize":
        if np.any(h < 0) or h.sum() <= 0:
            raise ValueError(f"normalising needs entropies >= 0 with a positive sum, got "
                             f"{h.tolist()}")
        return h / h.sum()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = h / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def entropy_mixture(domain_tokens: Mapping[str, Any], measure: str = "conditional",
                    method: str = "normalize", temperature: float = 1.0) -> dict[str, float]:
    """domain -> proportion, from `measure` of each domain's tokens (conditional by default,
    the measure BiMix reports works best)."""
    if measure not in ENTROPIES:
        raise ValueError(f"unknown entropy {measure!r}; use one of {list(ENTROPIES)}")
    names = list(domain_tokens)
    values = [ENTROPIES[measure](domain_tokens[name]) for name in names]
    return dict(zip(names, proportions(values, method, temperature).tolist()))
