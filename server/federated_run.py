"""The round loop of a fedsigma run and the results folder it writes."""

from __future__ import annotations

import math
import platform
import random
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from scenarios.schema import Scenario
from server import checkpoint
from server.build import oracle_for
from server.methods import get_method, strategy_for
from server.partition_grid import PartitionGrid, error_line
from server.privacy_ledger import PrivacyLedger
from server.strategy import GradCovStrategy
from shared import protocol as p
from shared.metrics import sigma_relative_error, sigma_whitened_error
from shared.plots import plot_convergence
from shared.results import RoundsWriter, write_json
from shared.threads import single_thread

SIGMA_METRICS_MAX_DIM = 1000
SIGMA_FILES_MAX_DIM = 2000
HANDSHAKE_TIMEOUT = 600.0  # seconds for every node to connect and say which partition it serves
REJOIN_TIMEOUT = 30.0  # seconds for the handshake of a node that (re)joins mid-run
DIVERGED = 1e4  # relative excess risk: 10⁴× worse than the start is not coming back
# Rounds in a row in which no sampled client replied before the run stops with their error
# (one round could be bad luck with faults or sampling; three is a client that cannot work).
ALL_FAILED_ROUNDS = 3


def run_federation(
    grid: Grid, scenario: Scenario, out_dir: Path, engine: str, method: str = "gradcov", resume: bool = False,
) -> dict:
    """Run a scenario with one method (a name in server.methods.METHODS, whose settings
    are applied to the scenario first) until the target or the round budget; write results.

    Writes rounds.csv (row by row) and a checkpoint after every round
    (server.checkpoint), then summary.json, sigma_hat.npy, sigma_true.npy, w.npy
    and convergence.png — also when a round fails, so nothing finished is lost.
    ``resume``: continue from the checkpoint in ``out_dir`` (the same numbers as a
    run that was never interrupted). Each round waits at most
    ``training.round_timeout`` seconds for its replies. Returns the summary.
    """
    scenario = get_method(method).prepare(scenario)  # e.g. fedsgd: preconditioner off, in summary.json too
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # One BLAS thread: the same summation order in every engine's server process.
    with single_thread():
        _, oracle = oracle_for(scenario)
        strategy, train_config, lr, local_lr = strategy_for(scenario, method, oracle)
        random.seed(scenario.seed)  # Flower's strategies sample nodes with `random`
        timeout = scenario.training.round_timeout
        view = PartitionGrid(grid, scenario.clients.count, timeout=HANDSHAKE_TIMEOUT,
                             rejoin_timeout=min(timeout, REJOIN_TIMEOUT))
        w = np.zeros(scenario.dim())
        arrays = ArrayRecord({p.WEIGHTS: Array(w)})
        privacy = PrivacyLedger()
        rows: list[dict] = []
        meta = {"scenario": scenario.model_dump_json(), "method": method, "code": checkpoint.code_fingerprint()}
        if resume:
            _, state = checkpoint.load(out_dir, meta["scenario"], method)
            strategy, privacy, rows = state["strategy"], state["privacy"], state["rows"]
            arrays = ArrayRecord({key: Array(value) for key, value in state["arrays"].items()})
            w = arrays[p.WEIGHTS].numpy()
            random.setstate(state["random"])
            view.restore(state["counters"])
            started -= state["seconds"]
            forget_clients = getattr(strategy, "clients_restarted", None)
            if forget_clients:  # new client processes: what they were sent earlier is gone
                forget_clients()
        writer = RoundsWriter(out_dir / "rounds.csv", rows)
        last: dict = rows[-1] if rows else {}
        status = "max_rounds"
        reached = None
        silent = 0  # consecutive rounds without one good reply
        try:
            for rnd in range(len(rows) + 1, scenario.stop.max_rounds + 1):
                t0 = time.perf_counter()
                failed_before, rejected_before = view.failed, view.rejected
                replied, new, why = _train_round(strategy, view, rnd, arrays, train_config, privacy, timeout)
                if new is not None:
                    arrays = new
                w = arrays[p.WEIGHTS].numpy()
                # Σ̂'s errors need d × d eigendecompositions: skipped (empty) above SIGMA_METRICS_MAX_DIM
                sigma_hat = getattr(strategy, "sigma_hat", None) if scenario.dim() <= SIGMA_METRICS_MAX_DIM else None
                if oracle is None:  # nobody knows the pooled data (data.kind = "nodes"): empty cells
                    sigma_hat = None
                last = {
                    "round": rnd,
                    "excess_risk": None if oracle is None else oracle.excess_risk(w),
                    "loss": None if oracle is None else oracle.loss(w),
                    "sigma_rel_error": None if sigma_hat is None else sigma_relative_error(sigma_hat, oracle.sigma),
                    "sigma_whitened_error": None if sigma_hat is None else sigma_whitened_error(sigma_hat, oracle.sigma),
                    "gradients_pooled": strategy.curvature.gradients if isinstance(strategy, GradCovStrategy) else None,
                    "bytes_up": view.bytes_up,
                    "bytes_down": view.bytes_down,
                    "clients_replied": replied,
                    "clients_failed": view.failed - failed_before,
                    "clients_rejected": view.rejected - rejected_before,
                    "seconds": round(time.perf_counter() - t0, 6),
                }
                writer.write(last)
                rows.append(last)
                state = {
                    "arrays": {key: array.numpy() for key, array in arrays.items()}, "strategy": strategy,
                    "privacy": privacy, "rows": rows, "random": random.getstate(),
                    "counters": view.counters(), "seconds": time.time() - started,
                }
                checkpoint.save(out_dir, {"round": rnd, **meta}, state)
                silent = silent + 1 if last["clients_replied"] == 0 else 0
                if silent >= ALL_FAILED_ROUNDS:
                    status = f"clients failed: no client replied in rounds {rnd - silent + 1}–{rnd}: " + (
                        why or f"no reply within {timeout:g} s")
                    break
                risk = last["excess_risk"]
                if not np.isfinite(w).all() or (risk is not None and (not math.isfinite(risk) or risk > DIVERGED)):
                    status = "diverged"
                    break
                if risk is not None and risk <= scenario.stop.target:
                    status, reached = "target", rnd
                    break
        except BaseException as exc:  # keep what finished, record why it stopped
            status = f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            writer.close()
            rates = {"learning_rate": lr, "local_learning_rate": local_lr}
            summary = _summary(scenario, engine, method, status, reached, last, rates, time.time() - started)
            summary["privacy"] = privacy.summary()
            _save(out_dir, scenario, strategy, oracle, w, summary)
    return summary


