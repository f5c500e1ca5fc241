"""``/v1/requests``: submit without waiting, poll, fetch the result, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from ..errors import responses
from ..jobs import Jobs
from ..schemas import GenerationRequest
from . import deps

router = APIRouter(tags=["requests"])

# a finished generation's result: not yet (409), dropped (410), or how it ended when not done
_RESULT = ("not_found", "not_ready", "cancelled", "gone", "failed", "rejected")


@router.post("/v1/requests", status_code=202, dependencies=[Depends(deps.authorized)],
             responses=responses("bad_request", "unauthorized", "unknown_model", "too_large", "unsupported_encoding",
                                 "body_timeout", "invalid", "queue_full", "shutting_down", "no_devices", "records_unwritable"))
async def create_request(body: GenerationRequest, jobs: Jobs = Depends(deps.jobs)) -> JSONResponse:
    """Submit without waiting: 202 with the id to poll."""
    job = jobs.submit(body, None)
    job.polled = True  # (a drain keeps answering until its client has seen how it ended)
    await jobs.written(job)  # (with --db: the journal holds it before the client hears of it)
    return JSONResponse({"id": job.id, "state": jobs.answering(job, jobs.state(job)),
                         "status_url": f"/v1/requests/{job.id}", "result_url": f"/v1/requests/{job.id}/result"},
                        status_code=202)


@router.get("/v1/requests", responses=responses("invalid"))
async def list_requests(limit: int = Query(50, ge=1, le=1000), jobs: Jobs = Depends(deps.jobs)) -> JSONResponse:
    """The most recent requests, newest first (the server keeps the last ``max_jobs``)."""
    recent = jobs.recent(limit)
    await jobs.written(*recent)  # (as a single status: a state listed is one the journal holds)
    return JSONResponse({"object": "list", "data": [jobs.status_body(j, tells=False) for j in recent]})


@router.get("/v1/requests/{job_id}", responses=responses("not_found"))
async def get_request(job_id: str, jobs: Jobs = Depends(deps.jobs)) -> JSONResponse:
    """State, current stage, progress and per-stage timings of each item."""
    job = jobs.get(job_id)
    await jobs.written(job)
    return JSONResponse(jobs.status_body(job))


@router.get("/v1/requests/{job_id}/result", responses=responses(*_RESULT))
async def get_result(job_id: str, jobs: Jobs = Depends(deps.jobs)) -> JSONResponse:
    """The finished generation (409 while it runs; the ending's status if it did not finish)."""
    job = jobs.get(job_id)
    await jobs.written(job)
    return JSONResponse(jobs.result_body(job))


@router.get("/v1/requests/{job_id}/result/{index}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/webp": {}}, "description": "the file"},
                       **responses(*_RESULT, "invalid", "no_pixels")})
async def get_result_file(job_id: str, index: int, jobs: Jobs = Depends(deps.jobs)) -> Response:
    """One image (PNG) or video (animated WebP) of a generation, once that item is done (409 before; if it
    ended otherwise, its ending's status)."""
    job = jobs.get(job_id)
    await jobs.written(job)
    content, media_type = jobs.result_file(job, index)
    return Response(content, media_type=media_type)


@router.delete("/v1/requests/{job_id}", dependencies=[Depends(deps.authorized)],
               responses=responses("unauthorized", "not_found"))
async def cancel_request(job_id: str, jobs: Jobs = Depends(deps.jobs)) -> JSONResponse:
    """Cancel every item not yet ended (a running stage's output is dropped when it ends)."""
    job = jobs.get(job_id)
    n = jobs.cancel(job)
    await jobs.written(job)
    return JSONResponse({"id": job.id, "cancelled": n, "state": jobs.answering(job, jobs.state(job))})
