"""The deployment engine: Flower's Deployment Engine — a SuperLink and one SuperNode
per client, as real processes on 127.0.0.1.

Starts ``flower-superlink`` (one HTTP port for the Fleet, Control and Runtime
APIs) or connects to a running one, starts the scenario's SuperNodes (each with
its own node config and Runtime API port; each starts a ``flower-superexec``
that runs a fresh ``flwr-clientapp`` per message), submits the staged app with
``flwr run --format json``, follows the run with ``flwr log --stream`` until it
finishes, and stops every process it started — by PID, SuperNodes first — when
the run ends, fails or is interrupted.

With TLS the SuperLink serves HTTPS with a certificate made by
``scripts/make-certs.sh`` and only admits SuperNodes whose public keys were
registered with ``flwr supernode register`` (CLI-managed SuperNode
authentication); each SuperNode signs its requests with its private key.

The command builders below are also what docker-compose.yml runs (see
tests/test_compose.py), with container hosts, ports and paths.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedsigma.engines import processes as fp
from scenarios.loader import ScenarioError
from server.fleet_gate import HEALTH_PATH
from server.partition_grid import HANDSHAKE_FAILED

MAKE_CERTS = fp.ROOT / "scripts" / "make-certs.sh"
SUPERLINK_PORT = 8000  # Flower 1.42's default, and the port docker-compose.yml publishes
SUPERNODE_PORT = 9094  # a SuperNode's Runtime API (its SuperExec connects there)
FINISHED = "finished"
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class Certificates:
    """A folder made by scripts/make-certs.sh: ca.crt, server.pem, server.key and
    one OpenSSH key pair per SuperNode (supernode-1, supernode-1.pub, …)."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def node_key(self, k: int) -> Path:
        """Private key of the SuperNode serving partition k (files count from 1)."""
        return self.folder / f"supernode-{k + 1}"

    def check(self, nodes: int, superlink: bool) -> None:
        """Raise ScenarioError naming the first file that is missing."""
        needed = [self.ca] + ([self.server_cert, self.server_key] if superlink else [])
        for k in range(nodes):
            needed += [self.node_key(k), self.node_key(k).with_name(self.node_key(k).name + ".pub")]
        for path in needed:
            if not path.is_file():
                raise ScenarioError(
                    f"--certs: no {path.name} in {self.folder}; make them with "
                    f"scripts/make-certs.sh {self.folder} {nodes}"
                )


def make_certificates(folder: Path, nodes: int, rsa_bits: int = 2048) -> Certificates:
    """Run scripts/make-certs.sh: a CA, the SuperLink's certificate and ``nodes`` key pairs."""
    done = subprocess.run(
        ["bash", str(MAKE_CERTS), str(folder), str(nodes)], capture_output=True, text=True,
        env={**fp.flower_env(folder), "RSA_BITS": str(rsa_bits)}, timeout=120,
    )
    if done.returncode != 0:
        raise fp.EngineError(f"scripts/make-certs.sh failed: {done.stderr.strip()}")
    return Certificates(folder)


def superlink_command(port: int, host: str = "127.0.0.1", certs: Certificates | None = None) -> list[str]:
    """``flower-superlink`` on one HTTP port; with certificates: HTTPS and SuperNode auth."""
    cmd = ["flower-superlink"]
    if certs is None:
        cmd += ["--insecure"]
    else:
        cmd += ["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.server_cert),
                "--ssl-keyfile", str(certs.server_key), "--enable-supernode-auth"]
    return cmd + ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]


