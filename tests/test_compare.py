"""`fedsigma compare` on a small scenario: a complete table, and the oracle on top."""

from __future__ import annotations

import csv
import json

import pytest
from _support import write_scenario

from fedsigma.cli import main
from fedsigma.experiments.compare import COLUMNS
from server.methods import METHODS

SMALL = """
seed = 2
[data]
dim = 8
condition_number = 50.0
rows_per_client = 200
[clients]
count = 4
[protocol]
batch_size = 32
probes = 8
[preconditioner]
warmup_gradients = 64
[stop]
max_rounds = 40
target = 1e-6
"""


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    scenario = write_scenario(tmp / "small.toml", SMALL)
    out = tmp / "out"
    assert main(["compare", str(scenario), "--out", str(out)]) == 0
    with (out / "comparison.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return out, rows


def test_table_is_complete(comparison):
    out, rows = comparison
    assert sorted(r["method"] for r in rows) == sorted(METHODS)
    assert tuple(rows[0]) == COLUMNS
    assert (out / "comparison.png").stat().st_size > 10_000
    for r in rows:
        assert (out / r["run_dir"] / "rounds.csv").is_file()  # every method's own run folder
        assert float(r["learning_rate"]) > 0 and r["tuned_grid"]
        if r["rounds_to_target"]:
            assert int(r["bytes_up_to_target"]) > 0 and int(r["bytes_down_to_target"]) > 0
            assert int(r["local_gradient_evals_to_target"]) > 0
            assert float(r["final_excess_risk"]) <= 1e-6
        else:
            assert r["bytes_up_to_target"] == "" and float(r["final_excess_risk"]) > 1e-6
    # sorted by rounds, unreached last
    reached = [int(r["rounds_to_target"]) for r in rows if r["rounds_to_target"]]
    assert reached == sorted(reached)
    assert all(r["rounds_to_target"] for r in rows[: len(reached)])


def test_oracle_is_never_beaten(comparison):
    _, rows = comparison
    by = {r["method"]: r for r in rows}
    oracle = int(by["oracle"]["rounds_to_target"])
    for r in rows:
        if r["rounds_to_target"] and r["method"] != "newton":  # Newton also has the exact Hessian
            assert int(r["rounds_to_target"]) >= oracle, r["method"]
    # the method itself gets there, and faster than plain FedSGD within the budget
    assert by["gradcov"]["rounds_to_target"]
    assert not by["fedsgd"]["rounds_to_target"] or int(by["fedsgd"]["rounds_to_target"]) > int(
        by["gradcov"]["rounds_to_target"])
    # Newton pays d² floats per client up front: more uplink than the oracle, which pays nothing
    assert int(by["newton"]["bytes_up_to_target"]) > int(by["oracle"]["bytes_up_to_target"])


def test_unknown_method_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", "quickstart", "--methods", "gradcov,sgdx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--methods" in err[0] and "sgdx" in err[0]


def test_seeds_rerun_each_method_at_its_tuned_value(tmp_path):
    """--seeds 3,4: each method reruns at its tuned η on seeds 3 and 4; the table lists
    rounds per seed (the scenario's seed 2 first) and their median, and a seed's
    number is the one `fedsigma run` gives for that seed at that η."""
    scenario = write_scenario(tmp_path / "small.toml", SMALL)
    out = tmp_path / "out"
    assert main(["compare", str(scenario), "--methods", "gradcov,oracle", "--seeds", "3,4,2",
                 "--out", str(out)]) == 0
    with (out / "comparison.csv").open(newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    gradcov = rows["gradcov"]
    assert gradcov["seeds"] == "2 3 4"
    by_seed = [int(v) for v in gradcov["rounds_to_target_by_seed"].split()]
    assert float(gradcov["rounds_to_target_median"]) == sorted(by_seed)[1]
    direct = tmp_path / "direct"
    assert main(["run", str(scenario), "--set", "seed=4", "--set", f"training.learning_rate={gradcov['learning_rate']}",
                 "--out", str(direct)]) == 0
    assert json.loads((direct / "summary.json").read_text())["rounds_to_target"] == by_seed[2]
    assert (out / "gradcov" / "seed-3" / "rounds.csv").is_file()
    assert "median (min–max)" in (out / "comparison.md").read_text()


def test_bad_seeds_are_a_one_line_error(tmp_path, capsys):
    assert main(["compare", "quickstart", "--seeds", "1,x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds" in err[0]


def test_spread_counts_misses_and_failures_as_infinite():
    from fedsigma.experiments.compare import _median, spread

    reached = [3, None, "failed", 5, 4]
    assert _median(reached) == 5 and spread(reached) == "5 (3–∞)"
    assert _median([7, 8]) == 7.5 and _median([None, "failed", 2]) == ""
    assert spread([1200000, 1300000]) == "1250000 (1200000–1300000)"
    assert spread([None, None]) == "not reached"


def test_the_grid_is_extended_when_no_value_reaches_the_target(tmp_path):
    """FedAdam in 1 round reaches no target and its largest grid value ends lowest: that
    edge is still stepped past, so no method loses for want of tuning."""
    out = tmp_path / "ext"
    assert main(["compare", "quickstart", "--methods", "fedadam", "--max-rounds", "1", "--out", str(out)]) == 0
    with (out / "comparison.csv").open(newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["rounds_to_target"] == ""
    grid = [float(v) for v in row["tuned_grid"].split()]
    assert len(grid) > 3 and max(grid) > 0.3, grid
