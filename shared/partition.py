"""Partitions of a pooled data set into client shards, as index arrays.

All three take the pooled rows and return one index array per client, every
shard holding at least ``min_rows`` rows, and are deterministic given the rng.
"""

from __future__ import annotations

import numpy as np

KINDS = ("iid", "covariate_shift", "size_skew")


def iid(rows: int, clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and split into equal shards (sizes differ by at most one)."""
    return [np.sort(part) for part in np.array_split(rng.permutation(rows), clients)]


def covariate_shift(
    X: np.ndarray, clients: int, strength: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort rows along a random direction and split into contiguous shards.

    The sort key is ``strength·u + √(1 − strength²)·ε`` with u the standardised
    projection of x on a random unit vector and ε independent noise, so
    strength = 0 is IID and strength = 1 gives each client a slab of input space
    with its own second moment Σ_k.
    """
    direction = rng.standard_normal(X.shape[1])
    proj = X @ (direction / np.linalg.norm(direction))
    spread = proj.std()
    proj = (proj - proj.mean()) / (spread if spread > 0 else 1.0)
    key = strength * proj + np.sqrt(max(1.0 - strength**2, 0.0)) * rng.standard_normal(len(X))
    return [np.sort(part) for part in np.array_split(np.argsort(key, kind="stable"), clients)]


def size_skew(
    rows: int, clients: int, alpha: float, min_rows: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shard sizes from a Dirichlet(α) draw on top of ``min_rows`` each.

    Small α gives a few large clients and many at the minimum.
    """
    spare = rows - clients * min_rows
    if spare < 0:
        raise ValueError(f"{rows} rows cannot give {clients} clients {min_rows} rows each")
    extra = np.floor(rng.dirichlet(np.full(clients, alpha)) * spare).astype(int)
    extra[np.argmax(extra)] += spare - extra.sum()
    bounds = np.cumsum(np.concatenate([[0], extra + min_rows]))
    order = rng.permutation(rows)
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
