"""shared/data.py and shared/partition.py: synthetic data, tables, client shards."""

from __future__ import annotations

import numpy as np
import pytest

from shared import partition
from shared.data import (
    excess_kurtosis,
    load_csv,
    random_rotation,
    sample_unit_inputs,
    spectrum,
    standardise,
    synthetic_regression,
)


# -- spectrum and synthetic data ------------------------------------------------------
@pytest.mark.parametrize("shape", ["geometric", "linear", "two_level"])
@pytest.mark.parametrize("dim, kappa", [(2, 10.0), (7, 100.0), (20, 1e3)])
def test_spectrum_has_condition_number_and_mean_one(shape, dim, kappa):
    vals = spectrum(dim, kappa, shape)
    assert vals.shape == (dim,)
    assert vals.max() / vals.min() == pytest.approx(kappa)
    assert vals.mean() == pytest.approx(1.0)
    assert np.all(np.diff(vals) <= 1e-12), "largest first"


def test_spectrum_single_dimension_and_unknown_shape():
    np.testing.assert_allclose(spectrum(1, 50.0, "geometric"), [1.0])
    with pytest.raises(ValueError, match="unknown spectrum"):
        spectrum(4, 10.0, "cubic")


def test_random_rotation_is_orthogonal():
    q = random_rotation(6, np.random.default_rng(0))
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "student_t"])
def test_unit_inputs_have_unit_variance_and_stated_kurtosis(kind):
    rng = np.random.default_rng(1)
    z = sample_unit_inputs(200_000, 2, kind, rng, dof=9.0)
    assert z.mean() == pytest.approx(0.0, abs=0.01)
    assert z.var() == pytest.approx(1.0, rel=0.02)
    kurt = (z**4).mean() / z.var() ** 2 - 3
    assert kurt == pytest.approx(excess_kurtosis(kind, dof=9.0), abs=0.15)


def test_unit_inputs_errors():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="unknown input"):
        sample_unit_inputs(3, 2, "cauchy", rng)
    with pytest.raises(ValueError, match="dof > 2"):
        sample_unit_inputs(3, 2, "student_t", rng, dof=2.0)


def test_synthetic_sigma_matches_sample_second_moment():
    rows, dim = 100_000, 5
    X, y, w_star, sigma = synthetic_regression(
        rows, dim, 10.0, np.random.default_rng(3), noise_std=0.3, signal_variance=2.0
    )
    assert X.shape == (rows, dim) and y.shape == (rows,)
    eig = np.linalg.eigvalsh(sigma)
    assert eig.max() / eig.min() == pytest.approx(10.0)
    assert np.trace(sigma) == pytest.approx(dim)
    # sample covariance of 10⁵ Gaussian rows: relative error ≈ 2√(d/N) ≈ 0.014; allow 0.05
    empirical = X.T @ X / rows
    assert np.linalg.norm(empirical - sigma, 2) / np.linalg.norm(sigma, 2) < 0.05
    assert float(w_star @ sigma @ w_star) == pytest.approx(2.0)
    assert np.std(y - X @ w_star) == pytest.approx(0.3, rel=0.02)


def test_synthetic_is_deterministic_given_rng():
    a = synthetic_regression(50, 3, 10.0, np.random.default_rng(4))
    b = synthetic_regression(50, 3, 10.0, np.random.default_rng(4))
    c = synthetic_regression(50, 3, 10.0, np.random.default_rng(5))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_standardise():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((300, 4)) * [1.0, 10.0, 0.1, 1.0] + [5.0, -3.0, 0.0, 2.0]
    X[:, 3] = 7.0  # a constant column
    y = 4.0 + 3.0 * rng.standard_normal(300)
    Xs, ys = standardise(X, y)
    np.testing.assert_allclose(Xs[:, :3].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Xs[:, :3].std(axis=0), 1.0, atol=1e-12)
    np.testing.assert_array_equal(Xs[:, 3], 0.0)
    assert ys.mean() == pytest.approx(0.0, abs=1e-12)
    assert ys.std() == pytest.approx(1.0)
    # a constant target is centred, not divided by zero
    _, y0 = standardise(X, np.full(300, 2.5))
    np.testing.assert_array_equal(y0, 0.0)


