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

# a pair estimated from the clients heard at both of its points (GradientTable.change)
# needs at least this share of the table's rows and this many clients; shrinkage
# (GradientTable.estimate) needs this many clients heard at w
MIN_SHARE = 0.25
MIN_CLIENTS = 3


class LatestPerClient:
    """Each client's latest gradient, the point it was taken at and its weight, as dense
    arrays indexed by partition id (no Python object per client: a round of K replies
    is a few array operations, and a checkpoint pickles four arrays, seven with
    ``keep_previous``).

    Parameters
    ----------
    dim : int
        d, the length of each gradient and point.
    keep_previous : bool, default False
        Also keep each client's entry before its latest (``previous``,
        ``previous_gradients``, ``previous_points``): its last two replies give Σ_i
        times the step between them.
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
    keep_previous : bool, default False
        Keep each client's entry before its latest too, for ``change`` (which gives
        None without it). The server sets it where pairs can come from the table
        (exact per-client gradients and the secant memory).

    Attributes
    ----------
    drift : float or None
        ρ², how fast a client's offset from the mean moves per unit step (squared,
        in ``change``'s norms), measured by the last ``change``; None: not measured.
    """

    def __init__(self, dim: int, keep_previous: bool = False) -> None:
        self.dim = dim
        self._store = LatestPerClient(dim, keep_previous=keep_previous)
        self.drift: float | None = None

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
        step_norm: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """ĝ(w), shape (d,): Ḡ + C·(w − W̄), or, with ``metric`` and ``step_norm``, each
        absent client's carried gradient shrunk towards the fresh clients' mean.

        Ḡ and W̄ are recomputed from the table each call (O(clients·d), no running sums
        to drift).

        **Shrinkage** (``metric`` and ``step_norm`` given, ``drift`` measured by this
        round's ``change``, and at least ``MIN_CLIENTS`` clients heard at w). An absent
        client's gradient at w is the fresh clients' mean ḡ_R(w) plus its own offset
        from the mean, and its carried gradient c_i = g_i + C(w − w_i) keeps the offset
        it had at w_i. Two predictions, two errors: c_i errs by how far its offset moved
        since, (Σ_i − Σ)(w − w_i), of size ρ²·‖w − w_i‖²_Σ̂ (ρ² = ``drift``); ḡ_R errs by
        the whole offset, of the size σ² the fresh clients' own offsets have now. The
        estimate takes λ_i c_i + (1 − λ_i) ḡ_R with λ_i = σ² / (σ² + ρ²‖w − w_i‖²_Σ̂)
        in [0, 1]: a client heard across a long step is mostly imputed, one heard at
        the last point mostly carried. The weights treat the two errors as independent,
        which holds near the optimum and while steps head towards it (an offset that
        grew along a step away from the optimum would be shrunk too much). Both sizes
        are medians over clients (in the ``metric`` norm), so a lying client does not
        set them.

        Parameters
        ----------
        w : ndarray of shape (d,)
            The point the federation's gradient is wanted at.
        curvature : callable or None
            C: v ↦ C·v for (d,) vectors, the curvature stale gradients are carried
            along (Σ̂, or Σ̂ corrected along remembered steps); None carries them
            forward unchanged (SAG).
        metric : callable or None
            v ↦ M·v on the columns of a (d, m) matrix, the norm the two errors are
            sized in (the server passes its preconditioner P: the step's error is P
            times ĝ's); None: no shrinkage.
        step_norm : callable or None
            v ↦ Σ̂·v on the columns of a (d, m) matrix, the norm moves are measured in
            (the one ``change`` measured ``drift`` in); None: no shrinkage.

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
        points = self._store.points[members]
        w = np.asarray(w, dtype=float)
        if curvature is not None and metric is not None and step_norm is not None and self.drift is not None:
            fresh = np.all(points == w, axis=1)
            if fresh.sum() >= MIN_CLIENTS:
                fresh_mean = rows[fresh] @ gradients[fresh] / rows[fresh].sum()
                offsets = _median_norm2(gradients[fresh] - fresh_mean, metric)
                moves = w - points[~fresh]  # (A, d)
                lengths = np.maximum(np.einsum("ij,ij->i", moves, step_norm(moves.T).T), 0.0)
                spread = offsets + self.drift * lengths
                keep = np.divide(offsets, spread, out=np.ones_like(spread), where=spread > 0)
                weights = rows[~fresh] * keep  # p_i λ_i (unnormalised)
                # Σ p_i [λ_i (g_i + C m_i) + (1 − λ_i) ḡ_R]: C applied once, to Σ p_i λ_i m_i
                absent = (weights @ gradients[~fresh] + (rows[~fresh] - weights).sum() * fresh_mean
                          + curvature(weights @ moves))
                return (rows[fresh] @ gradients[fresh] + absent) / total
        mean_gradient = rows @ gradients / total
        if curvature is None:
            return mean_gradient
        mean_point = rows @ points / total
        return mean_gradient + curvature(w - mean_point)

    def change(
        self,
        before: np.ndarray,
        w: np.ndarray,
        step_norm: Callable[[np.ndarray], np.ndarray] | None = None,
        metric: Callable[[np.ndarray], np.ndarray] | None = None,
        min_share: float = MIN_SHARE,
    ) -> np.ndarray | None:
        """Σ·(w − before), shape (d,), from the clients heard at both points, or None.

        A client that replied at ``before`` and again at w gives its exact change
        g_i(w) − g_i(before) = Σ_i (w − before). Their row-weighted mean estimates the
        federation's Σ·(w − before) (a ratio estimator: Σ is the row-weighted mean of
        the Σ_i), whatever the other clients did. So a round that missed clients
        still gives the step memory a pair, its error only the spread of the Σ_i
        between the clients heard and the rest. None when fewer than ``MIN_CLIENTS``
        were heard at both points, or when they hold less than ``min_share`` of the
        table's rows (too few to stand for the rest).

        Every call also sets ``drift`` for this step s = w − before: with
        ``step_norm`` and ``metric``, ρ² = median_i ‖(Σ_i − Σ̄)s‖²_M / ‖s‖²_Σ̂ from the
        spread of the clients' changes about their mean (how fast a client's offset
        from the mean moves per unit step: what ``estimate`` shrinks by); None when
        there is no pair, no norms, or sᵀΣ̂s ≤ 0 (``estimate`` then does not shrink).

        Parameters
        ----------
        before, w : ndarray of shape (d,)
            The two points (``before`` the earlier).
        step_norm : callable or None
            v ↦ Σ̂·v, the norm steps are measured in.
        metric : callable or None
            v ↦ M·v on the columns of a (d, m) matrix, the norm offsets are measured in.
        min_share : float
            The least share of the table's rows the clients heard at both points must hold.

        Returns
        -------
        ndarray of shape (d,) or None
            The estimated Σ·(w − before).
        """
        self.drift = None
        store = self._store
        members = store.members()
        if not len(members) or not store.keep_previous:
            return None
        rows = store.rows[members]
        fresh = members[np.all(store.points[members] == np.asarray(w), axis=1)]
        if len(fresh) < MIN_CLIENTS or store.rows[fresh].sum() < min_share * rows.sum():
            return None  # a sampled round: too few heard at w to make the share at all
        both = fresh[store.previous[fresh] & np.all(store.previous_points[fresh] == np.asarray(before), axis=1)]
        heard = store.rows[both].sum()
        if len(both) < MIN_CLIENTS or heard < min_share * rows.sum():
            return None
        changes = store.gradients[both] - store.previous_gradients[both]
        mean = store.rows[both] @ changes / heard
        if step_norm is not None and metric is not None:
            step = np.asarray(w, dtype=float) - np.asarray(before, dtype=float)
            length = float(step @ step_norm(step))
            if length > 0:
                self.drift = _median_norm2(changes - mean, metric) / length
        return mean


def _median_norm2(vectors: np.ndarray, metric: Callable[[np.ndarray], np.ndarray]) -> float:
    """The median over rows v of vectors (K, d) of vᵀ·M·v (``metric``: v ↦ M·v on columns),
    floored at 0."""
    return max(float(np.median(np.einsum("ij,ij->i", vectors, metric(vectors.T).T))), 0.0)
