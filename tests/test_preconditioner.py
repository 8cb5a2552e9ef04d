"""shared/preconditioner.py: P = (Σ̂₊ + λI)⁻¹ and the warm-up scalar."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import random_rotation, spectrum
from shared.preconditioner import default_ridge, ridge_preconditioner, warmup_preconditioner


def _spd(d: int, kappa: float, seed: int) -> np.ndarray:
    basis = random_rotation(d, np.random.default_rng(seed))
    return (basis * spectrum(d, kappa, "geometric")) @ basis.T


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.5])
def test_ridge_preconditioner_inverts_sigma_plus_ridge(ridge):
    d = 7
    sigma = _spd(d, 100.0, seed=1)
    P = ridge_preconditioner(sigma, ridge)
    assert P.shape == (d, d)
    np.testing.assert_allclose(P @ (sigma + ridge * np.eye(d)), np.eye(d), atol=1e-9)
    np.testing.assert_allclose(P, P.T, atol=1e-12)


def test_ridge_preconditioner_symmetrises_its_input():
    d = 5
    sigma = _spd(d, 10.0, seed=2)
    skew = np.triu(np.ones((d, d)), 1) * 1e-3
    np.testing.assert_allclose(
        ridge_preconditioner(sigma + skew - skew.T, 0.1), ridge_preconditioner(sigma, 0.1), atol=1e-12
    )


def test_ridge_preconditioner_clips_negative_eigenvalues():
    d = 6
    rng = np.random.default_rng(3)
    basis = random_rotation(d, rng)
    vals = np.array([3.0, 1.0, 0.5, 0.0, -0.2, -2.0])  # a differential Σ̂ need not be PSD
    sigma_hat = (basis * vals) @ basis.T
    ridge = 0.1
    P = ridge_preconditioner(sigma_hat, ridge)
    expected = (basis / (np.clip(vals, 0, None) + ridge)) @ basis.T
    np.testing.assert_allclose(P, expected, atol=1e-10)
    # P is positive definite and never larger than 1/λ in any direction
    eigs = np.linalg.eigvalsh(P)
    assert eigs.min() > 0
    assert eigs.max() == pytest.approx(1 / ridge)


def test_ridge_preconditioner_needs_a_ridge_when_singular():
    sigma_hat = np.diag([1.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="singular"):
        ridge_preconditioner(sigma_hat, 0.0)


def test_default_ridge_is_fraction_of_mean_eigenvalue():
    sigma = _spd(4, 10.0, seed=4) * 3.0  # tr = 12, mean eigenvalue 3
    assert default_ridge(sigma, 0.01) == pytest.approx(0.01 * np.trace(sigma) / 4)
    assert default_ridge(sigma, 0.01) == pytest.approx(0.03)


def test_warmup_without_estimate_takes_no_step():
    P = warmup_preconditioner(None, 3)
    np.testing.assert_array_equal(P, np.zeros((3, 3)))


def test_warmup_is_identity_over_largest_eigenvalue():
    sigma = _spd(5, 50.0, seed=5)
    top = np.linalg.eigvalsh(sigma)[-1]
    P = warmup_preconditioner(sigma, 5)
    np.testing.assert_allclose(P, np.eye(5) / top, rtol=1e-12)
    # a GD step with η ≤ 1 and this P is stable: λ_max(PΣ) = 1
    assert np.linalg.eigvals(P @ sigma).real.max() == pytest.approx(1.0)


def test_warmup_with_non_positive_estimate_takes_no_step():
    P = warmup_preconditioner(-np.eye(3), 3)
    np.testing.assert_array_equal(P, np.zeros((3, 3)))
