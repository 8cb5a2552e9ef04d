"""Bad input to the deployment engine and to bring-your-own-data nodes: one line naming
the field or flag and the fix, exit 2, before any Flower process starts; a node whose
own CSV is unusable fails the run with the same clear line."""

from __future__ import annotations

import re

import pytest
from _support import read_rounds_raw

from client.client_app import app as client_app
from fedsigma.cli import main
from fedsigma.engines.deployment import format_node_config
from fedsigma.engines.inline import run_inline
from fedsigma.engines.processes import free_port
from scenarios.loader import load_scenario
from scenarios.node_data import NodeDataError, client_rows, node_configs
from scenarios.run_config import encode
from server.server_app import app as server_app

TABLE = "a,b,y\n" + "".join(f"{i % 5},{(i * 7) % 3},{i % 4}\n" for i in range(40))
NODES = """
name = "nodes"
[data]
kind = "nodes"
dim = 2
target = "y"
paths = ["n0.csv", "n1.csv"]
[clients]
count = 2
[protocol]
batch_size = 8
[training]
learning_rate = 0.5
[stop]
max_rounds = 2
"""


@pytest.fixture
def nodes_dir(tmp_path):
    for k in range(2):
        (tmp_path / f"n{k}.csv").write_text(TABLE)
    (tmp_path / "nodes.toml").write_text(NODES)
    return tmp_path


def _usage_error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    "edit, extra, names",
    [
        (("dim = 2\n", ""), [], ["data.dim", "feature columns"]),
        (('paths = ["n0.csv", "n1.csv"]', 'paths = ["n0.csv"]'), [], ["data.paths", "one per client"]),
        (('"n1.csv"', '"absent.csv"'), [], ["data.paths[1]", "absent.csv"]),
        (('target = "y"', 'target = "price"'), [], ["data.target", "price"]),
        (("dim = 2", "dim = 3"), [], ["data.paths[0]", "data.dim = 3"]),
        (("batch_size = 8", "batch_size = 64"), [], ["protocol.batch_size", "data.paths[0]"]),
        (('paths = ["n0.csv", "n1.csv"]\n', ""), [], ["data.paths", "one CSV per client"]),
        (("learning_rate = 0.5", 'learning_rate = "auto"'), ["--set", "preconditioner.enabled=false"],
         ["training.learning_rate", "preconditioner.enabled = true"]),
        # `run` pre-checks the scenario with its method's settings (fedsgd: no preconditioner)
        (("learning_rate = 0.5", 'learning_rate = "auto"'), ["--method", "fedsgd"],
         ["training.learning_rate", "preconditioner.enabled = true"]),
        (("", ""), ["--method", "oracle"], ["'oracle' needs the true Σ"]),
    ],
    ids=["no-dim", "paths-count", "path-missing", "target-missing", "dim-mismatch", "too-few-rows",
         "no-paths-no-nodes", "auto-lr-without-oracle", "auto-lr-fedsgd-method", "oracle-method"],
)
def test_nodes_scenario_errors(nodes_dir, capsys, edit, extra, names):
    path = nodes_dir / "nodes.toml"
    path.write_text(NODES.replace(*edit))
    line = _usage_error(capsys, ["run", str(path), "--out", str(nodes_dir / "out"), *extra])
    for name in names:
        assert name in line, line
    assert not (nodes_dir / "out").exists()


def test_malformed_table_names_the_line_and_column(nodes_dir, capsys):
    (nodes_dir / "n1.csv").write_text(TABLE.replace("\n3,0,3\n", "\n3,zero,3\n", 1))
    line = _usage_error(capsys, ["run", str(nodes_dir / "nodes.toml"), "--out", str(nodes_dir / "out")])
    assert "data.paths[1]" in line and "'b'" in line and "not numeric" in line


