"""shared.probe_budget: Σ̂'s whitened error from split halves, and when probes stop paying."""

import math

import numpy as np
import pytest

from shared.probe_budget import rounds_to_go, split_half_error, worth_probing


@pytest.mark.parametrize("probes", [1000, 4000, 16000])
def test_split_half_error_tracks_the_true_whitened_error(probes):
    rng = np.random.default_rng(probes)
    d = 50
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    vals = np.geomspace(1.0, 1e-3, d)
    G = rng.standard_normal((probes, d)) @ (q * np.sqrt(vals)).T
    half = probes // 2
    a, b, pooled = G[:half].T @ G[:half] / half, G[half:].T @ G[half:] / half, G.T @ G / probes
    w = (q / np.sqrt(vals)) @ q.T
    true = np.linalg.norm(w @ pooled @ w - np.eye(d), 2)
    assert split_half_error(a, b, pooled) == pytest.approx(true, rel=0.2)


def test_split_half_error_of_identical_halves_is_zero_and_of_no_estimate_is_inf():
    m = np.diag([2.0, 1.0])
    assert split_half_error(m, m, m) == 0.0
    assert split_half_error(m, m, -m) == math.inf


def test_rounds_to_go_follows_the_e_squared_contraction():
    assert rounds_to_go(0.1, 1.0, 1e-6) == pytest.approx(3.0)  # 1e-2 per round
    assert rounds_to_go(0.5, 1e-7, 1e-6) == 0.0
    assert rounds_to_go(1.0, 1.0, 1e-6) == math.inf


def test_probing_stops_once_more_probes_save_no_round():
    # e = 0.2 from 5000 probes: 1e-6 from r = 1 takes ⌈4.29⌉ = 5 rounds; 5000 more give
    # e = 0.141, ⌈3.53⌉ = 4 rounds: worth it
    assert worth_probing(0.2, 5000, 5000, 1.0, 1e-6)
    # near the target one more round is needed either way: stop probing
    assert not worth_probing(0.2, 5000, 5000, 1e-5, 1e-6)
    # a handful of probes on top of many cannot move e enough
    assert not worth_probing(0.05, 100000, 10, 1.0, 1e-6)
    assert worth_probing(math.inf, 0, 100, 1.0, 1e-6)
    assert worth_probing(1.5, 1000, 100, 1.0, 1e-6)  # no contraction guaranteed yet
