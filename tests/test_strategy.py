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
