"""training.round_timeout: a client past it counts as failed for that round and is asked
again the next one; on the inline engine a straggler costs at most the timeout."""

from __future__ import annotations

import time

import pytest
from _support import read_rounds_raw, write_scenario

from fedsigma.cli import main
from fedsigma.engines.dispatch import run_engine
from scenarios.loader import load_scenario
from shared import deadline

SCENARIO = "[clients]\ncount = 4\n[stop]\nmax_rounds = 3\n[training]\nround_timeout = 0.5\n"


def _run_with(tmp_path, client_app, scenario_text: str = SCENARIO):
    from unittest.mock import patch

    path = write_scenario(tmp_path / "s.toml", scenario_text)
    scenario = load_scenario(path)
    with patch("fedsigma.engines.dispatch.client_app", client_app):
        run_engine(scenario, tmp_path / "out")
    return read_rounds_raw(tmp_path / "out" / "rounds.csv")


def test_a_straggler_past_the_timeout_fails_its_rounds_and_is_asked_again(tmp_path):
    """Partition 1 would reply after 60 s (an injected delay, slept with shared.deadline):
    each round waits until its 0.5 s deadline, not 60 s, counts the straggler as failed,
    and asks it again the next round."""
    from client.client_app import app as real

    asked = []

    def straggler(msg, context):
        if msg.metadata.message_type == "train" and context.node_config["partition-id"] == 1:
            asked.append(msg.metadata.group_id)
            deadline.sleep(60.0)
        return real(msg, context)

    started = time.monotonic()
    rows = _run_with(tmp_path, straggler)
    assert time.monotonic() - started < 60
    assert [r["clients_failed"] for r in rows] == ["1", "1", "1"]
    assert [r["clients_replied"] for r in rows] == ["3", "3", "3"]
    assert asked == ["1", "2", "3"]
    assert all(float(r["seconds"]) < 30 for r in rows)


def test_a_slow_call_is_discarded_and_a_slow_enough_one_kept(tmp_path):
    """A call that simply takes longer than the timeout (no injected sleep) is discarded
    as late; one within it is used."""
    from client.client_app import app as real

    def slow(msg, context):
        if msg.metadata.message_type == "train" and context.node_config["partition-id"] in (0, 2):
            time.sleep(3.0 if context.node_config["partition-id"] == 0 else 0.05)
        return real(msg, context)

    rows = _run_with(tmp_path, slow, SCENARIO.replace("round_timeout = 0.5", "round_timeout = 1.5"))
    assert [r["clients_failed"] for r in rows] == ["1", "1", "1"]


def test_round_timeout_is_validated(tmp_path, capsys):
    path = write_scenario(tmp_path / "s.toml", "[training]\nround_timeout = 0\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "training.round_timeout" in capsys.readouterr().err


def test_deadline_sleep_without_a_deadline_is_a_plain_sleep():
    started = time.monotonic()
    deadline.sleep(0.05)
    assert time.monotonic() - started >= 0.05
    with deadline.deadline(time.monotonic() + 0.05), pytest.raises(deadline.DeadlineExceeded):
        deadline.sleep(10)
