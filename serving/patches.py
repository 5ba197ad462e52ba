"""Rapport's changes to private parts of BentoML and of circus, its process manager.

Each patch is tested with one range of versions (the minor that ``pyproject.toml`` pins). With
another version installed, or when the patched class or method is gone, the patch is skipped with a
warning that names the package, both versions and the behaviour lost: the service still starts.
:func:`apply` is called by :mod:`serving.service` when it is imported (in the arbiter and in each
worker, before BentoML builds the app or the arbiter).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

#: The BentoML releases the patches are tested with: the range pinned in pyproject.toml and bentofile.yaml.
BENTOML_TESTED = "~=1.4.40"
#: The circus releases (the ``kantoku`` distribution BentoML 1.4 depends on) the arbiter's patch is tested with.
CIRCUS_TESTED = "~=0.18.3"
#: Seconds between two checks of BentoML's arbiter for workers to restart (BentoML 1.4 sets 10).
ARBITER_CHECK_DELAY = 1.0


@dataclass(frozen=True)
class Patch:
    """One change to a class of another package, applied only to the versions it was tested with."""

    name: str
    #: The distribution whose version is checked, and how the warning names the package.
    distribution: str
    package: str
    tested: str
    #: ``module:Class`` that is changed, and the attributes the replacement calls or replaces.
    target: str
    needs: tuple[str, ...]
    #: What the service does without the patch (said in the warning when it is skipped).
    lost: str
    install: Callable[[Any], None]
    #: A keyword argument the patched ``__init__`` must still accept, if any.
    keyword: str | None = None

    @property
    def flag(self) -> str:
        """The attribute set on the class once patched: importing the service twice patches once."""
        return f"_rapport_{self.name}"


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _tested(version: str | None, tested: str) -> bool:
    if version is None:
        return False
    try:
        return SpecifierSet(tested).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _locate(patch: Patch) -> tuple[type | None, str]:
    """The class to change, or None and what is missing from the installed package."""
    module_name, _, class_name = patch.target.partition(":")
    try:
        owner = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None, f"has no {patch.target}"
    missing = [name for name in patch.needs if not hasattr(owner, name)]
    if missing:
        return None, f"has no {patch.target}.{', '.join(missing)}"
    if patch.keyword is not None:
        parameters: Mapping[str, inspect.Parameter]
        try:
            parameters = inspect.signature(owner.__init__).parameters
        except (TypeError, ValueError):
            parameters = {}
        if patch.keyword not in parameters:
            return None, f"has no {patch.keyword} argument to {patch.target}"
    return owner, ""


def apply(patches: Iterable[Patch] | None = None) -> list[str]:
    """Apply every patch whose package is at a tested version; the names of those applied (or applied
    before). A patch of an untested version, or of a class that has changed, is skipped with a warning."""
    applied = []
    for patch in PATCHES if patches is None else patches:
        version = installed_version(patch.distribution)
        if not _tested(version, patch.tested):
            found = f"{patch.package} {version} is installed" if version else f"{patch.package} is not installed"
            log.warning("%s, the patch %r is tested with %s %s: skipped, so %s", found, patch.name,
                        patch.distribution, patch.tested, patch.lost)
            continue
        owner, missing = _locate(patch)
        if owner is None:
            log.warning("%s %s %s, which the patch %r changes: skipped, so %s", patch.package, version, missing,
                        patch.name, patch.lost)
            continue
        if not vars(owner).get(patch.flag, False):
            patch.install(owner)
            setattr(owner, patch.flag, True)
        applied.append(patch.name)
    return applied


# --- the patches ------------------------------------------------------------------------------------


def _cancel_answered_timers(middleware: Any) -> None:
    """BentoML's ``TimeoutMiddleware`` (1.4) schedules a timer per request with ``loop.call_later`` and
    never cancels it: every answered request's waiter, and through it the request's context, stays in
    the event loop's heap until the timeout passes (tens of thousands of objects at a few thousand
    requests/s, which the garbage collector's passes walk: the p99 of every endpoint). The same
    middleware, with its timer cancelled once the response has started; a request that runs past the
    timeout still gets BentoML's 504."""
    from starlette.responses import JSONResponse

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                        status_code=504)
                await response(scope, receive, send)
        else:
            timer.cancel()
            await fut

    middleware.__call__ = call


