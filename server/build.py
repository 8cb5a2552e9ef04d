"""Build a GradCovStrategy and the oracle for a scenario."""

from __future__ import annotations

import numpy as np

from scenarios.federation import Federation, build_federation
from scenarios.loader import ScenarioError
from scenarios.schema import Scenario
from server.strategy import GradCovStrategy
from shared.metrics import LeastSquaresOracle


def oracle_for(scenario: Scenario) -> tuple[Federation, LeastSquaresOracle]:
    """The union of all clients' data and its least-squares oracle, started at w₀ = 0."""
    fed = build_federation(scenario)
    return fed, LeastSquaresOracle(fed.X, fed.y, np.zeros(fed.X.shape[1]))


def resolve_learning_rate(scenario: Scenario, oracle: LeastSquaresOracle | None) -> float:
    """η: the scenario's, or 'auto' = 0.5 with a preconditioner (P·Σ ≈ I) and the
    oracle-tuned 1/λ_max(Σ) without one (plain FedSGD's best safe constant step)."""
    lr = scenario.training.learning_rate
    if lr != "auto":
        return float(lr)
    if scenario.preconditioner.enabled or scenario.training.local_steps > 0:
        return 0.5
    if oracle is None:
        raise ScenarioError("training.learning_rate: 'auto' needs the true Σ; set a number")
    return 1.0 / oracle.largest_eigenvalue()


def strategy_for(scenario: Scenario, learning_rate: float) -> GradCovStrategy:
    """The strategy a scenario describes."""
    proto, pre, train = scenario.protocol, scenario.preconditioner, scenario.training
    return GradCovStrategy(
        scenario.dim(),
        learning_rate=learning_rate,
        fraction_train=scenario.clients.fraction,
        min_available_nodes=scenario.clients.count,
        batch_size=proto.batch_size,
        probes=proto.probes if pre.enabled else 0,
        calibration=proto.calibration,
        natural_var=scenario.natural_noise_var(),
        differential_low=proto.differential_low if proto.differential else None,
        precondition=pre.enabled,
        ridge=pre.ridge,
        ridge_fraction=pre.ridge_fraction,
        refresh_every=pre.refresh_every,
        warmup_gradients=pre.warmup_gradients,
        train_gradient=train.gradient,
        noisy_targets=train.noisy_targets,
        local_steps=train.local_steps,
        local_learning_rate=train.local_learning_rate,
        seed=scenario.seed,
    )
