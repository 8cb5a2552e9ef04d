"""The strategy builders of :mod:`server.methods` (one per kind of strategy), and the oracle.

Each builder takes ``(scenario, server η, client local η, oracle or None)``, with the
method's settings already applied to the scenario, and returns ``(strategy, train
config)``."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import ConfigRecord

from scenarios.faults import untrusted_training
from scenarios.federation import Federation, build_federation
from scenarios.loader import ScenarioError
from scenarios.schema import Scenario
from server.baselines import flower_strategy, local_training_config
from server.fednl import FedNLStrategy
from server.strategy import GradCovStrategy
from shared.curvature import HessianCurvature, OracleCurvature
from shared.metrics import LeastSquaresOracle


def oracle_for(scenario: Scenario) -> tuple[Federation | None, LeastSquaresOracle | None]:
    """The union of all clients' data and its least-squares oracle, started at w₀ = 0
    (cached per federation: a comparison runs many methods on the same data).
    (None, None) when each node brings its own data (data.kind = "nodes").

    With ``faults.byzantine`` clients the oracle holds the honest clients' rows only
    (scenarios.faults.untrusted_training): a Byzantine client's data never reaches the
    server, so the honest optimum (and their Σ) is what a robust run can reach.
    """
    if not scenario.has_oracle():
        return None, None
    fed = build_federation(scenario)
    return fed, _oracle(fed, untrusted_training(scenario))


@lru_cache(maxsize=2)
def _oracle(fed: Federation, byzantine: frozenset[int] = frozenset()) -> LeastSquaresOracle:
    if not byzantine:
        return LeastSquaresOracle(fed.X, fed.y, np.zeros(fed.X.shape[1]))
    rows = np.concatenate([np.arange(len(fed.X))[s] for k, s in enumerate(fed.shards) if k not in byzantine])
    return LeastSquaresOracle(fed.X[rows], fed.y[rows], np.zeros(fed.X.shape[1]))


def flower_baseline(cls: type, scenario: Scenario, lr: float, local_lr: float, oracle=None):
    """One of Flower's strategies (``cls``) and the train config routing it to the
    clients' local-training handler."""
    train = scenario.training
    strategy = flower_strategy(cls, lr, scenario.clients.fraction, local_lr)
    config = local_training_config(scenario.protocol.batch_size, train.local_steps, local_lr, train.gradient)
    return strategy, config


def _common(scenario: Scenario, lr: float, local_lr: float) -> dict:
    """The GradCovStrategy arguments every GradCov-round method shares."""
    proto, train = scenario.protocol, scenario.training
    return dict(
        learning_rate=lr,
        fraction_train=scenario.clients.fraction,
        min_available_nodes=scenario.clients.count,
        batch_size=proto.batch_size,
        calibration=proto.calibration,
        natural_var=scenario.natural_noise_var(),
        train_gradient=train.gradient,
        noisy_targets=train.noisy_targets,
        local_steps=train.local_steps,
        local_learning_rate=local_lr,
        seed=scenario.seed,
        line_search_memory=train.line_search_memory,
    )


def gradcov(scenario: Scenario, lr: float, local_lr: float, oracle=None, *, step_rule: str = "secant",
            memory_on_inexact: bool = False):
    """GradCovStrategy as the scenario describes it (plain FedSGD when its
    preconditioner is off: no probes, P = I); ``step_rule`` and ``memory_on_inexact``
    make the fedlbfgs and fedsgd-memory rivals (see GradCovStrategy)."""
    proto, pre = scenario.protocol, scenario.preconditioner
    strategy = GradCovStrategy(
        scenario.dim(),
        **_common(scenario, lr, local_lr),
        probes=proto.probes if pre.enabled else 0,
        differential_low=proto.differential_low if proto.differential else None,
        precondition=pre.enabled,
        ridge=pre.ridge,
        ridge_fraction=pre.ridge_fraction,
        refresh_every=pre.refresh_every,
        warmup_gradients=pre.warmup_gradients,
        rank=pre.rank,
        max_gradients=pre.max_gradients,
        label_clip=proto.label_clip,
        probe_dtype=proto.probe_dtype,
        step_rule=step_rule,
        memory_on_inexact=memory_on_inexact,
        probe_target=scenario.stop.target if pre.adaptive_probes else None,
    )
    return strategy, ConfigRecord()


def fednl(scenario: Scenario, lr: float, local_lr: float, oracle=None):
    """FedNL (every client a round) or FedNL-PP (a sampled fraction), Rank-1 compression."""
    strategy = FedNLStrategy(scenario.dim(), learning_rate=lr, fraction_train=scenario.clients.fraction,
                             min_available_nodes=scenario.clients.count, seed=scenario.seed)
    return strategy, ConfigRecord()


def oracle_preconditioned(scenario: Scenario, lr: float, local_lr: float, oracle=None):
    """The GradCov round with P from the true Σ (only a simulation knows it)."""
    if oracle is None:
        raise ScenarioError("method: 'oracle' needs the true Σ, which only a simulation knows")
    strategy = GradCovStrategy(scenario.dim(), **_common(scenario, lr, local_lr), curvature=OracleCurvature(oracle.sigma))
    return strategy, ConfigRecord()


def newton(scenario: Scenario, lr: float, local_lr: float, oracle=None):
    """The GradCov round with P from the clients' Hessians, sent once."""
    strategy = GradCovStrategy(scenario.dim(), **_common(scenario, lr, local_lr),
                               curvature=HessianCurvature(scenario.dim()))
    return strategy, ConfigRecord()
