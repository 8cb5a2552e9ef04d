"""benchmarks/compare.py: cross_device on several seeds, and its goals' verdicts."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks.compare as bench
from scenarios.loader import load_scenario

REPO = Path(__file__).resolve().parents[1]


def test_cross_device_seeds_rerun_each_method_on_further_seeds(tmp_path, monkeypatch):
    # 200 clients, 10 rounds: small enough for the unit suite, and every seed a real run
    monkeypatch.setattr(sys, "argv", [
        "compare.py", "--out", str(tmp_path), "--only", "", "--dims", "", "--cross-device", "200",
        "--cross-device-seeds", "1,2", "--methods", "gradcov,oracle", "--max-rounds", "10"])
    bench.main()
    with (tmp_path / "cross_device-200" / "comparison.csv").open() as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    own = load_scenario("cross_device").seed
    assert set(rows) == {"gradcov", "oracle"}
    for method, row in rows.items():
        assert row["seeds"] == f"{own} 1 2"
        assert len(row["rounds_to_target_by_seed"].split()) == 3
        for seed in (1, 2):
            assert (tmp_path / "cross_device-200" / method / f"seed-{seed}" / "summary.json").is_file()


def test_cross_device_seeds_default_to_the_own_seed_only(monkeypatch):
    seen = {}

    def fake_compare(name, methods, sets, out, console, max_rounds=None, seeds=None):
        seen[name] = seeds
        raise SystemExit(0)  # stop after the first comparison: only its arguments matter

    monkeypatch.setattr(bench, "compare", fake_compare)
    monkeypatch.setattr(sys, "argv", ["compare.py", "--out", "x", "--only", "", "--cross-device", "1000"])
    with pytest.raises(SystemExit):
        bench.main()
    assert seen == {"cross_device": []}


def test_bad_seed_list_is_a_one_line_error():
    done = subprocess.run([sys.executable, "benchmarks/compare.py", "--cross-device-seeds", "1,two"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "error: argument --cross-device-seeds: '1,two' is not a comma-separated list of integers" in last
    assert "Traceback" not in done.stderr


def _row(method, reached, median, bytes_up="", run_dir=""):
    return {"method": method, "rounds_to_target": reached, "rounds_to_target_median": median,
            "bytes_up_to_target": bytes_up, "run_dir": run_dir}


def _rounds_csv(path: Path, bytes_per_round: list[int]) -> None:
    path.mkdir(parents=True)
    with (path / "rounds.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["round", "bytes_up", "excess_risk"])
        total = 0
        for k, b in enumerate(bytes_per_round, start=1):
            total += b
            writer.writerow([k, total, 0.5])


def _verdicts(rows, tmp_path, budget=600):
    scenario = load_scenario("cross_device", ["clients.count=1000"])
    return bench.cross_device_goal("cd", rows, scenario, budget, tmp_path)


def test_goal_uses_median_rounds_and_fednl_bytes_at_gradcovs_round(tmp_path):
    # FedNL never reaches the target; its uplink is read at gradcov's round 3 from its rounds.csv
    _rounds_csv(tmp_path / "fednl" / "best", [1000, 10, 10, 10, 10])
    rows = [_row("gradcov", 4, 3, bytes_up=900), _row("oracle", 2, 2),
            _row("fednl", "", "", run_dir="fednl/best"),
            *(_row(m, "", "") for m in bench.RIVALS)]
    verdicts = dict(_verdicts(rows, tmp_path))
    fednl = next(t for t in verdicts if "uplink" in t)
    assert "after 4 rounds" in fednl and "1,030 B" in fednl and verdicts[fednl]  # 900 < 1000 + 3·10
    oracle = next(t for t in verdicts if "oracle" in t)
    assert "gradcov 3 ≤ 2 × oracle 2" in oracle and verdicts[oracle]
    # every rival missed a 600-round budget: > 200× gradcov's 3 median rounds
    assert all(ok for t, ok in verdicts.items() if "not within 600" in t)


def test_goal_fails_when_gradcov_misses_or_fednl_is_cheaper(tmp_path):
    _rounds_csv(tmp_path / "fednl" / "best", [100, 100, 100])
    missed = [_row("gradcov", "", ""), _row("oracle", "", ""), _row("fednl", 3, 3, 300, "fednl/best")]
    verdicts = _verdicts(missed, tmp_path)
    # inf ≤ 2·inf + warm-up must not pass, nor the uplink goal without a gradcov that got there
    assert [ok for t, ok in verdicts if "oracle" in t or "uplink" in t] == [False, False]
    cheaper = [_row("gradcov", 2, 2, 500), _row("oracle", 1, 1), _row("fednl", 3, 3, 300, "fednl/best")]
    uplink = [(t, ok) for t, ok in _verdicts(cheaper, tmp_path) if "uplink" in t]
    assert len(uplink) == 1 and not uplink[0][1] and "reached the target in 3" in uplink[0][0]


def test_goal_fails_when_oracle_or_fednl_was_not_run(tmp_path):
    rows = [_row("gradcov", 120, 120, 1000)]
    verdicts = dict(_verdicts(rows, tmp_path))
    oracle = next(t for t in verdicts if "oracle" in t)
    fednl = next(t for t in verdicts if "fednl" in t)
    assert "oracle not run" in oracle and not verdicts[oracle]  # not 120 ≤ 2 × inf
    assert "fednl not run" in fednl and not verdicts[fednl]
