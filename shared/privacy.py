"""What the injected target noise protects: labels, in Gaussian differential privacy.

A client with labels |y| ≤ B that adds N(0, σ_inj²) to each label before
computing a gradient releases a post-processing of y + noise: a Gaussian
mechanism with sensitivity 2B (one label replaced) and hence μ-GDP with
μ = 2B/σ_inj (Dong, Roth & Su 2019). Fresh noise for each of T releases
composes to μ√T; noise drawn once and reused costs μ once. Features get no
protection: gradients reveal Σ by design (docs/method.md#privacy).
"""

from __future__ import annotations

import math


def std_normal_cdf(x: float) -> float:
    """Φ(x)."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gaussian_mechanism_mu(sensitivity: float, noise_std: float) -> float:
    """μ = Δ/σ of a Gaussian mechanism (inf without noise)."""
    if noise_std <= 0:
        return math.inf
    return sensitivity / noise_std


def label_mu(label_bound: float, injected_var: float) -> float:
    """μ of one release computed on labels |y| ≤ B with N(0, σ_inj²) added: 2B/σ_inj."""
    return gaussian_mechanism_mu(2 * label_bound, math.sqrt(max(injected_var, 0.0)))


def compose(mu: float, releases: int) -> float:
    """μ√T: T releases, each μ-GDP with fresh noise (T ≥ 0)."""
    return mu * math.sqrt(releases)


def delta_for_epsilon(mu: float, epsilon: float) -> float:
    """δ(ε) of a μ-GDP mechanism: Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2)."""
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    # e^ε·Φ(x) in log space: for a large composed μ, e^ε alone overflows a float
    from scipy.special import log_ndtr

    tail = math.exp(min(epsilon + float(log_ndtr(-epsilon / mu - mu / 2)), 0.0))
    return max(std_normal_cdf(-epsilon / mu + mu / 2) - tail, 0.0)


def epsilon_for_delta(mu: float, delta: float) -> float:
    """The smallest ε ≥ 0 with δ(ε) ≤ delta for a μ-GDP mechanism (bisection)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if math.isinf(mu):
        return math.inf
    if delta_for_epsilon(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_for_epsilon(mu, hi) > delta:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if delta_for_epsilon(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def max_advantage(mu: float) -> float:
    """The largest TPR − FPR of any test between neighbouring label sets: 2Φ(μ/2) − 1."""
    return 2 * std_normal_cdf(mu / 2) - 1 if not math.isinf(mu) else 1.0
