"""Word tokenizer: splitting, vocabulary rule, encoding, save/load and the on-disk cache."""

import logging
import os

import numpy as np
import pytest

from phasemix.base import validation
from phasemix.data import reviews, tokenizer
from phasemix.data.tokenizer import CLS, PAD, UNK

TEXTS = ["The movie was great, great fun!", "A dull movie.<br /><br />Not great.", "the end"]


@pytest.fixture
def tok():
    return tokenizer.build(TEXTS, vocab_size=9)


def test_words_lowercase_drop_br_and_split_punctuation():
    assert tokenizer.words("Great movie!<br /><br />It's GREAT.") == [
        "great", "movie", "!", "it", "'", "s", "great", "."]


def test_vocab_is_the_most_frequent_words_ties_alphabetical(tok):
    # great x3; then ".", movie, the x2; then ties of 1 ("!", ",", "a", ...) in sorted order.
    assert tok.vocab == ("<pad>", "<unk>", "<cls>", "great", ".", "movie", "the", "!", ",")
    assert tok.vocab_size == 9
    assert tokenizer.build(TEXTS, vocab_size=4).vocab == tokenizer.SPECIALS + ("great",)
    assert tokenizer.build(TEXTS, vocab_size=1000).vocab_size == 3 + 12  # every distinct word


@pytest.mark.parametrize("vocab_size", [3, 0, -1])
def test_too_small_vocab_names_its_flag(vocab_size):
    with pytest.raises(validation.ConfigError, match=r"^--config\.task\.vocab_size="):
        tokenizer.build(TEXTS, vocab_size)


