"""shared/estimators.py: the closed-form gradient covariance, the pooled estimator,
and (end to end) that calibration is what makes Σ̂ right."""

from __future__ import annotations

import numpy as np
import pytest
from _support import read_rounds_raw, write_scenario

from shared.calibration import estimator_coefficients
from shared.data import random_rotation, spectrum
from shared.estimators import CovariancePool, centred_scatter, gradient_covariance, symmetric_sqrt

D, N_BATCH, K = 8, 16, 40000


def _sigma(d: int, rng: np.random.Generator, kappa: float = 10.0) -> np.ndarray:
    basis = random_rotation(d, rng)
    return (basis * spectrum(d, kappa, "geometric")) @ basis.T


def _delta_with_q(sigma: np.ndarray, q: float) -> np.ndarray:
    """δ with δᵀΣδ = q and v = Σ^{1/2}δ along the first axis (the worst case for κ₄)."""
    v = np.zeros(len(sigma))
    v[0] = np.sqrt(q)
    return symmetric_sqrt(sigma, inverse=True) @ v


def _batch_gradients(sigma, delta, batch, noise_var, kind, count, rng) -> np.ndarray:
    """``count`` n-row gradients g = Xᵀ(Xδ − e)/n, vectorised: X has shape (count, n, d).

    Rows are x = Σ^{1/2} z (fresh i.i.d. rows for every batch), e ~ N(0, noise_var).
    Only the residual Xw − y = Xδ − e matters, so w* never appears.
    """
    d = len(sigma)
    if kind == "gaussian":
        z = rng.standard_normal((count, batch, d))
    else:
        z = rng.choice([-1.0, 1.0], size=(count, batch, d))
    X = z @ symmetric_sqrt(sigma)
    resid = X @ delta - np.sqrt(noise_var) * rng.standard_normal((count, batch))
    return np.einsum("knd,kn->kd", X, resid) / batch


def _whitened_error(empirical: np.ndarray, reference: np.ndarray) -> float:
    root_inv = symmetric_sqrt(reference, inverse=True)
    return float(np.linalg.norm(root_inv @ empirical @ root_inv - np.eye(len(reference)), 2))


# Monte-Carlo tolerance. For K i.i.d. draws of a d-vector with covariance C and light
# tails, the whitened sample covariance C^{-1/2} Ĉ C^{-1/2} has its eigenvalues in
# ≈ [(1 − √(d/K))², (1 + √(d/K))²] (Bai–Yin), so ‖C^{-1/2} Ĉ C^{-1/2} − I‖ ≈ 2√(d/K) + d/K
# (docs/method.md#estimators: "whitened error ≈ 2√(d/K) + d/K"). A batch gradient is a mean of n products of
# Gaussians, a little heavier-tailed than Gaussian, so we allow twice that: 4√(d/K) + 2d/K
# ≈ 0.057 for d = 8, K = 40000 (observed 0.02–0.036 over seeds). The terms being tested are
# far larger: at q = n/4 the Σδδᵀ Σ/n term is ≈ 0.2 in whitened norm and the Rademacher
# kurtosis term ≈ 0.33, so a wrong closed form fails this tolerance by a wide margin.
TOL = 4 * np.sqrt(D / K) + 2 * D / K


@pytest.mark.parametrize("q", [0.0, N_BATCH / 16, N_BATCH / 4])
def test_calibrated_gradient_covariance_matches_closed_form_gaussian(q):
    rng = np.random.default_rng(int(100 + q * 16))
    sigma = _sigma(D, rng)
    delta = _delta_with_q(sigma, q)
    assert float(delta @ sigma @ delta) == pytest.approx(q)
    grads = _batch_gradients(sigma, delta, N_BATCH, N_BATCH, "gaussian", K, rng)
    # E g = Σδ
    mean_err = grads.mean(axis=0) - sigma @ delta
    assert np.linalg.norm(mean_err) < 6 * np.sqrt(np.trace(np.cov(grads, rowvar=False)) / K)
    empirical = np.cov(grads, rowvar=False)
    closed = gradient_covariance(sigma, delta, N_BATCH, N_BATCH)
    assert _whitened_error(empirical, closed) < TOL
    # calibration: n·Cov g = Σ up to the δ-bias (qΣ + Σδδᵀ Σ)/n, relative size ≤ 2q/n
    rel_bias = np.linalg.norm(closed - sigma, 2) / np.linalg.norm(sigma, 2)
    assert rel_bias <= 2 * q / N_BATCH + 1e-12
    if q > 1:
        # the δδᵀ term is really there: dropping it is detectably wrong
        no_outer = closed - np.outer(sigma @ delta, sigma @ delta) / N_BATCH
        assert _whitened_error(empirical, no_outer) > 2 * TOL


