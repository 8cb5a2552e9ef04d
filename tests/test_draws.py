"""Client draws: per-client streams that do not depend on the cohort, rows without replacement."""

from __future__ import annotations

import numpy as np
import pytest

from client.draws import (
    MAX_GAP,
    ragged_stream_words,
    round_draws,
    round_key,
    rows_without_replacement,
    standard_normals,
    stream_words,
)

SETTINGS = dict(probe_batches=6, batch_size=5, train_steps=3, minibatch=True, noisy_targets=True)


def _fisher_yates_prefix(u: np.ndarray, size: int) -> list[int]:
    """The textbook algorithm, one swap at a time."""
    rows = list(range(size))
    for j, uj in enumerate(u):
        t = j + int(uj * (size - j))
        rows[j], rows[t] = rows[t], rows[j]
    return rows[: len(u)]


def test_rows_without_replacement_is_the_fisher_yates_prefix_of_each_set():
    rng = np.random.default_rng(0)
    sizes = np.array([5, 40, 7, 400, 5, 12])
    u = rng.random((len(sizes), 5))
    got = rows_without_replacement(u, sizes)
    assert got.dtype == np.int64 and got.shape == (6, 5)
    for row, uj, size in zip(got, u, sizes):
        assert row.tolist() == _fisher_yates_prefix(uj, int(size))
        assert len(set(row.tolist())) == 5 and row.min() >= 0 and row.max() < size


def test_rows_without_replacement_draws_every_row_equally_often():
    sizes = np.full(20_000, 10)
    u = np.random.default_rng(1).random((len(sizes), 3))
    counts = np.bincount(rows_without_replacement(u, sizes).ravel(), minlength=10)
    expected = len(sizes) * 3 / 10
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))  # 5 standard deviations


def test_rows_without_replacement_refuses_more_rows_than_a_set_holds():
    with pytest.raises(ValueError, match="batch_size"):
        rows_without_replacement(np.zeros((2, 4)), np.array([4, 3]))


def test_a_clients_draws_do_not_depend_on_the_other_clients():
    key = round_key(7, 3)
    partitions, sizes = np.array([9, 2, 40, 3]), np.array([30, 12, 8, 30])
    together = round_draws(key, partitions, sizes, **SETTINGS)
    for i in range(len(partitions)):
        alone = round_draws(key, partitions[i : i + 1], sizes[i : i + 1], **SETTINGS)
        assert np.array_equal(alone.probe_rows[0], together.probe_rows[i])
        assert np.array_equal(alone.probe_normals[0], together.probe_normals[i])
        for step in range(3):
            assert np.array_equal(alone.train_rows[step][0], together.train_rows[step][i])
            assert np.array_equal(alone.train_noise(step, np.array([0]), 5), together.train_noise(step, np.array([i]), 5))
    reordered = round_draws(key, partitions[::-1], sizes[::-1], **SETTINGS)
    assert np.array_equal(reordered.probe_normals[::-1], together.probe_normals)


def test_full_data_training_noise_has_each_clients_own_length():
    key = round_key(1, 1)
    settings = dict(SETTINGS, minibatch=False, train_steps=2)
    draws = round_draws(key, np.array([0, 1]), np.array([6, 9]), **settings)
    assert draws.train_rows == [None, None]
    first, second = draws.train_noise(0, np.array([1]), 9), draws.train_noise(1, np.array([1]), 9)
    alone = round_draws(key, np.array([1]), np.array([9]), **settings)
    assert np.array_equal(first, alone.train_noise(0, np.array([0]), 9))
    assert first.shape == (1, 9) and not np.array_equal(first, second)


def test_streams_differ_by_partition_round_seed_and_secret():
    def bits(seed, rnd, pid, words=()):
        return stream_words(round_key(seed, rnd, words), np.array([pid]), 4)[0]

    base = bits(1, 1, 0)
    assert np.array_equal(base, bits(1, 1, 0))
    for other in (bits(1, 1, 1), bits(1, 2, 0), bits(2, 1, 0), bits(1, 1, 0, [5, 6, 7, 8])):
        assert not np.any(other == base)


def test_standard_normals_are_finite_and_standard():
    extremes = np.array([0, 2**64 - 1], dtype=np.uint64)
    assert np.all(np.isfinite(standard_normals(extremes)))
    z = standard_normals(stream_words(round_key(3, 1), np.array([0]), 200_000)[0])
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02


@pytest.mark.parametrize("count", [1, 4, 6, 256])
def test_a_clients_words_are_the_same_read_alone_or_in_any_run(count):
    key = round_key(5, 2)
    ids = np.array([40, 3, 4, 5, 41, 7, 3 + MAX_GAP + 40, 1000, 0])  # runs, gaps below and above MAX_GAP
    together = stream_words(key, ids, count)
    alone = np.stack([stream_words(key, ids[i : i + 1], count)[0] for i in range(len(ids))])
    assert together.shape == (len(ids), count) and np.array_equal(together, alone)
    dense = stream_words(key, np.arange(50), count)
    assert np.array_equal(dense[[40, 3, 4, 5, 41, 7, 0]], together[[0, 1, 2, 3, 4, 5, 8]])
    assert len(np.unique(dense)) == dense.size  # neighbours' streams do not overlap


def test_the_ragged_streams_are_apart_from_the_fixed_ones():
    key = round_key(5, 2)
    words, starts = ragged_stream_words(key, np.array([3, 0]), np.array([5, 9]))
    assert np.array_equal(starts, [0, 5]) and words.shape == (14,)
    assert np.array_equal(words[:5], ragged_stream_words(key, np.array([3]), np.array([5]))[0])
    fixed = stream_words(key, np.arange(10), 64)
    assert not np.isin(words, fixed).any()
