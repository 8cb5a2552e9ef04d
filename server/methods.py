"""The method registry: every server method fedsigma runs, one :class:`Method` each.

What a method name means lives here and nowhere else. The CLI (``fedsigma run
--method``, ``fedsigma compare --methods``), ``compare``'s tuning, ``reproduce``,
the ServerApp (``method`` in Flower's run config), the benchmarks and the tests
all read :data:`METHODS`.

Each entry holds

- ``build``: how to build its strategy from a scenario (:mod:`server.build`);
- ``settings``: the scenario settings that define it, as ``{"section.key": value}``,
  applied to the parsed scenario by :meth:`Method.prepare` (``model_copy``, each
  value validated); they win over the scenario file and ``--set``, so that a run
  recorded as ``fedsgd`` is FedSGD;
- ``grid``: the learning rate ``fedsigma compare`` tunes and the values it tries;
- ``uplink``: what a client sends each round; ``probes``: whether those include
  probe gradients (when the scenario's preconditioner is on); ``sends_hessian``:
  whether they reveal XᵀX/N, which a node must allow;
- ``preconditioned``: whether its steps are scaled by a curvature estimate P.

Adding a method
---------------
1. If it needs a new strategy, write its builder in :mod:`server.build`: a function
   ``(scenario, learning_rate, local_learning_rate, oracle) -> (strategy, train
   config)``; the scenario it gets is already prepared.
2. Add one ``Method(...)`` to ``_ALL`` below, every field filled in.

That is all: ``fedsigma run --method NAME``, ``compare``, ``flwr run . --run-config
'method="NAME"'`` and the benchmarks pick it up. tests/test_methods.py checks every
entry (it builds, its grid and uplink are set, the CLI offers it) and fails on one
that is incomplete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from flwr.app import ConfigRecord
from flwr.serverapp import strategy as flower

from scenarios.loader import ScenarioError, updated
from scenarios.schema import Scenario
from server import build
from shared.metrics import LeastSquaresOracle
from shared.secant import gradients_are_exact

Builder = Callable[[Scenario, float, float, "LeastSquaresOracle | None"], tuple[Any, ConfigRecord]]


@dataclass(frozen=True)
class TuningGrid:
    """The learning rate ``fedsigma compare`` tunes for a method.

    Parameters
    ----------
    parameter : {"learning_rate", "local_learning_rate", "line_search_memory"}
        The key under the scenario's ``[training]`` that is tuned (the memory is
        an integer: compare rounds the values it steps to).
    values : tuple of float
        The values tried (compare steps past an edge that wins).
    relative : bool
        True: ``values`` are multiples of the method's auto value (for steps
        without a preconditioner, 1/λ_max(Σ): 1.9× is just inside the stability
        limit 2/λ_max). False: absolute values.
    """

    parameter: Literal["learning_rate", "local_learning_rate", "line_search_memory"]
    values: tuple[float, ...]
    relative: bool


@dataclass(frozen=True)
class Method:
    """One server method: how it is built, what defines it, how it is tuned, what it sends.

    Parameters
    ----------
    name : str
        The name users give (``--method``, ``method`` in the run config).
    description : str
        One line for help texts.
    build : callable
        ``(prepared scenario, server η, client local η, oracle or None) -> (strategy,
        train config)``; see :mod:`server.build`.
    grid : TuningGrid
        What ``fedsigma compare`` tunes.
    uplink : str
        What each sampled client sends per round, for help texts and docs.
    probes : bool
        Whether clients also send ``protocol.probes`` probe gradients per noise level
        (only while the scenario's preconditioner is on).
    preconditioned : bool or None
        Whether steps are scaled by a curvature estimate P ≈ Σ⁻¹; None: as the
        scenario's ``preconditioner.enabled``.
    sends_hessian : bool
        Whether clients reveal second-order statistics of their data (XᵀX/N or a
        compression of it): nodes must opt in with ``allow-hessian`` (client/policy.py).
    auto_learning_rate : float or None
        The server η that ``learning_rate = "auto"`` means, if fixed; None: the
        preconditioned rule of :func:`resolve_learning_rates`.
    settings : mapping of str to value
        ``{"section.key": value}`` that define the method on top of any scenario.
    """

    name: str
    description: str
    build: Builder
    grid: TuningGrid
    uplink: str
    probes: bool
    preconditioned: bool | None
    sends_hessian: bool
    auto_learning_rate: float | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def differences(self, scenario: Scenario) -> list[str]:
        """The keys of this method's settings that ``scenario`` sets otherwise."""
        return [key for key, value in self.settings.items() if _get(scenario, key) != value]

    def prepare(self, scenario: Scenario) -> Scenario:
        """The scenario with this method's settings applied (the same object if they
        are in effect already)."""
        if not self.differences(scenario):
            return scenario
        try:
            return updated(scenario, self.settings)
        except ScenarioError as exc:
            raise ScenarioError(f"method {self.name}: {exc}") from None

    def uses_preconditioner(self, scenario: Scenario) -> bool:
        """Whether this method's steps are scaled by P on ``scenario``."""
        if self.preconditioned is not None:
            return self.preconditioned
        return self.prepare(scenario).preconditioner.enabled

    def gradient_evals(self, scenario: Scenario) -> int:
        """Gradient evaluations one sampled client makes per round (of any batch size)."""
        scenario = self.prepare(scenario)
        steps = max(scenario.training.local_steps, 1)
        if not (self.probes and scenario.preconditioner.enabled):
            return steps
        levels = 2 if scenario.protocol.differential else 1
        return scenario.protocol.probes * levels + steps


def _get(scenario: Scenario, key: str) -> Any:
    value: Any = scenario
    for part in key.split("."):
        value = getattr(value, part)
    return value


_GRADCOV_GRID = TuningGrid("learning_rate", (0.5, 0.75, 1.0), relative=False)
_ADAPTIVE_GRID = TuningGrid("learning_rate", (0.03, 0.1, 0.3), relative=False)
_SGD_GRID = TuningGrid("learning_rate", (0.5, 1.0, 1.9), relative=True)  # × 1/λ_max: 2/λ_max is the limit
_GRADIENT = "its gradient ḡ_k (d floats)"
_PROBES = " and protocol.probes probe gradients (d floats each) until preconditioner.max_gradients are pooled"
_WEIGHTS = "its locally trained weights (d floats)"


def _flower(cls: type, description: str) -> Method:
    """One of Flower's strategies, as shipped, answered by the local-training handler."""
    fedavg = cls is flower.FedAvg  # no server η: its step is the clients' local one
    return Method(
        cls.__name__.lower(), description, partial(build.flower_baseline, cls),
        grid=TuningGrid("local_learning_rate", (0.5, 1.0, 1.9), True) if fedavg else _ADAPTIVE_GRID,
        uplink=_WEIGHTS, probes=False, preconditioned=False, sends_hessian=False,
        auto_learning_rate=0.1,  # the adaptive ones' server η
    )


_ALL = (
    Method("gradcov", "Σ̂ from calibrated probe gradients; steps w ← w − η·(Σ̂ + λI)⁻¹·ḡ", build.gradcov,
           grid=_GRADCOV_GRID, uplink=_GRADIENT + _PROBES, probes=True, preconditioned=None, sends_hessian=False),
    Method("gradcov-uncalibrated", "gradcov with noise-free probes (c = 0): Σ̂ is biased by the residual",
           build.gradcov, grid=_GRADCOV_GRID, uplink=_GRADIENT + _PROBES, probes=True, preconditioned=None,
           sends_hessian=False, settings={"protocol.calibration": 0.0}),
    Method("gradcov-differential", "gradcov with probes at two noise levels: cancels δ-bias and σ₀²",
           build.gradcov, grid=_GRADCOV_GRID, uplink=_GRADIENT + _PROBES + ", at each of two noise levels",
           probes=True, preconditioned=None, sends_hessian=False, settings={"protocol.differential": True}),
    Method("fedsgd", "plain FedSGD: P = I, no probes, no memory of past steps", build.gradcov,
           grid=_SGD_GRID, uplink=_GRADIENT, probes=False, preconditioned=False, sends_hessian=False,
           settings={"preconditioner.enabled": False, "training.line_search_memory": 0}),
    Method("fedsgd-memory", "FedSGD with gradcov's secant memory (P = I): federated CG while the memory holds "
           "every step", partial(build.gradcov, memory_on_inexact=True), grid=_SGD_GRID, uplink=_GRADIENT,
           probes=False, preconditioned=False, sends_hessian=False, settings={"preconditioner.enabled": False}),
    Method("fedlbfgs", "server-side L-BFGS on the federated gradient (P = I, unit steps; memory tuned)",
           partial(build.gradcov, step_rule="lbfgs", memory_on_inexact=True),
           grid=TuningGrid("line_search_memory", (5, 20, 50), relative=False), uplink=_GRADIENT, probes=False,
           preconditioned=False, sends_hessian=False, settings={"preconditioner.enabled": False}),
    Method("fednl", "FedNL (Safaryan et al. 2022; FedNL-PP when clients are sampled): Rank-1 compressed "
           "Hessian learning, steps (H + l·I)⁻¹", build.fednl, grid=_GRADCOV_GRID,
           uplink="a Rank-1 Hessian correction (d + 1 floats), its shifted point (d) and l_i (1)",
           probes=False, preconditioned=True, sends_hessian=True, auto_learning_rate=1.0),
    _flower(flower.FedAvg, "Flower's FedAvg: local steps, weights averaged"),
    _flower(flower.FedAdam, "Flower's FedAdam: FedAvg's update through a server-side Adam"),
    _flower(flower.FedYogi, "Flower's FedYogi: FedAvg's update through a server-side Yogi"),
    _flower(flower.FedAdagrad, "Flower's FedAdagrad: FedAvg's update through a server-side Adagrad"),
    Method("oracle", "P = (Σ + λI)⁻¹ from the true Σ (only a simulator knows it): the ceiling",
           build.oracle_preconditioned, grid=_GRADCOV_GRID, uplink=_GRADIENT, probes=False,
           preconditioned=True, sends_hessian=False, auto_learning_rate=1.0),
    Method("newton", "clients send their Hessian XᵀX/N once; P = its row-weighted mean's inverse",
           build.newton, grid=_GRADCOV_GRID, probes=False,
           uplink="its local Hessian XᵀX/N once (d² floats), then " + _GRADIENT, preconditioned=True, sends_hessian=True, auto_learning_rate=1.0),
)
METHODS: dict[str, Method] = {m.name: m for m in _ALL}


def get_method(name: str) -> Method:
    """The registry entry for ``name``, or a one-line ScenarioError naming the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ScenarioError(f"method: unknown {name!r}; choose from {', '.join(METHODS)}") from None


def resolve_learning_rates(
    scenario: Scenario, oracle: LeastSquaresOracle | None, name: str = "gradcov"
) -> tuple[float, float]:
    """(server η, client local η), resolving 'auto'.

    With a preconditioner P·Σ ≈ I: auto η = 1 when the server sees exact
    gradients (full local data, clean targets, no local steps; any clients.fraction: the gradient table makes ḡ the federation's) and
    the server's secant memory is on, for it corrects any overshooting step; else 0.5; the exact oracle
    and Newton take 1. Without a preconditioner the only safe scale is
    1/λ_max(Σ): auto takes it from the oracle (the best case for plain FedSGD
    and local steps); Flower's adaptive strategies keep their server η = 0.1.
    """
    m = get_method(name)
    train = scenario.training

    def top(key: str = "learning_rate") -> float:
        if oracle is None:
            raise ScenarioError(
                f"training.{key}: 'auto' without the preconditioner needs the true Σ, which nobody has "
                "when nodes bring their own data; set a number or preconditioner.enabled = true"
            )
        return 1.0 / oracle.largest_eigenvalue()

    pre = m.uses_preconditioner(scenario)
    exact = train.line_search_memory > 0 and gradients_are_exact(train.gradient, train.noisy_targets, train.local_steps)
    if train.learning_rate != "auto":
        server = float(train.learning_rate)
    elif m.auto_learning_rate is not None:
        server = m.auto_learning_rate
    elif pre:
        server = 1.0 if exact else 0.5
    else:
        server = top()
    if train.local_learning_rate != "auto":
        local = float(train.local_learning_rate)
    else:
        local = 0.5 if pre else top("local_learning_rate")
    return server, local


def strategy_for(scenario: Scenario, name: str = "gradcov", oracle: LeastSquaresOracle | None = None):
    """(strategy, train config, server η, local η) for a scenario and method name;
    the method's settings are applied to the scenario first."""
    m = get_method(name)
    scenario = m.prepare(scenario)
    lr, local_lr = resolve_learning_rates(scenario, oracle, name)
    strategy, config = m.build(scenario, lr, local_lr, oracle)
    return strategy, config, lr, local_lr
