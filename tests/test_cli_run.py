"""`fedsigma run` end to end on the inline engine: results folder, claims, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _support import read_rounds_raw, run_inline_scenario, write_scenario

from fedsigma.cli import main
from shared.results import COLUMNS


def test_run_writes_the_whole_results_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "quickstart", "--out", str(out), "--set", "stop.max_rounds=30"]) == 0
    for name in ("rounds.csv", "summary.json", "sigma_hat.npy", "sigma_true.npy", "w.npy", "convergence.png"):
        assert (out / name).is_file(), name
    rows = read_rounds_raw(out / "rounds.csv")
    assert tuple(rows[0]) == COLUMNS
    summary = json.loads((out / "summary.json").read_text())
    first_hit = next(int(r["round"]) for r in rows if float(r["excess_risk"]) <= summary["target"])
    assert summary["rounds_to_target"] == first_hit == len(rows)
    assert summary["engine"] == "inline" and summary["seed"] == 1
    assert summary["versions"]["flwr"] == "1.42.0"
    assert summary["scenario"]["stop"]["max_rounds"] == 30
    sigma_hat, sigma = np.load(out / "sigma_hat.npy"), np.load(out / "sigma_true.npy")
    assert sigma_hat.shape == sigma.shape == (20, 20)
    assert np.linalg.norm(sigma_hat - sigma, 2) / np.linalg.norm(sigma, 2) == pytest.approx(
        float(rows[-1]["sigma_rel_error"]), rel=1e-9
    )
    # bytes grow every round; every sampled client replied
    ups = [int(r["bytes_up"]) for r in rows]
    assert all(b > a for a, b in zip(ups, ups[1:]))
    assert {r["clients_replied"] for r in rows} == {"10"} and {r["clients_failed"] for r in rows} == {"0"}
    assert "rounds to 1e-06" in capsys.readouterr().out


def test_run_method_applies_the_variants_settings_and_a_contradicting_set_is_an_error(tmp_path, capsys):
    """`run --method gradcov-uncalibrated` is the same run as `compare`'s: c = 0."""
    out = tmp_path / "u"
    assert main(["run", "quickstart", "--method", "gradcov-uncalibrated", "--out", str(out),
                 "--set", "stop.max_rounds=3"]) == 0
    assert json.loads((out / "summary.json").read_text())["scenario"]["protocol"]["calibration"] == 0
    out = tmp_path / "u2"
    capsys.readouterr()
    assert main(["run", "quickstart", "--method", "gradcov-uncalibrated", "--out", str(out),
                 "--set", "stop.max_rounds=3", "--set", "protocol.calibration=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--set protocol.calibration: --method gradcov-uncalibrated sets it to 0.0" in err and "\n" not in err
    assert not out.exists()


def test_ill_conditioned_method_within_60_rounds_and_fedsgd_over_100x(tmp_path):
    """The core claim, on the bundled scenario: ≤ 60 rounds with Σ̂, ≥ 100× that without."""
    fast = tmp_path / "gradcov"
    assert main(["run", "ill_conditioned", "--out", str(fast)]) == 0
    reached = json.loads((fast / "summary.json").read_text())["rounds_to_target"]
    assert reached is not None and reached <= 60
    slow = tmp_path / "fedsgd"
    budget = 100 * reached
    # plain FedSGD: P = I and no memory of past steps (with the memory it is federated CG, fedsgd-memory)
    assert main(["run", "ill_conditioned", "--out", str(slow), "--method", "fedsgd",
                 "--set", f"stop.max_rounds={budget}"]) == 0
    summary = json.loads((slow / "summary.json").read_text())
    assert summary["rounds_run"] == budget and summary["rounds_to_target"] is None
    assert summary["final"]["excess_risk"] > summary["target"]
    assert summary["final"]["sigma_rel_error"] is None  # FedSGD sends no probes


def test_csv_data_runs_and_oracle_uses_standardised_union(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 4)) * [1.0, 3.0, 0.5, 10.0] + 5.0
    y = X @ [0.5, -1.0, 2.0, 0.1] + rng.standard_normal(600)
    csv_path = tmp_path / "table.csv"
    lines = ["a,b,price,c,d"] + [f"{r[0]},{r[1]},{t},{r[2]},{r[3]}" for r, t in zip(X, y)]
    csv_path.write_text("\n".join(lines) + "\n")
    scenario = write_scenario(tmp_path / "csv.toml", (
        '[data]\nkind = "csv"\npath = "table.csv"\ntarget = "price"\n'
        "[clients]\ncount = 3\n[protocol]\nbatch_size = 32\nprobes = 8\n"
        "[preconditioner]\nwarmup_gradients = 40\n[stop]\nmax_rounds = 60\n"
    ))
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_to_target"] is not None
    Z = (X - X.mean(0)) / X.std(0)
    np.testing.assert_allclose(np.load(out / "sigma_true.npy"), Z.T @ Z / len(Z), atol=1e-12)


def test_a_failing_client_is_counted_and_the_run_goes_on(tmp_path):
    from client.client_app import app as real

    def flaky(msg, context):
        if context.node_config["partition-id"] == 2 and msg.metadata.message_type == "train":
            raise RuntimeError("disk on fire")
        return real(msg, context)

    scenario = write_scenario(tmp_path / "s.toml", "[clients]\ncount = 4\n[stop]\nmax_rounds = 5\n")
    run_inline_scenario(scenario, tmp_path / "out", client_app=flaky)
    rows = read_rounds_raw(tmp_path / "out" / "rounds.csv")
    assert len(rows) == 5
    assert {r["clients_failed"] for r in rows} == {"1"} and {r["clients_replied"] for r in rows} == {"3"}
    assert float(rows[-1]["excess_risk"]) < float(rows[0]["excess_risk"])


def test_a_client_failing_once_does_not_poison_the_secant_memory(tmp_path):
    """Partition 2 fails in round 3 only. ḡ of that round is another quadratic's
    gradient, so the server starts a new memory then and again when the node is
    back; the risk then falls every round to 1e-14 (a memory mixing the two
    quadratics stalls and rises for a few rounds)."""
    from client.client_app import app as real

    def once(msg, context):
        if (context.node_config["partition-id"] == 2 and msg.metadata.message_type == "train"
                and msg.metadata.group_id == "3"):
            raise RuntimeError("disk on fire")
        return real(msg, context)

    scenario = write_scenario(tmp_path / "s.toml", "[clients]\ncount = 4\n[stop]\nmax_rounds = 40\ntarget = 1e-14\n")
    run_inline_scenario(scenario, tmp_path / "out", client_app=once)
    rows = read_rounds_raw(tmp_path / "out" / "rounds.csv")
    assert [r["clients_failed"] for r in rows[:4]] == ["0", "0", "1", "0"]
    risk = [float(r["excess_risk"]) for r in rows]
    assert risk[-1] <= 1e-14
    assert all(b < a for a, b in zip(risk[3:], risk[4:])), risk


def test_an_interrupted_run_keeps_finished_rounds(tmp_path):
    from client.client_app import app as real

    calls = {"n": 0}

    def interrupted(msg, context):
        calls["n"] += 1
        if calls["n"] > 4 * 3 + 4:  # hello (4 calls), then three full rounds
            raise KeyboardInterrupt
        return real(msg, context)

    scenario = write_scenario(tmp_path / "s.toml", "[clients]\ncount = 4\n[stop]\nmax_rounds = 50\n")
    with pytest.raises(KeyboardInterrupt):
        run_inline_scenario(scenario, tmp_path / "out", client_app=interrupted)
    rows = read_rounds_raw(tmp_path / "out" / "rounds.csv")
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"].startswith("error: KeyboardInterrupt") and summary["rounds_run"] == 3


def test_a_run_in_which_every_client_fails_stops_with_their_error(tmp_path, capsys, monkeypatch):
    """Every client raises: the run stops after ALL_FAILED_ROUNDS rounds (not max_rounds of
    silent timeouts) and exits 1 with one error line carrying the client's own message."""
    import fedsigma.engines.dispatch as dispatch
    from client.client_app import app as real
    from server.federated_run import ALL_FAILED_ROUNDS

    def broken(msg, context):
        if msg.metadata.message_type == "train":
            raise RuntimeError("disk on fire")
        return real(msg, context)

    monkeypatch.setattr(dispatch, "client_app", broken)
    out = tmp_path / "out"
    assert main(["run", "quickstart", "--out", str(out), "--set", "stop.max_rounds=50"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: status clients failed"), lines
    assert "disk on fire" in lines[0] and "partition 0" in lines[0], lines[0]
    rows = read_rounds_raw(out / "rounds.csv")
    assert len(rows) == ALL_FAILED_ROUNDS and {r["clients_replied"] for r in rows} == {"0"}


def test_a_diverged_run_exits_1_and_keeps_its_rounds(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "quickstart", "--out", str(out), "--set", "preconditioner.enabled=false",
                 "--set", "training.learning_rate=1000"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: status diverged") and "training.learning_rate" in line, line
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