def client_error(replies: list, partition_of: dict[int, int]) -> str | None:
    """The first error reply's reason, on one line, naming the partition it came from."""
    return next((error_line(reply, partition_of) for reply in replies if reply.has_error()), None)


def _train_round(strategy, view: PartitionGrid, rnd: int, arrays, train_config, privacy, timeout):
    """One round: (clients that replied, new arrays or None, the first client error or None).

    A GradCov-family strategy on an engine that can run the round's clients together
    takes the cohort path (the same numbers, without a Message per client); every
    other pairing exchanges messages."""
    config = ConfigRecord(dict(train_config))
    if view.cohort and isinstance(strategy, GradCovStrategy):
        replies = view.train_cohort(strategy.plan_cohort(rnd, arrays, config, view))
        privacy.observe_cohort(replies)
        return len(replies), strategy.aggregate_cohort(rnd, replies)[0], replies.refusal
    replies = view.send_and_receive(strategy.configure_train(rnd, arrays, config, view), timeout=timeout)
    privacy.observe(replies)
    replied = len(replies) - sum(r.has_error() for r in replies)
    return replied, strategy.aggregate_train(rnd, replies)[0], client_error(replies, view.partition_of)


def _summary(scenario, engine, method, status, reached, last, rates, seconds) -> dict:
    versions = {
        name: _version(name) for name in ("fedsigma", "flwr", "torch", "numpy", "pydantic")
    }
    versions["python"] = platform.python_version()
    return {
        "scenario": scenario.model_dump(mode="json"),
        "seed": scenario.seed,
        "engine": engine,
        "method": method,
        "versions": versions,
        "status": status,
        "target": scenario.stop.target,
        "rounds_to_target": reached,
        **rates,
        "rounds_run": last.get("round", 0),
        "final": {k: v for k, v in last.items() if k != "round"},
        "wall_seconds": round(seconds, 3),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _save(out_dir: Path, scenario, strategy, oracle, w, summary) -> None:
    write_json(out_dir / "summary.json", summary)
    np.save(out_dir / "w.npy", w)
    if scenario.dim() <= SIGMA_FILES_MAX_DIM:  # d × d files: 200 MB each at d = 5000
        if oracle is not None:  # data.kind = "nodes": nobody knows the true Σ
            np.save(out_dir / "sigma_true.npy", oracle.sigma)
        sigma_hat = getattr(strategy, "sigma_hat", None)
        if sigma_hat is not None:
            np.save(out_dir / "sigma_hat.npy", sigma_hat)
    if (out_dir / "rounds.csv").stat().st_size > 0:
        with warnings.catch_warnings():  # no oracle: the empty risk panel warns about its limits
            warnings.simplefilter("ignore", UserWarning)
            plot_convergence(
                out_dir / "rounds.csv", out_dir / "convergence.png", title=scenario.name,
                target=scenario.stop.target,
                warmup_gradients=(
                    strategy.warmup_gradients
                    if isinstance(strategy, GradCovStrategy) and strategy.probes > 0 and strategy.precondition
                    else None
                ),
                no_sigma=_why_no_sigma(scenario, strategy, oracle, summary.get("method", "")),
            )


def _why_no_sigma(scenario, strategy, oracle, method: str) -> str:
    """The Σ panel's note when no round has a Σ̂ error."""
    if oracle is None:
        return "no Σ̂ error: the true Σ is unknown (nodes hold their own data)"
    if method in ("oracle", "newton"):
        return f"no Σ̂: {method} uses the exact Σ, it estimates none"
    if not isinstance(strategy, GradCovStrategy):
        return f"no Σ̂: {method} sends no probes"
    if not strategy.precondition or strategy.probes == 0:
        return "no Σ̂ (preconditioner off)"
    return f"no Σ̂ error above d = {SIGMA_METRICS_MAX_DIM}"
