"""Interrupted runs: SIGTERM like Ctrl-C, checkpoints after every round, ``run --resume``.

The CLI runs as a subprocess and is signalled by its PID once rounds.csv shows a
given round, as an operator (or a batch scheduler) would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _support import read_rounds_raw

ROOT = Path(__file__).resolve().parents[1]
LONG = ["--set", "stop.target=1e-300", "--set", "stop.max_rounds=60"]  # never reaches its target


def start_cli(args: list[str]) -> subprocess.Popen:
    """``python -m fedsigma ARGS`` in the background, output captured."""
    return subprocess.Popen([sys.executable, "-m", "fedsigma", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_round(proc: subprocess.Popen, rounds_csv: Path, k: int, timeout: float = 90) -> int:
    """Wait until rounds.csv holds round ``k`` (or more); return the rounds it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before round {k}"
        rows = read_rounds_raw(rounds_csv) if rounds_csv.is_file() else []
        if len(rows) >= k:
            return len(rows)
        time.sleep(0.02)
    raise AssertionError(f"round {k} not reached within {timeout} s")


@pytest.mark.timeout(120)
def test_sigterm_writes_the_summary_and_exits_143(tmp_path):
    out = tmp_path / "out"
    proc = start_cli(["run", "quickstart", "--out", str(out), *LONG])
    try:
        wait_for_round(proc, out / "rounds.csv", 3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("terminated (SIGTERM)") and str(out) in lines[-1], err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rounds_raw(out / "rounds.csv")
    assert "SIGTERM" in summary["status"] and summary["rounds_run"] == len(rows) >= 3
    assert (out / "w.npy").is_file() and (out / "sigma_hat.npy").is_file()
