"""The models a live run serves and what each accepts (checked once, at the edge, before a request
enters the engine).

A request must be valid for the pipeline (size a multiple of its latent grid, within bounds;
frame counts the video VAE accepts) *and* covered by the cost model, since every policy prices
every request it sees: a shape the profile cannot price is refused with the profile's own reason,
never guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..core.costmodel import CostModel
from ..core.defaults import MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SIDE_PX, MAX_STEPS
from ..core.types import Shape, StageKind


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a request: the field and what the limit is."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    kind: str  # image | video
    min_size: int
    max_size: int
    size_multiple: int
    default_steps: int
    default_width: int
    default_height: int
    frames_multiple: int = 1
    max_frames: int = 1
    default_frames: int = 1
    emulated: bool = False  # no pixels: emulated devices only take the time
    # width x height x frames the profile prices (closed range; None: not known): a request must also be in it
    pixels: tuple[int, int] | None = None

    @property
    def video(self) -> bool:
        return self.kind == "video"

    def to_dict(self) -> dict:
        return {
            "id": self.name, "object": "model", "kind": self.kind, "emulated": self.emulated,
            "size": {"min": self.min_size, "max": self.max_size, "multiple_of": self.size_multiple,
                     "default": f"{self.default_width}x{self.default_height}"},
            "frames": ({"rule": f"k*{self.frames_multiple}+1", "max": self.max_frames, "default": self.default_frames}
                       if self.video else {"rule": "1"}),
            "pixels": ({"min": self.pixels[0], "max": self.pixels[1], "of": "width*height*frames"}
                       if self.pixels is not None else None),
            "steps": {"min": 1, "max": MAX_STEPS, "default": self.default_steps},
            "prompt": {"max_chars": MAX_PROMPT_CHARS},
        }


def emulated_entry(name: str, cost: CostModel, gpu: str, video: bool) -> ModelEntry:
    """A profile model served on emulated devices: the API's bounds, and the pixels the profile prices."""
    if video:
        entry = ModelEntry(name, "video", 128, 2048, 16, 50, 832, 480, frames_multiple=4, max_frames=MAX_FRAMES,
                           default_frames=17, emulated=True)
    else:
        entry = ModelEntry(name, "image", 128, MAX_SIDE_PX, 16, 28, 1024, 1024, emulated=True)
    return priced(entry, cost, gpu)


def priced(entry: ModelEntry, cost: CostModel, gpu: str) -> ModelEntry:
    """``entry`` with ``pixels``: the width x height x frames that both the diffuse and the decode are
    priced at by ``cost`` on ``gpu`` (a stage without rows is left to :func:`check_request` to name)."""
    lo, hi = 1, None
    for stage in (StageKind.DIFFUSE, StageKind.DECODE):
        try:
            span = cost.token_span(entry.name, stage, gpu)
        except LookupError:
            continue
        if span is not None:
            lo, hi = max(lo, span[0]), span[1] if hi is None else min(hi, span[1])
    if hi is None:
        return replace(entry, pixels=None)
    out = replace(entry, pixels=(lo, hi))
    frames = entry.default_frames if entry.video else 1
    if not lo <= entry.default_width * entry.default_height * frames <= hi:
        # the default size priced too (tiny-flux-xl's 128x128 on the cpu profile, whose smallest
        # measured shape is larger, was advertised and then refused with 422; outside test): the
        # smallest square the profile prices, on the pipeline's grid
        m = entry.size_multiple
        side = next((k for k in range(max(entry.min_size, m), entry.max_size + 1, m) if k * k * frames >= lo), None)
        if side is not None and side * side * frames <= hi:
            out = replace(out, default_width=side, default_height=side)
    return out


def shape_problems(entry: ModelEntry, width: int, height: int, frames: int) -> list[Problem]:
    """What is wrong with ``width`` x ``height`` x ``frames`` for ``entry``'s pipeline (its latent grid,
    side bounds and the frame counts its video VAE takes); pricing is checked apart."""
    problems: list[Problem] = []
    for what, value in (("width", width), ("height", height)):
        if value % entry.size_multiple:
            problems.append(Problem("size", f"{what} {value} is not a multiple of {entry.size_multiple}"))
        if not entry.min_size <= value <= entry.max_size:
            problems.append(Problem("size", f"{what} {value} is outside [{entry.min_size}, {entry.max_size}] "
                                            f"for {entry.name}"))
    if entry.video:
        if frames < 1 or (frames - 1) % entry.frames_multiple or frames > entry.max_frames:
            problems.append(Problem("frames", f"frames {frames} must be k*{entry.frames_multiple}+1 in "
                                              f"[1, {entry.max_frames}] for {entry.name}"))
    elif frames != 1:
        problems.append(Problem("frames", f"frames must be 1 for the image model {entry.name} (got {frames})"))
    return problems


def check_request(entry: ModelEntry, cost: CostModel, gpu: str, width: int, height: int, frames: int,
                  steps: int, prompt: str) -> list[Problem]:
    """Every problem with one request for ``entry`` (empty: it may be submitted)."""
    problems = shape_problems(entry, width, height, frames)
    size_ok = not problems
    if not 1 <= steps <= MAX_STEPS:
        problems.append(Problem("steps", f"steps {steps} is outside [1, {MAX_STEPS}]"))
        size_ok = False
    if len(prompt) > MAX_PROMPT_CHARS:
        problems.append(Problem("prompt", f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}"))
    if not prompt.strip():
        problems.append(Problem("prompt", "prompt must not be empty"))
    if size_ok:
        shape = Shape(height, width, frames, steps)
        try:
            cost.latency_s(entry.name, StageKind.ENCODE, None, 1, 1, gpu)
            cost.latency_s(entry.name, StageKind.DIFFUSE, shape, 1, 1, gpu)
            cost.latency_s(entry.name, StageKind.DECODE, shape, 1, 1, gpu)
        except LookupError as exc:
            takes = (f"; it prices width*height*frames from {entry.pixels[0]:,} to {entry.pixels[1]:,}"
                     if entry.pixels is not None and entry.pixels[0] <= entry.pixels[1] else "")
            problems.append(Problem("size", f"the profile cannot price {entry.name} on {gpu} at {shape.label()}: "
                                            f"{exc}{takes}"))
    return problems


def video_models(rows: Iterable) -> set[str]:
    """Models with multi-frame rows in a profile."""
    return {r.model for r in rows if (r.frames or 1) > 1}