@pytest.mark.parametrize("q", [N_BATCH / 16, N_BATCH / 4])
def test_calibrated_gradient_covariance_matches_closed_form_rademacher(q):
    rng = np.random.default_rng(int(200 + q * 16))
    sigma = _sigma(D, rng)
    delta = _delta_with_q(sigma, q)
    grads = _batch_gradients(sigma, delta, N_BATCH, N_BATCH, "rademacher", K, rng)
    empirical = np.cov(grads, rowvar=False)
    closed = gradient_covariance(sigma, delta, N_BATCH, N_BATCH, excess_kurtosis=-2.0)
    assert _whitened_error(empirical, closed) < TOL
    # the kurtosis term matters: the Gaussian formula is detectably wrong for Rademacher
    gaussian_formula = gradient_covariance(sigma, delta, N_BATCH, N_BATCH, excess_kurtosis=0.0)
    assert _whitened_error(empirical, gaussian_formula) > 1.5 * TOL


def test_uncalibrated_rademacher_along_an_axis_is_singular():
    """docs/method.md#failures: σ² = 0, Rademacher x, δ along an axis → the estimate is exactly singular."""
    rng = np.random.default_rng(7)
    sigma = _sigma(D, rng)
    delta = _delta_with_q(sigma, 1.0)
    grads = _batch_gradients(sigma, delta, N_BATCH, 0.0, "rademacher", 4000, rng)
    whitened_eigs = np.linalg.eigvalsh(_whitened(np.cov(grads, rowvar=False), sigma))
    assert whitened_eigs[0] < 1e-10 * whitened_eigs[-1]
    closed = gradient_covariance(sigma, delta, N_BATCH, 0.0, excess_kurtosis=-2.0)
    assert np.linalg.eigvalsh(_whitened(closed, sigma))[0] == pytest.approx(0.0, abs=1e-12)


def _whitened(matrix, sigma):
    root_inv = symmetric_sqrt(sigma, inverse=True)
    return root_inv @ matrix @ root_inv


def test_uncalibrated_gaussian_shape_error_is_order_one():
    """σ² = 0: no rescaling of Cov g makes it Σ (whitened eigenvalues 1 and 2)."""
    rng = np.random.default_rng(8)
    sigma = _sigma(D, rng)
    delta = _delta_with_q(sigma, 1.0)
    eigs = np.linalg.eigvalsh(_whitened(gradient_covariance(sigma, delta, N_BATCH, 0.0), sigma))
    # best scale s minimises max|s·λ − 1| over λ ∈ {λmin, λmax}: error (λmax−λmin)/(λmax+λmin)
    assert (eigs[-1] - eigs[0]) / (eigs[-1] + eigs[0]) > 0.3


# -- centred scatter and the pool ------------------------------------------------------
def test_two_probes_equal_pair_difference():
    rng = np.random.default_rng(9)
    g = rng.standard_normal((2, 5))
    scatter, dof = centred_scatter(g)
    diff = g[0] - g[1]
    np.testing.assert_allclose(scatter, np.outer(diff, diff) / 2, atol=1e-12)
    assert dof == 1
    pool = CovariancePool(5)
    pool.add(g[None], np.array([3.0]))
    np.testing.assert_allclose(pool.estimate(), 3.0 * np.outer(diff, diff) / 2, atol=1e-12)


def test_centred_scatter_matches_numpy_cov():
    rng = np.random.default_rng(10)
    g = rng.standard_normal((7, 4)) + 5.0
    scatter, dof = centred_scatter(g)
    assert dof == 6
    np.testing.assert_allclose(scatter / dof, np.cov(g, rowvar=False), atol=1e-12)


@pytest.mark.parametrize("bad", [np.zeros((1, 3)), np.zeros(3), np.zeros((2, 3, 1))])
def test_centred_scatter_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="at least 2 gradients"):
        centred_scatter(bad)


def test_pool_dof_and_gradient_counting():
    rng = np.random.default_rng(11)
    pool = CovariancePool(3, levels=1)
    assert pool.estimate() is None and pool.dof == 0 and pool.gradients == 0
    for k in (2, 5, 3):
        pool.add(rng.standard_normal((1, k, 3)), np.array([1.0]))
    assert pool.dof == (2 - 1) + (5 - 1) + (3 - 1)
    assert pool.gradients == 2 + 5 + 3
    two = CovariancePool(3, levels=2)
    two.add(rng.standard_normal((2, 4, 3)), np.array([-1.0, 1.0]))
    assert two.dof == 3
    assert two.gradients == 2 * 4


def test_pool_weights_clients_by_coefficient_and_pooled_dof():
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((1, 3, 4)), rng.standard_normal((1, 5, 4))
    pool = CovariancePool(4)
    pool.add(a, np.array([2.0]))
    pool.add(b, np.array([0.5]))
    expected = (2.0 * centred_scatter(a[0])[0] + 0.5 * centred_scatter(b[0])[0]) / (2 + 4)
    np.testing.assert_allclose(pool.estimate(), expected, atol=1e-12)
    np.testing.assert_allclose(pool.estimate(), pool.estimate().T)


