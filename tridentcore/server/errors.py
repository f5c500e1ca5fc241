"""HTTP status mapping, in one place: every error the API returns is an :class:`ApiError` with a
code from :data:`STATUS`, and every response body has the same shape::

    {"error": {"code": "invalid", "message": "...", "field": "size", "problems": [...]}}

:func:`install_error_handlers` puts the mapping on an app (routes only raise ``ApiError``; a body
that is not JSON, an unknown path and a method a path does not take answer in the same shape), and
:class:`BodyLimit` answers an oversized or late body with the same shape. :func:`responses` declares a
route's error statuses in the OpenAPI document, from the same table. :class:`HeadAsGet` answers HEAD
wherever GET is answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from ..core.defaults import DEFAULT_CLIENT_TIMEOUT_S
from ..core.errors import TridentError

# error code -> HTTP status (the one table)
STATUS: dict[str, int] = {
    "bad_request": 400,  # the body is not JSON (or not UTF-8)
    "invalid": 422,  # a field is out of bounds; the message names the field and the limit
    "unknown_model": 404,
    "not_found": 404,  # no such request, or no such path
    "method_not_allowed": 405,  # the path exists, the method does not (the Allow header lists them)
    "gone": 410,  # the result was dropped (results are kept for a bounded number of requests)
    "not_ready": 409,  # the request has not finished yet
    "too_large": 413,  # request body over the limit
    "unsupported_encoding": 415,  # a body sent with a Content-Encoding (gzip ...): sent plain, it is read
    "body_timeout": 408,  # the request body did not arrive in time (a stalled or trickling client)
    "head_timeout": 408,  # the request line and headers did not arrive in time (answered by ``protocol``)
    "queue_full": 429,  # bounded queue: come back after Retry-After seconds
    "unauthorized": 401,
    "shutting_down": 503,
    "no_devices": 503,  # every device lost for --no-device-timeout seconds: come back after Retry-After
    "records_unwritable": 503,  # with --db: the run's journal cannot be written (a full disk); come back later
    # how a generation ended, when it did not end "done"
    "rejected": 503,  # the policy turned it away (no capacity to meet it, can never fit)
    "failed": 500,  # a stage failed too often, or the server shut down under it
    "internal": 500,  # a bug: an exception no handler expected (the server's log has the traceback)
    "cancelled": 409,
    "no_pixels": 409,  # emulated devices take the time but make no pixels
}


@dataclass
class ApiError(TridentError):
    code: str
    message: str
    field: str | None = None
    problems: list[dict] = dataclasses.field(default_factory=list)
    retry_after_s: float | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def status(self) -> int:
        return STATUS[self.code]


def error_response(err: ApiError) -> JSONResponse:
    body: dict = {"code": err.code, "message": err.message}
    if err.field is not None:
        body["field"] = err.field
    if err.problems:
        body["problems"] = err.problems
    body.update(err.extra)
    headers = {}
    if err.retry_after_s is not None:  # whole seconds (RFC 9110), rounded up: not back too early
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s - 1e-6)))
        body["retry_after_s"] = round(err.retry_after_s, 3)
    if err.code == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": body}, status_code=err.status, headers=headers)


MAX_PROBLEMS = 20  # problems listed in one answer; the rest counted (outside test: 111,789 unknown keys
                  # in a 1 MB body answered 11 MB, each listed twice, about 0.25 s of the event loop each)


def invalid(problems: list[tuple[str, str]], more: int = 0) -> ApiError:
    """422 from ``(field, message)`` pairs: the first names the field; at most :data:`MAX_PROBLEMS`
    are listed, each field name cut to 80 characters, and the others (with ``more`` not given
    here) are counted."""
    more += max(0, len(problems) - MAX_PROBLEMS)
    shown = [(f if len(f) <= 80 else f[:77] + "...", m) for f, m in problems[:MAX_PROBLEMS]]
    items = [{"field": f, "message": m} for f, m in shown]
    message = "; ".join(f"{f}: {m}" for f, m in shown) + (f"; and {more} more problems" if more else "")
    return ApiError("invalid", message, shown[0][0], items, extra={"more_problems": more} if more else {})


# what the framework raises itself (routing, body parsing), as codes of the table
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "too_large"}


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a route raises to its status and body: :class:`ApiError` by :data:`STATUS`,
    a request that fails validation to 422 naming each field, a body that is not JSON to 400, the
    framework's own errors (an unknown path 404, a method the path does not take 405), and any other
    exception (a bug) to 500 ``internal``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        errors = exc.errors()
        for e in errors[:MAX_PROBLEMS]:
            if e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",):
                return error_response(ApiError("bad_request", "the body is empty: send a JSON object", "body"))
            if e.get("type") == "json_invalid":
                pos, why = (e.get("loc") or ("body", "?"))[-1], (e.get("ctx") or {}).get("error", "")
                return error_response(ApiError("bad_request", f"the body is not JSON: {why} at character {pos}",
                                               "body"))
            loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "path", "query")]
            msg = e.get("msg", "invalid")
            if not loc and tuple(e.get("loc", ()))[:1] == ("body",) and isinstance(e.get("input"), (str, bytes)):
                # the framework parses a body as JSON only when it is sent as JSON
                ctype = request.headers.get("content-type") or "none"
                if ctype.split(";")[0].strip().lower() == "application/json":  # JSON, but a string, not an object
                    msg = "the body must be a JSON object ({...}), not a JSON string"
                else:
                    msg = f"the body must be a JSON object sent with Content-Type: application/json (got {ctype[:60]})"
            if e.get("type") == "value_error":  # our own validators' message, without pydantic's prefix
                msg = str((e.get("ctx") or {}).get("error", msg))
            problems.append((".".join(loc) or "body", msg))
        return error_response(invalid(problems or [("body", "invalid request")], len(errors) - len(errors[:MAX_PROBLEMS])))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code)
        if code is None:  # not one the app expects: the same shape, the framework's status
            return JSONResponse({"error": {"code": "error", "message": str(exc.detail)}},
                                status_code=exc.status_code, headers=exc.headers)
        path = request.url.path
        field, headers = None, dict(exc.headers or {})
        if exc.status_code == 400:  # the framework could not read the body (not UTF-8, a number too long)
            message, field = f"the body could not be read as JSON: {_unreadable(exc)}", "body"
        elif exc.status_code == 404:
            message = f"no such path: {path}"
        elif exc.status_code == 405:  # Allow: every route's methods on the path (not only the first's)
            allow = ", ".join(_methods_on(request)) or headers.get("Allow", "")
            message = f"{request.method} is not allowed on {path}; allowed: {allow}"
            headers["Allow"] = allow
        else:
            message = str(exc.detail)
        resp = error_response(ApiError(code, message, field))
        resp.headers.update(headers)
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the framework still re-raises it after this answer, so the server logs the traceback
        return error_response(ApiError("internal", f"the server failed on this request ({type(exc).__name__}); "
                                                   "this is a bug"))

    _document_errors(app)


def _unreadable(exc: HTTPException) -> str:
    """Why the framework could not read a body as JSON, from the error it raised this one from."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 (byte 0x{cause.object[cause.start]:02x} at byte {cause.start})"
    if isinstance(cause, ValueError) and "digits" in str(cause):  # Python's limit on an integer's digits
        return f"a number in it has more than {sys.get_int_max_str_digits()} digits"
    return str(exc.detail)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


