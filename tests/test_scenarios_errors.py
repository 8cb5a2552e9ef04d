"""Malformed scenarios through the real CLI (a subprocess): exit code 2 and one
clear line on stderr that names the offending field — never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """
seed = 1
[data]
dim = 4
rows_per_client = 50
[clients]
count = 4
[protocol]
batch_size = 8
[stop]
max_rounds = 2
"""

CSV_OK = "a,b,c,y\n" + "".join(f"{i},{i % 7},{(i * 3) % 5},{i % 11}\n" for i in range(60))


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsigma.cli", "run", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def _assert_usage_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, exactly one non-empty stderr line naming every one of ``names``, no traceback."""
    err = proc.stderr
    assert "Traceback" not in err, f"traceback instead of a one-line error:\n{err}"
    assert proc.returncode == 2, f"exit code {proc.returncode}, stderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one non-empty stderr line, got {lines!r}"
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


# (id, scenario file text — None: no file —, extra CLI args, names the error must contain)
CASES = [
    ("unknown-top-level-key", GOOD + "colour = 'red'\n", [], ["colour", "unknown key"]),
    ("unknown-key-in-section", GOOD.replace("batch_size = 8", "batch_size = 8\nbatchsize = 9"), [],
     ["protocol.batchsize", "unknown key"]),
    ("string-for-int", GOOD.replace("batch_size = 8", 'batch_size = "eight"'), [], ["protocol.batch_size"]),
    ("negative-batch-size", GOOD, ["--set", "protocol.batch_size=-4"], ["protocol.batch_size"]),
    ("zero-fraction", GOOD, ["--set", "clients.fraction=0"], ["clients.fraction"]),
    ("fraction-above-one", GOOD, ["--set", "clients.fraction=1.5"], ["clients.fraction"]),
    ("target-one", GOOD, ["--set", "stop.target=1"], ["stop.target"]),
    ("target-above-one", GOOD, ["--set", "stop.target=2.5"], ["stop.target"]),
    ("bad-enum-inputs", GOOD.replace("dim = 4", 'dim = 4\ninputs = "cauchy"'), [], ["data.inputs", "cauchy"]),
    ("bad-enum-engine", GOOD, ["--set", 'engine="ray"'], ["engine"]),
    ("csv-without-path", GOOD.replace("dim = 4", 'dim = 4\nkind = "csv"\ntarget = "y"'), [], ["data.path"]),
    ("csv-without-target", GOOD.replace("dim = 4", 'kind = "csv"\npath = "ok.csv"'), [], ["data.target"]),
    ("csv-path-missing", GOOD.replace("dim = 4", 'kind = "csv"\npath = "nowhere.csv"\ntarget = "y"'), [],
     ["data.path", "nowhere.csv"]),
    ("invalid-toml", "[data\ndim = 4\n", [], ["scenario.toml", "TOML"]),
    ("set-without-equals", GOOD, ["--set", "protocol.batch_size"], ["--set", "protocol.batch_size"]),
    ("set-empty-key", GOOD, ["--set", "=3"], ["--set"]),
    ("batch-larger-than-shard", GOOD, ["--set", "protocol.batch_size=51"], ["protocol.batch_size"]),
    ("more-clients-than-rows", GOOD, ["--set", "clients.count=500", "--set", "data.kind=\"diabetes\""],
     ["clients.count"]),
    ("set-on-a-value", GOOD, ["--set", "seed.x=1"], ["seed"]),
    ("set-on-a-value-nested", GOOD, ["--set", "data.dim.x=1"], ["data.dim"]),
    ("probes-below-two", GOOD, ["--set", "protocol.probes=1"], ["protocol.probes"]),
    ("differential-low-one", GOOD, ["--set", "protocol.differential_low=1.0"], ["protocol.differential_low"]),
    ("learning-rate-zero", GOOD, ["--set", "training.learning_rate=0"], ["training.learning_rate"]),
    ("section-given-a-value", GOOD.replace("[clients]\ncount = 4\n", "") + "clients = 4\n", [], ["clients"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_scenario_is_one_line_exit_2(case, tmp_path):
    _, text, extra, names = case
    (tmp_path / "ok.csv").write_text(CSV_OK)
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    out = tmp_path / "out"
    proc = _run_cli([str(path), "--out", str(out), *extra], cwd=tmp_path)
    _assert_usage_error(proc, *names)
    assert not (out / "rounds.csv").exists(), "a run must not start on a malformed scenario"


def test_missing_scenario_file(tmp_path):
    proc = _run_cli([str(tmp_path / "absent.toml"), "--out", str(tmp_path / "out")], cwd=tmp_path)
    _assert_usage_error(proc, "scenario", "absent.toml")


def test_non_empty_out_folder(tmp_path):
    path = tmp_path / "scenario.toml"
    path.write_text(GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = _run_cli([str(path), "--out", str(out)], cwd=tmp_path)
    _assert_usage_error(proc, "--out")
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_union_field_error_names_the_field_not_the_union_member(tmp_path):
    """training.learning_rate is ``float | "auto"``: pydantic reports the location as
    ('training', 'learning_rate', 'float'); the message (and its ``--set`` hint) must
    name training.learning_rate, not the non-existent key training.learning_rate.float."""
    path = tmp_path / "scenario.toml"
    path.write_text(GOOD)
    proc = _run_cli([str(path), "--out", str(tmp_path / "out"), "--set", 'training.learning_rate="fast"'],
                    cwd=tmp_path)
    line = _assert_usage_error(proc, "training.learning_rate")
    assert "learning_rate.float" not in line, f"BUG (scenarios/loader.py describe): {line}"


def test_values_with_square_brackets_are_printed_verbatim(tmp_path):
    """The CLI prints the error through rich markup: a value such as ``[/x]`` must not
    crash it (rich MarkupError) nor ``[abc]`` vanish from the message."""
    path = tmp_path / "scenario.toml"
    path.write_text(GOOD)
    for value in ("[abc]", "[/x]"):
        proc = _run_cli([str(path), "--out", str(tmp_path / "out"), "--set", f"protocol.batch_size={value}"],
                        cwd=tmp_path)
        assert "MarkupError" not in proc.stderr, (
            f"BUG (fedsigma/cli.py main: error text not escaped for rich markup): --set value {value!r} "
            f"crashes the error printer:\n{proc.stderr[-300:]}"
        )
        line = _assert_usage_error(proc, "protocol.batch_size")
        assert value in line, f"BUG (fedsigma/cli.py main: rich ate the markup-like value {value!r}): {line}"


@pytest.mark.parametrize(
    "csv_text, target, names",
    [
        (CSV_OK, "price", ["data.target", "price"]),  # no such column
        (CSV_OK.replace("\n5,5,0,5\n", "\n5,five,0,5\n"), "y", ["'b'", "not numeric"]),  # bad cell
        (CSV_OK.replace("\n5,5,0,5\n", "\n5,5,0\n"), "y", ["3 fields"]),  # ragged row
    ],
    ids=["missing-target-column", "non-numeric-cell", "ragged-row"],
)
def test_bad_csv_contents_are_usage_errors(csv_text, target, names, tmp_path):
    """A CSV that exists but cannot be read is a malformed scenario too: one line, exit 2.
    (load_csv's messages are good; they must reach the user as a ScenarioError.)"""
    assert csv_text != CSV_OK or target != "y"
    (tmp_path / "data.csv").write_text(csv_text)
    path = tmp_path / "scenario.toml"
    path.write_text(
        GOOD.replace("dim = 4", f'kind = "csv"\npath = "data.csv"\ntarget = "{target}"')
        .replace("count = 4", "count = 2")
    )
    proc = _run_cli([str(path), "--out", str(tmp_path / "out")], cwd=tmp_path)
    _assert_usage_error(proc, *names)


def test_differential_injection_with_zero_calibration_is_rejected_up_front(tmp_path):
    """protocol.differential = true with protocol.calibration = 0 gives two equal noise
    levels [0, 0]; the schema accepts it and the run then crashes in round 1
    (shared/calibration.py: "differential levels must increase"). It must be a usage error."""
    path = tmp_path / "scenario.toml"
    path.write_text(GOOD)
    proc = _run_cli(
        [str(path), "--out", str(tmp_path / "out"), "--set", "protocol.differential=true",
         "--set", "protocol.calibration=0"],
        cwd=tmp_path,
    )
    line = _assert_usage_error(proc)
    assert "protocol.calibration" in line or "protocol.differential" in line, line
