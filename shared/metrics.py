"""Oracle metrics the simulator computes from the union of all clients' data.

Clients never send any of this: the simulator knows the data because it made
(or loaded) it.
"""

from __future__ import annotations

import numpy as np

from shared.estimators import symmetric_sqrt


def sigma_relative_error(sigma_hat: np.ndarray, sigma: np.ndarray) -> float:
    """‖Σ̂ − Σ‖₂ / ‖Σ‖₂ (operator norms)."""
    return float(np.linalg.norm(sigma_hat - sigma, 2) / np.linalg.norm(sigma, 2))


def sigma_whitened_error(sigma_hat: np.ndarray, sigma: np.ndarray) -> float:
    """‖Σ^{-1/2} Σ̂ Σ^{-1/2} − I‖₂, the error that decides preconditioning quality."""
    root_inv = symmetric_sqrt(sigma, inverse=True)
    whitened = root_inv @ sigma_hat @ root_inv
    return float(np.linalg.norm(whitened - np.eye(len(sigma)), 2))


class LeastSquaresOracle:
    """Loss, optimum and second moment of the pooled data (X, y).

    L(w) = ‖Xw − y‖²/(2N), Σ = XᵀX/N, w_opt = argmin L. Excess risk is
    relative to a start point w₀: (L(w) − L(w_opt)) / (L(w₀) − L(w_opt)).

    Parameters
    ----------
    X : ndarray (N, d)
    y : ndarray (N,)
    w0 : ndarray (d,)
        The starting point of training.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, w0: np.ndarray) -> None:
        self.sigma = X.T @ X / len(X)
        self._Xty = X.T @ y / len(X)
        self._yty = float(y @ y) / len(X)
        self.w_opt = _least_squares(X, y, self.sigma, self._Xty)
        self.loss_opt = self.loss(self.w_opt)
        self._gap0 = self.loss(w0) - self.loss_opt

    def loss(self, w: np.ndarray) -> float:
        """L(w) = ‖Xw − y‖²/(2N), from the sufficient statistics."""
        return 0.5 * float(w @ self.sigma @ w - 2 * w @ self._Xty + self._yty)

    def excess_risk(self, w: np.ndarray) -> float:
        """Relative excess risk, computed as ½δᵀΣδ/gap₀ to avoid cancellation."""
        delta = w - self.w_opt
        if self._gap0 <= 0:
            return 0.0
        return 0.5 * float(delta @ self.sigma @ delta) / self._gap0

    def largest_eigenvalue(self) -> float:
        """λ_max(Σ), which sets the largest stable plain-GD step 2/λ_max."""
        if len(self.sigma) <= 1000:
            return float(np.linalg.eigvalsh(self.sigma)[-1])
        from scipy.sparse.linalg import eigsh  # Lanczos: a full eigh of a large Σ takes minutes

        return float(eigsh(self.sigma, k=1, which="LA", return_eigenvectors=False, v0=np.ones(len(self.sigma)))[0])


REFINEMENTS = 2  # each one multiplies the normal equations' relative error by about κ(Σ)²·ε


def _least_squares(X: np.ndarray, y: np.ndarray, sigma: np.ndarray, xty: np.ndarray) -> np.ndarray:
    """argmin ‖Xw − y‖ (d,) from the normal equations Σw = Xᵀy/N, refined on the residual
    X·w − y itself (iterative refinement), so the answer is as accurate as an SVD's for
    any κ(Σ) below 1/√ε, at O(N·d) per refinement instead of an O(N·d²) SVD. A singular Σ
    (dependent columns) falls back to the SVD's minimum-norm solution."""
    try:
        w = np.linalg.solve(sigma, xty)
        for _ in range(REFINEMENTS):
            w = w + np.linalg.solve(sigma, X.T @ (y - X @ w) / len(X))
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(X, y, rcond=None)[0]
    return w
