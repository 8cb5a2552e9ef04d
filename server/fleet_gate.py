"""The Fleet gate: the only way in to a SuperLink from the network.

Flower 1.42 serves its Control API (``flwr ls``/``run``/``stop``), Fleet API
(SuperNodes) and Runtime API (SuperExecs) on one HTTP port, and the open-source
build authenticates no Control API caller (``NoOpControlAuthnPlugin`` unless the
enterprise OIDC plugin is installed). So the SuperLink listens on 127.0.0.1 and
this gate listens where SuperNodes reach it, forwarding only ``POST /v1/fleet/…``
(what a SuperNode sends) and ``GET /health`` (whether the SuperLink is up: the
compose file's healthcheck and a remote node's operator ask it; it tells nothing
else), and refusing every other request with 403 and a log line.
With ``--certfile/--keyfile`` it serves HTTPS with the SuperLink's own
certificate (SuperNodes verify it with ``ca.crt`` as before) and talks HTTPS to
the SuperLink, verifying it with ``--ca``.

Run: ``python -m server.fleet_gate --listen 0.0.0.0:8000 --upstream 127.0.0.1:9093
[--certfile server.pem --keyfile server.key --ca ca.crt]``.
"""

from __future__ import annotations

import argparse
import logging
import ssl

import httpx
import uvicorn

FLEET_PREFIX = "/v1/fleet/"
HEALTH_PATH = "/health"  # the SuperLink answers 200 here on its one HTTP(S) port once it serves
# hop-by-hop headers (RFC 9110 §7.6.1) and those httpx recomputes
DROPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"})

log = logging.getLogger("fleet-gate")


def allowed(method: str, path: str) -> bool:
    """Whether a request is let through: Fleet API traffic (a SuperNode's) or the health probe."""
    if method == "GET" and path == HEALTH_PATH:
        return True
    return method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path


class FleetGate:
    """ASGI app: forward Fleet API requests to ``upstream``, refuse the rest.

    Parameters
    ----------
    upstream : str
        Base URL of the SuperLink, e.g. ``https://127.0.0.1:9093``.
    verify : ssl.SSLContext or bool
        How to verify the SuperLink's certificate (False for plain HTTP).
    """

    def __init__(self, upstream: str, verify: ssl.SSLContext | bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        self.client = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(120.0))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if not allowed(method, path):
            client = scope.get("client") or ("?", 0)
            log.warning("fleet-gate: refused %s %s from %s (only POST %s* and GET %s pass)", method, path, client[0],
                        FLEET_PREFIX, HEALTH_PATH)
            await _respond(send, 403, b"fleet-gate: only the Fleet API is served here\n")
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in DROPPED]
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{self.upstream}{path}" + (f"?{query}" if query else "")
        try:
            reply = await self.client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.error("fleet-gate: SuperLink unreachable: %s", type(exc).__name__)
            await _respond(send, 502, b"fleet-gate: SuperLink unreachable\n")
            return
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
               if k.lower() not in DROPPED and k.lower() != "content-encoding"]
        await _respond(send, reply.status_code, reply.content, out)

    async def _lifespan(self, receive, send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(send, status: int, body: bytes, headers: list | None = None) -> None:
    headers = [*(headers or []), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and serve until stopped (SIGTERM/SIGINT)."""
    parser = argparse.ArgumentParser(prog="fleet_gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the SuperNodes connect to")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the SuperLink (on 127.0.0.1)")
    parser.add_argument("--certfile", help="the SuperLink's certificate (serve HTTPS)")
    parser.add_argument("--keyfile", help="its private key")
    parser.add_argument("--ca", help="CA certificate that signed the SuperLink's certificate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    tls = args.certfile is not None
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.ca) if tls else False
    app = FleetGate(f"{'https' if tls else 'http'}://{args.upstream}", verify)
    uvicorn.run(app, host=host.strip("[]"), port=int(port), ssl_certfile=args.certfile, ssl_keyfile=args.keyfile,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
