"""`fedsigma reproduce --quick` end to end: report, figures, verdicts computed from numbers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from fedsigma.cli import main
from fedsigma.experiments.reproduce import CLAIMS, EXPERIMENTS
from fedsigma.experiments.reproduce.common import OPS, fmt


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "tmp"
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["reproduce", "--quick", "--out", str(out)])
    return code, out, buffer.getvalue(), json.loads((out / "results.json").read_text())


def test_quick_reproduce_exits_0_and_writes_report_and_one_png_per_experiment(quick_run):
    code, out, _, results = quick_run
    assert code == 0
    report = (out / "report.md").read_text()
    assert results["mode"] == "quick" and results["passed"] is True
    assert [e["number"] for e in results["experiments"]] == [n for n, _, _ in EXPERIMENTS]
    pngs = [e["figure"] for e in results["experiments"]]
    assert len(set(pngs)) == len(EXPERIMENTS) and all(p.endswith(".png") for p in pngs)
    for png in pngs:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert f"]({png})" in report  # linked from the report
    assert "cores" in report and f"{results['seconds']:.0f} s" in report


def test_every_verdict_is_computed_from_its_number_and_criterion(quick_run):
    _, out, stdout, results = quick_run
    report = (out / "report.md").read_text()
    for exp in results["experiments"]:
        assert exp["checks"], f"experiment {exp['number']} has no check"
        for check in exp["checks"]:
            assert check["passed"] == OPS[check["op"]](check["measured"], check["threshold"])
            assert check["op"] in ("<=", ">=") and np.isfinite(check["threshold"])
        assert exp["passed"] == all(c["passed"] for c in exp["checks"])
    # one verdict per claim (and one for docs/method.md's own checks), each the AND of its checks
    claims = {c["claim"]: c for c in results["claims"]}
    assert set(claims) == set(CLAIMS)
    for claim, verdict in claims.items():
        mapped = [c for e in results["experiments"] for c in e["checks"] if c["claim"] == claim]
        assert verdict["checks"] and len(verdict["checks"]) == len(mapped)
        assert verdict["passed"] == all(c["passed"] for c in mapped)
        name = f"Claim {claim}" if claim else "Beyond"
        line = next(line for line in stdout.splitlines() if f" {name} (" in line)
        head = verdict["checks"][0]
        assert line.startswith("PASS" if verdict["passed"] else "FAIL")
        assert f"{fmt(head['measured'])} (criterion {head['op']} {fmt(head['threshold'])})" in line
        assert f"| {claim or 'beyond'} | " in report


def _experiment(results, number):
    return next(e for e in results["experiments"] if e["number"] == number)


def test_checks_agree_with_the_raw_numbers_behind_them(quick_run):
    _, _, _, results = quick_run
    # 1: geometric mean of error ÷ (Gaussian limit + bias) over every point
    exp1 = _experiment(results, 1)
    ratios = [p["op"] / (p["op_gauss"] + p["bias"]) for p in exp1["data"]["points"]]
    assert exp1["checks"][0]["measured"] == pytest.approx(np.exp(np.mean(np.log(ratios))))
    # 3: the uncalibrated whitened condition number at the largest K
    exp3 = _experiment(results, 3)
    kmax = max(p["K"] for p in exp3["data"]["points"])
    uncal = next(p for p in exp3["data"]["points"] if p["c"] == 0 and p["K"] == kmax)
    assert exp3["checks"][0]["measured"] == pytest.approx(uncal["condition"])
    # 6: extra rounds over the oracle, both run through the engine
    exp6 = _experiment(results, 6)
    k20 = min(exp6["data"]["runs"], key=lambda k: abs(int(k) - 20 * 20))
    run = exp6["data"]["runs"][k20]
    assert exp6["data"]["scenario"] == "quickstart"
    assert run["rounds_to_target"] and exp6["data"]["oracle"]["rounds_to_target"]
    assert exp6["checks"][0]["measured"] == run["rounds_to_target"] - exp6["data"]["oracle"]["rounds_to_target"]
    # 9: μ = 2B/σ_inj
    exp9 = _experiment(results, 9)
    assert exp9["data"]["mu"] == pytest.approx(2 * exp9["data"]["bound"] / np.sqrt(exp9["data"]["injected_var"]))


def test_same_command_same_numbers(quick_run, tmp_path):
    """Rerun the cheap experiments: identical numbers (every RNG is seeded)."""
    from fedsigma.experiments.reproduce import recovery
    from shared.threads import single_thread

    _, _, _, results = quick_run
    with single_thread():
        again = recovery.calibration(True, tmp_path)
    first = _experiment(results, 3)
    assert [c.measured for c in again.checks] == [c["measured"] for c in first["checks"]]


def test_report_lists_claims_and_sections(quick_run):
    _, out, _, results = quick_run
    report = (out / "report.md").read_text()
    for number, title, _ in EXPERIMENTS:
        assert re.search(rf"^### {number}\. .+ — (PASS|FAIL)$", report, re.M), number
    assert report.count("**Checks.**") == len(EXPERIMENTS)
