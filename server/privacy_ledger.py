"""What each node says it released: the label μ-GDP its own accountant reports.

Every training reply carries ``mu-probe`` (μ of that round's least-noisy probe)
and ``mu-spent`` (μ of everything the node released in this run, √Σμ²), added by
the node's policy (client/policy.py). The server only collects them for
summary.json; it cannot verify them, and a node that reports nothing (a
SuperNode running another ClientApp) shows as null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import Message

from shared import protocol as p
from shared.cohort import CohortReplies


def _finite(value: float) -> float | None:
    """JSON has no infinity: μ = ∞ (no noise) is written as null."""
    return value if math.isfinite(value) else None


class PrivacyLedger:
    """Per-partition μ per probe (the largest seen) and total μ (the latest report)."""

    def __init__(self) -> None:
        self.mu_probe: dict[int, float] = {}
        self.mu_total: dict[int, float] = {}
        self.noise_secret: dict[int, bool] = {}

    def observe(self, replies: Iterable[Message]) -> None:
        """Take the μ reports of one round's successful replies."""
        for reply in replies:
            if reply.has_error() or p.METRICS not in reply.content:
                continue
            metrics = reply.content[p.METRICS]
            if p.MU_SPENT not in metrics or p.PARTITION_ID not in metrics:
                continue
            pid = int(metrics[p.PARTITION_ID])
            self.mu_probe[pid] = max(self.mu_probe.get(pid, 0.0), float(metrics[p.MU_PROBE]))
            self.mu_total[pid] = float(metrics[p.MU_SPENT])
            self.noise_secret[pid] = bool(metrics.get(p.NOISE_SECRET, 0))

    def observe_cohort(self, replies: CohortReplies) -> None:
        """Take the μ reports of one round's replies, stacked (the cohort path)."""
        if p.MU_SPENT not in replies.metrics:
            return
        for pid, probe, spent in zip(replies.partitions.tolist(), replies.metrics[p.MU_PROBE].tolist(),
                                     replies.metrics[p.MU_SPENT].tolist()):
            self.mu_probe[pid] = max(self.mu_probe.get(pid, 0.0), probe)
            self.mu_total[pid] = spent

    def summary(self) -> dict:
        """``{"what": …, "nodes": [{"partition", "mu_per_probe", "mu_total", "noise_secret"}, …]}``."""
        return {
            "what": "label μ-GDP of the probes each node released, from its own accountant "
                    "(Gaussian DP, composed as √Σμ²; null = no noise, i.e. unbounded); "
                    "the training gradient is not covered; against the server only where "
                    "noise_secret is true (else the server can regenerate the noise from the seed)",
            "nodes": [
                {"partition": pid, "mu_per_probe": _finite(self.mu_probe[pid]),
                 "mu_total": _finite(self.mu_total[pid]), "noise_secret": self.noise_secret.get(pid, False)}
                for pid in sorted(self.mu_total)
            ],
        }
