"""shared.gradient_table: the federation's gradient from stale per-client gradients."""

import numpy as np
import pytest

from shared.gradient_table import GradientTable


def _clients(d: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    sigma = np.cov(rng.standard_normal((4 * d, d)), rowvar=False)
    offsets = rng.standard_normal((count, d))
    rows = rng.integers(5, 50, count).astype(float)
    return sigma, offsets, rows


def test_with_the_true_curvature_stale_gradients_give_the_exact_federation_gradient():
    """Clients sharing Σ: g_i(w) = Σw − b_i, so g_i(w_i) + Σ(w − w_i) = g_i(w) whatever w_i."""
    d, count = 6, 9
    sigma, b, rows = _clients(d, count, 0)
    rng = np.random.default_rng(1)
    table = GradientTable(d)
    for i in range(count):  # each seen at its own stale point
        w_i = rng.standard_normal(d)
        table.update(i, rows[i], sigma @ w_i - b[i], w_i)
    table.update(3, rows[3], sigma @ np.ones(d) - b[3], np.ones(d))  # a client heard again replaces itself
    w = rng.standard_normal(d)
    exact = (rows[:, None] * (sigma @ w - b)).sum(0) / rows.sum()
    assert table.estimate(w, lambda v: sigma @ v) == pytest.approx(exact, rel=1e-12, abs=1e-12)
    assert len(table) == count


def test_without_curvature_it_is_the_weighted_mean_of_the_latest_gradients():
    table = GradientTable(2)
    table.update(0, 1.0, np.array([1.0, 0.0]), np.zeros(2))
    table.update(1, 3.0, np.array([0.0, 4.0]), np.ones(2))
    table.update(0, 1.0, np.array([5.0, 0.0]), np.zeros(2))
    assert table.estimate(np.zeros(2), None) == pytest.approx([1.25, 3.0])


def test_an_empty_table_refuses_to_estimate():
    with pytest.raises(ValueError, match="no client"):
        GradientTable(3).estimate(np.zeros(3), None)


def _heterogeneous(d: int, count: int, rows_each: int, seed: int):
    """Clients of one population: each Σ_i and b_i from its own rows (iid draws)."""
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d)
    sigmas, bs = [], []
    for _ in range(count):
        X = rng.standard_normal((rows_each, d))
        y = X @ w_true + 0.5 * rng.standard_normal(rows_each)
        sigmas.append(X.T @ X / rows_each)
        bs.append(X.T @ y / rows_each)
    return np.array(sigmas), np.array(bs)


def test_change_is_the_mean_change_of_the_clients_heard_at_both_points():
    """Σ·step from the clients that replied at both ends; None when they hold too few rows."""
    d, count = 5, 8
    sigmas, bs = _heterogeneous(d, count, 30, 0)
    rows = np.full(count, 30.0)
    table = GradientTable(d, keep_previous=True)
    w0, w1 = np.zeros(d), np.arange(d, dtype=float) / d
    table.update_many(np.arange(count), rows, np.einsum("kij,j->ki", sigmas, w0) - bs, w0)
    both = np.array([0, 2, 3, 5, 6, 7])  # clients 1 and 4 missed w1
    table.update_many(both, rows[both], np.einsum("kij,j->ki", sigmas[both], w1) - bs[both], w1)
    expected = sigmas[both].mean(axis=0) @ (w1 - w0)
    assert table.change(w0, w1) == pytest.approx(expected, rel=1e-12)
    assert table.change(w0, w1, min_share=0.8) is None  # 6 of 8 clients: 75 % of the rows
    assert table.change(w1, w0) is None  # nobody replied at w1 and then at w0
    assert GradientTable(d).change(w0, w1) is None  # no previous entries kept
    three = GradientTable(d, keep_previous=True)  # 2 clients at both ends: too few
    three.update_many(np.arange(3), rows[:3], np.einsum("kij,j->ki", sigmas[:3], w0) - bs[:3], w0)
    three.update_many(np.arange(2), rows[:2], np.einsum("kij,j->ki", sigmas[:2], w1) - bs[:2], w1)
    assert three.change(w0, w1, min_share=0.0) is None