def test_pool_two_levels_combines_with_coefficients():
    rng = np.random.default_rng(13)
    probes = rng.standard_normal((2, 6, 3))
    coef = estimator_coefficients([0.25, 1.0], 16, 200)
    pool = CovariancePool(3, levels=2)
    pool.add(probes, coef)
    lo, hi = centred_scatter(probes[0])[0], centred_scatter(probes[1])[0]
    np.testing.assert_allclose(pool.estimate(), (coef[0] * lo + coef[1] * hi) / 5, atol=1e-12)


def test_pool_rejects_mismatched_shapes():
    pool = CovariancePool(3, levels=2)
    with pytest.raises(ValueError, match="do not match"):
        pool.add(np.zeros((1, 4, 3)), np.array([1.0]))
    with pytest.raises(ValueError, match="do not match"):
        pool.add(np.zeros((2, 4, 5)), np.array([1.0, 1.0]))


def test_within_client_centring_is_unbiased_for_non_iid_clients():
    """Clients whose gradients have different means (non-IID, δ-dependent Σ_kδ):
    the pool (centred within each client) recovers the common covariance; centring
    across clients adds the between-client scatter of the means."""
    rng = np.random.default_rng(14)
    d, clients, probes, rounds = 4, 8, 2, 600
    cov = _sigma(d, rng, kappa=4.0)
    root = symmetric_sqrt(cov)
    means = 3.0 * rng.standard_normal((clients, d))  # heterogeneity ≫ the noise
    pool = CovariancePool(d)
    cross_scatter, cross_dof = np.zeros((d, d)), 0
    for _ in range(rounds):
        grads = means[:, None, :] + rng.standard_normal((clients, probes, d)) @ root
        for c in range(clients):
            pool.add(grads[c][None], np.array([1.0]))
        s, dof = centred_scatter(grads.reshape(-1, d))  # cross-client centring
        cross_scatter += s
        cross_dof += dof
    assert pool.dof == rounds * clients * (probes - 1)
    # dof = 4800, d = 4: tolerance 4√(d/dof) + 2d/dof ≈ 0.12 (see TOL above)
    tol = 4 * np.sqrt(d / pool.dof) + 2 * d / pool.dof
    assert _whitened_error(pool.estimate(), cov) < tol
    assert _whitened_error(cross_scatter / cross_dof, cov) > 10 * tol


# -- end to end: calibration is what makes Σ̂ right -------------------------------------
CALIBRATION_SCENARIO = """
name = "calibration-matters"
seed = 3

[data]
dim = 10
condition_number = 10.0
rows_per_client = 400
noise_std = 0.0        # all target noise is the injected noise
signal_variance = 1.0  # q = δᵀΣδ = 1 at w = 0

[clients]
count = 10

[protocol]
batch_size = 32
probes = 16

[training]
learning_rate = 0.05   # a slow walk: Σ̂ is gathered far from the optimum (q ~ 1)

[stop]
max_rounds = 30
target = 1e-300        # never stop early: pool all 30 rounds
"""


def test_calibration_matters_in_the_federated_pipeline(tmp_path):
    """Issue requirement: with c = 1 the final ‖Σ̂ − Σ‖/‖Σ‖ < 0.1; with c = 0 it stays ≥ 0.3.

    10 clients × 16 probes × 30 rounds pool 4500 degrees of freedom (whitened MC error
    ≈ 2√(10/4500) ≈ 0.09, in operator norm relative to ‖Σ‖ ≈ 0.03–0.08); the calibrated
    δ-bias is ≤ 2q/n ≈ 0.06 at q ≤ 1, n = 32. Uncalibrated, Σ̂ ≈ (qΣ + Σδδᵀ Σ)/n is off
    in scale by a factor ~n/q, so its relative error is close to 1.
    """
    from fedsigma.cli import main

    path = write_scenario(tmp_path / "calib.toml", CALIBRATION_SCENARIO)
    errors = {}
    for c in (1, 0):
        out = tmp_path / f"c{c}"
        assert main(["run", str(path), "--out", str(out), "--set", f"protocol.calibration={c}"]) == 0
        rows = read_rounds_raw(out / "rounds.csv")
        assert len(rows) == 30, f"c={c}: expected 30 rounds, got {len(rows)}"
        errors[c] = [float(r["sigma_rel_error"]) for r in rows]
        assert all(np.isfinite(errors[c])), f"c={c}: non-finite Σ̂ error {errors[c]}"
    assert errors[1][-1] < 0.1, f"calibrated final ‖Σ̂−Σ‖/‖Σ‖ = {errors[1][-1]:.3f}"
    assert min(errors[0]) >= 0.3, f"uncalibrated Σ̂ error dipped to {min(errors[0]):.3f}"
