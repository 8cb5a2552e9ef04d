"""Curvature sources: where the server's preconditioner P ≈ (Σ + λI)⁻¹ comes from.

:class:`server.strategy.GradCovStrategy` keeps Flower's plumbing and the step
rule, and leaves P to a source. Each round the strategy hands the source the
round's stacked replies (:class:`shared.cohort.CohortReplies`) with a mask of
those it may learn from, calls :meth:`CurvatureSource.update` once, and reads
``preconditioner``. The sources:

- :class:`ProbeCurvature`: GradCov. Pool calibrated probe gradients into Σ̂
  (dense, or a low-rank sketch for large d), warm up with P = I/λ̂_max, then
  refresh P = (Σ̂ + λI)⁻¹ on a schedule; optionally stop probing once more probes
  save no round (:class:`shared.probe_budget.ProbeBudget`).
- :class:`OracleCurvature`: the true Σ, fixed from round 1 (a simulator's ceiling).
- :class:`HessianCurvature`: Newton, each client sends its XᵀX/N once.

Pure numpy, no Flower types: any server can drive a source.
"""

from __future__ import annotations

import numpy as np

from shared.calibration import estimator_coefficients
from shared.cohort import CohortReplies
from shared.estimators import CovariancePool, RoundScatter
from shared.lowrank import LowRankPreconditioner, SketchPool
from shared.preconditioner import default_ridge, ridge_preconditioner, warmup_preconditioner
from shared.probe_budget import ProbeBudget
from shared.robust import scatter_sizes

RIDGE = 1e-10  # for a known Σ or Hessian, relative to its tr/d: only there to keep a singular one invertible
DENSE_ESTIMATE_MAX_DIM = 2000  # a low-rank Σ̂ is built densely (for metrics) only up to this d
WHITEN_MAX_DIM = 2000  # above, P·scatter per client in the probe screen costs more than the round


class CurvatureSource:
    """The interface a curvature source offers the strategy, with its defaults.

    Attributes
    ----------
    preconditioner : ndarray of shape (d, d) or LowRankPreconditioner
        P, applied as ``P @ g``.
    version : int
        Bumped whenever P changes (the strategy resends P to clients that use it).
    refreshed_at : int or None
        The round P was last rebuilt from a curvature estimate; None before.
    gradients : int
        Probe gradients pooled so far.
    warmup_gradients : int or None
        Probe gradients needed before P is built from Σ̂; None if there is no warm-up.
    asks_hessians : bool
        Whether :meth:`wants_hessian` can be True (a source that never asks is not
        consulted node by node).
    """

    preconditioner: np.ndarray | LowRankPreconditioner
    version: int = 0
    refreshed_at: int | None = None
    gradients: int = 0
    warmup_gradients: int | None = None
    asks_hessians: bool = False  # whether wants_hessian can ever be True (else it is never asked)

    def wants_probes(self) -> bool:
        """Whether to ask clients for probe gradients this round."""
        return False

    def wants_hessian(self, node: int) -> bool:
        """Whether to ask this node for its Hessian this round (recorded as asked)."""
        return False

    def probe_sizes(self, replies: CohortReplies) -> np.ndarray | None:
        """Each reply's probe size for the robust screen (see :class:`ProbeCurvature`),
        or None when the replies carry no probes to screen."""
        return None

    def add(self, replies: CohortReplies, keep: np.ndarray) -> None:
        """Learn from the round's replies where ``keep`` (bool, (c,)) is True."""

    def update(self, server_round: int) -> None:
        """All of the round's replies are in: rebuild P if it is due."""

    def observe_gradient(self, gradient: np.ndarray) -> None:
        """The federation gradient ḡ (d,) the round stepped on (for sources that track progress)."""

    def estimate(self) -> np.ndarray | None:
        """The curvature estimate (d, d) behind P, to report; None when there is none to show."""
        return None

    def known(self) -> bool:
        """Whether there is a curvature to carry stale gradients along (else SAG)."""
        return self.estimate() is not None

    def apply(self, v: np.ndarray) -> np.ndarray:
        """Σ̂·v for a vector (d,) or the columns of a matrix (d, m); 0 without a dense Σ̂."""
        sigma = self.estimate()
        return np.zeros_like(v) if sigma is None else sigma @ v

    def warmed_up(self) -> bool:
        """Whether the estimate has pooled its warm-up (robust checks along Σ̂ trust it then)."""
        return self.warmup_gradients is not None and self.gradients >= self.warmup_gradients


