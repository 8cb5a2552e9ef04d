"""Clean and faulty runs side by side: dropouts, partial participation, Byzantine clients.

    python benchmarks/faults.py [--seeds 1,2,3,4,5] [--scenarios quickstart,ill_conditioned]
                                [--kinds nan,inf,...] [--byzantine 1,4] [--byzantine-dropout 0.2]
                                [--skip-dropout] [--skip-byzantine]
                                [--skip-stragglers] [--straggler-engines inline,simulation]

Every faulty run has a clean twin with the same scenario and seed (inline engine),
so each ratio is measured in this one run. Per condition it prints the median over
seeds of the rounds to the scenario's target (a run that misses it counts as never)
and of the final ‖Σ̂ − Σ‖/‖Σ‖, their ratios to the clean medians, and the goal it
is held to (issue 10):

- ``faults.dropout`` 0.1: rounds ≤ 1.2× clean; 0.3: ≤ 1.5×; ``clients.fraction`` 0.5 reaches the target;
  beside them the ``oracle`` method under the same faults (the true Σ for P and for carrying
  absent clients' gradients forward, without gradcov's pairs from incomplete rounds or its
  shrinkage towards the fresh mean): a reference for what knowing Σ buys, since a client that
  has not replied yet is missing from every estimate of the federation's gradient;
- 1 Byzantine client of 20, each kind: finishes, rounds ≤ 1.5× clean, final Σ̂ error ≤ 2× clean;
  4 of 20: reported against the same bars. ``--byzantine-dropout P`` also drops a share P
  of all replies in those runs: both faults at once, against the same clean twin.

- stragglers past ``training.round_timeout``: a round costs at most the timeout more than
  the clean round (median seconds per round, same scenario and seed, side by side).

Byzantine runs use 20 clients (``clients.count = 20``). Their target and Σ̂ error
are the honest clients' (server.build.oracle_for): a lying client's data never
reaches the server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedsigma.engines.dispatch import run_engine
from scenarios.loader import load_scenario
from scenarios.schema import BYZANTINE_KINDS
from shared.results import read_rounds

DROPOUT_GOALS = {  # condition → (overrides, max rounds ratio; None: must reach the target)
    "dropout 0.1": (["faults.dropout=0.1"], 1.2),
    "dropout 0.3": (["faults.dropout=0.3"], 1.5),
    "fraction 0.5": (["clients.fraction=0.5"], None),
}
BYZANTINE_ROUNDS, BYZANTINE_SIGMA = 1.5, 2.0
CLIENTS = 20


def run(scenario: str, sets: list[str], tmp: Path, method: str = "gradcov") -> tuple[float, float | None]:
    """(rounds to target — inf if missed —, final Σ̂ error) of one inline run."""
    sc = load_scenario(scenario, sets)
    out = tmp / f"run{len(list(tmp.iterdir()))}"
    run_engine(sc, out, method)
    summary = json.loads((out / "summary.json").read_text())
    reached = summary["rounds_to_target"]
    return (math.inf if reached is None else float(reached)), summary["final"].get("sigma_rel_error")


def medians(scenario: str, sets: list[str], seeds: list[int], tmp: Path,
            method: str = "gradcov") -> tuple[float, float | None, int]:
    """Median rounds, median final Σ̂ error, and how many seeds reached the target."""
    results = [run(scenario, sets + [f"seed={seed}"], tmp, method) for seed in seeds]
    rounds = [r for r, _ in results]
    errors = [e for _, e in results if e is not None]
    return statistics.median(rounds), (statistics.median(errors) if errors else None), sum(map(math.isfinite, rounds))


def fmt(value: float | None, digits: str = ".3g") -> str:
    if value is None:
        return "—"
    return "never" if math.isinf(value) else format(value, digits)


def dropout_table(scenarios: list[str], seeds: list[int], console: Console, tmp: Path) -> None:
    table = Table(title=f"Dropout and partial participation (medians over seeds {seeds})")
    for col in ("scenario", "condition", "rounds", "clean", "ratio", "goal", "reached", "Σ̂ err", "met",
                "oracle", "oracle clean", "vs oracle"):
        table.add_column(col)
    for scenario in scenarios:
        clean, _, _ = medians(scenario, [], seeds, tmp)
        oracle_clean, _, _ = medians(scenario, [], seeds, tmp, "oracle")
        for name, (sets, goal) in DROPOUT_GOALS.items():
            rounds, error, reached = medians(scenario, sets, seeds, tmp)
            # the floor: the true Σ for P and for carrying absent clients' gradients, same faults
            oracle, _, _ = medians(scenario, sets, seeds, tmp, "oracle")
            ratio = rounds / clean
            met = reached == len(seeds) if goal is None else ratio <= goal
            table.add_row(scenario, name, fmt(rounds), fmt(clean), fmt(ratio, ".2f"),
                          "reaches" if goal is None else f"≤ {goal}×", f"{reached}/{len(seeds)}", fmt(error),
                          "yes" if met else "NO", fmt(oracle), fmt(oracle_clean), fmt(rounds / oracle, ".2f"))
            console.print(f"  {scenario} {name}: {fmt(rounds)} rounds vs {fmt(clean)} clean", highlight=False)
    console.print(table)


def byzantine_table(scenarios: list[str], seeds: list[int], kinds: list[str], counts: list[int],
                    console: Console, tmp: Path, dropout: float = 0.0) -> None:
    """Byzantine clients of each kind, with ``dropout`` of all replies lost on top (the clean
    twin has neither)."""
    also = f", {dropout:g} of replies dropped too" if dropout else ""
    table = Table(title=f"Byzantine clients of {CLIENTS}{also} (medians over seeds {seeds})")
    for col in ("scenario", "kind", "bad", "rounds", "clean", "ratio", "Σ̂ err", "clean", "ratio", "reached", "met"):
        table.add_column(col)
    base = [f"clients.count={CLIENTS}"]
    for scenario in scenarios:
        clean_rounds, clean_error, _ = medians(scenario, base, seeds, tmp)
        for count in counts:
            for kind in kinds:
                sets = base + [f"faults.byzantine={count}", f'faults.byzantine_kind="{kind}"']
                sets += [f"faults.dropout={dropout}"] if dropout else []
                rounds, error, reached = medians(scenario, sets, seeds, tmp)
                r_ratio = rounds / clean_rounds
                e_ratio = error / clean_error if error is not None and clean_error else None
                met = r_ratio <= BYZANTINE_ROUNDS and e_ratio is not None and e_ratio <= BYZANTINE_SIGMA
                table.add_row(scenario, kind, str(count), fmt(rounds), fmt(clean_rounds), fmt(r_ratio, ".2f"),
                              fmt(error), fmt(clean_error), fmt(e_ratio, ".2f"), f"{reached}/{len(seeds)}",
                              "yes" if met else "NO")
                console.print(f"  {scenario} {count}× {kind}: {fmt(rounds)} rounds, Σ̂ {fmt(error)}", highlight=False)
    console.print(table)


STRAGGLER_RUN = ["stop.max_rounds=6", "stop.target=1e-300"]  # every round runs: 6 timed rounds
STRAGGLER_TIMEOUT = {"inline": 1.0, "simulation": 3.0}  # s: above a clean round on each engine
STRAGGLER_DELAY = 30.0  # s a straggler would take: far past the timeout


def round_seconds(scenario: str, sets: list[str], tmp: Path) -> tuple[float, list[int]]:
    """(median seconds of a round, clients_failed per round) of one run."""
    sc = load_scenario(scenario, sets)
    out = tmp / f"run{len(list(tmp.iterdir()))}"
    out.mkdir()  # the Flower engines write their log there before the ServerApp starts
    run_engine(sc, out)
    rows = read_rounds(out / "rounds.csv")
    return statistics.median(r["seconds"] for r in rows), [int(r["clients_failed"]) for r in rows]


def straggler_table(scenario: str, engines: list[str], console: Console, tmp: Path) -> None:
    """Stragglers (0, 1 or 3 of 10 clients) that would reply after 30 s, against a round
    timeout: the extra time per round, held to ≤ the timeout."""
    table = Table(title=f"Stragglers past training.round_timeout ({scenario}, 10 clients, "
                        f"delay {STRAGGLER_DELAY:g} s, median s per round of 6)")
    for col in ("engine", "stragglers", "timeout", "round s", "clean s", "extra s", "failed/round", "goal", "met"):
        table.add_column(col)
    for engine in engines:
        timeout = STRAGGLER_TIMEOUT[engine]
        base = [*STRAGGLER_RUN, "clients.count=10", f'engine="{engine}"', f"training.round_timeout={timeout}"]
        clean, _ = round_seconds(scenario, base, tmp)
        for fraction in (0.1, 0.3):
            sets = base + [f"faults.stragglers={fraction}", f"faults.straggler_delay={STRAGGLER_DELAY}"]
            seconds, failed = round_seconds(scenario, sets, tmp)
            extra = seconds - clean
            table.add_row(engine, str(round(fraction * 10)), f"{timeout:g}", f"{seconds:.2f}", f"{clean:.2f}",
                          f"{extra:.2f}", ",".join(map(str, sorted(set(failed)))), f"≤ {timeout:g}",
                          "yes" if extra <= timeout else "NO")
            console.print(f"  {engine}, {round(fraction * 10)} stragglers: {seconds:.2f} s a round vs "
                          f"{clean:.2f} s clean (timeout {timeout:g} s)", highlight=False)
    console.print(table)


def _share(text: str) -> float:
    """A share in [0, 1) for argparse (which turns the ValueError into a one-line error)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: give a share in [0, 1), e.g. 0.2")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--scenarios", default="quickstart,ill_conditioned")
    parser.add_argument("--kinds", default=",".join(BYZANTINE_KINDS))
    parser.add_argument("--byzantine", default="1,4", help="numbers of Byzantine clients of 20")
    parser.add_argument("--byzantine-dropout", type=_share, default=0.0,
                        help="also drop this share of replies in the Byzantine runs (both faults at once)")
    parser.add_argument("--skip-dropout", action="store_true")
    parser.add_argument("--skip-byzantine", action="store_true")
    parser.add_argument("--skip-stragglers", action="store_true")
    parser.add_argument("--straggler-engines", default="inline", help="inline and/or simulation")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    console = Console(width=140)
    console.print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if not args.skip_dropout:
            dropout_table(scenarios, seeds, console, tmp)
        if not args.skip_byzantine:
            kinds = [k for k in args.kinds.split(",") if k]
            counts = [int(c) for c in args.byzantine.split(",") if c]
            byzantine_table(scenarios, seeds, kinds, counts, console, tmp, args.byzantine_dropout)
        if not args.skip_stragglers:
            engines = [e for e in args.straggler_engines.split(",") if e]
            straggler_table(scenarios[0], engines, console, tmp)
    console.print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
