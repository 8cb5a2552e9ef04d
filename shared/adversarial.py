"""Adversarial risk of a linear model under norm-bounded input attacks, and the
distance to the optimum q = δᵀΣδ estimated from calibrated gradients alone.

Squared loss (xᵀw − y)², attack x → x + Δ with ‖Δ‖ ≤ r. The worst Δ moves the
prediction by r‖w‖* in the sign of the residual, so for Gaussian x
(docs/method.md#adversarial), with s² = δᵀΣδ + σ₀² the residual variance:

    R_adv(w) = s² + 2 r ‖w‖* s √(2/π) + r² ‖w‖*².

ℓ₂ attacks have ‖w‖* = ‖w‖₂; Mahalanobis attacks (ΔᵀΣ⁻¹Δ ≤ r²) have
‖w‖* = ‖w‖_Σ = √(wᵀΣw), which needs Σ — from gradients, Σ̂.
"""

from __future__ import annotations

import numpy as np

ATTACKS = ("l2", "mahalanobis")


def dual_norm(w: np.ndarray, attack: str, sigma: np.ndarray | None = None) -> float:
    """‖w‖*: the most an attack of radius 1 can move the prediction xᵀw.

    attack: ``l2`` (‖Δ‖₂ ≤ r) or ``mahalanobis`` (ΔᵀΣ⁻¹Δ ≤ r², needs ``sigma``).
    """
    w = np.asarray(w, dtype=float)
    if attack == "l2":
        return float(np.linalg.norm(w))
    if attack == "mahalanobis":
        if sigma is None:
            raise ValueError("a Mahalanobis attack needs Σ (or Σ̂)")
        return float(np.sqrt(max(w @ sigma @ w, 0.0)))
    raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS}")


def adversarial_risk(residual_var: float, radius: np.ndarray | float, dual: float) -> np.ndarray:
    """R_adv = s² + 2r‖w‖*·s·√(2/π) + r²‖w‖*² for Gaussian residuals of variance s².

    Parameters
    ----------
    residual_var : float
        s² = δᵀΣδ + σ₀², the variance of xᵀw − y without attack.
    radius : float or ndarray
        r ≥ 0, the attack budget.
    dual : float
        ‖w‖*, from :func:`dual_norm`.
    """
    s = np.sqrt(residual_var)
    shift = np.asarray(radius, dtype=float) * dual
    return residual_var + 2 * shift * s * np.sqrt(2 / np.pi) + shift**2


def worst_perturbation(
    residuals: np.ndarray, w: np.ndarray, radius: float, attack: str, sigma: np.ndarray | None = None
) -> np.ndarray:
    """The optimal attack Δ (rows, d) for each row, explicitly.

    Δ = r·sign(xᵀw − y)·u with u the unit-budget direction maximising Δᵀw:
    w/‖w‖₂ (ℓ₂) or Σw/‖w‖_Σ (Mahalanobis). Used to estimate the attacked risk
    by Monte Carlo, independently of :func:`adversarial_risk`.
    """
    w = np.asarray(w, dtype=float)
    norm = dual_norm(w, attack, sigma)
    if norm == 0:
        return np.zeros((len(residuals), len(w)))
    direction = w / norm if attack == "l2" else (sigma @ w) / norm
    signs = np.where(np.asarray(residuals) >= 0, 1.0, -1.0)
    return radius * signs[:, None] * direction[None, :]


def excess_from_gradients(
    grads: np.ndarray, sigma_hat: np.ndarray, batch_size: int, noise_var: float
) -> float:
    """q̂ ≈ δᵀΣδ from K calibrated batch gradients drawn at one w, and Σ̂ from them.

    The raw statistic t = ḡᵀΣ̂⁻¹ḡ (ḡ the mean gradient, Σ̂ their calibrated
    covariance, rescaled by n/σ²) has, for Gaussian gradients,
    E t = (K−1)/(K−d−2)·[q/(1 + 2q/σ²) + (σ²/n)·d/K]: the inverse-Wishart factor,
    the δ-bias of Σ̂ (docs/method.md#adversarial: q/(1 + 2q/n) under σ² = n) and the noise of ḡ.
    This removes the first and last, then inverts the middle.

    Parameters
    ----------
    grads : ndarray (K, d)
    sigma_hat : ndarray (d, d)
        Σ̂ from these gradients, already rescaled by n/σ².
    batch_size : int
        n.
    noise_var : float
        σ², the total target-noise variance of the gradients (n when calibrated).
    """
    count, dim = grads.shape
    if count <= dim + 2:
        raise ValueError(f"need more than d + 2 = {dim + 2} gradients, got {count}")
    mean = grads.mean(axis=0)
    raw = float(mean @ np.linalg.solve(sigma_hat, mean))
    shrunk = raw * (count - dim - 2) / (count - 1) - (noise_var / batch_size) * dim / count
    shrunk = min(max(shrunk, 0.0), 0.49 * noise_var)  # the inversion needs t < σ²/2
    return shrunk / (1 - 2 * shrunk / noise_var)
