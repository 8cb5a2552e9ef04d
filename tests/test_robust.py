"""shared.robust (screens of probes and gradients) and the gradient table's exact mode."""

from __future__ import annotations

import numpy as np

from shared.gradient_table import GradientTable
from shared.robust import ReplyHistory, near_median, scatter_sizes, typical


def _sigma(d: int, kappa: float, rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / kappa, d)) @ q.T


def test_typical_keeps_honest_spread_and_drops_far_outliers():
    rng = np.random.default_rng(0)
    sizes = np.exp(0.1 * rng.standard_normal(20))
    assert typical(sizes).all()
    for bad in (1e6, 1e-3, 0.0, 12.0):
        mixed = sizes.copy()
        mixed[4] = bad
        assert list(np.flatnonzero(~typical(mixed))) == [4], bad
    assert typical(np.array([1.0, 1e9])).all()  # two clients: no median to trust


def test_near_median_is_one_sided():
    assert list(near_median(np.array([1.0, 1.1, 0.9, 0.001, 50.0]), 10.0)) == [True, True, True, True, False]


def test_whitened_sizes_expose_noise_of_the_honest_scale():
    """Probes of noise with the honest clients' total variance pass a plain-trace screen
    but not the whitened one (κ = 10³: noise fills the small directions)."""
    rng = np.random.default_rng(1)
    d, k, clients = 20, 64, 10
    sigma = _sigma(d, 1e3, rng)
    root = np.linalg.cholesky(sigma)
    probes = rng.standard_normal((clients, 1, k, d)) @ root.T
    probes[3] = rng.normal(0.0, np.sqrt(np.trace(sigma) / d), size=(1, k, d))
    coef = np.ones((clients, 1))
    assert typical(scatter_sizes(probes, coef)).all()
    whiten = np.linalg.inv(sigma + 1e-3 * np.trace(sigma) / d * np.eye(d))
    assert list(np.flatnonzero(~typical(scatter_sizes(probes, coef, whiten)))) == [3]


def test_history_flags_sign_flips_and_noise_not_honest_clients():
    rng = np.random.default_rng(2)
    d, clients = 10, 8
    sigma = _sigma(d, 100.0, rng)
    X = [rng.standard_normal((400, d)) @ np.linalg.cholesky(sigma).T for _ in range(clients)]
    H = [x.T @ x / len(x) for x in X]  # each client's own curvature
    b = [rng.standard_normal(d) * 0.1 for _ in range(clients)]
    grads = lambda w: np.stack([H[i] @ w - b[i] for i in range(clients)])  # noqa: E731
    P = np.linalg.inv(sigma)
    history = ReplyHistory(d)
    w = rng.standard_normal(d)
    history.record(list(range(clients)), grads(w), w)
    for _ in range(4):
        w = w - 0.3 * rng.standard_normal(d) * 0.1 ** _
        g = grads(w)
        g[5] = -g[5]
        g[6] = rng.standard_normal(d) * np.linalg.norm(g[0]) / np.sqrt(d)
        flagged = history.inconsistent(list(range(clients)), g, w, lambda v: sigma @ v, lambda v: P @ v)
        assert list(np.flatnonzero(flagged)) == [5, 6]
        history.record(list(range(clients)), g, w)


def test_gradient_table_removes_and_is_the_plain_mean_when_current():
    rng = np.random.default_rng(3)
    table = GradientTable(4)
    grads, rows, w = rng.standard_normal((5, 4)), rng.integers(1, 9, 5).astype(float), rng.standard_normal(4)
    for i in range(5):
        table.update(i, rows[i], grads[i], rng.standard_normal(4))
    for i in range(5):  # all heard again at w: the estimate is their mean, bit for bit
        table.update(i, rows[i], grads[i], w)
    assert table.current(w) and table.members() == (0, 1, 2, 3, 4)
    assert np.array_equal(table.estimate(w, lambda v: 0 * v), np.average(grads, axis=0, weights=rows))
    table.remove(2)
    table.remove(7)  # unknown: nothing happens
    keep = [0, 1, 3, 4]
    assert table.members() == tuple(keep)
    assert np.allclose(table.estimate(w, None), np.average(grads[keep], axis=0, weights=rows[keep]))
