"""The BentoML service: recommendations for the web shop, scores for the CRM.

Start it with ``rapport serve start`` or ``bentoml serve serving.service:Rapport``
(``RAPPORT_BUNDLE_DIR`` names the bundle of ``rapport serve export``; default ``./bundle``). Each
worker loads the bundle once; no request touches a database or the tracking server. Endpoints
(POST, JSON): ``/recommend``, ``/similar_items``, ``/customer_scores`` (needs ``X-API-Key``),
``/info`` and ``/echo``; every answer carries ``metadata`` (model versions, snapshot date). Requests
are checked before they reach an endpoint (:mod:`serving.gate`, :mod:`serving.limits`,
:mod:`serving.patches`); ``/docs.json`` is the OpenAPI document (:mod:`serving.openapi`). What each
endpoint answers, and why the defaults of BentoML are changed, is in the README ("Serving").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import bentoml
from starlette.responses import JSONResponse
from threadpoolctl import threadpool_limits

from features.settings import load_settings
from serving import patches, schemas
from serving.batching import Gatherer
from serving.gate import RequestGate
from serving.limits import RequestSizeLimit
from serving.lookup import Lookups, RequestError, bundle_directory, worker_count

if TYPE_CHECKING:
    from serving.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metrics:
    """Rapport's Prometheus metrics, next to BentoML's own on ``/metrics``."""

    fallbacks: Any
    unknown_customers: Any
    answers: Any
    batch_sizes: Any


@functools.cache
def service_metrics() -> Metrics:
    """The metrics, created once per worker when the service starts: ``prometheus_client`` is imported
    only then, once BentoML has set up its multi-process collection (what the deprecated
    ``bentoml.metrics`` did for the service module).

    Returns
    -------
    Metrics
        Counters of fallbacks, unknown customers and recommend answers by path, and a histogram of
        the sizes of recommend blocks; the same object on every call (cached).
    """
    import prometheus_client

    return Metrics(
        fallbacks=prometheus_client.Counter(
            name="rapport_fallbacks",
            documentation="Recommendation answers that served the popular list (unknown customer, no usable "
                          "recent items).",
            labelnames=["endpoint"]),
        unknown_customers=prometheus_client.Counter(
            name="rapport_unknown_customers",
            documentation="Customers asked for that the models do not know (recommend: served a fallback or a "
                          "fold-in; customer_scores: answered 404).",
            labelnames=["endpoint"]),
        answers=prometheus_client.Counter(
            name="rapport_recommend_answers",
            documentation="Recommend requests by how they were answered: looked up in the default lists ranked at "
                          "export (default_list) or ranked by the model at request time (ranked).",
            labelnames=["path"]),
        batch_sizes=prometheus_client.Histogram(
            name="rapport_recommend_batch_size",
            documentation="Recommend requests ranked together in one block (requests that arrived while the worker "
                          "computed).",
            buckets=(1, 2, 4, 8, 16, 32)),
    )


#: Garbage-collector thresholds of a worker (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 1_000)
#: Paths answered without an OpenTelemetry span unless RAPPORT_SERVING_TRACING=1 (see :func:`_tracing`).
UNTRACED = ("/recommend", "/similar_items", "/customer_scores", "/echo")


# BentoML's and circus's private parts the service changes, each at its tested version only.
patches.apply()


def _stop_the_server(exc: Exception) -> None:
    """A worker that cannot load its bundle would be restarted by BentoML's arbiter again and again
    (and the server would never be ready): it asks the arbiter, its parent, to stop the whole server
    instead. Only inside a BentoML worker (an instance made in a test has no arbiter)."""
    from bentoml._internal.context import server_context

    log.critical("cannot load the serving bundle %s: %s; stopping the server", bundle_directory(), exc)
    if server_context.worker_index is not None:
        os.kill(os.getppid(), signal.SIGTERM)


def _tracing() -> dict[str, Any]:
    """BentoML's tracing settings: the API paths untraced unless ``RAPPORT_SERVING_TRACING=1``.

    BentoML records an OpenTelemetry span for every request even when no exporter is configured,
    and its timeout middleware keeps every request's timer, with the request's context and span,
    alive until the timeout passes: under load, tens of thousands of live spans, a growing heap and
    long garbage-collector passes that set the p99 of every endpoint. Hence no spans on the API
    paths, a cancelled timer once a request is answered (:mod:`serving.patches`) and a short
    timeout; the README's Performance section has the measurements.
    """
    if os.environ.get("RAPPORT_SERVING_TRACING", "").lower() in ("1", "true", "yes"):
        return {}
    return {"excluded_urls": [f"{path}$" for path in UNTRACED]}


@bentoml.service(
    name="rapport",
    # BentoML keeps each request's timer (and everything the request's context holds) until the
    # timeout passes, answered or not: a short timeout bounds that memory. Answers take milliseconds.
    traffic={"timeout": 10},
    # RAPPORT_SERVING__WORKERS (the serving.workers setting, passed on by rapport serve start): two where
    # there are two cores; the workers share the bundle's memory-mapped arrays.
    workers=worker_count(os.environ.get("RAPPORT_SERVING__WORKERS") or os.environ.get("RAPPORT_SERVING_WORKERS", "auto")),
    logging={"access": {"enabled": False}},
    tracing=_tracing(),
)
class Rapport:
    """Recommendations and customer scores of the champion models in a serving bundle.

    A worker answers from the bundle's lookups (:mod:`serving.lookup`: numpy, memory-mapped) as
    soon as it starts and loads the models right after, in a thread (and the scoring snapshot, for
    a bundle without score rows only); the
    requests that need them wait for them, so a restarted worker takes its share of the load again
    without waiting for its imports. A known customer's plain list (no filter, ``n`` up to
    ``serving.default_lists``) was ranked at export and is looked up, and so are the customers'
    scores; other concurrent ``recommend`` requests are ranked together (:mod:`serving.batching`). The bundle's objects are
    frozen out of the garbage collector's full passes once loaded, and its thresholds raised.

    Refusals happen before a body is read: a missing or wrong API key gets a 401 / 403 and a body
    that is not JSON a 415 (:mod:`serving.gate`); a body over ``serving.max_request_bytes`` gets a
    413 (:mod:`serving.limits`), malformed input a 400 that names the field (:mod:`serving.patches`).
    These are logged at INFO with the path, status and field names, never a value of the request.
    An unexpected failure is a 500 with a generic message (BentoML logs the traceback; it never
    reaches the client). BentoML serves ``/metrics`` (its request counters and latencies plus
    :func:`service_metrics`), ``/livez`` and ``/readyz``.
    """

    def __init__(self) -> None:
        # BentoML's server logging shows INFO of its own loggers only (root at WARNING): the service's
        # start and its refusals (4xx, at INFO) belong in the server log too.
        logging.getLogger("serving").setLevel(logging.INFO)
        # Multi-threaded BLAS on a small machine costs more in wake-ups than it gains on one request.
        self._blas = threadpool_limits(limits=1)
        self.settings = load_settings()
        # A worker answers from the lookups (numpy, memory-mapped) as soon as it starts: a restarted
        # worker takes its share of the load again within seconds. The models and the snapshot, with
        # their libraries (LightGBM, scikit-learn, SciPy, pandas: most of a worker's start), are
        # loaded right after in a thread; the requests that need them wait for them (see _runtime).
        try:
            self.lookups = Lookups.from_directory(bundle_directory(), self.settings)
        except Exception as exc:
            _stop_the_server(exc)
            raise
        self.runtime: Runtime | None = None
        self._loaded: concurrent.futures.Future[Runtime] = concurrent.futures.Future()
        # Concurrent recommend requests are ranked together (serving/batching.py).
        self._metrics = service_metrics()
        self._recommend = Gatherer(self._recommend_many, on_batch=self._metrics.batch_sizes.observe)
        # Requests allocate many short-lived objects; with the default thresholds the collector's
        # full passes come every second or so under load, each a pause for every waiting request.
        gc.set_threshold(*GC_THRESHOLDS)
        threading.Thread(target=self._load_runtime, name="rapport-bundle", daemon=True).start()

    def _load_runtime(self) -> None:
        """The models (and the scoring snapshot of a bundle without score rows): the thread started by
        ``__init__``."""
        started = time.perf_counter()
        try:
            from serving.runtime import Runtime

            runtime = Runtime.from_directory(bundle_directory(), self.settings, self.lookups)
        except Exception as exc:
            self._loaded.set_exception(exc)
            _stop_the_server(exc)
            return
        # The libraries loaded since (LightGBM's OpenMP, SciPy's BLAS) get one thread too.
        self._blas = threadpool_limits(limits=1)
        # The bundle lives as long as the worker: keep its objects out of the garbage collector's
        # full passes (each walks the whole bundle: a latency spike every few thousand requests).
        # No gc.collect() first: the worker already answers, and a full pass here would hold every
        # request for as long as it walks the heap; the few hundred objects of garbage the load
        # leaves are frozen with the rest, once (README, Performance).
        gc.freeze()
        self.runtime = runtime
        self._loaded.set_result(runtime)
        log.info("serving bundle %s: models %s, snapshot %s (models loaded in %.1f s)", bundle_directory(),
                 runtime.versions, runtime.snapshot_date, time.perf_counter() - started)

    async def _runtime(self) -> Runtime:
        """The loaded runtime (in a worker's first seconds: once the thread has loaded it)."""
        if self.runtime is not None:
            return self.runtime
        return await asyncio.wrap_future(self._loaded)

    def _recommend_many(self, requests: Any) -> Any:
        # Submitted only once the runtime is loaded (recommend awaits it first).
        if self.runtime is None:
            raise RuntimeError("recommend requests were submitted before the runtime was loaded")
        return self.runtime.recommend_many(requests)

    # --- helpers ----------------------------------------------------------------------------------

    def _error(self, ctx: bentoml.Context, exc: RequestError) -> JSONResponse:
        # A client's mistake, not the service's: INFO, the field and the status, nothing of the body.
        log.info("POST %s: %d, %s", ctx.request.url.path, exc.status, exc.field)
        # BentoML copies the context's status onto a response returned by an endpoint with a context.
        ctx.response.status_code = exc.status
        return JSONResponse(self.lookups.error(exc), status_code=exc.status)

    # --- endpoints --------------------------------------------------------------------------------

    @bentoml.api(input_spec=schemas.RecommendRequest, output_spec=schemas.RecommendResponse)
    async def recommend(self, ctx: bentoml.Context, **fields: Any) -> schemas.RecommendResponse | JSONResponse:
        """Top-n items for a customer (by id or raw key), with score, source, reason and a fallback flag.

        An unknown customer gets the popular list of their channel/country, flagged ``fallback``,
        or a fold-in of ``recent_items`` into the model.

        Parameters
        ----------
        ctx
            BentoML's request context (the status of a refusal is set on it).
        **fields
            The body of :class:`serving.schemas.RecommendRequest`: ``customer_id`` or ``key``,
            ``n`` 1..100, filters, ``recent_items``.

        Returns
        -------
        RecommendResponse or JSONResponse
            The items with their scores and ``metadata``; a JSON error (400 naming the field) for
            a request the bundle cannot answer.
        """
        request = schemas.RecommendRequest.model_construct(**fields)
        # A known customer's plain list was ranked at export: a lookup, no waiting for a block.
        answer = self.lookups.listed(request)
        if answer is None and request.key is not None and self.lookups.identity is None:
            # A bundle whose identity map is Parquet: the key is resolved once the runtime is loaded.
            answer = (await self._runtime()).listed(request)
        if answer is None:
            await self._runtime()
            answer = await self._recommend.submit(request)
            self._metrics.answers.labels(path="ranked").inc()
        else:
            self._metrics.answers.labels(path="default_list").inc()
        if isinstance(answer, RequestError):
            return self._error(ctx, answer)
        response, outcome = answer
        if outcome.fallback:
            self._metrics.fallbacks.labels(endpoint="recommend").inc()
        if outcome.unknown_customers:
            self._metrics.unknown_customers.labels(endpoint="recommend").inc(outcome.unknown_customers)
        return response

    @bentoml.api(input_spec=schemas.SimilarItemsRequest, output_spec=schemas.SimilarItemsResponse)
    async def similar_items(self, ctx: bentoml.Context, **fields: Any) -> schemas.SimilarItemsResponse | JSONResponse:
        """Items bought together with an item (product pages), with the filters of recommend.

        Parameters
        ----------
        ctx
            BentoML's request context.
        **fields
            The body of :class:`serving.schemas.SimilarItemsRequest`: ``item_id``, ``n``, filters.

        Returns
        -------
        SimilarItemsResponse or JSONResponse
            The items with their scores and ``metadata``; a JSON 404 for an unknown item, 400 for a
            bad field.
        """
        runtime = await self._runtime()
        try:
            return runtime.similar_items(schemas.SimilarItemsRequest.model_construct(**fields))
        except RequestError as exc:
            return self._error(ctx, exc)

    @bentoml.api(input_spec=schemas.CustomerScoresRequest, output_spec=schemas.CustomerScoresResponse)
    async def customer_scores(self, ctx: bentoml.Context,
                              **fields: Any) -> schemas.CustomerScoresResponse | JSONResponse:
        """CLV and churn outputs of 1..1,000 customers (the rows of rapport score). Needs X-API-Key.

        A lookup in the rows the bundle's export scored (no model is called, the worker answers
        before its models are loaded); a bundle written before them is scored per request, off the
        event loop, once the models are loaded.

        Parameters
        ----------
        ctx
            BentoML's request context.
        **fields
            The body of :class:`serving.schemas.CustomerScoresRequest`: ``customer_ids``.

        Returns
        -------
        CustomerScoresResponse or JSONResponse
            One row per customer (CLV with interval and next order date, churn probability, risk
            band, reasons); a JSON 404 naming the unknown customers.
        """
        customer_ids = fields["customer_ids"]
        try:
            if self.lookups.scores is not None:
                return self.lookups.customer_scores(customer_ids)
            runtime = await self._runtime()
            # Tens of milliseconds of model calls: in a thread, so the other requests go on meanwhile.
            return await asyncio.to_thread(runtime.recomputed_scores, customer_ids)
        except RequestError as exc:
            if exc.unknown_customer_ids:
                self._metrics.unknown_customers.labels(endpoint="customer_scores").inc(len(exc.unknown_customer_ids))
            return self._error(ctx, exc)

    @bentoml.api(route="/info")
    async def info(self) -> schemas.InfoResponse:
        """Model names and versions, the snapshot date and the bundle's counts.

        Returns
        -------
        InfoResponse
            What the worker serves.
        """
        return self.lookups.info()

    @bentoml.api(input_spec=schemas.EchoRequest, output_spec=schemas.EchoResponse)
    async def echo(self, **fields: Any) -> schemas.EchoResponse:
        """Returns the message: the cost of the HTTP layer alone (the load test's ceiling).

        Parameters
        ----------
        **fields
            The body of :class:`serving.schemas.EchoRequest`: ``message``.

        Returns
        -------
        EchoResponse
            The message and ``metadata``.
        """
        return schemas.EchoResponse(message=fields.get("message", ""), metadata=self.lookups.metadata)


# The limit, the keys and the spec are read from the settings when the app is built (in each
# worker), not at import. The gate runs first: a request without its key is refused unread.
# (``@bentoml.service`` made ``Rapport`` a BentoML Service object; type checkers still see the class.)
_service: Any = Rapport
_service.add_asgi_middleware(RequestGate)
_service.add_asgi_middleware(RequestSizeLimit)