@functools.lru_cache(maxsize=256)
def _template(path: str) -> re.Pattern:
    """An OpenAPI path template (``/v1/requests/{job_id}``) as a pattern of the paths it covers."""
    return re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part)
                              for part in re.split(r"(\{[^}]*\})", path)))


def _methods_on(request: Request) -> list[str]:
    """The methods the OpenAPI document declares on the request's path (HEAD wherever GET is)."""
    methods: set[str] = set()
    for path, item in request.app.openapi().get("paths", {}).items():
        if _template(path).fullmatch(request.url.path):
            methods |= {m.upper() for m in item if m.upper() in _METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _document_errors(app: FastAPI) -> None:
    """The OpenAPI document says what the handlers do: the 422 that FastAPI declares by itself for
    every route with parameters (``{"detail": [...]}``) is :class:`ErrorBody`."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas["ErrorBody"] = body
        framework = "#/components/schemas/HTTPValidationError"
        for operations in doc.get("paths", {}).values():
            for op in operations.values():
                for resp in op.get("responses", {}).values():
                    for media in resp.get("content", {}).values():
                        if media.get("schema", {}).get("$ref") == framework:
                            media["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        if getattr(getattr(app.state, "config", None), "api_key", None):
            # a keyed server answers 401 on every route but /healthz (server/auth.py)
            doc["components"].setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
            for path, operations in doc.get("paths", {}).items():
                if path == "/healthz":
                    continue
                for op in operations.values():
                    op["security"] = [{"bearer": []}]
                    op.setdefault("responses", {}).setdefault("401", {
                        "description": "error: unauthorized",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


class ErrorProblem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # a generation that ended badly adds id, state, request_ids

    code: str
    message: str
    field: str | None = None
    problems: list[ErrorProblem] | None = None
    more_problems: int | None = None  # problems past the first 20, not listed
    retry_after_s: float | None = None  # with a Retry-After header: its figure before rounding up


class ErrorBody(BaseModel):
    """Every error's body (OpenAPI)."""

    error: ErrorDetail


def responses(*codes: str) -> dict[int, dict]:
    """The OpenAPI ``responses=`` of a route that may answer ``codes`` (of :data:`STATUS`): each
    status once, described by its codes."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(STATUS[code], []).append(code)
    return {status: {"model": ErrorBody, "description": "error: " + ", ".join(cs)}
            for status, cs in sorted(by_status.items())}


BODY_TIMEOUT_S = DEFAULT_CLIENT_TIMEOUT_S  # a request's body must have arrived this long after it began


class HeadAsGet:
    """ASGI middleware: HEAD is answered as GET without the body (health probes use HEAD)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        return await self.app({**scope, "method": "GET"}, receive, headers_only)


class BodyWaits:
    """The requests whose body is still arriving (their tasks), so that a server that begins to stop
    can answer them at once (:meth:`stop`) rather than hold its shutdown for them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()


MAX_BODY_KEYS = 256  # keys in one object of a body: a request has about 20 fields


def _body_problem(body: bytes) -> ApiError | None:
    """What the framework would answer badly or slowly, found in one parse of a JSON body: a key given
    twice in one object (at any depth; read by the framework, the last value won without a word), an
    object of more than :data:`MAX_BODY_KEYS` keys (outside test: 111,789 unknown keys in 1 MB took
    the server about 0.25 s each to list), a body nested past the parser's depth (the framework said
    only "There was an error parsing the body"). None otherwise, and for a body that is not JSON (the
    framework says what is wrong with it)."""
    twice: list[str] = []
    widest = 0

    def pairs(items: list[tuple[str, object]]) -> dict:
        nonlocal widest
        widest = max(widest, len(items))
        if widest > MAX_BODY_KEYS:
            return {}  # (answered below; not worth checking further)
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and (key[:80] or '""') not in twice:
                twice.append(key[:80] or '""')  # (an empty key is named as "")
            seen.add(key)
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except RecursionError:
        return ApiError("bad_request", "the body is JSON nested too deeply to read; send a JSON object of the "
                                       "request's fields", "body")
    except ValueError:
        return None
    if widest > MAX_BODY_KEYS:
        return invalid([("body", f"an object of {widest} keys; a request's objects have at most {MAX_BODY_KEYS}")])
    if twice:
        return invalid([(key, "given twice in the body; give it once") for key in twice])
    return None


class BodyLimit:
    """ASGI middleware: a body over the limit gets 413 (``too_large``) before the app reads it; one
    that has not all arrived ``timeout_s`` after the request began gets 408 (``body_timeout``), and
    one still arriving when the server begins to stop (``waits.stop()``) gets 503 (``shutting_down``)
    at once: a client that stalls or trickles its body holds neither memory nor the shutdown. A JSON
    body that gives a key twice (as trace and spec files) or has an object of too many keys gets 422
    (``invalid``), one nested too deeply to read 400 (``bad_request``): :func:`_body_problem`."""

    def __init__(self, app, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S, waits: BodyWaits | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.waits = waits
        self.on_refused = on_refused  # told of each 503 shutting_down (the engine counts refusals)

    async def _shutting_down(self, message: str, scope, receive, send):
        if self.on_refused is not None:
            self.on_refused("shutting_down")
        return await self._refuse(ApiError("shutting_down", message), scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        names = {name for name, _ in scope.get("headers", ())}
        if b"content-length" in names and b"transfer-encoding" in names:
            # RFC 9112 6.3: the framings disagree (request smuggling behind a proxy); refuse and close
            return await self._refuse(ApiError("bad_request", "a request with both Content-Length and "
                                                              "Transfer-Encoding; send one of them"),
                                      scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await self._too_large(scope, receive, send)
            if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                # (outside test: a gzip body was read as text, "not UTF-8", and a plain one labelled gzip taken)
                return await self._refuse(ApiError("unsupported_encoding", f"Content-Encoding "
                                                   f"{value.decode('latin-1')[:40]!r} is not read; send the body "
                                                   "as it is (no Content-Encoding)"), scope, receive, send)
        waits = self.waits
        if waits is not None and waits.stopping:
            return await self._shutting_down("the server is shutting down", scope, receive, send)
        body = bytearray()
        task = asyncio.current_task()
        if waits is not None:
            waits.tasks.add(task)
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    body += msg.get("body", b"")
                    if len(body) > limit:
                        return await self._too_large(scope, receive, send)
                    if not msg.get("more_body"):
                        break
        except TimeoutError:
            return await self._refuse(ApiError("body_timeout", f"the request body did not arrive within "
                                                               f"{self.timeout_s:g} s ({len(body)} bytes came)"),
                                      scope, receive, send)
        except asyncio.CancelledError:
            if waits is None or not waits.stopping:
                raise
            task.uncancel()  # cancelled by waits.stop(): answer it
            return await self._shutting_down("the server is shutting down; the request body had not all arrived",
                                             scope, receive, send)
        finally:
            if waits is not None:
                waits.tasks.discard(task)
        problem = _body_problem(bytes(body))
        if problem is not None:
            return await self._refuse(problem, scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(err: ApiError, scope, receive, send):
        resp = error_response(err)
        resp.headers["Connection"] = "close"
        await resp(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        resp = error_response(ApiError("too_large", f"request body is over {self.max_bytes} bytes"))
        await resp(scope, receive, send)
