"""What a worker is asked to run (:class:`StageTask`), what comes of it (:class:`StageResult`), what it
reports about a model it loaded (:class:`ModelCard`), and an allocation failure as a value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..core.types import StageKind

__all__ = ["ModelCard", "Pixels", "StageResult", "StageTask", "failure", "is_oom"]


@dataclass(frozen=True, slots=True)
class StageTask:
    """What one dispatch asks its lead worker to run (picklable; tensors ride as shared memory)."""

    dispatch_id: int
    stage: StageKind
    model: str
    request_ids: tuple[int, ...]
    height: int
    width: int
    frames: int
    steps: int
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    guidances: tuple[float | None, ...] = ()
    start_step: int = 0
    end_step: int = 0
    # per request: encode (); diffuse (embeddings, latents-or-None); decode latents
    inputs: tuple[Any, ...] = ()
    duration_s: float = 0.0  # emulated workers: wall seconds the dispatch takes
    tiled: bool = False  # decode in tiles (bounded activation memory): a retry after an out-of-memory error
    # the (model, stage) instances the placement plan holds on the lead device at dispatch: a GPU worker
    # keeps exactly these weights on its GPU (evicting the rest) and loads this task's stage if missing
    resident: tuple[tuple[str, str], ...] = ()
    # testing aid (``trident serve --inject-oom``): "oom" makes the worker fail this task with a real
    # allocation failure (a CPU process asks torch's allocator for more than any address space)
    fault: str = ""
    # a diffuse on k > 1 local workers: this member's world (``parallel_worlds.WorldSpec``); None: alone
    world: Any = None


@dataclass(frozen=True, slots=True)
class StageResult:
    """What came of a task: per-request outputs, or an error (``lost``: the worker died)."""

    end_step: int = 0
    # per request: encode embeddings; diffuse latents; decode Pixels (None: emulated)
    outputs: tuple[Any, ...] = ()
    error: str = ""
    oom: bool = False
    lost: bool = False
    wall_s: float = 0.0
    degree: int = 1  # a diffuse: the members it ran sequence-parallel over (1: alone)
    alone: bool = False  # a group's dispatch that ran on its lead alone (its model cannot split the shape)

    @property
    def ok(self) -> bool:
        return not (self.error or self.lost)


@dataclass(frozen=True, slots=True)
class Pixels:
    """One request's decoded frames, uint8 ``[F, H, W, 3]`` on the host (``F`` = 1 for an image), as a
    decode's worker returns them. The engine encodes them to the request's media (PNG; an animated
    WebP for a video model) on its own threads, after the decode's span: a GPU worker used to encode
    them itself, holding its device (on an H200 a served 1024x1024 decode took 0.27 s, the VAE 0.085 s
    of it; 2048x2048 1.1 s, the VAE 0.39 s)."""

    frames: Any
    video: bool

    def encode(self) -> bytes:
        from ..pipelines.media import encode_animation, encode_image

        if self.video:
            return encode_animation(self.frames, "WEBP")
        return encode_image(self.frames[0], "PNG")


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What a worker reports about a model it loaded (the server validates requests with it)."""

    name: str
    video: bool
    min_size: int
    max_size: int
    size_multiple: int
    frames_multiple: int
    max_frames: int
    default_steps: int
    max_prompt_tokens: int
    source: str = ""  # a folder's fingerprint (``pipelines.folder.fingerprint``); "" for a built-in model

    def changed(self, other: ModelCard) -> str:
        """How ``other`` (the same model loaded again: a restarted worker) is not what this card
        says ("" if it is, its folder's files aside)."""
        what = lambda c: (f"{'a video' if c.video else 'an image'} model of sides {c.min_size}..{c.max_size}, "  # noqa: E731
                          f"{c.default_steps} steps by default")
        if replace(self, source="") == replace(other, source=""):
            return ""
        return f"{what(self)} at the start, now {what(other)}" if what(self) != what(other) else "its limits differ"


_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure: ``MemoryError``, ``torch.OutOfMemoryError``
    (``torch.cuda.OutOfMemoryError`` is the same class), or torch's CPU allocator failing
    (a ``RuntimeError`` "DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, MemoryError):
        return True
    if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(t in text for t in _OOM_TEXT)


def failure(exc: BaseException) -> StageResult:
    """A task that raised, as a value: the error text and whether it was out of memory."""
    return StageResult(error=f"{type(exc).__name__}: {exc}", oom=is_oom(exc))
