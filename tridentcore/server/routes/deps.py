"""Dependencies the routers share: the app's jobs, runtime and metrics, and the API-key check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from ..auth import key_matches
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
    """``Authorization: Bearer KEY`` when the server has an API key.

    The app's :class:`~tridentcore.server.auth.RequireApiKey` middleware already checks every route
    but ``/healthz``; the state-changing routers keep this dependency as a second check, so they
    stay closed in an app assembled without the middleware."""
    api_key = request.app.state.config.api_key
    if api_key and not key_matches(request.headers.get("authorization"), api_key):
        raise ApiError("unauthorized", "this server needs Authorization: Bearer <api key>")
