"""``fedsigma compare``: one scenario, every method, learning rates tuned on a grid.

Every method runs the same scenario (same data, partitions, seed, client
sampling, w₀ = 0, round budget) through the same engine and round loop, so
rounds and bytes are counted identically: a round is one server → clients →
server exchange; bytes are the serialized array payloads each way.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedsigma.engines.dispatch import check_size, run_engine
from fedsigma.progress import RoundsProgress
from scenarios.loader import ScenarioError, load_scenario, updated
from scenarios.schema import Scenario
from server.build import oracle_for
from server.methods import METHODS, resolve_learning_rates
from shared.results import read_rounds

EXTEND = 2  # extra values tried past a grid edge that won
COLUMNS = (
    "method", "rounds_to_target", "bytes_up_to_target", "bytes_down_to_target",
    "local_gradient_evals_to_target", "final_excess_risk", "wall_seconds", "learning_rate",
    "local_learning_rate", "tuned_parameter", "tuned_value", "tuned_grid", "run_dir",
    "seeds", "rounds_to_target_by_seed", "rounds_to_target_median",
)


@dataclass
class Outcome:
    """One finished run of one method at one tuned value."""

    method: str
    value: float
    out: Path
    summary: dict
    rows: list[dict]
    wall: float

    @property
    def reached(self) -> int | None:
        return self.summary["rounds_to_target"]

    def rank(self) -> tuple:
        """Best first: reached the target sooner, else ended lower."""
        risk = self.summary["final"].get("excess_risk")
        return (self.reached or math.inf, risk if risk is not None and math.isfinite(risk) else math.inf)


def compare(
    scenario_ref: str,
    methods: list[str],
    overrides: list[str],
    out: Path,
    console: Console,
    max_rounds: int | None = None,
    seeds: list[int] | None = None,
) -> list[dict]:
    """Run every method over its grid; write comparison.csv/.png; return the table rows.

    ``seeds``: further seeds (new data, partitions, noise and sampling) on which
    each method reruns at its tuned value, so the table shows the spread of
    rounds to target and not one draw's luck.
    """

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ScenarioError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    base = load_scenario(scenario_ref, overrides)
    budget = max_rounds or base.stop.max_rounds
    for method in methods:  # every method's size, before the first run starts
        check_size(METHODS[method].prepare(base), method)
    _, oracle = oracle_for(base)
    best: dict[str, Outcome] = {}
    tried_values: dict[str, list[float]] = {}
    by_seed: dict[str, list[int | None]] = {}  # rounds to target, the scenario's seed first
    extra = [sd for sd in dict.fromkeys(seeds or []) if sd != base.seed]
    if seeds and len(extra) < len(seeds):
        console.print(f"  seeds: {' '.join(map(str, extra)) or 'none'} besides the scenario's own seed "
                      f"{base.seed} (repeats dropped)", highlight=False)
    prepared: dict[str, Scenario] = {}  # each method's scenario: its settings and the round budget
    for method in methods:
        grid = METHODS[method].grid
        key = grid.parameter
        scenario = prepared[method] = updated(METHODS[method].prepare(base), {"stop.max_rounds": budget})
        auto = resolve_learning_rates(scenario, oracle, method)[0 if key == "learning_rate" else 1]
        values = [v * auto for v in grid.values] if grid.relative else list(grid.values)
        tried: list[Outcome] = []

        def attempt(value: float) -> None:
            if key == "line_search_memory":  # an integer: stepping past an edge may land between two
                value = max(1, int(round(value)))
                if any(o.value == value for o in tried):
                    return
            run_dir = out / method / f"{key}-{value:.4g}"
            sc = updated(scenario, {f"training.{key}": value})
            started = time.perf_counter()
            label = f"  {method:<22} {key} = {value:.4g}"
            try:  # a round counter while the run goes; one line with its outcome after
                with RoundsProgress(run_dir / "rounds.csv", sc.stop.max_rounds, console, label=label, transient=True):
                    run_engine(sc, run_dir, method)
            except Exception as exc:  # noqa: BLE001 — one failed setting must not end the comparison
                console.print(f"{label} failed: {type(exc).__name__}: {escape(str(exc))}", highlight=False)
                if not (run_dir / "summary.json").is_file():
                    return
            summary = json.loads((run_dir / "summary.json").read_text())
            outcome = Outcome(method, value, run_dir, summary, read_rounds(run_dir / "rounds.csv"),
                              time.perf_counter() - started)
            console.print(f"{label} {escape(str(summary['status']))}, {outcome.reached or '-'} rounds", highlight=False)
            tried.append(outcome)

        for value in values:
            attempt(value)
        # A best value on the grid's edge may not be the best: step past it, up to EXTEND times.
        # When no value reaches the target the edge with the lowest final risk is extended too.
        for _ in range(EXTEND):
            if not tried:
                break
            top = min(tried, key=Outcome.rank)
            grid_now = sorted(o.value for o in tried)
            if len(grid_now) < 2 or top.value not in (grid_now[0], grid_now[-1]):
                break
            lo, hi = (grid_now[0], grid_now[1]) if top.value == grid_now[0] else (grid_now[-2], grid_now[-1])
            attempt(top.value * (lo / hi if top.value == grid_now[0] else hi / lo))
        if tried:
            best[method] = min(tried, key=Outcome.rank)
            tried_values[method] = sorted(o.value for o in tried)
            multiple = best[method].value / auto if grid.relative else None
            by_seed[method] = [best[method].reached, *_rerun_on_seeds(
                scenario, method, best[method].value, multiple, extra, out, console)]
    rows = [_row(o, prepared[o.method], out, tried_values[o.method], [base.seed, *extra], by_seed[o.method])
            for o in best.values()]
    rows.sort(key=lambda r: (r["rounds_to_target"] in ("", None), r["rounds_to_target"] or 0))
    _write_csv(out / "comparison.csv", rows)
    (out / "comparison.md").write_text(markdown_table(rows, base.stop.target, budget, by_seed))
    _plot(best, out / "comparison.png", f"{base.name}: best-tuned run of each method", base.stop.target)
    _print(rows, console, base.stop.target, budget, by_seed)
    return rows


def _rerun_on_seeds(scenario: Scenario, method: str, value: float, multiple: float | None, seeds: list[int],
                    out: Path, console: Console) -> list[int | str | None]:
    """Rounds to target of one method rerun at its tuned value on each seed: None if
    not reached, "failed" if the run raised. A value tuned as a multiple of 1/λ_max
    keeps the multiple and takes each seed's own λ_max (its data differ)."""

    key = METHODS[method].grid.parameter
    results: list[int | str | None] = []
    for seed in seeds:
        run_dir = out / method / f"seed-{seed}"
        console.print(f"  {method:<22} seed {seed} …", end="", highlight=False)
        try:
            reseeded = updated(scenario, {"seed": seed})
            if multiple is not None:
                index = 0 if key == "learning_rate" else 1
                value = multiple * resolve_learning_rates(reseeded, oracle_for(reseeded)[1], method)[index]
            run_engine(updated(reseeded, {f"training.{key}": value}), run_dir, method)
            reached = json.loads((run_dir / "summary.json").read_text())["rounds_to_target"]
            console.print(f" {reached or '-'} rounds", highlight=False)
        except Exception as exc:  # noqa: BLE001 — one failed seed must not end the comparison
            console.print(f" failed: {type(exc).__name__}: {escape(str(exc))}", highlight=False)
            reached = "failed"
        results.append(reached)
    return results


