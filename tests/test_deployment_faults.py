"""Deployment faults with real processes on 127.0.0.1: the CLI killed outright, SuperNodes
that die or come back. Each costs ~10 s of start-up and a few seconds per round."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from _support import live_processes_with_env, read_rounds_raw, wait_for_deployment

pytestmark = pytest.mark.slow  # starts Ray or Flower server processes

ROOT = Path(__file__).resolve().parent.parent
MARK = "FEDSIGMA_TEST_RUN"
QUICK = ["--set", "clients.count=3"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(150)
def test_no_flower_process_outlives_a_sigkilled_cli(tmp_path):
    """SIGKILL of the CLI mid-run (no clean-up code of its own can run): every process
    it started — SuperLink, SuperNodes, their SuperExecs and ClientApps, recorded by PID
    before the kill — is gone within 30 s."""
    mark, out = uuid.uuid4().hex, tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", "deployment", "--out", str(out),
         *QUICK, "--set", "stop.max_rounds=40", "--set", "stop.target=1e-300"],
        env={**os.environ, MARK: mark}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # CLI, watchdog, SuperLink + SuperExec, 3 × (SuperNode + SuperExec)
        started = [pid for pid in wait_for_deployment(out, mark, 9) if pid != proc.pid]
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [pid for pid in started if _alive(pid)]
        assert survivors == [], survivors
        assert live_processes_with_env(MARK, mark) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in live_processes_with_env(MARK, mark):  # only processes this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _inline_view(tmp_path, count: int = 3):
    """A PartitionGrid over an in-process grid whose nodes the test can remove (``del
    grid._configs[node]``) and add (``join(node, partition)``)."""
    from flwr.supercore.task_identity import TaskIdentity

    from client.client_app import app as client_app
    from fedsigma.engines.inline import SUPERLINK_NODE_ID, InlineGrid
    from scenarios.loader import load_scenario
    from scenarios.node_data import node_configs
    from scenarios.run_config import encode
    from server.partition_grid import PartitionGrid

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1  # as run_inline
    scenario = load_scenario("quickstart", [f"clients.count={count}"])
    run_config = encode(scenario, str(tmp_path), "inline")
    configs = node_configs(scenario)
    grid = InlineGrid(client_app, configs, run_config)

    def join(node: int, partition: int) -> None:
        grid._configs[node] = dict(configs[partition])

    return grid, PartitionGrid(grid, count), join


def _round(view, rnd: int):
    """One gradcov training round's messages to every node of the view."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from scenarios.loader import load_scenario
    from server.build import oracle_for
    from server.methods import strategy_for
    from shared import protocol as p

    scenario = load_scenario("quickstart", ["clients.count=3"])
    strategy, config, _, _ = strategy_for(scenario, "gradcov", oracle_for(scenario)[1])
    weights = ArrayRecord({p.WEIGHTS: Array(np.zeros(scenario.dim()))})
    return list(strategy.configure_train(rnd, weights, ConfigRecord(dict(config)), view))


def test_a_node_that_leaves_counts_as_failed_and_one_that_comes_back_takes_its_place(tmp_path):
    grid, view, join = _inline_view(tmp_path)
    first = view.get_node_ids()
    del grid._configs[first[1]]  # partition 1's node is gone
    assert view.get_node_ids() == first  # its place is kept: sampling positions do not move
    replies = view.send_and_receive(_round(view, 1))
    assert sum(not r.has_error() for r in replies) == 2 and view.failed == 1  # not sent, counted at once
    join(5000, 1)  # back under a new id
    assert view.get_node_ids() == [first[0], 5000, first[2]]
    assert view.partition_of[5000] == 1 and first[1] not in view.partition_of
    replies = view.send_and_receive(_round(view, 2))
    assert len(replies) == 3 and not any(r.has_error() for r in replies) and view.failed == 1


def test_a_newcomer_waits_while_its_partitions_node_is_connected_and_strangers_are_refused(tmp_path):
    grid, view, join = _inline_view(tmp_path)
    first = view.get_node_ids()
    join(6000, 2)  # partition 2 claimed while node first[2] still serves it (a crash not yet noticed)
    assert view.get_node_ids() == first
    del grid._configs[first[2]]  # now its heartbeat lapses
    assert view.get_node_ids() == [first[0], first[1], 6000]
    grid._configs[7000] = {**grid._configs[first[0]], "partition-id": 3}  # a partition this run does not have
    assert view.get_node_ids() == [first[0], first[1], 6000] and 7000 in view._refused


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def _wait_rows(out: Path, proc: subprocess.Popen, predicate, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the CLI exited ({proc.returncode})"
        rows = read_rounds_raw(out / "rounds.csv") if (out / "rounds.csv").is_file() else []
        if predicate(rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"rounds.csv never got there: {read_rounds_raw(out / 'rounds.csv')}")


@pytest.mark.timeout(480)
def test_the_run_goes_on_when_a_supernode_dies_and_uses_it_again_when_it_comes_back(tmp_path):
    """SIGKILL of partition 1's SuperNode (its whole process group, as a machine crash):
    the run continues with the other two and counts it in clients_failed; a SuperNode
    started again for partition 1 (a new node id) is handshaken and replies again."""
    from fedsigma.engines import processes as fp

    mark, out = uuid.uuid4().hex, tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", "deployment", "--out", str(out),
         *QUICK, "--set", "stop.max_rounds=60", "--set", "stop.target=1e-300", "--set", "training.round_timeout=25"],
        env={**os.environ, MARK: mark}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    again = None
    try:
        wait_for_deployment(out, mark, 9)
        _wait_rows(out, proc, lambda rows: len(rows) >= 1, 150)
        node = next(pid for pid in live_processes_with_env(MARK, mark)
                    if "flower-supernode" in " ".join(_cmdline(pid))
                    and any(arg.split()[:1] == ["partition-id=1"] for arg in _cmdline(pid)))
        cmd, env = _cmdline(node), _environ(node)
        os.killpg(node, signal.SIGKILL)  # started in a session of its own: the group is its SuperExec too
        killed_at = len(read_rounds_raw(out / "rounds.csv"))
        rows = _wait_rows(out, proc, lambda rows: any(r["clients_failed"] == "1" for r in rows[killed_at:]), 120)
        cmd[cmd.index("--port") + 1] = str(fp.free_port())
        with (tmp_path / "again.log").open("w") as log:
            again = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        back = len(rows)
        rows = _wait_rows(out, proc, lambda rows: any(r["clients_replied"] == "3" for r in rows[back:]), 200)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        fp.stop(again)
    assert proc.returncode == 130, err[-2000:]
    rows = read_rounds_raw(out / "rounds.csv")
    # after the kill: rounds where partition 1 failed while the others replied, then all three again
    after = rows[killed_at:]
    first_back = next(i for i, r in enumerate(after) if r["clients_replied"] == "3")
    assert any(r["clients_failed"] == "1" and r["clients_replied"] == "2" for r in after[:first_back])
    assert "partition 1 is back as node" in (out / "flower.log").read_text(errors="replace")
    assert live_processes_with_env(MARK, mark) == []