def _invalid_body_answers(factory: Any) -> None:
    """BentoML (1.4) answers a body that fails validation with a 400 whose ``loc`` mixes strings and
    numbers, and logs it at ERROR with a traceback whose exception text holds the body's values (a
    phone number in the server log). The endpoint call is wrapped here: a body that fails validation
    gets a 400 of :class:`serving.schemas.ErrorResponse` naming each field and what was expected (no
    value), logged at INFO with the field names only; BentoML's other 4xx likewise."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.responses import JSONResponse

    endpoint = factory.api_endpoint

    async def api_endpoint(self: Any, name: str, request: Any) -> Any:
        try:
            return await endpoint(self, name, request)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            detail = [{"loc": [str(part) for part in error["loc"]] or ["body"], "msg": error["msg"],
                       "type": error["type"]} for error in errors]
            fields = sorted({".".join(item["loc"]) for item in detail})
            log.info("POST %s: 400, %d invalid field(s): %s", request.url.path, len(detail), ", ".join(fields[:20]))
            message = "; ".join(f"{'.'.join(item['loc'])}: {item['msg']}" for item in detail[:20])
            return JSONResponse({"error": f"invalid request: {message}", "detail": detail}, status_code=400)
        except BentoMLException as exc:
            status = int(exc.error_code.value)
            if status >= 500:
                raise
            log.info("POST %s: %d, %s", request.url.path, status, type(exc).__name__)
            return JSONResponse({"error": exc.error_code.phrase, "detail": [{"loc": ["body"], "msg": exc.error_code.phrase}]},
                                status_code=status)

    factory.api_endpoint = api_endpoint


def _prompt_restarts(arbiter: Any) -> None:
    """BentoML's arbiter (circus) restarts a worker that died only at its next check, every 10 s as
    BentoML sets it (a delay meant for its runner processes, which 1.4 services do not have): up to
    10 s with one worker fewer. The arbiter's checks every :data:`ARBITER_CHECK_DELAY` instead. The
    service module is imported by the arbiter's process before it creates the arbiter."""
    init = arbiter.__init__

    def __init__(self: Any, *args: Any, check_delay: float = 1.0, **kwargs: Any) -> None:
        init(self, *args, check_delay=min(check_delay, ARBITER_CHECK_DELAY), **kwargs)

    arbiter.__init__ = __init__


PATCHES = (
    Patch(name="cancel_answered_timers", distribution="bentoml", package="BentoML", tested=BENTOML_TESTED,
          target="bentoml._internal.server.http.traffic:TimeoutMiddleware", needs=("__call__", "_set_timer_out"),
          lost="every answered request's timer and context stay in memory until the timeout passes "
               "(a growing heap and long garbage-collector pauses under load)",
          install=_cancel_answered_timers),
    Patch(name="invalid_body_answers", distribution="bentoml", package="BentoML", tested=BENTOML_TESTED,
          target="_bentoml_impl.server.app:ServiceAppFactory", needs=("api_endpoint",),
          lost="a body that fails validation gets BentoML's own 400 instead of one naming each field, and "
               "BentoML logs it at ERROR with the request's values",
          install=_invalid_body_answers),
    Patch(name="prompt_restarts", distribution="kantoku", package="circus (kantoku)", tested=CIRCUS_TESTED,
          target="circus.arbiter:Arbiter", needs=("__init__",), keyword="check_delay",
          lost=f"a worker that died is restarted at the arbiter's own check interval, not within "
               f"{ARBITER_CHECK_DELAY:g} s",
          install=_prompt_restarts),
)
