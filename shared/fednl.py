"""FedNL: Newton-type federated learning with compressed Hessian learning.

Safaryan, Islamov, Qian and Richtárik, "FedNL: Making Newton-Type Methods
Applicable to Federated Learning", ICML 2022 (Algorithm 1, option 2, and
Algorithm 3, FedNL-PP, for partial participation).

Each client i keeps a Hessian estimate H_i (d, d). Every round it sends a
compressed correction S_i = C(∇²f_i − H_i) and learns H_i ← H_i + α·S_i; the
server mirrors H = Σ_i p_i H_i from the corrections alone, so H drifts to the
true Hessian without any client ever sending a d × d matrix. The server steps
with (H + l·I)⁻¹, where l = Σ_i p_i ‖H_i − ∇²f_i‖_F is how far the clients'
estimates still are from their Hessians: H + l·I ⪰ ∇²f, so a step is never
longer than Newton's and starts as gradient descent at a safe scale.

For least squares ∇²f_i = X_iᵀX_i/N_i does not depend on w. Weights p_i are
rows: p_i = N_i/N, the federation's own loss.

Compressors (both contractive, so α = 1 is the paper's choice):

- Rank-R: the R eigenpairs of largest |eigenvalue| of the symmetric residual,
  R·(d + 1) floats.
- Top-K: the K upper-triangle entries of largest magnitude, K values and K
  flat indices.
"""

from __future__ import annotations

import numpy as np

COMPRESSORS = ("rank", "topk")


def compress_rank(residual: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-R compression of a symmetric matrix.

    Parameters
    ----------
    residual : ndarray of shape (d, d)
        Symmetric matrix to compress.
    rank : int
        R ≥ 1, the number of eigenpairs kept (capped at d).

    Returns
    -------
    values : ndarray of shape (R,)
        The eigenvalues of largest magnitude.
    vectors : ndarray of shape (d, R)
        Their unit eigenvectors.
    """
    vals, vecs = np.linalg.eigh((residual + residual.T) / 2)
    keep = np.sort(np.argsort(-np.abs(vals), kind="stable")[: min(rank, len(vals))])
    return vals[keep], vecs[:, keep]


def expand_rank(values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The (d, d) matrix V·diag(values)·Vᵀ a Rank-R message stands for."""
    return (vectors * values) @ vectors.T


def compress_topk(residual: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K compression of a symmetric matrix on its upper triangle.

    Parameters
    ----------
    residual : ndarray of shape (d, d)
        Symmetric matrix to compress.
    k : int
        K ≥ 1, the number of upper-triangle entries kept (capped at d(d+1)/2).

    Returns
    -------
    index : ndarray of shape (K,), int64
        Flat indices i·d + j (i ≤ j) of the kept entries, ascending.
    values : ndarray of shape (K,)
        The entries.
    """
    d = residual.shape[0]
    rows, cols = np.triu_indices(d)
    upper = residual[rows, cols]
    keep = np.sort(np.argsort(-np.abs(upper), kind="stable")[: min(k, len(upper))])
    return (rows[keep] * d + cols[keep]).astype(np.int64), upper[keep]


def expand_topk(index: np.ndarray, values: np.ndarray, dim: int) -> np.ndarray:
    """The symmetric (d, d) matrix a Top-K message stands for."""
    out = np.zeros(dim * dim)
    out[np.asarray(index, dtype=np.int64)] = values
    out = out.reshape(dim, dim)
    return out + np.triu(out, 1).T


def compress(residual: np.ndarray, kind: str, level: int) -> dict[str, np.ndarray]:
    """The arrays a client sends for C(residual): ``{"values", "vectors"}`` (rank)
    or ``{"index", "values"}`` (topk); ``level`` is R or K."""
    if kind == "rank":
        values, vectors = compress_rank(residual, level)
        return {"values": values, "vectors": vectors}
    if kind == "topk":
        index, values = compress_topk(residual, level)
        return {"index": index, "values": values}
    raise ValueError(f"compressor must be one of {COMPRESSORS}, got {kind!r}")


def expand(message: dict[str, np.ndarray], kind: str, dim: int) -> np.ndarray:
    """The (d, d) matrix a compressed message stands for (inverse of :func:`compress`'s packing)."""
    if kind == "rank":
        return expand_rank(message["values"], message["vectors"])
    return expand_topk(message["index"], message["values"], dim)


def client_update(
    hessian: np.ndarray, estimate: np.ndarray, kind: str, level: int, alpha: float = 1.0
) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """One client's Hessian-learning step.

    Parameters
    ----------
    hessian : ndarray of shape (d, d)
        ∇²f_i at the current point (X_iᵀX_i/N_i for least squares).
    estimate : ndarray of shape (d, d)
        H_i, the client's current estimate (the server holds the same matrix
        implicitly, as the sum of the corrections it received).
    kind : {"rank", "topk"}
        Compressor.
    level : int
        R for Rank-R, K for Top-K.
    alpha : float, default=1.0
        Hessian learning rate α.

    Returns
    -------
    message : dict of ndarray
        The compressed correction C(∇²f_i − H_i), as sent.
    new_estimate : ndarray of shape (d, d)
        H_i + α·C(∇²f_i − H_i).
    distance : float
        l_i = ‖H_i_new − ∇²f_i‖_F, after the update (FedNL-PP's choice, which keeps
        H + l·I ⪰ ∇²f with the H the server holds after this round).
    """
    message = compress(hessian - estimate, kind, level)
    new = estimate + alpha * expand(message, kind, hessian.shape[0])
    return message, new, float(np.linalg.norm(new - hessian))


def newton_step(hessian: np.ndarray, shift: float, vector: np.ndarray) -> np.ndarray:
    """(H + l·I)⁻¹·v for symmetric H (d, d), l ≥ 0 and v (d,).

    Eigenvalues of H + l·I below 1e-12·max(1, trace/d) are raised to that floor,
    so a rank-deficient H early in the learning gives a long but finite step
    along unseen directions only when l is 0 too.
    """
    vals, vecs = np.linalg.eigh((hessian + hessian.T) / 2)
    vals = vals + shift
    floor = 1e-12 * max(1.0, float(np.abs(vals).mean()))
    return vecs @ ((vecs.T @ vector) / np.maximum(vals, floor))
