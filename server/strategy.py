"""GradCovStrategy: recover Σ from calibrated client gradients and precondition with it.

A Flower Message-API strategy (``flwr.serverapp.strategy.Strategy``): it can run
under ``strategy.start(...)`` in any Flower app whose ClientApp answers the
protocol in :mod:`shared.protocol`, or be driven round by round (fedsigma's
ServerApp does that to stop at a target and record oracle metrics).
"""

from __future__ import annotations

import math
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
from shared.cohort import CohortReplies, CohortRequest
from shared.curvature import CurvatureSource, ProbeCurvature
from shared.gradient_table import GradientTable
from shared.lbfgs import LBFGSMemory
from shared.lowrank import LowRankPreconditioner
from shared.robust import CURVATURE_BAND, ReplyHistory, curvature_ratios
from shared.secant import SecantMemory, gradients_are_exact

MAX_PROBE_BOOST = 2.0  # dropouts raise the probes asked of the others at most this much


class GradCovStrategy(Strategy):
    """Gradient-covariance preconditioned FedSGD, as a Flower Message-API strategy.

    Each round the sampled clients return ``probes`` calibrated mini-batch
    gradients at w (per noise level) and a training gradient. The curvature
    source (by default :class:`shared.curvature.ProbeCurvature`) pools the
    within-client centred probe scatter into Σ̂ (rescaled by n/σ²_total) and
    keeps P = (Σ̂ + λI)⁻¹ (before its warm-up, P = I/λ̂_max: plain GD at a safe
    step). The strategy keeps the Flower plumbing and the step rule:
    w ← w − η·P·ĝ, with ĝ the whole federation's gradient (this round's replies
    plus every other client's latest one carried along Σ̂ and shrunk towards the
    fresh mean, :class:`shared.gradient_table.GradientTable`), corrected over past
    steps by a secant (or L-BFGS) memory when the gradients are exact.

    Parameters
    ----------
    dim : int
        d, the length of the parameter vector ``w``.
    learning_rate : float, default 0.5
        η, the server step size (applied to P·ĝ; a cap on the memory's step).
    fraction_train : float, default 1.0
        Fraction of connected nodes sampled per round (at least one).
    min_available_nodes : int, default 1
        Nodes to wait for before the first round.
    batch_size : int, default 64
        n, the rows in one probe batch (and in a training mini-batch).
    probes : int, default 4
        Probe gradients per client, round and noise level; 0 asks for none
        (plain FedSGD when ``precondition`` is off). During Σ̂'s warm-up, a share of
        sampled clients that did not reply raises it for the others (up to
        ``MAX_PROBE_BOOST`` times), so dropouts do not lengthen the warm-up.
    calibration : float, default 1.0
        c: clients make the total target-noise variance c·n (squared target units).
    natural_var : float, default 0.0
        σ₀², the natural target-noise variance the clients subtract (0 if unknown).
    differential_low : float or None, default None
        If set, differential injection: a second level at differential_low·c·n;
        Σ̂ is the scaled difference of the two covariances.
    precondition : bool, default True
        False: P = I always (FedSGD).
    ridge : float or None, default None
        λ; None → ``ridge_fraction``·tr(Σ̂)/d at each refresh.
    ridge_fraction : float, default 1e-3
        The relative ridge when ``ridge`` is None.
    refresh_every : int, default 1
        Rounds between rebuilds of P once warmed up.
    warmup_gradients : int or None, default None
        Probes pooled before the first (Σ̂ + λI)⁻¹; None: 10·(rank or d).
    train_gradient : {"full", "minibatch"}, default "full"
        The clients' training gradient: all local rows, or one n-row batch.
    noisy_targets : bool, default False
        Clients train on calibrated noisy targets.
    local_steps : int, default 0
        0: clients send gradients. > 0: clients take that many P-preconditioned
        steps with ``local_learning_rate`` and send the update, which the server adds.
    local_learning_rate : float, default 0.5
        The clients' local step size (``local_steps`` > 0).
    seed : int, default 0
        Seeds client sampling (the same positions in the grid's node list every
        run) and the low-rank sketch.
    line_search_memory : int, default 20
        With exact gradients (full local data, clean targets), move each round to
        the exact minimiser over the last this many steps, and size the next step
        along the previous one, from the gradient changes the steps caused
        (:class:`shared.secant.SecantMemory`; no extra messages). A step's change
        comes from ĝ when every client of the table replied at both ends, else (once
        Σ̂ is warmed up, with the "secant" rule) from the clients that did, when at
        least 3 holding a quarter of the table's rows did
        (:meth:`shared.gradient_table.GradientTable.change`). While the rounds so far fit in the memory and P is fixed,
        this is preconditioned conjugate gradients; with P = I (``precondition``
        off) it is federated CG, the ``fedsgd-memory`` rival. 0 = plain steps.
    rank : int or None, default None
        None: dense Σ̂ and P (d × d). An int r: low-rank-plus-ridge, a Nyström
        sketch of 2r + ``sketch_oversample`` columns and P applied with the
        Woodbury identity, never forming a d × d matrix (for large d).
    sketch_oversample : int, default 10
        Extra sketch columns beyond 2r.
    max_gradients : int or None, default None
        Stop asking for probes once this many are pooled (saves uplink bytes);
        None probes every round.
    step_rule : {"secant", "lbfgs"}, default "secant"
        What the memory of the last ``line_search_memory`` steps does: "secant" as
        above; "lbfgs" steps along the L-BFGS two-loop direction H·ĝ with a unit
        step (:class:`shared.lbfgs.LBFGSMemory`; the first step, before any
        curvature pair, is w − η·P·ĝ), the ``fedlbfgs`` rival.
    memory_on_inexact : bool, default False
        Use the memory every round, as if ĝ were exact, even when it is not (sampled
        clients, dropouts, mini-batches, noisy targets): CG and L-BFGS assume exact
        gradients, and the rivals run that way anyway, to show what happens. gradcov
        keeps it off.
    probe_target : float or None, default None
        The adaptive probe budget (dense Σ̂ only): stop asking for probes once one
        more round of them is predicted to save no round towards this relative
        excess risk (:class:`shared.probe_budget.ProbeBudget`). None: probe every
        round (up to ``max_gradients``).
    label_clip : float or None, default None
        B: clients clip probe targets to [−B, B] before adding noise, so each
        probe is a μ = 2B/σ_inj Gaussian mechanism on the labels. The training
        gradient keeps the raw targets. None: no clipping.
    probe_dtype : {"float64", "float32", "float16"}, default "float64"
        The dtype clients send probes in (widened to float64 before pooling);
        the training gradient always travels in float64.
    curvature : CurvatureSource or None, default None
        Where P comes from (:mod:`shared.curvature`). None builds a
        :class:`~shared.curvature.ProbeCurvature` from the parameters above;
        :class:`~shared.curvature.OracleCurvature` (the true Σ) and
        :class:`~shared.curvature.HessianCurvature` (Newton) make the baselines.

    Examples
    --------
    A plain Flower ServerApp, with this project's ClientApp on the other side:

    >>> import numpy as np
    >>> from flwr.app import Array, ArrayRecord, Context
    >>> from flwr.serverapp import Grid, ServerApp
    >>> from server.strategy import GradCovStrategy
    >>> app = ServerApp()
    >>> @app.main()
    ... def main(grid: Grid, context: Context) -> None:
    ...     strategy = GradCovStrategy(dim=20, batch_size=32, probes=8, warmup_gradients=160)
    ...     result = strategy.start(grid=grid, initial_arrays=ArrayRecord({"w": Array(np.zeros(20))}),
    ...                             num_rounds=5)
    ...     print(result.arrays["w"].numpy().shape)
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
        probe_dtype: str = "float64",
        curvature: CurvatureSource | None = None,
    ) -> None:
        if step_rule not in ("secant", "lbfgs"):
            raise ValueError(f"step_rule must be 'secant' or 'lbfgs', got {step_rule!r}")
        self.dim = dim
        self.learning_rate = learning_rate
        self.fraction_train = fraction_train
        self.min_available_nodes = min_available_nodes
        self.batch_size = batch_size
        self.noise_levels = (
            [calibration] if differential_low is None else [differential_low * calibration, calibration]
        )
        self.natural_var = natural_var
        self.label_clip = label_clip
        self.probe_dtype = probe_dtype
        self.precondition = precondition
        self.train_gradient = train_gradient
        self.noisy_targets = noisy_targets
        self.local_steps = local_steps
        self.local_learning_rate = local_learning_rate
        self.seed = seed
        if curvature is None:
            curvature = ProbeCurvature(
                dim, self.noise_levels, batch_size, natural_var, precondition=precondition, ridge=ridge,
                ridge_fraction=ridge_fraction, refresh_every=refresh_every, warmup_gradients=warmup_gradients,
                rank=rank, sketch_oversample=sketch_oversample, seed=seed, max_gradients=max_gradients,
                probe_target=probe_target if probes > 0 else None,
            )
        else:
            probes = 0  # a source that knows its curvature needs no probes
        self.probes = probes
        self.curvature = curvature
        self._sent: dict[int, int] = {}  # node → version of P it holds (local steps only)
        self._weights = np.zeros(dim)
        self.line_search_memory = line_search_memory
        self.secant = SecantMemory(min(line_search_memory, dim)) if line_search_memory > 0 else None
        self.step_rule, self.memory_on_inexact = step_rule, memory_on_inexact
        self.lbfgs = LBFGSMemory(line_search_memory) if self.secant is not None and step_rule == "lbfgs" else None
        self._repliers: tuple[int, ...] = ()  # partitions behind the gradients in the memory
        self._asked = 0  # nodes sampled so far (rounds whose replies came back)
        self._replied = 0  # … and how many of them replied
        self._sampled = 0  # nodes sampled this round
        # every client's latest gradient: ĝ of the whole federation (and its previous one
        # where the secant memory can take pairs from the clients heard at both ends)
        self.table = GradientTable(dim, keep_previous=self._exact_gradients() and self.lbfgs is None)
        self.history = ReplyHistory(dim)  # every client's last gradient, to check its next one

    # -- what callers read -------------------------------------------------
    @property
    def preconditioner(self) -> np.ndarray | LowRankPreconditioner:
        """P, the current preconditioner (d, d), or its low-rank factors."""
        return self.curvature.preconditioner

    @property
    def sigma_hat(self) -> np.ndarray | None:
        """The curvature estimate Σ̂ (d, d) behind P, or None when there is none to show
        (no probe yet, the oracle, or a low-rank Σ̂ above d = 2000)."""
        return self.curvature.estimate()

    @property
    def warmup_gradients(self) -> int | None:
        """Probes pooled before P is built from Σ̂ (None for sources without a warm-up)."""
        return self.curvature.warmup_gradients

    def clients_restarted(self) -> None:
        """Forget which nodes hold the current P: after a resume their processes are new
        (context.state is gone), so P goes out again with the next message to each."""
        self._sent.clear()

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> GradCov: n=%d, probes=%d, levels=%s, η=%g", self.batch_size,
            self.probes, self.noise_levels, self.learning_rate)
        log(INFO, "\t└──> P from %s, warm-up %s gradients", type(self.curvature).__name__,
            self.curvature.warmup_gradients)

    # -- one round ---------------------------------------------------------
    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """Nodes for this round: a seeded draw of positions in the grid's node list."""
        nodes, positions = sample_positions(grid, self.fraction_train, self.seed, server_round,
                                            self.min_available_nodes)
        return [nodes[i] for i in positions]

    def round_config(self, server_round: int) -> p.RoundConfig:
        """What every sampled client computes this round (:class:`shared.protocol.RoundConfig`)."""
        return p.RoundConfig(
            server_round=server_round,
            batch_size=self.batch_size,
            probes=self._probes_to_ask() if self.curvature.wants_probes() else 0,
            noise_levels=tuple(float(c) for c in self.noise_levels),
            natural_var=float(self.natural_var),
            label_clip=float(self.label_clip or 0.0),
            train_gradient=self.train_gradient,
            noisy_targets=self.noisy_targets,
            local_steps=self.local_steps,
            local_learning_rate=float(self.local_learning_rate),
            probe_dtype=self.probe_dtype,
        )

    def _probes_to_ask(self) -> int:
        """``probes``, raised during Σ̂'s warm-up by the share of sampled clients that did not
        reply in earlier rounds (at most ``MAX_PROBE_BOOST`` times), so that dropouts do not
        lengthen the warm-up: the probes pooled per round, and their uplink bytes, stay
        as planned."""
        if self._asked == 0 or self._replied >= self._asked or self.curvature.warmed_up():
            return self.probes
        rate = max(self._replied / self._asked, 1.0 / MAX_PROBE_BOOST)
        return int(math.ceil(self.probes / rate))

    def train_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """The round's protocol on top of the caller's config."""
        return ConfigRecord({**dict(config), **self.round_config(server_round).to_config()})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send w (and P to clients that use it and lack the current one)."""
        self._weights = arrays[p.WEIGHTS].numpy().astype(float)
        cfg = self.train_config(server_round, config)
        messages = []
        nodes = self.sample(grid, server_round)
        self._sampled = len(nodes)
        for node in nodes:
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
        self._sampled = len(nodes)
        return CohortRequest(
            nodes=nodes,
            weights=self._weights,
            config=dict(cfg),
            send_hessian=self._hessian_requests(nodes, cfg),
            preconditioner=self.preconditioner if self.local_steps > 0 else None,
            preconditioner_sent=np.array([self._send_preconditioner(n) for n in nodes], dtype=bool),
        )

    def _hessian_requests(self, nodes: list[int], cfg: ConfigRecord) -> np.ndarray:
        """Which nodes this round's messages ask for XᵀX/N (bool, (len(nodes),)); a node
        config that is the round's own (the usual case) is not rebuilt per node."""
        if type(self).node_config is GradCovStrategy.node_config and not self.curvature.asks_hessians:
            return np.zeros(len(nodes), dtype=bool)
        return np.array([bool(self.node_config(n, cfg).get(p.SEND_HESSIAN, False)) for n in nodes])

    def node_config(self, node: int, config: ConfigRecord) -> ConfigRecord:
        """The config sent to one node: the round's, plus ``send-hessian`` the first time a
        Hessian source asks this node (override to vary it further per node)."""
        if not self.curvature.wants_hessian(node):
            return config
        first = ConfigRecord(dict(config))
        first[p.SEND_HESSIAN] = True
        return first

    def _send_preconditioner(self, node: int) -> bool:
        """Whether this round's message to ``node`` carries P: it runs local steps and lacks
        the current P (recorded as sent)."""
        if self.local_steps > 0 and self._sent.get(node, -1) < self.curvature.version:
            self._sent[node] = self.curvature.version
            return True
        return False

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Pool the probes, refresh P when due, and step w ← w − η·P·ĝ."""
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
        self._asked, self._replied = self._asked + max(self._sampled, len(replies)), self._replied + len(replies)
        if not len(replies):
            return None, MetricRecord({"clients-replied": 0})
        pids = replies.partitions.tolist()
        self.curvature.add(replies, probe_screen(pids, self.curvature.probe_sizes(replies)))
        self.curvature.update(server_round)
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
            new = self._step(mean)
            self.curvature.observe_gradient(mean)
        metrics = MetricRecord(
            {"clients-replied": len(pids), "gradients-pooled": self.curvature.gradients}
        )
        return ArrayRecord({p.WEIGHTS: Array(new)}), metrics

    # -- the step rule -------------------------------------------------------
    def _step(self, mean: np.ndarray) -> np.ndarray:
        """The next w from the federation gradient ĝ (d,) at w."""
        if self.secant is not None and self.memory_on_inexact:
            # the rivals (CG, L-BFGS) treat every ĝ as exact, as they assume: with sampled
            # clients, dropouts, mini-batches or noisy targets they run that way anyway
            return self._memory_step(mean, exact=True)
        if self._exact_gradients():
            # exact quadratic: correct over the past steps and size the step from them.
            # Differences of ĝ are Σ·step only for exact gradients of one set of clients:
            # they give the pair in rounds where every client in the table replied at
            # both ends (_pair_from_table gives the others' once Σ̂ is warmed up;
            # _sync_members handles a change in the table's clients)
            return self._memory_step(mean, exact=self.table.current(self._weights))
        return self._weights - self.learning_rate * (self.preconditioner @ mean)

    def _pairs_from_table(self) -> bool:
        """Whether rounds that missed clients still give the secant memory a pair (from
        the clients heard at both ends of the step, ``GradientTable.change``): exact
        per-client gradients, the secant step rule, and Σ̂ past its warm-up (before
        it, P is still changing scale and the memory restarts with the clients)."""
        return self._exact_gradients() and self.lbfgs is None and self.curvature.warmed_up()

    def _pair_from_table(self) -> None:
        """In a round the memory cannot learn from ĝ (some client of the table missed w,
        or the last point), the step that led to w joins it all the same, with Σ·step
        from the clients heard at both ends (``GradientTable.change``), unless too few
        were or their curvature along the step is implausible against Σ̂
        (``CURVATURE_BAND``); the memory's point moves to w either way."""
        if not self._pairs_from_table():
            return
        before = self.secant.last_point
        if before is not None and self.secant.knows_gradient() and self.table.current(self._weights):
            return  # ĝ is exact at both ends: _memory_step takes the pair from it
        change = None
        if before is not None:
            change = self.table.change(before, self._weights, self.curvature.apply, self._apply_preconditioner)
        if change is not None:
            step = (self._weights - before)[None]
            ratio = curvature_ratios(step, change[None], self.curvature.apply(step.T).T)[0]  # nan: not measurable
            low, high = CURVATURE_BAND
            if not low <= ratio <= high:
                change = None
        self.secant.observe_change(self._weights, change)

    def _sync_members(self) -> None:
        """When the table's clients changed, the memory's last gradient belongs to another
        quadratic. Clients joining after Σ̂'s warm-up keep the steps (the next pair comes
        from the clients heard at both ends); before it, or when a client was screened
        out of the table (the pairs it helped make may be poisoned), the memory starts
        afresh."""
        members = self.table.members()
        if members == self._repliers:
            return
        if self._pairs_from_table() and not set(self._repliers) - set(members):
            self.secant.forget_gradient()
        else:
            self._forget_steps()
        self._repliers = members

    def _apply_preconditioner(self, v: np.ndarray) -> np.ndarray:
        """P·v for a vector (d,) or the columns of a matrix (d, m)."""
        return self.preconditioner @ v

    def _forget_steps(self) -> None:
        """Start the memory afresh (its steps belong to another quadratic)."""
        self.secant = SecantMemory(self.secant.memory)
        if self.lbfgs is not None:
            self.lbfgs = LBFGSMemory(self.lbfgs.memory)

    def _memory_step(self, mean: np.ndarray, exact: bool) -> np.ndarray:
        """The next w from ĝ at w and the memory of past steps (``step_rule``); a round whose
        ĝ carried stale gradients (``exact`` False) adds no pair and sizes no later step."""
        if self.lbfgs is not None:
            if exact:
                self.lbfgs.observe(self._weights, mean)
            direction = self.lbfgs.direction(mean)
            if direction is None:  # no curvature pair yet: a plain first step
                return self._weights - self.learning_rate * (self.preconditioner @ mean)
            return self._weights - direction
        eta = self.learning_rate
        if exact:
            sized = self.secant.knows_gradient()  # both ends exact: the last step is sized from ĝ
            self.secant.observe(self._weights, mean)
            if sized:
                eta = self.secant.step_size(mean, self.learning_rate)
        start, mean = self.secant.minimise(self._weights, mean)
        direction = self.preconditioner @ mean
        if exact:
            self.secant.stepped(mean, direction, eta)
        else:  # ĝ carried stale gradients: the next step is not sized from this one
            self.secant.interrupted()
        return start - eta * direction

    def _federation_gradient(
        self, pids: list[int], grads: np.ndarray, rows: np.ndarray, keep: np.ndarray
    ) -> np.ndarray | None:
        """ĝ of the whole federation at w from this round's gradients (K, d) and the table
        of earlier ones (shared.gradient_table); a gradient that contradicts the client's
        previous one along Σ̂ (shared.robust.ReplyHistory, with exact per-client gradients
        and Σ̂ past its warm-up) is left out and the client's entry dropped. None when no
        client is in the table."""
        curvature = self.curvature.apply if self.curvature.known() else None
        exact = self.train_gradient == "full" and not self.noisy_targets
        if exact and curvature is not None and self.precondition and self.curvature.warmed_up():
            flagged = self.history.inconsistent(pids, grads, self._weights, curvature, self._apply_preconditioner)
            log_inconsistent(pids, flagged)
            keep = keep & ~flagged
        self.history.record(pids, grads, self._weights)
        partitions = np.asarray(pids, dtype=np.int64)
        self.table.update_many(partitions[keep], rows[keep], grads[keep], self._weights)
        self.table.remove_many(partitions[~keep])
        if not len(self.table):
            return None
        if self._exact_gradients() and not self.memory_on_inexact:
            self._sync_members()
        self._pair_from_table()
        if curvature is not None and self._pairs_from_table() and not self.table.current(self._weights):
            # carry absent clients forward with Σ itself along the remembered steps (their
            # error is then each one's Σ_i against Σ, not Σ̂'s), shrunk towards the fresh mean
            curvature = self.secant.corrected(curvature)
            return self.table.estimate(self._weights, curvature, self._apply_preconditioner, self.curvature.apply)
        return self.table.estimate(self._weights, curvature)

    def _exact_gradients(self) -> bool:
        """Whether clients send exact gradients (full local data, clean targets), so that
        with the table current the differences of ĝ reveal Σ (with P = I too: the memory
        then makes federated CG)."""
        return self.secant is not None and gradients_are_exact(
            self.train_gradient, self.noisy_targets, self.local_steps)

    # -- no federated evaluation: the simulator evaluates centrally ----------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No client-side evaluation round."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """No client-side evaluation round."""
        return None
