"""GradCovStrategy: recover Σ from calibrated client gradients and precondition with it.

A Flower Message-API strategy (``flwr.serverapp.strategy.Strategy``): it can run
under ``strategy.start(...)`` in any Flower app whose ClientApp answers the
protocol in :mod:`shared.protocol`, or be driven round by round (fedsigma's
ServerApp does that to stop at a target and record oracle metrics).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from server.pooling import cohort_replies, log_inconsistent, norm_screen, probe_screen
from server.sampling import sample_positions
from shared import protocol as p
from shared.calibration import estimator_coefficients
from shared.cohort import CohortReplies, CohortRequest
from shared.estimators import CovariancePool
from shared.gradient_table import GradientTable
from shared.lbfgs import LBFGSMemory
from shared.lowrank import LowRankPreconditioner, SketchPool
from shared.preconditioner import default_ridge, ridge_preconditioner, warmup_preconditioner
from shared.probe_budget import ProbeBudget
from shared.robust import ReplyHistory
from shared.secant import SecantMemory, gradients_are_exact


class GradCovStrategy(Strategy):
    """Gradient-covariance preconditioned FedSGD.

    Each round the sampled clients return ``probes`` calibrated mini-batch
    gradients at w (per noise level) and a training gradient. The server pools
    the within-client centred probe scatter into Σ̂ (rescaled by n/σ²_total),
    refreshes P = (Σ̂ + λI)⁻¹ every ``refresh_every`` rounds once
    ``warmup_gradients`` probes are pooled (before that P = I/λ̂_max, plain GD at
    a safe step), and steps w ← w − η·P·ḡ with ḡ the row-weighted mean gradient.

    Parameters
    ----------
    dim : int
        d, the length of the parameter vector ``w``.
    learning_rate : float
        η, the server step size (applied to P·ḡ).
    fraction_train : float
        Fraction of connected nodes sampled per round (at least one).
    batch_size, probes : int
        n rows per probe batch; probe gradients per client, round and level.
        probes = 0 asks for no probes (plain FedSGD when ``precondition`` is off).
    calibration : float
        c: clients make the total target-noise variance c·n.
    natural_var : float
        σ₀² the clients subtract from the injected variance (0 if unknown).
    differential_low : float or None
        If set, differential injection: a second level at differential_low·c·n;
        Σ̂ is the scaled difference of the two covariances.
    precondition : bool
        False: P = I always (FedSGD).
    ridge : float or None
        λ; None → ridge_fraction·tr(Σ̂)/d at each refresh.
    train_gradient : {"full", "minibatch"}
    noisy_targets : bool
        Clients train on calibrated noisy targets.
    local_steps : int
        0: clients send gradients. > 0: clients take that many P-preconditioned
        steps with ``local_learning_rate`` and send the update, which the server adds.
    seed : int
        Seeds client sampling: the same seed samples the same positions in the
        grid's node list every run.
    line_search_memory : int
        With exact gradients (every sampled client replied, full local data,
        clean targets), move each round to the exact minimiser over the last
        this many steps, and size the next step along the previous one, from the
        gradient changes the steps caused (:class:`shared.secant.SecantMemory`;
        no extra messages). While the rounds so far fit in the memory and P is
        fixed, this is preconditioned conjugate gradients; with P = I
        (``precondition`` off) it is federated CG, the ``fedsgd-memory`` rival.
        0 = plain steps w − η·P·ḡ.
    step_rule : {"secant", "lbfgs"}
        What the memory of the last ``line_search_memory`` steps does: "secant" as
        above; "lbfgs" steps along the L-BFGS two-loop direction H·ḡ with a unit step
        (:class:`shared.lbfgs.LBFGSMemory`; the first step, before any curvature
        pair, is w − η·P·ḡ) — the ``fedlbfgs`` rival.
    memory_on_inexact : bool
        Use the memory even when ḡ is not exact (sampled clients, dropouts,
        mini-batches, noisy targets), on whatever estimate of it there is: CG and
        L-BFGS assume exact gradients, and the rivals run that way anyway, to show
        what happens. gradcov keeps it off there.
    probe_target : float or None
        The adaptive probe budget (:class:`shared.probe_budget.ProbeBudget`, dense
        Σ̂ only): stop asking for probes once one more round of them is predicted to
        save no round towards this relative excess risk, judged from Σ̂'s split-half
        whitened error and ḡᵀPḡ relative to round 1's. None: probe every round (up
        to ``max_gradients``).
    rank : int or None
        None: dense Σ̂ and P (d × d). An int r: low-rank-plus-ridge — a Nyström
        sketch of 2r + ``sketch_oversample`` columns and P applied with the
        Woodbury identity, never forming a d × d matrix (for large d).
    max_gradients : int or None
        Stop asking for probes once this many are pooled (saves uplink bytes);
        None probes every round.
    label_clip : float or None
        B: clients clip probe targets to [−B, B] before adding noise, so each
        probe is a μ = 2B/σ_inj Gaussian mechanism on the labels. The training
        gradient keeps the raw targets. None: no clipping.
    """

    def __init__(
        self,
        dim: int,
        *,
        learning_rate: float = 0.5,
        fraction_train: float = 1.0,
        min_available_nodes: int = 1,
        batch_size: int = 64,
        probes: int = 4,
        calibration: float = 1.0,
        natural_var: float = 0.0,
        differential_low: float | None = None,
        precondition: bool = True,
        ridge: float | None = None,
        ridge_fraction: float = 1e-3,
        refresh_every: int = 1,
        warmup_gradients: int | None = None,
        train_gradient: str = "full",
        noisy_targets: bool = False,
        local_steps: int = 0,
        local_learning_rate: float = 0.5,
        seed: int = 0,
        line_search_memory: int = 20,
        rank: int | None = None,
        sketch_oversample: int = 10,
        max_gradients: int | None = None,
        step_rule: str = "secant",
        memory_on_inexact: bool = False,
        probe_target: float | None = None,
        label_clip: float | None = None,
    ) -> None:
        self.dim = dim
        self.learning_rate = learning_rate
        self.fraction_train = fraction_train
        self.min_available_nodes = min_available_nodes
        self.batch_size = batch_size
        self.probes = probes
        self.calibration = calibration
        self.natural_var = natural_var
        self.noise_levels = (
            [calibration] if differential_low is None else [differential_low * calibration, calibration]
        )
        self.precondition = precondition
        self.ridge = ridge
        self.ridge_fraction = ridge_fraction
        self.refresh_every = refresh_every
        self.warmup_gradients = 10 * (rank or dim) if warmup_gradients is None else warmup_gradients
        self.train_gradient = train_gradient
        self.noisy_targets = noisy_targets
        self.local_steps = local_steps
        self.local_learning_rate = local_learning_rate
        self.seed = seed
        self.max_gradients = max_gradients
        self.label_clip = label_clip
        self.rank = rank
        if rank is None:
            self.pool = CovariancePool(dim, len(self.noise_levels))
            self.preconditioner = np.eye(dim) if not precondition else warmup_preconditioner(None, dim)
        else:
            sketch = min(2 * rank + sketch_oversample, dim)  # oversampled: a one-pass sketch tilts the subspace
            self.pool = SketchPool(dim, sketch, len(self.noise_levels), seed)
            self.preconditioner = LowRankPreconditioner.scaled_identity(dim, 0.0 if precondition else 1.0)
        self.refreshed_at: int | None = None  # round of the last (Σ̂ + λI)⁻¹ refresh
        self._version = 0  # bumped whenever P changes, to resend it to clients that use it
        self._sent: dict[int, int] = {}
        self._weights = np.zeros(dim)
        self.line_search_memory = line_search_memory
        self.secant = SecantMemory(min(line_search_memory, dim)) if line_search_memory > 0 else None
        if step_rule not in ("secant", "lbfgs"):
            raise ValueError(f"step_rule must be 'secant' or 'lbfgs', got {step_rule!r}")
        self.step_rule, self.memory_on_inexact = step_rule, memory_on_inexact
        self.lbfgs = LBFGSMemory(line_search_memory) if self.secant is not None and step_rule == "lbfgs" else None
        self.budget = (
            ProbeBudget(dim, len(self.noise_levels), probe_target, self.warmup_gradients)
            if probe_target is not None and rank is None and precondition and probes > 0 else None
        )
        self._first_gradient: np.ndarray | None = None  # round 1's ḡ: the budget's progress yardstick
        self._repliers: tuple[int, ...] = ()  # partitions behind the gradients in the memory
        self.table = GradientTable(dim)  # every client's latest gradient: ḡ of the whole federation
        self.history = ReplyHistory()  # every client's last gradient, to check its next one

    # -- what callers read -------------------------------------------------
    @property
    def sigma_hat(self) -> np.ndarray | None:
        """The pooled estimate Σ̂ (d, d), or None before any probe arrived.

        In low-rank mode this builds U diag(s − b) Uᵀ + bI densely, for metrics
        only, and only up to d = 2000 (the strategy itself never needs it).
        """
        if self.rank is None:
            return self.pool.estimate()
        parts = self.pool.factors(self.rank)
        if parts is None or self.dim > 2000:
            return None
        U, s, bulk = parts
        return (U * (s - bulk)) @ U.T + bulk * np.eye(self.dim)

    def clients_restarted(self) -> None:
        """Forget which nodes hold the current P: after a resume their processes are new
        (context.state is gone), so P goes out again with the next message to each."""
        self._sent.clear()

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> GradCov: n=%d, probes=%d, levels=%s, η=%g", self.batch_size,
            self.probes, self.noise_levels, self.learning_rate)
        log(INFO, "\t└──> P: %s, warm-up %d gradients, refresh every %d",
            "(Σ̂+λI)⁻¹" if self.precondition else "I", self.warmup_gradients, self.refresh_every)

    # -- one round ---------------------------------------------------------
    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """Nodes for this round: a seeded draw of positions in the grid's node list."""
        nodes, positions = sample_positions(grid, self.fraction_train, self.seed, server_round,
                                            self.min_available_nodes)
        return [nodes[i] for i in positions]

    def train_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """The protocol the clients follow this round, on top of the caller's config."""
        cfg = ConfigRecord(dict(config))
        cfg[p.MODE] = p.MODE_GRADCOV
        cfg[p.ROUND] = server_round
        cfg[p.BATCH_SIZE] = self.batch_size
        # Once max_gradients probes are pooled, stop asking: Σ̂ is as good as it gets for its cost
        done = self.max_gradients is not None and self.pool.gradients >= self.max_gradients
        done = done or (self.budget is not None and not self.budget.probing)  # more probes save no round
        cfg[p.PROBES] = 0 if done else self.probes
        cfg[p.NOISE_LEVELS] = [float(c) for c in self.noise_levels]
        cfg[p.NATURAL_VAR] = float(self.natural_var)
        cfg[p.LABEL_CLIP] = float(self.label_clip or 0.0)
        cfg[p.TRAIN_GRADIENT] = self.train_gradient
        cfg[p.NOISY_TARGETS] = self.noisy_targets
        cfg[p.LOCAL_STEPS] = self.local_steps
        cfg[p.LOCAL_LR] = float(self.local_learning_rate)
        return cfg

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send w (and P to clients that use it and lack the current one)."""
        self._weights = arrays[p.WEIGHTS].numpy().astype(float)
        cfg = self.train_config(server_round, config)
        messages = []
        for node in self.sample(grid, server_round):
            out = ArrayRecord({p.WEIGHTS: Array(self._weights)})
            if self._send_preconditioner(node):
                out[p.PRECONDITIONER] = Array(self.preconditioner)
            content = RecordDict({p.ARRAYS: out, p.CONFIG: self.node_config(node, cfg)})
            messages.append(
                Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round))
            )
        return messages

    def plan_cohort(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> CohortRequest:
        """What :meth:`configure_train` would send, as one request for an engine that runs
        the sampled clients together (the same sampling, config and P bookkeeping)."""
        self._weights = arrays[p.WEIGHTS].numpy().astype(float)
        cfg = self.train_config(server_round, config)
        nodes = self.sample(grid, server_round)
        return CohortRequest(
            nodes=nodes,
            weights=self._weights,
            config=dict(cfg),
            send_hessian=np.array([bool(self.node_config(n, cfg).get(p.SEND_HESSIAN, False)) for n in nodes]),
            preconditioner=self.preconditioner if self.local_steps > 0 else None,
            preconditioner_sent=np.array([self._send_preconditioner(n) for n in nodes], dtype=bool),
        )

    def _send_preconditioner(self, node: int) -> bool:
        """Whether this round's message to ``node`` carries P: it runs local steps and lacks
        the current P (recorded as sent)."""
        if self.local_steps > 0 and self._sent.get(node, -1) < self._version:
            self._sent[node] = self._version
            return True
        return False

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Pool the probes, refresh P when due, and step w ← w − η·P·ḡ."""
        valid = sorted(
            (r for r in replies if not r.has_error()),
            key=lambda r: int(r.content[p.METRICS][p.PARTITION_ID]),
        )
        return self.aggregate_cohort(server_round, cohort_replies(valid))

    def aggregate_cohort(
        self, server_round: int, replies: CohortReplies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:meth:`aggregate_train` on the round's valid replies stacked in partition order
        (what the inline engine's cohort path returns; the message path stacks its replies)."""
        if not len(replies):
            return None, MetricRecord({"clients-replied": 0})
        for index, pooled in enumerate(self._probe_screen(replies)):
            if pooled:
                self.absorb(replies, index)
        self._update_preconditioner(server_round)
        pids = replies.partitions.tolist()
        updates = replies.updates
        weights = replies.num_examples.astype(float)
        keep = norm_screen(pids, updates)
        if self.local_steps > 0:
            if not keep.any():
                return None, MetricRecord({"clients-replied": len(pids)})
            new = self._weights + np.average(updates[keep], axis=0, weights=weights[keep])
        else:
            mean = self._federation_gradient(pids, updates, weights, keep)
            if mean is None:
                return None, MetricRecord({"clients-replied": len(pids)})
            if self._exact_gradients():
                # exact quadratic: correct over the past steps and size the step from them.
                # Gradient differences are Σ·step only for exact gradients of one set of
                # clients: pairs join the memory only in rounds where every client in the
                # table replied at w, and a new memory starts when the table's clients change
                if self.table.members() != self._repliers:
                    self._forget_steps()
                    self._repliers = self.table.members()
                new = self._memory_step(mean, exact=self.table.current(self._weights))
            elif self.secant is not None and self.memory_on_inexact:
                new = self._memory_step(mean, exact=True)  # CG / L-BFGS on an inexact ḡ: what the rivals do
            else:
                new = self._weights - self.learning_rate * (self.preconditioner @ mean)
            if self.budget is not None:
                self._decide_probes(mean)
        metrics = MetricRecord(
            {"clients-replied": len(pids), "gradients-pooled": self.pool.gradients}
        )
        return ArrayRecord({p.WEIGHTS: Array(new)}), metrics

    def _forget_steps(self) -> None:
        """Start the memory afresh (its steps belong to another quadratic)."""
        self.secant = SecantMemory(self.secant.memory)
        if self.lbfgs is not None:
            self.lbfgs = LBFGSMemory(self.lbfgs.memory)

    def _memory_step(self, mean: np.ndarray, exact: bool) -> np.ndarray:
        """The next w from ḡ at w and the memory of past steps (``step_rule``); a round whose
        ḡ carried stale gradients (``exact`` False) adds no pair and sizes no later step."""
        if self.lbfgs is not None:
            if exact:
                self.lbfgs.observe(self._weights, mean)
            direction = self.lbfgs.direction(mean)
            if direction is None:  # no curvature pair yet: a plain first step
                return self._weights - self.learning_rate * (self.preconditioner @ mean)
            return self._weights - direction
        eta = self.learning_rate
        if exact:
            self.secant.observe(self._weights, mean)
            eta = self.secant.step_size(mean, self.learning_rate)
        start, mean = self.secant.minimise(self._weights, mean)
        direction = self.preconditioner @ mean
        if exact:
            self.secant.stepped(mean, direction, eta)
        else:  # ḡ carried stale gradients: the next step is not sized from this one
            self.secant.interrupted()
        return start - eta * direction

    def _decide_probes(self, gradient: np.ndarray) -> None:
        """Tell the probe budget how far the run has come: for least squares
        L(w) − L* = ½ ḡᵀΣ⁻¹ḡ ≈ ½ ḡᵀPḡ, relative to round 1's ḡ under the same P."""
        if self._first_gradient is None:
            self._first_gradient = np.array(gradient, dtype=float)
        start = float(self._first_gradient @ (self.preconditioner @ self._first_gradient))
        now = float(gradient @ (self.preconditioner @ gradient))
        self.budget.decide(self.pool.estimate(), self.pool.gradients, now / start if start > 0 else 1.0)

    def _probe_screen(self, replies: CohortReplies) -> np.ndarray:
        """Which replies' probes join the pool (server.pooling.probe_screen); all when no probes."""
        if replies.probes.size == 0:
            return np.ones(len(replies), dtype=bool)
        coefs = np.stack([
            estimator_coefficients(self.noise_levels, self.batch_size, rows, self.natural_var)
            for rows in replies.local_rows.tolist()
        ])
        return probe_screen(replies.partitions.tolist(), replies.probes, coefs, self.pool, self.ridge_fraction)

    def _federation_gradient(
        self, pids: list[int], grads: np.ndarray, rows: np.ndarray, keep: np.ndarray
    ) -> np.ndarray | None:
        """ḡ of the whole federation at w from this round's gradients (K, d) and the table
        of earlier ones (shared.gradient_table); a gradient that contradicts the client's
        previous one along Σ̂ (shared.robust.ReplyHistory, with exact per-client gradients
        and Σ̂ past its warm-up) is left out and the client's entry dropped. None when no
        client is in the table."""
        curvature = self._curvature if self._curvature_known() else None
        exact = self.train_gradient == "full" and not self.noisy_targets
        if exact and curvature is not None and self.precondition and self.pool.gradients >= self.warmup_gradients:
            flagged = self.history.inconsistent(pids, grads, self._weights, curvature, lambda v: self.preconditioner @ v)
            log_inconsistent(pids, flagged)
            keep = keep & ~flagged
        self.history.record(pids, grads, self._weights)
        for pid, grad, weight, kept in zip(pids, grads, rows, keep):
            if kept:
                self.table.update(pid, weight, grad, self._weights)
            else:
                self.table.remove(pid)
        return self.table.estimate(self._weights, curvature) if len(self.table) else None

    def _curvature_known(self) -> bool:
        """Whether there is a curvature estimate to carry stale gradients along (else SAG)."""
        return self.pool.gradients > 0

    def _curvature(self, v: np.ndarray) -> np.ndarray:
        """Σ̂·v for a vector (d,) or the columns of a matrix (d, m); 0 without a dense Σ̂."""
        sigma = self.sigma_hat
        return np.zeros_like(v) if sigma is None else sigma @ v

    def _exact_gradients(self) -> bool:
        """Whether clients send exact gradients (full local data, clean targets), so that
        with the table current the differences of ḡ reveal Σ (with P = I too: the memory
        then makes federated CG)."""
        return self.secant is not None and gradients_are_exact(
            self.train_gradient, self.noisy_targets, self.local_steps)

    def node_config(self, node: int, config: ConfigRecord) -> ConfigRecord:
        """The config sent to one node (override to vary it per node)."""
        return config

    def absorb(self, replies: CohortReplies, index: int) -> None:
        """Take what one reply (``index`` in ``replies``) adds to the curvature estimate:
        its probes, into the pool."""
        probe = replies.probes[index]
        if probe.size:
            rows = int(replies.local_rows[index])
            coef = estimator_coefficients(self.noise_levels, self.batch_size, rows, self.natural_var)
            self.pool.add(probe, coef)
            if self.budget is not None:
                self.budget.add(probe, coef)

    def _update_preconditioner(self, server_round: int) -> None:
        if not self.precondition:
            return
        if self.rank is not None:
            self._update_low_rank(server_round)
            return
        sigma_hat = self.sigma_hat
        if sigma_hat is None or self.pool.gradients < self.warmup_gradients:
            new = warmup_preconditioner(sigma_hat, self.dim)
        elif self.refreshed_at is None or server_round - self.refreshed_at >= self.refresh_every:
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
            self._version += 1

    def _update_low_rank(self, server_round: int) -> None:
        parts = self.pool.factors(self.rank)
        if parts is None:
            return
        U, s, bulk = parts
        if self.pool.gradients < self.warmup_gradients:
            top = float(s[0]) if len(s) else 0.0
            self.preconditioner = LowRankPreconditioner.scaled_identity(self.dim, 1.0 / top if top > 0 else 0.0)
        elif self.refreshed_at is None or server_round - self.refreshed_at >= self.refresh_every:
            mean_eig = (float(s.sum()) + bulk * (self.dim - len(s))) / self.dim
            lam = self.ridge if self.ridge is not None else self.ridge_fraction * mean_eig
            if bulk + lam <= 0:
                return
            self.preconditioner = LowRankPreconditioner(U, s, bulk, lam)
            self.refreshed_at = server_round
        self._version += 1

    # -- no federated evaluation: the simulator evaluates centrally ----------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No client-side evaluation round."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """No client-side evaluation round."""
        return None
