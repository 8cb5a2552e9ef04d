"""The federation's gradient from the clients that did not reply this round.

With a fraction of clients each round (sampling, dropouts, stragglers) the mean
of the replies is the gradient of *those* clients' loss: stepping on it jumps
towards their optimum, and at a fixed step the iterates level off at a noise
floor. :class:`GradientTable` keeps every client's latest gradient g_i and the
point w_i it was taken at, and estimates the whole federation's gradient at w
by carrying each stale gradient forward along the learned curvature:

    ĝ(w) = Σ_i p_i [g_i + Σ̂ (w − w_i)] = Ḡ + Σ̂ (w − W̄),

with p_i = N_i / N over the clients heard from, Ḡ = Σ p_i g_i and W̄ = Σ p_i w_i
(both kept as running sums: O(k·d) work for k replies, whatever the number of
clients). For least squares g_i(w) = Σ_i w − b_i exactly, so the only error is
Σ_i p_i (Σ_i − Σ̂)(w − w_i): it vanishes as the iterates settle (w − w_i → 0),
which is why the estimate converges to the exact optimum where the plain mean
stalls. When every client in the table replied at w, the estimate is their weighted mean
computed afresh, in partition order (bit for bit the plain mean, with no drift of
the running sums). Without a curvature estimate (Σ̂ = 0) it is SAG's stale-gradient average
(Schmidt, Le Roux and Bach, 2017). With Σ̂ = H and the step
w ← w − (H + l·I)⁻¹ ĝ(w) it is FedNL-PP's update (``shared.fednl``); gradcov
gets its H from calibrated probes instead of compressed client Hessians.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class GradientTable:
    """Each client's latest gradient, the point it was taken at, and their weighted sums.

    Parameters
    ----------
    dim : int
        d, the length of w and of each gradient.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._rows: dict[int, float] = {}
        self._gradients: dict[int, np.ndarray] = {}
        self._points: dict[int, np.ndarray] = {}
        self._grad_sum = np.zeros(dim)  # Σ_i N_i g_i
        self._point_sum = np.zeros(dim)  # Σ_i N_i w_i
        self._total = 0.0  # Σ_i N_i

    def __len__(self) -> int:
        """The number of clients heard from."""
        return len(self._rows)

    def members(self) -> tuple[int, ...]:
        """Partition ids in the estimate, sorted."""
        return tuple(sorted(self._rows))

    def current(self, w: np.ndarray) -> bool:
        """Whether every gradient in the table was taken at w (the estimate is then exact)."""
        return all(np.array_equal(point, w) for point in self._points.values())

    def remove(self, partition: int) -> None:
        """Drop a client's entry (e.g. one caught sending a gradient that contradicts its last)."""
        rows = self._rows.pop(partition, None)
        if rows is not None:
            self._grad_sum -= rows * self._gradients.pop(partition)
            self._point_sum -= rows * self._points.pop(partition)
            self._total -= rows

    def update(self, partition: int, rows: float, gradient: np.ndarray, point: np.ndarray) -> None:
        """Replace a client's entry.

        Parameters
        ----------
        partition : int
            The client's partition id.
        rows : float
            N_i, its weight (rows behind the gradient).
        gradient : ndarray of shape (d,)
            g_i, its gradient at ``point``.
        point : ndarray of shape (d,)
            w_i, where it was taken.
        """
        old = self._rows.get(partition)
        if old is not None:
            self._grad_sum -= old * self._gradients[partition]
            self._point_sum -= old * self._points[partition]
            self._total -= old
        g, w = np.array(gradient, dtype=float), np.array(point, dtype=float)
        self._rows[partition], self._gradients[partition], self._points[partition] = float(rows), g, w
        self._grad_sum += rows * g
        self._point_sum += rows * w
        self._total += rows

    def estimate(self, w: np.ndarray, curvature: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
        """ĝ(w) = Ḡ + Σ̂·(w − W̄), shape (d,).

        Parameters
        ----------
        w : ndarray of shape (d,)
            The point the federation's gradient is wanted at.
        curvature : callable or None
            v ↦ Σ̂·v for (d,) vectors; None carries the stale gradients forward
            unchanged (SAG).

        Raises
        ------
        ValueError
            Before any client was heard from.
        """
        if not self._rows:
            raise ValueError("no client in the gradient table yet")
        if self.current(w):  # every client replied at w: their weighted mean, bit for bit, no drift
            members = self.members()
            return np.average(
                np.stack([self._gradients[i] for i in members]), axis=0, weights=[self._rows[i] for i in members]
            )
        mean_gradient = self._grad_sum / self._total
        if curvature is None:
            return mean_gradient
        return mean_gradient + curvature(np.asarray(w, dtype=float) - self._point_sum / self._total)
