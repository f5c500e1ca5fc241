"""The HTTP API (FastAPI; OpenAPI at ``/docs``) over a live :class:`~tridentcore.runtime.build.Runtime`.

* ``POST /v1/images/generations`` and ``POST /v1/videos/generations``: OpenAI-style bodies; the
  call returns when the generation is done, with ``data`` (PNG or animated WebP, base64 or a URL)
  and per-stage timings. On emulated devices there are no pixels: ``data`` is ``[]`` and
  ``emulated`` is true (the timings are real engine times).
* ``POST /v1/requests`` (202 with an id), ``GET /v1/requests/{id}``, ``GET /v1/requests/{id}/result``
  (``/result/{index}`` for the raw file), ``DELETE /v1/requests/{id}`` (cancel).
* ``GET /v1/cluster``, ``GET /v1/models``, ``GET /metrics`` (Prometheus), ``GET /healthz``.

A generation of ``n`` images is ``n`` engine requests (seeds ``seed .. seed+n-1``) under one id.
Every error body and status comes from :mod:`tridentcore.server.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import random
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..core.types import Shape, parse_size
from ..runtime.build import Runtime
from ..runtime.engine import Accepted, Submission
from ..runtime.models import ModelEntry, check_request
from .errors import ApiError, error_response, invalid
from .metrics import Metrics
from .schemas import GenerationRequest, ImageGenerationRequest, VideoGenerationRequest

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


@dataclass
class ServerConfig:
    api_key: str | None = None  # when set, state-changing requests need "Authorization: Bearer KEY"
    max_body_bytes: int = MAX_BODY_BYTES
    db: str | None = None  # DuckDB results store written at shutdown
    run_id: str | None = None  # the stored run's id (None: a new one); a client's rows can join on it
    drain_timeout_s: float = 30.0
    max_jobs: int = 10_000  # ended jobs kept for GET (oldest forgotten first)


@dataclass
class Job:
    id: str
    kind: str  # image | video
    model: str
    request_ids: tuple[int, ...]
    response_format: str
    created_unix_s: float
    meta: dict = field(default_factory=dict)
    final: dict[int, dict] = field(default_factory=dict)  # items the engine has forgotten, as they ended


class _BodyLimit:
    """ASGI middleware: a body over the limit gets 413 before the app reads it."""

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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (binding elsewhere needs an API key)."""
    return host in ("localhost", "::1") or host.startswith("127.")


ENDED = ("done", "failed", "rejected", "cancelled")


