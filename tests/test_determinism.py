"""Same scenario + seed → the same run, bit for bit (apart from wall time)."""

from __future__ import annotations

from _support import read_rounds_raw, run_inline_scenario, write_scenario

from client.client_app import app as real_client_app
from scenarios import federation
from shared.results import COLUMNS

SCENARIO = """
name = "determinism"
seed = 21

[data]
dim = 5
rows_per_client = 80
noise_std = 0.5

[clients]
count = 10
fraction = 0.5

[protocol]
batch_size = 8
probes = 3

[preconditioner]
warmup_gradients = 30

[stop]
max_rounds = 6
target = 1e-300
"""


class SampledPartitions:
    """Wraps the real ClientApp; records which partitions train in which round."""

    def __init__(self) -> None:
        self.by_round: dict[int, list[int]] = {}

    def __call__(self, msg, context):
        if msg.metadata.message_type == "train":
            rnd = int(msg.content["config"]["server-round"])
            self.by_round.setdefault(rnd, []).append(int(context.node_config["partition-id"]))
        return real_client_app(msg, context)


def _run(tmp_path, name, overrides=()):
    cached = getattr(federation, "_build", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()  # rebuild the data too, not just reuse it
    recorder = SampledPartitions()
    out = tmp_path / name
    path = write_scenario(tmp_path / "determinism.toml", SCENARIO)
    run_inline_scenario(path, out, list(overrides), client_app=recorder)
    rows = read_rounds_raw(out / "rounds.csv")
    return rows, {k: sorted(v) for k, v in recorder.by_round.items()}


def _without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_same_seed_same_rounds_and_same_sampling(tmp_path):
    rows_a, sampled_a = _run(tmp_path, "a")
    rows_b, sampled_b = _run(tmp_path, "b")
    assert len(rows_a) == 6
    assert list(rows_a[0].keys()) == list(COLUMNS)
    assert all(row["sigma_rel_error"] for row in rows_a[2:]), "Σ̂ exists after the first rounds"
    assert _without_seconds(rows_a) == _without_seconds(rows_b)

    # clients.fraction = 0.5 of 10 → 5 partitions per round, the same ones in both runs
    assert sampled_a == sampled_b
    assert sorted(sampled_a) == list(range(1, 7))
    assert all(len(parts) == 5 and len(set(parts)) == 5 for parts in sampled_a.values())
    assert all(row["clients_replied"] == "5" for row in rows_a)
    # the draw really is per round, not one fixed subset
    assert len({tuple(parts) for parts in sampled_a.values()}) > 1


def test_different_seed_different_numbers(tmp_path):
    rows_a, sampled_a = _run(tmp_path, "a")
    rows_c, sampled_c = _run(tmp_path, "c", ["seed=22"])
    assert len(rows_a) == len(rows_c) == 6
    for column in ("excess_risk", "loss", "sigma_rel_error"):
        assert [r[column] for r in rows_a] != [r[column] for r in rows_c], column
    assert sampled_a != sampled_c
