"""Estimators of the data second-moment matrix Σ from calibrated gradients.

What works (docs/method.md#estimators): centre gradients within one client and one
round (all drawn at the same w), pool the centred scatter across clients and
rounds, divide by the pooled degrees of freedom, and rescale by the calibration
coefficient n/σ²_total. Cross-client or cross-round centring mixes client
heterogeneity and the movement of w into Σ̂.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        self.add_many(probe_grads[None], np.asarray(coefficients, dtype=float)[None])

    def add_many(self, probe_grads: np.ndarray, coefficients: np.ndarray) -> None:
        """Pool several clients' probes from one round (one GEMM per level).

        Parameters
        ----------
        probe_grads : ndarray of shape (K, levels, k, d)
        coefficients : ndarray of shape (K, levels)
        """
        self.add_scatter(self.round_scatter(probe_grads, coefficients))

    def round_scatter(self, probe_grads: np.ndarray, coefficients: np.ndarray) -> RoundScatter:
        """What :meth:`add_many` would pool, without pooling it.

        Each client's probes are centred on their own mean (within client and round)
        and Σ_K a_K,l C_K,lᵀ C_K,l is formed per level as one weighted GEMM.

        Parameters
        ----------
        probe_grads : ndarray of shape (K, levels, k, d)
            k ≥ 2 gradients per client and level.
        coefficients : ndarray of shape (K, levels)
        """
        probe_grads = np.asarray(probe_grads, dtype=float)
        if probe_grads.ndim != 4 or probe_grads.shape[1] != self.levels or probe_grads.shape[3] != self.dim:
            raise ValueError(
                f"probe gradients of shape {probe_grads.shape} do not match (K, {self.levels}, k, {self.dim})"
            )
        clients, _, k, _ = probe_grads.shape
        if k < 2:
            raise ValueError(f"need at least 2 gradients per client and level, got {k}")
        centred = probe_grads - probe_grads.mean(axis=2, keepdims=True)
        coefficients = np.asarray(coefficients, dtype=float)
        scaled = np.empty((self.levels, self.dim, self.dim))
        for level in range(self.levels):
            rows = centred[:, level].reshape(clients * k, self.dim)
            weights = np.repeat(coefficients[:, level], k)
            scaled[level] = (rows * weights[:, None]).T @ rows
        return RoundScatter(scaled, np.full(self.levels, clients * (k - 1.0)), clients * self.levels * k)

    def add_scatter(self, scatter: RoundScatter) -> None:
        """Pool a :meth:`round_scatter`."""
        self._scaled += scatter.scaled
        self._dof += scatter.dof
        self.gradients += scatter.gradients

    def estimate_with(self, scatter: RoundScatter) -> np.ndarray | None:
        """Σ̂ as :meth:`estimate` would give it after :meth:`add_scatter`, leaving the pool
        unchanged (for screening a round before pooling it)."""
        return _estimate(self._scaled + scatter.scaled, self._dof + scatter.dof)

    @property
    def dof(self) -> float:
        """Pooled degrees of freedom of the least-sampled level."""
        return float(self._dof.min())

    def estimate(self) -> np.ndarray | None:
        """Σ̂ of shape (d, d), symmetric; None before any probe is pooled."""
        return _estimate(self._scaled, self._dof)


@dataclass(frozen=True)
class RoundScatter:
    """One round's calibrated probe scatter, ready to pool.

    Parameters
    ----------
    scaled : ndarray of shape (levels, d, d)
        Σ_K a_K,l · (centred scatter of client K at level l).
    dof : ndarray of shape (levels,)
        Degrees of freedom added per level, Σ_K (k − 1).
    gradients : int
        Probe gradients behind it.
    """

    scaled: np.ndarray
    dof: np.ndarray
    gradients: int


def _estimate(scaled: np.ndarray, dof: np.ndarray) -> np.ndarray | None:
    """Σ_l scaled_l / dof_l, symmetrised; None while a level has no degree of freedom."""
    if float(dof.min()) == 0:
        return None
    est = sum(scaled[level] / dof[level] for level in range(len(dof)))
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
