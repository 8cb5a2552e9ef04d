"""shared.privacy: μ-GDP of label noise, composition, conversion to (ε, δ)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.privacy import (
    compose, delta_for_epsilon, epsilon_for_delta, gaussian_mechanism_mu, label_mu, max_advantage,
)


def test_label_mu_is_twice_the_bound_over_the_noise():
    assert label_mu(3.0, 64.0) == pytest.approx(0.75)
    assert label_mu(1.0, 0.0) == math.inf


@pytest.mark.parametrize("releases", [1, 4, 60])
def test_composition_is_mu_root_t_and_equals_the_averaged_mechanism(releases):
    """T releases with fresh N(0, σ²) noise are worth one release with σ/√T (their mean is sufficient)."""
    mu = gaussian_mechanism_mu(2.0, 5.0)
    assert compose(mu, releases) == pytest.approx(mu * math.sqrt(releases))
    assert compose(mu, releases) == pytest.approx(gaussian_mechanism_mu(2.0, 5.0 / math.sqrt(releases)))


@pytest.mark.parametrize("mu", [0.3, 1.0, 4.0, 40.0, 400.0])
def test_epsilon_and_delta_invert_each_other(mu):
    """Including a large composed μ (256 probes × 1000 rounds at μ = 0.75 gives 380),
    where e^ε alone would overflow a float."""
    eps = epsilon_for_delta(mu, 1e-5)
    assert math.isfinite(eps)
    assert delta_for_epsilon(mu, eps) == pytest.approx(1e-5, rel=1e-6)
    assert epsilon_for_delta(mu, 1e-6) > eps  # smaller δ costs more ε


def test_delta_formula_against_scipy():
    from scipy.stats import norm

    mu, eps = 1.0, 2.0
    expected = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
    assert delta_for_epsilon(mu, eps) == pytest.approx(expected, rel=1e-9)


def test_max_advantage_is_the_total_variation_of_two_unit_gaussians():
    rng = np.random.default_rng(0)
    mu = 1.2
    a, b = rng.standard_normal(200_000), mu + rng.standard_normal(200_000)
    best = (b > mu / 2).mean() - (a > mu / 2).mean()  # the likelihood-ratio threshold
    assert best == pytest.approx(max_advantage(mu), abs=0.01)
    assert max_advantage(0.0) == 0.0 and max_advantage(math.inf) == 1.0
