"""The client's side of FedNL (``shared.fednl``): learn the local Hessian in compressed steps."""

from __future__ import annotations

import numpy as np

from shared import fednl
from shared import protocol as p


def fednl_reply(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, estimate: np.ndarray | None, kind: str, level: int, alpha: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """What one FedNL-PP client computes at the server's point w.

    Parameters
    ----------
    X : ndarray of shape (N, d)
        The client's rows.
    y : ndarray of shape (N,)
        Its targets.
    w : ndarray of shape (d,)
        The server's current point.
    estimate : ndarray of shape (d, d) or None
        H_i, the Hessian estimate this client has learned so far (None: zeros,
        the first round it takes part in).
    kind : {"rank", "topk"}
        The compressor.
    level : int
        R (Rank-R) or K (Top-K).
    alpha : float
        The Hessian learning rate α.

    Returns
    -------
    arrays : dict of ndarray
        What is sent, under the keys of :mod:`shared.protocol`: the compressed
        correction (``fednl.compress``'s arrays, prefixed ``FEDNL_PREFIX``), the
        shifted point g_i = (H_i + l_i·I)·w − ∇f_i(w) (d,) and l_i (1,). ∇f_i is
        the gradient of ½·mean((Xw − y)²), ∇²f_i = XᵀX/N.
    new_estimate : ndarray of shape (d, d)
        H_i after this round, for the client to keep.
    """
    d = X.shape[1]
    hessian = X.T @ X / len(X)
    message, new, distance = fednl.client_update(
        hessian, np.zeros((d, d)) if estimate is None else estimate, kind, level, alpha
    )
    gradient = X.T @ (X @ w - y) / len(X)
    shifted = new @ w + distance * w - gradient
    arrays = {p.FEDNL_PREFIX + key: value for key, value in message.items()}
    arrays[p.FEDNL_SHIFTED], arrays[p.FEDNL_DISTANCE] = shifted, np.array([distance])
    return arrays, new
