"""The client side of inline cohort rounds alone: every client's draws, probes and training gradient.

    python benchmarks/cohort_clients.py [--clients 10000] [--rows 400] [--rounds 5]

Quickstart's round settings (d = 20, batch 32, 4 probes at one noise level, the
full-data training gradient) on random rows held as one array, as the inline
engine holds a federation; no server, no scenario build. Prints the median
seconds per round (the first round also computes what is kept across rounds,
each client's XᵀX and Xᵀy, and is printed apart) and client calls per second.
Runs against whichever tree is first on PYTHONPATH, so two trees can be timed
side by side, e.g. with ``farm-bench --vs``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np

import client.cohort as cohort
from client.task import linear_model
from shared import protocol as p
from shared.threads import single_thread

DIM, BATCH, PROBES = 20, 32, 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=400, help="rows per client")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((args.clients * args.rows, DIM)), rng.standard_normal(args.clients * args.rows)
    X.flags.writeable = y.flags.writeable = False
    ids = np.arange(args.clients)
    data = cohort.CohortData(X, y, ids * args.rows, np.full(args.clients, args.rows), ids)
    model = linear_model(DIM)
    if hasattr(cohort, "NormalEquations"):  # kept across rounds, as FederationCohort keeps them
        data = replace(data, equations=cohort.NormalEquations(model, data), ids=ids)
    w = rng.standard_normal(DIM)
    times = []
    for rnd in range(1, args.rounds + 1):
        config = {p.ROUND: rnd, p.BATCH_SIZE: BATCH, p.PROBES: PROBES, p.NOISE_LEVELS: [1.0], p.NATURAL_VAR: 0.25,
                  p.TRAIN_GRADIENT: "full", p.NOISY_TARGETS: False, p.LOCAL_STEPS: 0, p.LOCAL_LR: 0.0}
        started = time.perf_counter()
        with single_thread():
            cohort.cohort_round(model, data, w, config, seed=1)
        times.append(time.perf_counter() - started)
    later = statistics.median(times[1:]) if len(times) > 1 else times[0]
    print(f"{args.clients} clients × {args.rows} rows: {later:.3f} s a round (median of rounds 2–{args.rounds}), "
          f"{args.clients / later:,.0f} client calls/s; round 1 {times[0]:.3f} s")


if __name__ == "__main__":
    main()