class ProbeCurvature(CurvatureSource):
    """Σ̂ from calibrated probe gradients, and P = (Σ̂ + λI)⁻¹ from it.

    Each reply's probes are centred within the client and round, scaled by the
    calibration coefficient n/σ²_total (:func:`shared.calibration.estimator_coefficients`)
    and pooled over clients and rounds. Until ``warmup_gradients`` probes are
    pooled, P = I/λ̂_max (plain gradient descent at a safe step; P = 0 before any
    probe); then P = (Σ̂ + λI)⁻¹, rebuilt every ``refresh_every`` rounds.

    Parameters
    ----------
    dim : int
        d, the length of w.
    noise_levels : sequence of float
        The calibration multipliers the clients use: (c,) or, for differential
        injection, (c_low, c_high).
    batch_size : int
        n, the rows behind one probe.
    natural_var : float, default 0
        σ₀², the natural target-noise variance the clients subtract (squared target units).
    precondition : bool, default True
        False: pool the probes (for Σ̂) but keep P = I.
    ridge : float or None, default None
        λ; None takes ``ridge_fraction`` · tr(Σ̂)/d (dense) or · the mean eigenvalue
        (low rank) at each refresh.
    ridge_fraction : float, default 1e-3
        The relative ridge when ``ridge`` is None (also the ridge of the probe screen's P).
    refresh_every : int, default 1
        Rounds between rebuilds of P once warmed up.
    warmup_gradients : int or None, default None
        Probes pooled before the first (Σ̂ + λI)⁻¹; None: 10 · (rank or d).
    rank : int or None, default None
        None: dense Σ̂ and P (d × d). r: a Nyström sketch of
        min(2r + ``sketch_oversample``, d) columns and a low-rank-plus-ridge P
        applied with Woodbury (:mod:`shared.lowrank`), never d × d.
    sketch_oversample : int, default 10
        Extra sketch columns beyond 2r: a one-pass sketch tilts the subspace.
    seed : int, default 0
        Seeds the sketch's test matrix.
    max_gradients : int or None, default None
        Stop asking for probes once this many are pooled; None asks every round.
    probe_target : float or None, default None
        The relative excess risk the run aims at: stop probing once one more round
        of probes is predicted to save no round towards it (dense and
        preconditioned only; :class:`shared.probe_budget.ProbeBudget`). None: no
        adaptive budget.
    """

    def __init__(
        self,
        dim: int,
        noise_levels,
        batch_size: int,
        natural_var: float = 0.0,
        *,
        precondition: bool = True,
        ridge: float | None = None,
        ridge_fraction: float = 1e-3,
        refresh_every: int = 1,
        warmup_gradients: int | None = None,
        rank: int | None = None,
        sketch_oversample: int = 10,
        seed: int = 0,
        max_gradients: int | None = None,
        probe_target: float | None = None,
    ) -> None:
        self.dim = dim
        self.noise_levels = [float(c) for c in noise_levels]
        self.batch_size = batch_size
        self.natural_var = natural_var
        self.precondition = precondition
        self.ridge = ridge
        self.ridge_fraction = ridge_fraction
        self.refresh_every = refresh_every
        self.rank = rank
        self.max_gradients = max_gradients
        self.warmup_gradients = 10 * (rank or dim) if warmup_gradients is None else warmup_gradients
        levels = len(self.noise_levels)
        if rank is None:
            self.pool = CovariancePool(dim, levels)
            self.preconditioner = np.eye(dim) if not precondition else warmup_preconditioner(None, dim)
        else:
            sketch = min(2 * rank + sketch_oversample, dim)  # oversampled: a one-pass sketch tilts the subspace
            self.pool = SketchPool(dim, sketch, levels, seed)
            self.preconditioner = LowRankPreconditioner.scaled_identity(dim, 0.0 if precondition else 1.0)
        self.budget = (
            ProbeBudget(dim, levels, probe_target, self.warmup_gradients)
            if probe_target is not None and rank is None and precondition else None
        )
        self._first_gradient: np.ndarray | None = None  # round 1's ḡ: the budget's progress yardstick
        self._screened: tuple[np.ndarray, RoundScatter] | None = None  # this round's probes and their scatter
        self.version = 0
        self.refreshed_at = None

    @property
    def gradients(self) -> int:
        """Probe gradients pooled so far."""
        return self.pool.gradients

    def wants_probes(self) -> bool:
        """Until ``max_gradients`` are pooled (past that Σ̂ is as good as it gets for its
        cost) and while the adaptive budget predicts more probes save a round."""
        if self.max_gradients is not None and self.pool.gradients >= self.max_gradients:
            return False
        return self.budget is None or self.budget.probing

    def coefficients(self, local_rows: np.ndarray) -> np.ndarray:
        """The calibration coefficients (c, levels) of clients holding these row counts (c,)
        (computed once per distinct count)."""
        counts, index = np.unique(np.asarray(local_rows, dtype=np.int64), return_inverse=True)
        table = np.stack([
            estimator_coefficients(self.noise_levels, self.batch_size, int(rows), self.natural_var)
            for rows in counts
        ]) if len(counts) else np.zeros((0, len(self.noise_levels)))
        return table[index.reshape(-1)]

    def probe_sizes(self, replies: CohortReplies) -> np.ndarray | None:
        """Each reply's tr(P·Σ̂_i), with P from the pool plus this whole round (one lying
        client moves it by 1/K), or the plain trace for a low-rank pool or d above
        ``WHITEN_MAX_DIM`` (:func:`shared.robust.scatter_sizes`). None without probes."""
        if replies.probes.size == 0:
            return None
        coefs = self.coefficients(replies.local_rows)
        return scatter_sizes(replies.probes, coefs, self._whitener(replies.probes, coefs))

    def _whitener(self, probes: np.ndarray, coefficients: np.ndarray) -> np.ndarray | None:
        if not isinstance(self.pool, CovariancePool) or self.dim > WHITEN_MAX_DIM:
            return None
        scatter = self.pool.round_scatter(probes, coefficients)
        self._screened = (probes, scatter)  # pooled as is when the screen keeps every reply
        sigma = self.pool.estimate_with(scatter)
        lam = default_ridge(sigma, self.ridge_fraction) if sigma is not None else 0.0
        if not lam > 0:
            return None
        try:
            return ridge_preconditioner(sigma, lam)
        except ValueError:
            return None

    def add(self, replies: CohortReplies, keep: np.ndarray) -> None:
        """Pool the kept replies' probes with their calibration coefficients."""
        screened, self._screened = self._screened, None
        if replies.probes.size == 0 or not np.any(keep):
            return
        probes = replies.probes[keep]
        coefs = self.coefficients(replies.local_rows[keep])
        if screened is not None and screened[0] is replies.probes and np.all(keep):
            self.pool.add_scatter(screened[1])  # the scatter the screen already formed
        else:
            self.pool.add_many(probes, coefs)
        if self.budget is not None:
            self.budget.add_many(probes, coefs)

    def estimate(self) -> np.ndarray | None:
        """The pooled Σ̂ (d, d), or None before any probe arrived.

        In low-rank mode this builds U diag(s − b) Uᵀ + bI densely, for metrics
        only, and only up to d = ``DENSE_ESTIMATE_MAX_DIM`` (P never needs it).
        """
        if self.rank is None:
            return self.pool.estimate()
        parts = self.pool.factors(self.rank)
        if parts is None or self.dim > DENSE_ESTIMATE_MAX_DIM:
            return None
        U, s, bulk = parts
        return (U * (s - bulk)) @ U.T + bulk * np.eye(self.dim)

    def known(self) -> bool:
        """True once any probe is pooled."""
        return self.pool.gradients > 0

    def observe_gradient(self, gradient: np.ndarray) -> None:
        """Tell the probe budget how far the run has come: for least squares
        L(w) − L* = ½ ḡᵀΣ⁻¹ḡ ≈ ½ ḡᵀPḡ, relative to round 1's ḡ under the same P."""
        if self.budget is None:
            return
        if self._first_gradient is None:
            self._first_gradient = np.array(gradient, dtype=float)
        start = float(self._first_gradient @ (self.preconditioner @ self._first_gradient))
        now = float(gradient @ (self.preconditioner @ gradient))
        self.budget.decide(self.pool.estimate(), self.pool.gradients, now / start if start > 0 else 1.0)

    def update(self, server_round: int) -> None:
        """Warm-up P, or (Σ̂ + λI)⁻¹ when a refresh is due."""
        if not self.precondition:
            return
        if self.rank is not None:
            self._update_low_rank(server_round)
            return
        sigma_hat = self.estimate()
        if sigma_hat is None or self.pool.gradients < self.warmup_gradients:
            new = warmup_preconditioner(sigma_hat, self.dim)
        elif self._refresh_due(server_round):
            lam = self.ridge if self.ridge is not None else default_ridge(sigma_hat, self.ridge_fraction)
            try:
                new = ridge_preconditioner(sigma_hat, lam)
                self.refreshed_at = server_round
            except ValueError:  # Σ̂ + λI singular (e.g. a differential Σ̂ with no positive part yet)
                new = warmup_preconditioner(sigma_hat, self.dim)
        else:
            return
        if not np.array_equal(new, self.preconditioner):
            self.preconditioner = new
            self.version += 1

    def _refresh_due(self, server_round: int) -> bool:
        return self.refreshed_at is None or server_round - self.refreshed_at >= self.refresh_every

    def _update_low_rank(self, server_round: int) -> None:
        parts = self.pool.factors(self.rank)
        if parts is None:
            return
        U, s, bulk = parts
        if self.pool.gradients < self.warmup_gradients:
            top = float(s[0]) if len(s) else 0.0
            self.preconditioner = LowRankPreconditioner.scaled_identity(self.dim, 1.0 / top if top > 0 else 0.0)
        elif self._refresh_due(server_round):
            mean_eig = (float(s.sum()) + bulk * (self.dim - len(s))) / self.dim
            lam = self.ridge if self.ridge is not None else self.ridge_fraction * mean_eig
            if bulk + lam <= 0:
                return
            self.preconditioner = LowRankPreconditioner(U, s, bulk, lam)
            self.refreshed_at = server_round
        self.version += 1  # cheaper than comparing two factorisations: resend P to local-step clients


