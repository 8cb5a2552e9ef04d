"""A progress bar that follows a run by reading its rounds.csv as rows land.

Every engine writes rounds.csv from the ServerApp, wherever that runs (this
process, a Ray simulation or a SuperLink's SuperExec), so watching the file is
the one way to show progress that works for all of them.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.results import read_rounds


class RoundsProgress:
    """Context manager: a rich progress bar of rounds, updated every ``interval`` s."""

    def __init__(
        self, rounds_csv: Path, max_rounds: int, console: Console, interval: float = 0.2, label: str = "round",
        transient: bool = False,
    ) -> None:
        self.path = rounds_csv
        self.interval = interval
        self._stop = threading.Event()
        self._progress = Progress(
            TextColumn(f"[bold]{escape(label)}"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=transient,
        )
        self._task = self._progress.add_task("run", total=max_rounds, status="starting…")
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> RoundsProgress:
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._update()
        self._progress.stop()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        if not self.path.is_file():
            return
        try:
            rows = read_rounds(self.path)
        except (OSError, ValueError):  # a row half-written: try again next tick
            return
        if not rows:
            return
        last = rows[-1]
        status = f"excess risk {last['excess_risk']:.3e}" if last["excess_risk"] is not None else ""
        if last.get("sigma_rel_error") is not None:
            status += f"  ‖Σ̂−Σ‖/‖Σ‖ {last['sigma_rel_error']:.3f}"
        self._progress.update(self._task, completed=int(last["round"]), status=status)
