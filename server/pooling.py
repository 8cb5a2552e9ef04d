"""Which of a round's (well-formed) replies reach Σ̂ and ḡ: the robust screens of
shared.robust applied to GradCov replies, one log line per left-out contribution.

The arrays are stacked once per round, so every screen is a few array operations
over all clients at once.
"""

from __future__ import annotations

from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.supercore import log

from shared import protocol as p
from shared.cohort import CohortReplies
from shared.robust import NORM_FACTOR, near_median, typical


def cohort_replies(replies: list[Message]) -> CohortReplies:
    """Validated training replies (server.replies), stacked in their order, as the
    cohort path hands them to the strategy: one aggregation code path for both
    (probes sent in float32 or float16 widened to float64, as on the cohort path)."""
    arrays = [r.content[p.ARRAYS] for r in replies]
    counts = [r.content[p.METRICS] for r in replies]
    return CohortReplies(
        partitions=np.array([int(c[p.PARTITION_ID]) for c in counts], dtype=np.int64),
        probes=np.stack([a[p.PROBE_GRADS].numpy() for a in arrays]).astype(np.float64, copy=False)
        if replies else np.zeros((0, 0, 0, 0)),
        updates=np.stack([a[p.UPDATE].numpy() for a in arrays]) if replies else np.zeros((0, 0)),
        num_examples=np.array([int(c[p.NUM_EXAMPLES]) for c in counts], dtype=np.int64),
        local_rows=np.array([int(c[p.LOCAL_ROWS]) for c in counts], dtype=np.int64),
        hessians={i: a[p.HESSIAN].numpy() for i, a in enumerate(arrays) if p.HESSIAN in a},
    )


def probe_screen(pids: list[int], sizes: np.ndarray | None) -> np.ndarray:
    """Which replies' probes may join the pool: those whose size (each client's
    tr(P·Σ̂_i), :meth:`shared.curvature.ProbeCurvature.probe_sizes`) is typical of the
    round (shared.robust.typical), one log line per left-out client.

    Parameters
    ----------
    pids : list of int
        The K replies' partition ids (for the log).
    sizes : ndarray of shape (K,) or None
        Their probe sizes; None (no probes this round) keeps every reply.

    Returns
    -------
    ndarray of bool, shape (K,)
    """
    if sizes is None:
        return np.ones(len(pids), dtype=bool)
    keep = typical(sizes)
    if not keep.all():
        median = float(np.median(sizes))
        for pid, size in zip(np.array(pids)[~keep], sizes[~keep]):
            log(WARNING, "probes of partition %d left out of Σ̂: their size is %.3g× the round's median",
                pid, size / median)
    return keep


def norm_screen(pids: list[int], grads: np.ndarray) -> np.ndarray:
    """Which gradients (K, d) are at most NORM_FACTOR times the round's median norm."""
    norms = np.linalg.norm(grads, axis=1)
    keep = near_median(norms, NORM_FACTOR)
    for pid, norm in zip(np.array(pids)[~keep], norms[~keep]):
        log(WARNING, "gradient of partition %d left out of ḡ: %.3g× the round's median norm",
            pid, norm / float(np.median(norms)))
    return keep


def log_inconsistent(pids: list[int], flagged: np.ndarray) -> None:
    """One line per client whose gradient contradicts its previous one."""
    for pid in np.array(pids)[flagged]:
        log(WARNING, "gradient of partition %d left out of ḡ: its change since its last reply does not "
            "match Σ̂ along the step", pid)
