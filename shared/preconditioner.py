"""Preconditioners built from Σ̂: P = (Σ̂ + λI)⁻¹ and the warm-up scalar."""

from __future__ import annotations

import numpy as np


def default_ridge(sigma_hat: np.ndarray, fraction: float) -> float:
    """λ = fraction · tr(Σ̂₊)/d, a ridge in the units of Σ̂'s average eigenvalue.

    Σ̂₊ keeps the non-negative eigenvalues only (a differential estimate can
    have negative ones); 0 means Σ̂ carries no usable curvature yet.
    """
    vals = np.linalg.eigvalsh((sigma_hat + sigma_hat.T) / 2)
    return fraction * float(np.clip(vals, 0.0, None).sum()) / sigma_hat.shape[0]


def ridge_preconditioner(sigma_hat: np.ndarray, ridge: float) -> np.ndarray:
    """P = (Σ̂₊ + λI)⁻¹ of shape (d, d).

    Σ̂₊ is Σ̂ with negative eigenvalues set to zero: a differential estimate is a
    difference of covariances and need not be positive semi-definite.

    Parameters
    ----------
    sigma_hat : ndarray of shape (d, d)
    ridge : float
        λ > 0 (or ≥ 0 when Σ̂ is known to be positive definite).
    """
    vals, vecs = np.linalg.eigh((sigma_hat + sigma_hat.T) / 2)
    vals = np.clip(vals, 0.0, None) + ridge
    if np.any(vals <= 0):
        raise ValueError("Σ̂ + λI is singular: set a positive ridge")
    return (vecs / vals) @ vecs.T


def warmup_preconditioner(sigma_hat: np.ndarray | None, dim: int) -> np.ndarray:
    """P = I/λ̂_max while too few gradients are pooled: plain GD at a safe step.

    Before any probe arrives (Σ̂ is None) the server has no curvature scale and
    takes no step (P = 0), rather than guess a learning rate that may diverge.
    """
    if sigma_hat is None:
        return np.zeros((dim, dim))
    top = float(np.linalg.eigvalsh((sigma_hat + sigma_hat.T) / 2)[-1])
    return np.eye(dim) / top if top > 0 else np.zeros((dim, dim))
