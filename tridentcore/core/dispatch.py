"""A dispatch's price and its record while it runs: what the cluster state and the drivers share.

:func:`payload_bytes` sizes what moves between stages, :class:`DispatchCost` is the cost model's
answer for one dispatch on the current state (from :class:`CostAnswers`, the cost model's answers it
needs, memoised), :class:`Running` is a dispatch in flight, :func:`next_boundary` the step boundary it reaches next.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .costmodel import GB_BYTES, CostModel
from .events import Dispatch
from .frozen import quick_init
from .types import Shape, StageKind

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
    member_lost: bool = False  # a multi-GPU dispatch one of whose workers was lost while it ran


def next_boundary(run: Running, now: float) -> tuple[int, float]:
    """The step boundary a running diffuse reaches next at or after ``now``, and when, by the cost
    model's step time (a run still loading weights pauses at its first step)."""
    if run.step_s <= 0 or now <= run.compute_start_s:
        return run.action.start_step, max(now, run.compute_start_s)
    done = math.ceil((now - run.compute_start_s) / run.step_s - 1e-9)
    return run.action.start_step + done, max(now, run.compute_start_s + done * run.step_s)


class CostAnswers:
    """The cost model's answers that a dispatch's price needs, memoised: per (model, stage, shape,
    batch, degree) the activation memory per GPU and the seconds per call (a diffuse: per step), and
    per (payload, model, shape, link) the transfer time. A calibrated model's latencies move with its
    ``version``: its answers are then asked again."""

    def __init__(self, cost: CostModel, gpu_kind: str, links_gbps: Mapping[str, float] | None = None) -> None:
        self.cost = cost
        self.gpu_kind = gpu_kind
        self.links_gbps = dict(links_gbps or {})  # the cluster's own links (GB/s), over the cost model's
        self._versioned = hasattr(cost, "version")
        self._version = 0
        self._calls: dict[tuple, tuple[float, float]] = {}
        self._transfers: dict[tuple, float] = {}

    def act_and_call_s(self, model: str, stage: StageKind, shape: Shape, batch: int, degree: int) -> tuple[float, float]:
        """Activation GiB per GPU and seconds per call of ``batch`` requests at ``degree`` (encode and
        decode run at degree 1; an encode's activations take no shape)."""
        version = self.cost.version if self._versioned else 0  # type: ignore[attr-defined]
        if version != self._version:
            self._version, self._calls = version, {}
        key = (model, stage, shape, batch, degree)
        got = self._calls.get(key)
        if got is None:
            cost, kind = self.cost, self.gpu_kind
            if stage == StageKind.ENCODE:
                got = (cost.activation_gib(model, stage, None, batch, degree, kind),
                       cost.latency_s(model, StageKind.ENCODE, None, batch, 1, kind))
            elif stage == StageKind.DIFFUSE:
                got = (cost.activation_gib(model, stage, shape, batch, degree, kind),
                       cost.latency_s(model, StageKind.DIFFUSE, shape, batch, degree, kind))
            else:
                got = (cost.activation_gib(model, stage, shape, batch, degree, kind),
                       cost.latency_s(model, StageKind.DECODE, shape, batch, 1, kind))
            self._calls[key] = got
        return got

    def transfer_s(self, kind: str, model: str, shape: Shape, link: str) -> float:
        """Seconds to move one request's ``kind`` (embeddings or latents) over ``link``."""
        key = (kind, model, shape, link)
        t = self._transfers.get(key)
        if t is None:
            nbytes = payload_bytes(kind, model, shape)
            gbps = self.links_gbps.get(link)
            t = self._transfers[key] = (self.cost.transfer_s(nbytes, link) if gbps is None
                                        else nbytes / (gbps * GB_BYTES))
        return t
