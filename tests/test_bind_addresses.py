"""Every process an engine starts listens on the loopback interface only (issue 13):
Flower's SuperLink and SuperNodes, and on the simulation engine Ray's GCS, raylets
and workers. Read from /proc while a short run is going."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsigma.engines.processes import descendants, stop

pytestmark = [
    pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's /proc"),
    pytest.mark.slow,  # starts Ray and Flower server processes
]

LISTEN = "0A"


def listening_sockets() -> dict[int, str]:
    """Socket inode → local address of every listening TCP socket on this machine."""
    found = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            hex_ip = fields[1].split(":")[0]
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = str(ipaddress.ip_address(words if width == 32 else words[:4]))
    return found


def addresses_of(pids: set[int]) -> set[str]:
    """Local addresses the given processes listen on."""
    sockets, out = listening_sockets(), set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in sockets:
                out.add(sockets[int(link[8:-1])])
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


@pytest.mark.parametrize("engine", ["simulation", "deployment"])
def test_engines_listen_on_loopback_only(engine, tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "fedsigma.cli", "run", "quickstart", "--engine", engine, "--out", str(tmp_path / "out"),
         "--set", "clients.count=3", "--set", "stop.max_rounds=3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    seen: set[str] = set()
    processes = 0
    try:
        deadline = time.monotonic() + 300
        while cli.poll() is None and time.monotonic() < deadline:
            tree = set(descendants(cli.pid))
            processes = max(processes, len(tree))
            seen |= addresses_of(tree | {cli.pid})
            time.sleep(0.5)
        assert cli.poll() == 0, "the run did not finish"
    finally:
        stop(cli)
    assert seen, f"saw no listening socket in {processes} processes: the check itself is broken"
    assert all(is_loopback(a) for a in seen), f"{engine}: listening on {sorted(seen)}"


def test_the_address_reader_sees_a_wildcard_listener():
    """Not vacuous: a socket bound to every interface is reported as 0.0.0.0."""
    import socket

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert "0.0.0.0" in addresses_of({os.getpid()})
        assert not is_loopback("0.0.0.0") and is_loopback("127.0.0.1") and is_loopback("::ffff:127.0.0.1")
