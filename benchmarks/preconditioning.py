"""Rounds to target on a scenario: gradcov vs plain FedSGD vs uncalibrated, side by side.

    python benchmarks/preconditioning.py [SCENARIO] [--fedsgd-max-rounds N]
                                         [--probes 32,64,128,256 --seeds 1,2,3,4,5,6,7]

Prints one row per variant (rounds to the scenario's target, final Σ̂ error,
uplink bytes, wall time) and the FedSGD/gradcov round ratio, all measured in
this one run. FedSGD uses the oracle-tuned step 1/λ_max(Σ), its best case.

Then the probes trade-off: gradcov's rounds and uplink bytes to the target for
each number of probes per client per round, over several seeds (each seed draws
new data, partitions and noise), with a plot (``--plot``). More probes shrink
Σ̂'s sampling error, so fewer rounds, at more bytes per round.

Last, an ablation of the server's secant memory (``training.line_search_memory``:
0 = plain w − η·P·ḡ steps, 1 = a line search along the last step, 20 = the
default) on every bundled scenario: how much of the speed is Σ̂ and how much
is the exact curvature the server reads off its own past steps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Console
from rich.table import Table

from fedsigma.engines.dispatch import run_engine
from scenarios.loader import load_scenario

# label → method (server.methods.METHODS: the same settings as `fedsigma compare` and `run --method`)
VARIANTS = {
    "gradcov (c = 1)": "gradcov",
    "gradcov-differential": "gradcov-differential",
    "gradcov-uncalibrated (c = 0)": "gradcov-uncalibrated",
    "fedsgd (P = I)": "fedsgd",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="ill_conditioned")
    parser.add_argument("--fedsgd-max-rounds", type=int, default=20000)
    parser.add_argument("--probes", default="32,64,128,256", help="probes per client per round ('' to skip)")
    parser.add_argument("--seeds", default="1,2,3,4,5,6,7")
    parser.add_argument("--plot", type=Path, default=Path("docs/probes_tradeoff.png"))
    parser.add_argument("--memory", default="0,1,20", help="secant memories to compare ('' to skip)")
    args = parser.parse_args()
    console = Console(width=110)
    variants(args, console)
    probes = [int(v) for v in args.probes.split(",") if v]
    if probes:
        probes_tradeoff(args.scenario, probes, [int(v) for v in args.seeds.split(",") if v], args.plot, console)
    memories = [int(v) for v in args.memory.split(",") if v]
    if memories:
        memory_ablation(memories, console)


def variants(args: argparse.Namespace, console: Console) -> None:
    table = Table(title=f"{args.scenario}: rounds to target")
    for col in ("variant", "rounds to target", "final excess risk", "‖Σ̂−Σ‖/‖Σ‖", "bytes up", "wall s"):
        table.add_column(col)
    rounds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, method in VARIANTS.items():
            sets = [f"stop.max_rounds={args.fedsgd_max_rounds}"] if method == "fedsgd" else []
            scenario = load_scenario(args.scenario, sets)
            out = Path(tmp) / str(len(rounds))
            started = time.perf_counter()
            console.print(f"running {name} …")
            run_engine(scenario, out, method)
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


def probes_tradeoff(name: str, probes: list[int], seeds: list[int], plot: Path, console: Console) -> None:
    """gradcov's rounds and uplink bytes to target against probes per client per round."""
    table = Table(title=f"{name}: gradcov, probes per client per round ({len(seeds)} seeds)")
    for col in ("probes", "rounds to target: median", "min–max", "per seed", "uplink MB: median", "wall s"):
        table.add_column(col)
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in probes:
            started, rounds, up = time.perf_counter(), [], []
            for seed in seeds:
                out = Path(tmp) / f"{k}-{seed}"
                run_engine(load_scenario(name, [f"protocol.probes={k}", f"seed={seed}"]), out)
                summary = json.loads((out / "summary.json").read_text())
                rounds.append(summary["rounds_to_target"] or math.inf)
                up.append(summary["final"]["bytes_up"] / 1e6)
            medians[k] = (statistics.median(rounds), statistics.median(up))
            table.add_row(str(k), f"{medians[k][0]:g}", f"{min(rounds):g}–{max(rounds):g}",
                          " ".join(f"{r:g}" for r in rounds), f"{medians[k][1]:.2f}",
                          f"{time.perf_counter() - started:.1f}")
    console.print(table)
    _plot_tradeoff(name, medians, plot)
    console.print(f"plot: {plot}")


def _plot_tradeoff(name: str, medians: dict[int, tuple[float, float]], path: Path) -> None:
    ks = sorted(medians)
    fig = Figure(figsize=(6, 3.6))
    left = fig.subplots()
    left.plot(ks, [medians[k][0] for k in ks], "o-", color="tab:blue")
    left.set_xscale("log", base=2)
    left.set_xticks(ks, [str(k) for k in ks])
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("probes per client per round")
    left.set_ylabel("rounds to target (median)", color="tab:blue")
    right = left.twinx()
    right.plot(ks, [medians[k][1] for k in ks], "s--", color="tab:orange")
    right.set_ylabel("uplink MB to target (median)", color="tab:orange")
    left.set_title(f"{name}: fewer rounds for more bytes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


ABLATION = {  # scenario name → overrides
    "quickstart": [],
    "ill_conditioned": [],
    "non_iid": [],
    "diabetes": [],
    "bytes_family (d = 500, rank 20)": ["data.dim=500"],
}


def memory_ablation(memories: list[int], console: Console) -> None:
    """gradcov's rounds to target for each secant memory, on every bundled scenario.
    Memory 0 runs twice: at its auto η (0.5, as nothing undoes an overshoot) and at η = 1."""
    columns = []
    for m in memories:
        columns.append((f"memory {m}" + (" (auto η = 0.5)" if m == 0 else ""), [f"training.line_search_memory={m}"]))
        if m == 0:
            columns.append(("memory 0, η = 1", ["training.line_search_memory=0", "training.learning_rate=1.0"]))
    table = Table(title="gradcov rounds to target by training.line_search_memory (0 = plain steps)")
    table.add_column("scenario")
    for label, _ in columns:
        table.add_column(label)
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in ABLATION.items():
            cells = [name]
            for i, (_, extra) in enumerate(columns):
                out = Path(tmp) / f"{len(table.rows)}-{i}"
                run_engine(load_scenario(name.split()[0], sets + extra), out)
                summary = json.loads((out / "summary.json").read_text())
                cells.append(str(summary["rounds_to_target"] or f"{summary['status']} ({summary['rounds_run']})"))
            table.add_row(*cells)
    console.print(table)


if __name__ == "__main__":
    main()
