"""Memory and time a scenario needs, estimated from its sizes before anything starts.

A run that cannot fit the machine must fail with one line, not hang in round 1
or die with a MemoryError traceback after its results folder exists. The
estimate adds up what the processes of a run hold (bytes of float64 arrays;
``B`` is one Python process with flwr and torch imported):

=====================  ==========================================================  ========================
term                   size                                                        held by
=====================  ==========================================================  ========================
process                ``B`` ≈ 400 MB                                              every process
pooled data            3·N·d·8 (draw X = z·√λ·Uᵀ: z, a temporary and X)            server; every client
                       (CSV: 8·N·(d+1)·8, Python lists while parsing)              process but ``nodes``
oracle                 N·d·8 (lstsq copy, d ≤ 1000) or 3·d²·8 (solve, eigsh)       server
Σ̂ and P (dense)        (levels + 7)·d²·8: pool, P, eigh, metrics, saved files      server
Σ̂ and P (rank r)       (levels·2 + 4)·(2r + 10)·d·8: sketches, factors             server
replies of a round     3·m·(levels·probes + 2)·d·8 (m sampled clients)             server
newton                 m·d²·8 second-moment replies                                server
a client's round       3·levels·probes·n·d·8 probe batches + 2·rows·d·8 (full ∇)   each client
P on a client          d²·8 when local steps use the dense P                       each client's state
=====================  ==========================================================  ========================

Times: one round is m clients × (levels·probes·n·d·2 + (local steps or 1)·(rows·d·2
+ d²·2)) flops at ``FLOPS`` plus ``CALL_SECONDS`` per gradient call; a dense
refresh of P is an eigendecomposition, ``10·d³`` flops. All constants were
measured on a loaded 2-core machine (see :data:`FLOPS`); the estimate is an
upper-side guess, not a promise. :func:`estimate` is the one function to adjust
when an engine changes what it holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from scenarios.loader import ScenarioError
from scenarios.schema import Scenario

BYTES = 8  # float64
PROCESS_BYTES = 400 * 2**20  # python + flwr + torch, measured: quickstart's peak RSS is 393 MB
INLINE_NODE_BYTES = 20_000  # the inline engine's Context, node config and messages per node
RAY_BYTES = 3 * PROCESS_BYTES  # raylet, GCS and dashboard agents of a simulation
FLOPS = 2e9  # float64 flop/s of one core under load (6 GFLOP/s unloaded gemm, 1 thread)
CALL_SECONDS = 2e-3  # one torch gradient call on a client, measured under load (2–3 ms; 0.3 ms idle)
SETUP_SECONDS_MAX = 3600.0  # drawing the data and the oracle's solve, before round 1


class ResourceError(ScenarioError):
    """A scenario too large for this machine; str() names the key, the estimate and the limit."""


@dataclass
class Estimate:
    """Peak bytes and seconds of one run, term by term.

    Attributes
    ----------
    terms : dict of str to (int, str)
        Bytes of each term of the largest process (or of the machine, summed over
        processes), with the scenario keys that set it.
    total_bytes : int
        Peak bytes of every process of the run together.
    round_seconds : float
        One round: the sampled clients' work plus the server's refresh of P.
    setup_seconds : float
        Drawing the data and solving for the oracle, before round 1.
    """

    terms: dict[str, tuple[int, str]] = field(default_factory=dict)
    total_bytes: int = 0
    round_seconds: float = 0.0
    setup_seconds: float = 0.0
    round_keys: str = ""
    setup_keys: str = ""

    def largest(self) -> tuple[str, int, str]:
        """(term, bytes, keys) of the largest memory term."""
        name = max(self.terms, key=lambda k: self.terms[k][0])
        return name, *self.terms[name]


def estimate(scenario: Scenario, *, probes: bool = True, sends_hessian: bool = False) -> Estimate:
    """Estimate the peak memory (all processes of the run) and the time of one round.

    Parameters
    ----------
    scenario : Scenario
        A validated scenario, prepared for its method; its ``engine`` decides how
        many processes hold the data.
    probes : bool
        Whether the method's clients send probe gradients when the scenario's
        preconditioner is on (server.methods.Method.probes).
    sends_hessian : bool
        Whether every client sends a d × d second moment (Method.sends_hessian).

    Returns
    -------
    Estimate
    """
    d = scenario.dim()
    n = scenario.protocol.batch_size
    count = scenario.clients.count
    sampled = max(1, int(count * scenario.clients.fraction))
    pre, train = scenario.preconditioner, scenario.training
    levels = 2 if scenario.protocol.differential else 1
    probes = scenario.protocol.probes if probes and pre.enabled else 0
    kind = scenario.data.kind
    pooled = 0 if kind == "nodes" else scenario.total_rows()
    rows = scenario.data.rows_per_client if kind == "synthetic" else max(1, pooled // count)
    if kind == "nodes":
        rows = max(n, 1)  # each node's own table: unknown here, at least a batch
    dense = pre.rank is None
    steps = max(train.local_steps, 1)
    size_keys = "data.rows_per_client × clients.count × data.dim" if kind == "synthetic" else "data.path"

    data = 0 if kind == "nodes" else (3 if kind == "synthetic" else 8) * pooled * (d + 1) * BYTES
    oracle = 0 if kind == "nodes" else (pooled * d if d <= 1000 else 3 * d * d) * BYTES
    if dense:
        server_state = (levels + 7) * d * d * BYTES
        state_keys = "data.dim (dense P; set preconditioner.rank for large d)"
    else:
        server_state = (levels * 2 + 4) * (2 * pre.rank + 10) * d * BYTES
        state_keys = "data.dim × preconditioner.rank"
    replies = 3 * sampled * (levels * probes + 2) * d * BYTES
    if sends_hessian:
        replies += sampled * d * d * BYTES
    client_round = 3 * levels * probes * n * d * BYTES + 2 * rows * d * BYTES
    client_state = d * d * BYTES if train.local_steps > 0 and dense else 0

    server = {
        "process": (PROCESS_BYTES, "the engine"),
        "pooled data": (data, size_keys),
        "oracle": (oracle, size_keys if d <= 1000 else "data.dim"),
        "Σ̂ and P": (server_state, state_keys),
        "replies of a round": (replies, "protocol.probes × clients.count × data.dim"),
    }
    one_client = client_round + client_state
    client_keys = "protocol.probes × protocol.batch_size × data.dim"
    if scenario.engine == "inline":  # one process: the server and every client's state
        terms = dict(server)
        terms["clients' rounds"] = (client_round, client_keys)
        terms["clients' state"] = (count * (client_state + INLINE_NODE_BYTES), "clients.count × data.dim")
    else:  # simulation: one Ray worker per core; deployment: one SuperNode process per client
        processes = min(count, os.cpu_count() or 1) if scenario.engine == "simulation" else count
        extra = RAY_BYTES if scenario.engine == "simulation" else PROCESS_BYTES  # Ray / the SuperLink
        terms = dict(server)
        terms["client processes"] = (
            processes * (PROCESS_BYTES + data + one_client) + extra,
            f"clients.count on the {scenario.engine} engine × the pooled data",
        )
        if scenario.engine == "simulation":  # Ray keeps every node's state in its worker processes
            terms["clients' state"] = (count * client_state, "clients.count × data.dim")
    total = sum(b for b, _ in terms.values())

    client_seconds = (
        (levels * probes * n * d * 2 + steps * (rows * d * 2 + (d * d * 2 if train.local_steps else 0))) / FLOPS
        + (steps + (1 if probes else 0)) * CALL_SECONDS
    )
    refresh = 10 * d**3 / FLOPS if dense and probes else 0.0
    round_seconds = sampled * client_seconds + refresh
    round_keys = (
        "training.local_steps" if train.local_steps > 1 and steps * CALL_SECONDS * sampled > refresh
        else "data.dim (dense P; set preconditioner.rank)" if refresh > sampled * client_seconds
        else "protocol.probes × protocol.batch_size × data.dim"
    )
    # the oracle: an SVD of X up to d = 1000, else an LU solve of Σ (⅔·d³)
    setup_seconds = (pooled * d * d * 2 if d <= 1000 else 2 * d**3 / 3) / FLOPS if kind != "nodes" else 0.0
    setup_keys = size_keys if d <= 1000 else "data.dim"
    return Estimate(terms, total, round_seconds, setup_seconds, round_keys, setup_keys)


def machine_memory() -> int:
    """Bytes of memory this machine (or its cgroup, if lower) has."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = Path("/sys/fs/cgroup/memory.max")
    try:
        text = limit.read_text().strip()
    except OSError:
        return total
    return min(total, int(text)) if text.isdigit() else total


