"""Run many ``fedsigma`` command lines in this one process and report how each ended.

Used by tests/test_scenarios_errors.py: importing flwr and torch once instead of
once per case keeps a table of a hundred bad inputs to seconds. Each case runs
``fedsigma.cli.main(argv)`` in a fresh folder of its own files, with stdout and
stderr captured, and records the exit code, the stderr text, any traceback, the
wall time, the files the case left behind and this process's peak RSS so far.

Usage: python tests/_bad_input_child.py CASES.json RESULTS.json WORKDIR
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsigma.cli import main  # noqa: E402

CASE_SECONDS_MAX = 30


def _timeout(signum, frame):
    raise TimeoutError(f"case still running after {CASE_SECONDS_MAX} s")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_case(case: dict, home: Path) -> dict:
    """Run one case in the new folder ``home``; returns what happened."""
    home.mkdir(parents=True)
    for name, content in case["files"].items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):  # {"hex": ...}: bytes
            path.write_bytes(bytes.fromhex(content["hex"]))
        else:
            path.write_text(content)
    before = _tree(home)
    out, err = io.StringIO(), io.StringIO()
    tb = ""
    cwd = os.getcwd()
    os.chdir(home)
    started = time.perf_counter()
    signal.alarm(CASE_SECONDS_MAX)  # a case that starts a real run must not stall the table
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(case["argv"])
    except SystemExit as exc:  # argparse (usage errors, --version)
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 — a traceback is the failure this table looks for
        code, tb = None, traceback.format_exc()
    finally:
        signal.alarm(0)
        os.chdir(cwd)
    seconds = time.perf_counter() - started
    return {
        "code": code,
        "stderr": err.getvalue(),
        "stdout": out.getvalue(),
        "traceback": tb,
        "seconds": seconds,
        "left": sorted(_tree(home) - before),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main_child(cases_json: str, results_json: str, workdir: str) -> None:
    signal.signal(signal.SIGALRM, _timeout)
    cases = json.loads(Path(cases_json).read_text())
    results = {}
    for n, case in enumerate(cases):
        results[case["id"]] = got = run_case(case, Path(workdir) / f"case-{n:03d}")
        print(f"{got['seconds']:7.2f} s  exit {got['code']}  {case['id']}", file=sys.stderr, flush=True)
    Path(results_json).write_text(json.dumps(results))


if __name__ == "__main__":
    main_child(*sys.argv[1:4])
