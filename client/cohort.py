"""A GradCov round for many clients at once: draws client by client, arithmetic stacked.

Every client draws from its own stream, keyed by (scenario seed, round) with its
partition id in the counter (:mod:`client.draws`), exactly as a lone ClientApp
draws: one call per client reads its bits, the rest is stacked arithmetic, and
no client's draws depend on which other clients were sampled. The gradients of
all clients' batches then come from a few stacked calls of the model, whose
per-batch arithmetic does not depend on the stack (:func:`client.task.batched_matvec`).
So a cohort's replies are bit-identical to the replies of its clients run one by
one — which is how the ClientApp runs them: :func:`cohort_round` with a cohort of one.

Client data are one (rows, d) array plus each client's first row and row count,
never a Python object per client.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

import numpy as np

from client.draws import RoundDraws, round_draws, round_key
from client.policy import (
    NodePolicy,
    PolicyError,
    check_memory,
    check_round,
    check_run_config_paths,
    round_mu_squared,
    secret_words,
)
from client.task import linear_model, local_step, probe_noise_std, probe_targets
from scenarios.federation import build_federation
from scenarios.run_config import scenario_of
from shared import protocol as p
from shared.cohort import CohortReplies
from shared.threads import single_thread

CHUNK_FLOATS = 1 << 22  # gathered rows × d per stacked call (32 MB): bounds memory at any cohort size
EQUATIONS_ROWS_PER_DIM = 4  # N ≥ 4d: full-data gradients from XᵀX and Xᵀy (solves_from_normal_equations)


@dataclass(frozen=True)
class CohortData:
    """Clients' rows stored as one array: client c holds X[starts[c] : starts[c] + sizes[c]].

    Parameters
    ----------
    X : ndarray of shape (rows, d)
    y : ndarray of shape (rows,)
    starts, sizes : ndarray of int, shape (c,)
    partitions : ndarray of int, shape (c,)
        Each client's partition id (seeds its generator).
    equations : NormalEquations or None
        The clients' XᵀX and Xᵀy, kept across rounds (None: computed when needed).
    ids : ndarray of int, shape (c,), or None
        Each client's position in ``equations``.
    """

    X: np.ndarray
    y: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    partitions: np.ndarray
    equations: NormalEquations | None = None
    ids: np.ndarray | None = None

    def take(self, positions: np.ndarray) -> CohortData:
        """The clients at these positions (no rows are copied)."""
        ids = None if self.ids is None else self.ids[positions]
        return CohortData(self.X, self.y, self.starts[positions], self.sizes[positions], self.partitions[positions],
                          self.equations, ids)

    def normal_equations(self, model, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """XᵀX and Xᵀy of the clients at these positions, who all hold N rows: from
        ``equations`` when it holds them, else computed now."""
        if self.equations is not None:
            return self.equations.get(self.ids[group])
        return model.normal_equations(*_full_rows(self, group))


def solves_from_normal_equations(model, sizes: np.ndarray, dim: int, cfg) -> np.ndarray:
    """Which clients take their full-data gradients from XᵀX and Xᵀy (bool, per client).

    The linear model's full-data gradient is (XᵀX·w − Xᵀy)/N: O(d²) a round instead of
    O(N·d) once the rows never change, i.e. clean targets. Only where N ≥ 4d: the d × d
    matrices then take at most a quarter of the memory of the rows they replace, and
    below that they save no time (a batched product of d × d costs about what one of
    N × d does; measured with benchmarks/cohort_clients.py at N = 2d). A client's
    answer depends on its own N alone, so a cohort and a lone client agree.
    """
    usable = hasattr(model, "normal_equations") and cfg.train_gradient == "full" and not cfg.noisy_targets
    return np.asarray(sizes) >= EQUATIONS_ROWS_PER_DIM * dim if usable else np.zeros(len(sizes), dtype=bool)


class NormalEquations:
    """Every eligible client's XᵀX and Xᵀy (:func:`solves_from_normal_equations`), each
    computed the first time the client trains and kept: the rows never change.

    Parameters
    ----------
    model : client.task.LinearModel
    data : CohortData
        The whole federation; ``get`` takes positions in it.
    """

    def __init__(self, model, data: CohortData) -> None:
        self._model, self._data = model, data
        dim = data.X.shape[1]
        eligible = np.flatnonzero(data.sizes >= EQUATIONS_ROWS_PER_DIM * dim)
        self._slot = np.full(len(data.sizes), -1, dtype=np.int64)
        self._slot[eligible] = np.arange(len(eligible))
        # untouched pages cost no memory: only clients that trained take any
        self._gram, self._xty = np.empty((len(eligible), dim, dim)), np.empty((len(eligible), dim))
        self._known = np.zeros(len(eligible), dtype=bool)

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(XᵀX, Xᵀy) of the clients at these federation positions: (g, d, d), (g, d)."""
        slots = self._slot[ids]
        if (slots < 0).any():
            raise ValueError(f"normal equations of a client that holds fewer than {EQUATIONS_ROWS_PER_DIM}d rows")
        new = ids[~self._known[slots]]
        for size in np.unique(self._data.sizes[new]):
            same = new[self._data.sizes[new] == size]
            step = max(1, CHUNK_FLOATS // (int(size) * (self._data.X.shape[1] + 8)))
            for lo in range(0, len(same), step):
                part = same[lo : lo + step]
                gram, xty = self._model.normal_equations(*_full_rows(self._data, part))
                self._gram[self._slot[part]], self._xty[self._slot[part]] = gram, xty
                self._known[self._slot[part]] = True
        return self._gram[slots], self._xty[slots]


def round_settings(config) -> SimpleNamespace:
    """The round's :class:`shared.protocol.RoundConfig`, typed and checked (a ValueError
    names a missing or mistyped key), as a namespace the cohort code can annotate."""
    return SimpleNamespace(**asdict(p.RoundConfig.from_config(config)))


def local_round_config(config) -> p.RoundConfig:
    """What a local-training message (``mode = local``: Flower's FedAvg, FedAdam, …) asks,
    as the GradCov round that computes it: ``local-steps`` (at least one) steps with
    P = I on clean targets, no probes.

    Parameters
    ----------
    config : mapping
        The message's config record (server.baselines.local_training_config plus the round).
    """
    return p.RoundConfig(
        server_round=int(config[p.ROUND]), batch_size=int(config[p.BATCH_SIZE]),
        train_gradient=str(config[p.TRAIN_GRADIENT]), local_steps=max(int(config[p.LOCAL_STEPS]), 1),
        local_learning_rate=float(config[p.LOCAL_LR]),
    )


def cohort_round(
    model, data: CohortData, w: np.ndarray, config, *, seed: int, precond: np.ndarray | None = None,
    send_hessian: np.ndarray | None = None, probe_levels: list[float] | None = None,
    noise_words: list[int] | None = None,
) -> CohortReplies:
    """Probe gradients at w and the training gradient (or local-step update) of every client.

    Parameters
    ----------
    model : client.task.LinearModel or ModuleModel
    data : CohortData
        The clients, in the order of the replies.
    w : ndarray of shape (d,)
    config : mapping
        The round's protocol config (what a ClientApp receives as ``config``).
    seed : int
        The scenario seed.
    precond : ndarray (d, d) or None
        The P local steps use (None = I).
    send_hessian : ndarray of bool, shape (c,), or None
        Clients that also return XᵀX/N.
    probe_levels : list of float or None
        Noise multipliers the probes use instead of the config's (a faulty client's).
    noise_words : list of int or None
        Extra seed words from a lone node's ``noise-secret`` (client.policy.noise_seed_words).

    Returns
    -------
    CohortReplies in the clients' order.
    """
    cfg = round_settings(config)
    probe_levels = cfg.noise_levels if probe_levels is None else list(probe_levels)
    count, dim = len(data.partitions), len(w)
    levels = len(cfg.noise_levels)
    k = cfg.probes if cfg.probes > 0 else 0
    # computed in float64, rounded once to the wire dtype when stored: both paths send these bits
    probes = np.zeros((count, levels if k else 0, k, dim), dtype=cfg.probe_dtype)
    updates = np.empty((count, dim))
    used = np.where(cfg.train_gradient == "full", data.sizes, cfg.batch_size)
    key = round_key(seed, cfg.server_round, noise_words or [])
    probe_std = np.zeros((count, 0))
    if k:
        probe_std = np.repeat(probe_noise_std(probe_levels, cfg.batch_size, data.sizes, cfg.natural_var), k, axis=1)
    train_std = np.zeros(count)
    if cfg.noisy_targets:
        train_std = probe_noise_std(cfg.noise_levels[-1:], cfg.batch_size, data.sizes, cfg.natural_var)[:, 0]
    solves = solves_from_normal_equations(model, data.sizes, dim, cfg)
    # rows gathered, and rows of the draws' table, per client: bounds a chunk's memory at any cohort size
    per_client = (max(1, levels * k) * cfg.batch_size + int(data.sizes.max(initial=1))) * (dim + levels * k + 1)
    chunk = max(1, CHUNK_FLOATS // per_client)
    for lo in range(0, count, chunk):
        part = np.arange(lo, min(lo + chunk, count))
        draws = round_draws(key, data.partitions[part], data.sizes[part], probe_batches=levels * k,
                            batch_size=cfg.batch_size, train_steps=max(cfg.local_steps, 1),
                            minibatch=cfg.train_gradient != "full", noisy_targets=cfg.noisy_targets)
        if k:
            probes[part] = _probe_chunk(model, data, part, draws, probe_std[part], w, cfg).reshape(
                len(part), levels, k, dim)
        for group in _size_groups(data, part, cfg):
            if solves[group[0]]:
                updates[group] = _training_from_equations(model, data, group, w, cfg, precond)
            else:
                updates[group] = _training_group(model, data, group, group - lo, draws, train_std[group], w, cfg,
                                                 precond)
    hessians = {}
    if send_hessian is not None:
        for c in np.flatnonzero(send_hessian):
            Xc = data.X[data.starts[c] : data.starts[c] + data.sizes[c]]
            hessians[int(c)] = Xc.T @ Xc / len(Xc)
    return CohortReplies(data.partitions.copy(), probes, updates, used.astype(np.int64), data.sizes.copy(), hessians)


def _probe_chunk(model, data: CohortData, part: np.ndarray, draws: RoundDraws, std: np.ndarray, w: np.ndarray,
                 cfg) -> np.ndarray:
    """Probe gradients of a chunk's clients, (clients · levels · k, d); std: (clients, levels · k)."""
    rows = (draws.probe_rows + data.starts[part][:, None, None]).reshape(-1, cfg.batch_size)
    noise = (draws.probe_normals * std[:, :, None]).reshape(-1, cfg.batch_size)
    return model.gradients(w, _rows_of(data.X, rows), probe_targets(data.y, rows, noise, cfg.label_clip))


def _size_groups(data: CohortData, part: np.ndarray, cfg) -> list[np.ndarray]:
    """Clients whose training batches have one shape: all of them for mini-batches,
    clients with equal N for full-data gradients."""
    if cfg.train_gradient != "full":
        return [part]
    sizes = data.sizes[part]
    return [part[sizes == s] for s in np.unique(sizes)]


def _training_group(model, data: CohortData, group: np.ndarray, at: np.ndarray, draws: RoundDraws,
                    noise_std: np.ndarray, w: np.ndarray, cfg, precond) -> np.ndarray:
    """Training gradients (local_steps = 0) or updates of clients with equal batch shapes, (g, d).
    ``at``: the group's positions in ``draws``; ``noise_std``: each one's target noise."""
    local = np.tile(w, (len(group), 1))
    for step, idx in enumerate(draws.train_rows):
        if idx is None:
            Xb, yb = _full_rows(data, group)
        else:
            rows = idx[at] + data.starts[group][:, None]
            Xb, yb = _rows_of(data.X, rows), data.y[rows]
        noise = draws.train_noise(step, at, yb.shape[1])
        if noise is not None:
            yb = yb + noise_std[:, None] * noise
        if cfg.local_steps == 0:
            return model.gradients(w, Xb, yb)
        local = local_step(local, model.gradients(local, Xb, yb), cfg.local_learning_rate, precond)
    return local - w


def _training_from_equations(model, data: CohortData, group: np.ndarray, w: np.ndarray, cfg, precond) -> np.ndarray:
    """As :func:`_training_group` for full-data gradients of clean targets, from the
    clients' XᵀX and Xᵀy."""
    gram, xty = data.normal_equations(model, group)
    rows = int(data.sizes[group[0]])
    if cfg.local_steps == 0:
        return model.full_gradients(w, gram, xty, rows)
    local = np.tile(w, (len(group), 1))
    for _ in range(cfg.local_steps):
        local = local_step(local, model.full_gradients(local, gram, xty, rows), cfg.local_learning_rate, precond)
    return local - w


def _full_rows(data: CohortData, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of clients with equal N as (g, N, d), (g, N): a view when they are stored
    back to back, else a gathered copy."""
    size = int(data.sizes[group[0]])
    starts = data.starts[group]
    if np.all(np.diff(starts) == size):
        lo, hi = int(starts[0]), int(starts[0]) + size * len(group)
        return data.X[lo:hi].reshape(len(group), size, -1), data.y[lo:hi].reshape(len(group), size)
    rows = starts[:, None] + np.arange(size)
    return _rows_of(data.X, rows), data.y[rows]


def _rows_of(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """X[rows] for an index array of any shape: ``np.take`` copies whole rows, about 3×
    faster than fancy indexing here."""
    return np.take(X, rows, axis=0)


class FederationCohort:
    """Every client of a scenario whose shards derive from its seed, ready to run as a cohort.

    Holds the federation's pooled rows once (one array and offsets: scenarios/federation.py
    stores each shard contiguously) — the inline engine's cohort path. Every node runs
    under one node policy (client/policy.py), applied as its mod would apply it: the
    round's checks once, the replay guard and μ budget per node, and each reply's
    ``mu-probe`` / ``mu-spent``.

    Parameters
    ----------
    run_config : dict
        The run config every ClientApp sees (the scenario travels in it).
    settings : dict
        The node settings all nodes share (:func:`client.policy.node_settings`).

    Raises
    ------
    PolicyError
        When the settings or the run config are refused (the ClientApp would refuse
        every message, the handshake included).
    """

    def __init__(self, run_config: dict, settings: dict) -> None:
        self.policy = NodePolicy.from_settings(settings)
        check_run_config_paths(run_config, self.policy.allowed_files(settings))
        scenario = scenario_of(run_config)
        if scenario.data.kind == "nodes":
            raise ValueError("data.kind = 'nodes': each node reads its own table; run clients one by one")
        fed = build_federation(scenario)
        self.seed = scenario.seed
        self.noise_words = secret_words(settings)  # every node's, as its ClientApp would seed its draws
        self.model = linear_model(scenario.dim())
        starts = np.array([s.start for s in fed.shards], dtype=np.int64)
        sizes = np.array([s.stop - s.start for s in fed.shards], dtype=np.int64)
        everyone = CohortData(fed.X, fed.y, starts, sizes, np.arange(len(starts)))
        # each node's XᵀX and Xᵀy, kept across rounds as each node could keep its own
        self.data = replace(everyone, equations=NormalEquations(self.model, everyone), ids=np.arange(len(starts)))
        self._mu_squared = np.zeros(len(starts))  # each node's accountant (client/policy.Ledger)
        self._last_round = np.zeros(len(starts), dtype=np.int64)

    def local_rows(self, partitions: np.ndarray) -> np.ndarray:
        """N of each listed partition."""
        return self.data.sizes[partitions]

    def train(self, partitions: np.ndarray, w: np.ndarray, config, precond: np.ndarray | None,
              send_hessian: np.ndarray) -> CohortReplies:
        """The replies of these partitions to one round (see :func:`cohort_round`); nodes
        their policy refuses send none."""
        cfg = dict(config)
        rnd = int(cfg.get(p.ROUND, 0))
        refusal = None
        try:
            mu_probe = check_round(self.policy, cfg)  # also tightens label-clip to the node's bound
            check_memory(self.policy, cfg, len(w))
        except PolicyError as exc:
            mu_probe, refusal = 0.0, str(exc)
        after = self._mu_squared[partitions] + round_mu_squared(mu_probe, cfg)
        checks = {  # the mod's per-node refusals, in its order
            "replay: rounds must increase": rnd > self._last_round[partitions],
            "mu-budget: the round would take μ past it": np.sqrt(after) <= self.policy.mu_budget,
            "allow-hessian: this node does not send XᵀX/N": self.policy.allow_hessian | ~send_hessian,
        }
        ok = np.full(len(partitions), refusal is None)
        for reason, passed in checks.items():
            if refusal is None and not passed.all():
                refusal = f"node policy {reason}"
            ok &= passed
        if refusal is not None:
            first = int(partitions[np.flatnonzero(~ok)[0]]) if (~ok).any() else None
            refusal = refusal if first is None else f"partition {first}: {refusal}"
        partitions = partitions[ok]
        with single_thread():
            replies = cohort_round(self.model, self.data.take(partitions), w, cfg, seed=self.seed,
                                   precond=precond, send_hessian=send_hessian[ok], noise_words=self.noise_words)
        self._mu_squared[partitions] = after[ok]
        self._last_round[partitions] = rnd
        replies.metrics[p.MU_PROBE] = np.full(len(partitions), float(mu_probe))
        replies.metrics[p.MU_SPENT] = np.sqrt(self._mu_squared[partitions])
        return replace(replies, refusal=refusal)
