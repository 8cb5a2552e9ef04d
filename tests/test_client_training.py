"""What a client trains on, against hand computations in numpy: P-preconditioned local
steps (training.local_steps > 0) and the update the server adds, unbiased mini-batch
gradients (training.gradient = "minibatch") and calibrated noisy targets
(training.noisy_targets). Configs are the ones the strategy sends (configure_train);
replies come from the real ClientApp, or from client.cohort.cohort_round — the function
the ClientApp runs, as a cohort of one — when many independent draws are needed."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as client_app
from client.cohort import CohortData, cohort_round
from client.policy import settings_admitting
from client.task import linear_model
from fedsigma.engines.inline import InlineGrid
from scenarios.federation import build_federation
from scenarios.loader import validate
from scenarios.node_data import node_configs
from scenarios.run_config import encode
from server.methods import strategy_for
from shared import protocol as p

BASE = {"seed": 5, "data": {"dim": 3, "rows_per_client": 30}, "clients": {"count": 3},
        "protocol": {"batch_size": 5, "probes": 2}, "stop": {"max_rounds": 3}}


def _scenario(**sections):
    return validate({**BASE, **{k: {**BASE.get(k, {}), **v} for k, v in sections.items()}})


def _setup(scenario):
    """(strategy, its train config, the inline grid of the real ClientApp)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    strategy, config, _, _ = strategy_for(scenario, "gradcov")
    # the test starts the nodes, so it is their operator: admit the scenario (small batches)
    configs = [{**node, **settings_admitting(scenario)} for node in node_configs(scenario)]
    grid = InlineGrid(client_app, configs, encode(scenario, "", "inline"))
    return strategy, config, grid


def _partition(grid: InlineGrid, reply) -> int:
    return int(grid.contexts[reply.metadata.src_node_id].node_config["partition-id"])


# -- local steps ---------------------------------------------------------------------
def _hand_update(X, y, w, P, lr, steps):
    """steps of v ← v − η·P·Xᵀ(Xv − y)/N from w; returns v − w."""
    v = w.copy()
    for _ in range(steps):
        v = v - lr * P @ (X.T @ (X @ v - y) / len(X))
    return v - w


def test_local_steps_are_preconditioned_and_the_server_adds_the_mean_update():
    steps, lr = 3, 0.2
    sc = _scenario(training={"local_steps": steps, "local_learning_rate": lr}, partition={"kind": "size_skew"})
    fed = build_federation(sc)
    strategy, config, grid = _setup(sc)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 3))
    P = A @ A.T + 0.5 * np.eye(3)  # any SPD matrix: the client must use the P it is sent
    w = rng.standard_normal(3)
    for rnd in (1, 2):
        messages = list(strategy.configure_train(rnd, ArrayRecord({p.WEIGHTS: Array(w)}), config, grid))
        for m in messages:
            assert m.content[p.CONFIG][p.LOCAL_STEPS] == steps and m.content[p.CONFIG][p.LOCAL_LR] == lr
            if rnd == 1:  # local steps need P: the first message carries it
                assert p.PRECONDITIONER in m.content[p.ARRAYS]
                m.content[p.ARRAYS][p.PRECONDITIONER] = Array(P)
            else:  # P is sent only when it changed: the client keeps round 1's
                m.content[p.ARRAYS].pop(p.PRECONDITIONER, None)
        replies = grid.send_and_receive(messages)
        assert len(replies) == 3 and not any(r.has_error() for r in replies)
        updates, counts = [], []
        for reply in replies:
            k = _partition(grid, reply)
            X, y = fed.X[fed.shards[k]], fed.y[fed.shards[k]]
            got = reply.content[p.ARRAYS][p.UPDATE].numpy()
            np.testing.assert_allclose(got, _hand_update(X, y, w, P, lr, steps), rtol=1e-10, atol=1e-13)
            assert np.linalg.norm(got - _hand_update(X, y, w, np.eye(3), lr, steps)) > 1e-3  # P mattered
            assert reply.content[p.METRICS][p.NUM_EXAMPLES] == len(X)
            updates.append(got)
            counts.append(len(X))
        assert len(set(counts)) > 1  # size skew: the weighting below is not a plain mean
        arrays, _ = strategy.aggregate_train(rnd, replies)
        new = arrays[p.WEIGHTS].numpy()
        np.testing.assert_allclose(new, w + np.average(updates, axis=0, weights=counts), rtol=1e-12, atol=1e-14)
        w = new