class OracleCurvature(CurvatureSource):
    """P = (Σ + λI)⁻¹ from the true Σ, fixed from round 1; no probes.

    Only a simulator knows Σ: this is the ceiling for any Σ-based preconditioner.
    It shows no estimate (nothing is estimated), but carries stale gradients of
    clients that sat a round out along the true Σ, so the ceiling holds under
    partial participation too.

    Parameters
    ----------
    sigma : ndarray of shape (d, d)
        The true Σ; λ = ``RIDGE`` · tr(Σ)/d.
    """

    def __init__(self, sigma: np.ndarray) -> None:
        dim = sigma.shape[0]
        self.sigma = sigma
        self.preconditioner = ridge_preconditioner(sigma, RIDGE * np.trace(sigma) / dim)
        self.refreshed_at = 0

    def known(self) -> bool:
        return True

    def apply(self, v: np.ndarray) -> np.ndarray:
        return self.sigma @ v


class HessianCurvature(CurvatureSource):
    """Newton: each node sends its local Hessian XᵀX/N once (d² floats), then gradients.

    P is the inverse of the row-weighted mean of the Hessians received so far
    (λ = ``RIDGE`` · tr/d), rebuilt whenever a new one arrives; P = 0 (no step)
    before the first. The second-order method that does not hide the curvature;
    its uplink bytes include the Hessians.

    Parameters
    ----------
    dim : int
        d.
    """

    asks_hessians = True

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.preconditioner = warmup_preconditioner(None, dim)
        self._hessian_sum = np.zeros((dim, dim))
        self._rows = 0
        self._rows_in_use = 0
        self._asked: set[int] = set()
        self._counted: set[int] = set()  # partitions whose Hessian is in the sum

    def wants_hessian(self, node: int) -> bool:
        """True the first time a node is asked."""
        if node in self._asked:
            return False
        self._asked.add(node)
        return True

    def add(self, replies: CohortReplies, keep: np.ndarray) -> None:
        """Add each new Hessian, weighted by the client's rows, once per partition (a node
        back under a new id after a restart or resume is asked again, and counted once)."""
        for index in sorted(replies.hessians):
            partition = int(replies.partitions[index])
            if partition not in self._counted:
                self._counted.add(partition)
                rows = int(replies.local_rows[index])
                self._hessian_sum += rows * replies.hessians[index]
                self._rows += rows

    def estimate(self) -> np.ndarray | None:
        """The row-weighted mean of the Hessians received so far."""
        return self._hessian_sum / self._rows if self._rows else None

    def update(self, server_round: int) -> None:
        """Invert the mean Hessian when a new one arrived this round."""
        if self._rows == self._rows_in_use:
            return
        hessian = self.estimate()
        self.preconditioner = ridge_preconditioner(hessian, RIDGE * np.trace(hessian) / self.dim)
        self._rows_in_use = self._rows
        self.refreshed_at = server_round
        self.version += 1
