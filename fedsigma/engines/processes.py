"""Start and stop Flower's own processes (SuperLink, ``flwr run``) on 127.0.0.1.

Shared by the simulation and deployment engines: a throw-away FLWR_HOME with
one connection, a staged copy of the app, the run config as a TOML file, and
process groups stopped by PID however the run ends.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from scenarios import run_config as rc
from server.checkpoint import APP_PACKAGES as PACKAGES

ROOT = Path(__file__).resolve().parents[2]  # the checkout: fedsigma/engines/processes.py
CONNECTION = "fedsigma"

APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedsigma"
version = "0.1.0"
dependencies = ["flwr[simulation]==1.42.0"]

[tool.flwr.app]
publisher = "fedsigma"

[tool.flwr.app.components]
serverapp = "server.server_app:app"
clientapp = "client.client_app:app"

[tool.flwr.app.config]
"""


def toml_scalars(values: dict) -> str:
    """``key = value`` lines of TOML scalars (a run config, a [tool.flwr.app.config])."""
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


class EngineError(RuntimeError):
    """A Flower run that did not complete; str() says why and where the log is."""


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower processes: no telemetry, no update check, our FLWR_HOME.

    Ray also puts its unix sockets there, and socket paths are limited to 107
    bytes: give a short ``home`` (e.g. a fresh folder under /tmp).
    """
    env = dict(os.environ)
    # SuperLinks and SuperNodes start `flower-superexec` from PATH: use ours.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_HOME=str(home),
        RAY_TMPDIR=str(home),
        RAY_DEDUP_LOGS="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_connection(home: Path, address: str, insecure: bool = True, root_certificates: Path | None = None) -> None:
    """$FLWR_HOME/config.toml with one SuperLink connection named ``fedsigma``."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
    lines.append(f"insecure = {'true' if insecure else 'false'}")
    if root_certificates is not None:
        lines.append(f'root-certificates = "{root_certificates}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def stage_app(dest: Path) -> Path:
    """Copy the app's packages and a pyproject into ``dest/fedsigma`` for ``flwr run``.

    A staged copy packs only the app (not tests or results) and lives in a
    folder whose name ``flwr build`` accepts, wherever the checkout is.
    """
    app = dest / "fedsigma"
    for pkg in PACKAGES:
        src = ROOT / pkg
        for path in list(src.glob("*.py")) + list(src.glob("*.toml")):
            target = app / pkg / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    (app / "pyproject.toml").write_text(APP_PYPROJECT + toml_scalars(rc.DEFAULTS))
    return app


def write_run_config(path: Path, run_config: dict) -> Path:
    """The run config as a TOML file for ``flwr run --run-config`` (values are TOML scalars)."""
    path.write_text(toml_scalars(run_config))
    return path


def flower_command(name: str) -> str:
    """Path of a Flower console script installed beside this Python."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def start(args: list[str], env: dict, log, cwd: Path | None = None) -> subprocess.Popen:
    """Start a process in its own process group, output to ``log``; it and its
    descendants are stopped by the watchdog if this process dies without stopping them."""
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    _watch(proc.pid)
    return proc


def run(args: list[str], env: dict, log, timeout: float, cwd: Path | None = None) -> int:
    """:func:`start` a process and wait for it (at most ``timeout`` s, then stop it and
    raise TimeoutExpired); return its exit code."""
    proc = start(args, env, log, cwd=cwd)
    try:
        code = proc.wait(timeout=timeout)
    except BaseException:  # timed out or interrupted: stop it and what it started
        stop(proc)
        raise
    _unwatch([proc.pid])
    return code


_watchdog: subprocess.Popen | None = None


def _watch(pid: int) -> None:
    """Register a process with this process's watchdog (started on first use)."""
    global _watchdog
    if _watchdog is None or _watchdog.poll() is not None:
        # its own session: Ctrl-C in the terminal reaches the CLI, not the watchdog
        _watchdog = subprocess.Popen([sys.executable, "-m", "fedsigma.engines.watchdog"], stdin=subprocess.PIPE,
                                     text=True, start_new_session=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                         [str(ROOT), os.environ.get("PYTHONPATH", "")])})
        atexit.register(_close_watchdog)
    _tell_watchdog(f"{pid} {start_time(pid)}")


def _close_watchdog() -> None:
    """At a normal exit: end the watchdog's input and wait for it, so no process of ours
    outlives this one even briefly (it stops whatever is still registered)."""
    if _watchdog is None or _watchdog.poll() is not None:
        return
    try:
        _watchdog.stdin.close()
        _watchdog.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _unwatch(pids: list[int]) -> None:
    for pid in pids:
        _tell_watchdog(f"-{pid}")


def _tell_watchdog(line: str) -> None:
    if _watchdog is None or _watchdog.poll() is not None:
        return
    try:
        _watchdog.stdin.write(line + "\n")
        _watchdog.stdin.flush()
    except (BrokenPipeError, OSError):
        pass


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), or None
    if it is gone: with the PID, it names one process even after the PID is reused."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Wait until 127.0.0.1:port accepts connections, or fail if ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it listened on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Stop a process and every descendant: SIGTERM, wait ``grace`` s, then SIGKILL.

    Descendants are listed before signalling, since Ray starts some of its
    daemons in sessions of their own and they are re-parented once the leader
    exits.
    """
    stop_all([proc], grace)


def stop_all(procs: list[subprocess.Popen | None], grace: float = 10.0) -> None:
    """:func:`stop` for several processes at once: one grace period, not one each."""
    procs = [proc for proc in procs if proc is not None]
    _unwatch([proc.pid for proc in procs if proc.poll() is not None])  # exited already: its PID may be reused
    procs = [proc for proc in procs if proc.returncode is None]
    if not procs:
        return
    tree = process_tree()
    pids = [pid for proc in procs for pid in (proc.pid, *descendants(proc.pid, tree))]
    terminate(pids, grace, reap=procs)
    _unwatch([proc.pid for proc in procs])


def terminate(pids: list[int], grace: float, reap: list[subprocess.Popen] = ()) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` s for them to go, then SIGKILL what is left;
    ``reap``: our own children among them, reaped so they do not linger as zombies."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if _all_gone(reap, pids, wait):
            return


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """PIDs of every live descendant of ``pid``, read from /proc (or ``children``,
    a parent → children map from :func:`process_tree`)."""
    children = process_tree() if children is None else children
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_tree() -> dict[int, list[int]]:
    """Parent PID → child PIDs of every process, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _all_gone(procs, pids: list[int], wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for proc in procs:
            proc.poll()  # reap the leaders so they do not linger as zombies
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
