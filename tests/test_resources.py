"""The resource estimate (scenarios/resources.py) and results folders (fedsigma/outdir.py)."""

from __future__ import annotations

import pytest

from fedsigma.engines.dispatch import check_size, size_report
from fedsigma.outdir import results_folder
from scenarios.loader import ScenarioError, bundled_names, load_scenario
from scenarios.resources import ResourceError, check_resources, estimate, machine_memory
from server.methods import METHODS


@pytest.mark.parametrize("name", bundled_names())
def test_every_bundled_scenario_fits_with_every_method(name):
    scenario = load_scenario(name)
    for name, method in METHODS.items():
        check_size(method.prepare(scenario), name)


def test_the_estimate_grows_with_each_size_and_names_the_key_that_binds():
    base = estimate(load_scenario("quickstart"))
    for key, value in (("data.dim", 200), ("clients.count", 1000), ("data.rows_per_client", 5000),
                       ("protocol.probes", 400)):
        assert estimate(load_scenario("quickstart", [f"{key}={value}"])).total_bytes > base.total_bytes, key
    assert estimate(load_scenario("quickstart", ["training.local_steps=100"])).round_seconds > base.round_seconds
    low_rank = estimate(load_scenario("quickstart", ["data.dim=5000", "preconditioner.rank=20"]))
    dense = estimate(load_scenario("quickstart", ["data.dim=5000"]))
    assert low_rank.total_bytes < dense.total_bytes and low_rank.round_seconds < dense.round_seconds
    with pytest.raises(ResourceError, match=r"^data\.rows_per_client.*GiB.*the machine has 1 GiB"):
        check_resources(load_scenario("quickstart", ["data.rows_per_client=2000000"]), memory=2**30)
    with pytest.raises(ResourceError, match=r"^training\.local_steps: one round .*\(training\.round_timeout\)"):
        check_resources(load_scenario("quickstart", ["training.local_steps=1000", "training.round_timeout=1"]))


def test_what_a_method_sends_is_counted():
    scenario = load_scenario("quickstart", ["data.dim=1000"])
    plain, probing, hessian = (estimate(scenario, probes=p, sends_hessian=h)
                               for p, h in ((False, False), (True, False), (False, True)))
    assert plain.total_bytes < probing.total_bytes and plain.total_bytes < hessian.total_bytes


def test_more_processes_hold_more_memory():
    inline, sim, dep = (estimate(load_scenario("quickstart", [f'engine="{e}"']))
                        for e in ("inline", "simulation", "deployment"))
    assert inline.total_bytes < sim.total_bytes < dep.total_bytes


def test_describe_estimate_lists_every_term_and_the_machine():
    text = size_report(load_scenario("quickstart"), "newton")
    for term in ("pooled data", "oracle", "Σ̂ and P", "replies of a round", "total", "one round"):
        assert term in text
    assert machine_memory() > 2**30


def test_results_folder_is_removed_when_no_round_ran_and_kept_when_one_did(tmp_path):
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), results_folder(new) as out:
        (out / "rounds.csv").write_text("round,excess_risk\n")  # the header only
        raise RuntimeError("failed before round 1")
    assert not new.exists()
    mine = tmp_path / "mine"
    mine.mkdir()  # the user's own empty folder stays, emptied again
    with pytest.raises(RuntimeError), results_folder(mine) as out:
        (out / "rounds.csv").write_text("round,excess_risk\n")
        (out / "summary.json").write_text("{}")
        raise RuntimeError("failed before round 1")
    assert mine.is_dir() and not any(mine.iterdir())
    ran = tmp_path / "ran"
    with pytest.raises(RuntimeError), results_folder(ran) as out:
        (out / "rounds.csv").write_text("round,excess_risk\n1,0.5\n")
        raise RuntimeError("failed in round 2")
    assert (ran / "rounds.csv").is_file()
    report = tmp_path / "report"  # not a run's folder: whatever was written stays
    with pytest.raises(KeyboardInterrupt), results_folder(report) as out:
        (out / "figure.png").write_bytes(b"png")
        raise KeyboardInterrupt
    assert (report / "figure.png").is_file()
    with pytest.raises(ScenarioError, match="--out: .* already holds files"), results_folder(ran):
        pass
