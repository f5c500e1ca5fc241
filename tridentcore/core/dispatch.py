"""A dispatch's price and its record while it runs: what the cluster state and the drivers share.

:func:`payload_bytes` sizes what moves between stages, :class:`DispatchCost` is the cost model's
answer for one dispatch on the current state, :class:`Running` is a dispatch in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import Dispatch
from .frozen import quick_init
from .types import Shape

GIB = 2**30


def payload_bytes(kind: str, model: str, shape: Shape, batch: int = 1) -> float:
    """Approximate bytes moved between stages: text embeddings or latents of ``batch`` requests.

    Embeddings: up to ~590 tokens x 4096 features in bf16, prompt and negative (~10 MB); latents:
    16 channels at 1/8 resolution (1/4 in time for video) in fp32. Both are small next to the
    links (0.1 ms over NVLink), but they are charged, so moving work between GPUs is not free.
    """
    if kind == "embeddings":
        return 10e6 * batch
    latent_frames = 1 if shape.frames == 1 else (shape.frames - 1) // 4 + 1
    return 16 * (shape.height // 8) * (shape.width // 8) * latent_frames * 4.0 * batch


@quick_init  # built per dispatch: see core/frozen.py
@dataclass(frozen=True, slots=True)
class DispatchCost:
    """What a dispatch will take: weight loading, input transfer and compute, in seconds."""

    load_s: float
    transfer_s: float
    compute_s: float
    step_s: float  # diffuse: seconds per step (0 otherwise)
    act_gib: float  # activation memory per GPU
    oom: bool  # some GPU of the group lacks the memory for missing weights + activations

    @property
    def total_s(self) -> float:
        return self.load_s + self.transfer_s + self.compute_s


@dataclass(slots=True)
class Running:
    """A dispatch in flight."""

    id: int
    action: Dispatch
    model: str
    shape: Shape
    started_s: float
    compute_start_s: float  # after weight loading and transfers
    predicted_end_s: float
    step_s: float = 0.0  # diffuse: seconds per step for this dispatch
    load_s: float = 0.0
    transfer_s: float = 0.0
    act_gib: float = 0.0
    queued_s: dict[int, float] = field(default_factory=dict)
    preempt_at_step: int | None = None  # diffuse paused at this step
    factor: float = 1.0  # the calibration factor its predictions were made with (1: uncalibrated)
