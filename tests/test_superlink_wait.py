"""A SuperLink we did not start (containers, another machine): the CLI waits until it
answers GET /health, not just until its port accepts connections, and the results
folder is one its ServerApp can write even as another user."""

from __future__ import annotations

import socketserver
import ssl
import stat
import threading
from pathlib import Path

import pytest

from fedsigma.engines.deployment import HEALTH_PATH, check_reachable, make_certificates
from fedsigma.engines.dispatch import DeployOptions
from scenarios.loader import ScenarioError


class _Handler(socketserver.BaseRequestHandler):
    """Drops the first ``drops`` connections without a byte, like Docker's port proxy
    before the container's SuperLink listens; then answers like a SuperLink."""

    def handle(self):
        server = self.server
        server.seen += 1
        if server.seen <= server.drops:
            return
        request = self.request.recv(4096).decode(errors="replace")
        server.paths.append(request.split(" ")[1] if " " in request else request)
        self.request.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, drops: int, tls: tuple[Path, Path] | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.drops, self.seen, self.paths = drops, 0, []
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


def _serving(server: _Server) -> _Server:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def servers():
    started: list[_Server] = []
    yield lambda *a, **k: started.append(_serving(_Server(*a, **k))) or started[-1]
    for server in started:
        server.shutdown()
        server.server_close()


def test_waits_past_connections_that_are_accepted_and_dropped(servers):
    server = servers(drops=3)
    check_reachable(server.address, timeout=30)
    assert server.seen == 4 and server.paths == [HEALTH_PATH]


def test_a_port_that_never_answers_fails_with_one_line(servers):
    server = servers(drops=10**6)
    with pytest.raises(ScenarioError, match=r"accepts connections but no SuperLink answered GET /health within 1 s"):
        check_reachable(server.address, timeout=1.0)
    assert server.seen >= 2


def test_tls_superlink_is_checked_with_its_ca(servers, tmp_path):
    certs = make_certificates(tmp_path / "certs", 0, rsa_bits=2048)
    server = servers(drops=1, tls=(certs.server_cert, certs.server_key))
    check_reachable(server.address, ca=certs.ca, timeout=30)
    assert server.paths == [HEALTH_PATH]
    other = make_certificates(tmp_path / "other", 0, rsa_bits=2048)
    with pytest.raises(ScenarioError, match="--certs: the SuperLink at .* does not verify"):
        check_reachable(server.address, ca=other.ca, timeout=30)


def test_results_folder_is_writable_by_a_remote_serverapp(tmp_path):
    ours, theirs = tmp_path / "local", tmp_path / "remote"
    ours.mkdir(), theirs.mkdir()
    DeployOptions().share_out_dir(ours)
    DeployOptions(superlink="127.0.0.1:8000", no_supernodes=True).share_out_dir(theirs)
    assert not ours.stat().st_mode & stat.S_IWOTH
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o777
