"""What a checkpoint costs each round, beside the round it follows.

    python benchmarks/checkpoint.py [--dims 20,200,1000] [--rank 50]

For each d it builds the gradcov strategy of a synthetic scenario (20 clients) with
its probe pool filled by one round of probes, and times ``server.checkpoint.save``
(the pickle of w, the strategy — the dense d × d pool and P, or the low-rank sketch —
and the round loop's counters, then the rename) and, side by side in the same run,
one ``aggregate``-sized piece of the round: P = (Σ̂ + λI)⁻¹ from the pool (an
eigendecomposition of Σ̂, which every dense round with a refresh pays), both on one
BLAS thread as the server runs them. Prints the file size, the median seconds of 3
saves and of 3 refreshes, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from scenarios.loader import load_scenario
from server import checkpoint
from server.methods import strategy_for
from shared.calibration import estimator_coefficients
from shared.preconditioner import default_ridge, ridge_preconditioner
from shared.threads import single_thread


def timed(fn, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="20,200,1000")
    parser.add_argument("--rank", type=int, default=50, help="also the low-rank sketch at the largest d")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",") if d]
    console = Console(width=120)
    console.print(f"load average before: {os.getloadavg()[0]:.1f}")
    table = Table(title="Checkpoint per round vs a refresh of P (median of 3)")
    for col in ("d", "P", "file MB", "save s", "refresh s", "save / refresh"):
        table.add_column(col)
    rng = np.random.default_rng(0)
    cases = [(d, None) for d in dims] + [(dims[-1], args.rank)]
    with tempfile.TemporaryDirectory() as tmp, single_thread():
        out = Path(tmp)
        for d, rank in cases:
            sets = [f"data.dim={d}", "clients.count=20", "data.rows_per_client=200"]
            sets += [f"preconditioner.rank={rank}"] if rank else []
            scenario = load_scenario("quickstart", sets)
            strategy = strategy_for(scenario)[0]
            coef = estimator_coefficients(strategy.noise_levels, strategy.batch_size, 200, strategy.natural_var)
            for _ in range(20):  # one round of probes from 20 clients
                strategy.curvature.pool.add(rng.standard_normal((1, strategy.probes, d)), coef)
            state = {"arrays": {"w": np.zeros(d)}, "strategy": strategy, "rows": [{}] * 50, "counters": {}}
            meta = {"round": 1, "scenario": scenario.model_dump_json(), "method": "gradcov", "code": "bench"}
            save = timed(lambda: checkpoint.save(out, meta, state))
            size = (out / checkpoint.CHECKPOINT).stat().st_size / 1e6
            if rank:
                refresh = timed(lambda: strategy.curvature.pool.factors(rank))
            else:
                sigma = strategy.curvature.pool.estimate()
                refresh = timed(lambda: ridge_preconditioner(sigma, default_ridge(sigma, 1e-3)))
            table.add_row(str(d), f"rank {rank}" if rank else "dense", f"{size:.2f}", f"{save:.4f}",
                          f"{refresh:.4f}", f"{save / refresh:.2f}")
            console.print(f"  d = {d} {'rank ' + str(rank) if rank else 'dense'}: save {save:.4f} s, "
                          f"{size:.2f} MB; refresh {refresh:.4f} s", highlight=False)
    console.print(table)
    console.print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
