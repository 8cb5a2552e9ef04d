"""Target-noise calibration: how much Gaussian noise a client adds to its targets.

The rule (arXiv 2601.18546): make the *total* per-row target-noise variance equal
to the batch size n (times a multiplier c), so that the covariance of n-row
mini-batch gradients is ≈ c·Σ. See docs/method.md#calibration.

With batches drawn without replacement from N local rows, the natural noise
already in the targets only enters through the row sampling and carries the
finite-population factor f = (N − n)/(N − 1); the injected noise is fresh for
every batch and carries no such factor.
"""

from __future__ import annotations

import numpy as np


def finite_population_factor(local_rows: int, batch_size: int) -> float:
    """Return f = (N − n)/(N − 1), the variance factor of sampling n of N rows.

    Parameters
    ----------
    local_rows : int
        N, the rows a client holds.
    batch_size : int
        n, the rows in one mini-batch (drawn without replacement), 1 ≤ n ≤ N.
    """
    if not 1 <= batch_size <= local_rows:
        raise ValueError(f"batch_size must be in [1, {local_rows}], got {batch_size}")
    if local_rows == 1:
        return 0.0
    return (local_rows - batch_size) / (local_rows - 1)


def injected_variance(
    multiplier: float, batch_size: int, local_rows: int, natural_var: float = 0.0
) -> float:
    """Per-row variance of the Gaussian noise a client adds to its targets.

    Chosen so that the effective total ``injected + f·σ₀²`` equals ``c·n``; if
    the natural noise alone already exceeds that, nothing is injected.

    Parameters
    ----------
    multiplier : float
        c ≥ 0; c = 1 is the paper's rule, c = 0 injects nothing.
    batch_size : int
        n.
    local_rows : int
        N, for the finite-population factor of the natural noise.
    natural_var : float
        σ₀², the natural target-noise variance the client knows of (0 if unknown).

    Returns
    -------
    float
        Variance in squared target units.
    """
    f = finite_population_factor(local_rows, batch_size)
    return max(multiplier * batch_size - f * natural_var, 0.0)


def total_variance(
    multiplier: float, batch_size: int, local_rows: int, natural_var: float = 0.0
) -> float:
    """Effective total target-noise variance σ²_total seen by n-row gradients."""
    f = finite_population_factor(local_rows, batch_size)
    return injected_variance(multiplier, batch_size, local_rows, natural_var) + f * natural_var


def estimator_coefficients(
    multipliers: np.ndarray | list[float],
    batch_size: int,
    local_rows: int,
    natural_var: float = 0.0,
) -> np.ndarray:
    """Weights a_l such that Σ̂ = Σ_l a_l · Ĉ_l, with Ĉ_l the gradient covariance at level l.

    One level (plain calibration): a = n/σ²_total, i.e. 1/c when calibrated; an
    uncalibrated client (σ²_total = 0) gets a = 1, the raw covariance.

    Two levels (differential injection, c_lo < c_hi): a = n/(σ²_hi − σ²_lo)·(−1, +1)
    from the *injected* variances only, so the δ-terms and an unknown σ₀² cancel.

    Returns
    -------
    ndarray of shape (levels,)
    """
    levels = np.asarray(multipliers, dtype=float)
    if levels.ndim != 1 or levels.size not in (1, 2):
        raise ValueError(f"expected 1 or 2 noise levels, got {levels.tolist()}")
    if levels.size == 1:
        total = total_variance(float(levels[0]), batch_size, local_rows, natural_var)
        return np.array([batch_size / total if total > 0 else 1.0])
    lo, hi = levels
    if not hi > lo:
        raise ValueError(f"differential levels must increase, got {levels.tolist()}")
    # Differential levels inject c·n each, ignoring σ₀²: it cancels in the difference.
    gap = (hi - lo) * batch_size
    return np.array([-batch_size / gap, batch_size / gap])


def injected_variances(
    multipliers: np.ndarray | list[float],
    batch_size: int,
    local_rows: int,
    natural_var: float = 0.0,
) -> np.ndarray:
    """Per-level injected per-row variances, matching :func:`estimator_coefficients`."""
    levels = np.asarray(multipliers, dtype=float)
    if levels.size == 1:
        return np.array([injected_variance(float(levels[0]), batch_size, local_rows, natural_var)])
    return levels * batch_size
