"""Checkpoints: after each round, everything a run needs to continue after a crash.

One file, ``checkpoint.pkl`` in the results folder, replaced atomically (written to a
temporary file in the same folder, then renamed over the old one), so a SIGKILL at
any moment leaves either the previous round's checkpoint or this round's, never half
of one. (No fsync: the kernel keeps what a killed process wrote; surviving a power
cut as well would cost a disk flush per round.) It holds:

- a header line ``fedsigma-checkpoint 1`` and a JSON line with what a caller checks
  before resuming without unpickling anything: the round, the scenario (as JSON), the
  method and a fingerprint of the app's code;
- a pickle of the round loop's state: w, the strategy object itself (Σ̂'s pool or
  sketch, P, the secant memory, Flower's adaptive-optimiser moments…), Python's
  ``random`` state (Flower's strategies sample with it), the byte and failure counters,
  the privacy ledger, and every rounds.csv row so far.

Pickling the strategy keeps every method's state without a hand-written copy of each
one; the price is that a checkpoint only loads into the code that wrote it, which is
why the code fingerprint is checked first. Unpickling runs code named in the file:
resume only runs whose folder you trust (your own).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

CHECKPOINT = "checkpoint.pkl"
HEADER = b"fedsigma-checkpoint 1\n"
APP_PACKAGES = ("shared", "server", "client", "scenarios")  # what `flwr run` ships (fedsigma.engines.processes)
ROOT = Path(__file__).resolve().parents[1]


class CheckpointError(ValueError):
    """No usable checkpoint, or one that does not belong to this code, scenario or method."""


def code_fingerprint(root: Path = ROOT) -> str:
    """SHA-256 (hex, 16 characters) of the app's source: every ``.py`` and ``.toml`` file
    of :data:`APP_PACKAGES`, the same files the simulation and deployment engines stage,
    so the ServerApp computes the same value on every engine."""
    digest = hashlib.sha256()
    for package in APP_PACKAGES:
        for path in sorted((root / package).glob("*.py")) + sorted((root / package).glob("*.toml")):
            digest.update(f"{package}/{path.name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def save(out_dir: Path, meta: dict, state: dict) -> None:
    """Write ``out_dir/checkpoint.pkl`` atomically.

    Parameters
    ----------
    out_dir : Path
        The run's results folder.
    meta : dict
        JSON-serialisable: ``round``, ``scenario`` (JSON text), ``method``, ``code``.
    state : dict
        Picklable round-loop state (see the module docstring).
    """
    path = out_dir / CHECKPOINT
    tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(HEADER)
        handle.write(json.dumps(meta).encode() + b"\n")
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def read_meta(out_dir: Path) -> dict:
    """The checkpoint's JSON header (round, scenario, method, code); nothing is unpickled.

    Raises CheckpointError with a one-line reason if there is no readable checkpoint.
    """
    path = out_dir / CHECKPOINT
    try:
        with path.open("rb") as handle:
            if handle.readline() != HEADER:
                raise CheckpointError(f"{path} is not a fedsigma checkpoint")
            return json.loads(handle.readline())
    except FileNotFoundError:
        raise CheckpointError(f"no {CHECKPOINT} in {out_dir}: nothing to resume (was a round finished?)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc})") from None


def load(out_dir: Path, scenario_json: str, method: str) -> tuple[dict, dict]:
    """(meta, state) of the checkpoint in ``out_dir``, after checking that it was written
    by this code for this scenario (any engine) and method; CheckpointError otherwise."""
    meta = read_meta(out_dir)
    check(meta, scenario_json, method)
    with (out_dir / CHECKPOINT).open("rb") as handle:
        handle.readline(), handle.readline()
        return meta, pickle.load(handle)


def check(meta: dict, scenario_json: str, method: str) -> None:
    """Raise CheckpointError (one line) unless ``meta`` matches this code, scenario and method.

    The engine may differ: every engine gives the same numbers.
    """
    if meta.get("code") != code_fingerprint():
        raise CheckpointError(
            f"the checkpoint was written by other code (fingerprint {meta.get('code')}, this code "
            f"{code_fingerprint()}); resume with the checkout that started the run"
        )
    if meta.get("method") != method:
        raise CheckpointError(f"the run used method {meta.get('method')!r}, not {method!r}")
    ours, theirs = _without_engine(scenario_json), _without_engine(meta.get("scenario", "{}"))
    if ours != theirs:
        raise CheckpointError(f"the run used another scenario: {first_difference(theirs, ours)}")


def _without_engine(scenario_json: str) -> dict:
    raw = json.loads(scenario_json)
    raw.pop("engine", None)
    return raw


def first_difference(old: dict, new: dict, prefix: str = "") -> str:
    """'KEY: OLD → NEW' for the first key (dotted path) whose value differs."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            return first_difference(a, b, f"{prefix}{key}.")
        return f"{prefix}{key} was {json.dumps(a)}, now {json.dumps(b)}"
    return "none"

