"""Flower's own strategies as baselines for ``fedsigma compare``.

FedAvg, FedAdam, FedYogi and FedAdagrad are Flower's classes from
``flwr.serverapp.strategy``, used as they are; the ClientApp's local-training
handler answers them. (The oracle and Newton baselines are GradCovStrategy with
another curvature source: :mod:`shared.curvature`.)
"""

from __future__ import annotations

from flwr.app import ConfigRecord
from flwr.serverapp import strategy as flower

from shared import protocol as p


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
