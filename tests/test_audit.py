"""Privacy audit: every message a client sends carries exactly the protocol's
records (shared/protocol.py) and nothing that looks like its raw rows."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc

import numpy as np
import pytest
from _support import run_inline_scenario, write_scenario
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as real_client_app
from client.policy import NodePolicy
from scenarios.federation import build_federation
from scenarios.loader import load_scenario
from scenarios.run_config import encode
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


def rows_revealed(arrays: dict[str, np.ndarray], X: np.ndarray, cosine: float = 0.999) -> int:
    """How many of the client's feature rows some sent d-vector points along (|cos| > 0.999):
    the row itself, or a scaled row such as the batch-1 gradient −y·x at w = 0."""
    vectors = np.concatenate([arr.reshape(-1, X.shape[1]) for arr in arrays.values() if arr.size])
    if not len(vectors):
        return 0
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-300)
    rows = X / np.linalg.norm(X, axis=1, keepdims=True)
    return int((np.abs(unit @ rows.T).max(axis=0) > cosine).sum())


def _assert_no_raw_rows(arrays: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, where: str) -> None:
    """No sent d-vector is (close to) a feature row or a multiple of one, and no sent
    number is exactly one of the client's target values."""
    for name, arr in arrays.items():
        vectors = arr.reshape(-1, X.shape[1])
        gaps = np.abs(vectors[:, None, :] - X[None, :, :]).max(axis=2)  # (vectors, rows)
        assert gaps.min() > 1e-8, f"{where}: {name} contains a feature row of the client"
        assert rows_revealed({name: arr}, X) == 0, f"{where}: {name} contains a scaled feature row"
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
    with pytest.raises(AssertionError, match="scaled feature row"):
        _assert_no_raw_rows({"update": -y[3] * X[3]}, X, y, "test")  # the batch-1 gradient at w = 0
    _assert_no_raw_rows({"update": X[2] + X[4]}, X, y, "test")


# -- a malicious server ----------------------------------------------------------
# The server's strategy is the attacker: it sends the real ClientApp any round config it
# likes. The node's policy (client/policy.py, from the node config only) must refuse
# everything below its floor, and what it does answer must not reveal a row.

ATTACK_DIM, ATTACK_ROWS = 20, 400
ATTACK_SCENARIO = f"""
name = "attack"
seed = 5
[data]
dim = {ATTACK_DIM}
rows_per_client = {ATTACK_ROWS}
noise_std = 0.5
[clients]
count = 1
[protocol]
batch_size = 16
"""

HONEST_ROUND = {
    p.MODE: p.MODE_GRADCOV, p.BATCH_SIZE: 16, p.PROBES: 4, p.NOISE_LEVELS: [1.0], p.NATURAL_VAR: 0.25,
    p.LABEL_CLIP: 0.0, p.TRAIN_GRADIENT: "full", p.NOISY_TARGETS: False, p.LOCAL_STEPS: 0, p.LOCAL_LR: 0.1,
}
OPENED: list[str] = []  # files opened while an attack runs (an audit hook, below)
_WATCH = [False]


def _record_open(event, args):
    if _WATCH[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)


class MaliciousServer:
    """Sends crafted messages straight to the real ClientApp of one node (partition 0).

    ``node_config`` is what that node's operator set; ``run_config`` defaults to the
    honest attack scenario.
    """

    def __init__(self, tmp_path, node_config: dict | None = None, run_config: dict | None = None) -> None:
        self.scenario = load_scenario(write_scenario(tmp_path / "attack.toml", ATTACK_SCENARIO))
        self.X, self.y = build_federation(self.scenario).client(0)
        run_config = run_config or encode(self.scenario, str(tmp_path), "inline")
        node = {"partition-id": 0, "num-partitions": 1, **(node_config or {})}
        self.context = Context(1, 1007, node, RecordDict(), run_config)
        self.sent = 0
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1

    def ask(self, rnd: int, w: np.ndarray | None = None, message_type: str = "train", **changes):
        """One message; ``changes`` override the honest round config (keys: protocol names)."""
        config = {**HONEST_ROUND, p.ROUND: rnd, **{getattr(p, k): v for k, v in changes.items()}}
        arrays = ArrayRecord({p.WEIGHTS: Array(np.zeros(ATTACK_DIM) if w is None else w)})
        content = RecordDict({p.ARRAYS: arrays, p.CONFIG: ConfigRecord(config)})
        if message_type != "train":
            content = RecordDict()
        msg = Message(content, dst_node_id=1007, message_type=message_type, group_id=str(rnd))
        self.sent += 1
        msg.metadata.__dict__["_message_id"] = f"attack-{self.sent}"
        return real_client_app(msg, self.context)

    def revealed(self, replies) -> int:
        """Rows some answered reply points along (see rows_revealed)."""
        arrays = {}
        for k, reply in enumerate(r for r in replies if not r.has_error()):
            record = reply.content[p.ARRAYS]
            arrays.update({f"{name}-{k}": record[name].numpy() for name in record.keys()})
        return rows_revealed(arrays, self.X) if arrays else 0


