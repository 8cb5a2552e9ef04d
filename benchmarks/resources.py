"""The resource estimate against what runs really take: peak RSS and seconds per round.

Usage: python benchmarks/resources.py

Each configuration runs ``fedsigma run`` (inline engine, 2 rounds) in its own
process; its peak RSS comes from ``getrusage(RUSAGE_CHILDREN)`` after it exits
(each child is waited for alone, so the maximum is its own when it exceeds the
earlier ones: the configurations are ordered by size). The estimate should be at
least the measurement (it errs towards refusing).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.loader import load_scenario  # noqa: E402
from scenarios.resources import estimate  # noqa: E402
from shared.results import read_rounds  # noqa: E402

CONFIGS = {
    "quickstart": [],
    "2,000 clients × 64 rows": ["clients.count=2000", "data.rows_per_client=64"],
    "d = 1000, 10 × 2,000 rows": ["data.dim=1000", "data.rows_per_client=2000"],
    "d = 3000, rank 20, 10 × 1,000 rows": ["data.dim=3000", "data.rows_per_client=1000", "preconditioner.rank=20"],
}


def main() -> None:
    console = Console(width=140)
    table = Table(title=f"estimate vs measured, inline engine, 2 rounds (load average {os.getloadavg()[0]:.1f})")
    for col in ("run", "estimated peak", "measured peak RSS", "estimate / measured", "est. s/round", "s/round"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        for n, (label, sets) in enumerate(CONFIGS.items()):
            args = [a for s in [*sets, "stop.max_rounds=2", "stop.target=1e-300"] for a in ("--set", s)]
            out = Path(tmp) / f"r{n}"
            subprocess.run([sys.executable, "-m", "fedsigma", "run", "quickstart", "--out", str(out), *args],
                           cwd=ROOT, check=True, capture_output=True)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            seconds = max(r["seconds"] for r in read_rounds(out / "rounds.csv"))
            est = estimate(load_scenario("quickstart", [*sets, "stop.max_rounds=2"]))
            table.add_row(label, f"{est.total_bytes / 2**20:,.0f} MiB", f"{peak / 2**20:,.0f} MiB",
                          f"{est.total_bytes / peak:.2f}", f"{est.round_seconds:.2f}", f"{seconds:.2f}")
            json.loads((out / "summary.json").read_text())  # the run finished
    console.print(table)


if __name__ == "__main__":
    main()
