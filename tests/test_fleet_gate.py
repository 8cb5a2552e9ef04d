"""The Fleet gate (server/fleet_gate.py) in process: what it forwards to the
SuperLink and what it refuses, with a stand-in SuperLink that records every request.

tests/test_control_api.py attacks the gate in a real TLS deployment run; this checks
its rule request by request, in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from server.fleet_gate import FleetGate


def _through_gate(requests: list[tuple[str, str, bytes]]) -> tuple[list[httpx.Response], list[httpx.Request]]:
    """Send ``(method, path, body)`` requests to a gate whose upstream records what reaches it."""
    reached: list[httpx.Request] = []

    def superlink(request: httpx.Request) -> httpx.Response:
        reached.append(request)
        return httpx.Response(200, content=b"upstream:" + request.content, headers={"x-upstream": "yes"})

    async def run() -> list[httpx.Response]:
        gate = FleetGate("http://superlink.invalid:8000")
        await gate.client.aclose()
        gate.client = httpx.AsyncClient(transport=httpx.MockTransport(superlink))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate, client=("203.0.113.9", 4711)),
                                     base_url="http://gate") as client:
            replies = [await client.request(method, path, content=body) for method, path, body in requests]
        await gate.client.aclose()
        return replies

    return asyncio.run(run()), reached


def test_fleet_requests_and_the_health_probe_pass_with_body_and_query():
    replies, reached = _through_gate([("POST", "/v1/fleet/pull-messages?x=1", b"\x00\x01node"),
                                      ("GET", "/health", b"")])
    assert [r.status_code for r in replies] == [200, 200]
    assert replies[0].content == b"upstream:\x00\x01node" and replies[0].headers["x-upstream"] == "yes"
    assert [(r.method, r.url.path, r.url.query) for r in reached] == [
        ("POST", "/v1/fleet/pull-messages", b"x=1"), ("GET", "/health", b"")]
    assert str(reached[0].url).startswith("http://superlink.invalid:8000/")


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/control/list-runs"),       # flwr ls
    ("POST", "/v1/control/stop-run"),        # flwr stop
    ("POST", "/v1/control/start-run"),       # flwr run
    ("POST", "/v1/runtime/pull-messages"),   # posing as a SuperExec
    ("GET", "/v1/fleet/pull-messages"),
    ("POST", "/health"),
    ("POST", "/v1/fleetx/pull-messages"),
])
def test_everything_else_is_refused_with_403_and_never_reaches_the_superlink(method, path, caplog):
    with caplog.at_level(logging.WARNING, logger="fleet-gate"):
        replies, reached = _through_gate([(method, path, b"payload")])
    assert replies[0].status_code == 403 and reached == []
    assert "fleet-gate: refused" in caplog.text and "203.0.113.9" in caplog.text


def test_a_dot_dot_path_is_refused_as_sent():
    """httpx would normalise ``..`` away before sending; a raw client need not, so the
    ASGI app gets the path as sent (uvicorn does not normalise it either)."""
    sent: list[dict] = []

    async def run() -> None:
        gate = FleetGate("http://superlink.invalid:8000")
        gate.client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: pytest.fail(f"forwarded {r.url}")))
        scope = {"type": "http", "method": "POST", "path": "/v1/fleet/../control/stop-run", "headers": [],
                 "query_string": b"", "client": ("203.0.113.9", 4711)}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(event: dict) -> None:
            sent.append(event)

        await gate(scope, receive, send)
        await gate.client.aclose()

    asyncio.run(run())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 403
