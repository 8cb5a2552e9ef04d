"""The deployment engine for real: a SuperLink and SuperNodes as processes on 127.0.0.1.

Each run costs a few seconds per round (a SuperNode polls the SuperLink every 3 s
and starts a fresh ClientApp process per message) plus ~10 s of start-up, so the
runs are short: 3 nodes, 3 or 4 rounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest
from _support import MARK, ROOT, live_processes_with_env, rows_without_seconds, run_cli, wait_for_deployment

from fedsigma.cli import main
from fedsigma.engines import processes as fp
from fedsigma.engines.deployment import superlink_command, supernode_command

pytestmark = pytest.mark.slow  # starts Ray or Flower server processes

QUICK = ["--set", "clients.count=3", "--set", "stop.max_rounds=3"]
@pytest.fixture(scope="module")
def inline_rows(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("inline") / "out"
    assert main(["run", "quickstart", "--engine", "inline", "--out", str(out), *QUICK]) == 0
    return rows_without_seconds(out / "rounds.csv")


@pytest.mark.timeout(120)
def test_deployment_matches_inline(tmp_path, inline_rows):
    out = tmp_path / "deployment"
    done, mark = run_cli(["quickstart", "--engine", "deployment", "--out", str(out), *QUICK])
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(inline_rows) == 3
    assert rows_without_seconds(out / "rounds.csv") == inline_rows
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "deployment" and summary["status"] == "max_rounds"
    log = (out / "flower.log").read_text()
    assert log.count("Starting Flower SuperNode") == 3
    assert "Uvicorn running on http://127.0.0.1:" in log  # insecure: plain HTTP
    assert live_processes_with_env(MARK, mark) == []


@pytest.mark.timeout(120)
def test_deployment_over_tls_with_supernode_auth(tmp_path, inline_rows):
    certs = tmp_path / "certs"
    made = subprocess.run(["bash", str(ROOT / "scripts" / "make-certs.sh"), str(certs), "3"],
                          capture_output=True, text=True, env={**os.environ, "RSA_BITS": "2048"}, timeout=60)
    assert made.returncode == 0, made.stderr
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    out = tmp_path / "tls"
    done, mark = run_cli(["quickstart", "--engine", "deployment", "--certs", str(certs), "--out", str(out), *QUICK,
                          "--set", "stop.max_rounds=2"])  # 2 of the inline run's 3 rounds: same seeds, same rows
    assert done.returncode == 0, done.stderr[-3000:]
    assert rows_without_seconds(out / "rounds.csv") == inline_rows[:2]
    log = (out / "flower.log").read_text()
    assert "Uvicorn running on https://127.0.0.1:" in log
    assert "SuperNode authentication is disabled" not in log
    # CLI-managed SuperNode authentication: each node's public key registered before it connects
    registered = log.split("$ flwr supernode register ")[1:]
    assert len(registered) == 3 and all('"success": true' in reply[:400] for reply in registered)
    assert live_processes_with_env(MARK, mark) == []


def _standardised(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, y = table[:, :-1], table[:, -1]
    return (X - X.mean(axis=0)) / X.std(axis=0), (y - y.mean()) / y.std()


@pytest.mark.timeout(120)
def test_nodes_bring_their_own_csv(tmp_path):
    """Three SuperNodes started by their operators, each pointed at its own CSV file by its
    node config (different offsets and scales; the scenario names no files); fedsigma
    submits to their SuperLink. Each node standardises its own table, and the run
    converges to least squares on the union of the three standardised tables."""
    rng = np.random.default_rng(5)
    w_true = np.array([1.5, -2.0, 0.7])
    tables, configs = [], []
    for k in range(3):
        rows = 120 + 40 * k
        X = rng.normal(loc=3.0 * k, scale=1.0 + k, size=(rows, 3)) @ np.array([[1, .3, 0], [0, 1, .5], [0, 0, 1]])
        y = X @ w_true + 10.0 * k + rng.normal(scale=0.5, size=rows)
        tables.append(np.column_stack([X, y]))
        np.savetxt(tmp_path / f"node{k}.csv", tables[-1], delimiter=",", header="a,b,c,yield", comments="")
        configs.append({"partition-id": k, "num-partitions": 3, "data-path": str(tmp_path / f"node{k}.csv"),
                        "target": "yield"})
    (tmp_path / "byo.toml").write_text(
        'name = "byo"\nseed = 3\n[data]\nkind = "nodes"\ndim = 3\n[clients]\ncount = 3\n'
        "[protocol]\nbatch_size = 16\nprobes = 64\n[training]\nlearning_rate = 1.0\n[stop]\nmax_rounds = 4\n"
    )
    site = tmp_path / "site"  # the SuperLink's working directory, and so its ServerApp's
    site.mkdir()
    mark = uuid.uuid4().hex
    env = {**fp.flower_env(tmp_path / "home"), MARK: mark}
    port = fp.free_port()
    started = []
    with (tmp_path / "operators.log").open("w") as log:
        try:
            started.append(fp.start(_local(superlink_command(port)), env, log, cwd=site))
            fp.wait_for_port(port, started[0], 60, "flower-superlink")
            started += [fp.start(_local(supernode_command(f"127.0.0.1:{port}", fp.free_port(), c)), env, log)
                        for c in configs]
            done, cli_mark = run_cli(["../byo.toml", "--engine", "deployment", "--superlink", f"127.0.0.1:{port}",
                                      "--no-supernodes", "--out", "runs/byo"], cwd=site)
        finally:
            fp.stop_all(started[1:])
            fp.stop_all(started[:1])
    assert done.returncode == 0, done.stderr[-3000:] + fp.log_tail(tmp_path / "operators.log", 40)
    out = site / "runs" / "byo"
    parts = [_standardised(t) for t in tables]
    X, y = np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    w_ls = np.linalg.lstsq(X, y, rcond=None)[0]
    w = np.load(out / "w.npy")
    assert np.linalg.norm(w - w_ls) / np.linalg.norm(w_ls) < 1e-3
    # not the answer on the union standardised as one table (the offsets differ per node)
    X_union, y_union = _standardised(np.vstack(tables))
    w_union = np.linalg.lstsq(X_union, y_union, rcond=None)[0]
    assert np.linalg.norm(w - w_union) / np.linalg.norm(w_union) > 0.05
    # no oracle: empty metric cells, no true Σ, the full round budget
    rows = rows_without_seconds(out / "rounds.csv")
    assert len(rows) == 4 and {r["clients_replied"] for r in rows} == {"3"}
    assert {r[k] for r in rows for k in ("excess_risk", "loss", "sigma_rel_error", "sigma_whitened_error")} == {""}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "max_rounds" and summary["rounds_to_target"] is None
    assert not (out / "sigma_true.npy").exists() and (out / "sigma_hat.npy").is_file()
    assert live_processes_with_env(MARK, mark) == [] and live_processes_with_env(MARK, cli_mark) == []


def _local(cmd: list[str]) -> list[str]:
    return [fp.flower_command(cmd[0]), *cmd[1:]]


@pytest.mark.timeout(150)
def test_ctrl_c_stops_every_process(tmp_path):
    """SIGINT mid-run (SuperLink, SuperNodes and their SuperExecs up, the run submitted):
    exit 130, and every process the CLI started is gone."""
    mark, out = uuid.uuid4().hex, tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", "deployment", "--out", str(out),
         *QUICK, "--set", "stop.max_rounds=40", "--set", "stop.target=1e-300"], env={**os.environ, MARK: mark}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # CLI, watchdog, SuperLink + SuperExec, 3 × (SuperNode + SuperExec)
        wait_for_deployment(out, mark, 9)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert live_processes_with_env(MARK, mark) == []


@pytest.mark.timeout(90)
def test_a_supernode_with_a_missing_csv_fails_the_run_clearly(tmp_path, monkeypatch):
    """A SuperNode started with --node-config data-path=<missing file> (the scenario names
    no files): the run stops at the handshake with that node's one-line reason, and every
    process is stopped."""
    from fedsigma.engines.deployment import run_deployment
    from scenarios.loader import ScenarioError, validate
    from scenarios.run_config import encode

    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    table = "a,b,y\n" + "".join(f"{i % 5},{(i * 7) % 3},{i % 4}\n" for i in range(40))
    (tmp_path / "n.csv").write_text(table)
    scenario = validate({"data": {"kind": "nodes", "dim": 2}, "clients": {"count": 3},
                         "protocol": {"batch_size": 8}, "stop": {"max_rounds": 2}})
    configs = [{"partition-id": k, "num-partitions": 3, "data-path": str(tmp_path / "n.csv"), "target": "y"}
               for k in range(3)]
    configs[1]["data-path"] = str(tmp_path / "absent.csv")
    run_config = encode(scenario, str(tmp_path / "out"), "deployment")
    with pytest.raises(ScenarioError, match=r"^node config data-path: no such file '.*absent\.csv'"):
        run_deployment(configs, run_config, log_path=tmp_path / "flower.log")
    assert live_processes_with_env(MARK, mark) == []