def fleet_gate_command(listen: str, superlink: str, certs: Certificates | None = None) -> list[str]:
    """The Fleet gate in front of a SuperLink on 127.0.0.1 (HTTPS with the SuperLink's certificate)."""
    cmd = [sys.executable, "-m", "server.fleet_gate", "--listen", listen, "--upstream", superlink]
    if certs is not None:
        cmd += ["--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key), "--ca", str(certs.ca)]
    return cmd


def supernode_command(
    superlink: str, port: int, node_config: dict, host: str = "127.0.0.1",
    certs: Certificates | None = None, key: Path | None = None,
) -> list[str]:
    """``flower-supernode`` for one node: its node config and its Runtime API port."""
    cmd = ["flower-supernode"]
    cmd += ["--insecure"] if certs is None else ["--root-certificates", str(certs.ca)]
    cmd += ["--superlink", superlink, "--host", host, "--port", str(port),
            "--node-config", format_node_config(node_config)]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return cmd


def format_node_config(config: dict) -> str:
    """``key=value`` pairs as ``--node-config`` reads them (TOML values: strings quoted)."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in config.items())


def run_deployment(
    node_configs: list[dict],
    run_config: dict,
    log_path: Path,
    superlink: str | None = None,
    start_supernodes: bool = True,
    certs: Certificates | None = None,
    tls: bool = False,
    timeout: float = 3600.0,
) -> None:
    """Run the app on a SuperLink and one SuperNode per node config.

    Parameters
    ----------
    node_configs : list of dict
        One per SuperNode to start (``partition-id``, ``num-partitions``,
        optionally ``data-path``, ``target``).
    run_config : dict
        The run config (``scenario-json``, ``out-dir``, ``engine``, ``method``).
    log_path : Path
        Flower's output (SuperLink, SuperNodes and the run's logs) goes here.
    superlink : str, optional
        ``HOST:PORT`` of a running SuperLink; default: start one on a free port.
    start_supernodes : bool
        False: the federation's SuperNodes are already connected (e.g. containers).
    certs : Certificates, optional
        TLS and SuperNode authentication with these files; ``tls`` without
        ``certs`` makes fresh ones for this run.
    timeout : float
        Seconds before a run that has not finished is stopped.

    Raises EngineError (with the log's tail) if the run does not complete.
    """
    nodes = len(node_configs) if start_supernodes else 0
    with tempfile.TemporaryDirectory(prefix="fsd-") as tmp, log_path.open("a") as log:
        tmp = Path(tmp)
        home = tmp / "home"
        env = fp.flower_env(home)
        if tls and certs is None:
            certs = make_certificates(tmp / "certs", nodes)
        if certs is not None:
            certs.check(nodes, superlink=superlink is None)
        started: list[subprocess.Popen] = []  # SuperNodes: stopped before the SuperLink
        link: subprocess.Popen | None = None
        gate: subprocess.Popen | None = None
        run_id = None
        try:
            fleet = superlink
            if superlink is None:
                # The SuperLink (Control, Fleet and Runtime API on one port) listens on
                # 127.0.0.1 for this CLI; SuperNodes come in through the Fleet gate,
                # which passes only Fleet API requests (server/fleet_gate.py)
                port, gate_port = fp.free_port(), fp.free_port()
                superlink, fleet = f"127.0.0.1:{port}", f"127.0.0.1:{gate_port}"
                link = fp.start(_resolve(superlink_command(port, certs=certs)), env, log)
                fp.wait_for_port(port, link, 60, "flower-superlink")
                gate = fp.start(fleet_gate_command(fleet, superlink, certs), env, log, cwd=fp.ROOT)
                fp.wait_for_port(gate_port, gate, 60, "fleet gate")
            else:
                check_reachable(superlink, ca=None if certs is None else certs.ca)
            fp.write_connection(home, superlink, insecure=certs is None,
                                root_certificates=None if certs is None else certs.ca)
            if certs is not None and nodes:
                _register_supernodes(certs, nodes, env, log)
            for k, config in enumerate(node_configs[:nodes]):
                cmd = supernode_command(
                    fleet, fp.free_port(), config, certs=certs,
                    key=None if certs is None else certs.node_key(k),
                )
                started.append(fp.start(_resolve(cmd), env, log))
            run_id = _submit(tmp, run_config, env, log)
            _follow(run_id, env, log, log_path, link, started, timeout)
        except BaseException:
            if run_id is not None and link is None:  # a SuperLink we do not own: stop our run on it
                _flwr(["stop", str(run_id), fp.CONNECTION], env, log, timeout=60, check=False)
            raise
        finally:
            fp.stop_all(started)
            fp.stop_all([gate, link])


def _resolve(cmd: list[str]) -> list[str]:
    return [fp.flower_command(cmd[0]), *cmd[1:]]


def check_reachable(address: str, ca: Path | None = None, timeout: float = 60.0) -> None:
    """Wait until the SuperLink at HOST:PORT answers ``GET /health``; raise ScenarioError if it does not.

    An open port is not enough: Docker's port proxy accepts connections as soon as
    a container starts, before the SuperLink in it listens, and then drops them. So
    a port that accepts but does not answer yet is polled for up to ``timeout``
    seconds; one that refuses connections, or a host that does not resolve, fails at
    once (nothing is there).

    Parameters
    ----------
    address : str
        ``HOST:PORT`` of the SuperLink.
    ca : Path, optional
        CA certificate of a TLS SuperLink: HTTPS, verified with it. None: plain HTTP.
    timeout : float
        Seconds to wait for the first answer.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ScenarioError(f"--superlink: expected HOST:PORT, got {address!r}")
    url = f"{'http' if ca is None else 'https'}://{host}:{port}{HEALTH_PATH}"
    context = None if ca is None else ssl.create_default_context(cafile=str(ca))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),  # a local address: no proxy
                                         urllib.request.HTTPSHandler(context=context))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(url, timeout=5) as reply:
                if reply.status == 200:
                    return
                last = f"HTTP {reply.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ScenarioError(f"--certs: the SuperLink at {address} has a certificate that {ca} does not "
                                    f"verify ({reason.verify_message}); give the CA it was made with") from None
            if isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or getattr(
                    reason, "errno", None) == errno.ECONNREFUSED:
                raise ScenarioError(f"--superlink: nothing answers at {address} "
                                    f"({getattr(reason, 'strerror', None) or reason}); start the SuperLink first "
                                    "or leave --superlink out to start one") from None
            last = str(reason) or type(reason).__name__
        if time.monotonic() >= deadline:
            hint = "" if ca is not None else "; a SuperLink with TLS needs --certs DIR"
            raise ScenarioError(f"--superlink: {address} accepts connections but no SuperLink answered GET "
                                f"{HEALTH_PATH} within {timeout:.0f} s (last: {last}){hint}")
        time.sleep(0.5)


