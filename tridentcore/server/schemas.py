"""HTTP bodies (pydantic, at the edge only: converted to engine submissions at once).

Types are strict (``true`` is not a number, ``"8"`` is not an integer; an integer is a number) and
the bounds are the API's global limits: what any served model accepts. A model's own limits, which
may be smaller (``GET /v1/models``), are checked after the schema, also as a 422 naming the field.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.defaults import MAX_FRAMES, MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_SIDE_PX, MAX_STEPS

MAX_N = 8
MIN_SLO_MS = 1.0  # a deadline under a millisecond is no objective (and 5e-324 ms is 0 s)
MAX_SLO_MS = 86_400_000.0  # a day
# ASCII digits only ([0-9], not \d), at most 5 a side: a size is checked before it is ever an int
SIZE_PATTERN = r"^[0-9]{1,5}x[0-9]{1,5}$"
_SIZE = re.compile(SIZE_PATTERN)


class ImageGenerationRequest(BaseModel):
    """OpenAI-style image request plus the serving knobs."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"prompt": "a red fox in the snow", "size": "1024x1024", "steps": 28, "seed": 7}]})

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(None, description="A served model (GET /v1/models); default: the first of its kind.")
    size: str | None = Field(None, json_schema_extra={"pattern": SIZE_PATTERN, "maxLength": 11},
                             description=f"WIDTHxHEIGHT in ASCII digits, each side a multiple of the model's "
                                         f"size_multiple (16) and at most {MAX_SIDE_PX} (the model's own bounds: "
                                         f"GET /v1/models).")
    n: int = Field(1, ge=1, le=MAX_N, description="Images (or videos) to make; seeds seed, seed+1, ...")
    response_format: Literal["b64_json", "url"] = "b64_json"
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    slo_ms: float | None = Field(None, ge=MIN_SLO_MS, le=MAX_SLO_MS, allow_inf_nan=False,
                                 description="Latency objective in engine milliseconds (default: 3x reference).")

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and not _SIZE.fullmatch(value):
            shown = value if len(value) <= 24 else value[:24] + "..."
            raise ValueError(f"must be WIDTHxHEIGHT in ASCII digits, at most 5 a side, e.g. 1024x768 "
                             f"(got {shown!r})")
        return value


class VideoGenerationRequest(ImageGenerationRequest):
    model_config = ConfigDict(json_schema_extra={
        "examples": [{"prompt": "a paper boat on a river", "size": "832x480", "frames": 17, "steps": 20}]})

    frames: int | None = Field(None, ge=1, le=MAX_FRAMES,
                               description=f"Frames, k*4+1 for Wan-style models (at most {MAX_FRAMES}).")


class GenerationRequest(VideoGenerationRequest):
    """``POST /v1/requests``: an image or a video (by the model's kind); ``frames`` for video only."""

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"prompt": "a lighthouse at dusk", "size": "512x512", "n": 2, "response_format": "url"}]})
