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
from unittest.mock import patch

import numpy as np
import pytest
from _support import read_rounds_raw, rows_without_seconds

from fedsigma.cli import main
from server import checkpoint

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


def _same_results(a: Path, b: Path) -> None:
    """rounds.csv apart from `seconds`, w.npy and sigma_hat.npy identical to the bit."""
    assert rows_without_seconds(a / "rounds.csv") == rows_without_seconds(b / "rounds.csv")
    for name in ("w.npy", "sigma_hat.npy"):
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=name)


SAMPLED = ["--set", "training.gradient=\"minibatch\"", "--set", "clients.fraction=0.7"]
FAULTY = ["--set", "faults.dropout=0.2", "--set", "faults.byzantine=1", "--set", "faults.byzantine_kind=\"scale\""]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kill_at, variant", [(2, SAMPLED), (7, FAULTY)], ids=["sampled-minibatch", "faults"])
def test_a_run_sigkilled_then_resumed_matches_the_uninterrupted_run(tmp_path, kill_at, variant):
    """SIGKILL (no clean-up of any kind) once rounds.csv shows round ``kill_at``; ``run
    --resume`` then finishes the run, and its results are those of a run never stopped.
    Minibatch gradients and 70 % sampling: the client draws and the server's sampling
    both continue exactly where they were; dropouts and a Byzantine client: the fault
    draws, the robust screens' memory and the gradient table too."""
    settings = [*LONG, *variant, "--set", "stop.max_rounds=25"]
    whole = tmp_path / "whole"
    assert main(["run", "quickstart", "--out", str(whole), *settings]) == 0
    out = tmp_path / "killed"
    proc = start_cli(["run", "quickstart", "--out", str(out), *settings])
    try:
        wait_for_round(proc, out / "rounds.csv", kill_at)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len(read_rounds_raw(out / "rounds.csv"))
    assert kill_at <= done < 25 and not (out / "summary.json").exists()
    assert main(["run", "--resume", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "max_rounds" and summary["rounds_run"] == 25
    _same_results(whole, out)


def test_resume_twice_then_a_finished_run_is_refused(tmp_path):
    """An interrupted run (Ctrl-C after round 3) resumed, interrupted again, resumed again;
    a finished run is refused."""
    from client.client_app import app as real

    whole = tmp_path / "whole"
    assert main(["run", "quickstart", "--out", str(whole), *LONG, "--set", "stop.max_rounds=12"]) == 0
    out = tmp_path / "out"
    for stop_after in (3, 8):
        calls = {"n": 0}

        def interrupted(msg, context, stop_after=stop_after):
            calls["n"] += msg.metadata.message_type == "train"
            if calls["n"] > 10 * (stop_after - (3 if stop_after == 8 else 0)):
                raise KeyboardInterrupt
            return real(msg, context)

        with patch("fedsigma.engines.dispatch.client_app", interrupted):
            args = ["run", "--resume", str(out)] if stop_after == 8 else \
                ["run", "quickstart", "--out", str(out), *LONG, "--set", "stop.max_rounds=12"]
            assert main(args) == 130
        assert len(read_rounds_raw(out / "rounds.csv")) == stop_after
    assert main(["run", "--resume", str(out)]) == 0
    _same_results(whole, out)
    assert main(["run", "--resume", str(out)]) == 2


@pytest.mark.parametrize("args, message", [
    (["quickstart", "--set", "stop.max_rounds=13"], "another scenario: stop.max_rounds was 12, now 13"),
    (["--set", "protocol.probes=5"], "another scenario: protocol.probes was 4, now 5"),
    (["--method", "fedsgd"], "method 'gradcov', not 'fedsgd'"),
    (["--out", "elsewhere"], "--out: a resumed run continues in its own folder"),
])
def test_resume_refuses_another_scenario_or_method(tmp_path, capsys, args, message):
    out = _interrupted_run(tmp_path)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err


def test_resume_refuses_other_code_and_a_folder_without_checkpoint(tmp_path, capsys):
    out = _interrupted_run(tmp_path)
    capsys.readouterr()
    with patch("server.checkpoint.code_fingerprint", lambda: "0123456789abcdef"):
        assert main(["run", "--resume", str(out)]) == 2
    assert "written by other code" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint.pkl in" in " ".join(capsys.readouterr().err.split())


def test_the_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    """A crash while the checkpoint is written leaves the previous one whole."""
    out = _interrupted_run(tmp_path)
    before = (out / checkpoint.CHECKPOINT).read_bytes()

    def crash(*args, **kwargs):
        raise MemoryError("killed while pickling")

    monkeypatch.setattr(checkpoint.pickle, "dump", crash)
    with pytest.raises(MemoryError):
        checkpoint.save(out, {"round": 99}, {})
    assert (out / checkpoint.CHECKPOINT).read_bytes() == before
    assert checkpoint.read_meta(out)["round"] == 3


def _interrupted_run(tmp_path: Path, settings: list[str] = (*LONG, "--set", "stop.max_rounds=12"),
                     after: int = 30) -> Path:
    """quickstart (10 clients unless ``settings`` say otherwise), Ctrl-C after ``after``
    training calls: with 10 clients and 30 calls, three rounds checkpointed."""
    from client.client_app import app as real

    calls = {"n": 0}

    def interrupted(msg, context):
        calls["n"] += msg.metadata.message_type == "train"
        if calls["n"] > after:
            raise KeyboardInterrupt
        return real(msg, context)

    out = tmp_path / "out"
    with patch("fedsigma.engines.dispatch.client_app", interrupted):
        assert main(["run", "quickstart", "--out", str(out), *settings]) == 130
    return out


@pytest.mark.timeout(300)
@pytest.mark.slow  # starts Ray
def test_an_inline_run_resumed_on_the_simulation_engine_matches(tmp_path):
    """The checkpoint travels through Flower's run config (``resume``) and the staged
    app (the same code fingerprint): an inline run stopped after round 3 and resumed on
    Ray gives the uninterrupted inline run's numbers."""
    settings = [*LONG, "--set", "stop.max_rounds=6", "--set", "clients.count=4"]
    whole = tmp_path / "whole"
    assert main(["run", "quickstart", "--out", str(whole), *settings]) == 0
    out = _interrupted_run(tmp_path, settings, after=3 * 4)
    assert main(["run", "--resume", str(out), "--engine", "simulation"]) == 0
    assert json.loads((out / "summary.json").read_text())["engine"] == "simulation"
    _same_results(whole, out)
