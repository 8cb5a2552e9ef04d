"""The inline engine's cohort path gives the per-message path's numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from _support import rows_without_seconds

from fedsigma.engines.dispatch import run_engine
from scenarios.loader import bundled_names, load_scenario

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
