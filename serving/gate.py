"""What the service checks before it reads a request's body, as an ASGI middleware.

A caller without a valid API key, or with a body that is not JSON, is refused before the body is
read or parsed (:class:`RequestGate`), and ``GET /docs.json`` answers the service's own OpenAPI
document. Each refusal is logged at INFO with the path and the status, never with anything from
the request.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from features.settings import Settings
from serving.limits import ASGIApp, Receive, Scope, Send
from serving.openapi import API_PATHS, ENDPOINTS, needs_key, openapi_spec

log = logging.getLogger(__name__)

API_KEY_HEADER = b"x-api-key"
JSON = "application/json"
SPEC_PATH = "/docs.json"


def keys_match(given: bytes, keys: list[bytes]) -> bool:
    """Whether ``given`` is one of ``keys``: compared with every key (no early exit), each in
    constant time, so the answer's timing says nothing about which key came close.

    Parameters
    ----------
    given
        The ``X-API-Key`` header's value.
    keys
        The accepted keys (``serving.api_keys``), encoded.

    Returns
    -------
    bool
        ``True`` when ``given`` equals one of ``keys``.
    """
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    """Answer with a JSON body, without passing the request on.

    Parameters
    ----------
    send
        The ASGI send callable of the request.
    status
        The HTTP status.
    body
        The JSON-serialisable body.

    Returns
    -------
    None
    """
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def error_body(field: str, message: str) -> dict[str, Any]:
    """The body of a refusal (serving.schemas.ErrorResponse).

    Parameters
    ----------
    field
        What the refusal is about (a header or body field name, never its value).
    message
        The sentence shown to the caller.

    Returns
    -------
    dict[str, Any]
        ``{"error": message, "detail": [{"loc": [field], "msg": message}]}``.
    """
    return {"error": message, "detail": [{"loc": [field], "msg": message}]}


class RequestGate:
    """The checks made before a body is read, with the keys and the spec of ``settings`` (default:
    the service's settings, read when the app is built in each worker).

    - An endpoint that needs an API key (``customer_scores``; ``recommend`` and ``similar_items``
      with ``serving.recommend_requires_key``) answers **401** without the ``X-API-Key`` header and
      **403** with a key that is not one of ``serving.api_keys``: a caller without a key learns
      nothing about what the body should be.
    - A ``POST`` to an endpoint whose body is not JSON (``Content-Type`` other than
      ``application/json``: multipart forms, url-encoded forms, text) gets a **415**; BentoML would
      try its other decoders and answer 500.
    - ``GET /docs.json`` answers the service's own OpenAPI document (:mod:`serving.openapi`).
    """

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        if settings is None:
            from features.settings import load_settings

            settings = load_settings()
        self.app = app
        self._keys = [key.get_secret_value().encode() for key in settings.serving.api_keys]
        self._keyed = frozenset(endpoint.path for endpoint in ENDPOINTS if needs_key(endpoint, settings))
        self._spec = json.dumps(openapi_spec(settings)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        if path == SPEC_PATH and method in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(self._spec)).encode())]})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else self._spec})
            return
        if method != "POST" or path not in API_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        if path in self._keyed:
            given = headers.get(API_KEY_HEADER)
            if not given:
                log.info("POST %s: 401, no API key", path)
                await send_json(send, 401, error_body("X-API-Key", "this endpoint needs an API key in the X-API-Key "
                                                                   "header"))
                return
            if not keys_match(given, self._keys):
                log.info("POST %s: 403, an API key that is not valid", path)
                await send_json(send, 403, error_body("X-API-Key", "the API key is not valid"))
                return
        content_type = headers.get(b"content-type")
        # No Content-Type: BentoML reads the body as JSON, and so does every client that sends none.
        if content_type is not None and content_type.split(b";")[0].strip().lower() != JSON.encode():
            log.info("POST %s: 415, a body that is not JSON", path)
            await send_json(send, 415, error_body("Content-Type", f"the body must be JSON (Content-Type: {JSON})"))
            return
        await self.app(scope, receive, send)
