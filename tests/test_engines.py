"""The inline and simulation (Ray) engines give identical rounds.csv apart from timing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _support import rows_without_seconds


def _flower_processes() -> set[int]:
    """Live (not zombie) Flower and Ray processes."""
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return {
        int(line.split()[0])
        for line in out.splitlines()[1:]
        if not line.split()[1].startswith("Z")
        and any(name in line for name in ("flower-superlink", "flwr-simulation", "flwr-serverapp", "raylet"))
    }


@pytest.mark.timeout(240)
def test_simulation_matches_inline(tmp_path):
    before = _flower_processes()
    common = ["--set", "stop.max_rounds=4", "--set", "clients.count=4", "--set", "clients.fraction=0.75"]
    outs = {}
    for engine in ("inline", "simulation"):
        outs[engine] = tmp_path / engine
        done = subprocess.run(
            [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", engine,
             "--out", str(outs[engine]), *common],
            capture_output=True, text=True, timeout=200, env=os.environ,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    inline = rows_without_seconds(outs["inline"] / "rounds.csv")
    simulation = rows_without_seconds(outs["simulation"] / "rounds.csv")
    assert len(inline) == 4
    assert inline == simulation
    # 3 of 4 clients sampled per round: the same ones on both engines
    assert {row["clients_replied"] for row in inline} == {"3"}
    # the CLI stopped every Flower process it started
    assert _flower_processes() - before == set()
