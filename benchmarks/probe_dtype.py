"""Probes on the wire in float64, float32 and float16: gradcov's rounds, Σ̂ error and uplink.

    python benchmarks/probe_dtype.py [--only ill_conditioned,...] [--dtypes float64,float32,float16]
                                     [--out DIR]

Probe gradients carry calibrated target noise of variance c·n on purpose, so
rounding them to float32 (relative error 6e-8) or float16 (5e-4) adds almost
nothing to the error they already have; the training gradient stays float64.
For each scenario (bytes_family at d = 500, cross_device at 1,000 clients) and
each ``protocol.probe_dtype``, one gradcov run on the inline engine at the
scenario's own settings prints: rounds to the scenario's target, Σ̂'s relative
and whitened errors when the run ends, probes pooled, uplink bytes to the target
and over the run, and replies the server rejected (a float16 probe that
overflows arrives as inf and is rejected, naming its client).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedsigma.engines.dispatch import run_engine
from scenarios.loader import load_scenario
from shared.results import read_rounds

SCENARIOS = {
    "ill_conditioned": [],
    "non_iid": [],
    "diabetes": [],
    "bytes_family": ["data.dim=500"],
    "cross_device": ["clients.count=1000"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--dtypes", default="float64,float32,float16")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-probe-dtype"))
    args = parser.parse_args()
    table = Table(title="gradcov with probes sent in each dtype (one seed: the scenario's own)")
    for column in ("scenario", "probe dtype", "rounds to target", "Σ̂ rel. error", "Σ̂ whitened error",
                   "probes pooled", "uplink to target (B)", "uplink, whole run (B)", "rejected"):
        table.add_column(column)
    for name in [s for s in args.only.split(",") if s]:
        for dtype in [d for d in args.dtypes.split(",") if d]:
            scenario = load_scenario(name, [*SCENARIOS[name], f"protocol.probe_dtype='{dtype}'"])
            out = (args.out / f"{name}-{dtype}").resolve()
            run_engine(scenario, out, "gradcov")
            rows = read_rounds(out / "rounds.csv")
            target = scenario.stop.target
            hit = next((r for r in rows if r["excess_risk"] is not None and r["excess_risk"] <= target), None)
            last = rows[-1]
            table.add_row(
                name, dtype, "not reached" if hit is None else f"{hit['round']:.0f}",
                _num(last["sigma_rel_error"]), _num(last["sigma_whitened_error"]), f"{last['gradients_pooled']:.0f}",
                "—" if hit is None else f"{hit['bytes_up']:,.0f}",  # bytes_up is a running total
                f"{last['bytes_up']:,.0f}", f"{sum(r['clients_rejected'] for r in rows):.0f}",
            )
    console = Console(width=160)
    console.print(table)
    console.print("load " + " ".join(f"{v:.1f}" for v in os.getloadavg()))


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    main()
