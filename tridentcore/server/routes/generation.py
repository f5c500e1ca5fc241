"""``POST /v1/images/generations`` and ``POST /v1/videos/generations``: OpenAI-style bodies; the
call returns when the generation is done. A client that disconnects before that cancels it: nobody
is left to read the answer, and its work would only delay the requests of clients still waiting (a
client that times out and retries would multiply it). The asynchronous form (``POST /v1/requests``,
then polling) runs to its end whoever is connected."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..errors import responses
from ..jobs import Jobs
from ..schemas import ImageGenerationRequest, VideoGenerationRequest
from . import deps

router = APIRouter(tags=["generation"], dependencies=[Depends(deps.authorized)])

# what a generation may answer besides 200: the body (400, 408, 413, 422), the key (401), the model (404), the
# queue (429), the server closing, without a device or unable to record the run (503), and how the generation
# ended when it did not end done
_ERRORS = responses("bad_request", "unauthorized", "unknown_model", "too_large", "unsupported_encoding", "body_timeout",
                   "invalid", "queue_full", "shutting_down", "no_devices", "records_unwritable", "rejected", "failed",
                   "cancelled", "gone")


@router.post("/v1/images/generations", responses=_ERRORS)
async def images(body: ImageGenerationRequest, request: Request, jobs: Jobs = Depends(deps.jobs)) -> Response:
    """Make ``n`` images; returns when they are done (PNG, base64 or a URL) with stage timings."""
    return await _answer(request, jobs, jobs.submit(body, "image"))


@router.post("/v1/videos/generations", responses=_ERRORS)
async def videos(body: VideoGenerationRequest, request: Request, jobs: Jobs = Depends(deps.jobs)) -> Response:
    """Make ``n`` videos (animated WebP); returns when they are done."""
    return await _answer(request, jobs, jobs.submit(body, "video"))


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: the next message is the
    disconnect, sent when the connection closes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _answer(request: Request, jobs: Jobs, job) -> Response:
    """The job's answer once it has ended; if the client disconnects first, the job is cancelled (an
    answer nobody reads: 499, as nginx logs a client that closed its connection). Its results are
    held until the answer is made: all ``n`` of them, whatever ``--results-mib``."""
    jobs.engine.hold_results(job.request_ids)
    try:
        done = asyncio.ensure_future(jobs.wait(job))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((done, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:  # (the handler cancelled too: neither is left behind)
            gone.cancel()
            ended = done.done()
            if not ended:
                done.cancel()
        if not ended:  # the client went first
            jobs.cancel(job, "the client disconnected before the answer")
            return Response(status_code=499)
        done.result()  # (an error is raised as it was)
        return JSONResponse(jobs.result_body(job))
    finally:
        jobs.engine.release_results(job.request_ids)
