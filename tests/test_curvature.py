"""Curvature sources (shared/curvature.py): warm-up, refresh schedule, ridge, probe
budget, dense and low-rank P, and the oracle and Newton sources."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from shared.calibration import estimator_coefficients
from shared.cohort import CohortReplies
from shared.curvature import RIDGE, HessianCurvature, OracleCurvature, ProbeCurvature
from shared.estimators import CovariancePool


def _sigma(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (basis * np.geomspace(1.0, 20.0, d)) @ basis.T


def _probes(sigma: np.ndarray, k: int, rng: np.random.Generator, levels: int = 1) -> np.ndarray:
    """k gradients per level with covariance Σ (what calibrated probes look like, c = 1)."""
    root = np.linalg.cholesky(sigma)
    return rng.standard_normal((levels, k, len(sigma))) @ root.T


def _contribution(probes: np.ndarray, partition: int = 0, rows: int = 10**6, hessian=None) -> CohortReplies:
    """One reply of a round, as the strategy hands it to a source."""
    d = probes.shape[-1]
    return CohortReplies(
        partitions=np.array([partition]), probes=probes[None], updates=np.zeros((1, d)),
        num_examples=np.array([rows]), local_rows=np.array([rows]),
        hessians={} if hessian is None else {0: hessian},
    )


def _add(src, replies: CohortReplies) -> None:
    src.add(replies, np.ones(len(replies), dtype=bool))


def test_probe_source_warms_up_then_refreshes_on_schedule():
    """P = 0 before any probe, I/λ̂_max during warm-up, (Σ̂ + λI)⁻¹ from the round the
    warm-up is done, rebuilt only every refresh_every rounds; version counts the changes."""
    d, rng = 5, np.random.default_rng(1)
    sigma = _sigma(d)
    src = ProbeCurvature(d, [1.0], batch_size=64, warmup_gradients=40, refresh_every=2, ridge=0.0)
    assert np.array_equal(src.preconditioner, np.zeros((d, d))) and src.estimate() is None
    src.update(1)
    assert src.version == 0  # nothing changed
    _add(src, _contribution(_probes(sigma, 20, rng)))
    src.update(1)
    top = np.linalg.eigvalsh(src.estimate())[-1]
    np.testing.assert_allclose(src.preconditioner, np.eye(d) / top)
    assert (src.version, src.refreshed_at) == (1, None)
    _add(src, _contribution(_probes(sigma, 20, rng)))
    src.update(2)  # 40 pooled: warmed up
    np.testing.assert_allclose(src.preconditioner, np.linalg.inv(src.estimate()), rtol=1e-10)
    assert (src.version, src.refreshed_at, src.gradients) == (2, 2, 40)
    _add(src, _contribution(_probes(sigma, 20, rng)))
    before = src.preconditioner
    src.update(3)  # one round after the refresh: not due
    assert src.preconditioner is before and src.version == 2
    src.update(4)
    assert src.refreshed_at == 4 and src.version == 3
    np.testing.assert_allclose(src.preconditioner, np.linalg.inv(src.estimate()), rtol=1e-10)


def test_probe_source_pools_with_each_clients_calibration_coefficient():
    """Σ̂ is the pool of each contribution times n/σ²_total for that client's N rows."""
    d, n, rng = 4, 32, np.random.default_rng(2)
    sigma = _sigma(d, 3)
    src = ProbeCurvature(d, [1.0], batch_size=n, natural_var=0.5)
    pool = CovariancePool(d)
    for partition, rows in enumerate((40, 400, 4000)):
        probes = _probes(sigma, 6, rng)
        _add(src, _contribution(probes, partition, rows))
        pool.add(probes, estimator_coefficients([1.0], n, rows, 0.5))
    np.testing.assert_array_equal(src.estimate(), pool.estimate())
    _add(src, _contribution(np.zeros((0, 0, d))))  # a reply without probes adds nothing
    assert src.gradients == 18


