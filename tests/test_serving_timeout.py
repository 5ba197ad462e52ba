"""BentoML's request timeout as the service runs it (serving/patches.py changes its middleware): an
answered request leaves no timer behind, a request past the timeout still gets the 504."""

from __future__ import annotations

import asyncio

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving import patches

pytestmark = pytest.mark.serving


@pytest.fixture(autouse=True, scope="module")
def _patched() -> None:
    # What importing serving.service does, without building the service.
    assert "cancel_answered_timers" in patches.apply()


def _run(app, timeout: float) -> tuple[list[dict], int]:
    """Drive the middleware once; the messages sent and the timers still pending afterwards."""
    sent: list[dict] = []

    async def main() -> int:
        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await TimeoutMiddleware(app, timeout=timeout)({"type": "http", "path": "/x", "method": "POST",
                                                       "headers": []}, receive, send)
        loop = asyncio.get_running_loop()
        return sum(1 for handle in loop._scheduled if not handle.cancelled())  # the loop's timers

    return sent, asyncio.run(main())


def test_an_answered_request_leaves_no_timer():
    async def fast(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent, pending = _run(fast, timeout=30)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert pending == 0


def test_a_request_past_the_timeout_gets_a_504():
    async def slow(scope, receive, send):
        await asyncio.sleep(5)

    sent, _ = _run(slow, timeout=0.05)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 504
    assert b"0.05 seconds" in sent[1]["body"]
