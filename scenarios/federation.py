"""Turn a scenario's data and partition sections into client shards.

Clients and the simulator's oracle call the same function with the same seed,
so every party derives identical shards without exchanging any data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from scenarios.schema import Scenario
from shared import data as datasets
from shared import partition


@dataclass(frozen=True, eq=False)  # identity hash: cached objects key other caches
class Federation:
    """Pooled rows and each client's shard of them.

    X : (N, d); y : (N,); shards[k] : the slice of client k's rows (contiguous);
    sigma_population : the generating Σ for synthetic data (else None).
    """

    X: np.ndarray
    y: np.ndarray
    shards: tuple[slice, ...]
    sigma_population: np.ndarray | None

    def client(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(X_k, y_k) of client k."""
        idx = self.shards[k]
        return self.X[idx], self.y[idx]


def build_federation(scenario: Scenario) -> Federation:
    """Federation for a scenario (cached on its data-defining fields; the scenario
    itself is used as it is, not parsed again)."""
    key = scenario.model_dump_json(include={"seed", "data", "partition", "clients", "protocol"})
    return _build(_Keyed(key, scenario))


@dataclass(frozen=True)
class _Keyed:
    """A scenario that hashes and compares by its data-defining JSON ``key`` only."""

    key: str
    scenario: Scenario = field(compare=False, hash=False)


@lru_cache(maxsize=4)
def _build(keyed: _Keyed) -> Federation:
    sc = keyed.scenario
    d = sc.data
    # Separate streams so that changing the partition never changes the data.
    data_rng = np.random.default_rng([sc.seed, 1])
    part_rng = np.random.default_rng([sc.seed, 2])
    sigma = None
    if d.kind == "synthetic":
        X, y, _, sigma = datasets.synthetic_regression(
            rows=d.rows_per_client * sc.clients.count,
            dim=d.dim,
            condition_number=d.condition_number,
            rng=data_rng,
            shape=d.spectrum,
            rotate=d.rotate,
            inputs=d.inputs,
            dof=d.student_t_dof,
            noise_std=d.noise_std,
            signal_variance=d.signal_variance,
            spikes=d.spikes,
        )
    else:
        if d.kind == "diabetes":
            X, y = datasets.load_diabetes()
        else:
            X, y, _ = datasets.load_csv(d.path, d.target)
        X, y = datasets.standardise(X, y)
    count = sc.clients.count
    if sc.partition.kind == "iid":
        shards = partition.iid(len(X), count, part_rng)
    elif sc.partition.kind == "covariate_shift":
        shards = partition.covariate_shift(X, count, sc.partition.shift_strength, part_rng)
    else:
        shards = partition.size_skew(len(X), count, sc.partition.size_alpha, sc.protocol.batch_size, part_rng)
    # Store shards contiguously so that a client's rows are a view, not a copy.
    order = np.concatenate(shards)
    X, y = np.ascontiguousarray(X[order]), y[order]
    bounds = np.cumsum([0] + [len(s) for s in shards])
    for arr in (X, y):
        arr.setflags(write=False)
    slices = tuple(slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
    return Federation(X=X, y=y, shards=slices, sigma_population=sigma)