# -- mini-batch gradients and noisy targets ------------------------------------------
N, N_BATCH, CLONES = 12, 5, 20_000


def _wire_config(scenario) -> dict:
    """The config record the strategy sends a client in round 1."""
    strategy, config, grid = _setup(scenario)
    message = next(iter(strategy.configure_train(1, ArrayRecord({p.WEIGHTS: Array(np.zeros(scenario.dim()))}),
                                                 config, grid)))
    return dict(message.content[p.CONFIG])


def _clones(X, y, count: int) -> CohortData:
    """``count`` clients holding the same rows, each with its own generator (partition id)."""
    return CohortData(X, y, np.zeros(count, dtype=np.int64), np.full(count, len(X), dtype=np.int64),
                      np.arange(count, dtype=np.int64))


def _identity_design(seed: int = 1):
    """X = I (d = N rows): a gradient's coordinate j is row j's residual, so a batch B shows
    as the coordinates that are non-zero, and the targets' noise can be read back."""
    rng = np.random.default_rng(seed)
    return np.eye(N), rng.standard_normal(N), rng.standard_normal(N)


def test_minibatch_gradients_are_unbiased_and_use_the_configured_batch():
    config = _wire_config(_scenario(training={"gradient": "minibatch"}, protocol={"batch_size": N_BATCH}))
    assert config[p.TRAIN_GRADIENT] == "minibatch" and config[p.BATCH_SIZE] == N_BATCH
    X, y, w = _identity_design()
    full = (w - y) / N  # Xᵀ(Xw − y)/N with X = I
    got = cohort_round(linear_model(N), _clones(X, y, CLONES), w, config, seed=5)
    g = got.updates
    assert g.shape == (CLONES, N) and set(got.num_examples.tolist()) == {N_BATCH}
    # each gradient is one batch of exactly n distinct rows, divided by n
    support = g != 0
    assert (support.sum(axis=1) == N_BATCH).all()
    np.testing.assert_allclose(g[support], np.broadcast_to((w - y) / N_BATCH, g.shape)[support], rtol=1e-12)
    assert not np.allclose(g[0], full)  # one draw is not the full gradient
    assert len({tuple(np.flatnonzero(s)) for s in support[:50]}) > 40  # each client draws its own batch
    # the mean over many draws is: each row is in a batch with probability n/N
    q = N_BATCH / N
    se = np.abs(w - y) / N_BATCH * np.sqrt(q * (1 - q) / CLONES)
    z = (g.mean(axis=0) - full) / se
    assert np.abs(z).max() < 5, z
    assert np.abs(g.mean(axis=0) - full).max() < 0.03 * np.abs(full).max()


@pytest.mark.parametrize("gradient", ["full", "minibatch"])
def test_noisy_targets_have_the_calibrated_variance(gradient):
    c, sigma0_sq = 1.5, 4.0
    sc = _scenario(training={"gradient": gradient, "noisy_targets": True},
                   protocol={"batch_size": N_BATCH, "calibration": c, "noise_var": sigma0_sq})
    config = _wire_config(sc)
    assert config[p.NOISY_TARGETS] is True
    X, y, w = _identity_design()
    w = y.copy()  # clean residuals are 0: what the gradient shows is the targets' noise
    got = cohort_round(linear_model(N), _clones(X, y, CLONES // 4), w, config, seed=5)
    g = got.updates
    rows = N if gradient == "full" else N_BATCH
    support = g != 0
    assert (support.sum(axis=1) == rows).all()
    noise = -rows * g[support]  # g = Xᵀ(Xw − y − e)/rows = −e/rows on the batch's rows
    # total variance c·n: the natural noise's share, f·σ₀² with f = (N − n)/(N − 1), is not injected again
    expected = c * N_BATCH - (N - N_BATCH) / (N - 1) * sigma0_sq
    # within 5 standard errors of a Gaussian sample variance (√(2/m) relative): 3–5 %, far from the
    # 30 % of forgetting the finite-population factor f or the 50 % of not subtracting σ₀² at all
    assert noise.var() == pytest.approx(expected, rel=5 * np.sqrt(2 / noise.size))
    assert abs(noise.mean()) < 4 * np.sqrt(expected / noise.size)
    quiet = dict(config, **{p.NOISY_TARGETS: False})
    assert not cohort_round(linear_model(N), _clones(X, y, 10), w, quiet, seed=5).updates.any()
