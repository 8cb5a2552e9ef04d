"""Run one validated scenario with one method on its engine: the single entry point
that ``fedsigma run``, ``compare``, ``reproduce`` and the benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.client_app import app as client_app
from client.policy import settings_admitting
from fedsigma.engines.deployment import Certificates, run_deployment
from fedsigma.engines.inline import run_inline
from fedsigma.engines.simulation import run_simulation
from fedsigma.flower_log import flower_log_to
from scenarios import run_config as rc
from scenarios.node_data import node_configs
from scenarios.resources import Estimate, check_resources, describe_estimate
from server.methods import get_method
from server.server_app import app as server_app


def run_engine(
    scenario, out: Path, method: str = "gradcov", deploy: DeployOptions | None = None, resume: bool = False,
    cohort: bool = True,
) -> None:
    """Run a validated scenario with one method on its engine; results land in ``out``.
    ``resume``: continue the run whose checkpoint is in ``out`` (server.checkpoint).
    ``cohort`` (inline engine): a round may run all its clients in one stacked
    computation (client/cohort.py; the same numbers); False sends every client a
    Message through the ClientApp, as the other engines do.

    Raises ResourceError (a ScenarioError) before any process starts if the
    scenario's memory or time estimate exceeds the machine (scenarios.resources).
    """
    check_size(scenario, method)
    deploy = deploy or DeployOptions()
    entry = get_method(method)
    scenario = entry.prepare(scenario)  # the nodes' policy below must admit the method's settings
    run_config = rc.encode(scenario, deploy.out_dir(out), scenario.engine, method, resume)
    # the nodes this process starts run with a policy that admits the scenario asked for
    # (client/policy.py); SuperNodes someone else started keep their own node config
    policy = settings_admitting(scenario, send_hessian=entry.sends_hessian)
    configs = [{**config, **policy} for config in node_configs(scenario)]
    if scenario.engine == "inline":
        with flower_log_to(out / "flower.log", verbose=deploy.verbose):
            run_inline(server_app, client_app, scenario.clients.count, run_config, configs,
                       round_timeout=scenario.training.round_timeout, cohort=cohort)
    elif scenario.engine == "deployment":
        run_deployment(
            configs, run_config, log_path=out / "flower.log", superlink=deploy.superlink,
            start_supernodes=not deploy.no_supernodes, tls=deploy.tls,
            certs=Certificates(deploy.certs) if deploy.certs else None,
        )
    else:
        run_simulation(scenario.clients.count, run_config, log_path=out / "flower.log", node_settings=policy,
                       ray_address=deploy.ray_address)


def check_size(scenario, method: str = "gradcov") -> Estimate:
    """Refuse (ResourceError, one line) a run of ``method`` too large for this machine, from what
    the method's clients send (server.methods); returns the estimate otherwise."""
    spec = get_method(method)
    return check_resources(scenario, probes=spec.probes, sends_hessian=spec.sends_hessian)


def size_report(scenario, method: str = "gradcov") -> str:
    """The estimate of a run of ``method``, term by term (``fedsigma estimate``)."""
    spec = get_method(method)
    return describe_estimate(scenario, method, probes=spec.probes, sends_hessian=spec.sends_hessian)


@dataclass(frozen=True)
class DeployOptions:
    """The engine flags of ``fedsigma run``: the deployment engine's, and the simulation
    engine's ``ray_address`` (a running Ray cluster, HOST:PORT)."""

    superlink: str | None = None
    no_supernodes: bool = False
    tls: bool = False
    certs: Path | None = None
    ray_address: str | None = None
    verbose: bool = False  # inline engine: Flower's log lines on the terminal too, not only in flower.log

    def share_out_dir(self, out: Path) -> None:
        """On a SuperLink we did not start, its ServerApp writes the results folder
        ``out`` and may run as another user (Flower's images run it as uid 49999, with
        ``out`` mounted): then let every user write in it (mode 0777)."""
        if self.superlink is not None:
            out.chmod(0o777)

    def out_dir(self, out: Path) -> str:
        """The out-dir the ServerApp gets: ``out``, or on a SuperLink we did not start
        (containers, another machine) the same path relative to this folder when it is
        inside it, so that it lands under the ServerApp's working directory."""
        if self.superlink is None or not out.is_relative_to(Path.cwd()):
            return str(out)
        return str(out.relative_to(Path.cwd()))
