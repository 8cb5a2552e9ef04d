"""Rounds to target on a scenario: gradcov vs plain FedSGD vs uncalibrated, side by side.

    python benchmarks/preconditioning.py [SCENARIO] [--fedsgd-max-rounds N]

Prints one row per variant (rounds to the scenario's target, final Σ̂ error,
uplink bytes, wall time) and the FedSGD/gradcov round ratio, all measured in
this one run. FedSGD uses the oracle-tuned step 1/λ_max(Σ), its best case.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from scenarios.cli import run_engine
from scenarios.loader import load_scenario
from server.build import GRADCOV_VARIANTS

# The same overrides that define these methods in `fedsigma compare`
VARIANTS = {
    "gradcov (c = 1)": GRADCOV_VARIANTS["gradcov"],
    "gradcov-differential": GRADCOV_VARIANTS["gradcov-differential"],
    "gradcov-uncalibrated (c = 0)": GRADCOV_VARIANTS["gradcov-uncalibrated"],
    "fedsgd (P = I)": GRADCOV_VARIANTS["fedsgd"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="ill_conditioned")
    parser.add_argument("--fedsgd-max-rounds", type=int, default=20000)
    args = parser.parse_args()
    console = Console(width=110)
    table = Table(title=f"{args.scenario}: rounds to target")
    for col in ("variant", "rounds to target", "final excess risk", "‖Σ̂−Σ‖/‖Σ‖", "bytes up", "wall s"):
        table.add_column(col)
    rounds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in VARIANTS.items():
            if name.startswith("fedsgd"):
                sets = sets + [f"stop.max_rounds={args.fedsgd_max_rounds}"]
            scenario = load_scenario(args.scenario, sets)
            out = Path(tmp) / str(len(rounds))
            started = time.perf_counter()
            console.print(f"running {name} …")
            run_engine(scenario, out)
            summary = json.loads((out / "summary.json").read_text())
            final = summary["final"]
            rounds[name] = summary["rounds_to_target"]
            sig = final.get("sigma_rel_error")
            table.add_row(
                name,
                str(summary["rounds_to_target"] or f"> {summary['rounds_run']}"),
                f"{final['excess_risk']:.2e}",
                "" if sig is None else f"{sig:.3f}",
                f"{final['bytes_up']:,}",
                f"{time.perf_counter() - started:.1f}",
            )
    console.print(table)
    base, sgd = rounds["gradcov (c = 1)"], rounds["fedsgd (P = I)"]
    if base and sgd:
        console.print(f"FedSGD needs {sgd / base:.0f}× the rounds of gradcov ({sgd} vs {base}).")
    elif base:
        console.print(f"FedSGD did not reach the target in {args.fedsgd_max_rounds} rounds "
                      f"(> {args.fedsgd_max_rounds / base:.0f}× gradcov's {base}).")


if __name__ == "__main__":
    main()
