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

from shared.gradient_table import LatestPerClient

TYPICAL_MIN_FACTOR = 3.0  # a client's tr(PΣ̂_i) within this factor of the round's median is always typical
TYPICAL_SPREADS = 8.0  # … and within this many robust standard deviations of log-sizes
NORM_FACTOR = 10.0  # a gradient this many times the round's median norm: left out of ḡ
CURVATURE_BAND = (0.2, 5.0)  # honest Δwᵀ Σ_i Δw / Δwᵀ Σ̂ Δw lies well inside this
RESIDUAL_LIMIT = 3.0  # honest ‖Δg − Σ̂Δw‖_P / ‖Σ̂Δw‖_P: about the whitened error of Σ_i and Σ̂ (< 1.5)
MIN_CLIENTS = 3  # a median over fewer clients says nothing about any one of them


def scatter_sizes(probes: np.ndarray, coefficients: np.ndarray, whiten: np.ndarray | None = None) -> np.ndarray:
    """Each client's own estimate of tr(Σ) (or of tr(PΣ)) from its probes at the top level.

    Parameters
    ----------
    probes : ndarray of shape (K, levels, k, d)
        K clients' probe gradients, k ≥ 2 per level, all of one round.
    coefficients : ndarray of shape (K, levels)
        Their calibration coefficients (shared.calibration.estimator_coefficients);
        the top level's turns the centred scatter into an estimate of Σ.
    whiten : ndarray of shape (d, d) or None
        P ≈ Σ̂⁻¹ (symmetric): measure tr(P·Σ̂_i), about d for every honest client
        whatever Σ's spectrum, so noise or a wrong shape stands out, not only a wrong
        scale. None: the plain trace.

    Returns
    -------
    ndarray of shape (K,)
        a·tr(P Σ_j (g_j − ḡ)(g_j − ḡ)ᵀ)/(k − 1) per client (no d × d scatter is formed).
    """
    top = np.asarray(probes, dtype=float)[:, -1]
    centred = top - top.mean(axis=1, keepdims=True)
    weighted = centred if whiten is None else centred @ whiten
    return np.asarray(coefficients)[:, -1] * np.einsum("kjd,kjd->k", centred, weighted) / (top.shape[1] - 1)


def typical(values: np.ndarray, min_factor: float = TYPICAL_MIN_FACTOR, spreads: float = TYPICAL_SPREADS) -> np.ndarray:
    """Which positive sizes are typical of the round: log-size within
    max(log min_factor, spreads·σ̂) of the median log-size, σ̂ = 1.4826·MAD (the
    robust standard deviation), so the band is as tight as the honest clients agree.

    Parameters
    ----------
    values : ndarray of shape (K,)
    min_factor : float
        The band is never narrower than a factor min_factor either way.
    spreads : float
        Its half-width in robust standard deviations of the log-sizes.

    Returns
    -------
    ndarray of bool, shape (K,)
        All True when fewer than MIN_CLIENTS values; non-positive values are never typical.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_CLIENTS:
        return np.ones(len(values), dtype=bool)
    positive = values > 0
    if positive.sum() < MIN_CLIENTS:
        return positive
    logs = np.log(np.where(positive, values, 1.0))
    centre = float(np.median(logs[positive]))
    spread = 1.4826 * float(np.median(np.abs(logs[positive] - centre)))
    return positive & (np.abs(logs - centre) <= max(np.log(min_factor), spreads * spread))


def near_median(values: np.ndarray, factor: float) -> np.ndarray:
    """Which non-negative values are at most ``factor`` times the median (all True with
    fewer than MIN_CLIENTS values or a zero median)."""
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_CLIENTS or not float(np.median(values)) > 0:
        return np.ones(len(values), dtype=bool)
    return values <= factor * float(np.median(values))


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

    def __init__(self, dim: int) -> None:
        self._last = LatestPerClient(dim)

    def inconsistent(
        self, pids: list[int], grads: np.ndarray, w: np.ndarray, curvature: Callable[[np.ndarray], np.ndarray],
        precondition: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Which of this round's gradients contradict the same client's previous one.

        Parameters
        ----------
        pids : list of int
            Partition ids of the K replies.
        grads : ndarray of shape (K, d)
            Their gradients, all at ``w``.
        w : ndarray of shape (d,)
        curvature, precondition : callable
            V ↦ Σ̂V and V ↦ PV, P ≈ Σ̂⁻¹, for a (d, m) matrix of columns.

        Returns
        -------
        ndarray of bool, shape (K,)
            True where Δwᵀ Δg / Δwᵀ Σ̂ Δw falls outside CURVATURE_BAND (a sign flip
            gives −1), or the whitened residual ‖Δg − Σ̂Δw‖_P / ‖Σ̂Δw‖_P exceeds
            RESIDUAL_LIMIT (noise does, once steps are short); False for clients with
            no earlier reply, or a move too short to measure.
        """
        flagged = np.zeros(len(pids), dtype=bool)
        pids = np.asarray(pids, dtype=np.int64)
        rows = np.flatnonzero(self._last.has(pids))
        if not len(rows):
            return flagged
        steps = w[None, :] - self._last.points[pids[rows]]
        changes = grads[rows] - self._last.gradients[pids[rows]]
        sigma_steps = curvature(steps.T).T
        ratio = curvature_ratios(steps, changes, sigma_steps)
        scale = np.linalg.norm(steps, axis=1) * (np.linalg.norm(grads[rows], axis=1) + np.linalg.norm(changes, axis=1))
        measurable = np.einsum("kd,kd->k", steps, sigma_steps) > ROUND_OFF * scale
        both = np.concatenate([changes - sigma_steps, sigma_steps]).T  # (d, 2K): residuals, then Σ̂Δw
        squares = np.einsum("dk,dk->k", both, precondition(both))  # ‖v‖_P² of each column
        residual, base = squares[: len(rows)], squares[len(rows):]
        with np.errstate(divide="ignore", invalid="ignore"):
            whitened = np.where(base > 0, np.sqrt(np.maximum(residual, 0.0) / base), np.inf)
        low, high = CURVATURE_BAND
        flagged[rows] = measurable & (~((ratio >= low) & (ratio <= high)) | (whitened > RESIDUAL_LIMIT))
        return flagged

    def record(self, pids: list[int], grads: np.ndarray, w: np.ndarray) -> None:
        """Remember this round's gradients (K, d) of distinct clients, all taken at w (d,)."""
        self._last.put(np.asarray(pids, dtype=np.int64), np.ones(len(pids)), np.asarray(grads, dtype=float),
                       np.asarray(w, dtype=float))
