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
from _support import live_processes_with_env, wait_for_deployment

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
