"""The control plane: ``GET /v1/cluster``, ``GET /v1/models``, ``GET /metrics`` (Prometheus),
``GET /healthz``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ...runtime.build import Runtime
from ..metrics import Metrics
from . import deps

router = APIRouter(tags=["control"])


@router.get("/v1/cluster")
async def cluster(runtime: Runtime = Depends(deps.runtime)) -> JSONResponse:
    """Devices, resident stage instances (the live placement), queue lengths, memory."""
    return JSONResponse(runtime.engine.snapshot())


@router.get("/v1/models")
async def models(runtime: Runtime = Depends(deps.runtime)) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [e.to_dict() for e in runtime.models.values()]})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def prometheus(metrics: Metrics = Depends(deps.metrics)) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", responses={503: {"content": {"application/json": {}},
                                         "description": "no device is alive, the server is closing, its run's "
                                                        "records cannot be written, or its engine is stuck "
                                                        "(ok false)"}})
async def healthz(runtime: Runtime = Depends(deps.runtime)) -> JSONResponse:
    engine = runtime.engine
    snap = engine.snapshot()
    alive = sum(1 for d in snap["devices"] if d["alive"])
    parts = getattr(engine, "parts", None) or [engine]
    records = next((p.records_down for p in parts if p.records_down), "")
    stuck = next((p.stuck for p in parts if p.stuck), "")
    ok = alive > 0 and not engine.closing and not records and not stuck
    body = {"ok": ok, "devices_alive": alive, "devices": len(snap["devices"]), "live_requests": snap["live_requests"]}
    # devices of several kinds: a kind with none alive, and the models only it serves (outside test: "ok" while
    # a served model had no device at all); the others still serve, so ok stays as it is
    down = [{"devices": label, "models": list(part.models)} for part, label in
            zip(getattr(engine, "parts", ()), getattr(engine, "labels", ())) if not any(part.state.alive)]
    if down:
        body["down"] = down
    if records:
        body["records"] = records
    if stuck:  # it may dispatch nothing again: restart it (its log has each error's traceback)
        body["engine"] = stuck
    return JSONResponse(body, status_code=200 if ok else 503)