def test_deployment_flag_errors(nodes_dir, capsys):
    out = str(nodes_dir / "out")
    cases = [
        (["--superlink", "127.0.0.1:8000"], "--superlink: only with the deployment engine"),
        (["--engine", "deployment", "--superlink", "localhost"], "--superlink: expected HOST:PORT"),
        (["--engine", "deployment", "--no-supernodes"], "--no-supernodes: needs --superlink"),
        (["--engine", "deployment", "--tls", "--superlink", "127.0.0.1:8443"], "--tls: a running SuperLink"),
        (["--engine", "deployment", "--certs", str(nodes_dir / "none")], "--certs: no folder"),
        (["--engine", "deployment", "--certs", str(nodes_dir)], "--certs: no ca.crt"),
        (["--engine", "deployment", "--superlink", f"127.0.0.1:{free_port()}"], "--superlink: nothing answers"),
    ]
    for extra, expected in cases:
        line = _usage_error(capsys, ["run", "quickstart", "--out", out, "--set", "clients.count=3", *extra])
        assert expected in line, line


def test_node_configs_carry_each_nodes_file(nodes_dir):
    scenario = load_scenario(nodes_dir / "nodes.toml")
    configs = node_configs(scenario)
    assert [c["data-path"] for c in configs] == [str(nodes_dir / "n0.csv"), str(nodes_dir / "n1.csv")]
    assert [c["partition-id"] for c in configs] == [0, 1] and {c["target"] for c in configs} == {"y"}
    # what --node-config gets: strings quoted (TOML), numbers bare
    assert format_node_config(configs[0]) == (
        f'partition-id=0 num-partitions=2 data-path="{nodes_dir / "n0.csv"}" target="y"'
    )


@pytest.mark.parametrize(
    "table, config, expected",
    [
        (None, {"data-path": "{dir}/absent.csv"}, "node config data-path: no such file"),
        (TABLE.replace("a,b,y", "a,b,z"), {}, "node config target: "),
        (TABLE.replace("\n1,0,1\n", "\n1,0\n", 1), {}, "node config data-path: "),
        ("a,b,c,y\n1,2,3,4\n5,6,7,8\n", {}, "has 3 feature columns but the scenario's data.dim = 2"),
        ("a,b,y\n" + "1,2,3\n" * 4, {}, "has 4 rows, fewer than protocol.batch_size = 8"),
        (TABLE, {"data-path": ""}, "node config data-path: partition 0 has no CSV"),
    ],
    ids=["missing", "no-target-column", "ragged-row", "wrong-dim", "too-few-rows", "no-path"],
)
def test_a_node_with_an_unusable_table_fails_clearly(nodes_dir, table, config, expected):
    """Nodes started by someone else name their tables in their node config (the scenario
    lists none); the run stops at the handshake with the node's one-line reason."""
    (nodes_dir / "external.toml").write_text(NODES.replace('paths = ["n0.csv", "n1.csv"]\n', ""))
    scenario = load_scenario(nodes_dir / "external.toml")
    own = nodes_dir / "own.csv"
    if table is not None:
        own.write_text(table)
    bad = {"partition-id": 0, "num-partitions": 2, "data-path": str(own), "target": "y"}
    bad.update({k: v.format(dir=nodes_dir) for k, v in config.items()})
    good = {"partition-id": 1, "num-partitions": 2, "data-path": str(nodes_dir / "n1.csv"), "target": "y"}
    assert client_rows(scenario, good)[0].shape == (40, 2)
    with pytest.raises(NodeDataError, match=expected):
        client_rows(scenario, bad)
    run_config = encode(scenario, str(nodes_dir / "out"), "inline")
    key = "target" if "node config target" in expected else "data-path"
    with pytest.raises(RuntimeError, match=f"handshake failed: node config {key}: .*"
                                           + re.escape(expected.split(": ", 1)[-1])):
        run_inline(server_app, client_app, 2, run_config, [bad, good])


def test_inline_engine_runs_a_nodes_scenario_from_its_paths(nodes_dir, capsys):
    """No SuperNodes: data.paths[k] is partition k's table; no oracle, so empty metric cells."""
    out = nodes_dir / "out"
    assert main(["run", str(nodes_dir / "nodes.toml"), "--out", str(out)]) == 0
    rows = read_rounds_raw(out / "rounds.csv")
    assert len(rows) == 2 and {r["excess_risk"] for r in rows} == {""} and {r["clients_replied"] for r in rows} == {"2"}
    assert "rounds run" in capsys.readouterr().out
