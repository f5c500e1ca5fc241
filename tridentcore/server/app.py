"""The HTTP API (FastAPI; OpenAPI at ``/docs``) over a live :class:`~tridentcore.runtime.build.Runtime`.

* ``POST /v1/images/generations`` and ``POST /v1/videos/generations``: OpenAI-style bodies; the
  call returns when the generation is done, with ``data`` (PNG or animated WebP, base64 or a URL)
  and per-stage timings. On emulated devices there are no pixels: ``data`` is ``[]`` and
  ``emulated`` is true (the timings are real engine times). (``routes/generation.py``)
* ``POST /v1/requests`` (202 with an id), ``GET /v1/requests/{id}``, ``GET /v1/requests/{id}/result``
  (``/result/{index}`` for the raw file), ``DELETE /v1/requests/{id}`` (cancel). (``routes/requests.py``)
* ``GET /v1/cluster``, ``GET /v1/models``, ``GET /metrics`` (Prometheus), ``GET /healthz``.
  (``routes/control.py``)

With an API key (``ServerConfig.api_key``), every route but ``GET /healthz`` needs
``Authorization: Bearer KEY``, ``/docs``, ``/redoc`` and ``/openapi.json`` included (:mod:`.auth`).
A generation of ``n`` images is ``n`` engine requests under one id (:mod:`.jobs`). Every error
body and status comes from :mod:`tridentcore.server.errors`. :func:`create_app` assembles the
app: state, routers, error handlers, the body-size limit, the key check, and the lifespan that starts the
runtime (and the run's records, stored as it goes: ``runtime/stored.py``) and, at shutdown,
drains it and stores the rest.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from fastapi import FastAPI

from ..core.defaults import DEFAULT_CLIENT_TIMEOUT_S, DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
from ..runtime.build import Runtime
from ..runtime.stored import RunRecords
from .auth import RequireApiKey
from .errors import BodyLimit, BodyWaits, HeadAsGet, install_error_handlers
from .jobs import ENDED, Job, Jobs
from .metrics import Metrics
from .routes import control, generation, requests

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = DEFAULT_MAX_BODY_BYTES

__all__ = ["ENDED", "Job", "MAX_BODY_BYTES", "ServerConfig", "create_app", "is_loopback"]


@dataclass
class ServerConfig:
    api_key: str | None = None  # when set, every route but /healthz needs "Authorization: Bearer KEY"
    max_body_bytes: int = MAX_BODY_BYTES
    db: str | None = None  # DuckDB results store the run is written to as it goes (by ``create_app``'s records)
    run_id: str | None = None  # the stored run's id (None: a new one); a client's rows can join on it
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    max_jobs: int = 10_000  # ended jobs kept for GET (oldest forgotten first)
    client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S  # a body must have arrived this long after its request began


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (binding elsewhere needs an API key)."""
    return host in ("localhost", "::1") or host.startswith("127.")


def create_app(runtime: Runtime, config: ServerConfig | None = None, records: RunRecords | None = None) -> FastAPI:
    """The app; its lifespan starts the runtime and ``records`` (the run's rows on their way to the
    results store; its journal reserved by the caller) and, at shutdown, drains the runtime and
    closes ``records`` (``records.problem`` then says if the run is not all stored)."""
    config = config or ServerConfig()
    engine = runtime.engine
    jobs = Jobs(runtime, config.max_jobs, records)
    jobs.attach()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await runtime.start()
        except Exception as exc:  # workers or Ray that could not start: the entry point says it in a line
            app.state.startup_error = exc
            with suppress(Exception):  # the workers that did start are stopped
                await engine.shutdown(0)
            raise
        try:
            if records is not None and not runtime.stop_requested:  # stopped while it loaded: nothing to store
                await records.start()
            try:
                yield
            except asyncio.CancelledError:  # a third signal (the process goes now): store what can be, below
                pass
        finally:
            try:
                await engine.shutdown(config.drain_timeout_s)
                if records is not None:
                    await records.close()
            except asyncio.CancelledError:  # the rest stays in the run's journal (the exit status says so)
                logger.warning("stopped before the run was stored")

    # redirect_slashes: Starlette answered `/v1/models/` with a 307 to a URL built from the request's Host
    # header (any host a client names); a path with a trailing slash is a 404 as any unknown path is
    app = FastAPI(title="TridentServe", version="0.1.0", lifespan=lifespan, redirect_slashes=False,
                  description="Stage-level serving for diffusion pipelines.")
    app.state.config = config
    app.state.startup_error = None  # what stopped the runtime's start (the lifespan's), if anything
    app.state.runtime = runtime
    app.state.jobs = jobs
    app.state.metrics = Metrics(engine)
    install_error_handlers(app)
    for module in (generation, requests, control):
        app.include_router(module.router)
    app.state.body_waits = BodyWaits()  # a stopping server answers the bodies still arriving (serve.py)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.client_timeout_s, waits=app.state.body_waits,
                       on_refused=engine.note_refused)
    if config.api_key:  # added late, so it runs early: no body is read for a request without the key
        app.add_middleware(RequireApiKey, api_key=config.api_key)
    app.add_middleware(HeadAsGet)  # outermost: a HEAD is a GET to every check after it
    return app
