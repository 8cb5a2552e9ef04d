"""A stranger who can reach the SuperNodes' address and holds ca.crt can neither see nor
change the federation (issue 13): the deployment engine's SuperLink listens on 127.0.0.1
and SuperNodes come in through the Fleet gate, which passes only Fleet API requests.

One TLS deployment run on 127.0.0.1; the stranger tries ``flwr ls``, ``flwr stop`` and
``flwr run`` of their own app at the gate while the operator's run is going.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsigma.engines import processes as fp
from fedsigma.engines.deployment import make_certificates
from fedsigma.engines.processes import descendants, stop

pytestmark = pytest.mark.slow  # starts Ray or Flower server processes

ROUNDS = 8


def _flwr(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = fp.flower_env(home)
    return subprocess.run([fp.flower_command("flwr"), *args], env=env, cwd=home, capture_output=True, text=True,
                          timeout=120)


def _forbidden(done: subprocess.CompletedProcess) -> bool:
    """``flwr … --format json`` failed with HTTP 403 (it exits 0 and says so in its JSON)."""
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        return False
    return reply.get("success") is False and "403" in reply.get("error-message", "")


def _flag(pid: int, flag: str) -> str | None:
    """The value after ``flag`` in a process's command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    return argv[argv.index(flag) + 1] if flag in argv else None


def _wait_for(what, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := what()) is not None:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what.__doc__}")


@pytest.fixture(scope="module")
def tls_run(tmp_path_factory):
    """A TLS deployment run of the operator (3 SuperNodes) and the ports it uses."""
    tmp = tmp_path_factory.mktemp("control")
    certs = make_certificates(tmp / "certs", 3)
    out = tmp / "out"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", "deployment", "--certs",
         str(certs.folder), "--out", str(out), "--set", "clients.count=3", "--set", f"stop.max_rounds={ROUNDS}",
         "--set", "stop.target=1e-300"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    try:
        def ports():
            """the SuperLink and the gate"""
            tree = descendants(cli.pid)
            gate = next((_flag(p, "--listen") for p in tree if _flag(p, "--upstream")), None)
            link = next((_flag(p, "--port") for p in tree if _flag(p, "--enable-supernode-auth")), None)
            started = (out / "rounds.csv").is_file() and (out / "rounds.csv").stat().st_size > 0
            return (gate, f"127.0.0.1:{link}") if gate and link and started else None

        gate, link = _wait_for(ports)
        yield {"cli": cli, "certs": certs, "gate": gate, "link": link, "out": out, "tmp": tmp}
    finally:
        stop(cli)


def _stranger(tls_run, address: str, name: str) -> Path:
    home = tls_run["tmp"] / name
    fp.write_connection(home, address, insecure=False, root_certificates=tls_run["certs"].ca)
    return home


@pytest.mark.timeout(900)
def test_stranger_with_ca_crt_cannot_list_stop_or_run(tls_run):
    # not vacuous: the same ca.crt and commands work on the SuperLink's own 127.0.0.1 port
    done = _flwr(["ls", fp.CONNECTION, "--format", "json"], _stranger(tls_run, tls_run["link"], "operator"))
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = str(json.loads(done.stdout)["runs"][0]["run-id"])

    home = _stranger(tls_run, tls_run["gate"], "stranger")
    listed = _flwr(["ls", fp.CONNECTION, "--format", "json"], home)
    assert _forbidden(listed) and run_id not in listed.stdout + listed.stderr, listed.stdout
    assert _forbidden(_flwr(["stop", run_id, fp.CONNECTION, "--format", "json"], home))
    foreign = fp.stage_app(tls_run["tmp"] / "foreign")
    submitted = _flwr(["run", str(foreign), fp.CONNECTION, "--format", "json"], home)
    assert _forbidden(submitted) and "run-id" not in submitted.stdout, submitted.stdout

    # the operator's run is untouched: it finishes all its rounds and writes its summary
    assert tls_run["cli"].wait(timeout=600) == 0
    summary = json.loads((tls_run["out"] / "summary.json").read_text())
    assert summary["status"] == "max_rounds" and summary["rounds_run"] == ROUNDS, summary["status"]
    log = (tls_run["out"] / "flower.log").read_text()
    for path in ("/v1/control/", ):
        assert f"fleet-gate: refused POST {path}" in log, "the refusals are not in the log"
