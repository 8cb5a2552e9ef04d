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
from shared.robust import NORM_FACTOR, SCATTER_FACTOR, near_median, scatter_sizes


def partition_ids(replies: list[Message]) -> list[int]:
    """The partition id of each reply."""
    return [int(r.content[p.METRICS][p.PARTITION_ID]) for r in replies]


def probe_screen(replies: list[Message], coefficients: np.ndarray) -> np.ndarray:
    """Which replies' probes may join the pool: those whose own tr(Σ̂) is within
    SCATTER_FACTOR of the round's median (shared.robust.scatter_sizes).

    Parameters
    ----------
    replies : list of Message
        K validated replies of one round, all with probes of one shape.
    coefficients : ndarray of shape (K, levels)
        Each reply's calibration coefficients.

    Returns
    -------
    ndarray of bool, shape (K,)
    """
    probes = np.stack([r.content[p.ARRAYS][p.PROBE_GRADS].numpy() for r in replies])
    sizes = scatter_sizes(probes, coefficients)
    keep = near_median(sizes, SCATTER_FACTOR)
    if not keep.all():
        median = float(np.median(sizes))
        for pid, size in zip(np.array(partition_ids(replies))[~keep], sizes[~keep]):
            log(WARNING, "probes of partition %d left out of Σ̂: their tr(Σ̂) is %.3g× the round's median",
                pid, size / median)
    return keep


def norm_screen(pids: list[int], grads: np.ndarray) -> np.ndarray:
    """Which gradients (K, d) are at most NORM_FACTOR times the round's median norm."""
    norms = np.linalg.norm(grads, axis=1)
    keep = near_median(norms, NORM_FACTOR, two_sided=False)
    for pid, norm in zip(np.array(pids)[~keep], norms[~keep]):
        log(WARNING, "gradient of partition %d left out of ḡ: %.3g× the round's median norm",
            pid, norm / float(np.median(norms)))
    return keep


def log_inconsistent(pids: list[int], flagged: np.ndarray) -> None:
    """One line per client whose gradient contradicts its previous one."""
    for pid in np.array(pids)[flagged]:
        log(WARNING, "gradient of partition %d left out of ḡ: its change since its last reply does not "
            "match Σ̂ along the step", pid)
