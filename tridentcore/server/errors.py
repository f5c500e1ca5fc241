"""HTTP status mapping, in one place: every error the API returns is an :class:`ApiError` with a
code from :data:`STATUS`, and every response body has the same shape::

    {"error": {"code": "invalid", "message": "...", "field": "size", "problems": [...]}}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