def _row(o: Outcome, scenario, out: Path, values: list[float], seeds: list[int],
         reached: list[int | str | None]) -> dict:
    key = METHODS[o.method].grid.parameter
    hit = next((r for r in o.rows if o.reached and int(r["round"]) == o.reached), None)
    per = METHODS[o.method].gradient_evals(scenario)
    evals = sum(int(r["clients_replied"]) for r in o.rows[: o.reached]) * per if hit else None
    return {
        "method": o.method,
        "rounds_to_target": o.reached or "",
        "bytes_up_to_target": int(hit["bytes_up"]) if hit else "",
        "bytes_down_to_target": int(hit["bytes_down"]) if hit else "",
        "local_gradient_evals_to_target": evals if evals is not None else "",
        "final_excess_risk": o.summary["final"].get("excess_risk"),
        "wall_seconds": round(o.wall, 2),
        "learning_rate": o.summary["learning_rate"],
        "local_learning_rate": o.summary["local_learning_rate"],
        "tuned_parameter": f"training.{key}",
        "tuned_value": o.value,
        "tuned_grid": " ".join(f"{v:.4g}" for v in values),
        "run_dir": str(o.out.relative_to(out)),
        "seeds": " ".join(map(str, seeds)),
        "rounds_to_target_by_seed": " ".join(str(r) if r else "-" for r in reached),  # "failed" stays
        "rounds_to_target_median": _median(reached),
    }


def _median(reached: list[int | str | None]) -> float | int | str:
    """Median rounds to target over seeds, a seed that missed or failed counting as ∞;
    "" if that is ∞."""
    middle = statistics.median(r if isinstance(r, int) else math.inf for r in reached)
    if not math.isfinite(middle):
        return ""
    return int(middle) if float(middle).is_integer() else middle


