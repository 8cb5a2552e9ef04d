"""Fault injection (client/faults.py): the [faults] table, seeded plans, and what each
Byzantine kind does to a real ClientApp reply."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as client_app
from client.faults import COUNT_FACTOR, FLOOD_PROBES, SCALE, corrupt_array, plan_for
from fedsigma.engines.dispatch import run_engine
from fedsigma.engines.inline import InlineGrid
from scenarios.loader import ScenarioError, load_scenario, validate
from scenarios.node_data import node_configs
from scenarios.run_config import encode
from scenarios.schema import BYZANTINE_KINDS
from server.strategy import GradCovStrategy
from shared import protocol as p

SMALL = {"seed": 3, "data": {"dim": 4, "rows_per_client": 40}, "clients": {"count": 6},
         "protocol": {"batch_size": 16, "probes": 3}, "stop": {"max_rounds": 2}}


def scenario(**faults):
    return validate({**SMALL, "faults": faults})


def one_round(sc, rnd: int = 1):
    """Round ``rnd`` of GradCov on the inline grid: {partition id: reply}."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    grid = InlineGrid(client_app, node_configs(sc), encode(sc, "", "inline"))
    strategy = GradCovStrategy(sc.dim(), batch_size=sc.protocol.batch_size, probes=sc.protocol.probes, seed=sc.seed)
    messages = strategy.configure_train(rnd, ArrayRecord({p.WEIGHTS: Array(np.zeros(sc.dim()))}), ConfigRecord(), grid)
    pid = {node: int(ctx.node_config["partition-id"]) for node, ctx in grid.contexts.items()}
    return {pid[r.metadata.src_node_id]: r for r in grid.send_and_receive(messages)}


@pytest.mark.parametrize(
    "faults, field",
    [({"dropout": 1.0}, "faults.dropout"), ({"dropout": -0.1}, "faults.dropout"),
     ({"stragglers": 1.5}, "faults.stragglers"), ({"straggler_delay": float("inf")}, "faults.straggler_delay"),
     ({"byzantine": 7}, "faults.byzantine"), ({"byzantine": -1}, "faults.byzantine"),
     ({"byzantine_kind": "evil"}, "faults.byzantine_kind"), ({"typo": 1}, "faults.typo")],
)
def test_bad_faults_are_one_line_errors_naming_the_field(faults, field):
    with pytest.raises(ScenarioError) as err:
        scenario(**faults)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_nan_and_inf_kinds_survive_toml_parsing():
    """``--set faults.byzantine_kind=nan`` arrives as a float NaN: it must mean the kind."""
    assert scenario(byzantine_kind=float("nan")).faults.byzantine_kind == "nan"
    assert scenario(byzantine_kind=float("inf")).faults.byzantine_kind == "inf"


def test_the_plan_is_a_function_of_the_seed():
    a = plan_for(scenario(byzantine=2, stragglers=0.5, dropout=0.3))
    b = plan_for(scenario(byzantine=2, stragglers=0.5, dropout=0.3))
    assert a == b and len(a.byzantine) == 2 and len(a.stragglers) == 3
    drops = [[a.drops(pid, rnd) for pid in range(6)] for rnd in range(1, 201)]
    assert drops == [[b.drops(pid, rnd) for pid in range(6)] for rnd in range(1, 201)]
    assert 0.25 < np.mean(drops) < 0.35  # 1200 draws at probability 0.3
    others = {plan_for(validate({**SMALL, "seed": s, "faults": {"byzantine": 2}})).byzantine for s in range(8)}
    assert len(others) > 1, "the Byzantine clients must depend on the seed"


def test_dropped_clients_send_flowers_missing_reply_error_and_others_are_untouched():
    clean, faulty = one_round(scenario()), one_round(scenario(dropout=0.5))
    lost = [pid for pid, r in faulty.items() if r.has_error()]
    assert 0 < len(lost) < 6
    plan = plan_for(scenario(dropout=0.5))
    assert lost == [pid for pid in range(6) if plan.drops(pid, 1)]
    for pid, reply in faulty.items():
        if pid in lost:
            assert reply.error.code == ErrorCode.REPLY_MESSAGE_UNAVAILABLE
        else:
            assert np.array_equal(reply.content[p.ARRAYS][p.PROBE_GRADS].numpy(),
                                  clean[pid].content[p.ARRAYS][p.PROBE_GRADS].numpy())


