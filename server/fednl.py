"""FedNLStrategy: FedNL-PP (Safaryan et al., ICML 2022) as a Flower Message-API strategy.

The Newton-type rival that learns client Hessians through compressed
uplinks (see :mod:`shared.fednl`). With every client sampled each round it is
FedNL (Algorithm 1, option 2): w ← w − (H + l·I)⁻¹·∇f(w). With a fraction of
clients it is FedNL-PP (Algorithm 3): the server keeps each client's last
shifted point g_i and distance l_i, so clients that sit a round out still
count, and steps to w = (H + l·I)⁻¹·Σ_i p_i g_i.

Every client answers once before the first step (the algorithm starts from
all clients' g_i⁰): the first rounds ask every client not yet heard from, on
top of the sampled ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from server.sampling import sample_positions
from shared import fednl
from shared import protocol as p


class FedNLStrategy(Strategy):
    """FedNL / FedNL-PP with Rank-R or Top-K compressed Hessian learning.

    Parameters
    ----------
    dim : int
        d, the length of w.
    compressor : {"rank", "topk"}, default="rank"
        How clients compress their Hessian corrections.
    level : int, default=1
        R for Rank-R (R·(d + 1) floats a round), K for Top-K (K values + K indices).
    alpha : float, default=1.0
        Hessian learning rate α (1 for these contractive compressors).
    learning_rate : float, default=1.0
        η: the server moves w ← w + η·(w_FedNL − w); 1 is the method as published.
    fraction_train : float, default=1.0
        Fraction of nodes sampled per round (at least one).
    min_available_nodes : int, default=1
        Refuse to start a round with fewer connected nodes.
    seed : int, default=0
        Seeds the sampling: the same seed samples the same positions in the
        grid's node list every run.

    Attributes
    ----------
    sigma_hat : ndarray of shape (d, d) or None
        The server's Hessian estimate H = Σ_i p_i H_i (None before any reply).
    """

    def __init__(
        self,
        dim: int,
        *,
        compressor: str = "rank",
        level: int = 1,
        alpha: float = 1.0,
        learning_rate: float = 1.0,
        fraction_train: float = 1.0,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        if compressor not in fednl.COMPRESSORS:
            raise ValueError(f"compressor must be one of {fednl.COMPRESSORS}, got {compressor!r}")
        self.dim, self.compressor, self.level, self.alpha = dim, compressor, int(level), float(alpha)
        self.learning_rate = learning_rate
        self.fraction_train = fraction_train
        self.min_available_nodes = min_available_nodes
        self.seed = seed
        # per partition: rows N_i, the last shifted point g_i (d,), the last distance l_i
        self._rows: dict[int, int] = {}
        self._shifted: dict[int, np.ndarray] = {}
        self._distance: dict[int, float] = {}
        self._hessian_sums = np.zeros((dim, dim))  # Σ_i N_i H_i, mirrored from the corrections
        self._heard_nodes: set[int] = set()
        self._weights = np.zeros(dim)  # the point sent this round

    @property
    def sigma_hat(self) -> np.ndarray | None:
        """H = Σ_i p_i H_i over the clients heard from, p_i = N_i / Σ N_j (None before any)."""
        total = sum(self._rows.values())
        return self._hessian_sums / total if total else None

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FedNL%s: %s-%d compression, α=%g, η=%g", "-PP" if self.fraction_train < 1 else "",
            self.compressor, self.level, self.alpha, self.learning_rate)

    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """A seeded draw of positions in the grid's node list, plus every node not yet heard from."""
        nodes, positions = sample_positions(grid, self.fraction_train, self.seed, server_round,
                                            self.min_available_nodes)
        chosen = set(positions)
        return [node for i, node in enumerate(nodes) if i in chosen or node not in self._heard_nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send w and the compressor to the sampled nodes."""
        w = self._weights = arrays[p.WEIGHTS].numpy().astype(float)
        cfg = ConfigRecord(dict(config))
        cfg[p.MODE] = p.MODE_FEDNL
        cfg[p.ROUND] = server_round
        cfg[p.FEDNL_COMPRESSOR] = self.compressor
        cfg[p.FEDNL_LEVEL] = self.level
        cfg[p.FEDNL_ALPHA] = self.alpha
        nodes = self.sample(grid, server_round)
        self._heard_nodes.update(nodes)  # asked once: later rounds sample it like any other
        return [
            Message(RecordDict({p.ARRAYS: ArrayRecord({p.WEIGHTS: Array(w)}), p.CONFIG: ConfigRecord(dict(cfg))}),
                    dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round))
            for node in nodes
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Mirror each reply's Hessian correction, keep its g_i and l_i, and step."""
        valid = sorted((r for r in replies if not r.has_error()),
                       key=lambda r: int(r.content[p.METRICS][p.PARTITION_ID]))
        for reply in valid:
            pid = int(reply.content[p.METRICS][p.PARTITION_ID])
            rows = int(reply.content[p.METRICS][p.LOCAL_ROWS])
            arrays = {key: reply.content[p.ARRAYS][key].numpy() for key in reply.content[p.ARRAYS]}
            message = {key[len(p.FEDNL_PREFIX):]: v for key, v in arrays.items() if key.startswith(p.FEDNL_PREFIX)}
            self._hessian_sums += rows * self.alpha * fednl.expand(message, self.compressor, self.dim)
            self._rows[pid] = rows
            self._shifted[pid] = arrays[p.FEDNL_SHIFTED]
            self._distance[pid] = float(arrays[p.FEDNL_DISTANCE][0])
        if not self._rows:
            return None, MetricRecord({"clients-replied": 0})
        total = sum(self._rows.values())
        pids = sorted(self._rows)
        weights = np.array([self._rows[i] for i in pids], dtype=float) / total
        shifted = weights @ np.stack([self._shifted[i] for i in pids])
        shift = float(weights @ np.array([self._distance[i] for i in pids]))
        target = fednl.newton_step(self._hessian_sums / total, shift, shifted)
        new = target if self.learning_rate == 1.0 else self._weights + self.learning_rate * (target - self._weights)
        return ArrayRecord({p.WEIGHTS: Array(new)}), MetricRecord({"clients-replied": len(valid)})

    # -- no federated evaluation: the simulator evaluates centrally ----------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No client-side evaluation round."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """No client-side evaluation round."""
        return None
