"""shared/calibration.py: how much noise a client injects and how Σ̂ is rescaled."""

from __future__ import annotations

import numpy as np
import pytest

from shared.calibration import (
    estimator_coefficients,
    finite_population_factor,
    injected_variance,
    injected_variances,
    total_variance,
)
from shared.data import random_rotation, spectrum
from shared.estimators import gradient_covariance


def _sigma(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = random_rotation(d, rng)
    return (basis * spectrum(d, 10.0, "geometric")) @ basis.T


# -- finite-population factor -------------------------------------------------
@pytest.mark.parametrize("rows, batch", [(100, 16), (17, 16), (1000, 1), (64, 32)])
def test_finite_population_factor_formula(rows, batch):
    f = finite_population_factor(rows, batch)
    assert f == pytest.approx((rows - batch) / (rows - 1))
    assert 0.0 <= f <= 1.0


def test_finite_population_factor_edges():
    # a batch of every row has no sampling variance; one row of many has full variance
    assert finite_population_factor(50, 50) == 0.0
    assert finite_population_factor(50, 1) == pytest.approx(1.0)
    assert finite_population_factor(1, 1) == 0.0


def test_finite_population_factor_matches_sampling_without_replacement():
    """Var of an n-row mean drawn without replacement = f·(population var)/n."""
    rng = np.random.default_rng(1)
    population = rng.standard_normal(40)
    rows, batch, draws = len(population), 10, 40000
    idx = np.argsort(rng.random((draws, rows)), axis=1)[:, :batch]  # without replacement
    means = population[idx].mean(axis=1)
    expected = finite_population_factor(rows, batch) * population.var() / batch
    # relative standard error of a variance from 40000 draws ≈ √(2/40000) ≈ 0.007
    assert means.var() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("rows, batch", [(10, 0), (10, 11), (10, -1), (0, 1)])
def test_finite_population_factor_rejects_bad_batch(rows, batch):
    with pytest.raises(ValueError, match="batch_size"):
        finite_population_factor(rows, batch)


# -- injected and total variance ------------------------------------------------
def test_injected_variance_subtracts_f_times_natural():
    rows, batch, natural = 200, 32, 3.0
    f = finite_population_factor(rows, batch)
    for c in (0.5, 1.0, 2.0):
        inj = injected_variance(c, batch, rows, natural)
        assert inj == pytest.approx(c * batch - f * natural)
        # the total the gradients see is exactly c·n
        assert total_variance(c, batch, rows, natural) == pytest.approx(c * batch)


def test_injected_variance_without_natural_noise_is_c_times_n():
    assert injected_variance(1.0, 64, 1000) == pytest.approx(64.0)
    assert injected_variance(0.0, 64, 1000) == 0.0


def test_injected_variance_never_negative():
    rows, batch, natural = 100, 10, 50.0  # f·σ₀² ≈ 45.5 > c·n = 10
    f = finite_population_factor(rows, batch)
    assert injected_variance(1.0, batch, rows, natural) == 0.0
    # nothing injected: the total is the natural part alone
    assert total_variance(1.0, batch, rows, natural) == pytest.approx(f * natural)


def test_injected_variances_per_level():
    rows, batch, natural = 300, 20, 2.0
    one = injected_variances([1.0], batch, rows, natural)
    assert one.shape == (1,)
    assert one[0] == pytest.approx(injected_variance(1.0, batch, rows, natural))
    # differential levels inject c·n each and ignore σ₀² (it cancels in the difference)
    two = injected_variances([0.25, 1.0], batch, rows, natural)
    np.testing.assert_allclose(two, [0.25 * batch, 1.0 * batch])


# -- estimator coefficients ----------------------------------------------------------
def test_one_level_coefficient_is_n_over_total():
    rows, batch, natural = 500, 32, 1.5
    for c in (0.5, 1.0, 3.0):
        a = estimator_coefficients([c], batch, rows, natural)
        assert a.shape == (1,)
        assert a[0] == pytest.approx(batch / total_variance(c, batch, rows, natural))
        assert a[0] == pytest.approx(1.0 / c)


def test_one_level_uncalibrated_without_noise_is_raw_covariance():
    a = estimator_coefficients([0.0], 32, 500, 0.0)
    np.testing.assert_array_equal(a, [1.0])


def test_one_level_coefficient_recovers_sigma_at_the_optimum():
    """At δ = 0 the closed-form Cov g is σ²Σ/n, so a·Cov g = Σ for any c > 0."""
    d, batch = 6, 16
    sigma = _sigma(d)
    for c in (0.5, 1.0, 4.0):
        a = estimator_coefficients([c], batch, 10**9)  # f ≈ 1, no natural noise
        cov = gradient_covariance(sigma, np.zeros(d), batch, c * batch)
        np.testing.assert_allclose(a[0] * cov, sigma, atol=1e-9)


def test_two_level_coefficients():
    rows, batch = 400, 32
    a = estimator_coefficients([0.25, 1.0], batch, rows, natural_var=5.0)
    gap = (1.0 - 0.25) * batch
    np.testing.assert_allclose(a, [-batch / gap, batch / gap])
    assert a.sum() == pytest.approx(0.0)


def test_two_level_difference_cancels_delta_and_unknown_natural_noise():
    """Σ_l a_l·Cov g(σ_l²) = Σ exactly, whatever δ and whatever σ₀² (docs/method.md#differential)."""
    d, batch = 6, 16
    sigma = _sigma(d, seed=3)
    rng = np.random.default_rng(4)
    levels = [0.25, 1.0]
    for natural in (0.0, 7.0):
        delta = 3.0 * rng.standard_normal(d)  # far from the optimum: q ≫ n is fine here
        a = estimator_coefficients(levels, batch, 10**9, natural)
        inj = injected_variances(levels, batch, 10**9, natural)
        covs = [gradient_covariance(sigma, delta, batch, v + natural) for v in inj]
        est = sum(al * cl for al, cl in zip(a, covs))
        np.testing.assert_allclose(est, sigma, atol=1e-8)


@pytest.mark.parametrize(
    "levels, match",
    [
        ([], "1 or 2 noise levels"),
        ([0.1, 0.5, 1.0], "1 or 2 noise levels"),
        ([[1.0]], "1 or 2 noise levels"),
        ([1.0, 0.25], "must increase"),
        ([1.0, 1.0], "must increase"),
    ],
)
def test_estimator_coefficients_rejects_bad_levels(levels, match):
    with pytest.raises(ValueError, match=match):
        estimator_coefficients(levels, 16, 100)


def test_estimator_coefficients_rejects_bad_batch():
    with pytest.raises(ValueError, match="batch_size"):
        estimator_coefficients([1.0], 200, 100)