def _refused(reply, key: str) -> str:
    assert reply.has_error(), f"the node answered; expected a refusal naming {key}"
    assert f"node policy {key}" in reply.error.reason or f"node config {key}" in reply.error.reason, reply.error.reason
    return reply.error.reason


PERMISSIVE = {"min-batch-size": 1, "min-noise-var": 0.0, "max-probes": 10**6}


def test_attack_batch_size_one_and_no_noise(tmp_path):
    """Batch size 1 with noise 0: each probe at w = 0 is −y·x, a scaled row. A node that lets it
    through gives almost every row away; the default node refuses and reveals none."""
    open_node = MaliciousServer(tmp_path, PERMISSIVE)
    attack = dict(BATCH_SIZE=1, PROBES=2000, NOISE_LEVELS=[0.0], NATURAL_VAR=0.0)
    leaked = open_node.revealed([open_node.ask(1, **attack)])
    assert leaked >= 0.95 * ATTACK_ROWS, f"the attack itself is broken: {leaked} rows"
    node = MaliciousServer(tmp_path)
    reply = node.ask(1, **attack)
    _refused(reply, "min-batch-size")
    assert node.revealed([reply]) == 0


@pytest.mark.parametrize(
    "changes",
    [dict(NOISE_LEVELS=[0.0]), dict(NOISE_LEVELS=[0.1]), dict(NATURAL_VAR=1e6), dict(NOISE_LEVELS=[0.0, 1.0])],
    ids=["no-noise", "tiny-multiplier", "claimed-natural-noise", "differential-low-zero"],
)
def test_attack_noise_below_the_floor(tmp_path, changes):
    """Any way of making the node inject less than its floor is refused (min-noise-var)."""
    _refused(MaliciousServer(tmp_path).ask(1, **changes), "min-noise-var")


