"""HTTP bodies (pydantic, at the edge only: converted to engine submissions at once)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core.defaults import MAX_FRAMES, MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS

MAX_N = 8


class ImageGenerationRequest(BaseModel):
    """OpenAI-style image request plus the serving knobs."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(None, description="A served model (GET /v1/models); default: the first of its kind.")
    size: str | None = Field(None, description="WIDTHxHEIGHT, multiples of the model's size_multiple (16).")
    n: int = Field(1, ge=1, le=MAX_N, description="Images (or videos) to make; seeds seed, seed+1, ...")
    response_format: Literal["b64_json", "url"] = "b64_json"
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    slo_ms: float | None = Field(None, gt=0, le=86_400_000,
                                 description="Latency objective in engine milliseconds (default: 3x reference).")


class VideoGenerationRequest(ImageGenerationRequest):
    frames: int | None = Field(None, ge=1, le=MAX_FRAMES, description="Frames, k*4+1 for Wan-style models.")


class GenerationRequest(VideoGenerationRequest):
    """``POST /v1/requests``: an image or a video (by the model's kind); ``frames`` for video only."""