def create_app(runtime: Runtime, config: ServerConfig | None = None) -> FastAPI:
    """The app; its lifespan starts the runtime and, at shutdown, drains it and writes the store."""
    config = config or ServerConfig()
    engine = runtime.engine
    jobs: OrderedDict[str, Job] = OrderedDict()
    counter = {"next": 0}
    metrics = Metrics(engine)
    owner: dict[int, Job] = {}  # request id -> its job, until the engine forgets the request

    def on_forget(rid: int) -> None:
        job = owner.pop(rid, None)
        if job is not None:
            job.final[rid] = engine.describe(rid)

    engine.forget_listeners.append(on_forget)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await engine.shutdown(config.drain_timeout_s)
            if config.db:
                try:
                    run_id = engine.write_store(config.db, config.run_id)
                    logger.warning("wrote run %s to %s", run_id, config.db)
                except Exception:  # noqa: BLE001 - report, never hide a lost run
                    logger.exception("could not write the run to %s", config.db)

    app = FastAPI(title="TridentServe", version="0.1.0", lifespan=lifespan,
                  description="Stage-level serving for diffusion pipelines.")
    app.state.runtime = runtime
    app.state.jobs = jobs
    app.state.metrics = metrics

    # ------------------------------------------------------------------ errors (one mapping)
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "path", "query")]
            problems.append((".".join(loc) or "body", e.get("msg", "invalid")))
        return error_response(invalid(problems or [("body", "invalid request")]))

    async def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError("unauthorized", "this server needs Authorization: Bearer <api key> for changes")

    # ------------------------------------------------------------------ helpers
    def entry_for(model: str | None, kind: str | None) -> ModelEntry:
        models = runtime.models
        if model is None:
            for e in models.values():
                if kind is None or e.kind == kind:
                    return e
            raise ApiError("unknown_model", f"no {kind or ''} model is served; served: {', '.join(models)}".replace("  ", " "),
                           "model")
        e = models.get(model)
        if e is None:
            raise ApiError("unknown_model", f"model {model!r} is not served; served: {', '.join(models)}", "model")
        if kind is not None and e.kind != kind:
            raise ApiError("invalid", f"model {model!r} makes {e.kind}s; use the {e.kind}s endpoint", "model",
                           [{"field": "model", "message": f"{model} is a {e.kind} model"}])
        return e

    def submit(body: GenerationRequest | ImageGenerationRequest, kind: str | None) -> Job:
        entry = entry_for(body.model, kind)
        problems: list[tuple[str, str]] = []
        width, height = entry.default_width, entry.default_height
        if body.size is not None:
            try:
                width, height = parse_size(body.size)
            except ValueError as exc:
                problems.append(("size", str(exc)))
        frames = getattr(body, "frames", None)
        if frames is None:
            frames = entry.default_frames
        steps = body.steps or entry.default_steps
        if not problems:
            cost, gpu_kind = runtime.pricing(entry.name)
            problems += [(p.field, p.message) for p in check_request(entry, cost, gpu_kind, width, height, frames,
                                                                       steps, body.prompt)]
        if problems:
            raise invalid(problems)
        seed = body.seed if body.seed is not None else random.SystemRandom().randrange(2**31 - body.n)
        shape = Shape(height, width, frames, steps)
        slo_s = None if body.slo_ms is None else body.slo_ms / 1000.0
        items = [Submission(entry.name, body.prompt, shape, seed + i, body.guidance, body.negative_prompt, slo_s)
                 for i in range(body.n)]
        got = engine.submit(items)
        if not isinstance(got, Accepted):
            raise ApiError(got.code, got.reason, retry_after_s=got.retry_after_s or None)
        job_id = f"gen-{counter['next']}"
        counter["next"] += 1
        job = Job(job_id, entry.kind, entry.name, got.ids, body.response_format, time.time(),
                  {"size": f"{width}x{height}", "frames": frames, "steps": steps, "seed": seed})
        jobs[job_id] = job
        for rid in got.ids:
            owner[rid] = job
        while len(jobs) > config.max_jobs:
            oldest = next(iter(jobs.values()))
            if any(item(oldest, r)["state"] not in ENDED for r in oldest.request_ids):
                break
            jobs.popitem(last=False)
            for r in oldest.request_ids:
                owner.pop(r, None)
        return job

    def item(job: Job, rid: int) -> dict:
        """One request of a job: live from the engine, or as it ended once the engine forgot it."""
        d = job.final.get(rid)
        return d if d is not None else engine.describe(rid)

    def job_of(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise ApiError("not_found", f"no request {job_id!r}")
        return job

    def job_state(job: Job) -> str:
        states = [item(job, r)["state"] for r in job.request_ids]
        if all(s == "done" for s in states):
            return "done"
        for ending in ("failed", "rejected", "cancelled"):
            if ending in states and all(s in ("done", "failed", "rejected", "cancelled") for s in states):
                return ending
        if any(s in ("encoding", "diffusing", "decoding", "encoded", "diffused") for s in states):
            return "running"
        return "queued"

    def status_body(job: Job) -> dict:
        items = [item(job, r) for r in job.request_ids]
        return {"id": job.id, "object": "generation", "kind": job.kind, "model": job.model, "state": job_state(job),
                "created": int(job.created_unix_s), **job.meta, "items": items}

    def result_body(job: Job) -> dict:
        state = job_state(job)
        if state in ("queued", "running"):
            raise ApiError("not_ready", f"request {job.id} is {state}", extra={"state": state})
        if state != "done":
            reasons = sorted({item(job, r)["reason"] for r in job.request_ids if item(job, r)["state"] != "done"})
            raise ApiError(state, f"request {job.id} {state}: " + "; ".join(reasons),
                           extra={"id": job.id, "state": state, "request_ids": list(job.request_ids)})
        data = []
        emulated = runtime.models[job.model].emulated if job.model in runtime.models else False
        timings = []
        for i, rid in enumerate(job.request_ids):
            d = item(job, rid)
            timings.append({"latency_ms": 1000 * ((d["finish_s"] or 0.0) - d["arrival_s"]), "met_slo": d["met_slo"],
                            "deadline_ms": 1000 * (d["deadline_s"] - d["arrival_s"]), "stages": d["stages"]})
            if emulated:
                continue
            if not engine.has_result(rid):
                raise ApiError("gone", f"the result of request {job.id} is no longer kept")
            blob = engine.outcome(rid).result
            if job.response_format == "url":
                data.append({"url": f"/v1/requests/{job.id}/result/{i}"})
            else:
                data.append({"b64_json": base64.b64encode(blob).decode("ascii")})
        body = {"id": job.id, "request_ids": list(job.request_ids), "created": int(job.created_unix_s),
                "model": job.model, "kind": job.kind, "state": state, **job.meta, "data": data, "timings": timings, "emulated": emulated,
                "time_scale": runtime.engine_of(job.model).config.time_scale}
        if emulated:
            body["note"] = "emulated devices take the cost model's time but make no pixels: data is empty"
        return body

    async def wait_job(job: Job) -> None:
        await asyncio.gather(*(engine.wait(r) for r in job.request_ids))

    # ------------------------------------------------------------------ generation
    @app.post("/v1/images/generations", dependencies=[Depends(authorized)], tags=["generation"])
    async def images(body: ImageGenerationRequest) -> JSONResponse:
        """Make ``n`` images; returns when they are done (PNG, base64 or a URL) with stage timings."""
        job = submit(body, "image")
        await wait_job(job)
        return JSONResponse(result_body(job))

    @app.post("/v1/videos/generations", dependencies=[Depends(authorized)], tags=["generation"])
    async def videos(body: VideoGenerationRequest) -> JSONResponse:
        """Make ``n`` videos (animated WebP); returns when they are done."""
        job = submit(body, "video")
        await wait_job(job)
        return JSONResponse(result_body(job))

    @app.post("/v1/requests", status_code=202, dependencies=[Depends(authorized)], tags=["requests"])
    async def create_request(body: GenerationRequest) -> JSONResponse:
        """Submit without waiting: 202 with the id to poll."""
        job = submit(body, None)
        return JSONResponse({"id": job.id, "state": job_state(job), "status_url": f"/v1/requests/{job.id}",
                             "result_url": f"/v1/requests/{job.id}/result"}, status_code=202)

    @app.get("/v1/requests", tags=["requests"])
    async def list_requests(limit: int = Query(50, ge=1, le=1000)) -> JSONResponse:
        """The most recent requests, newest first (the server keeps the last ``max_jobs``)."""
        recent = list(jobs.values())[-limit:][::-1]
        return JSONResponse({"object": "list", "data": [status_body(j) for j in recent]})

    @app.get("/v1/requests/{job_id}", tags=["requests"])
    async def get_request(job_id: str) -> JSONResponse:
        """State, current stage, progress and per-stage timings of each item."""
        return JSONResponse(status_body(job_of(job_id)))

    @app.get("/v1/requests/{job_id}/result", tags=["requests"])
    async def get_result(job_id: str) -> JSONResponse:
        """The finished generation (409 while it runs; the ending's status if it did not finish)."""
        return JSONResponse(result_body(job_of(job_id)))

    @app.get("/v1/requests/{job_id}/result/{index}", tags=["requests"])
    async def get_result_file(job_id: str, index: int) -> Response:
        """One image (PNG) or video (animated WebP) of a finished generation."""
        job = job_of(job_id)
        if not 0 <= index < len(job.request_ids):
            raise ApiError("not_found", f"request {job_id} has items 0..{len(job.request_ids) - 1}")
        result_body(job)  # raises unless done
        if runtime.models[job.model].emulated:
            raise ApiError("no_pixels", "emulated devices make no pixels")
        out = engine.outcome(job.request_ids[index])
        if out is None or out.result is None:
            raise ApiError("gone", f"the result of request {job_id} is no longer kept")
        return Response(out.result, media_type="image/png" if job.kind == "image" else "image/webp")

    @app.delete("/v1/requests/{job_id}", dependencies=[Depends(authorized)], tags=["requests"])
    async def cancel_request(job_id: str) -> JSONResponse:
        """Cancel every item not yet ended (a running stage's output is dropped when it ends)."""
        job = job_of(job_id)
        n = sum(engine.cancel(r) for r in job.request_ids)
        return JSONResponse({"id": job.id, "cancelled": n, "state": job_state(job)})

    # ------------------------------------------------------------------ control plane
    @app.get("/v1/cluster", tags=["control"])
    async def cluster() -> JSONResponse:
        """Devices, resident stage instances (the live placement), queue lengths, memory."""
        return JSONResponse(engine.snapshot())

    @app.get("/v1/models", tags=["control"])
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [e.to_dict() for e in runtime.models.values()]})

    @app.get("/metrics", tags=["control"])
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["control"])
    async def healthz() -> JSONResponse:
        snap = engine.snapshot()
        alive = sum(1 for d in snap["devices"] if d["alive"])
        ok = alive > 0 and not engine.closing
        return JSONResponse({"ok": ok, "devices_alive": alive, "devices": len(snap["devices"]),
                             "live_requests": snap["live_requests"]}, status_code=200 if ok else 503)

    app.add_middleware(_BodyLimit, max_bytes=config.max_body_bytes)
    return app


__all__ = ["ServerConfig", "create_app", "is_loopback"]
