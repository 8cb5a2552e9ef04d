"""Low-rank-plus-ridge curvature for large d: a streaming Nyström sketch of Σ̂
and the Woodbury identity, so the server never forms or inverts a d × d matrix.

The pooled scatter S = Σ a·(g − ḡ)(g − ḡ)ᵀ is only ever touched through its
action on a fixed random test matrix Ω (d × m): Y = S·Ω accumulates gradient
by gradient in O(d·m) memory. The Nyström approximation S ≈ Y(ΩᵀY)⁻¹Yᵀ gives
the top eigenpairs (Tropp, Yurtsever, Udell & Cevher, 2017), the trace gives
the average bulk eigenvalue b of the rest, and

    Σ̂ ≈ U diag(s − b) Uᵀ + b·I,   P = (Σ̂ + λI)⁻¹ applied with Woodbury:
    P g = (g − U diag((s − b)/(s − b + β)) Uᵀ g) / β,   β = b + λ.
"""

from __future__ import annotations

import numpy as np


class SketchPool:
    """Streaming Nyström sketch of the pooled, calibrated probe covariance.

    Same contract as :class:`shared.estimators.CovariancePool` (``add``,
    ``gradients``, ``dof``) but stores Y = S·Ω (d × m) and tr S instead of S.

    Parameters
    ----------
    dim : int
        d.
    sketch_size : int
        m, the number of random test vectors (rank + oversampling).
    levels : int
        Noise levels (2 for differential injection).
    seed : int
        Seeds Ω.
    """

    def __init__(self, dim: int, sketch_size: int, levels: int = 1, seed: int = 0) -> None:
        self.dim = dim
        self.levels = levels
        self.omega = np.random.default_rng([seed, 11]).standard_normal((dim, sketch_size))
        self._y = np.zeros((levels, dim, sketch_size))
        self._trace = np.zeros(levels)
        self._dof = np.zeros(levels)
        self.gradients = 0

    def add(self, probe_grads: np.ndarray, coefficients: np.ndarray) -> None:
        """Pool probes of shape (levels, k, d) with calibration coefficients (levels,)."""
        self.add_many(np.asarray(probe_grads, dtype=float)[None], np.asarray(coefficients, dtype=float)[None])

    def add_many(self, probe_grads: np.ndarray, coefficients: np.ndarray) -> None:
        """Pool several clients' probes (K, levels, k, d), with coefficients (K, levels):
        Y_l += Σ_K a_K,l C_K,lᵀ (C_K,l Ω), a few GEMMs per level."""
        probe_grads = np.asarray(probe_grads, dtype=float)
        clients, _, k, _ = probe_grads.shape
        centred = probe_grads - probe_grads.mean(axis=2, keepdims=True)
        coefficients = np.asarray(coefficients, dtype=float)
        for level in range(self.levels):
            rows = centred[:, level].reshape(clients * k, self.dim)
            weights = np.repeat(coefficients[:, level], k)
            self._y[level] += (rows * weights[:, None]).T @ (rows @ self.omega)
            self._trace[level] += float(weights @ np.einsum("rd,rd->r", rows, rows))
            self._dof[level] += clients * (k - 1)
        self.gradients += clients * probe_grads.shape[1] * k

    @property
    def dof(self) -> float:
        return float(self._dof.min())

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(U (d × r), s (r,), b): top eigenpairs of Σ̂ and the mean of the rest."""
        if self.dof == 0:
            return None
        y = sum(self._y[l] / self._dof[l] for l in range(self.levels))
        trace = float(sum(self._trace[l] / self._dof[l] for l in range(self.levels)))
        U, s = nystrom(y, self.omega)
        r = min(rank, len(s))
        U, s = U[:, :r], s[:r]
        bulk = max(trace - float(s.sum()), 0.0) / max(self.dim - r, 1)
        return U, s, bulk


def nystrom(y: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (U, s), s descending, of the Nyström approximation of a PSD A from Y = AΩ.

    Stabilised with a small shift ν (Tropp et al., Algorithm 3).
    """
    nu = np.sqrt(y.shape[0]) * np.finfo(float).eps * np.linalg.norm(y)
    y_nu = y + nu * omega
    core = omega.T @ y_nu
    core = (core + core.T) / 2
    vals, vecs = np.linalg.eigh(core)
    keep = vals > vals.max() * 1e-12  # drop directions the sketch did not see
    b = y_nu @ (vecs[:, keep] / np.sqrt(vals[keep]))
    U, sing, _ = np.linalg.svd(b, full_matrices=False)
    return U, np.clip(sing**2 - nu, 0.0, None)


class LowRankPreconditioner:
    """P = (U diag(s − b) Uᵀ + (b + λ)I)⁻¹, applied in O(d·r) with Woodbury.

    Behaves like a symmetric matrix under ``P @ g`` and ``g @ P`` for vectors
    (and stacks of vectors); ``dense()`` builds the d × d matrix for tests.
    """

    __array_ufunc__ = None  # make numpy hand `g @ P` to __rmatmul__

    def __init__(self, U: np.ndarray, s: np.ndarray, bulk: float, ridge: float) -> None:
        self.U = U
        self.beta = bulk + ridge
        if self.beta <= 0:
            raise ValueError("low-rank preconditioner needs bulk + ridge > 0: set a positive ridge")
        spike = np.clip(s - bulk, 0.0, None)
        self._shrink = spike / (spike + self.beta)

    @classmethod
    def scaled_identity(cls, dim: int, scale: float) -> LowRankPreconditioner:
        """P = scale·I (scale = 0: no step), e.g. the warm-up I/λ̂_max."""
        P = cls.__new__(cls)
        P.U, P._shrink = np.zeros((dim, 0)), np.zeros(0)
        P.beta = 1.0 / scale if scale > 0 else np.inf
        return P

    def __matmul__(self, g: np.ndarray) -> np.ndarray:
        g = np.asarray(g, dtype=float)
        cols = g.reshape(g.shape[0], -1)
        out = (cols - self.U @ (self._shrink[:, None] * (self.U.T @ cols))) / self.beta
        return out.reshape(g.shape)

    def __rmatmul__(self, g: np.ndarray) -> np.ndarray:
        return self @ g  # symmetric

    def dense(self) -> np.ndarray:
        """The d × d matrix (for tests and small d only)."""
        return self @ np.eye(self.U.shape[0])
