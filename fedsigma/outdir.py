"""Results folders: checked before anything starts, created when the run starts,
removed again when nothing ran."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from scenarios.loader import ScenarioError

KEEP_LOG = "flower.log"  # an engine's log: its failures point at it, so the folder stays


def check_out(out: Path, flag: str = "--out", hint: str = "") -> Path:
    """The absolute results folder ``out``, or a one-line ScenarioError naming ``flag``:
    a NUL, a file in the way, a folder that already holds files, or a parent that is
    not a writable folder. Nothing is created."""
    text = str(out)
    if "\0" in text:
        raise ScenarioError(f"{flag}: the path holds a NUL character; give a plain folder path")
    out = Path(os.path.abspath(text))
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ScenarioError(f"{flag}: {out} is a file, not a folder; choose a new or empty folder")
        try:
            busy = any(out.iterdir())
        except OSError as exc:
            raise ScenarioError(f"{flag}: cannot read {out}: {exc.strerror or exc}") from None
        if busy:
            raise ScenarioError(f"{flag}: {out} already holds files; choose an empty or new folder"
                                + (f" ({hint})" if hint else ""))
        return out
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ScenarioError(f"{flag}: {parent} is a file, so {out} cannot be created; choose another folder")
    if not os.access(parent, os.W_OK | os.X_OK) or _special(parent):
        raise ScenarioError(f"{flag}: cannot create folders under {parent}; choose a writable folder")
    return out


def _special(path: Path) -> bool:
    """Kernel file systems (/proc, /sys) accept os.access but refuse new folders."""
    resolved = path.resolve()
    return any(resolved == Path(p) or resolved.is_relative_to(p) for p in ("/proc", "/sys", "/dev"))


@contextlib.contextmanager
def results_folder(out: Path, flag: str = "--out", hint: str = "") -> Iterator[Path]:
    """Create ``out`` (checked with :func:`check_out`) for a run, and remove it again if
    the run raises before it finished a round (:func:`nothing_ran`). A folder the user
    made beforehand is kept, emptied of what this run left."""
    out = check_out(out, flag, hint)
    existed = out.is_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"{flag}: cannot create {out}: {exc.strerror or exc}") from None
    try:
        yield out
    except BaseException:
        if nothing_ran(out):
            if existed:
                for child in out.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def nothing_ran(out: Path) -> bool:
    """Whether ``out`` holds no finished round: no rounds.csv rows (the header and the
    summary of a run that failed before round 1 do not count), and no engine log the
    error message points at; a folder without rounds.csv, whether it is empty."""
    if not out.is_dir():
        return True
    if (out / KEEP_LOG).exists():
        return False
    rounds = out / "rounds.csv"
    if not rounds.is_file():  # not a run's folder (e.g. reproduce's): only an empty one held nothing
        return not any(out.iterdir())
    with rounds.open() as handle:
        return sum(1 for _ in handle) <= 1
