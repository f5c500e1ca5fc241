"""HTTP status mapping, in one place: every error the API returns is an :class:`ApiError` with a
code from :data:`STATUS`, and every response body has the same shape::

    {"error": {"code": "invalid", "message": "...", "field": "size", "problems": [...]}}

:func:`install_error_handlers` puts the mapping on an app (routes only raise ``ApiError``), and
:class:`BodyLimit` answers an oversized body with the same shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..core.errors import TridentError

# error code -> HTTP status (the one table)
STATUS: dict[str, int] = {
    "invalid": 422,  # a field is out of bounds; the message names the field and the limit
    "unknown_model": 404,
    "not_found": 404,  # no such request
    "gone": 410,  # the result was dropped (results are kept for a bounded number of requests)
    "not_ready": 409,  # the request has not finished yet
    "too_large": 413,  # request body over the limit
    "queue_full": 429,  # bounded queue: come back after Retry-After seconds
    "unauthorized": 401,
    "shutting_down": 503,
    # how a generation ended, when it did not end "done"
    "rejected": 503,  # the policy turned it away (no capacity to meet it, can never fit)
    "failed": 500,  # a stage failed too often, or the server shut down under it
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
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, int(round(err.retry_after_s))))
    if err.code == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": body}, status_code=err.status, headers=headers)


def invalid(problems: list[tuple[str, str]]) -> ApiError:
    """422 from ``(field, message)`` pairs: the first names the field, all are listed."""
    items = [{"field": f, "message": m} for f, m in problems]
    first_field, first_msg = problems[0]
    message = "; ".join(f"{f}: {m}" for f, m in problems)
    return ApiError("invalid", message, first_field, items)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a route raises to its status and body: :class:`ApiError` by :data:`STATUS`,
    a request that fails validation to 422 naming each field."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "path", "query")]
            problems.append((".".join(loc) or "body", e.get("msg", "invalid")))
        return error_response(invalid(problems or [("body", "invalid request")]))


class BodyLimit:
    """ASGI middleware: a body over the limit gets 413 (``too_large``) before the app reads it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await self._too_large(scope, receive, send)
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if len(body) > limit:
                return await self._too_large(scope, receive, send)
            if not msg.get("more_body"):
                break
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        resp = error_response(ApiError("too_large", f"request body is over {self.max_bytes} bytes"))
        await resp(scope, receive, send)