@pytest.mark.parametrize("kind", BYZANTINE_KINDS)
def test_each_byzantine_kind_corrupts_only_its_client(kind):
    sc = scenario(byzantine=1, byzantine_kind=kind)
    (bad,) = plan_for(sc).byzantine
    clean, faulty = one_round(scenario()), one_round(sc)
    for pid, reply in faulty.items():
        honest = clean[pid].content
        got = reply.content
        probe, update = (got[p.ARRAYS][k].numpy() for k in (p.PROBE_GRADS, p.UPDATE))
        probe0, update0 = (honest[p.ARRAYS][k].numpy() for k in (p.PROBE_GRADS, p.UPDATE))
        if pid != bad:
            assert np.array_equal(probe, probe0) and np.array_equal(update, update0)
            continue
        count, count0 = got[p.METRICS][p.NUM_EXAMPLES], honest[p.METRICS][p.NUM_EXAMPLES]
        if kind == "nan":
            assert np.isnan(probe).all() and np.isnan(update).all()
        elif kind == "inf":
            assert np.isposinf(probe).all() and np.isposinf(update).all()
        elif kind == "wrong_shape":
            assert probe.shape == probe0.shape[:-1] + (5,) and update.shape == (5,)
        elif kind == "scale":
            assert np.allclose(probe, SCALE * probe0) and np.allclose(update, SCALE * update0)
        elif kind == "sign_flip":
            assert np.array_equal(probe, -probe0) and np.array_equal(update, -update0)
        elif kind == "random":
            assert probe.shape == probe0.shape and np.isfinite(probe).all() and not np.allclose(probe, probe0)
            assert np.isclose(np.sqrt(np.mean(update**2)), np.sqrt(np.mean(update0**2)), rtol=1.5)
        elif kind == "uncalibrated":  # c = 0: only the row sampling spreads the probes
            assert probe.shape == probe0.shape and np.array_equal(update, update0)
            assert np.var(probe, axis=1).sum() < 0.5 * np.var(probe0, axis=1).sum()
        elif kind == "inflate_count":
            assert count == count0 * COUNT_FACTOR and np.array_equal(probe, probe0)
        elif kind == "flood":
            assert probe.shape == (1, FLOOD_PROBES, 4) and np.array_equal(update, update0)
        if kind != "inflate_count":
            assert count == count0


def test_corrupt_array_leaves_other_kinds_alone():
    x = np.arange(6.0).reshape(1, 2, 3)
    rng = np.random.default_rng(0)
    for kind in ("uncalibrated", "inflate_count"):
        assert np.array_equal(corrupt_array(x, kind, rng, probes=True), x)
    assert np.array_equal(corrupt_array(x[0, 0], "flood", rng), x[0, 0])


def test_a_flooder_floods_even_when_no_probes_were_asked():
    """A round past the adaptive probe budget asks for none: the flooder still sends 10⁶
    probes (and is rejected), instead of turning honest and joining ḡ."""
    none = np.zeros((0, 0, 3), dtype=np.float16)
    out = corrupt_array(none, "flood", np.random.default_rng(0), probes=True)
    assert out.shape == (1, FLOOD_PROBES, 3) and out.dtype == np.float16


def test_stragglers_sleep_the_delay_every_round_and_only_they(monkeypatch):
    slept = []
    monkeypatch.setattr("client.faults.sleep", slept.append)
    plan = plan_for(scenario(stragglers=0.5, straggler_delay=2.5))
    for pid in range(6):
        plan.straggle(pid)
    assert slept == [2.5] * 3 and len(plan.stragglers) == 3


