"""Digest of rounds.csv for every bundled scenario and method: a before/after check
that a refactor left the numbers alone.

Runs each ``scenarios/*.toml`` with each method on the inline engine, in this
process, through the CLI's ``main`` (``fedsigma run``), and prints one line per
(scenario, method)::

    <scenario> <method> <rows> <sha256 of rounds.csv without its `seconds` column>

``--max-rounds N`` gives every run the same ``--set stop.max_rounds=N`` (a cap for
methods that would run thousands of rounds; default: each scenario's own budget,
at most 200 rounds in the bundled files). Give the same N on both sides.
Compare two trees with::

    git worktree add /tmp/base 7a13870
    PYTHONPATH=/tmp/base python scripts/rounds_digest.py --cli scenarios.cli > before.txt
    PYTHONPATH=$PWD      python scripts/rounds_digest.py > after.txt
    diff before.txt after.txt

(``--cli scenarios.cli`` is the entry point before the layout move.) The digests of
commit 7a13870, before issue 8's refactor, are in docs/rounds-digest-7a13870.txt;
the layout move (fc34de0) kept all 50. Commit 01caf34 (closed-form client gradients)
changed the last bits of every run on purpose, and so did a8d534d and the later
commits to client/draws.py (each client's draws from its own Philox counters: other
batches and noise) and d1af1b8 (full-data gradients from each client's XᵀX and
Xᵀy), so check a refactor against the main commit just before it, not against that
file. All 50 runs take about 90 s on an idle
core; ``--max-rounds 40`` cuts that by half on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
import io
import logging
import sys
import tempfile
import tomllib
from pathlib import Path

METHODS = (
    "gradcov", "gradcov-uncalibrated", "gradcov-differential", "fedsgd", "fedavg",
    "fedadam", "fedyogi", "fedadagrad", "oracle", "newton",
)


MAX_CLIENTS = 1000


def _clients(path: Path) -> int:
    """clients.count of a scenario file (10 when it does not say)."""
    with path.open("rb") as fh:
        return int(tomllib.load(fh).get("clients", {}).get("count", 10))


def digest(rounds_csv: Path) -> tuple[int, str]:
    """(data rows, sha256 hex) of a rounds.csv with the ``seconds`` column dropped."""
    with rounds_csv.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return 0, hashlib.sha256(b"").hexdigest()
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
    text = "\n".join(",".join(row[i] for i in keep) for row in rows)
    return len(rows) - 1, hashlib.sha256(text.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cli", default="fedsigma.cli", help="module whose main(argv) is `fedsigma`")
    parser.add_argument("--max-rounds", type=int, default=0, help="stop.max_rounds of every run (0: the file's)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--scenarios", default="", help="comma-separated names (default: every bundled one "
                        f"with at most {MAX_CLIENTS} clients; cross_device's 10,000 take an hour per method here)")
    args = parser.parse_args(argv)
    cli = importlib.import_module(args.cli)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # one line per run, not Flower's per-round log
    folder = Path(importlib.import_module("scenarios").__file__).parent
    names = args.scenarios.split(",") if args.scenarios else sorted(
        p.stem for p in folder.glob("*.toml") if _clients(p) <= MAX_CLIENTS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for method in args.methods.split(","):
                out = Path(tmp) / f"{name}-{method}"
                argv_run = ["run", name, "--engine", "inline", "--method", method, "--out", str(out)]
                if args.max_rounds:
                    argv_run += ["--set", f"stop.max_rounds={args.max_rounds}"]
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                    rc = cli.main(argv_run)
                if rc != 0:
                    print(f"{name} {method} exit={rc} {err.getvalue().strip()[:200]}", flush=True)
                    continue
                rows, sha = digest(out / "rounds.csv")
                print(f"{name} {method} {rows} {sha}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
