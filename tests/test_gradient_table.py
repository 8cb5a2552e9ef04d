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

