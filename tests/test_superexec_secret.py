"""SuperExec auth secret (what docker-compose.yml's tls profile runs, on 127.0.0.1):
with ``--isolation process`` a SuperNode's Runtime API serves only SuperExecs that hold
the secret. The right secret runs a round; a wrong one is refused, visibly in the log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from client.policy import settings_admitting
from fedsigma.engines import processes as fp
from fedsigma.engines.deployment import format_node_config
from scenarios.loader import load_scenario
from scenarios.run_config import encode

pytestmark = pytest.mark.slow  # starts Ray or Flower server processes

REFUSED = "SuperExec authentication failed"


def _federation(tmp: Path, clientapp_secret: str, timeout: float) -> tuple[str | None, str]:
    """SuperLink + ServerApp SuperExec + one SuperNode + its ClientApp SuperExec, all with
    ``--superexec-auth-secret-file`` (the ClientApp's SuperExec with ``clientapp_secret``);
    submit a 1-round run. Returns (summary status or None, the log)."""
    (tmp / "secret").write_text("the-operators-secret")
    (tmp / "other").write_text(clientapp_secret)
    home = tmp / "home"
    env = fp.flower_env(home)
    link_port, node_port = fp.free_port(), fp.free_port()
    secret = ["--superexec-auth-secret-file", str(tmp / "secret")]
    scenario = load_scenario("quickstart", ["clients.count=1", "stop.max_rounds=1"])
    node_config = {"partition-id": 0, "num-partitions": 1, **settings_admitting(scenario)}
    procs: list[subprocess.Popen] = []
    with (tmp / "flower.log").open("w") as log:
        def start(*args: str) -> subprocess.Popen:
            procs.append(fp.start([fp.flower_command(args[0]), *args[1:]], env, log))
            return procs[-1]

        try:
            link = start("flower-superlink", "--insecure", "--isolation", "process", *secret, "--host", "127.0.0.1",
                         "--port", str(link_port), "--disable-runtime-dependency-installation")
            fp.wait_for_port(link_port, link, 60, "flower-superlink")
            start("flower-superexec", "--insecure", "--runtime-api-address", f"127.0.0.1:{link_port}", *secret)
            node = start("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--host",
                         "127.0.0.1", "--port", str(node_port), "--isolation", "process", *secret,
                         "--node-config", format_node_config(node_config))
            fp.wait_for_port(node_port, node, 60, "flower-supernode")
            start("flower-superexec", "--insecure", "--runtime-api-address", f"127.0.0.1:{node_port}",
                  "--superexec-auth-secret-file", str(tmp / "other"))
            fp.write_connection(home, f"127.0.0.1:{link_port}")
            config = fp.write_run_config(tmp / "run_config.toml", encode(scenario, str(tmp / "out"), "deployment"))
            try:
                subprocess.run([fp.flower_command("flwr"), "run", str(fp.stage_app(tmp)), fp.CONNECTION,
                                "--run-config", str(config), "--stream"],
                               env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        finally:
            fp.stop_all(procs)
    summary = tmp / "out" / "summary.json"
    status = json.loads(summary.read_text())["status"] if summary.is_file() else None
    return status, (tmp / "flower.log").read_text(errors="replace")


@pytest.mark.timeout(600)
def test_the_right_secret_runs_a_round(tmp_path):
    status, log = _federation(tmp_path, "the-operators-secret", timeout=300)
    assert status == "max_rounds", log[-3000:]
    assert REFUSED not in log


@pytest.mark.timeout(600)
def test_a_superexec_without_the_secret_is_refused(tmp_path):
    status, log = _federation(tmp_path, "a-guess", timeout=90)
    assert status is None, "a SuperExec with the wrong secret ran the ClientApp"
    assert REFUSED in log, log[-3000:]
