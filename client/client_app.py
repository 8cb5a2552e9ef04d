"""fedsigma ClientApp: answers each round with calibrated probes and a training update."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.cohort import CohortData, cohort_round, local_round_config
from client.faults import FaultPlan, dropped, plan_for
from client.fednl import fednl_reply
from client.policy import enforce, noise_seed_words
from client.task import LinearModel, linear_model
from scenarios.node_data import client_rows
from scenarios.run_config import scenario_of
from shared import protocol as p
from shared.threads import single_thread

# The node's own policy (client/policy.py) checks every message before a handler runs.
app = ClientApp(mods=[enforce])


def local_data(context: Context) -> tuple[np.ndarray, np.ndarray, int, int]:
    """This node's rows (X, y), its partition id and the scenario seed (the rows are its
    shard of the scenario's data, or with data.kind = "nodes" its own CSV: node config
    ``data-path``, ``target``)."""
    scenario = scenario_of(context.run_config)  # parsed once per process and scenario
    pid = int(context.node_config["partition-id"])
    X, y = client_rows(scenario, context.node_config)
    return X, y, pid, scenario.seed


@lru_cache(maxsize=4)
def model_for(dim: int) -> LinearModel:
    """The linear model (closed-form batched gradients), built once per process."""
    return linear_model(dim)


@app.query(p.HELLO)
def hello(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node serves and how many rows it holds."""
    X, _, pid, _ = local_data(context)
    counts = MetricRecord({p.PARTITION_ID: pid, p.NUM_EXAMPLES: len(X)})
    return Message(RecordDict({p.METRICS: counts}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """GradCov round (default), FedAvg-style local training for Flower's strategies, or a
    FedNL round, with the scenario's injected faults (client.faults) around it."""
    faults = plan_for(scenario_of(context.run_config))
    pid, rnd = int(context.node_config["partition-id"]), int(msg.content[p.CONFIG][p.ROUND])
    if faults.drops(pid, rnd):
        return dropped(msg)
    faults.straggle(pid)
    mode = str(msg.content[p.CONFIG].get(p.MODE, p.MODE_GRADCOV))
    if mode == p.MODE_LOCAL:
        reply = local_training(msg, context)
    elif mode == p.MODE_FEDNL:
        reply = fednl_round(msg, context)
    else:
        reply = gradcov_round(msg, context, faults)
    return faults.corrupt(reply, pid, rnd)


def local_training(msg: Message, context: Context) -> Message:
    """``local-steps`` (at least one) gradient steps from w; reply the new weights.

    This is what Flower's FedAvg/FedAdam/FedYogi/FedAdagrad expect: they
    average the returned arrays weighted by ``num-examples``. The steps are
    :func:`client.cohort.cohort_round`'s local steps with P = I and no probes
    (:func:`client.cohort.local_round_config`), so the inline engine's cohort gives
    the same bits.
    """
    X, y, pid, seed = local_data(context)
    cfg = local_round_config(msg.content[p.CONFIG])
    w = msg.content[p.ARRAYS][p.WEIGHTS].numpy()
    one = CohortData(X, y, np.array([0]), np.array([len(X)]), np.array([pid]))
    with single_thread():
        got = cohort_round(model_for(X.shape[1]), one, w, cfg.to_config(), seed=seed, precond=None,
                           send_hessian=np.array([False]), noise_words=noise_seed_words(context))
    reply = RecordDict(
        {
            p.ARRAYS: ArrayRecord({p.WEIGHTS: Array(w + got.updates[0])}),
            p.METRICS: MetricRecord({p.PARTITION_ID: pid, p.NUM_EXAMPLES: int(got.num_examples[0])}),
        }
    )
    return Message(reply, reply_to=msg)


def fednl_round(msg: Message, context: Context) -> Message:
    """FedNL: a compressed step of Hessian learning and the shifted point (client.fednl);
    the Hessian estimate H_i stays in this node's state between rounds."""
    X, y, pid, _ = local_data(context)
    cfg = msg.content[p.CONFIG]
    w = msg.content[p.ARRAYS][p.WEIGHTS].numpy()
    estimate = context.state[p.MODE_FEDNL]["H"].numpy() if p.MODE_FEDNL in context.state else None
    with single_thread():
        arrays, new = fednl_reply(X, y, w, estimate, str(cfg[p.FEDNL_COMPRESSOR]), int(cfg[p.FEDNL_LEVEL]),
                                  float(cfg[p.FEDNL_ALPHA]))
    context.state[p.MODE_FEDNL] = ArrayRecord({"H": Array(new)})
    reply = RecordDict({
        p.ARRAYS: ArrayRecord({key: Array(value) for key, value in arrays.items()}),
        p.METRICS: MetricRecord({p.PARTITION_ID: pid, p.NUM_EXAMPLES: len(X), p.LOCAL_ROWS: len(X)}),
    })
    return Message(reply, reply_to=msg)


def gradcov_round(msg: Message, context: Context, faults: FaultPlan | None = None) -> Message:
    """Probe gradients at w (calibrated noise), then the training gradient or update:
    :func:`client.cohort.cohort_round` for a cohort of this one client (``faults``: an
    uncalibrated Byzantine client probes with c = 0)."""
    X, y, pid, seed = local_data(context)
    cfg = msg.content[p.CONFIG]
    arrays = msg.content[p.ARRAYS]
    w = arrays[p.WEIGHTS].numpy()
    if p.PRECONDITIONER in arrays:  # sent only when it changed: keep it for later rounds
        context.state[p.PRECONDITIONER] = ArrayRecord({p.PRECONDITIONER: arrays[p.PRECONDITIONER]})
    precond = (
        context.state[p.PRECONDITIONER][p.PRECONDITIONER].numpy()
        if p.PRECONDITIONER in context.state
        else None
    )
    levels = [float(c) for c in cfg[p.NOISE_LEVELS]]
    one = CohortData(X, y, np.array([0]), np.array([len(X)]), np.array([pid]))
    with single_thread():
        got = cohort_round(
            model_for(X.shape[1]), one, w, cfg, seed=seed, precond=precond,
            send_hessian=np.array([bool(cfg.get(p.SEND_HESSIAN, False))]),  # the Newton baseline only
            probe_levels=None if faults is None else faults.noise_levels(pid, levels),
            noise_words=noise_seed_words(context),
        )
    out = ArrayRecord({p.PROBE_GRADS: Array(got.probes[0]), p.UPDATE: Array(got.updates[0])})
    if 0 in got.hessians:
        out[p.HESSIAN] = Array(got.hessians[0])
    reply = RecordDict(
        {
            p.ARRAYS: out,
            p.METRICS: MetricRecord(
                {p.PARTITION_ID: pid, p.NUM_EXAMPLES: int(got.num_examples[0]), p.LOCAL_ROWS: len(X)}
            ),
        }
    )
    return Message(reply, reply_to=msg)
