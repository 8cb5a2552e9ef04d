"""Rounds and bytes to convergence: every method on the bundled scenarios, side by side.

    python benchmarks/compare.py [--out DIR] [--max-rounds N] [--only ill_conditioned,...]
                                 [--dims 50,500,5000] [--seeds 1,2,3,4]

1. ``fedsigma compare`` on ill_conditioned, non_iid and diabetes (learning rates
   tuned per method on the grids in fedsigma/experiments/compare.py, each method then rerun
   at its tuned value on the further seeds), then the criteria of issue 3 on
   ill_conditioned, each printed PASS/FAIL with its numbers.
2. The bytes table: gradcov (low-rank-plus-ridge, rank 20), newton and fedadam
   on scenarios/bytes_family.toml at d = 50, 500, 5000 — uplink bytes to target.
Everything lands in DIR (default runs/benchmark-compare/), one folder per scenario.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedsigma.experiments.compare import compare
from scenarios.loader import load_scenario
from server.methods import METHODS

SCENARIOS = ("ill_conditioned", "non_iid", "diabetes")
BYTES_METHODS = ["gradcov", "newton", "fedadam"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-compare"))
    parser.add_argument("--max-rounds", type=int, default=3000, help="round budget of every method")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--dims", default="50,500,5000", help="bytes-table dimensions ('' to skip)")
    parser.add_argument("--seeds", default="1,2,3,4", help="further seeds for each scenario's table ('' for none)")
    args = parser.parse_args()
    console = Console(width=130)
    started = time.perf_counter()
    for name in [s for s in args.only.split(",") if s]:
        console.rule(name)
        seeds = [int(v) for v in args.seeds.split(",") if v]
        rows = compare(name, _all_methods(), [], (args.out / name).resolve(), console, max_rounds=args.max_rounds,
                       seeds=seeds)
        if name == "ill_conditioned":
            criteria(rows, load_scenario(name), console)
    dims = [int(d) for d in args.dims.split(",") if d]
    if dims:
        bytes_table(dims, args.out.resolve(), args.max_rounds, console)
    console.print(f"total {time.perf_counter() - started:.0f} s")


def _all_methods() -> list[str]:
    return list(METHODS)


def criteria(rows: list[dict], scenario, console: Console) -> None:
    """Issue 3's three checks on ill_conditioned, from the table just measured."""
    by = {r["method"]: r for r in rows}

    def rounds(method: str) -> float:
        value = by.get(method, {}).get("rounds_to_target")
        return int(value) if value not in ("", None) else math.inf

    per_round = scenario.clients.count * scenario.clients.fraction * scenario.protocol.probes
    pooling = math.ceil(10 * scenario.dim() / per_round)
    g, oracle, sgd = rounds("gradcov"), rounds("oracle"), rounds("fedsgd")
    adaptive = min(rounds(m) for m in ("fedadam", "fedyogi", "fedadagrad"))
    checks = [
        (f"gradcov ≤ 2 × oracle + pooling rounds: {g} ≤ 2 × {oracle} + {pooling}", g <= 2 * oracle + pooling),
        (f"gradcov ≥ 100× fewer rounds than fedsgd: {sgd} / {g} = {sgd / g:.1f}×", sgd >= 100 * g),
        (f"gradcov ≥ 20× fewer rounds than the best adaptive: {adaptive} / {g} = {adaptive / g:.1f}×",
         adaptive >= 20 * g),
    ]
    for text, ok in checks:
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {text}", highlight=False)


def bytes_table(dims: list[int], out: Path, budget: int, console: Console) -> None:
    """Uplink bytes to target on bytes_family at each d, for gradcov / newton / fedadam."""
    table = Table(title="uplink bytes to relative excess risk 1e-6 (bytes_family: spiked Σ, 10 clients)")
    table.add_column("d")
    for m in BYTES_METHODS:
        table.add_column(f"{m} bytes")
        table.add_column(f"{m} rounds")
    results = []
    for d in dims:
        console.rule(f"bytes_family, d = {d}")
        # N = 10·d rows at least, so the pooled problem stays well-posed as d grows
        sets = [f"data.dim={d}", f"data.rows_per_client={max(600, d)}"]
        rows = compare("bytes_family", BYTES_METHODS, sets, out / f"bytes_d{d}", console, max_rounds=budget)
        by = {r["method"]: r for r in rows}
        cells = [str(d)]
        for m in BYTES_METHODS:
            r = by.get(m, {})
            cells += [f"{r['bytes_up_to_target']:,}" if r.get("bytes_up_to_target") not in ("", None) else "not reached",
                      str(r.get("rounds_to_target") or f"> {budget}")]
        table.add_row(*cells)
        results.append(cells)
    console.print(table)
    with (out / "bytes_table.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["d"] + [f"{m}_{k}" for m in BYTES_METHODS for k in ("bytes_up", "rounds")])
        writer.writerows(results)


if __name__ == "__main__":
    main()
