"""The simulation engine on a running two-node Ray cluster (``--ray-address``) gives inline's numbers.

Both Ray nodes listen on 127.0.0.1 only and keep their files in a private
temporary folder; each is a ``ray start --block`` process in its own session,
stopped by its process-group id when the test ends (never ``ray stop``, which
stops every Ray on the machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _support import rows_without_seconds

from fedsigma.engines.processes import free_port

pytestmark = pytest.mark.slow  # starts Ray or Flower server processes

RAY = str(Path(sys.executable).parent / "ray")
COMMON = ["--set", "clients.count=4", "--set", "stop.max_rounds=3", "--set", "stop.target=1e-300"]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                 *args], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM to the node's process group (``ray start --block`` then stops its node), then SIGKILL."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _alive_nodes(address: str, env: dict) -> int:
    probe = "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", probe % address], env=env, capture_output=True, text=True,
                          timeout=120)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0


def _actor_logs(session: Path) -> int:
    """Worker processes the cluster has started so far (one log file each)."""
    return len(list((session / "logs").glob("python-core-worker-*")))


@pytest.mark.timeout(900)
def test_quickstart_on_a_two_node_ray_cluster_matches_inline(tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))  # short: Ray's unix sockets live here
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    address = f"127.0.0.1:{free_port()}"
    head = worker = None
    try:
        head = _start(["--head", f"--port={address.split(':')[1]}", "--num-cpus=1", "--include-dashboard=false",
                       f"--temp-dir={tmp}", f"--ray-client-server-port={free_port()}"], env, tmp_path / "head.log")
        deadline = time.monotonic() + 240
        while _alive_nodes(address, env) < 1:
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(2)
        worker = _start([f"--address={address}", "--num-cpus=1", '--resources={"second_machine": 1}'],
                        env, tmp_path / "worker.log")
        while _alive_nodes(address, env) < 2:
            assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(2)
        session = (tmp / "session_latest").resolve()  # the cluster's own folder
        actors_before = _actor_logs(session)
        outs = {}
        for engine, extra in (("inline", []), ("simulation", ["--ray-address", address])):
            outs[engine] = tmp_path / engine
            done = subprocess.run(
                [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", engine,
                 "--out", str(outs[engine]), *COMMON, *extra],
                capture_output=True, text=True, timeout=400, env=env,
            )
            assert done.returncode == 0, done.stderr[-2000:]
        inline = rows_without_seconds(outs["inline"] / "rounds.csv")
        assert len(inline) == 3
        assert inline == rows_without_seconds(outs["simulation"] / "rounds.csv")
        # the ClientApps ran as actors of this cluster (a private Ray would have its own session folder)
        assert _actor_logs(session) > actors_before
    finally:
        _stop(worker)
        _stop(head)
