"""Where a node's rows come from: its shard of the scenario's data, or its own CSV.

With ``data.kind = "nodes"`` every SuperNode brings its own table, named in its
node config (``data-path``, ``target``; a scenario's ``data.paths[k]`` is the
fallback for partition k). The node standardises its table itself (columns and
target to mean 0, variance 1) and no party ever sees the union, so a run has no
oracle metrics. Every other kind derives the shard from the scenario seed
(scenarios/federation.py).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from scenarios.federation import build_federation
from scenarios.schema import Scenario
from shared import data as datasets

DATA_PATH, TARGET = "data-path", "target"  # node config keys


class NodeDataError(ValueError):
    """A node's own table cannot be used; str() is one line naming the node config key."""


def node_configs(scenario: Scenario) -> list[dict]:
    """The node config of every client: ``partition-id``, ``num-partitions`` and,
    for ``data.kind = "nodes"`` with ``data.paths``, its ``data-path`` and ``target``."""
    configs = node_configs_for(scenario.clients.count)
    if scenario.data.kind == "nodes" and scenario.data.paths:
        for config, path in zip(configs, scenario.data.paths):
            config[DATA_PATH] = str(path)
            config[TARGET] = scenario.data.target
    return configs


def node_configs_for(count: int) -> list[dict]:
    """``partition-id = k``, ``num-partitions = count`` for k = 0 … count − 1."""
    return [{"partition-id": k, "num-partitions": count} for k in range(count)]


def client_rows(scenario: Scenario, node_config: dict) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of the node with this node config."""
    pid = int(node_config["partition-id"])
    if scenario.data.kind != "nodes":
        return build_federation(scenario).client(pid)
    path = node_config.get(DATA_PATH)
    if not path and scenario.data.paths and pid < len(scenario.data.paths):
        path = scenario.data.paths[pid]
    target = node_config.get(TARGET) or scenario.data.target
    if not path:
        raise NodeDataError(
            f"node config {DATA_PATH}: partition {pid} has no CSV; start its SuperNode with "
            f"--node-config 'partition-id={pid} {DATA_PATH}=\"/path/to/table.csv\" {TARGET}=\"column\"'"
        )
    if not target:
        raise NodeDataError(
            f"node config {TARGET}: partition {pid} has no target column; add {TARGET}=\"column\" to its "
            "--node-config or set data.target in the scenario"
        )
    return load_node_table(str(path), str(target), scenario.dim(), scenario.protocol.batch_size)


@lru_cache(maxsize=4)
def load_node_table(path: str, target: str, dim: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and standardise one node's CSV, or raise NodeDataError naming what is wrong."""
    if not Path(path).is_file():
        raise NodeDataError(f"node config {DATA_PATH}: no such file {path!r}; point it at this node's CSV")
    try:
        X, y, _ = datasets.load_csv(path, target)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        # The reason goes to the server: name the key, never the file's contents (its
        # header or a cell); the node's own log keeps the details.
        logging.getLogger("flwr").error("node config %s: %s", DATA_PATH, exc)  # Flower's node log
        if "no column" in str(exc):
            raise NodeDataError(f"node config {TARGET}: {path} has no column {target!r}") from None
        raise NodeDataError(
            f"node config {DATA_PATH}: {path} is not a numeric CSV table with a header (details in the node's log)"
        ) from None
    if X.shape[1] != dim:
        raise NodeDataError(
            f"node config {DATA_PATH}: {path} has {X.shape[1]} feature columns but the scenario's "
            f"data.dim = {dim}; every node's table needs the same columns"
        )
    if len(X) < batch_size:
        raise NodeDataError(
            f"node config {DATA_PATH}: {path} has {len(X)} rows, fewer than protocol.batch_size = {batch_size}"
        )
    if np.ptp(y) == 0:
        raise NodeDataError(f"node config {TARGET}: the target column of {path} is constant: nothing to learn")
    X, y = datasets.standardise(X, y)
    for arr in (X, y):
        arr.setflags(write=False)
    return X, y