def test_attack_chosen_w_at_the_floor_reveals_no_row(tmp_path):
    """The most the default node allows — 16-row batches, injected variance exactly the floor,
    4096 probes — at w values the attacker chooses, plus minibatch and local-step training
    replies: no sent vector points along a row, and the node reports μ = 2B/σ_floor per probe."""
    node = MaliciousServer(tmp_path)
    floor = NodePolicy().min_noise_var
    rng = np.random.default_rng(0)
    chosen = [np.zeros(ATTACK_DIM), 1e6 * np.eye(ATTACK_DIM)[3], rng.standard_normal(ATTACK_DIM) * 1e3]
    replies = []
    for rnd, w in enumerate(chosen, start=1):
        replies.append(node.ask(rnd, w, PROBES=4096 // 8, NOISE_LEVELS=[floor / 16], NATURAL_VAR=0.0,
                                TRAIN_GRADIENT="minibatch"))
    replies.append(node.ask(10, chosen[0], MODE=p.MODE_LOCAL, LOCAL_STEPS=1))
    assert not any(r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
    assert node.revealed(replies) == 0
    mu = replies[0].content[p.METRICS][p.MU_PROBE]
    assert mu == pytest.approx(2 * NodePolicy().label_bound / np.sqrt(floor))


def test_attack_replayed_round(tmp_path):
    """A round number the node has answered (same batches, same noise) is refused."""
    node = MaliciousServer(tmp_path)
    assert not node.ask(5).has_error()
    _refused(node.ask(5, np.ones(ATTACK_DIM)), "replay")
    _refused(node.ask(3), "replay")
    assert not node.ask(6).has_error()


def test_attack_send_hessian(tmp_path):
    """send-hessian asks for XᵀX/N exactly: refused unless the node opts in (allow-hessian)."""
    reply = MaliciousServer(tmp_path).ask(1, SEND_HESSIAN=True)
    _refused(reply, "allow-hessian")
    opted_in = MaliciousServer(tmp_path, {"allow-hessian": True})
    record = opted_in.ask(1, SEND_HESSIAN=True).content[p.ARRAYS]
    assert np.allclose(record[p.HESSIAN].numpy(), opted_in.X.T @ opted_in.X / ATTACK_ROWS)


@pytest.mark.parametrize(
    "changes, key",
    [(dict(PROBES=10**6), "max-probes"), (dict(NOISE_LEVELS=[1.0] * 10**5), "min-noise-var"),
     (dict(LOCAL_STEPS=10**7), "max-local-steps")],
    ids=["million-probes", "many-levels", "endless-local-steps"],
)
def test_attack_memory_and_time_blow_up(tmp_path, changes, key):
    """Huge requests are refused before anything is allocated (peak well under 64 MiB)."""
    node = MaliciousServer(tmp_path)
    tracemalloc.start()
    try:
        reply = node.ask(1, **changes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _refused(reply, key)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_attack_probe_memory_ceiling(tmp_path):
    """Within max-probes but over max-probe-mib (levels·probes·n·d floats) is refused too."""
    node = MaliciousServer(tmp_path, {"max-probe-mib": 1})
    _refused(node.ask(1, PROBES=1000), "max-probe-mib")  # 1000·16·20·8 B ≈ 2.4 MiB


SECRET = "root:x:0:0:secret-first-line"


@pytest.mark.parametrize("how", ["csv-path", "node-paths", "scenario-file"])
def test_attack_data_path_in_the_run_config(tmp_path, how):
    """A run config that names a file the node did not list: refused before the file is opened,
    and nothing of it in the reply."""
    secret = tmp_path / "secret.csv"
    secret.write_text(SECRET + "\n1,2\n")
    honest = MaliciousServer(tmp_path).scenario.model_dump(mode="json")
    if how == "scenario-file":
        run_config = {"scenario": str(secret), "scenario-json": "", "out-dir": str(tmp_path)}
    else:
        data = {"kind": "csv", "path": str(secret), "target": "y"} if how == "csv-path" else \
            {"kind": "nodes", "paths": [str(secret)], "target": "y", "dim": 1}
        run_config = {"scenario": "", "scenario-json": json.dumps({**honest, "data": data}), "out-dir": str(tmp_path)}
    node = MaliciousServer(tmp_path, run_config=run_config)
    OPENED.clear()
    _WATCH[0] = True
    try:
        replies = [node.ask(0, message_type=f"query.{p.HELLO}"), node.ask(1)]
    finally:
        _WATCH[0] = False
    for reply in replies:
        reason = _refused(reply, "data-files")
        assert "root:x" not in reason and "secret-first-line" not in reason
    assert str(secret) not in OPENED, "the node opened the file"


def test_a_nodes_own_unreadable_file_stays_on_the_node(tmp_path):
    """The node's own data-path pointing at a non-CSV file: the error names the key, not a line of it."""
    secret = tmp_path / "passwd"
    secret.write_text(SECRET + "\ndaemon:x:1:1\n")
    scenario = load_scenario(write_scenario(tmp_path / "nodes.toml", 'name = "n"\n[data]\nkind = "nodes"\ndim = 2\n'
                                            "[clients]\ncount = 1\n"))
    run_config = encode(scenario, str(tmp_path), "inline")
    node = MaliciousServer(tmp_path, {"data-path": str(secret), "target": "y"}, run_config=run_config)
    reason = node.ask(0, message_type=f"query.{p.HELLO}").error.reason
    assert "node config" in reason and "secret-first-line" not in reason and "daemon:x" not in reason, reason


def test_error_replies_carry_no_exception_text(tmp_path):
    """A request that makes the handler raise: the reply names the exception's type only."""
    reply = MaliciousServer(tmp_path).ask(1, np.zeros(3))  # w of the wrong length
    assert reply.has_error()
    assert reply.error.reason == "ClientApp raised RuntimeError (details in the node's log)", reply.error.reason


def test_the_accountant_stops_at_the_nodes_budget(tmp_path):
    """μ composes as √Σμ² over rounds (kept in context.state); the round that would pass the
    node's mu-budget is refused, and so is every later one."""
    one = MaliciousServer(tmp_path).ask(1)
    per_round = one.content[p.METRICS][p.MU_SPENT]  # 4 probes, one level
    assert per_round == pytest.approx(one.content[p.METRICS][p.MU_PROBE] * 2)
    node = MaliciousServer(tmp_path, {"mu-budget": per_round * np.sqrt(3) * 1.0001})
    spent = [node.ask(rnd).content[p.METRICS][p.MU_SPENT] for rnd in (1, 2, 3)]
    assert spent == pytest.approx([per_round * np.sqrt(k) for k in (1, 2, 3)])
    _refused(node.ask(4), "mu-budget")
    _refused(node.ask(5, PROBES=2), "mu-budget")
    assert not node.ask(6, PROBES=0).has_error(), "a round without probes costs nothing"


def test_a_noise_secret_makes_the_noise_unpredictable(tmp_path):
    """Without a noise-secret the node's batches and noise follow from the scenario seed, which
    the server knows: it can rebuild them (here: a second node gives the identical reply). With
    one, the reply differs and says so (noise-secret = 1)."""
    def probes(node_config):
        reply = MaliciousServer(tmp_path, node_config).ask(1)
        return reply.content[p.ARRAYS][p.PROBE_GRADS].numpy(), reply.content[p.METRICS][p.NOISE_SECRET]

    plain, flag = probes({})
    assert flag == 0 and np.array_equal(plain, probes({})[0])
    secret, flag = probes({"noise-secret": "only the node knows"})
    assert flag == 1 and not np.allclose(plain, secret)
