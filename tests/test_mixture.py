"""The token-stream mixture: exact proportions, monotone, random access, next-token targets."""

import grain
import numpy as np
import pytest

from phasemix.data import batching, mixture


@pytest.mark.parametrize("weights", [(0.3, 0.7), (0.05, 0.15, 0.8), (0.2, 0.2, 0.2, 0.2, 0.2),
                                     (1.0, 0.0), (0.123, 0.456, 0.001, 0.42)])
def test_apportion_is_exact_close_to_quota_and_never_shrinks(weights):
    weights = np.asarray(weights)
    previous = np.zeros(len(weights), np.int64)
    for total in range(0, 600):
        counts = mixture.apportion(weights, total)
        assert counts.sum() == total
        assert np.all(np.abs(counts - total * weights) < 1.5)
        assert np.all(counts >= previous), f"a domain lost an item at total={total}"
        previous = counts


def test_batches_follow_the_ratio_exactly_over_the_run():
    bio = np.arange(10_000) % 7
    web = 100 + np.arange(50_000) % 11
    source = mixture.MixtureBatches([bio, web], [0.3, 0.7], batch_size=10, seq_len=8,
                                    num_steps=37)
    domains = np.concatenate([source[s]["domain"] for s in range(37)])
    assert len(domains) == 370
    assert abs((domains == 0).sum() - 0.3 * 370) <= 1
    np.testing.assert_array_equal(source.sequences_before(37), np.bincount(domains))


def test_rows_are_consecutive_windows_with_shifted_targets():
    stream = np.arange(1000)
    source = mixture.MixtureBatches([stream, stream + 5000], [0.5, 0.5], batch_size=4,
                                    seq_len=9, num_steps=5)
    batch = source[1]
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    np.testing.assert_array_equal(batch["inputs"][0], np.arange(20, 29))  # domain 0, window 2
    assert batch["inputs"].shape == batch["loss_mask"].shape == (4, 9)


def test_random_access_equals_iteration_and_streams_cycle():
    stream = np.arange(50)
    source = mixture.MixtureBatches([stream], [1.0], batch_size=3, seq_len=4, num_steps=6)
    iterator = batching.iterate(grain.MapDataset.source(source))
    for step in range(6):
        np.testing.assert_array_equal(next(iterator)["inputs"], source[step]["inputs"])
    assert source.epochs()[0] == pytest.approx(18 / 10)  # 10 windows of 5 tokens, 18 used


def test_a_weighted_domain_without_a_whole_window_is_an_error():
    with pytest.raises(ValueError, match="domain 1"):
        mixture.MixtureBatches([np.arange(100), np.arange(3)], [0.5, 0.5], 2, 8, 4)