def test_drift_measures_how_the_clients_curvatures_differ():
    """ρ² from the spread of per-client changes: near zero for identical Σ_i, of order
    d/rows for Σ_i estimated from rows samples each."""
    d, count = 6, 40
    identity = lambda v: v  # noqa: E731
    for rows_each, low, high in ((20, 0.05, 1.0), (2000, 5e-4, 1e-2)):
        sigmas, bs = _heterogeneous(d, count, rows_each, 1)
        table = GradientTable(d, keep_previous=True)
        w0, w1 = np.zeros(d), np.ones(d)
        for w in (w0, w1):
            table.update_many(np.arange(count), np.ones(count), np.einsum("kij,j->ki", sigmas, w) - bs, w)
        table.change(w0, w1, identity, identity)
        assert low < table.drift < high
        table.change(w1, w0, identity, identity)  # no pair for this step: no drift either
        assert table.drift is None


def _shrink_vs_carry(far: bool, seeds: int = 20) -> float:
    """Median error of the shrunk estimate over that of carrying along the true Σ, for
    5 of 30 clients last heard at w0 and the others at w1 (near the optimum)."""
    d, count = 8, 30
    errors = {"carry": [], "shrink": []}
    for seed in range(seeds):
        sigmas, bs = _heterogeneous(d, count, 40, seed)
        sigma = sigmas.mean(axis=0)
        rows = np.ones(count)
        apply = lambda v, s=sigma: s @ v  # noqa: E731
        grad = lambda k, w: sigmas[k] @ w - bs[k]  # noqa: E731
        w_star = np.linalg.solve(sigma, bs.mean(axis=0))
        rng = np.random.default_rng(seed)
        w0 = w_star + rng.standard_normal(d) if far else np.zeros(d)
        w1 = w_star + 0.01 * rng.standard_normal(d)
        table = GradientTable(d, keep_previous=True)
        table.update_many(np.arange(count), rows, np.array([grad(k, w0) for k in range(count)]), w0)
        fresh = np.flatnonzero(np.arange(count) >= 5)  # clients 0–4 missed w1
        table.update_many(fresh, rows[fresh], np.array([grad(k, w1) for k in fresh]), w1)
        table.change(w0, w1, apply, apply)
        exact = np.mean([grad(k, w1) for k in range(count)], axis=0)
        errors["carry"].append(np.linalg.norm(table.estimate(w1, apply) - exact))
        errors["shrink"].append(np.linalg.norm(table.estimate(w1, apply, apply, apply) - exact))
    return float(np.median(errors["shrink"]) / np.median(errors["carry"]))


def test_shrinkage_beats_plain_carrying_for_clients_heard_across_a_long_step():
    """Absent clients last heard far from w, the step heading to the optimum: imputing the
    fresh mean plus a shrunk offset errs less than carrying each stale gradient forward
    along the true mean Σ (from w0 = 0, and from a random start around the optimum)."""
    assert _shrink_vs_carry(far=False) < 0.7
    assert _shrink_vs_carry(far=True) < 1.0


def test_shrinkage_weights_stay_in_zero_one_with_an_indefinite_step_norm():
    """A Σ̂ with a negative eigenvalue (e.g. under heavy differential-privacy noise) must not
    push λ past 1 or blow the estimate up: the absent client's gradient stays between
    its carried value and the fresh mean."""
    d = 2
    table = GradientTable(d, keep_previous=True)
    w0, w1 = np.zeros(d), np.array([1.0, 0.0])
    g0 = np.array([[0.0, 1.0], [0.5, 1.0], [1.0, 1.0], [0.2, 0.3]])
    table.update_many(np.arange(4), np.ones(4), g0, w0)
    g1 = g0[:3] + np.array([[1.0, 0.1], [1.2, -0.1], [0.8, 0.0]])
    table.update_many(np.arange(3), np.ones(3), g1, w1)
    identity = lambda v: v  # noqa: E731
    table.change(w0, w1, identity, identity)
    indefinite = lambda v: np.diag([-1.0, 1.0]) @ v  # noqa: E731
    g = table.estimate(w1, identity, identity, indefinite)
    carried, fresh = g0[3] + (w1 - w0), g1.mean(axis=0)
    absent = 4 * g - g1.sum(axis=0)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(absent, carried, atol=1e-12)  # length clipped at 0: λ = 1
    assert not np.allclose(carried, fresh)


def test_shrinkage_leaves_a_current_table_and_an_unknown_drift_alone():
    d = 4
    table = GradientTable(d, keep_previous=True)
    g = np.arange(8.0).reshape(2, d)
    table.update_many(np.array([0, 1]), np.ones(2), g, np.zeros(d))
    identity = lambda v: v  # noqa: E731
    assert table.estimate(np.zeros(d), identity, identity, identity) == pytest.approx(g.mean(axis=0))
    assert table.drift is None
    w = np.ones(d)
    assert table.estimate(w, identity, identity, identity) == pytest.approx(table.estimate(w, identity))
