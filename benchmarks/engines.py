"""The same scenario on the inline, simulation and deployment engines, side by side.

    python benchmarks/engines.py [--clients 3,10,30,100,1000] [--rounds 5] [--deployment-rounds 3]
    python benchmarks/engines.py --goals [--no-ray] [--no-compare]

Runs ``fedsigma run quickstart`` (d = 20, 400 rows per client, every client every
round) once per engine and client count, each as its own process, and prints
seconds per round (median of the rounds' ``seconds`` in rounds.csv: messages out
and back plus aggregation, no start-up), client calls per second (clients per
round / seconds per round), start-up (wall time until the first round began),
and peak memory (the largest sum of PSS over the CLI's whole process tree —
SuperLink, SuperNodes, SuperExecs, ClientApps, Ray workers — sampled every
0.5 s from /proc), each with its ratio to the inline engine at the same count,
all measured in this one run. The deployment engine is skipped above 30 clients:
every client is a SuperNode and a SuperExec process, plus a fresh ClientApp
process (~200 MB with torch) per message, all alive at once on 2 cores, so 100
would need ~30 GB (this machine has 24, shared);
a run is stopped (SIGINT: the CLI stops all it started) if the machine's
available memory falls below 4 GB.

``--goals`` measures issue 9's targets instead, in one run: inline client calls
per second at quickstart sizes (1000 clients), one inline round at 10,000 and at
100,000 clients (40 rows each: 400 would need 6.4 GB for the data alone), the
Ray simulation engine at 1000 clients against inline, and ``fedsigma compare
ill_conditioned`` end to end. Beside each time: its compute floor (the round's
flops ÷ this machine's one-thread float64 GEMM rate, measured first) and the
ratio, the peak memory, and the load average when it finished (2 cores shared:
a load of 8 makes every time about 4× longer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from client.cohort import EQUATIONS_ROWS_PER_DIM
from fedsigma.engines.processes import descendants, process_tree
from shared.results import read_rounds
from shared.threads import single_thread

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("inline", "simulation", "deployment")
DEPLOYMENT_MAX_CLIENTS = 30  # see the module docstring
MIN_AVAILABLE_MB = 4000  # a shared machine: leave room for everyone else


def tree_pss_mb(pid: int) -> float:
    """Memory of ``pid`` and all its descendants, in MB: the sum of their PSS
    (resident pages, each shared page split among the processes sharing it, so
    that libraries loaded by 200 processes are not counted 200 times)."""
    total_kb = 0
    for p in (pid, *descendants(pid, process_tree())):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except (OSError, IndexError, ValueError):
            continue
    return total_kb / 1024


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


class Sampler(threading.Thread):
    """Peak RSS of a process tree; interrupts the run if the machine runs low on memory."""

    def __init__(self, proc: subprocess.Popen, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.proc, self.interval, self.peak_mb, self.low_memory = proc, interval, 0.0, False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak_mb = max(self.peak_mb, tree_pss_mb(self.proc.pid))
            if available_mb() < MIN_AVAILABLE_MB and not self.low_memory:
                self.low_memory = True
                self.proc.send_signal(signal.SIGINT)  # the CLI stops everything it started

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_one(engine: str, clients: int, rounds: int, work: Path, extra: tuple[str, ...] = ()) -> dict:
    """One ``fedsigma run`` on one engine; its timings and peak memory. ``extra``: more
    ``--set`` overrides (KEY=VALUE)."""
    out = work / f"{engine}-{clients}-{len(extra)}"
    cmd = [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", engine, "--out", str(out),
           "--set", f"clients.count={clients}", "--set", f"stop.max_rounds={rounds}", "--set", "stop.target=1e-300"]
    for item in extra:
        cmd += ["--set", item]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc)
    sampler.start()
    _, err = proc.communicate()
    sampler.stop()
    wall = time.perf_counter() - started
    row = {"engine": engine, "clients": clients, "wall_s": wall, "peak_mb": sampler.peak_mb, "rounds": 0}
    if proc.returncode != 0:
        row["error"] = "stopped: low memory" if sampler.low_memory else (err.strip().splitlines() or ["?"])[-1]
        return row
    seconds = [r["seconds"] for r in read_rounds(out / "rounds.csv")]
    per_round = statistics.median(seconds)
    row.update(rounds=len(seconds), s_per_round=per_round, calls_per_s=clients / per_round,
               startup_s=wall - sum(seconds))
    return row


def gemm_flops_per_s(size: int = 1000, repeats: int = 5) -> float:
    """This machine's float64 GEMM rate on one thread (the engines run one BLAS thread),
    best of ``repeats`` products of two size × size matrices, in flop/s."""
    with single_thread():
        a, b = np.random.default_rng(0).standard_normal((2, size, size))
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def round_flops(clients: int, rows: int, dim: int = 20, batch: int = 32, probes: int = 4) -> float:
    """Arithmetic of one quickstart round after the first, in flops: per client, probes ×
    (X·w and Xᵀr over n rows, 4·d flops a row), plus the full-data gradient — from the
    kept XᵀX and Xᵀy (2·d² flops) where the cohort uses them (N ≥ EQUATIONS_ROWS_PER_DIM·d,
    client.cohort), else over the N rows (4·d flops a row)."""
    full = 2 * dim * dim if rows >= EQUATIONS_ROWS_PER_DIM * dim else 4 * dim * rows
    return clients * (4 * dim * probes * batch + full)


GOALS = (  # (name, clients, rows per client, rounds, engine, goal text)
    ("calls/s at quickstart sizes", 1000, 400, 4, "inline", "≥ 10,000 client calls/s"),
    ("10,000 clients, one round", 10_000, 400, 3, "inline", "< 2 s"),
    ("100,000 clients, one round", 100_000, 40, 2, "inline", "< 20 s, peak < 4 GB"),
    ("1000 clients on Ray", 1000, 400, 3, "simulation", "inline ≥ 50× faster"),
)


def goals(console: Console, work: Path, with_ray: bool, with_compare: bool) -> None:
    """Issue 9's goals, each measured now, side by side, with the machine's load."""
    rate = gemm_flops_per_s()
    load_before = os.getloadavg()
    table = Table(title=f"goals: {os.cpu_count()} cores, GEMM {rate / 1e9:.2f} Gflop/s (1 thread), "
                        f"load {load_before[0]:.1f} at the start")
    for col in ("goal", "clients", "rows/client", "s / round", "calls / s", "floor s", "× floor", "peak MB",
                "target", "met", "load"):
        table.add_column(col, justify="right")
    results = {}
    for name, clients, rows, rounds, engine, target in GOALS:
        if engine == "simulation" and not with_ray:
            continue
        row = run_one(engine, clients, rounds, work, (f"data.rows_per_client={rows}",))
        results[name] = row
        load = os.getloadavg()[0]
        if "error" in row:
            table.add_row(name, f"{clients:,}", str(rows), row["error"], "", "", "", f"{row['peak_mb']:,.0f}",
                          target, "no", f"{load:.1f}")
            continue
        floor = round_flops(clients, rows) / rate
        if name.startswith("calls"):
            met = row["calls_per_s"] >= 10_000
        elif name.startswith("10,000"):
            met = row["s_per_round"] < 2
        elif name.startswith("100,000"):
            met = row["s_per_round"] < 20 and row["peak_mb"] < 4096
        else:
            inline = results[GOALS[0][0]]
            ratio = row["s_per_round"] / inline["s_per_round"]
            target = f"{target} (now {ratio:.0f}×)"
            met = ratio >= 50
        table.add_row(name, f"{clients:,}", str(rows), f"{row['s_per_round']:.3g}", f"{row['calls_per_s']:,.0f}",
                      f"{floor:.2g}", f"{row['s_per_round'] / floor:,.0f}", f"{row['peak_mb']:,.0f}", target,
                      "yes" if met else "no", f"{load:.1f}")
    if with_compare:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "fedsigma.cli", "compare", "ill_conditioned", "--out",
                               str(work / "compare")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter() - started
        table.add_row("compare ill_conditioned (all methods, tuning)", "20", "1000", f"{took:.0f} (whole)", "", "", "",
                      "", "≤ 60 s", "yes" if done.returncode == 0 and took <= 60 else "no",
                      f"{os.getloadavg()[0]:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="3,10,30,100,1000", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run, inline and simulation")
    parser.add_argument("--deployment-rounds", type=int, default=3, help="rounds per deployment run")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--goals", action="store_true",
                        help="measure issue 9's goals instead (inline calls/s, 10,000 and 100,000 clients a round, "
                             "inline vs Ray at 1000, compare ill_conditioned), each beside its compute floor")
    parser.add_argument("--no-ray", action="store_true", help="with --goals: skip the Ray run")
    parser.add_argument("--no-compare", action="store_true", help="with --goals: skip the compare run")
    args = parser.parse_args()
    if args.goals:
        with tempfile.TemporaryDirectory(prefix="fedsigma-goals-") as tmp:
            goals(Console(width=160), Path(tmp), not args.no_ray, not args.no_compare)
        return
    counts = [int(c) for c in args.clients.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    console = Console(width=140)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedsigma-engines-") as tmp:
        for clients in counts:
            for engine in engines:
                if engine == "deployment" and clients > DEPLOYMENT_MAX_CLIENTS:
                    continue
                rounds = args.deployment_rounds if engine == "deployment" else args.rounds
                row = run_one(engine, clients, rounds, Path(tmp))
                rows.append(row)
                console.print(f"{engine:>10} × {clients:<5} {json.dumps({k: v for k, v in row.items() if k not in ('engine', 'clients')}, default=lambda x: round(x, 3))}", highlight=False)
    inline = {r["clients"]: r for r in rows if r["engine"] == "inline" and "error" not in r}
    table = Table(title=f"quickstart (d = 20, 400 rows per client), {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    for col in ("clients", "engine", "rounds", "s / round", "× inline", "client calls / s", "start-up s",
                "peak MB", "× inline"):
        table.add_column(col, justify="right")
    for r in rows:
        base = inline.get(r["clients"])
        if "error" in r:
            table.add_row(str(r["clients"]), r["engine"], "—", r["error"], "", "", "", f"{r['peak_mb']:,.0f}", "")
            continue
        table.add_row(
            str(r["clients"]), r["engine"], str(r["rounds"]), f"{r['s_per_round']:.3g}",
            f"{r['s_per_round'] / base['s_per_round']:.3g}" if base else "", f"{r['calls_per_s']:,.0f}" if r["calls_per_s"] >= 100 else f"{r['calls_per_s']:.3g}",
            f"{r['startup_s']:.1f}", f"{r['peak_mb']:,.0f}",
            f"{r['peak_mb'] / base['peak_mb']:.2g}" if base else "",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