def _flwr(args: list[str], env: dict, log, timeout: float, check: bool = True) -> str:
    """Run one ``flwr`` CLI command (from a folder without an app in it); return stdout."""
    cwd = Path(env["FLWR_HOME"])
    done = subprocess.run([fp.flower_command("flwr"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    log.write(f"$ flwr {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    log.flush()
    if check and done.returncode != 0:
        raise fp.EngineError(f"flwr {args[0]} failed (exit {done.returncode}): {_json_error(done.stdout)}")
    return done.stdout


def _json_error(text: str) -> str:
    try:
        return str(json.loads(text).get("error-message", text)).strip()
    except ValueError:
        return text.strip()[-500:]


def _register_supernodes(certs: Certificates, nodes: int, env: dict, log) -> None:
    """CLI-managed SuperNode authentication: register each node's public key (in parallel:
    each ``flwr`` call is a Python start-up)."""
    pubs = [certs.node_key(k).with_name(certs.node_key(k).name + ".pub") for k in range(nodes)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outs = pool.map(lambda pub: _flwr(["supernode", "register", str(pub), fp.CONNECTION, "--format", "json"],
                                          env, log, 120, check=False), pubs)
        for pub, out in zip(pubs, outs):
            if '"success": true' not in out and "already" not in out:
                raise fp.EngineError(f"flwr supernode register {pub.name} failed: {_json_error(out)}")


def _submit(tmp: Path, run_config: dict, env: dict, log) -> int:
    """``flwr run`` the staged app with this run config; return the run id."""
    app = fp.stage_app(tmp)
    config = fp.write_run_config(tmp / "run_config.toml", run_config)
    out = _flwr(["run", str(app), fp.CONNECTION, "--run-config", str(config), "--format", "json"], env, log, 300,
                check=False)
    try:
        reply = json.loads(out)
        return int(reply["run-id"])
    except (ValueError, KeyError, TypeError):
        raise fp.EngineError(f"flwr run failed: {_json_error(out)}") from None


def run_status(run_id: int, env: dict, log) -> str:
    """The run's status, e.g. ``running`` or ``finished:completed``."""
    out = _flwr(["list", fp.CONNECTION, "--run-id", str(run_id), "--format", "json"], env, log, 60, check=False)
    try:
        return str(json.loads(out)["runs"][0]["status"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"unknown ({_json_error(out)})"


def _follow(
    run_id: int, env: dict, log, log_path: Path, link: subprocess.Popen | None, nodes: list[subprocess.Popen],
    timeout: float,
) -> None:
    """Stream the run's logs into the log until it finishes; fail if it did not complete,
    if the SuperLink we started died, or after ``timeout`` seconds. A SuperNode that dies
    is only logged: the run goes on with the others (its rounds count it as failed), and
    a SuperNode started again joins it (server.partition_grid)."""
    nodes = list(nodes)
    deadline = time.monotonic() + timeout
    stream = fp.start([fp.flower_command("flwr"), "log", str(run_id), fp.CONNECTION, "--stream"],
                      env, log, cwd=Path(env["FLWR_HOME"]))
    status, next_poll = "", None
    try:
        while True:
            if next_poll is None and stream.poll() is not None:
                next_poll = 0.0  # the stream ends with the run (or a lost connection): ask
            if next_poll is not None and time.monotonic() >= next_poll:
                status = run_status(run_id, env, log)
                if status.startswith(FINISHED):
                    break
                next_poll = time.monotonic() + 3.0
            if link is not None and link.poll() is not None:
                raise fp.EngineError(
                    f"flower-superlink (pid {link.pid}) exited with code {link.returncode} "
                    f"during run {run_id}; log {log_path}:\n{fp.log_tail(log_path)}"
                )
            for node in [n for n in nodes if n.poll() is not None]:
                nodes.remove(node)
                log.write(f"fedsigma: flower-supernode (pid {node.pid}) exited with code {node.returncode}; "
                          "the run goes on without it\n")
                log.flush()
            if time.monotonic() > deadline:
                raise fp.EngineError(f"run {run_id} did not finish within {timeout:.0f} s; log {log_path}")
            time.sleep(0.25)
    finally:
        fp.stop(stream, grace=2)
    if status != COMPLETED:
        node_error = _node_data_error(log_path)
        if node_error:  # a SuperNode's own table is unusable: bad input, not a crash
            raise ScenarioError(node_error)
        raise fp.EngineError(f"run {run_id} ended {status}; log {log_path}:\n{fp.log_tail(log_path)}")


def _node_data_error(log_path: Path) -> str | None:
    """The one-line reason a node gave at the handshake for refusing its own CSV or the run
    config (``node config KEY: …``, from NodeDataError or the node's policy), if the log has one."""
    marker = f"{HANDSHAKE_FAILED}node config "
    for line in log_path.read_text(errors="replace").splitlines():
        if marker in line:
            return line.split(HANDSHAKE_FAILED, 1)[1].strip().strip("'\"")
    return None
