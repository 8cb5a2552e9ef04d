"""The results folder of a run: rounds.csv written row by row, summary.json, arrays."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

COLUMNS = (
    "round",
    "excess_risk",
    "loss",
    "sigma_rel_error",
    "sigma_whitened_error",
    "gradients_pooled",
    "bytes_up",
    "bytes_down",
    "clients_replied",
    "clients_failed",
    "clients_rejected",
    "seconds",
)


class RoundsWriter:
    """Appends one row per round to ``rounds.csv`` and flushes it at once,
    so an interrupted run keeps every finished round. Unknown values (None or
    NaN) are written as empty cells.

    Parameters
    ----------
    path : Path
    rows : list of dict, optional
        Rows written first (a resumed run's rounds so far, from its checkpoint).
    """

    def __init__(self, path: Path, rows: list[dict] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=COLUMNS)
        self._writer.writeheader()
        for row in rows:
            self._writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        self._handle.flush()

    def write(self, row: dict) -> None:
        """Write one round; keys must be a subset of :data:`COLUMNS`."""
        self._writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_rounds(path: Path) -> list[dict[str, float | None]]:
    """Rows of a rounds.csv as dicts of floats (None for empty cells)."""
    with Path(path).open(newline="") as handle:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temp file, then rename) so a reader never sees half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")

