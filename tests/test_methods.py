"""The method registry (server.methods) is the one place a method is defined, and the
ServerApp applies a method given only through Flower's run config (``flwr run .
--run-config 'method="fedsgd"'``), with the same numbers as ``fedsigma run --method``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from _support import read_rounds_raw, rows_without_seconds

from client.client_app import app as client_app
from client.policy import settings_admitting
from fedsigma.cli import _parser, main
from fedsigma.engines.inline import run_inline
from scenarios.loader import ScenarioError, load_scenario
from scenarios.node_data import node_configs_for
from scenarios.schema import Scenario
from server.build import oracle_for
from server.methods import METHODS, Method, get_method, resolve_learning_rates, strategy_for
from server.server_app import app as server_app
from server.strategy import GradCovStrategy

ROOT = Path(__file__).resolve().parent.parent
GRADCOV_FAMILY = ("gradcov", "gradcov-uncalibrated", "gradcov-differential", "fedsgd")
FLOWER = ("fedavg", "fedadam", "fedyogi", "fedadagrad")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_every_entry_and_builds(name):
    m = METHODS[name]
    assert isinstance(m, Method) and m.name == name
    assert m.description and m.uplink, "a method needs a description and its uplink for the help texts"
    assert m.grid.parameter in ("learning_rate", "local_learning_rate", "line_search_memory")
    assert len(m.grid.values) >= 2
    assert all(v > 0 for v in m.grid.values)
    scenario = load_scenario("quickstart")
    prepared = m.prepare(scenario)
    for key, value in m.settings.items():  # every setting is a real scenario key, and is applied
        section, field = key.split(".")
        assert getattr(getattr(prepared, section), field) == value
    assert m.prepare(prepared) is prepared  # applying twice changes nothing
    strategy, config, lr, local_lr = strategy_for(scenario, name, oracle_for(scenario)[1])
    assert lr > 0 and local_lr > 0
    assert hasattr(strategy, "configure_train") and hasattr(strategy, "aggregate_train")
    # Flower's own strategies and FedNL have strategies of their own; the rest is the GradCov round
    assert isinstance(strategy, GradCovStrategy) == (name not in (*FLOWER, "fednl"))
    if isinstance(strategy, GradCovStrategy):
        assert (strategy.probes > 0) == (m.probes and prepared.preconditioner.enabled)
    assert m.uses_preconditioner(scenario) == (name in ("gradcov", "gradcov-uncalibrated",
                                                        "gradcov-differential", "oracle", "newton",
                                                        "fednl"))
    assert m.gradient_evals(scenario) >= 1
    assert m.sends_hessian == (name in ("newton", "fednl"))


def test_the_cli_and_compare_offer_exactly_the_registry():
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    method_arg = next(a for a in sub["run"]._actions if a.dest == "method")
    assert list(method_arg.choices) == list(METHODS)
    methods_arg = next(a for a in sub["compare"]._actions if a.dest == "methods")
    assert methods_arg.default.split(",") == list(METHODS)


def test_unknown_method_is_one_line():
    with pytest.raises(ScenarioError, match="method: unknown 'sgd'; choose from gradcov"):
        get_method("sgd")


def test_settings_win_over_the_scenario_and_are_validated():
    scenario = load_scenario("quickstart", ["protocol.calibration=0.5", "preconditioner.enabled=true"])
    assert METHODS["fedsgd"].prepare(scenario).preconditioner.enabled is False
    assert METHODS["gradcov-uncalibrated"].prepare(scenario).protocol.calibration == 0.0
    assert scenario.protocol.calibration == 0.5  # the parsed scenario is not changed
    zero = load_scenario("quickstart", ["protocol.calibration=0.0"])
    with pytest.raises(ScenarioError, match="method gradcov-differential: protocol.calibration"):
        METHODS["gradcov-differential"].prepare(zero)


def test_gradient_evals_count_probes_only_where_they_are_sent():
    sc = load_scenario("quickstart")  # 4 probes, no local steps
    assert METHODS["gradcov"].gradient_evals(sc) == 4 + 1
    assert METHODS["gradcov-differential"].gradient_evals(sc) == 2 * 4 + 1
    assert METHODS["fedsgd"].gradient_evals(sc) == 1
    assert METHODS["fedavg"].gradient_evals(load_scenario("quickstart", ["training.local_steps=3"])) == 3


def test_auto_rates_follow_the_registry():
    sc = load_scenario("quickstart")
    oracle = oracle_for(sc)[1]
    top = 1.0 / oracle.largest_eigenvalue()
    assert resolve_learning_rates(sc, oracle, "gradcov")[0] == 1.0
    assert resolve_learning_rates(sc, oracle, "fedsgd")[0] == pytest.approx(top)
    assert resolve_learning_rates(sc, oracle, "fedadam")[0] == 0.1
    assert resolve_learning_rates(sc, oracle, "newton") == (1.0, 0.5)


# -- the ServerApp applies a method given only through the run config --------------------

def _flwr_run_defaults() -> dict:
    """pyproject's [tool.flwr.app.config]: what `flwr run .` hands the ServerApp."""
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


