"""Estimators of the data second-moment matrix Σ from calibrated gradients.

What works (docs/method.md#estimators): centre gradients within one client and one
round (all drawn at the same w), pool the centred scatter across clients and
rounds, divide by the pooled degrees of freedom, and rescale by the calibration
coefficient n/σ²_total. Cross-client or cross-round centring mixes client
heterogeneity and the movement of w into Σ̂.
"""

from __future__ import annotations

import numpy as np


def centred_scatter(grads: np.ndarray) -> tuple[np.ndarray, int]:
    """Scatter of gradients about their own mean, and its degrees of freedom.

    Parameters
    ----------
    grads : ndarray of shape (k, d)
        k ≥ 2 gradients drawn at the same parameters (one client, one round).

    Returns
    -------
    scatter : ndarray of shape (d, d)
        Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ; for k = 2 this is the pair difference
        (g₁ − g₂)(g₁ − g₂)ᵀ/2.
    dof : int
        k − 1.
    """
    grads = np.asarray(grads, dtype=float)
    if grads.ndim != 2 or grads.shape[0] < 2:
        raise ValueError(f"need at least 2 gradients of shape (k, d), got {grads.shape}")
    centred = grads - grads.mean(axis=0)
    return centred.T @ centred, grads.shape[0] - 1


class CovariancePool:
    """Running pool of centred probe-gradient scatter, one slot per noise level.

    Σ̂ = Σ_l (Σ_contrib a_l·S_l) / (Σ_contrib dof_l), where a_l are the
    calibration coefficients of :func:`shared.calibration.estimator_coefficients`
    (they may differ between clients with different local sizes).

    Parameters
    ----------
    dim : int
        d, the parameter dimension.
    levels : int
        1 for plain calibration, 2 for differential injection.
    """

    def __init__(self, dim: int, levels: int = 1) -> None:
        self.dim = dim
        self.levels = levels
        self._scaled = np.zeros((levels, dim, dim))
        self._dof = np.zeros(levels)
        self.gradients = 0

    def add(self, probe_grads: np.ndarray, coefficients: np.ndarray) -> None:
        """Pool one client's probes from one round.

        Parameters
        ----------
        probe_grads : ndarray of shape (levels, k, d)
            k gradients per noise level, all at the same w.
        coefficients : ndarray of shape (levels,)
            Calibration coefficients a_l for this client.
        """
        probe_grads = np.asarray(probe_grads, dtype=float)
        if probe_grads.shape[0] != self.levels or probe_grads.shape[2] != self.dim:
            raise ValueError(
                f"probe gradients of shape {probe_grads.shape} do not match "
                f"({self.levels}, k, {self.dim})"
            )
        for level in range(self.levels):
            scatter, dof = centred_scatter(probe_grads[level])
            self._scaled[level] += coefficients[level] * scatter
            self._dof[level] += dof
        self.gradients += probe_grads.shape[0] * probe_grads.shape[1]

    def add_many(self, probe_grads: np.ndarray, coefficients: np.ndarray) -> None:
        """Pool several clients' probes from one round, in their order.

        Parameters
        ----------
        probe_grads : ndarray of shape (K, levels, k, d)
        coefficients : ndarray of shape (K, levels)
        """
        for probes, coefs in zip(probe_grads, coefficients):
            self.add(probes, coefs)

    def estimate_with(self, probe_grads: np.ndarray, coefficients: np.ndarray) -> np.ndarray | None:
        """Σ̂ as :meth:`estimate` would give it after :meth:`add_many` of these probes,
        leaving the pool unchanged (for screening a round before pooling it)."""
        trial = CovariancePool(self.dim, self.levels)
        trial._scaled, trial._dof, trial.gradients = self._scaled.copy(), self._dof.copy(), self.gradients
        trial.add_many(probe_grads, coefficients)
        return trial.estimate()

    @property
    def dof(self) -> float:
        """Pooled degrees of freedom of the least-sampled level."""
        return float(self._dof.min())

    def estimate(self) -> np.ndarray | None:
        """Σ̂ of shape (d, d), symmetric; None before any probe is pooled."""
        if self.dof == 0:
            return None
        est = sum(self._scaled[l] / self._dof[l] for l in range(self.levels))
        return (est + est.T) / 2


def gradient_covariance(
    sigma: np.ndarray,
    delta: np.ndarray,
    batch_size: int,
    noise_var: float,
    excess_kurtosis: float = 0.0,
) -> np.ndarray:
    """Closed-form covariance of one n-row batch gradient (docs/method.md#gradient-covariance).

    Cov g = (1/n)·[σ²Σ + qΣ + Σδδᵀ Σ + κ₄ Σ^{1/2} diag(v²) Σ^{1/2}],
    q = δᵀΣδ, v = Σ^{1/2}δ, for rows x = Σ^{1/2}z with i.i.d. z of excess kurtosis κ₄.

    Parameters
    ----------
    sigma : ndarray of shape (d, d)
        Σ, the input second-moment matrix.
    delta : ndarray of shape (d,)
        w − w*.
    batch_size : int
        n.
    noise_var : float
        σ², the total per-row target-noise variance.
    excess_kurtosis : float
        κ₄ of the entries of z (0 Gaussian, −2 Rademacher).
    """
    sigma_delta = sigma @ delta
    q = float(delta @ sigma_delta)
    cov = (noise_var + q) * sigma + np.outer(sigma_delta, sigma_delta)
    if excess_kurtosis:
        root = symmetric_sqrt(sigma)
        v = root @ delta
        cov = cov + excess_kurtosis * root @ np.diag(v**2) @ root
    return cov / batch_size


def symmetric_sqrt(matrix: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Σ^{1/2} (or Σ^{-1/2}) of a symmetric positive semi-definite matrix."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    vals = np.clip(vals, 0.0, None)
    if inverse:
        vals = np.where(vals > 0, vals, np.inf)
        return (vecs / np.sqrt(vals)) @ vecs.T
    return (vecs * np.sqrt(vals)) @ vecs.T
