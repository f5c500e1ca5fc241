"""Dependencies the routers share: the app's jobs, runtime and metrics, and the API-key check."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from fastapi import Request

from ..errors import ApiError

if TYPE_CHECKING:  # pragma: no cover
    from ...runtime.build import Runtime
    from ..jobs import Jobs
    from ..metrics import Metrics

__all__ = ["authorized", "jobs", "metrics", "runtime"]


def jobs(request: Request) -> Jobs:
    return request.app.state.jobs


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def authorized(request: Request) -> None:
    """State-changing routes need ``Authorization: Bearer KEY`` when the server has an API key."""
    api_key = request.app.state.config.api_key
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError("unauthorized", "this server needs Authorization: Bearer <api key> for changes")
