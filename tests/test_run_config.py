"""The run config (scenarios/run_config.py): one module encodes and decodes it, the keys
match pyproject's ``flwr run .`` defaults, the scenario is parsed once per process, and
error replies are logged with their partition and reason, under Flower's own error code."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest
from flwr.app import Message
from flwr.common.constant import ErrorCode

from client.client_app import app as client_app
from fedsigma.engines import processes as fp
from fedsigma.engines.dispatch import run_engine
from fedsigma.engines.inline import CLIENT_ERROR, run_inline
from scenarios import run_config as rc
from scenarios.loader import ScenarioError, load_scenario, updated
from server.server_app import app as server_app

ROOT = Path(__file__).resolve().parent.parent
KEYS = (rc.SCENARIO, rc.SCENARIO_JSON, rc.OUT_DIR, rc.ENGINE, rc.METHOD, rc.RESUME)


def test_encode_then_decode_gives_back_the_run():
    scenario = updated(load_scenario("quickstart"), {"seed": 9})
    cfg = rc.encode(scenario, "/tmp/x", "inline", "fedsgd", resume=True)
    assert set(cfg) == set(KEYS)
    decoded = rc.decode(cfg)
    assert decoded.scenario == scenario and decoded.scenario.seed == 9
    assert (decoded.out_dir, decoded.engine, decoded.method, decoded.resume) == ("/tmp/x", "inline", "fedsgd", True)


def test_flwr_run_defaults_use_the_same_keys():
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert defaults == rc.DEFAULTS and set(defaults) == set(KEYS)
    staged = tomllib.loads(fp.APP_PYPROJECT + fp.toml_scalars(rc.DEFAULTS))["tool"]["flwr"]["app"]["config"]
    assert staged == rc.DEFAULTS
    decoded = rc.decode(defaults)
    assert decoded.scenario.name == defaults[rc.SCENARIO] and decoded.method == defaults[rc.METHOD]
    assert rc.decode({}).scenario.name == rc.DEFAULT_SCENARIO  # every key has a default


def test_the_scenario_is_parsed_once_per_text_and_file():
    cfg = rc.encode(load_scenario("quickstart"), "", "inline")
    assert rc.scenario_of(cfg) is rc.scenario_of(dict(cfg))
    assert rc.scenario_of({rc.SCENARIO: "quickstart"}) is rc.scenario_of({rc.SCENARIO: "quickstart"})


def test_a_bad_scenario_in_the_run_config_is_one_line():
    with pytest.raises(ScenarioError, match="run config scenario-json: not JSON"):
        rc.decode({rc.SCENARIO_JSON: "{oops"})
    with pytest.raises(ScenarioError, match="run config scenario-json: .*clients.count"):
        rc.decode({rc.SCENARIO_JSON: '{"clients": {"count": 0}}'})


def test_one_run_parses_its_scenario_once(tmp_path, monkeypatch):
    """The ServerApp, every ClientApp call and the federation's cache of an inline run
    share one parse: the scenario's CSV validator reads its table once."""
    import scenarios.schema as schema

    table = tmp_path / "t.csv"
    table.write_text("a,b,y\n" + "".join(f"{i % 7},{(i * 5) % 11},{(i * 3) % 13}\n" for i in range(200)))
    (tmp_path / "csv.toml").write_text(
        f'[data]\nkind = "csv"\npath = "{table}"\ntarget = "y"\n[clients]\ncount = 4\n'
        "[protocol]\nbatch_size = 8\n[stop]\nmax_rounds = 3\n")
    scenario = load_scenario(tmp_path / "csv.toml")
    reads = []
    real = schema.load_csv
    monkeypatch.setattr(schema, "load_csv", lambda *a, **k: reads.append(a) or real(*a, **k))
    run_engine(scenario, tmp_path / "out")
    assert (tmp_path / "out" / "summary.json").is_file()
    assert len(reads) == 1, reads  # the ServerApp's decode; clients and the federation reuse it


def test_error_replies_are_logged_with_partition_and_reason(tmp_path):
    failing = 3

    def flaky(msg: Message, context):
        if msg.metadata.message_type == "train" and context.node_config["partition-id"] == failing:
            raise RuntimeError("disk on fire")
        return client_app(msg, context)

    assert CLIENT_ERROR == ErrorCode.CLIENT_APP_RAISED_EXCEPTION  # what the real engines report
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(handler)
    try:
        scenario = updated(load_scenario("quickstart"), {"stop.max_rounds": 2})
        run_inline(server_app, flaky, 10, rc.encode(scenario, str(tmp_path / "out"), "inline"))
    finally:
        flwr_logger.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    failures = [line for line in lines if line.startswith(f"partition {failing}: RuntimeError: disk on fire")]
    assert len(failures) == 2, lines  # one per round
