"""The inline engine's cohort path gives the per-message path's numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from _support import rows_without_seconds

from client.client_app import app as client_app
from client.cohort import CohortData, NormalEquations
from client.policy import ENV_NODE_CONFIG
from client.task import LinearModel
from fedsigma.engines.dispatch import run_engine
from fedsigma.engines.inline import InlineGrid
from scenarios.loader import bundled_names, load_scenario
from scenarios.node_data import node_configs_for
from scenarios.run_config import encode

# a few rounds each: cross_device alone would take minutes on the per-message path
CASES = [(name, "gradcov", ["stop.max_rounds=6"]) for name in bundled_names()] + [
    # the protocol's other branches: local steps with P, mini-batches with noisy targets,
    # client sampling, differential injection, and the baselines that share the round
    ("quickstart", "gradcov", ["training.local_steps=3", "stop.max_rounds=6"]),
    ("quickstart", "gradcov", ["training.gradient='minibatch'", "training.noisy_targets=true",
                               "clients.fraction=0.5", "stop.max_rounds=8"]),
    ("quickstart", "gradcov-differential", ["stop.max_rounds=8"]),
    ("quickstart", "newton", ["stop.max_rounds=3", "stop.target=1e-30"]),
    ("quickstart", "oracle", ["stop.max_rounds=3", "stop.target=1e-30"]),
    ("non_iid", "gradcov", ["partition.kind='size_skew'", "stop.max_rounds=6"]),
    # probes on the wire in each dtype: the same rounding, bytes and widening on both paths
    ("quickstart", "gradcov", ["protocol.probe_dtype='float16'", "stop.max_rounds=6"]),
    ("quickstart", "gradcov", ["protocol.probe_dtype='float64'", "stop.max_rounds=6"]),
    # dropouts: the cohort leaves out the clients the ClientApp would drop
    ("quickstart", "gradcov", ["faults.dropout=0.3", "stop.max_rounds=8"]),
    ("quickstart", "fedsgd-memory", ["faults.dropout=0.2", "clients.fraction=0.5", "stop.max_rounds=6"]),
    # Flower's own strategies: a round of local training runs as one cohort
    ("quickstart", "fedavg", ["stop.max_rounds=4"]),
    ("quickstart", "fedadam", ["training.gradient='minibatch'", "faults.dropout=0.2", "stop.max_rounds=4"]),
    ("non_iid", "fedyogi", ["clients.fraction=0.5", "stop.max_rounds=4"]),
]


@pytest.mark.parametrize("name, method, overrides", CASES, ids=lambda v: str(v))
def test_cohort_path_matches_per_message_path(tmp_path, name, method, overrides):
    scenario = load_scenario(name, overrides)
    run_engine(scenario, tmp_path / "cohort", method, cohort=True)
    run_engine(scenario, tmp_path / "messages", method, cohort=False)
    cohort = rows_without_seconds(tmp_path / "cohort" / "rounds.csv")
    messages = rows_without_seconds(tmp_path / "messages" / "rounds.csv")
    assert len(cohort) >= 2
    assert cohort == messages  # every cell's text: bit-identical floats
    assert np.array_equal(np.load(tmp_path / "cohort" / "w.npy"), np.load(tmp_path / "messages" / "w.npy"))


def test_kept_normal_equations_are_a_lone_clients_bits_whichever_clients_asked_first():
    rng = np.random.default_rng(3)
    sizes = np.array([40, 13, 40, 57, 40, 9])  # d = 6: the clients of 13 and 9 rows hold fewer than 4d
    X, y = rng.standard_normal((sizes.sum(), 6)), rng.standard_normal(sizes.sum())
    starts = np.cumsum(sizes) - sizes
    data = CohortData(X, y, starts, sizes, np.arange(6))
    model = LinearModel(6)
    kept = NormalEquations(model, data)
    first = kept.get(np.array([2, 0]))  # computed now
    again = kept.get(np.array([0, 2, 4, 3]))  # 0 and 2 kept, the rest computed now
    for position, client in enumerate([0, 2, 4, 3]):
        lo, hi = starts[client], starts[client] + sizes[client]
        gram, xty = model.normal_equations(X[None, lo:hi].copy(), y[None, lo:hi].copy())
        assert np.array_equal(again[0][position], gram[0]) and np.array_equal(again[1][position], xty[0])
    assert np.array_equal(first[0], again[0][[1, 0]])
    for small in (1, 5):
        with pytest.raises(ValueError, match="fewer than 4d"):
            kept.get(np.array([small]))


@pytest.mark.parametrize("faults, cohort", [
    (["faults.dropout=0.3"], True),  # dropouts: the cohort leaves the dropped clients out itself
    (["faults.byzantine=1", "faults.byzantine_kind='sign_flip'"], False),  # edits single messages
    (["faults.stragglers=0.2", "faults.straggler_delay=0.5"], False),
])
def test_which_faults_the_cohort_path_runs(tmp_path, faults, cohort):
    scenario = load_scenario("quickstart", faults)
    grid = InlineGrid(client_app, node_configs_for(scenario.clients.count),
                      encode(scenario, str(tmp_path), "inline"), cohort=True)
    assert (grid.cohort is not None) == cohort


def test_a_noise_secret_reaches_the_cohort_path_too(tmp_path, monkeypatch):
    """Every node's noise-secret (here from FEDSIGMA_NODE_CONFIG) seeds the cohort's draws as it
    seeds a lone ClientApp's: the same numbers both ways, and not those of a run without it."""
    scenario = load_scenario("quickstart", ["stop.max_rounds=3"])
    run_engine(scenario, tmp_path / "open", "gradcov", cohort=True)
    monkeypatch.setenv(ENV_NODE_CONFIG, '{"noise-secret": "only the nodes know"}')
    run_engine(scenario, tmp_path / "cohort", "gradcov", cohort=True)
    run_engine(scenario, tmp_path / "messages", "gradcov", cohort=False)
    secret = rows_without_seconds(tmp_path / "cohort" / "rounds.csv")
    assert secret == rows_without_seconds(tmp_path / "messages" / "rounds.csv")
    assert secret != rows_without_seconds(tmp_path / "open" / "rounds.csv")