def check_resources(
    scenario: Scenario, *, probes: bool = True, sends_hessian: bool = False, memory: int | None = None
) -> Estimate:
    """Refuse a scenario whose estimate exceeds the machine: ResourceError naming the key,
    the estimate and the limit. Returns the estimate otherwise.

    Parameters
    ----------
    scenario, probes, sends_hessian : as for :func:`estimate`
    memory : int, optional
        Bytes available; default :func:`machine_memory`.
    """
    est = estimate(scenario, probes=probes, sends_hessian=sends_hessian)
    limit = machine_memory() if memory is None else memory
    if est.total_bytes > limit:
        term, size, keys = est.largest()
        raise ResourceError(
            f"{keys}: this run needs about {_bytes(est.total_bytes)} of memory ({term}: {_bytes(size)}) "
            f"on the {scenario.engine} engine, the machine has {_bytes(limit)}; make it smaller"
        )
    if est.setup_seconds > SETUP_SECONDS_MAX:
        raise ResourceError(
            f"{est.setup_keys}: drawing the data and solving for the optimum would take about "
            f"{_seconds(est.setup_seconds)}, the limit is {_seconds(SETUP_SECONDS_MAX)}; make it smaller"
        )
    if est.round_seconds > scenario.training.round_timeout:
        raise ResourceError(
            f"{est.round_keys}: one round would take about {_seconds(est.round_seconds)}, the server waits "
            f"{_seconds(scenario.training.round_timeout)} for a round's replies (training.round_timeout); "
            "make it smaller"
        )
    return est


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} EiB"


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.3g} s"
    if value < 7200:
        return f"{value / 60:.3g} min"
    return f"{value / 3600:.3g} h"


def describe_estimate(
    scenario: Scenario, method: str, *, probes: bool = True, sends_hessian: bool = False, memory: int | None = None
) -> str:
    """The estimate as text: every memory term, the total against the machine, the times
    (``method`` is only named; ``probes`` and ``sends_hessian`` as for :func:`estimate`)."""
    est = estimate(scenario, probes=probes, sends_hessian=sends_hessian)
    limit = machine_memory() if memory is None else memory
    lines = [f"{scenario.name} with {method} on the {scenario.engine} engine (d = {scenario.dim()}, "
             f"{scenario.clients.count} clients):"]
    for term, (size, keys) in est.terms.items():
        lines.append(f"  {term:<20} {_bytes(size):>10}   {keys}")
    lines.append(f"  {'total':<20} {_bytes(est.total_bytes):>10}   this machine has {_bytes(limit)}")
    lines.append(f"  one round ≈ {_seconds(est.round_seconds)} (training.round_timeout "
                 f"{_seconds(scenario.training.round_timeout)}); "
                 f"set-up ≈ {_seconds(est.setup_seconds)} (limit {_seconds(SETUP_SECONDS_MAX)})")
    return "\n".join(lines)
