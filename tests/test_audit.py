"""Privacy audit: every message a client sends carries exactly the protocol's
records (shared/protocol.py) and nothing that looks like its raw rows."""

from __future__ import annotations

import numpy as np
import pytest

from _support import run_inline_scenario, write_scenario
from client.client_app import app as real_client_app
from scenarios.federation import build_federation
from shared import protocol as p

ROUNDS, CLIENTS, DIM, PROBES = 3, 4, 6, 3

AUDIT_SCENARIO = f"""
name = "audit"
seed = 11

[data]
dim = {DIM}
rows_per_client = 60
noise_std = 0.5

[clients]
count = {CLIENTS}

[protocol]
batch_size = 8
probes = {PROBES}

[stop]
max_rounds = {ROUNDS}
target = 1e-300
"""


class Recorder:
    """Wraps the real ClientApp and keeps (message, node config, reply) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, msg, context):
        reply = real_client_app(msg, context)
        self.calls.append((msg, dict(context.node_config), reply))
        return reply


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _assert_no_raw_rows(arrays: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, where: str) -> None:
    """Cheap sanity check: no sent d-vector is (close to) a feature row, and no sent
    number is exactly one of the client's target values."""
    for name, arr in arrays.items():
        vectors = arr.reshape(-1, X.shape[1])
        gaps = np.abs(vectors[:, None, :] - X[None, :, :]).max(axis=2)  # (vectors, rows)
        assert gaps.min() > 1e-8, f"{where}: {name} contains a feature row of the client"
        assert not np.isin(y, arr.ravel()).any(), f"{where}: {name} contains a target value"


@pytest.mark.parametrize("differential", [False, True], ids=["plain", "differential"])
def test_client_replies_carry_only_the_protocol(differential, tmp_path):
    path = write_scenario(tmp_path / "audit.toml", AUDIT_SCENARIO)
    recorder = Recorder()
    scenario = run_inline_scenario(
        path, tmp_path / "out", [f"protocol.differential={str(differential).lower()}"], client_app=recorder
    )
    levels = 2 if differential else 1
    fed = build_federation(scenario)

    hellos = [c for c in recorder.calls if c[0].metadata.message_type == f"query.{p.HELLO}"]
    trains = [c for c in recorder.calls if c[0].metadata.message_type == "train"]
    assert len(hellos) == CLIENTS
    assert len(trains) == ROUNDS * CLIENTS
    assert len(hellos) + len(trains) == len(recorder.calls), "no other message types"

    for msg, node_config, reply in hellos:
        pid = int(node_config["partition-id"])
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        content = reply.content
        assert set(content.keys()) == {p.METRICS}
        assert not content.array_records and not content.config_records
        metrics = content.metric_records[p.METRICS]
        assert set(metrics.keys()) == {p.PARTITION_ID, p.NUM_EXAMPLES}
        assert all(_is_int(v) for v in metrics.values()), dict(metrics)
        assert metrics[p.PARTITION_ID] == pid
        assert metrics[p.NUM_EXAMPLES] == len(fed.client(pid)[1])

    for msg, node_config, reply in trains:
        pid = int(node_config["partition-id"])
        where = f"round {msg.content[p.CONFIG][p.ROUND]}, partition {pid}"
        assert not reply.has_error(), f"{where}: {reply.error.reason if reply.has_error() else ''}"
        content = reply.content
        assert set(content.keys()) == {p.ARRAYS, p.METRICS}, where
        assert set(content.array_records.keys()) == {p.ARRAYS}, where
        assert set(content.metric_records.keys()) == {p.METRICS}, where
        assert not content.config_records, f"{where}: a reply must carry no ConfigRecord"

        record = content.array_records[p.ARRAYS]
        assert set(record.keys()) == set(p.REPLY_ARRAYS) == {"probes", "update"}, where
        arrays = {k: record[k].numpy() for k in record.keys()}
        assert arrays[p.PROBE_GRADS].shape == (levels, PROBES, DIM), where
        assert arrays[p.UPDATE].shape == (DIM,), where
        assert all(np.isfinite(a).all() for a in arrays.values()), where

        metrics = content.metric_records[p.METRICS]
        assert set(metrics.keys()) == set(p.REPLY_COUNTS | p.REPLY_PRIVACY), where
        assert all(_is_int(metrics[k]) for k in p.REPLY_COUNTS), f"{where}: {dict(metrics)}"
        assert 0 < metrics[p.MU_PROBE] <= metrics[p.MU_SPENT] < float("inf"), f"{where}: {dict(metrics)}"
        assert metrics[p.PARTITION_ID] == pid
        assert metrics[p.LOCAL_ROWS] == len(fed.client(pid)[1])

        X, y = fed.client(pid)
        _assert_no_raw_rows(arrays, X, y, where)


def test_the_raw_row_check_can_fail():
    """The sanity check above is not vacuous: a leaked row or target is caught."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 3)), rng.standard_normal(5)
    with pytest.raises(AssertionError, match="feature row"):
        _assert_no_raw_rows({"update": X[2].copy()}, X, y, "test")
    with pytest.raises(AssertionError, match="target value"):
        _assert_no_raw_rows({"update": np.array([0.1, y[4], 0.3])}, X, y, "test")
    _assert_no_raw_rows({"update": X[2] + 0.01}, X, y, "test")
