"""The rivals in the method registry, run end to end on the inline engine: what they
send, that they are what they claim, and the adaptive probe budget of gradcov."""

import csv
import json

import pytest
from flwr.app import ConfigRecord

from client.policy import NodePolicy, PolicyError, check_round
from fedsigma.cli import main
from shared import protocol as p

QUICK = ["--set", "stop.max_rounds=120"]


def _run(tmp_path, scenario: str, method: str, *sets: str) -> tuple[dict, list[dict]]:
    out = tmp_path / f"{scenario}-{method}-{len(list(tmp_path.iterdir()))}"
    args = ["run", scenario, "--method", method, "--out", str(out), *QUICK]
    for item in sets:
        args += ["--set", item]
    assert main(args) in (0, 1)
    summary = json.loads((out / "summary.json").read_text())
    with (out / "rounds.csv").open() as fh:
        return summary, list(csv.DictReader(fh))


def test_fedsgd_memory_is_federated_cg_and_fedsgd_has_no_memory(tmp_path):
    """The same P = I steps; only the memory differs — and it is worth dozens of rounds."""
    memory, _ = _run(tmp_path, "quickstart", "fedsgd-memory")
    plain, _ = _run(tmp_path, "quickstart", "fedsgd")
    assert memory["rounds_to_target"] is not None and memory["rounds_to_target"] <= 40
    assert plain["rounds_to_target"] is None  # thousands of rounds at κ = 100
    assert memory["scenario"]["preconditioner"]["enabled"] is False
    assert plain["scenario"]["training"]["line_search_memory"] == 0


def test_fedlbfgs_reaches_the_target_with_gradients_only(tmp_path):
    summary, rows = _run(tmp_path, "quickstart", "fedlbfgs")
    assert summary["rounds_to_target"] is not None and summary["rounds_to_target"] <= 60
    assert all(r["gradients_pooled"] in ("0", "") for r in rows)  # no probes: P = I


def test_fednl_learns_the_hessian_and_counts_its_uplink(tmp_path):
    summary, rows = _run(tmp_path, "quickstart", "fednl")
    assert summary["rounds_to_target"] is not None
    # Σ̂ column: FedNL's learned Hessian estimate H converges to Σ
    assert float(rows[-1]["sigma_rel_error"]) < 0.1 < float(rows[0]["sigma_rel_error"])
    # every reply carries a Rank-1 correction (d + 1 floats), g_i (d) and l_i (1), as .npy arrays
    d, clients = summary["scenario"]["data"]["dim"], summary["scenario"]["clients"]["count"]
    per_reply = int(rows[0]["bytes_up"]) / clients
    assert per_reply >= 8 * (2 * d + 2)
    assert int(rows[1]["bytes_up"]) - int(rows[0]["bytes_up"]) == int(rows[0]["bytes_up"])


def test_a_node_that_keeps_its_hessian_refuses_fednl():
    cfg = ConfigRecord({p.MODE: p.MODE_FEDNL, p.BATCH_SIZE: 32})
    with pytest.raises(PolicyError, match="allow-hessian"):
        check_round(NodePolicy(), cfg)


def test_adaptive_probes_stop_once_they_save_no_round(tmp_path):
    adaptive, rows = _run(tmp_path, "ill_conditioned", "gradcov")
    fixed, fixed_rows = _run(tmp_path, "ill_conditioned", "gradcov", "preconditioner.adaptive_probes=false")
    pooled = [int(r["gradients_pooled"]) for r in rows]
    assert pooled[-1] == pooled[-2]  # the last round asked for no probes
    assert adaptive["rounds_to_target"] == fixed["rounds_to_target"]
    assert int(rows[-1]["bytes_up"]) < int(fixed_rows[-1]["bytes_up"])