@pytest.fixture(scope="module")
def gradcov_family_runs(tmp_path_factory):
    """Each GradCov-family method run twice on quickstart: through `flwr run`'s run config
    (scenario by name, method only in the run config) and through `fedsigma run --method`."""
    tmp = tmp_path_factory.mktemp("methods")
    runs = {}
    for name in GRADCOV_FAMILY:
        via_config, via_cli = tmp / f"{name}-run-config", tmp / f"{name}-cli"
        run_config = {**_flwr_run_defaults(), "method": name, "out-dir": str(via_config)}
        assert run_config["scenario"] == "quickstart" and run_config["scenario-json"] == ""
        # the nodes' operators admit the method's protocol (c = 0 is below the default privacy floor)
        policy = settings_admitting(METHODS[name].prepare(load_scenario("quickstart")))
        run_inline(server_app, client_app, 10, run_config, [{**c, **policy} for c in node_configs_for(10)])
        assert main(["run", "quickstart", "--method", name, "--out", str(via_cli)]) == 0
        runs[name] = (via_config, via_cli)
    return runs


def test_flwr_run_config_method_is_applied_by_the_server_app(gradcov_family_runs):
    for name, (via_config, via_cli) in gradcov_family_runs.items():
        summary = json.loads((via_config / "summary.json").read_text())
        assert summary["method"] == name
        recorded = Scenario.model_validate(summary["scenario"])
        assert METHODS[name].prepare(recorded) is recorded, f"{name}: its settings are not in effect"
        # the same numbers as `fedsigma run --method` (which sends the scenario as JSON)
        assert rows_without_seconds(via_config / "rounds.csv") == rows_without_seconds(via_cli / "rounds.csv"), name


def test_fedsgd_through_the_run_config_pools_no_probes(gradcov_family_runs):
    fedsgd = read_rounds_raw(gradcov_family_runs["fedsgd"][0] / "rounds.csv")
    gradcov = read_rounds_raw(gradcov_family_runs["gradcov"][0] / "rounds.csv")
    assert all(row["gradients_pooled"] in ("", "0") for row in fedsgd)
    assert int(gradcov[0]["gradients_pooled"]) > 0
    # a round of FedSGD sends one gradient per client; gradcov sends probes too
    assert int(fedsgd[0]["bytes_up"]) < int(gradcov[0]["bytes_up"])


def test_each_gradcov_variant_gives_its_own_numbers(gradcov_family_runs):
    tables = {name: rows_without_seconds(via_config / "rounds.csv")
              for name, (via_config, _) in gradcov_family_runs.items()}
    names = list(tables)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert tables[a] != tables[b], f"{a} and {b} ran the same strategy"
