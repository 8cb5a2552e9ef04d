"""Baselines for ``fedsigma compare``: an oracle preconditioner, Newton, Flower's own.

The oracle and Newton reuse GradCovStrategy's round (w out, gradients back,
w ← w − η·P·ḡ) and differ only in where P comes from. FedAvg, FedAdam, FedYogi
and FedAdagrad are Flower's classes from ``flwr.serverapp.strategy``, used as
they are; the ClientApp's local-training handler answers them.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp import strategy as flower

from server.strategy import GradCovStrategy
from shared import protocol as p
from shared.cohort import CohortReplies
from shared.preconditioner import ridge_preconditioner

RIDGE = 1e-10  # relative to tr(Σ)/d: only there to keep a singular Σ invertible


class OracleStrategy(GradCovStrategy):
    """P = (Σ + λI)⁻¹ from the true Σ, fixed from round 1; no probes.

    Only a simulator knows Σ: this is the ceiling for any Σ-based preconditioner.
    """

    def __init__(self, dim: int, sigma: np.ndarray, **kwargs) -> None:
        kwargs.update(probes=0, precondition=True)
        super().__init__(dim, **kwargs)
        self.preconditioner = ridge_preconditioner(sigma, RIDGE * np.trace(sigma) / dim)
        self.refreshed_at = 0
        self._sigma = sigma

    def _update_preconditioner(self, server_round: int) -> None:
        return

    def _curvature_known(self) -> bool:
        return True

    def _curvature(self, v: np.ndarray) -> np.ndarray:
        """Σ·v with the true Σ: stale gradients of clients that sat a round out are carried
        forward along it (the oracle's ceiling holds under partial participation too)."""
        return self._sigma @ v


class NewtonStrategy(GradCovStrategy):
    """Clients send their local Hessian XᵀX/N once (d² floats), then gradients.

    The server averages the Hessians it has received, weighted by local rows,
    and preconditions with their inverse: the second-order method that does
    not hide the curvature. Its uplink bytes include the Hessians.
    """

    def __init__(self, dim: int, **kwargs) -> None:
        kwargs.update(probes=0, precondition=True)
        super().__init__(dim, **kwargs)
        self._hessian_sum = np.zeros((dim, dim))
        self._rows = 0
        self._rows_in_use = 0
        self._asked: set[int] = set()
        self._counted: set[int] = set()  # partitions whose Hessian is in the sum

    def node_config(self, node: int, config: ConfigRecord) -> ConfigRecord:
        if node in self._asked:
            return config
        self._asked.add(node)
        first = ConfigRecord(dict(config))
        first[p.SEND_HESSIAN] = True
        return first

    def absorb(self, replies: CohortReplies, index: int) -> None:
        partition = int(replies.partitions[index])
        # once per partition: a node back under a new id (a restart, a resumed run) is asked again
        if index in replies.hessians and partition not in self._counted:
            self._counted.add(partition)
            rows = int(replies.local_rows[index])
            self._hessian_sum += rows * replies.hessians[index]
            self._rows += rows

    @property
    def sigma_hat(self) -> np.ndarray | None:
        """The row-weighted mean of the Hessians received so far."""
        return self._hessian_sum / self._rows if self._rows else None

    def _curvature_known(self) -> bool:
        return self._rows > 0

    def _update_preconditioner(self, server_round: int) -> None:
        if self._rows == self._rows_in_use:  # no new Hessian this round
            return
        hessian = self.sigma_hat
        self.preconditioner = ridge_preconditioner(hessian, RIDGE * np.trace(hessian) / self.dim)
        self._rows_in_use = self._rows
        self.refreshed_at = server_round
        self._version += 1


def flower_strategy(cls: type, learning_rate: float, fraction: float, local_lr: float):
    """One of Flower's strategies (e.g. ``flwr.serverapp.strategy.FedAdam``), as shipped;
    ``learning_rate`` is the server η of the adaptive ones (FedAvg has none: its step
    is the clients' ``local_lr``)."""
    common = dict(fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    if cls is flower.FedAvg:
        return cls(**common)
    return cls(**common, eta=learning_rate, eta_l=local_lr)


def local_training_config(batch_size: int, local_steps: int, local_lr: float, gradient: str) -> ConfigRecord:
    """The train config that routes Flower's strategies to the local-training handler."""
    return ConfigRecord(
        {
            p.MODE: p.MODE_LOCAL,
            p.BATCH_SIZE: batch_size,
            p.LOCAL_STEPS: max(local_steps, 1),
            p.LOCAL_LR: float(local_lr),
            p.TRAIN_GRADIENT: gradient,
        }
    )
