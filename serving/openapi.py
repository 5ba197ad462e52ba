"""The service's OpenAPI document, written from the request and response models the service
validates with, so that a client generated from it sends only requests the service accepts and can
parse every answer.

BentoML's own document (1.4) drops what a client needs: nullable fields, ``additionalProperties:
false`` of the models that refuse unknown fields, the rule "exactly one of ``customer_id`` or
``key``", the API key, and every status but 200/400/404/500. This one is served at ``/docs.json``
instead (by :class:`serving.gate.RequestGate`); :func:`openapi_spec` says what it holds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from features.settings import Settings
from serving import schemas

API_KEY_SCHEME = "ApiKey"


@dataclass(frozen=True)
class Endpoint:
    """One POST endpoint of the document: path, summary, body models, extra statuses, key rule."""

    path: str
    summary: str
    request: type[BaseModel] | None
    response: type[BaseModel]
    #: Statuses the endpoint answers besides 400/413/415 (bodies), 401/403 (keys) and 500/504.
    statuses: tuple[int, ...] = ()
    #: "always", "setting" (serving.recommend_requires_key) or "never".
    key: str = "never"


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/recommend", "Top-n items for a customer (by id or raw key), with score, source, reason and a fallback "
             "flag.", schemas.RecommendRequest, schemas.RecommendResponse, statuses=(503,), key="setting"),
    Endpoint("/similar_items", "Items bought together with an item (product pages), with the filters of recommend.",
             schemas.SimilarItemsRequest, schemas.SimilarItemsResponse, statuses=(404,), key="setting"),
    Endpoint("/customer_scores", "CLV and churn outputs of 1..1,000 customers (the rows of rapport score); unknown "
             "customers: 404 naming them.", schemas.CustomerScoresRequest, schemas.CustomerScoresResponse,
             statuses=(404,), key="always"),
    Endpoint("/info", "Model names and versions, the snapshot date and the bundle's counts.", None,
             schemas.InfoResponse),
    Endpoint("/echo", "Returns the message: the cost of the HTTP layer alone.", schemas.EchoRequest,
             schemas.EchoResponse),
)

#: Paths of the endpoints (POST, JSON).
API_PATHS = frozenset(endpoint.path for endpoint in ENDPOINTS)

_REASONS = {
    400: "The body is not valid JSON or not a valid request: `detail` names each field (`loc`) and what was "
         "expected.",
    401: "This endpoint needs an API key in the X-API-Key header.",
    403: "The API key is not valid.",
    404: "Not found: the item, or the customers listed in `unknown_customer_ids`.",
    413: "The body is larger than the service accepts (serving.max_request_bytes).",
    415: "The body is not JSON: send Content-Type: application/json.",
    500: "An unexpected failure (logged by the service; no detail reaches the client).",
    503: "Lookups by raw key are disabled: the service's identity salt is not the one the bundle was exported with.",
    504: "The request took longer than the service's timeout.",
}


def needs_key(endpoint: Endpoint, settings: Settings) -> bool:
    """Whether ``endpoint`` needs an ``X-API-Key`` under ``settings``.

    Parameters
    ----------
    endpoint
        One of :data:`ENDPOINTS`.
    settings
        The service's settings (``serving.recommend_requires_key``).

    Returns
    -------
    bool
        ``True`` for ``key="always"``, and for ``key="setting"`` when the setting is on.
    """
    return endpoint.key == "always" or (endpoint.key == "setting" and settings.serving.recommend_requires_key)


def _customer_variants(schema: dict[str, Any]) -> dict[str, Any]:
    """The recommend body as ``oneOf`` "by customer id" / "by raw key": each variant has its
    identifier (required, not null) and the shared fields, and no other field."""
    properties = dict(schema["properties"])
    identifiers = {name: properties.pop(name) for name in ("customer_id", "key")}
    variants = []
    for name, title in (("customer_id", "By customer id"), ("key", "By raw key")):
        field = {k: v for k, v in identifiers[name].items() if k not in ("anyOf", "default")}
        field.update(next(branch for branch in identifiers[name]["anyOf"] if branch.get("type") != "null"))
        variants.append({"type": "object", "title": title, "properties": {name: field, **properties},
                         "required": [name], "additionalProperties": False})
    return {"title": schema.get("title", "RecommendRequest"), "description": schema.get("description", ""),
            "oneOf": variants}


def _bodies() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(model name -> JSON schema reference, component schemas) of every request and response model."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (endpoint.request, "validation") for endpoint in ENDPOINTS if endpoint.request is not None]
    models += [(endpoint.response, "serialization") for endpoint in ENDPOINTS]
    models.append((schemas.ErrorResponse, "serialization"))
    refs, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components = copy.deepcopy(top.get("$defs", {}))
    components["RecommendRequest"] = _customer_variants(components["RecommendRequest"])
    return {model.__name__: ref for (model, _), ref in refs.items()}, components


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service under ``settings``.

    For the endpoints of :data:`ENDPOINTS` it holds:

    - request bodies as pydantic validates them (``strict``: no string for a number), the recommend
      body as a ``oneOf`` of "by customer id" and "by raw key";
    - every status an endpoint answers, each with its body: 400 (a body that is not valid, naming
      the field), 401/403 (no or a wrong ``X-API-Key`` where one is needed), 404 (unknown item or
      customers), 413 (body too large), 415 (not JSON), 503 (raw keys with the wrong identity
      salt), 500 and 504 (:class:`serving.schemas.ErrorResponse`);
    - the ``X-API-Key`` security scheme on the endpoints that need it
      (``serving.recommend_requires_key`` adds recommend and similar_items);

    and ``/livez``, ``/readyz`` and ``/metrics`` (GET, plain text).

    Parameters
    ----------
    settings
        The service's settings: they decide which endpoints need the key.

    Returns
    -------
    dict[str, Any]
        The document, ready for ``json.dumps``.
    """
    refs, components = _bodies()
    error = {"application/json": {"schema": refs["ErrorResponse"]}}
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        statuses = {500, 504, *endpoint.statuses}
        if endpoint.request is not None:
            statuses |= {400, 413, 415}
        keyed = needs_key(endpoint, settings)
        if keyed:
            statuses |= {401, 403}
        responses: dict[str, Any] = {"200": {"description": "The answer.",
                                             "content": {"application/json": {"schema": refs[endpoint.response.__name__]}}}}
        for status in sorted(statuses):
            responses[str(status)] = {"description": _REASONS[status], "content": error}
        operation: dict[str, Any] = {"operationId": endpoint.path.strip("/"), "summary": endpoint.summary,
                                     "tags": ["Service APIs"], "responses": responses}
        if endpoint.request is not None:
            # An empty body reads as {} (BentoML): required where the request has required fields.
            required = bool(components[endpoint.request.__name__].get("required")
                            or "oneOf" in components[endpoint.request.__name__])
            operation["requestBody"] = {"required": required, "content": {
                "application/json": {"schema": refs[endpoint.request.__name__]}}}
        if keyed:
            operation["security"] = [{API_KEY_SCHEME: []}]
        paths[endpoint.path] = {"post": operation}
    for path, summary in (("/livez", "The service process is alive."), ("/readyz", "The service can answer."),
                          ("/metrics", "Prometheus metrics.")):
        paths[path] = {"get": {"operationId": path.strip("/"), "summary": summary, "tags": ["Infrastructure"],
                               "responses": {"200": {"description": summary, "content": {"text/plain": {
                                   "schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Rapport", "version": "1",
                 "description": "Recommendations for the web shop and customer scores for the CRM, from the champion "
                                "models of a serving bundle. Every answer carries `metadata` (model versions, snapshot "
                                "date)."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }
