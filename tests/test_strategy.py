"""GradCovStrategy as a plain Flower strategy, and the typed round config it sends."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from flwr.app import ConfigRecord

from client.client_app import app as client_app
from fedsigma.engines.inline import run_inline
from scenarios.loader import load_scenario
from server.build import oracle_for
from server.strategy import GradCovStrategy
from shared import protocol as p
from shared.cohort import CohortReplies
from shared.curvature import HessianCurvature, OracleCurvature


def test_docstring_example_runs_in_a_plain_flower_serverapp(monkeypatch):
    """The Examples section of GradCovStrategy, run as written: a plain ServerApp calling
    ``strategy.start(...)`` against this project's ClientApp (quickstart, 10 nodes)."""
    examples = doctest.DocTestParser().get_examples(GradCovStrategy.__doc__)
    assert examples, "GradCovStrategy's docstring lost its Examples section"
    namespace: dict = {}
    for example in examples:
        exec(compile(example.source, "GradCovStrategy example", "exec"), namespace)  # noqa: S102
    results = []
    original = GradCovStrategy.start

    def recording_start(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(GradCovStrategy, "start", recording_start)
    run_inline(namespace["app"], client_app, 10, {"scenario": "quickstart"})

    assert len(results) == 1
    result = results[0]
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3, 4, 5]
    assert all(m["clients-replied"] == 10 for m in result.train_metrics_clientapp.values())
    # 8 probes from each of 10 clients a round: the 160-probe warm-up ends in round 2
    assert result.train_metrics_clientapp[5]["gradients-pooled"] == 5 * 10 * 8
    _, oracle = oracle_for(load_scenario("quickstart"))
    w = result.arrays["w"].numpy()
    assert oracle.excess_risk(w) < 1e-3 * oracle.excess_risk(np.zeros(20))


def test_round_config_survives_the_config_record():
    """Every field crosses a ConfigRecord unchanged; send-hessian is written only when True."""
    cfg = p.RoundConfig(
        server_round=3, batch_size=64, probes=4, noise_levels=(0.5, 1.0), natural_var=0.25,
        label_clip=2.0, train_gradient="minibatch", noisy_targets=True, local_steps=2,
        local_learning_rate=0.1, send_hessian=True,
    )
    record = ConfigRecord(cfg.to_config())
    assert p.RoundConfig.from_config(record) == cfg
    plain = p.RoundConfig(server_round=1, batch_size=8)
    assert p.SEND_HESSIAN not in plain.to_config()
    assert p.RoundConfig.from_config(ConfigRecord(plain.to_config())) == plain


def test_the_strategy_sends_its_round_config_on_top_of_the_callers():
    """train_config: the caller's keys survive, the protocol's are the strategy's."""
    strategy = GradCovStrategy(4, batch_size=16, probes=3, calibration=2.0, differential_low=0.5)
    record = strategy.train_config(7, ConfigRecord({"extra": 1, p.PROBES: 99}))
    assert record["extra"] == 1
    cfg = p.RoundConfig.from_config(record)
    assert (cfg.server_round, cfg.batch_size, cfg.probes, cfg.noise_levels) == (7, 16, 3, (1.0, 2.0))


@pytest.mark.parametrize(
    "entries, message",
    [
        ({p.BATCH_SIZE: 8}, "missing server-round"),
        ({p.ROUND: 1, p.BATCH_SIZE: 8.5}, "batch-size = 8.5"),
        ({p.ROUND: 1, p.BATCH_SIZE: 8, p.NOISY_TARGETS: 1}, "noisy-targets = 1"),
        ({p.ROUND: 1, p.BATCH_SIZE: 8, p.PROBES: True}, "probes = True"),
        ({p.ROUND: 1, p.BATCH_SIZE: 8, p.NATURAL_VAR: "x"}, "noise-var = 'x'"),
        ({p.ROUND: 1, p.BATCH_SIZE: 8, p.NOISE_LEVELS: "1"}, "noise-levels = '1'"),
        ({p.ROUND: 1, p.BATCH_SIZE: 8, p.TRAIN_GRADIENT: 3}, "train-gradient = 3"),
    ],
)
def test_round_config_names_the_bad_key(entries, message):
    with pytest.raises(ValueError, match=message):
        p.RoundConfig.from_config(entries)


def _replies(grads: np.ndarray, rows: np.ndarray, probes: np.ndarray | None = None) -> CohortReplies:
    count, d = grads.shape
    return CohortReplies(
        partitions=np.arange(count), probes=np.zeros((count, 0, 0, d)) if probes is None else probes,
        updates=grads, num_examples=rows, local_rows=rows,
    )


def _round(strategy: GradCovStrategy, w: np.ndarray, replies: CohortReplies, server_round: int = 1) -> np.ndarray:
    strategy._weights = w  # what configure_train / plan_cohort record before the replies come back
    arrays, metrics = strategy.aggregate_cohort(server_round, replies)
    assert metrics["clients-replied"] == len(replies)
    return arrays["w"].numpy()


def test_a_plain_step_is_w_minus_eta_p_times_the_row_weighted_mean_gradient():
    rng = np.random.default_rng(0)
    d, count = 4, 5
    sigma = np.cov(rng.standard_normal((40, d)), rowvar=False)
    strategy = GradCovStrategy(d, learning_rate=0.3, line_search_memory=0, curvature=OracleCurvature(sigma))
    grads, rows = rng.standard_normal((count, d)), rng.integers(5, 50, count)
    w = rng.standard_normal(d)
    mean = (rows[:, None] * grads).sum(0) / rows.sum()
    expected = w - 0.3 * strategy.preconditioner @ mean
    np.testing.assert_allclose(_round(strategy, w, _replies(grads, rows)), expected, rtol=1e-12)
    fedsgd = GradCovStrategy(d, learning_rate=0.3, line_search_memory=0, precondition=False, probes=0)
    np.testing.assert_allclose(_round(fedsgd, w, _replies(grads, rows)), w - 0.3 * mean, rtol=1e-12)


def test_the_secant_memory_solves_an_exact_quadratic_in_d_rounds_with_p_the_identity():
    """Exact gradients of one quadratic, P = I: the memory makes conjugate gradients, which
    land on the optimum after d steps (plain steps would not, at this κ)."""
    rng = np.random.default_rng(1)
    d = 4
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    sigma = (basis * np.array([1.0, 3.0, 10.0, 30.0])) @ basis.T
    b = rng.standard_normal(d)
    optimum = np.linalg.solve(sigma, b)
    strategy = GradCovStrategy(d, learning_rate=1 / 30, precondition=False, probes=0, line_search_memory=d)
    w = np.zeros(d)
    for rnd in range(1, d + 2):
        w = _round(strategy, w, _replies((sigma @ w - b)[None], np.array([10])), rnd)
    np.testing.assert_allclose(w, optimum, rtol=1e-8, atol=1e-10)


def test_newton_asks_each_node_for_its_hessian_once():
    strategy = GradCovStrategy(3, curvature=HessianCurvature(3))
    cfg = strategy.train_config(1, ConfigRecord())
    assert strategy.node_config(7, cfg)[p.SEND_HESSIAN] is True
    assert p.SEND_HESSIAN not in strategy.node_config(7, cfg)
    assert strategy.probes == 0 and p.RoundConfig.from_config(cfg).probes == 0


def test_dropouts_raise_the_probes_asked_during_the_warm_up_only():
    """With 3 of 4 sampled clients replying, the next round asks 4/3 as many probes (so
    the warm-up pools as many a round as planned); never past MAX_PROBE_BOOST times; and
    no more once Σ̂ is warmed up."""
    d, rng = 3, np.random.default_rng(5)
    strategy = GradCovStrategy(d, probes=6, batch_size=8, warmup_gradients=40, line_search_memory=0)
    assert strategy.round_config(1).probes == 6
    strategy._weights, strategy._sampled = np.zeros(d), 4
    probes = rng.standard_normal((3, 1, 6, d))
    strategy.aggregate_cohort(1, _replies(rng.standard_normal((3, d)), np.full(3, 100), probes))
    assert strategy.round_config(2).probes == 8  # ⌈6 / (3/4)⌉
    strategy._sampled = 4
    strategy.aggregate_cohort(2, _replies(rng.standard_normal((1, d)), np.full(1, 100), probes[:1]))
    assert strategy.round_config(3).probes == 12  # 4 of 8 replied: capped at 2×
    strategy._sampled = 3
    strategy.aggregate_cohort(3, _replies(rng.standard_normal((3, d)), np.full(3, 100), probes))
    assert strategy.curvature.warmed_up() and strategy.round_config(4).probes == 6


class _WarmOracle(OracleCurvature):
    """The true Σ, counted as past its warm-up (so rounds that miss clients feed the memory)."""

    def warmed_up(self) -> bool:
        return True


def test_rounds_that_miss_clients_feed_the_memory_and_a_screened_out_client_resets_it():
    """Pairs come from the clients heard at both ends when one is absent (their mean Σ_i·s);
    a round with too few of them gives no pair but moves the memory's point, so the next
    round pairs again; a client joining keeps the memory; one leaving the table (screened
    out) starts it afresh."""
    rng = np.random.default_rng(4)
    d, count = 3, 8
    sigmas = np.array([np.cov(rng.standard_normal((30, d)), rowvar=False) for _ in range(count)])
    bs = rng.standard_normal((count, d))
    grads = lambda ids, w: np.einsum("kij,j->ki", sigmas[ids], w) - bs[ids]  # noqa: E731
    strategy = GradCovStrategy(d, learning_rate=1.0, line_search_memory=5, curvature=_WarmOracle(sigmas.mean(0)))

    def round_of(ids: list[int], w: np.ndarray, rnd: int) -> np.ndarray:
        ids = np.array(ids)
        replies = CohortReplies(partitions=ids, probes=np.zeros((len(ids), 0, 0, d)), updates=grads(ids, w),
                                num_examples=np.full(len(ids), 30), local_rows=np.full(len(ids), 30))
        strategy._weights = w
        return strategy.aggregate_cohort(rnd, replies)[0]["w"].numpy()

    w0 = np.zeros(d)
    w1 = round_of([0, 1, 2, 3, 4, 5], w0, 1)
    w2 = round_of([0, 1, 2, 4, 5], w1, 2)  # client 3 absent: the pair from 0, 1, 2, 4 and 5
    assert len(strategy.secant) == 1
    step = w1 - w0
    pair = strategy.secant._changes[-1] * np.linalg.norm(step)
    np.testing.assert_allclose(pair, sigmas[[0, 1, 2, 4, 5]].mean(0) @ step, rtol=1e-10)
    w3 = round_of([3, 4], w2, 3)  # 1 client heard at both ends: no pair, the point moves on
    assert len(strategy.secant) == 1
    w4 = round_of([0, 1, 3, 4, 5], w3, 4)  # only 3 and 4 were heard at both w2 and w3: no pair
    assert len(strategy.secant) == 1
    w5 = round_of([0, 1, 3, 4, 5, 6], w4, 5)  # client 6 joins; 0, 1, 3, 4 and 5 heard at w3 and w4
    assert len(strategy.secant) == 2  # (with the point left at w2, nobody would have been)
    strategy.table.remove(6)  # as the server does with a client whose gradient it screens out
    round_of([0, 1, 2, 3, 4, 5], w5, 6)
    assert len(strategy.secant) == 0


def test_the_cg_rival_uses_its_memory_on_sampled_rounds_too():
    """fedsgd-memory / fedlbfgs (memory_on_inexact) treat every ĝ as exact, as CG and L-BFGS
    assume, even when only some clients replied: the memory takes a pair every round (it
    once stayed empty on sampled federations, silently turning the rival into FedSGD)."""
    rng = np.random.default_rng(6)
    d, count = 3, 6
    sigma = np.cov(rng.standard_normal((40, d)), rowvar=False)
    bs = rng.standard_normal((count, d))
    for rule in ("secant", "lbfgs"):
        strategy = GradCovStrategy(d, learning_rate=0.1, precondition=False, probes=0, line_search_memory=5,
                                   memory_on_inexact=True, step_rule=rule)
        w = np.zeros(d)
        for rnd, ids in enumerate(([0, 1, 2], [3, 4, 5], [1, 3, 5]), start=1):
            ids = np.array(ids)
            replies = CohortReplies(partitions=ids, probes=np.zeros((3, 0, 0, d)), updates=sigma @ w - bs[ids],
                                    num_examples=np.full(3, 10), local_rows=np.full(3, 10))
            strategy._weights = w
            w = strategy.aggregate_cohort(rnd, replies)[0]["w"].numpy()
        memory = strategy.lbfgs if rule == "lbfgs" else strategy.secant
        assert len(memory) == 2, rule
