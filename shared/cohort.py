"""One round's train requests and replies for a whole cohort, as stacked arrays.

The per-message path sends one Flower ``Message`` per sampled node and gets one
back. An engine that runs every client in one process (the inline engine) can
instead take one :class:`CohortRequest` and return one :class:`CohortReplies`
holding the same numbers: no Python object per client per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CohortRequest:
    """What one round asks of its sampled nodes.

    Parameters
    ----------
    nodes : list of int
        The sampled node ids, in sampling order.
    weights : ndarray of shape (d,)
        w, sent to every node.
    config : dict
        The round's protocol config (:mod:`shared.protocol` keys), the same for every node.
    send_hessian : ndarray of bool, shape (len(nodes),)
        Nodes asked for XᵀX/N this round as well.
    preconditioner : ndarray of shape (d, d) or None
        The P every sampled node holds this round (local steps only), else None.
    preconditioner_sent : ndarray of bool, shape (len(nodes),)
        Nodes that receive P in this round's message (the rest hold it already).
    """

    nodes: list[int]
    weights: np.ndarray
    config: dict
    send_hessian: np.ndarray
    preconditioner: np.ndarray | None
    preconditioner_sent: np.ndarray


@dataclass(frozen=True)
class CohortReplies:
    """Every reply of one round, stacked in one order (partition order once sorted).

    Parameters
    ----------
    partitions : ndarray of int, shape (c,)
    probes : ndarray of shape (c, levels, k, d)
        The probe gradients, in the round's ``probe-dtype`` as the clients send them
        (float64 once the server has checked them); (c, 0, 0, d) when none were asked for.
    updates : ndarray of shape (c, d)
        Training gradients (or local-step updates).
    num_examples : ndarray of int, shape (c,)
        Rows behind each training contribution.
    local_rows : ndarray of int, shape (c,)
        Each client's N.
    hessians : dict of int to ndarray (d, d)
        Position in this cohort → XᵀX/N, for the clients that sent one.
    metrics : dict of str to ndarray (c,)
        Further per-reply numbers, by their :mod:`shared.protocol` metric name.
    refusal : str or None
        Why requested nodes sent no reply (one line, naming a node), if any did not.
    """

    partitions: np.ndarray
    probes: np.ndarray
    updates: np.ndarray
    num_examples: np.ndarray
    local_rows: np.ndarray
    hessians: dict[int, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    refusal: str | None = None

    def __len__(self) -> int:
        return len(self.partitions)

    def in_partition_order(self) -> CohortReplies:
        """The same replies sorted by partition id."""
        order = np.argsort(self.partitions, kind="stable")
        return self if np.array_equal(order, np.arange(len(order))) else self.take(order)

    def take(self, positions: np.ndarray) -> CohortReplies:
        """The replies at these positions, in that order."""
        where = {int(old): new for new, old in enumerate(positions)}
        return CohortReplies(
            self.partitions[positions], self.probes[positions], self.updates[positions],
            self.num_examples[positions], self.local_rows[positions],
            {where[k]: h for k, h in self.hessians.items() if k in where},
            {name: values[positions] for name, values in self.metrics.items()}, self.refusal,
        )