REJECTED_KINDS = {"nan", "inf", "wrong_shape", "inflate_count", "flood"}


@pytest.mark.parametrize("kind", BYZANTINE_KINDS)
def test_a_run_with_one_byzantine_client_of_each_kind_finishes(kind, tmp_path):
    """No kind crashes a round; the malformed ones are rejected (and counted) every round."""
    from _support import read_rounds_raw, run_inline_scenario, write_scenario

    path = write_scenario(tmp_path / "s.toml", (
        "seed = 3\n[data]\ndim = 4\nrows_per_client = 40\n[clients]\ncount = 6\n"
        "[protocol]\nbatch_size = 16\nprobes = 3\n[stop]\nmax_rounds = 3\n"
        f'[faults]\nbyzantine = 1\nbyzantine_kind = "{kind}"\n'
    ))
    run_inline_scenario(path, tmp_path / "out")
    rows = read_rounds_raw(tmp_path / "out" / "rounds.csv")
    assert len(rows) >= 1 and all(np.isfinite(float(r["excess_risk"])) for r in rows)
    expected = "1" if kind in REJECTED_KINDS else "0"
    assert {r["clients_rejected"] for r in rows} == {expected}
    assert {r["clients_replied"] for r in rows} == {"5" if kind in REJECTED_KINDS else "6"}
    assert {r["clients_failed"] for r in rows} == {"0"}


def test_screen_replies_names_each_problem():
    """Lies a faults kind does not cover: a wrong partition id, local rows, a duplicate, a missing record."""
    from server.replies import screen_replies

    sc = scenario()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    grid = InlineGrid(client_app, node_configs(sc), encode(sc, "", "inline"))
    strategy = GradCovStrategy(4, batch_size=16, probes=3, seed=3)
    messages = list(strategy.configure_train(1, ArrayRecord({p.WEIGHTS: Array(np.zeros(4))}), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    partition_of = {n: int(c.node_config["partition-id"]) for n, c in grid.contexts.items()}
    rows_of = dict.fromkeys(partition_of, 40)
    requests = {m.metadata.dst_node_id: m for m in messages}
    kept, rejected = screen_replies(replies, requests, partition_of, rows_of)
    assert rejected == 0 and len(kept) == 6
    replies[0].content[p.METRICS][p.PARTITION_ID] = 5
    replies[1].content[p.METRICS][p.LOCAL_ROWS] = 1
    del replies[2].content[p.METRICS]
    replies[3].content[p.ARRAYS][p.UPDATE] = Array(np.zeros(3))
    kept, rejected = screen_replies(replies + [replies[5]], requests, partition_of, rows_of)
    assert rejected == 5 and kept == replies[4:6]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_dropouts_never_derail_the_run(tmp_path, seed):
    """Quickstart with 10 % of replies lost reaches its target on every seed (seed 2 once
    diverged when incomplete rounds fed the step memory pairs that used Σ̂ for the absent
    clients; the pairs now come from the clients heard at both ends only)."""
    scenario = load_scenario("quickstart", ["faults.dropout=0.1", f"seed={seed}"])
    run_engine(scenario, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "target", summary["status"]


def test_incomplete_rounds_keep_ill_conditioned_within_half_again_its_clean_rounds(tmp_path):
    """ill_conditioned with 30 % of replies lost: median rounds over 5 seeds at most 1.5×
    the clean median (issue 10's goal). Before rounds that missed clients taught the step
    memory, and absent clients' gradients were shrunk towards the fresh mean, it took 2×."""
    def rounds(sets: list[str], seed: int) -> float:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}"
        run_engine(load_scenario("ill_conditioned", sets + [f"seed={seed}"]), out)
        reached = json.loads((out / "summary.json").read_text())["rounds_to_target"]
        return np.inf if reached is None else reached
    seeds = [1, 2, 3, 4, 5]
    clean = np.median([rounds([], s) for s in seeds])
    faulty = np.median([rounds(["faults.dropout=0.3"], s) for s in seeds])
    assert faulty <= 1.5 * clean, (faulty, clean)