def test_default_ridge_and_warm_up_follow_the_dimension():
    d, rng = 6, np.random.default_rng(4)
    src = ProbeCurvature(d, [1.0], batch_size=64)
    assert src.warmup_gradients == 10 * d
    _add(src, _contribution(_probes(_sigma(d), 10 * d, rng)))
    src.update(1)
    est = src.estimate()
    lam = 1e-3 * np.trace(est) / d  # Σ̂ is PSD here, so tr Σ̂₊ = tr Σ̂
    np.testing.assert_allclose(src.preconditioner, np.linalg.inv(est + lam * np.eye(d)), rtol=1e-8)


def test_probe_budget_stops_asking_once_max_gradients_are_pooled():
    d, rng = 3, np.random.default_rng(5)
    src = ProbeCurvature(d, [1.0], batch_size=16, max_gradients=10)
    assert src.wants_probes()
    _add(src, _contribution(_probes(_sigma(d), 6, rng)))
    assert src.wants_probes()
    _add(src, _contribution(_probes(_sigma(d), 6, rng)))
    assert not src.wants_probes()
    assert ProbeCurvature(d, [1.0], batch_size=16).wants_probes()


def test_precondition_off_pools_but_keeps_p_the_identity():
    d, rng = 3, np.random.default_rng(6)
    src = ProbeCurvature(d, [1.0], batch_size=16, precondition=False, warmup_gradients=1)
    _add(src, _contribution(_probes(_sigma(d), 8, rng)))
    src.update(1)
    assert np.array_equal(src.preconditioner, np.eye(d)) and src.version == 0
    assert src.estimate() is not None and not src.precondition


def test_differential_source_with_no_positive_part_stays_in_warm_up():
    """Two levels whose difference is negative: Σ̂ + λI is singular with λ = 0, so P
    falls back to the warm-up (no step) instead of failing."""
    d, rng = 3, np.random.default_rng(7)
    src = ProbeCurvature(d, [0.5, 1.0], batch_size=16, warmup_gradients=2, ridge=0.0)
    probes = _probes(np.eye(d), 8, rng, levels=2)
    probes[0] *= 3.0  # the low level is the noisier one: Σ̂ ≺ 0
    _add(src, _contribution(probes))
    src.update(1)
    assert np.all(np.linalg.eigvalsh(src.estimate()) < 0)
    assert np.array_equal(src.preconditioner, np.zeros((d, d))) and src.refreshed_at is None


def test_low_rank_source_applies_woodbury_and_estimates_for_metrics():
    """rank = r: P is a LowRankPreconditioner from the sketch (never d × d), and its
    dense form inverts the low-rank-plus-bulk Σ̂ the source reports, plus λ."""
    d, r, rng = 30, 3, np.random.default_rng(8)
    vals = np.r_[[50.0, 20.0, 10.0], np.ones(d - r)]
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sigma = (basis * vals) @ basis.T
    src = ProbeCurvature(d, [1.0], batch_size=64, rank=r, warmup_gradients=100, ridge=0.1, seed=3)
    assert src.pool.omega.shape == (d, 2 * r + 10)
    for _ in range(40):
        _add(src, _contribution(_probes(sigma, 10, rng)))
    src.update(1)
    est = src.estimate()
    P = src.preconditioner
    np.testing.assert_allclose(P.dense(), np.linalg.inv(est + 0.1 * np.eye(d)), rtol=1e-8, atol=1e-12)
    g = rng.standard_normal(d)
    np.testing.assert_allclose(P @ g, P.dense() @ g, rtol=1e-10)
    top = np.linalg.eigvalsh(est)[::-1][:r]
    np.testing.assert_allclose(top, vals[:r], rtol=0.35)


def test_oracle_source_is_fixed_from_the_start_and_asks_for_nothing():
    sigma = _sigma(4, 9)
    src = OracleCurvature(sigma)
    lam = RIDGE * np.trace(sigma) / 4
    np.testing.assert_allclose(src.preconditioner, np.linalg.inv(sigma + lam * np.eye(4)), rtol=1e-10)
    assert src.refreshed_at == 0 and src.version == 0 and src.gradients == 0
    assert not src.wants_probes() and not src.wants_hessian(7)
    before = src.preconditioner
    _add(src, _contribution(np.zeros((1, 2, 4))))
    src.update(5)
    assert src.preconditioner is before and src.estimate() is None