# -- CSV ------------------------------------------------------------------------------
def test_load_csv_reads_features_and_target(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a, y ,b\n1,2,3\n\n4,5,6\n7,8,9\n")
    X, y, names = load_csv(path, "y")
    assert names == ["a", "b"]
    np.testing.assert_array_equal(X, [[1, 3], [4, 6], [7, 9]])
    np.testing.assert_array_equal(y, [2, 5, 8])


def test_load_csv_missing_target_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="no column 'price'"):
        load_csv(path, "price")


def test_load_csv_non_numeric_cell_names_the_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,colour,y\n1,2,3\n4,red,6\n")
    with pytest.raises(ValueError, match=r":3: column 'colour' is not numeric"):
        load_csv(path, "y")


def test_load_csv_ragged_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n1,2,3\n4,5\n")
    with pytest.raises(ValueError, match=r":3: 2 fields, header has 3"):
        load_csv(path, "y")


def test_load_csv_empty_and_too_short(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_csv(empty, "y")
    short = tmp_path / "short.csv"
    short.write_text("a,y\n1,2\n")
    with pytest.raises(ValueError, match="at least 2 data rows"):
        load_csv(short, "y")


# -- partitions -------------------------------------------------------------------------
def _assert_exact_cover(shards, rows):
    joined = np.concatenate(shards)
    assert len(joined) == rows, "every row once: no duplicates, none missing"
    np.testing.assert_array_equal(np.sort(joined), np.arange(rows))
    for shard in shards:
        np.testing.assert_array_equal(shard, np.sort(shard))


@pytest.mark.parametrize("rows, clients", [(100, 10), (103, 7), (5, 5)])
def test_iid_covers_rows_once_with_balanced_sizes(rows, clients):
    shards = partition.iid(rows, clients, np.random.default_rng(0))
    assert len(shards) == clients
    _assert_exact_cover(shards, rows)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_covariate_shift_covers_rows_once():
    X = np.random.default_rng(1).standard_normal((97, 3))
    for strength in (0.0, 0.5, 1.0):
        shards = partition.covariate_shift(X, 6, strength, np.random.default_rng(2))
        assert len(shards) == 6
        _assert_exact_cover(shards, 97)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_size_skew_min_rows_and_cover(alpha):
    rows, clients, min_rows = 500, 12, 16
    shards = partition.size_skew(rows, clients, alpha, min_rows, np.random.default_rng(3))
    assert len(shards) == clients
    _assert_exact_cover(shards, rows)
    assert min(len(s) for s in shards) >= min_rows


def test_size_skew_small_alpha_is_skewed():
    shards = partition.size_skew(2000, 10, 0.1, 10, np.random.default_rng(4))
    sizes = sorted(len(s) for s in shards)
    assert sizes[-1] > 5 * sizes[len(sizes) // 2]


def test_size_skew_too_few_rows():
    with pytest.raises(ValueError, match="cannot give"):
        partition.size_skew(50, 10, 1.0, 6, np.random.default_rng(5))


def test_partitions_are_deterministic_given_rng():
    X = np.random.default_rng(6).standard_normal((60, 2))
    for make in (
        lambda rng: partition.iid(60, 4, rng),
        lambda rng: partition.covariate_shift(X, 4, 0.7, rng),
        lambda rng: partition.size_skew(60, 4, 0.5, 5, rng),
    ):
        a, b = make(np.random.default_rng(7)), make(np.random.default_rng(7))
        assert all(np.array_equal(u, v) for u, v in zip(a, b))


def _max_client_deviation(X, shards) -> float:
    sigma = X.T @ X / len(X)
    norm = np.linalg.norm(sigma, 2)
    return max(np.linalg.norm(X[s].T @ X[s] / len(s) - sigma, 2) / norm for s in shards)


def test_covariate_shift_strength_changes_client_second_moments():
    """Strength 1: slabs along a direction, each client's Σ_k differs from Σ by O(1)
    (for standard Gaussian rows, quartile slabs have E(uᵀx)² ≈ 1.86 or 0.14 vs 1).
    Strength 0: IID shards of 2500 rows, Σ_k within sampling error ≈ 2√(d/2500) ≈ 0.09."""
    X = np.random.default_rng(8).standard_normal((10_000, 5))
    slabs = partition.covariate_shift(X, 4, 1.0, np.random.default_rng(9))
    mixed = partition.covariate_shift(X, 4, 0.0, np.random.default_rng(9))
    shifted, iid_like = _max_client_deviation(X, slabs), _max_client_deviation(X, mixed)
    assert shifted > 0.5
    assert iid_like < 0.2
