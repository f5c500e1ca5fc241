"""``POST /v1/images/generations`` and ``POST /v1/videos/generations``: OpenAI-style bodies; the
call returns when the generation is done."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..errors import responses
from ..jobs import Jobs
from ..schemas import ImageGenerationRequest, VideoGenerationRequest
from . import deps

router = APIRouter(tags=["generation"], dependencies=[Depends(deps.authorized)])

# what a generation may answer besides 200: the body (400, 408, 413, 422), the key (401), the model (404), the
# queue (429), the server closing (503), and how the generation ended when it did not end done
_ERRORS = responses("bad_request", "unauthorized", "unknown_model", "too_large", "body_timeout", "invalid",
                   "queue_full", "shutting_down", "rejected", "failed", "cancelled", "gone")


@router.post("/v1/images/generations", responses=_ERRORS)
async def images(body: ImageGenerationRequest, jobs: Jobs = Depends(deps.jobs)) -> JSONResponse:
    """Make ``n`` images; returns when they are done (PNG, base64 or a URL) with stage timings."""
    job = jobs.submit(body, "image")
    await jobs.wait(job)
    return JSONResponse(jobs.result_body(job))


@router.post("/v1/videos/generations", responses=_ERRORS)
async def videos(body: VideoGenerationRequest, jobs: Jobs = Depends(deps.jobs)) -> JSONResponse:
    """Make ``n`` videos (animated WebP); returns when they are done."""
    job = jobs.submit(body, "video")
    await jobs.wait(job)
    return JSONResponse(jobs.result_body(job))
