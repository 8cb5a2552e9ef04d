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

Two refinements use each client's previous entry as well as its latest:
``change`` gives Σ times a step from the clients heard at both of its ends (a
pair for the server's step memory in a round that missed clients), and measures
how far clients' curvatures differ; ``estimate`` then shrinks each absent
client's carried gradient towards the fresh clients' mean by how far its offset
may have drifted since it was heard.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# the least share of the rows behind a pair estimated from the clients heard at both
# of its points (GradientTable.change)
MIN_SHARE = 0.25


class LatestPerClient:
    """Each client's latest gradient, the point it was taken at and its weight, as dense
    arrays indexed by partition id (no Python object per client: a round of K replies
    is a few array operations, and a checkpoint pickles four arrays).

    Parameters
    ----------
    dim : int
        d, the length of each gradient and point.
    """

    def __init__(self, dim: int, keep_previous: bool = False) -> None:
        self.dim = dim
        self.keep_previous = keep_previous
        self.present = np.zeros(0, dtype=bool)
        self.rows = np.zeros(0)
        self.gradients = np.zeros((0, dim))
        self.points = np.zeros((0, dim))
        # with keep_previous: each client's entry before its latest (its last two replies
        # give Σ_i times the step between them exactly)
        self.previous = np.zeros(0, dtype=bool)
        self.previous_gradients = np.zeros((0, dim if keep_previous else 0))
        self.previous_points = np.zeros((0, dim if keep_previous else 0))

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
        width = self.dim if self.keep_previous else 0
        self.previous = np.concatenate([self.previous, np.zeros(new - size, dtype=bool)])
        self.previous_gradients = np.concatenate([self.previous_gradients, np.zeros((new - size, width))])
        self.previous_points = np.concatenate([self.previous_points, np.zeros((new - size, width))])

    def put(self, pids: np.ndarray, rows: np.ndarray, gradients: np.ndarray, point: np.ndarray) -> None:
        """Replace the entries of distinct partitions ``pids`` (K,) with gradients (K, d)
        of weights ``rows`` (K,), all taken at ``point`` (d,)."""
        pids = np.asarray(pids, dtype=np.int64)
        if not len(pids):
            return
        self._reserve(int(pids.max()) + 1)
        if self.keep_previous:
            self.previous[pids] = self.present[pids]
            self.previous_gradients[pids] = self.gradients[pids]
            self.previous_points[pids] = self.points[pids]
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
        self._store = LatestPerClient(dim, keep_previous=True)
        self.drift: float | None = None  # ρ², set by change(): offsets' drift per unit step

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

    def estimate(
        self,
        w: np.ndarray,
        curvature: Callable[[np.ndarray], np.ndarray] | None,
        metric: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """ĝ(w), shape (d,): Ḡ + Σ̂·(w − W̄), or, with ``metric``, each absent client's
        carried gradient shrunk towards the fresh clients' mean.

        Ḡ and W̄ are recomputed from the table each call (O(clients·d), no running sums
        to drift).

        **Shrinkage** (``metric`` given, and the drift known from an earlier ``change``).
        An absent client's gradient at w is the fresh clients' mean ḡ_R(w) plus its own
        offset from the mean, and its carried gradient c_i = g_i + Σ̂(w − w_i) keeps the
        offset it had at w_i. Two predictions, two errors: c_i errs by how far its
        offset moved since, (Σ_i − Σ)(w − w_i), of size ρ²·‖w − w_i‖²_Σ̂ (ρ² the drift
        measured along the last step); ḡ_R errs by the whole offset, of the size σ² the
        fresh clients' own offsets have now. The estimate takes
        λ_i c_i + (1 − λ_i) ḡ_R with λ_i = σ² / (σ² + ρ²‖w − w_i‖²_Σ̂): a client heard
        across a long step is mostly imputed, one heard at the last point mostly carried.
        Both sizes are medians over clients (in the ``metric`` norm), so one lying client
        does not set them.

        Parameters
        ----------
        w : ndarray of shape (d,)
            The point the federation's gradient is wanted at.
        curvature : callable or None
            v ↦ Σ̂·v for (d,) vectors or the columns of (d, m) matrices; None carries
            the stale gradients forward unchanged (SAG).
        metric : callable or None
            v ↦ M·v (columns too), the norm the two errors are sized in (the server
            passes its preconditioner P: the step's error is P times ĝ's); None: no
            shrinkage.

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
        if curvature is not None and metric is not None and self.drift is not None:
            points = self._store.points[members]
            fresh = np.all(points == np.asarray(w), axis=1)
            if fresh.sum() >= 2:
                fresh_mean = rows[fresh] @ gradients[fresh] / rows[fresh].sum()
                offsets = _median_norm2(gradients[fresh] - fresh_mean, metric)
                moves = np.asarray(w, dtype=float) - points[~fresh]  # (A, d)
                carried = gradients[~fresh] + curvature(moves.T).T
                drift = self.drift * np.einsum("ij,ij->i", moves, curvature(moves.T).T)
                keep = offsets / (offsets + drift) if offsets > 0 else np.zeros(len(moves))
                absent = keep[:, None] * carried + (1 - keep)[:, None] * fresh_mean
                return (rows[fresh] @ gradients[fresh] + rows[~fresh] @ absent) / total
        mean_gradient = rows @ gradients / total
        if curvature is None:
            return mean_gradient
        mean_point = rows @ self._store.points[members] / total
        return mean_gradient + curvature(np.asarray(w, dtype=float) - mean_point)

    def change(
        self,
        before: np.ndarray,
        w: np.ndarray,
        curvature: Callable[[np.ndarray], np.ndarray] | None = None,
        metric: Callable[[np.ndarray], np.ndarray] | None = None,
        min_share: float = MIN_SHARE,
    ) -> np.ndarray | None:
        """Σ·(w − before), shape (d,), from the clients heard at both points, or None.

        A client that replied at ``before`` and again at w gives its exact change
        g_i(w) − g_i(before) = Σ_i (w − before). Their row-weighted mean estimates the
        federation's Σ·(w − before) (a ratio estimator: Σ is the row-weighted mean of
        the Σ_i), whatever the other clients did. So a round that missed clients
        still gives the step memory a pair, its error only the spread of the Σ_i
        between the clients heard and the rest. None when those clients hold less
        than ``min_share`` of the table's rows (too few to stand for the rest).

        With ``curvature`` and ``metric``, the spread of the clients' changes about
        their mean also sets ``drift``: ρ² = median_i ‖(Σ_i − Σ̄)s‖²_M / ‖s‖²_Σ̂ for the
        step s = w − before, how fast a client's offset from the mean moves per unit
        step (what ``estimate`` shrinks by).

        Parameters
        ----------
        before, w : ndarray of shape (d,)
            The two points (``before`` the earlier).
        curvature : callable or None
            v ↦ Σ̂·v, the norm steps are measured in.
        metric : callable or None
            v ↦ M·v (columns too), the norm offsets are measured in.
        min_share : float
            The least share of the table's rows the clients heard at both points must hold.
        """
        store = self._store
        members = store.members()
        if not len(members):
            return None
        rows = store.rows[members]
        both = (
            store.previous[members]
            & np.all(store.points[members] == np.asarray(w), axis=1)
            & np.all(store.previous_points[members] == np.asarray(before), axis=1)
        )
        heard = rows[both].sum()
        if heard == 0 or heard < min_share * rows.sum():
            return None
        changes = store.gradients[members[both]] - store.previous_gradients[members[both]]
        mean = rows[both] @ changes / heard
        step = np.asarray(w, dtype=float) - np.asarray(before, dtype=float)
        if curvature is not None and metric is not None and both.sum() >= 2:
            length = float(step @ curvature(step))
            if length > 0:
                self.drift = _median_norm2(changes - mean, metric) / length
        return mean


def _median_norm2(vectors: np.ndarray, metric: Callable[[np.ndarray], np.ndarray]) -> float:
    """The median over rows v of vectors (K, d) of vᵀ·M·v (``metric``: v ↦ M·v on columns)."""
    return float(np.median(np.einsum("ij,ij->i", vectors, metric(vectors.T).T)))
