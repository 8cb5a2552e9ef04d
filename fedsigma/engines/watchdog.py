"""Stops the Flower processes of a CLI that died without stopping them (SIGKILL, OOM kill).

The CLI starts this once, in a session of its own (so the terminal's Ctrl-C does not
reach it), and writes to its stdin one line per process it starts: ``PID START``
(START: the process's start time in clock ticks, from /proc/PID/stat, so a PID reused
by an unrelated process is never signalled) and ``-PID`` when it stopped that process
itself. The pipe reaches end-of-file when the CLI exits, however it exits; then every
process still listed, and all its descendants, get SIGTERM and, after a grace period,
SIGKILL. Started with ``python -m fedsigma.engines.watchdog``; imports nothing heavy.
"""

from __future__ import annotations

import sys

from fedsigma.engines.processes import descendants, process_tree, start_time, terminate


def main() -> None:
    """Read registrations until end-of-file, then stop what is left."""
    watched: dict[int, int] = {}
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 2:
            watched[int(parts[0])] = int(parts[1])
        elif len(parts) == 1 and parts[0].startswith("-"):
            watched.pop(-int(parts[0]), None)
    leaders = [pid for pid, started in watched.items() if start_time(pid) == started]
    tree = process_tree()
    terminate([pid for leader in leaders for pid in (leader, *descendants(leader, tree))], grace=5.0)


if __name__ == "__main__":
    main()
