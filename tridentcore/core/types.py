"""Vocabulary shared by every layer (docs/design.md, "Core vocabulary")."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Protocol

from .errors import SpecError, TridentError

__all__ = [
    "DEGREES",
    "MAX_DEGREE",
    "PARALLEL_EFFICIENCY",
    "PROFILE_COLUMNS",
    "STAGES",
    "ProfileRow",
    "Shape",
    "SpecError",
    "StageKind",
    "TridentError",
    "class_label",
    "degrees_up_to",
    "parse_size",
    "size_label",
]


class StageKind(enum.StrEnum):
    """The three stages of a diffusion pipeline, in pipeline order.

    A ``StrEnum``: a member equals (and hashes like) its value, so ``StageKind.DIFFUSE ==
    "diffuse"`` and either works as a dict key; ``str()`` and f-strings give the value.
    """

    ENCODE = "encode"
    DIFFUSE = "diffuse"
    DECODE = "decode"

    @classmethod
    def parse(cls, value: "str | StageKind") -> "StageKind":
        if isinstance(value, StageKind):
            return value
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown stage {value!r}; valid stages: {valid}") from None


STAGES: tuple[StageKind, ...] = tuple(StageKind)  # encode, diffuse, decode

# Sequence-parallel degrees a diffuse may run at (GPUs of one node), and the parallel efficiency
# (speed-up / degree) a degree must reach to count as efficient: the SLO reference degree, the
# policies' efficient degree and trident-paper's allowed degrees all use this floor.
DEGREES: tuple[int, ...] = (1, 2, 4, 8)
MAX_DEGREE = DEGREES[-1]
PARALLEL_EFFICIENCY = 0.8


def degrees_up_to(max_degree: int, degrees: tuple[int, ...] = DEGREES) -> tuple[int, ...]:
    """The degrees in ``degrees`` that are ``<= max_degree`` (e.g. the GPUs of one node)."""
    return tuple(d for d in degrees if d <= max_degree)


def size_label(width: int, height: int, frames: int = 1) -> str:
    """``WIDTHxHEIGHT`` for images, ``WIDTHxHEIGHTxFRAMES`` for video."""
    base = f"{width}x{height}"
    return f"{base}x{frames}" if frames > 1 else base  # as the store's SQL: CASE WHEN frames > 1


class _Sized(Protocol):
    width: int
    height: int
    frames: int


def class_label(model: str, shape: _Sized) -> str:
    """A request class: ``model WxH`` (images) or ``model WxHxF`` (video), e.g.
    ``sd3-medium 1024x1024``, ``wan2.1-1.3b 832x480x81``: the unit of per-class attainment and
    fair goodput. ``shape``: anything with ``width``, ``height`` and ``frames`` (a :class:`Shape`,
    a ``RequestRow``). The one definition; the store's SQL form is checked against it."""
    return f"{model} {size_label(shape.width, shape.height, shape.frames)}"


@dataclass(frozen=True, slots=True)
class Shape:
    """Output shape of one request. ``frames`` is 1 for images."""

    height: int
    width: int
    frames: int = 1
    steps: int = 28

    def __post_init__(self) -> None:
        problems = []
        if self.height <= 0:
            problems.append(f"height must be > 0 (got {self.height})")
        if self.width <= 0:
            problems.append(f"width must be > 0 (got {self.width})")
        if self.frames <= 0:
            problems.append(f"frames must be > 0 (got {self.frames})")
        if self.steps <= 0:
            problems.append(f"steps must be > 0 (got {self.steps})")
        if problems:
            raise ValueError("invalid shape: " + "; ".join(problems))

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def tokens(self) -> int:
        """Token count used to interpolate costs: pixels x frames."""
        return self.height * self.width * self.frames

    def label(self) -> str:
        """``WIDTHxHEIGHT`` for images, ``WIDTHxHEIGHTxFRAMES`` for video."""
        return size_label(self.width, self.height, self.frames)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (as in the OpenAI images API) into ``(width, height)``."""
    parts = text.lower().replace(" ", "").split("x")
    # ASCII digits only (str.isdigit also takes other scripts' digits), at most 5 a side (int() of
    # thousands of digits fails with a message about the interpreter's limit)
    shown = text if len(text) <= 24 else text[:24] + "..."
    if len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts) and max(map(len, parts)) > 5:
        # (in the right form, only too large: it said "must be WIDTHxHEIGHT": outside test)
        raise ValueError(f"size {shown!r} is too large: at most 99999 pixels a side")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 5 for p in parts):
        raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 1024x768 (got {shown!r})")
    width, height = int(parts[0]), int(parts[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive (got {text!r})")
    return width, height


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """One measured (or derived) point of a stage profile.

    ``height``/``width``/``frames`` are ``None`` for ``encode`` rows, whose cost does not depend on
    the output shape. ``latency_ms`` is one denoising step for ``diffuse`` and one call otherwise.
    """

    gpu: str
    model: str
    stage: StageKind
    height: int | None
    width: int | None
    frames: int | None
    batch: int
    degree: int
    latency_ms: float
    peak_gib: float
    act_gib: float
    weights_gib: float
    source: str = "measured"

    @property
    def tokens(self) -> int | None:
        if self.height is None or self.width is None:
            return None
        return self.height * self.width * (self.frames or 1)


# Columns of a stage profile CSV, in order (docs/profiles.md): ProfileRow's fields.
PROFILE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ProfileRow))
