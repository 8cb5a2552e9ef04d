"""Helpers shared by the tests (imported as ``_support``; tests/ is on sys.path)."""

from __future__ import annotations

import csv
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
    from scenarios.inline_engine import run_config_for, run_inline
    from scenarios.loader import load_scenario
    from server.server_app import app as server_app

    scenario = load_scenario(scenario_path, overrides or [])
    run_config = run_config_for(scenario.model_dump_json(), str(out), "inline")
    run_inline(server_app, client_app or real_client_app, scenario.clients.count, run_config)
    return scenario


def read_rounds_raw(path: Path) -> list[dict[str, str]]:
    """rounds.csv rows as dicts of the raw cell strings."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))
