"""When to stop asking clients for probes: Σ̂'s error from the probes themselves.

Probe gradients are most of gradcov's uplink. More of them make Σ̂ better, but
past some point a better Σ̂ no longer saves a round. This module decides, each
round, whether the next round's probes are worth their bytes.

**Σ̂'s whitened error, without knowing Σ.** The pooled probes are split in two
halves (alternate probes of every client, each half centred on its own), pooled
separately into Σ̂_A and Σ̂_B. Their difference is pure sampling noise, and with
W = Σ̂^{-1/2}

    ê = ‖W (Σ̂_A − Σ̂_B) W‖₂ / 2

estimates ‖Σ^{-1/2} Σ̂ Σ^{-1/2} − I‖₂ (each half carries √2 times the full pool's
error, and their difference √2 times that again). On Wishart draws at d = 50 it
tracks the true whitened error within 10 % from K = 1000 probes on, and follows
2√(d/K) (``tests/test_probe_budget.py``).

**What the steps need.** A preconditioned step with a whitened error e contracts
the excess risk by at most e² per round (the worst direction of PΣ − I), so with
the relative excess risk now r and the target t, about log(t/r)/log(e²) rounds
remain. The server estimates r without the optimum: for least squares
L(w) − L* = ½ ḡᵀΣ⁻¹ḡ ≈ ½ ḡᵀPḡ, taken relative to the first round's. Probing
continues while one more round of probes (which shrink e by √(K/(K + k)) for k
new probes) is predicted to save at least one round; otherwise the clients send
gradients only. The e² rate ignores the secant memory's speed-up, so the rule
errs on the side of probing a little longer.
"""

from __future__ import annotations

import math

import numpy as np

from shared.estimators import CovariancePool


def split_half_error(half_a: np.ndarray, half_b: np.ndarray, pooled: np.ndarray) -> float:
    """ê, the estimated whitened error of ``pooled`` from two independent halves.

    Parameters
    ----------
    half_a, half_b : ndarray of shape (d, d)
        Σ̂ from each half of the probes.
    pooled : ndarray of shape (d, d)
        Σ̂ from all of them (the one that is used).

    Returns
    -------
    float
        ‖W (Σ̂_A − Σ̂_B) W‖₂ / 2 with W = Σ̂^{-1/2} (eigenvalues of Σ̂ floored at
        1e-12 of the largest); inf when Σ̂ has no positive eigenvalue.
    """
    v, V = np.linalg.eigh((pooled + pooled.T) / 2)
    if v[-1] <= 0:
        return math.inf
    W = (V / np.sqrt(np.maximum(v, 1e-12 * v[-1]))) @ V.T
    return float(np.linalg.norm(W @ (half_a - half_b) @ W, 2)) / 2


def rounds_to_go(error: float, progress: float, target: float) -> float:
    """Rounds of preconditioned steps predicted to take the relative excess risk from
    ``progress`` to ``target`` when each round contracts it by ``error``².

    Parameters
    ----------
    error : float
        The whitened error e of Σ̂ (≥ 0).
    progress : float
        The relative excess risk now, r (0 < r; 1 at the start).
    target : float
        t, the relative excess risk to reach.

    Returns
    -------
    float
        0 when r ≤ t; inf when e ≥ 1 (no contraction is guaranteed).
    """
    if progress <= target:
        return 0.0
    if error >= 1.0:
        return math.inf
    if error <= 0.0:
        return 1.0
    return math.log(target / progress) / (2.0 * math.log(error))


def worth_probing(error: float, pooled: int, per_round: int, progress: float, target: float) -> bool:
    """Whether one more round of ``per_round`` probes is predicted to save a round.

    Parameters
    ----------
    error : float
        ê for the ``pooled`` probes so far.
    pooled : int
        K, probes pooled so far.
    per_round : int
        k, probes the next round would add.
    progress : float
        The relative excess risk now (the server's estimate).
    target : float
        The relative excess risk to reach.
    """
    if pooled <= 0 or not math.isfinite(error):
        return True
    now = rounds_to_go(error, progress, target)
    if math.isinf(now):  # Σ̂ guarantees no contraction yet: keep probing
        return True
    sharper = error * math.sqrt(pooled / (pooled + per_round))
    return math.ceil(now) - math.ceil(rounds_to_go(sharper, progress, target)) >= 1



class ProbeBudget:
    """The adaptive probe budget of one run: two half pools and the stop decision.

    Replies alternate between two :class:`shared.estimators.CovariancePool` halves
    (in the server's reply order, so the split is deterministic); after each round
    :meth:`decide` compares ê with what the remaining rounds need. Probing never
    resumes once stopped.

    Parameters
    ----------
    dim : int
        d.
    levels : int
        Noise levels per probe (1, or 2 for differential injection).
    target : float
        The relative excess risk the run aims at.
    warmup : int
        Probes to pool before deciding anything (the warm-up of P).
    """

    def __init__(self, dim: int, levels: int, target: float, warmup: int) -> None:
        self.halves = (CovariancePool(dim, levels), CovariancePool(dim, levels))
        self.target, self.warmup = target, warmup
        self.probing = True
        self.error: float | None = None  # ê, once computed
        self._replies = 0
        self._pooled_before = 0

    def add(self, probes: np.ndarray, coefficients: np.ndarray) -> None:
        """One reply's probes (levels, k, d) with their calibration coefficients."""
        self.add_many(np.asarray(probes)[None], np.asarray(coefficients)[None])

    def add_many(self, probes: np.ndarray, coefficients: np.ndarray) -> None:
        """Several replies' probes (K, levels, k, d), in reply order, with their
        coefficients (K, levels): alternate replies go to alternate halves."""
        parity = (self._replies + np.arange(len(probes))) % 2
        for half, pool in enumerate(self.halves):
            if np.any(parity == half):
                pool.add_many(probes[parity == half], coefficients[parity == half])
        self._replies += len(probes)

    def decide(self, pooled_estimate: np.ndarray | None, pooled: int, progress: float) -> bool:
        """Whether the next round asks for probes.

        Parameters
        ----------
        pooled_estimate : ndarray of shape (d, d) or None
            Σ̂ from every probe pooled so far.
        pooled : int
            K, probes pooled so far.
        progress : float
            The server's estimate of the relative excess risk now.
        """
        added, self._pooled_before = pooled - self._pooled_before, pooled
        if not self.probing or pooled < self.warmup or added <= 0:
            return self.probing
        halves = [h.estimate() for h in self.halves]
        if pooled_estimate is None or any(h is None for h in halves):
            return self.probing
        self.error = split_half_error(halves[0], halves[1], pooled_estimate)
        self.probing = worth_probing(self.error, pooled, added, progress, self.target)
        return self.probing
