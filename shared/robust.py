"""Robust pooling: keep one lying client from moving Σ̂ or ḡ far.

Replies that pass the server's format checks can still be wrong in value: probes
×10⁶, a sign-flipped or random gradient, probes without calibrated noise. Two
screens, both against statistics of the round's other clients, so they need no
scale set by hand:

- ``scatter_sizes`` / ``near_median``: each client's probe scatter is a full
  estimate of tr(Σ) on its own (calibrated: a·tr(S)/dof ≈ tr Σ); a contribution
  more than ``factor`` times away from the round's median is left out of Σ̂.
- ``norm`` screen and ``curvature_ratios``: a gradient ``factor`` times longer than
  the median is left out; and a least-squares client's exact gradient moves by
  Σ_i·Δw between two points, so Δwᵀ(g_new − g_old) / Δwᵀ Σ̂ Δw is near 1 (it is
  Rayleigh-quotient ratio of Σ_i to Σ̂ along Δw, always > 0). A sign flip gives
  about −1, noise a value far from 1 once steps get short.

Flower's robust strategies (FedMedian, FedTrimmedAvg, Krum, Bulyan in
``flwr.serverapp.strategy``) replace the mean by an order statistic of the replies
every round. That changes the answer on clean runs — the median of honest
gradients is not their mean, so the fixed point moves off the optimum by about
the clients' spread over √K — and it cannot tell a sign-flipped gradient near the
optimum from an honest one (both are noise around 0). These screens leave every
clean reply in (the clean numbers stay bit-identical) and use what a quadratic
loss guarantees about each client's gradients over time.

Breakdown point: the references are medians over the round's clients, so they
hold while fewer than half of the replies in a round lie; every contribution that
passes is within ``factor`` of an honest one in size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SCATTER_FACTOR = 10.0  # a client's tr(Σ̂) this far from the round's median: left out of the pool
NORM_FACTOR = 10.0  # a gradient this many times the round's median norm: left out of ḡ
CURVATURE_BAND = (0.2, 5.0)  # honest Δwᵀ Σ_i Δw / Δwᵀ Σ̂ Δw lies well inside this
MIN_CLIENTS = 3  # a median over fewer clients says nothing about any one of them


def scatter_sizes(probes: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Each client's own estimate of tr(Σ) from its probes at the top noise level.

    Parameters
    ----------
    probes : ndarray of shape (K, levels, k, d)
        K clients' probe gradients, k ≥ 2 per level, all of one round.
    coefficients : ndarray of shape (K, levels)
        Their calibration coefficients (shared.calibration.estimator_coefficients);
        the top level's turns the centred scatter into an estimate of Σ.

    Returns
    -------
    ndarray of shape (K,)
        a·tr(Σ_j (g_j − ḡ)(g_j − ḡ)ᵀ)/(k − 1) per client (no d × d matrix is formed).
    """
    top = np.asarray(probes, dtype=float)[:, -1]
    centred = top - top.mean(axis=1, keepdims=True)
    return np.asarray(coefficients)[:, -1] * np.einsum("kjd,kjd->k", centred, centred) / (top.shape[1] - 1)


def near_median(values: np.ndarray, factor: float, two_sided: bool = True) -> np.ndarray:
    """Which values lie within ``factor`` of the median of the positive ones.

    Parameters
    ----------
    values : ndarray of shape (K,)
        Non-negative sizes, one per client.
    factor : float
        > 1. Kept: value ≤ factor·median and, if ``two_sided``, ≥ median/factor.
    two_sided : bool
        Also drop values far below the median.

    Returns
    -------
    ndarray of bool, shape (K,)
        All True when fewer than MIN_CLIENTS values (no meaningful median) or the
        median is 0.
    """
    values = np.asarray(values, dtype=float)
    keep = np.ones(len(values), dtype=bool)
    if len(values) < MIN_CLIENTS:
        return keep
    median = float(np.median(values))
    if not median > 0:
        return keep
    keep &= values <= factor * median
    if two_sided:
        keep &= values >= median / factor
    return keep


def curvature_ratios(steps: np.ndarray, changes: np.ndarray, sigma_steps: np.ndarray) -> np.ndarray:
    """Δwᵀ Δg / Δwᵀ Σ̂ Δw for each client (nan where Δwᵀ Σ̂ Δw is not positive).

    Parameters
    ----------
    steps : ndarray of shape (K, d)
        Δw, the move of w since each client's previous reply.
    changes : ndarray of shape (K, d)
        Δg, the change of each client's gradient over that move.
    sigma_steps : ndarray of shape (K, d)
        Σ̂ Δw.
    """
    expected = np.einsum("kd,kd->k", steps, sigma_steps)
    seen = np.einsum("kd,kd->k", steps, changes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, seen / expected, np.nan)


ROUND_OFF = 1e-10  # Δwᵀ Σ̂ Δw below this share of |Δw|·|g| is lost in the subtraction g_new − g_old


class ReplyHistory:
    """Each client's last gradient and the point it was taken at, accepted or not, to
    check the next one against it (``inconsistent``)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def inconsistent(
        self, pids: list[int], grads: np.ndarray, w: np.ndarray, curvature: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Which of this round's gradients contradict the same client's previous one.

        Parameters
        ----------
        pids : list of int
            Partition ids of the K replies.
        grads : ndarray of shape (K, d)
            Their gradients, all at ``w``.
        w : ndarray of shape (d,)
        curvature : callable
            V ↦ Σ̂V for a (d, m) matrix of columns.

        Returns
        -------
        ndarray of bool, shape (K,)
            True where Δwᵀ Δg / Δwᵀ Σ̂ Δw falls outside CURVATURE_BAND; False for
            clients with no earlier reply, or a move too short to measure.
        """
        flagged = np.zeros(len(pids), dtype=bool)
        rows = [k for k, pid in enumerate(pids) if pid in self._last]
        if not rows:
            return flagged
        steps = np.stack([w - self._last[pids[k]][0] for k in rows])
        changes = np.stack([grads[k] - self._last[pids[k]][1] for k in rows])
        sigma_steps = curvature(steps.T).T
        ratio = curvature_ratios(steps, changes, sigma_steps)
        scale = np.linalg.norm(steps, axis=1) * (np.linalg.norm(grads[rows], axis=1) + np.linalg.norm(changes, axis=1))
        measurable = np.einsum("kd,kd->k", steps, sigma_steps) > ROUND_OFF * scale
        low, high = CURVATURE_BAND
        flagged[rows] = measurable & ~((ratio >= low) & (ratio <= high))
        return flagged

    def record(self, pids: list[int], grads: np.ndarray, w: np.ndarray) -> None:
        """Remember this round's gradients (K, d), all taken at w (d,)."""
        w = np.array(w, dtype=float)
        for k, pid in enumerate(pids):
            self._last[pid] = (w, np.array(grads[k], dtype=float))
