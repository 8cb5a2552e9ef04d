"""A table of bad inputs: every one ends with its documented exit code (README "Exit
codes and limits"), exactly one ``error:`` line on stderr naming the field, no
traceback, nothing left on disk, in under 5 s and under 1 GB of memory.

The table runs in one child process (tests/_bad_input_child.py calls
``fedsigma.cli.main`` per case, so flwr and torch are imported once); a few cases
also go through the real entry point, ``python -m fedsigma``, in their own process.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SECONDS_MAX = 5.0
RSS_MAX = 2**30  # 1 GiB
EXIT_FAILED, EXIT_USAGE = 1, 2

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


def _csv(header: list[str], rows) -> str:
    return ",".join(header) + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows)


_rng = np.random.default_rng(0)
_X = np.round(_rng.standard_normal((60, 3)), 6)
_y = np.round(_X @ [1.0, -2.0, 0.5] + 0.1 * _rng.standard_normal(60), 6)
_HEADER = ["a", "b", "c", "y"]


def _table(cells: dict | None = None, X=_X, y=_y, header=_HEADER) -> str:
    """The CSV of (X, y) with some cells, {(row, column): text}, replaced."""
    rows = [[str(v) for v in (*x, t)] for x, t in zip(X, y)]
    for (r, c), text in (cells or {}).items():
        rows[r][c] = text
    return _csv(header, rows)


CSV_OK = _table()
CSV_CELLS = {
    "nan-cell": (_table({(5, 1): "nan"}), ["data.path", "row 6", "'b'"]),
    "inf-cell": (_table({(7, 0): "inf"}), ["data.path", "row 8", "'a'"]),
    "minus-inf-target": (_table({(9, 3): "-inf"}), ["data.path", "row 10", "'y'"]),
    "values-near-1e300": (_table(X=_X * 1e300), ["data.path", "row 1", "'a'"]),
    "constant-target": (_table(y=np.full(60, 3.0)), ["data.target", "constant"]),
    "only-the-target-column": (_csv(["y"], [[t] for t in _y]), ["data.path", "no feature columns"]),
    "constant-feature": (_table(X=np.column_stack([_X[:, 0], np.ones(60), _X[:, 2]])),
                         ["data.path", "'b'", "constant"]),
    "collinear-features": (_table(X=np.column_stack([_X[:, 0], _X[:, 1], _X[:, 0] - _X[:, 1]])),
                           ["data.path", "linearly dependent"]),
    "fewer-rows-than-features": (_table(X=_X[:3], y=_y[:3]), ["data.path", "rows"]),
    "empty-file": ("", ["data.path", "empty"]),
    "header-only": ("a,b,c,y\n", ["data.path", "2 data rows"]),
    "non-numeric-cell": (_table({(4, 1): "five"}), ["data.path", "'b'", "not numeric"]),
    "ragged-row": ("\n".join(line if n != 5 else "1,2" for n, line in enumerate(CSV_OK.splitlines())) + "\n",
                   ["data.path", ":6: 2 fields"]),
    "missing-target-column": (_table(header=["a", "b", "c", "price"]), ["data.target", "'y'"]),
}


def case(cid, argv, names, files=None, code=EXIT_USAGE, left=(), absent=()):
    """One row: argv run in a folder holding scenario.toml (GOOD), data.csv (CSV_OK),
    README.md, full/keep.txt and ``files``; ``names`` must all be on the error line,
    ``absent`` must not; ``left``: paths the case may leave (besides its own files)."""
    base = {"scenario.toml": GOOD, "data.csv": CSV_OK, "README.md": "hello\n", "full/keep.txt": "precious\n"}
    return {"id": cid, "argv": argv, "names": names, "files": {**base, **(files or {})}, "code": code,
            "left": list(left), "absent": list(absent)}


def run(*extra, scenario="scenario.toml"):
    return ["run", scenario, "--out", "out", *extra]


def sets(**pairs):
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key.replace('__', '.')}={value}")]


def csv_scenario(csv_name="data.csv", target="y"):
    return GOOD.replace("dim = 4", f'kind = "csv"\npath = "{csv_name}"\ntarget = "{target}"').replace(
        "count = 4", "count = 2")


# key=value overrides that must be refused, and a word the error must name besides the key
OVERRIDES = [
    # not finite, or finite but absurd (inf passed validation; 1e200 and 1e300 tracebacks, negative risk)
    ("data.condition_number", "inf"), ("data.condition_number", "nan"), ("data.condition_number", "-inf"),
    ("data.condition_number", "1e300"), ("data.condition_number", "0.5"),
    ("data.noise_std", "inf"), ("data.noise_std", "1e200"), ("data.noise_std", "-1"), ("data.noise_std", "nan"),
    ("data.signal_variance", "0"), ("data.signal_variance", "inf"),
    ("data.student_t_dof", "2"), ("data.student_t_dof", "inf"),
    ("training.learning_rate", "inf"), ("training.learning_rate", "nan"), ("training.learning_rate", "-1"),
    ("training.learning_rate", "0"), ("training.learning_rate", "1e300"), ("training.local_learning_rate", "inf"),
    ("training.learning_rate", '"fast"'), ("training.line_search_memory", "1001"),
    ("training.local_steps", "-1"),
    ("protocol.calibration", "inf"), ("protocol.calibration", "-1"), ("protocol.noise_var", "inf"),
    ("protocol.noise_var", "-0.5"), ("protocol.label_clip", "0"), ("protocol.label_clip", "inf"),
    ("protocol.differential_low", "1.0"), ("protocol.differential_low", "nan"),
    ("preconditioner.ridge", "inf"), ("preconditioner.ridge", "-1"), ("preconditioner.ridge_fraction", "nan"),
    ("preconditioner.refresh_every", "0"), ("preconditioner.rank", "0"),
    ("partition.shift_strength", "1.5"), ("partition.shift_strength", "nan"),
    ("partition.size_alpha", "0"), ("partition.size_alpha", "inf"),
    ("clients.fraction", "0"), ("clients.fraction", "1.5"), ("clients.fraction", "nan"),
    ("stop.target", "1"), ("stop.target", "0"), ("stop.target", "2.5"), ("stop.target", "inf"),
    ("stop.target", "nan"),
    # strict types: no bool for a number, no float for an int, no "4" for 4
    ("clients.count", "true"), ("clients.count", "1.5"), ("clients.count", "0"), ("clients.count", "-3"),
    ("clients.count", '"4"'), ("data.dim", "4.0"), ("data.dim", "0"), ("data.dim", "20001"),
    ("data.rotate", "1"), ("data.rotate", '"yes"'), ("protocol.differential", "1"),
    ("preconditioner.enabled", '"false"'), ("training.noisy_targets", "0"),
    ("seed", "-1"), ("seed", "1.5"), ("seed", "true"), ("stop.max_rounds", "0"), ("stop.max_rounds", "true"),
    ("protocol.batch_size", "-4"), ("protocol.batch_size", "[abc]"), ("protocol.batch_size", "[/x]"),
    ("protocol.probes", "1"), ("protocol.probes", "true"),
    ("data.spikes", "0"), ("data.inputs", '"cauchy"'), ("engine", '"ray"'),
    # the name becomes a folder under runs/: plain file names only
    ("name", '"/tmp/x"'), ("name", '"../escape"'), ("name", '"a/b"'), ("name", '".hidden"'), ("name", '".."'),
    ("name", '""'), ("name", '"a\\u0000b"'), ("name", '"a\\nb"'), ("name", '"a\\\\b"'), ("name", '"' + "n" * 101 + '"'),
    ("name", "12"),
]

CASES = [
    case(f"set-{key}={value}"[:80], run(*sets(**{key.replace(".", "__"): value})), [key]
         + ([value] if value.startswith("[") else []), absent=[f"{key}.float"])
    for key, value in OVERRIDES
] + [
    # scenario-level consistency
    case("spikes-not-below-dim", run(*sets(data__spectrum='"spiked"', data__spikes=4)), ["data.spikes"]),
    case("batch-larger-than-shard", run(*sets(protocol__batch_size=51)), ["protocol.batch_size"]),
    case("more-clients-than-rows", run(*sets(clients__count=500, data__kind='"diabetes"')), ["clients.count"]),
    case("rank-not-below-dim", run(*sets(preconditioner__rank=4)), ["preconditioner.rank"]),
    case("rank-with-local-steps", run(*sets(data__dim=8, preconditioner__rank=2, training__local_steps=2)),
         ["training.local_steps"]),
    case("differential-without-calibration", run(*sets(protocol__differential="true", protocol__calibration=0)),
         ["protocol.calibration"]),
    case("unknown-top-level-key", run(), ["colour", "unknown key"], {"scenario.toml": GOOD + "colour = 'red'\n"}),
    case("unknown-key-in-section", run(), ["protocol.batchsize", "unknown key"],
         {"scenario.toml": GOOD.replace("batch_size = 8", "batch_size = 8\nbatchsize = 9")}),
    case("string-for-int-in-file", run(), ["protocol.batch_size"],
         {"scenario.toml": GOOD.replace("batch_size = 8", 'batch_size = "eight"')}),
    case("section-given-a-value", run(), ["clients"],
         {"scenario.toml": GOOD.replace("[clients]\ncount = 4\n", "") + "clients = 4\n"}),
    case("set-without-equals", run("--set", "protocol.batch_size"), ["--set", "protocol.batch_size"]),
    case("set-empty-key", run("--set", "=3"), ["--set"]),
    case("set-on-a-value", run(*sets(seed__x=1)), ["seed"]),
    case("set-on-a-value-nested", run(*sets(data__dim__x=1)), ["data.dim"]),
    # sizes beyond the machine: refused by the resource estimate, before any folder or process
    case("probes-1e9", run(*sets(protocol__probes=1_000_000_000)), ["protocol.probes", "memory"]),
    case("local-steps-1e8", run(*sets(training__local_steps=100_000_000)), ["training.local_steps", "round"]),
    case("rows-per-client-1e9", run(*sets(data__rows_per_client=1_000_000_000)), ["data.rows_per_client"]),
    case("dim-20000-dense", run(*sets(data__dim=20000)), ["data.dim", "preconditioner.rank"]),
    case("quickstart-clients-100000", run(*sets(clients__count=100_000), scenario="quickstart"),
         ["clients.count"]),
    case("quickstart-dim-20000", run(*sets(data__dim=20000), scenario="quickstart"), ["data.dim"]),
    case("deployment-1000-nodes", run(*sets(clients__count=1000, engine='"deployment"')),
         ["clients.count", "deployment"]),
    case("simulation-dim-20000", run(*sets(data__dim=20000, engine='"simulation"')), ["data.dim"]),
    case("estimate-too-large", ["estimate", "scenario.toml", *sets(protocol__probes=1_000_000_000)],
         ["protocol.probes"]),
    case("compare-too-large", ["compare", "scenario.toml", "--out", "out", "--methods", "fedavg",
                               *sets(data__rows_per_client=1_000_000_000)], ["data.rows_per_client"]),
    # scenario files
    case("invalid-toml", run(), ["scenario.toml", "TOML"], {"scenario.toml": "[data\ndim = 4\n"}),
    case("random-bytes-scenario", run(), ["scenario.toml", "UTF-8"],
         {"scenario.toml": {"hex": bytes(range(128, 256)).hex()}}),
    case("nul-in-scenario-file", run(), ["scenario.toml", "TOML"], {"scenario.toml": GOOD + 'name = "a\0b"\n'}),
    case("missing-scenario-file", run(scenario="absent.toml"), ["scenario", "absent.toml"]),
    case("scenario-is-a-folder", run(scenario="full"), ["scenario", "full"]),
    case("show-inf", ["show", "scenario.toml", *sets(data__condition_number="inf")], ["data.condition_number"]),
    case("show-name-with-slash", ["show", "scenario.toml", *sets(name='"a/b"')], ["name"]),
    # CSV tables
    case("csv-without-path", run(), ["data.path"],
         {"scenario.toml": GOOD.replace("dim = 4", 'dim = 4\nkind = "csv"\ntarget = "y"')}),
    case("csv-without-target", run(), ["data.target"],
         {"scenario.toml": GOOD.replace("dim = 4", 'kind = "csv"\npath = "data.csv"')}),
    case("csv-path-missing", run(), ["data.path", "nowhere.csv"], {"scenario.toml": csv_scenario("nowhere.csv")}),
    case("csv-random-bytes", run(), ["data.path", "UTF-8"],
         {"scenario.toml": csv_scenario("bytes.csv"), "bytes.csv": {"hex": bytes(range(128, 256)).hex()}}),
    case("csv-nul-byte", run(), ["data.path"], {"scenario.toml": csv_scenario("nul.csv"),
                                                "nul.csv": "a,b,y\n1,2\0,3\n4,5,6\n1,1,2\n"}),
    case("csv-is-a-folder", run(), ["data.path"], {"scenario.toml": csv_scenario("full")}),
    *[case(f"csv-{name}", run(), names, {"scenario.toml": csv_scenario("t.csv"), "t.csv": text})
      for name, (text, names) in CSV_CELLS.items()],
    case("nodes-constant-target", run(), ["data.paths[1]", "constant"],
         {"scenario.toml": GOOD.replace("dim = 4", 'kind = "nodes"\ndim = 3\ntarget = "y"\n'
                                        'paths = ["data.csv", "flat.csv"]').replace("count = 4", "count = 2"),
          "flat.csv": _table(y=np.zeros(60))}),
    # output folders
    case("out-in-proc", ["run", "scenario.toml", "--out", "/proc/x"], ["--out", "/proc"]),
    case("out-is-a-file", ["run", "scenario.toml", "--out", "README.md"], ["--out", "README.md"]),
    case("out-under-a-file", ["run", "scenario.toml", "--out", "README.md/sub"], ["--out", "README.md"]),
    case("out-holds-files", ["run", "scenario.toml", "--out", "full"], ["--out", "full", "already holds"]),
    case("out-with-nul", ["run", "scenario.toml", "--out", "o\0ut"], ["--out", "NUL"]),
    case("out-markup-and-emoji", ["run", "scenario.toml", "--out", "a:x:[red]b"], ["--out", "a:x:[red]b"],
         {"a:x:[red]b": "a file\n"}),
    case("compare-out-is-a-file", ["compare", "scenario.toml", "--out", "README.md"], ["--out", "README.md"]),
    case("reproduce-out-is-a-file", ["reproduce", "--quick", "--out", "README.md"], ["--out", "README.md"]),
    case("reproduce-out-holds-files", ["reproduce", "--quick", "--out", "full"], ["--out", "already holds"]),
    # other commands and flags
    case("compare-methods-comma", ["compare", "scenario.toml", "--out", "out", "--methods", ","], ["--methods"]),
    case("compare-methods-unknown", ["compare", "scenario.toml", "--out", "out", "--methods", "sgd"],
         ["--methods", "sgd"]),
    case("compare-seeds-not-ints", ["compare", "scenario.toml", "--out", "out", "--seeds", "a,b"], ["--seeds"]),
    case("compare-seeds-negative", ["compare", "scenario.toml", "--out", "out", "--seeds", "-1"], ["--seeds"]),
    case("compare-max-rounds-zero", ["compare", "scenario.toml", "--out", "out", "--max-rounds", "0"],
         ["--max-rounds"]),
    case("compare-max-rounds-text", ["compare", "scenario.toml", "--max-rounds", "x"], ["--max-rounds"]),
    case("run-engine-unknown", ["run", "scenario.toml", "--engine", "ray"], ["--engine", "ray"]),
    case("run-method-unknown", ["run", "scenario.toml", "--method", "sgd"], ["--method", "sgd"]),
    case("no-command", [], ["command"]),
    case("unknown-command", ["fly"], ["fly"]),
    case("tls-without-deployment", run("--tls"), ["--tls", "deployment"]),
    case("superlink-not-host-port", run("--engine", "deployment", "--superlink", "nowhere"), ["--superlink"]),
    case("certs-missing", run("--engine", "deployment", "--certs", "nocerts"), ["--certs"]),
    case("no-supernodes-without-superlink", run("--engine", "deployment", "--no-supernodes"),
         ["--no-supernodes"]),
    # the run starts and fails: exit 1, the status on the one error line, the rounds kept
    case("diverged", run(*sets(preconditioner__enabled="false", training__learning_rate=1000)),
         ["diverged", "training.learning_rate"], code=EXIT_FAILED, left=["out"]),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """Every case run once, in one child process; its results by case id."""
    work = tmp_path_factory.mktemp("bad-inputs")
    cases_json, results_json = work / "cases.json", work / "results.json"
    cases_json.write_text(json.dumps(CASES))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_bad_input_child.py"), str(cases_json), str(results_json),
         str(work / "cases")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results_json.read_text())


def test_the_table_holds_over_a_hundred_distinct_cases():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 100, len(ids)


@pytest.mark.parametrize("row", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(row, outcomes):
    got = outcomes[row["id"]]
    assert not got["traceback"], f"traceback instead of a one-line error:\n{got['traceback']}"
    assert "Traceback" not in got["stderr"], got["stderr"]
    assert got["code"] == row["code"], f"exit {got['code']}, want {row['code']}; stderr:\n{got['stderr']}"
    lines = [line for line in got["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"want one 'error:' line, got {lines!r}"
    for name in row["names"]:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    for name in row["absent"]:
        assert name not in lines[0], f"{name!r} in: {lines[0]}"
    assert ":x:" not in row["argv"] or "❌" not in got["stderr"] + got["stdout"]
    kept = {p for p in got["left"] if not any(p == k or p.startswith(k + "/") for k in row["left"])}
    assert not kept, f"left on disk: {sorted(kept)}"
    for path in row["left"]:  # a run that started keeps its rounds
        assert path in got["left"] and f"{path}/rounds.csv" in got["left"], got["left"]
    assert got["seconds"] < SECONDS_MAX, f"{got['seconds']:.1f} s"
    assert got["peak_rss"] < RSS_MAX, f"peak RSS {got['peak_rss'] / 2**20:.0f} MiB"


# The real entry point, one process per case: exit code, stderr and peak RSS of that process.
ENTRY = [
    ("random-bytes-scenario", ["run", "scenario.toml"], {"scenario.toml": bytes(range(128, 256))},
     ["scenario.toml", "UTF-8"]),
    ("condition-number-inf", ["run", "quickstart", "--set", "data.condition_number=inf"], {},
     ["data.condition_number"]),
    ("out-in-proc", ["run", "quickstart", "--out", "/proc/x"], {}, ["--out"]),
    ("probes-1e9", ["run", "quickstart", "--set", "protocol.probes=1000000000"], {}, ["protocol.probes"]),
]


def test_the_real_entry_point_gives_one_line_and_exit_2(tmp_path):
    procs = {}
    for cid, argv, files, _ in ENTRY:  # started together: each pays the imports once, in parallel
        home = tmp_path / cid
        home.mkdir()
        for name, data in files.items():
            (home / name).write_bytes(data)
        procs[cid] = subprocess.Popen([sys.executable, "-m", "fedsigma", *argv], cwd=home, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
    for cid, argv, files, names in ENTRY:
        _, err = procs[cid].communicate(timeout=300)
        assert procs[cid].returncode == EXIT_USAGE, (cid, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (cid, lines)
        assert all(name in lines[0] for name in names), (cid, lines[0])
        assert sorted(p.name for p in (tmp_path / cid).iterdir()) == sorted(files), cid
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert peak < RSS_MAX, f"a child peaked at {peak / 2**20:.0f} MiB"
