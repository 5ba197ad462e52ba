"""The checks the service makes before it reads a body (serving/gate.py), at the ASGI level: a body
that is not JSON gets a 415, an endpoint that needs a key answers 401/403 without reading the body,
``/docs.json`` is the service's own document; everything else reaches the app unchanged."""

from __future__ import annotations

import asyncio
import json

import pytest

from features.settings import Settings
from serving.gate import RequestGate

pytestmark = pytest.mark.unit


def _drive(gate: RequestGate, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict | None, bool]:
    """(status, JSON body, whether the app was reached); the body is never handed out here."""
    sent: list[dict] = []
    reached = False

    async def app(scope, receive, send):
        nonlocal reached
        reached = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate.app = app

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(gate(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], (json.loads(body) if body and not reached else None), reached


@pytest.fixture
def gate() -> RequestGate:
    return RequestGate(None, Settings(serving={"api_keys": ["k1", "k2"]}))


def test_bodies_that_are_not_json_get_a_415(gate):
    for content_type in ("multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "text/plain"):
        status, body, reached = _drive(gate, "POST", "/recommend", {"Content-Type": content_type})
        assert (status, reached) == (415, False)
        assert body["detail"][0]["loc"] == ["Content-Type"]
    for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        assert _drive(gate, "POST", "/recommend", {"Content-Type": content_type})[2]
    assert _drive(gate, "POST", "/recommend", {})[2]  # no Content-Type: read as JSON


def test_keys_are_checked_before_the_body(gate):
    status, body, reached = _drive(gate, "POST", "/customer_scores", {"Content-Type": "multipart/form-data"})
    assert (status, reached) == (401, False) and body["detail"][0]["loc"] == ["X-API-Key"]
    assert _drive(gate, "POST", "/customer_scores", {"X-API-Key": "k3"})[:3:2] == (403, False)
    assert _drive(gate, "POST", "/customer_scores", {"X-API-Key": "k2"})[2]
    assert _drive(gate, "POST", "/recommend", {})[2]  # public by default
    keyed = RequestGate(None, Settings(serving={"api_keys": ["k1"], "recommend_requires_key": True}))
    assert _drive(keyed, "POST", "/recommend", {})[0] == 401
    assert _drive(keyed, "POST", "/similar_items", {"X-API-Key": "k1"})[2]


def test_the_spec_is_the_services_own_and_other_requests_pass(gate):
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(gate({"type": "http", "method": "GET", "path": "/docs.json", "headers": []}, None, send))
    spec = json.loads(sent[1]["body"])
    assert spec["openapi"].startswith("3.1") and "/customer_scores" in spec["paths"]
    assert _drive(gate, "GET", "/readyz", {})[2]
    assert _drive(gate, "GET", "/recommend", {})[2]  # the app answers 405