def test_newton_source_asks_each_node_once_and_inverts_the_row_weighted_mean():
    d = 4
    src = HessianCurvature(d)
    assert np.array_equal(src.preconditioner, np.zeros((d, d)))  # no step before a Hessian
    assert src.wants_hessian(11) and src.wants_hessian(12)
    assert not src.wants_hessian(11)
    h1, h2 = _sigma(d, 1), _sigma(d, 2)
    empty = np.zeros((0, 0, d))
    _add(src, _contribution(empty, 0, 100, h1))
    _add(src, _contribution(empty, 1, 300, h2))
    _add(src, _contribution(empty, 0, 100, 10 * h1))  # counted once
    src.update(1)
    mean = (100 * h1 + 300 * h2) / 400
    np.testing.assert_allclose(src.estimate(), mean)
    lam = RIDGE * np.trace(mean) / d
    np.testing.assert_allclose(src.preconditioner, np.linalg.inv(mean + lam * np.eye(d)), rtol=1e-10)
    assert (src.version, src.refreshed_at) == (1, 1)
    _add(src, _contribution(empty, 1, 300))  # gradients only
    src.update(2)
    assert src.version == 1


@pytest.mark.parametrize("rank", [None, 3])
def test_sources_pickle_for_checkpoints(rank):
    """Checkpoints pickle the strategy and with it its source: a copy continues identically."""
    d, rng = 8, np.random.default_rng(11)
    src = ProbeCurvature(d, [1.0], batch_size=16, rank=rank, warmup_gradients=10)
    _add(src, _contribution(_probes(_sigma(d), 12, rng)))
    copy = pickle.loads(pickle.dumps(src))
    more = _probes(_sigma(d), 12, rng)
    for s in (src, copy):
        _add(s, _contribution(more))
        s.update(3)
    np.testing.assert_array_equal(src.estimate(), copy.estimate())


def test_a_round_pools_only_the_replies_it_keeps_and_screens_a_liar():
    """Replies left out by the screen add nothing; a client whose probes are 10× too
    large (100× in variance) has a probe size far from the round's honest ones."""
    d, k, rng = 5, 8, np.random.default_rng(12)
    sigma = _sigma(d, 4)
    probes = np.stack([_probes(sigma, k, rng) for _ in range(6)])
    probes[2] *= 10.0
    replies = CohortReplies(
        partitions=np.arange(6), probes=probes, updates=np.zeros((6, d)),
        num_examples=np.full(6, 10**6), local_rows=np.full(6, 10**6),
    )
    earlier = _probes(sigma, 200, rng)
    src = ProbeCurvature(d, [1.0], batch_size=64, warmup_gradients=10)
    _add(src, _contribution(earlier))  # a pool to whiten with
    sizes = src.probe_sizes(replies)
    honest = np.delete(sizes, 2)
    assert sizes[2] > 30 * np.median(honest)
    assert honest.max() < 1.5 * honest.min()  # honest clients agree whatever the liar did to P
    keep = np.arange(6) != 2
    before = src.gradients
    src.add(replies, keep)
    assert src.gradients == before + 5 * k
    reference = ProbeCurvature(d, [1.0], batch_size=64, warmup_gradients=10)
    _add(reference, _contribution(earlier))
    for index in np.flatnonzero(keep):
        _add(reference, _contribution(probes[index], int(index)))
    np.testing.assert_allclose(src.estimate(), reference.estimate(), rtol=1e-12)


def test_oracle_carries_stale_gradients_along_the_true_sigma():
    sigma = _sigma(4, 5)
    src = OracleCurvature(sigma)
    v = np.arange(4.0)
    assert src.known() and np.array_equal(src.apply(v), sigma @ v)
    assert not src.warmed_up()  # robust checks along Σ̂ are for estimated curvature only


def test_probe_sizes_are_none_without_probes():
    src = ProbeCurvature(3, [1.0], batch_size=8)
    assert src.probe_sizes(_contribution(np.zeros((0, 0, 3)))) is None
    assert not src.known() and np.array_equal(src.apply(np.ones(3)), np.zeros(3))
