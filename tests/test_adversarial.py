"""shared.adversarial: the closed form against a brute-force attack, q̂ from gradients."""

from __future__ import annotations

import numpy as np
import pytest

from shared.adversarial import adversarial_risk, dual_norm, excess_from_gradients, worst_perturbation
from shared.estimators import centred_scatter, symmetric_sqrt


def _problem(seed: int = 0, dim: int = 3):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((dim, dim))
    sigma = a @ a.T + 0.5 * np.eye(dim)
    w_star = rng.standard_normal(dim)
    w = w_star + 0.4 * rng.standard_normal(dim)
    return rng, sigma, w_star, w


def _unit_directions(rng, count: int, dim: int) -> np.ndarray:
    u = rng.standard_normal((count, dim))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


@pytest.mark.parametrize("attack", ["l2", "mahalanobis"])
def test_closed_form_matches_a_brute_force_attack(attack):
    """Search 4,000 feasible perturbations per row (no knowledge of the optimal
    one) and average the attacked loss: it matches the closed form."""
    rng, sigma, w_star, w = _problem()
    d, rows, natural, radius = 3, 4000, 0.3, 0.7
    X = rng.standard_normal((rows, d)) @ symmetric_sqrt(sigma)
    y = X @ w_star + np.sqrt(natural) * rng.standard_normal(rows)
    shape = np.eye(d) if attack == "l2" else symmetric_sqrt(sigma)  # Δ = r·shape·u, ‖u‖ = 1
    candidates = radius * _unit_directions(rng, 4000, d) @ shape.T  # (m, d), all on the boundary
    shifts = candidates @ w  # how far each moves the prediction
    residual = X @ w - y
    brute = np.maximum((residual + shifts.max()) ** 2, (residual + shifts.min()) ** 2)
    q = float((w - w_star) @ sigma @ (w - w_star))
    closed = float(adversarial_risk(q + natural, radius, dual_norm(w, attack, sigma)))
    se = brute.std() / np.sqrt(rows)
    assert abs(brute.mean() - closed) < 4 * se + 0.01 * closed
    # the explicit worst case is feasible and at least as strong as every candidate
    delta = worst_perturbation(residual, w, radius, attack, sigma)
    size = np.linalg.norm(delta, axis=1) if attack == "l2" else np.sqrt(
        np.einsum("ij,jk,ik->i", delta, np.linalg.inv(sigma), delta))
    assert np.allclose(size, radius)
    assert np.all((residual + delta @ w) ** 2 >= brute - 1e-9)


def test_risk_without_attack_is_the_residual_variance():
    assert adversarial_risk(0.7, 0.0, 3.0) == pytest.approx(0.7)
    assert adversarial_risk(0.0, 2.0, 1.5) == pytest.approx(9.0)  # no noise: (r‖w‖*)²


def test_dual_norm_needs_sigma_for_mahalanobis():
    w = np.array([3.0, 4.0])
    assert dual_norm(w, "l2") == pytest.approx(5.0)
    assert dual_norm(w, "mahalanobis", np.diag([4.0, 1.0])) == pytest.approx(np.sqrt(36 + 16))
    with pytest.raises(ValueError, match="needs Σ"):
        dual_norm(w, "mahalanobis")
    with pytest.raises(ValueError, match="unknown attack"):
        dual_norm(w, "linf")


@pytest.mark.parametrize("q", [0.2, 2.0, 20.0])
def test_excess_from_gradients_is_unbiased(q):
    """Calibrated gradients (σ² = n) at δᵀΣδ = q: q̂ averages to q within 5 %."""
    rng, sigma, _, _ = _problem(1, dim=5)
    d, n, count = 5, 32, 400
    root = symmetric_sqrt(sigma)
    delta = rng.standard_normal(d)
    delta *= np.sqrt(q / (delta @ sigma @ delta))
    estimates = []
    for _ in range(40):
        X = (rng.standard_normal((count * n, d)) @ root).reshape(count, n, d)
        residual = X @ delta - np.sqrt(n) * rng.standard_normal((count, n))
        grads = np.einsum("knd,kn->kd", X, residual) / n
        scatter, dof = centred_scatter(grads)
        estimates.append(excess_from_gradients(grads, scatter / dof, n, n))
    assert np.mean(estimates) == pytest.approx(q, rel=0.05)


def test_excess_from_gradients_needs_more_than_d_gradients():
    with pytest.raises(ValueError, match="more than d"):
        excess_from_gradients(np.ones((4, 3)), np.eye(3), 8, 8.0)
