"""Low-rank-plus-ridge: the Nyström sketch and the Woodbury preconditioner."""

from __future__ import annotations

import numpy as np
import pytest

from shared.estimators import CovariancePool
from shared.lowrank import LowRankPreconditioner, SketchPool, nystrom


def _spiked(d=120, r=4, seed=0):
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((d, r)))[0]
    return U @ np.diag(np.linspace(40, 10, r)) @ U.T + np.eye(d), rng


def test_nystrom_is_exact_for_a_low_rank_matrix():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((60, 5))
    A = B @ B.T
    omega = rng.standard_normal((60, 12))
    U, s = nystrom(A @ omega, omega)
    np.testing.assert_allclose(s[:5], np.linalg.eigvalsh(A)[::-1][:5], rtol=1e-8)
    np.testing.assert_allclose((U[:, :5] * s[:5]) @ U[:, :5].T, A, atol=1e-8)


def test_woodbury_matches_the_dense_inverse():
    rng = np.random.default_rng(2)
    U = np.linalg.qr(rng.standard_normal((30, 3)))[0]
    s, bulk, ridge = np.array([9.0, 4.0, 2.0]), 0.5, 0.1
    P = LowRankPreconditioner(U, s, bulk, ridge)
    dense = np.linalg.inv((U * (s - bulk)) @ U.T + (bulk + ridge) * np.eye(30))
    np.testing.assert_allclose(P.dense(), dense, atol=1e-12)
    g = rng.standard_normal(30)
    np.testing.assert_allclose(P @ g, dense @ g, atol=1e-12)
    assert float(g @ P @ g) == pytest.approx(float(g @ dense @ g))
    np.testing.assert_allclose(LowRankPreconditioner.scaled_identity(30, 0.25) @ g, 0.25 * g)
    assert not np.any(LowRankPreconditioner.scaled_identity(30, 0.0) @ g)
    with pytest.raises(ValueError, match="ridge"):
        LowRankPreconditioner(U, s, 0.0, 0.0)


def test_sketch_pool_tracks_the_dense_pool_and_preconditions():
    sigma, rng = _spiked()
    L = np.linalg.cholesky(sigma)
    sketch, dense = SketchPool(120, 24, seed=3), CovariancePool(120)
    for _ in range(300):
        probes = (L @ rng.standard_normal((120, 8))).T[None]
        sketch.add(probes, np.array([1.0]))
        dense.add(probes, np.array([1.0]))
    assert sketch.gradients == dense.gradients == 2400 and sketch.dof == dense.dof
    U, s, bulk = sketch.factors(4)
    top = np.linalg.eigvalsh(dense.estimate())[::-1][:4]
    # Nyström underestimates spikes over a heavy bulk (here 116 dims of 1 vs 4 spikes)
    np.testing.assert_allclose(s, top, rtol=0.3)
    assert bulk == pytest.approx(1.0, rel=0.15)  # and the flat bulk, from the trace
    P = LowRankPreconditioner(U, s, bulk, 0.0).dense()
    # a one-pass sketch sees the spike subspace slightly tilted (sin θ ≈ 0.15 here):
    # P removes most, not all, of the ill-conditioning (dense top-4 eigh: κ ≈ 3.7)
    assert np.linalg.cond(P @ sigma) < np.linalg.cond(sigma) / 4