def _count(value: float) -> str:
    """A number of rounds: whole numbers as integers, ∞ for a miss."""
    if not math.isfinite(value):
        return "∞"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _several_seeds(by_seed: dict[str, list] | None) -> bool:
    """Whether the table was run on more than the scenario's own seed."""
    return bool(by_seed) and any(len(reached) > 1 for reached in by_seed.values())


def spread(reached: list[int | str | None]) -> str:
    """'median (min–max)' of rounds to target over seeds (None: not reached, "failed");
    a seed that missed or failed counts as ∞."""
    values = [r if isinstance(r, int) else math.inf for r in reached]
    med = _median(reached)
    low, high = min(values), max(values)
    head = _count(float(med)) if med != "" else "not reached"
    return head + (f" ({_count(low)}–{_count(high)})" if math.isfinite(low) else "")


def tuned_label(row: dict) -> str:
    """What a row's method was tuned at: "η = 0.5", "local η = 0.3" or "memory = 50"."""
    parameter = row["tuned_parameter"].rsplit(".", 1)[-1]
    if parameter == "line_search_memory":
        return f"memory = {int(row['tuned_value'])}"
    if parameter == "local_learning_rate":
        return f"local η = {row['local_learning_rate']:.3g}"
    return f"η = {row['learning_rate']:.3g}"


def markdown_table(rows: list[dict], target: float, budget: int, by_seed: dict[str, list] | None = None) -> str:
    """The comparison as a Markdown table (for READMEs and reports); ``by_seed``: each
    method's rounds to target per seed, for the spread column."""
    def num(v):
        return f"{v:,}" if v not in ("", None) else "—"

    several = _several_seeds(by_seed)
    seeds_head = f" rounds over seeds {rows[0]['seeds']}: median (min–max) |" if several and rows else ""
    lines = [
        f"| method | rounds to {target:g} |{seeds_head} uplink bytes | downlink bytes | gradient evals | "
        "final risk | tuned |",
        "|---|---|" + ("---|" if seeds_head else "") + "---|---|---|---|---|",
    ]
    for r in rows:
        over = f" {spread(by_seed[r['method']])} |" if seeds_head else ""
        lines.append(
            f"| {r['method']} | {r['rounds_to_target'] or f'> {budget}'} |{over} {num(r['bytes_up_to_target'])} | "
            f"{num(r['bytes_down_to_target'])} | {num(r['local_gradient_evals_to_target'])} | "
            f"{r['final_excess_risk']:.1e} | {tuned_label(r)} ({r['tuned_grid']}) |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _plot(best: dict[str, Outcome], path: Path, title: str, target: float) -> None:
    fig = Figure(figsize=(13, 4.8))
    ax1, ax2 = fig.subplots(1, 2)
    for method, o in best.items():
        pts = [(r["round"], r["bytes_up"], r["excess_risk"]) for r in o.rows if r["excess_risk"] is not None]
        if not pts:
            continue
        rounds, up, risk = zip(*pts)
        floor = target / 100
        clipped = min(risk) < floor
        risk = [max(v, floor) for v in risk]  # one-round methods land at ~1e-19: show them on the floor
        style = dict(ls="-" if method.startswith("gradcov") else "--", lw=2.2 if method == "gradcov" else 1.3,
                     marker="o" if len(pts) < 30 else None, ms=4,
                     label=f"{method} (below {floor:g}: drawn on that line)" if clipped else method)
        ax1.loglog(rounds, risk, **style)
        ax2.loglog(up, risk, **style)
    for ax, xlabel in ((ax1, "round"), (ax2, "uplink bytes (cumulative)")):
        ax.axhline(target, ls=":", color="grey")
        ax.set_ylim(bottom=target / 200)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative excess risk")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_title("against rounds")
    ax2.set_title("against uplink bytes")
    ax1.legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _print(rows: list[dict], console: Console, target: float, budget: int, by_seed: dict[str, list]) -> None:
    table = Table(title=f"rounds to {target:g} (budget {budget} rounds), sorted by rounds")
    several = _several_seeds(by_seed)
    for col in ("method", "rounds", *(("over seeds",) if several else ()), "uplink bytes", "downlink bytes",
                "grad evals", "final risk", "tuned"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["method"], str(r["rounds_to_target"] or "not reached"),
            *((spread(by_seed[r["method"]]),) if several else ()),
            f"{r['bytes_up_to_target']:,}" if r["bytes_up_to_target"] != "" else "",
            f"{r['bytes_down_to_target']:,}" if r["bytes_down_to_target"] != "" else "",
            f"{r['local_gradient_evals_to_target']:,}" if r["local_gradient_evals_to_target"] != "" else "",
            f"{r['final_excess_risk']:.2e}",
            tuned_label(r),
        )
    console.print(table)
