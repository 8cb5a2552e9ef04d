"""Which connected nodes take part in a round: a seeded draw of positions in the grid's node list."""

from __future__ import annotations

import numpy as np
from flwr.serverapp import Grid


def sample_positions(grid: Grid, fraction: float, seed: int, server_round: int,
                     min_available_nodes: int) -> tuple[list[int], list[int]]:
    """The grid's node ids and the sorted positions drawn among them for one round.

    Parameters
    ----------
    grid : Grid
        The round's grid; its ``get_node_ids()`` order (partition order on a
        :class:`server.partition_grid.PartitionGrid`) makes the draw deterministic.
    fraction : float
        Fraction of nodes sampled, at least one node.
    seed : int
        The run's seed; with ``server_round`` it seeds the draw.
    server_round : int
        The round, from 1.
    min_available_nodes : int
        Refuse the round (RuntimeError) with fewer connected nodes.

    Returns
    -------
    nodes : list of int
        Every connected node id, in the grid's order.
    positions : list of int
        The ascending positions in ``nodes`` drawn for this round.
    """
    nodes = list(grid.get_node_ids())
    if len(nodes) < min_available_nodes:
        raise RuntimeError(f"{len(nodes)} nodes connected, {min_available_nodes} required")
    k = max(1, int(round(fraction * len(nodes))))
    rng = np.random.default_rng([seed, server_round])
    return nodes, np.sort(rng.choice(len(nodes), k, replace=False)).tolist()
