"""Helpers shared by the tests (imported as ``_support``; tests/ is on sys.path)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path


def write_scenario(path: Path, text: str) -> Path:
    """Write a scenario TOML file and return its path."""
    path.write_text(text)
    return path


def run_inline_scenario(scenario_path: Path, out: Path, overrides: list[str] | None = None, client_app=None):
    """Run a scenario on the inline engine with the real ServerApp.

    ``client_app`` may wrap the real ClientApp (any callable ``(msg, context) -> reply``),
    e.g. to capture every message. Returns the validated Scenario.
    """
    from client.client_app import app as real_client_app
    from client.policy import settings_admitting
    from fedsigma.engines.inline import run_inline
    from scenarios.loader import load_scenario
    from scenarios.node_data import node_configs
    from scenarios.run_config import encode
    from server.server_app import app as server_app

    scenario = load_scenario(scenario_path, overrides or [])
    run_config = encode(scenario, str(out), "inline")
    # the harness starts the nodes, so it is their operator: admit the scenario, as the CLI does
    configs = [{**config, **settings_admitting(scenario)} for config in node_configs(scenario)]
    run_inline(server_app, client_app or real_client_app, scenario.clients.count, run_config, configs)
    return scenario


def read_rounds_raw(path: Path) -> list[dict[str, str]]:
    """rounds.csv rows as dicts of the raw cell strings."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def rows_without_seconds(path: Path) -> list[dict[str, str]]:
    """rounds.csv rows without the wall-clock column, for comparing engines."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_rounds_raw(path)]


ROOT = Path(__file__).resolve().parent.parent
MARK = "FEDSIGMA_TEST_RUN"  # every process a test's CLI run starts inherits MARK=<that run's mark>


def run_cli(args: list[str], timeout: float = 100, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, str]:
    """``fedsigma run ARGS`` in a subprocess whose descendants all carry a fresh marker in
    their environment; returns (the finished process, the mark) for
    ``live_processes_with_env(MARK, mark)``: the processes this run left behind, and no others."""
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "fedsigma.cli", "run", *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, MARK: mark}, cwd=cwd,
    )
    return done, mark


def live_processes_with_env(key: str, value: str) -> list[int]:
    """PIDs of live (not zombie) processes whose environment has ``key=value``:
    every process a CLI run started inherits it, so this finds any it left behind."""
    marker = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for_deployment(out: Path, mark: str, processes: int, timeout: float = 60) -> list[int]:
    """Wait until a deployment CLI run writing to ``out`` has submitted its run (its
    flower.log shows ``$ flwr run``) and ``processes`` processes carry the marker
    ``FEDSIGMA_TEST_RUN=mark`` (a SuperExec may start a moment after the submission);
    return their PIDs."""
    log = out / "flower.log"
    deadline = time.monotonic() + timeout
    while "$ flwr run " not in (log.read_text(errors="replace") if log.is_file() else ""):
        assert time.monotonic() < deadline, "the run was never submitted"
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    while len(found := live_processes_with_env(MARK, mark)) < processes:
        assert time.monotonic() < deadline, f"{len(found)} of {processes} processes started"
        time.sleep(0.2)
    return found
