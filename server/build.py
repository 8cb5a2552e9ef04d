"""Build the strategy a scenario and method name describe, and the oracle."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import ConfigRecord

from scenarios.faults import untrusted_training
from scenarios.federation import Federation, build_federation
from scenarios.loader import ScenarioError
from scenarios.schema import Scenario
from server.baselines import (
    FLOWER_STRATEGIES,
    NewtonStrategy,
    OracleStrategy,
    flower_strategy,
    local_training_config,
)
from server.strategy import GradCovStrategy
from shared.metrics import LeastSquaresOracle
from shared.secant import gradients_are_exact

# method → scenario overrides that define it (the rest comes from the scenario)
GRADCOV_VARIANTS = {
    "gradcov": [],
    "gradcov-uncalibrated": ["protocol.calibration=0"],
    "gradcov-differential": ["protocol.differential=true"],
    "fedsgd": ["preconditioner.enabled=false"],
}
METHODS = (*GRADCOV_VARIANTS, *FLOWER_STRATEGIES, "oracle", "newton")


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


def uses_preconditioner(scenario: Scenario, method: str) -> bool:
    """Whether the method's steps are scaled by a curvature estimate (P ≈ Σ⁻¹)."""
    if method in ("oracle", "newton"):
        return True
    if method in FLOWER_STRATEGIES:
        return False
    return scenario.preconditioner.enabled


def resolve_learning_rates(
    scenario: Scenario, oracle: LeastSquaresOracle | None, method: str = "gradcov"
) -> tuple[float, float]:
    """(server η, client local η), resolving 'auto'.

    With a preconditioner P·Σ ≈ I: auto η = 1 when the server sees exact
    gradients (every client, full local data, clean targets, no local steps) and
    the server's secant memory is on, for it corrects any overshooting step; else 0.5; the exact oracle
    and Newton take 1. Without a preconditioner the only safe scale is
    1/λ_max(Σ): auto takes it from the oracle (the best case for plain FedSGD
    and local steps); Flower's adaptive strategies keep their server η = 0.1.
    """
    train = scenario.training

    def top(name: str = "learning_rate") -> float:
        if oracle is None:
            raise ScenarioError(
                f"training.{name}: 'auto' without the preconditioner needs the true Σ, which nobody has "
                "when nodes bring their own data; set a number or preconditioner.enabled = true"
            )
        return 1.0 / oracle.largest_eigenvalue()

    pre = uses_preconditioner(scenario, method)
    exact = train.line_search_memory > 0 and gradients_are_exact(
        scenario.clients.fraction, train.gradient, train.noisy_targets, train.local_steps)
    if train.learning_rate != "auto":
        server = float(train.learning_rate)
    elif method in ("oracle", "newton"):
        server = 1.0
    elif method in FLOWER_STRATEGIES:
        server = 0.1
    elif pre:
        server = 1.0 if exact else 0.5
    else:
        server = top()
    if train.local_learning_rate != "auto":
        local = float(train.local_learning_rate)
    else:
        local = 0.5 if pre else top("local_learning_rate")
    return server, local


def strategy_for(scenario: Scenario, method: str = "gradcov", oracle: LeastSquaresOracle | None = None):
    """(strategy, train config, server η, local η) for a scenario and method name."""
    if method not in METHODS:
        raise ScenarioError(f"method: unknown {method!r}; choose from {', '.join(METHODS)}")
    lr, local_lr = resolve_learning_rates(scenario, oracle, method)
    proto, pre, train = scenario.protocol, scenario.preconditioner, scenario.training
    if method in FLOWER_STRATEGIES:
        strategy = flower_strategy(method, lr, scenario.clients.fraction, local_lr)
        config = local_training_config(proto.batch_size, train.local_steps, local_lr, train.gradient)
        return strategy, config, lr, local_lr
    common = dict(
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
    if method == "oracle":
        if oracle is None:
            raise ScenarioError("method: 'oracle' needs the true Σ, which only a simulation knows")
        strategy = OracleStrategy(scenario.dim(), oracle.sigma, **common)
    elif method == "newton":
        strategy = NewtonStrategy(scenario.dim(), **common)
    else:
        strategy = GradCovStrategy(
            scenario.dim(),
            **common,
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
        )
    return strategy, ConfigRecord(), lr, local_lr
