"""The inline and simulation (Ray) engines give identical rounds.csv apart from timing."""

from __future__ import annotations

import pytest
from _support import MARK, live_processes_with_env, rows_without_seconds, run_cli

pytestmark = pytest.mark.slow  # starts Ray or Flower server processes


@pytest.mark.timeout(240)
def test_simulation_matches_inline(tmp_path):
    common = ["--set", "stop.max_rounds=4", "--set", "clients.count=4", "--set", "clients.fraction=0.75"]
    outs = {}
    for engine in ("inline", "simulation"):
        outs[engine] = tmp_path / engine
        done, mark = run_cli(["quickstart", "--engine", engine, "--out", str(outs[engine]), *common], timeout=200)
        assert done.returncode == 0, done.stderr[-2000:]
        # the CLI stopped every process it started (only this run's: others may run Flower too)
        assert live_processes_with_env(MARK, mark) == []
    inline = rows_without_seconds(outs["inline"] / "rounds.csv")
    simulation = rows_without_seconds(outs["simulation"] / "rounds.csv")
    assert len(inline) == 4
    assert inline == simulation
    # 3 of 4 clients sampled per round: the same ones on both engines
    assert {row["clients_replied"] for row in inline} == {"3"}
