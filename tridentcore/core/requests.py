"""A request as a workload issues it (docs/design.md, "Core vocabulary": ``RequestSpec``).

Pure data with its validation; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import WorkloadError, is_int, is_number
from .types import Shape, class_label

__all__ = ["PROMPTS", "RequestSpec"]

# Prompts drawn by generate_requests (content does not change cost; variety keeps caches honest).
PROMPTS: tuple[str, ...] = (
    "a red fox in fresh snow at dawn, telephoto, shallow depth of field",
    "an isometric illustration of a tiny city on a floating island",
    "a bowl of ramen on a wooden table, steam rising, soft window light",
    "a lighthouse on a rocky coast during a storm, dramatic clouds",
    "a watercolor painting of a cat sleeping on a stack of books",
    "a futuristic train crossing a desert at sunset, cinematic",
    "macro photograph of a dew drop on a spider web",
    "a cozy reading nook with plants and warm lamps, interior design photo",
    "an astronaut riding a horse on the moon, photorealistic",
    "a koi pond seen from above, autumn leaves on the water",
    "a street market in the rain at night, neon reflections",
    "a paper origami crane on a white background, studio lighting",
    "a drone shot of waves breaking on a black sand beach",
    "a golden retriever puppy running through a field of flowers",
    "a medieval castle on a hill surrounded by fog, oil painting",
    "a close-up of a hummingbird feeding from a flower, slow motion",
)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as a workload issues it. ``guidance`` None = the model's default.

    ``slo_s`` is the allowed latency; the deadline is ``arrival_s + slo_s``. ``job_id``: the HTTP
    API's id of the generation it belongs to (``gen-...``), stored with its row; empty in simulations.
    """

    id: int
    model: str
    prompt: str
    shape: Shape
    seed: int
    guidance: float | None
    slo_s: float
    arrival_s: float
    negative_prompt: str = ""
    job_id: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not (is_int(self.id) and self.id >= 0):
            problems.append(f"id must be an integer >= 0 (got {self.id!r})")
        if not (isinstance(self.model, str) and self.model.strip()):
            problems.append(f"model must be a non-empty string (got {self.model!r})")
        if not isinstance(self.prompt, str):
            problems.append(f"prompt must be a string (got {type(self.prompt).__name__})")
        if not isinstance(self.shape, Shape):
            problems.append(f"shape must be a Shape (got {type(self.shape).__name__})")
        if not is_int(self.seed):
            problems.append(f"seed must be an integer (got {self.seed!r})")
        if self.guidance is not None and not (is_number(self.guidance) and self.guidance >= 0 and math.isfinite(self.guidance)):
            problems.append(f"guidance must be None or a finite number >= 0 (got {self.guidance!r})")
        if not (is_number(self.slo_s) and self.slo_s > 0 and math.isfinite(self.slo_s)):
            problems.append(f"slo_s must be a positive finite number (got {self.slo_s!r})")
        if not (is_number(self.arrival_s) and self.arrival_s >= 0 and math.isfinite(self.arrival_s)):
            problems.append(f"arrival_s must be a finite number >= 0 (got {self.arrival_s!r})")
        if not isinstance(self.negative_prompt, str):
            problems.append(f"negative_prompt must be a string (got {type(self.negative_prompt).__name__})")
        if not isinstance(self.job_id, str):
            problems.append(f"job_id must be a string (got {type(self.job_id).__name__})")
        if problems:
            raise WorkloadError(f"request {self.id!r}", problems)

    @property
    def deadline_s(self) -> float:
        return self.arrival_s + self.slo_s

    @property
    def request_class(self) -> str:
        """The class label, equal to :attr:`RequestClass.label` for the same model and shape."""
        return class_label(self.model, self.shape)
