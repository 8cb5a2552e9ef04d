"""Flower's run config for a fedsigma run: its keys, encoded and decoded in one place.

The run config is what ``flwr run`` (or the CLI's engines) hands the ServerApp and
every ClientApp; its values are TOML scalars. pyproject.toml's
``[tool.flwr.app.config]`` holds the defaults ``flwr run .`` uses.

=================  ==========================================================
key                value
=================  ==========================================================
``scenario``       a bundled scenario name or a .toml path (``flwr run .``)
``scenario-json``  the resolved scenario as JSON (what the CLI sends); wins
                   over ``scenario`` when not empty
``out-dir``        the results folder; "" = ``runs/<name>-<time>/`` in the
                   ServerApp's working directory
``engine``         recorded in summary.json (``flwr-run`` for plain Flower)
``method``         a name in :data:`server.methods.METHODS`
``resume``         continue from the checkpoint in ``out-dir``
=================  ==========================================================

The scenario is parsed once per process and text: :func:`decode` caches it by the
JSON text (or the file and its modification time), so a ClientApp called every round
does not validate it (and read its CSV files) again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from scenarios.loader import ScenarioError, load_scenario, resolve_path, validate
from scenarios.schema import Scenario

SCENARIO = "scenario"
SCENARIO_JSON = "scenario-json"
OUT_DIR = "out-dir"
ENGINE = "engine"
METHOD = "method"
RESUME = "resume"
DEFAULT_SCENARIO = "quickstart"
DEFAULT_ENGINE = "flwr-run"
DEFAULT_METHOD = "gradcov"
# ``flwr run .``'s run config: pyproject's [tool.flwr.app.config] and the staged app's
DEFAULTS = {SCENARIO: DEFAULT_SCENARIO, SCENARIO_JSON: "", OUT_DIR: "", ENGINE: DEFAULT_ENGINE,
            METHOD: DEFAULT_METHOD, RESUME: False}


@dataclass(frozen=True)
class RunConfig:
    """A decoded run config.

    Parameters
    ----------
    scenario : Scenario
        The validated scenario (shared by every caller in the process: do not mutate it).
    out_dir : str
        The results folder, "" for the ServerApp's default.
    engine : str
    method : str
    resume : bool
    """

    scenario: Scenario
    out_dir: str
    engine: str
    method: str
    resume: bool


def encode(scenario: Scenario, out_dir: str, engine: str, method: str = DEFAULT_METHOD,
           resume: bool = False) -> dict[str, Any]:
    """The run config of a resolved scenario (the CLI's engines send this)."""
    return {SCENARIO: "", SCENARIO_JSON: scenario.model_dump_json(), OUT_DIR: out_dir, ENGINE: engine,
            METHOD: method, RESUME: resume}


def decode(run_config: dict[str, Any]) -> RunConfig:
    """Read a run config; missing keys take ``flwr run .``'s defaults. A bad scenario is
    a one-line :class:`ScenarioError`."""
    return RunConfig(
        scenario=scenario_of(run_config),
        out_dir=str(run_config.get(OUT_DIR, "") or ""),
        engine=str(run_config.get(ENGINE, DEFAULT_ENGINE) or DEFAULT_ENGINE),
        method=str(run_config.get(METHOD, DEFAULT_METHOD) or DEFAULT_METHOD),
        resume=bool(run_config.get(RESUME, False)),
    )


def scenario_of(run_config: dict[str, Any]) -> Scenario:
    """The scenario a run is for: ``scenario-json`` if the CLI resolved it, else the file
    or bundled name in ``scenario`` (``flwr run .``). Parsed once per text or file version."""
    text = str(run_config.get(SCENARIO_JSON, "") or "")
    if text:
        return _from_json(text)
    path = resolve_path(str(run_config.get(SCENARIO, "") or DEFAULT_SCENARIO))
    return _from_file(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _from_json(text: str) -> Scenario:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"run config {SCENARIO_JSON}: not JSON ({exc})") from None
    return validate(raw, source=f"run config {SCENARIO_JSON}")


@lru_cache(maxsize=8)
def _from_file(path: str, mtime_ns: int) -> Scenario:
    return load_scenario(Path(path))
