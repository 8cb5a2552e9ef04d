"""shared.metrics.LeastSquaresOracle: the optimum from refined normal equations."""

import numpy as np
import pytest

from shared.data import synthetic_regression
from shared.metrics import LeastSquaresOracle


@pytest.mark.parametrize("kappa", [1.0, 1e4, 1e6])
def test_the_optimum_matches_the_svd_even_when_ill_conditioned(kappa):
    """Refined normal equations give lstsq's w to near machine precision, and the excess
    risk of lstsq's w is at round-off level; plain normal equations would lose κ²ε."""
    rng = np.random.default_rng(0)
    X, y, _, _ = synthetic_regression(3000, 30, kappa, rng, noise_std=0.5)
    oracle = LeastSquaresOracle(X, y, np.zeros(30))
    w_svd = np.linalg.lstsq(X, y, rcond=None)[0]
    sigma = X.T @ X / len(X)
    scale = np.sqrt(np.diag(sigma))  # compare in the metric the risk uses
    assert np.max(np.abs((oracle.w_opt - w_svd) * scale)) <= 1e-12 * np.max(np.abs(w_svd * scale)) * max(kappa, 1) ** 0.5
    assert oracle.excess_risk(w_svd) < 1e-20


def test_dependent_columns_still_give_the_least_squares_loss():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 3))
    X = np.column_stack([X, X[:, 0]])  # singular Σ
    y = rng.standard_normal(50)
    oracle = LeastSquaresOracle(X, y, np.zeros(4))
    w_svd = np.linalg.lstsq(X, y, rcond=None)[0]
    assert oracle.loss_opt == pytest.approx(oracle.loss(w_svd), rel=1e-10)
    assert oracle.excess_risk(w_svd) < 1e-12