def test_encode_maps_known_words_unknown_to_unk_and_pads(tok):
    tokens_NxL, pad_mask_NxL = tok.encode(["Great movie, zebra", ""], max_len=6)
    great, movie, comma = tok.ids["great"], tok.ids["movie"], tok.ids[","]
    np.testing.assert_array_equal(tokens_NxL, [[CLS, great, movie, comma, UNK, PAD],
                                               [CLS, PAD, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(pad_mask_NxL, [[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    assert tokens_NxL.dtype == np.int32 and pad_mask_NxL.dtype == bool
    assert tok.decode(tokens_NxL[0]) == ["<cls>", "great", "movie", ",", "<unk>"]


def test_encode_truncates_long_texts(tok):
    tokens_NxL, pad_mask_NxL = tok.encode(["great " * 50], max_len=4)
    np.testing.assert_array_equal(tokens_NxL, [[CLS] + [tok.ids["great"]] * 3])
    assert pad_mask_NxL.all()
    with pytest.raises(validation.ConfigError, match=r"^--config\.task\.max_len="):
        tok.encode(TEXTS, max_len=1)


def test_vocabulary_comes_from_the_train_split_only():
    train, test = reviews.load("yelp")  # the small Rotten Tomatoes stand-in
    tok = tokenizer.build(train.texts, vocab_size=10**6)  # every train word
    train_words = set(tok.vocab)
    test_only = next(w for t in test.texts for w in tokenizer.words(t) if w not in train_words)
    tokens_NxL, _ = tok.encode([f"good {test_only}"], max_len=3)
    np.testing.assert_array_equal(tokens_NxL, [[CLS, tok.ids["good"], UNK]])


def test_encodes_real_imdb_reviews():
    train, _ = reviews.load("imdb")
    texts = train.texts[:300]
    tok = tokenizer.build(texts, vocab_size=2000)
    tokens_NxL, pad_mask_NxL = tok.encode(texts, max_len=128)
    lengths = np.minimum([len(tokenizer.words(t)) + 1 for t in texts], 128)
    np.testing.assert_array_equal(pad_mask_NxL.sum(1), lengths)
    assert (tokens_NxL[:, 0] == CLS).all() and tokens_NxL.max() < 2000
    assert 0 < (tokens_NxL == UNK).mean() < 0.2


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "tok.json")
    loaded = tokenizer.load(tmp_path / "tok.json")
    assert loaded == tok
    np.testing.assert_array_equal(loaded.encode(TEXTS, 8)[0], tok.encode(TEXTS, 8)[0])


@pytest.mark.parametrize("content", ['{"vocab": ["<pad>"', '[1, 2]',
                                     ('{"format": "phasemix-word-tokenizer", "version": 0, '
                                      '"vocab": ["<pad>", "<unk>", "<cls>"]}')])
def test_damaged_tokenizer_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(validation.ConfigError, match="broken.json: not a usable tokenizer file"):
        tokenizer.load(path)


def test_build_or_load_hits_the_cache_the_second_time(tmp_path, monkeypatch):
    first = tokenizer.build_or_load(TEXTS, 9, tmp_path, key="imdb seed=0")
    [path] = tmp_path.iterdir()  # one file, no temporary left behind
    assert path.name.startswith("tokenizer-imdb_seed_0-v9-")
    mtime = path.stat().st_mtime_ns

    def no_build(*args):
        raise AssertionError("the cached tokenizer should have been used")

    monkeypatch.setattr(tokenizer, "build", no_build)
    assert tokenizer.build_or_load(TEXTS, 9, tmp_path, key="imdb seed=0") == first
    assert path.stat().st_mtime_ns == mtime


def test_cache_key_covers_key_vocab_size_and_texts(tmp_path):
    path = tokenizer.cache_path(TEXTS, 9, tmp_path, "imdb seed=0")
    assert path != tokenizer.cache_path(TEXTS, 10, tmp_path, "imdb seed=0")
    assert path != tokenizer.cache_path(TEXTS, 9, tmp_path, "imdb seed=1")
    assert path != tokenizer.cache_path(TEXTS[:2], 9, tmp_path, "imdb seed=0")


def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = tokenizer.cache_path(TEXTS, 9, tmp_path, "k")
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        tok = tokenizer.build_or_load(TEXTS, 9, tmp_path, key="k")
    assert tok == tokenizer.build(TEXTS, 9)
    assert str(path) in caplog.text and "rebuilding" in caplog.text
    assert tokenizer.load(path) == tok
    assert os.listdir(tmp_path) == [path.name]


def test_required_words_are_always_in_the_vocabulary():
    # "zebra" and "quagga" are rare or absent in the texts, but required: they come right
    # after the specials and the most frequent words fill the rest.
    tok = tokenizer.build(TEXTS, vocab_size=8, required_words=["zebra", "quagga", "great"])
    assert tok.vocab == tokenizer.SPECIALS + ("great", "quagga", "zebra", ".", "movie")
    assert tokenizer.build(TEXTS, 9, required_words=()) == tokenizer.build(TEXTS, 9)
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.data\.vocab_size=5: must be at least 6 .*2 required"):
        tokenizer.build(TEXTS, 5, required_words=["zebra", "quagga"], flag="data.vocab_size")


def test_token_ids_have_no_cls_or_padding_and_detokenize_reads_back(tok):
    ids = tok.token_ids("Great movie, zebra!")
    np.testing.assert_array_equal(ids, [tok.ids["great"], tok.ids["movie"], tok.ids[","], UNK,
                                        tok.ids["!"]])
    assert ids.dtype == np.int32 and tok.token_ids("").shape == (0,)
    assert tok.detokenize(ids) == "great movie, <unk>!"
    full = tokenizer.build(["Ann Lee's job (at A&M) paid $5."], 100)
    text = "Ann Lee's job (at A&M) paid $5."
    assert full.detokenize(full.token_ids(text)) == "ann lee's job (at a & m) paid $5."


def test_cache_key_covers_required_words_and_keeps_old_names(tmp_path):
    path = tokenizer.cache_path(TEXTS, 9, tmp_path, "k")
    assert tokenizer.cache_path(TEXTS, 9, tmp_path, "k", required_words=()) == path
    with_zebra = tokenizer.cache_path(TEXTS, 9, tmp_path, "k", required_words=["zebra"])
    assert with_zebra != path
    tok = tokenizer.build_or_load(TEXTS, 9, tmp_path, "k", required_words=["zebra"])
    assert "zebra" in tok.ids and with_zebra.exists()
    assert tokenizer.load(with_zebra) == tok
