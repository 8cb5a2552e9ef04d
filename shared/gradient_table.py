"""The federation's gradient from the clients that did not reply this round.

With a fraction of clients each round (sampling, dropouts, stragglers) the mean
of the replies is the gradient of *those* clients' loss: stepping on it jumps
towards their optimum, and at a fixed step the iterates level off at a noise
floor. :class:`GradientTable` keeps every client's latest gradient g_i and the
point w_i it was taken at, and estimates the whole federation's gradient at w
by carrying each stale gradient forward along the learned curvature:

    ĝ(w) = Σ_i p_i [g_i + Σ̂ (w − w_i)] = Ḡ + Σ̂ (w − W̄),

with p_i = N_i / N over the clients heard from, Ḡ = Σ p_i g_i and W̄ = Σ p_i w_i
(recomputed from dense per-client arrays each round: O(clients·d), a few
array operations). For least squares g_i(w) = Σ_i w − b_i exactly, so the only error is
Σ_i p_i (Σ_i − Σ̂)(w − w_i): it vanishes as the iterates settle (w − w_i → 0),
which is why the estimate converges to the exact optimum where the plain mean
stalls. When every client in the table replied at w, the estimate is their weighted mean
in partition order (bit for bit the plain mean). Without a curvature estimate (Σ̂ = 0) it is SAG's stale-gradient average
(Schmidt, Le Roux and Bach, 2017). With Σ̂ = H and the step
w ← w − (H + l·I)⁻¹ ĝ(w) it is FedNL-PP's update (``shared.fednl``); gradcov
gets its H from calibrated probes instead of compressed client Hessians.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class LatestPerClient:
    """Each client's latest gradient, the point it was taken at and its weight, as dense
    arrays indexed by partition id (no Python object per client: a round of K replies
    is a few array operations, and a checkpoint pickles four arrays).

    Parameters
    ----------
    dim : int
        d, the length of each gradient and point.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.present = np.zeros(0, dtype=bool)
        self.rows = np.zeros(0)
        self.gradients = np.zeros((0, dim))
        self.points = np.zeros((0, dim))

    def _reserve(self, top: int) -> None:
        """Room for partition ids below ``top`` (doubling, so growth is amortised)."""
        size = len(self.present)
        if top <= size:
            return
        new = max(top, 2 * size)
        self.present = np.concatenate([self.present, np.zeros(new - size, dtype=bool)])
        self.rows = np.concatenate([self.rows, np.zeros(new - size)])
        self.gradients = np.concatenate([self.gradients, np.zeros((new - size, self.dim))])
        self.points = np.concatenate([self.points, np.zeros((new - size, self.dim))])

    def put(self, pids: np.ndarray, rows: np.ndarray, gradients: np.ndarray, point: np.ndarray) -> None:
        """Replace the entries of distinct partitions ``pids`` (K,) with gradients (K, d)
        of weights ``rows`` (K,), all taken at ``point`` (d,)."""
        pids = np.asarray(pids, dtype=np.int64)
        if not len(pids):
            return
        self._reserve(int(pids.max()) + 1)
        self.present[pids] = True
        self.rows[pids] = rows
        self.gradients[pids] = gradients
        self.points[pids] = point

    def drop(self, pids: np.ndarray) -> None:
        """Forget these partitions' entries (absent ones are ignored)."""
        pids = np.asarray(pids, dtype=np.int64)
        pids = pids[pids < len(self.present)]
        self.present[pids] = False

    def members(self) -> np.ndarray:
        """Partition ids with an entry, sorted (int64)."""
        return np.flatnonzero(self.present)

    def has(self, pids: np.ndarray) -> np.ndarray:
        """Which of ``pids`` (K,) have an entry (bool, (K,))."""
        pids = np.asarray(pids, dtype=np.int64)
        inside = pids < len(self.present)
        out = np.zeros(len(pids), dtype=bool)
        out[inside] = self.present[pids[inside]]
        return out


class GradientTable:
    """Each client's latest gradient, the point it was taken at, and the weighted means.

    Parameters
    ----------
    dim : int
        d, the length of w and of each gradient.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._store = LatestPerClient(dim)

    def __len__(self) -> int:
        """The number of clients heard from."""
        return int(self._store.present.sum())

    def members(self) -> tuple[int, ...]:
        """Partition ids in the estimate, sorted."""
        return tuple(self._store.members().tolist())

    def current(self, w: np.ndarray) -> bool:
        """Whether every gradient in the table was taken at w (the estimate is then exact)."""
        return bool(np.all(self._store.points[self._store.present] == np.asarray(w)))

    def remove(self, partition: int) -> None:
        """Drop a client's entry (e.g. one caught sending a gradient that contradicts its last)."""
        self.remove_many(np.array([partition]))

    def remove_many(self, partitions: np.ndarray) -> None:
        """Drop these clients' entries."""
        self._store.drop(partitions)

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
        self.update_many(np.array([partition]), np.array([float(rows)]), np.asarray(gradient)[None], point)

    def update_many(self, partitions: np.ndarray, rows: np.ndarray, gradients: np.ndarray, point: np.ndarray) -> None:
        """Replace the entries of K distinct clients, all heard at one point.

        Parameters
        ----------
        partitions : ndarray of int, shape (K,)
        rows : ndarray of shape (K,)
            N_i, their weights.
        gradients : ndarray of shape (K, d)
        point : ndarray of shape (d,)
            w, where every one of them was taken.
        """
        self._store.put(partitions, np.asarray(rows, dtype=float), gradients, np.asarray(point, dtype=float))

    def estimate(self, w: np.ndarray, curvature: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
        """ĝ(w) = Ḡ + Σ̂·(w − W̄), shape (d,).

        Ḡ and W̄ are recomputed from the table each call (O(clients·d), no running sums
        to drift).

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
        members = self._store.members()
        if not len(members):
            raise ValueError("no client in the gradient table yet")
        rows = self._store.rows[members]
        gradients = self._store.gradients[members]
        if self.current(w):  # every client replied at w: their weighted mean in partition order
            return np.average(gradients, axis=0, weights=rows)
        total = rows.sum()
        mean_gradient = rows @ gradients / total
        if curvature is None:
            return mean_gradient
        mean_point = rows @ self._store.points[members] / total
        return mean_gradient + curvature(np.asarray(w, dtype=float) - mean_point)
