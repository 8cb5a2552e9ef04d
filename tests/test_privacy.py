"""shared.privacy: μ-GDP of label noise, composition, conversion to (ε, δ)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.privacy import (
    compose,
    delta_for_epsilon,
    epsilon_for_delta,
    gaussian_mechanism_mu,
    label_mu,
    max_advantage,
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


def test_label_clip_clips_probe_targets_only_and_reaches_the_clients(tmp_path):
    """protocol.label_clip = B: the probes are those of targets clipped to [−B, B]
    (same batches and noise), and the strategy sends B to every client."""
    from client.client_app import model_for
    from client.cohort import CohortData, cohort_round
    from shared import protocol as p

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((200, 5)), 3.0 * rng.standard_normal(200)
    w = rng.standard_normal(5)

    def probes(targets, clip):
        one = CohortData(X, targets, np.array([0]), np.array([200]), np.array([0]))
        cfg = p.RoundConfig(server_round=1, batch_size=16, probes=4, label_clip=clip)
        return cohort_round(model_for(5), one, w, cfg.to_config(), seed=1).probes[0]

    clipped = probes(y, 1.5)
    by_hand = probes(np.clip(y, -1.5, 1.5), 0.0)
    raw = probes(y, 0.0)
    np.testing.assert_allclose(clipped, by_hand, rtol=1e-12, atol=1e-12)
    assert np.abs(clipped - raw).max() > 1e-3

    from _support import run_inline_scenario, write_scenario

    from client.client_app import app as real
    from shared import protocol

    seen = set()

    def spy(msg, context):
        if msg.metadata.message_type == "train":
            seen.add(float(msg.content["config"][protocol.LABEL_CLIP]))
        return real(msg, context)

    scenario = write_scenario(tmp_path / "s.toml", "[protocol]\nlabel_clip = 2.0\n[stop]\nmax_rounds = 2\n")
    run_inline_scenario(scenario, tmp_path / "out", client_app=spy)
    assert seen == {2.0}


def test_label_clip_must_be_positive(tmp_path, capsys):
    from fedsigma.cli import main

    assert main(["run", "quickstart", "--set", "protocol.label_clip=0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "protocol.label_clip" in err[0]
