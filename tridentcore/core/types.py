"""Vocabulary shared by every layer (DESIGN.md, "Core vocabulary")."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class SpecError(ValueError):
    """A description (cluster, mix, workload...) that cannot be used; ``problems`` lists every
    problem found, so one error reports them all."""

    def __init__(self, origin: str, problems: Iterable[str]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"{origin}: {self.problems[0]}"
        else:
            message = f"{origin}: {len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


class StageKind(str, enum.Enum):
    """The three stages of a diffusion pipeline."""

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
        base = f"{self.width}x{self.height}"
        return base if self.frames == 1 else f"{base}x{self.frames}"


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (as in the OpenAI images API) into ``(width, height)``."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 1024x768 (got {text!r})")
    width, height = int(parts[0]), int(parts[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive (got {text!r})")
    return width, height


# Columns of a stage profile CSV, in order (shared/profiles/README.md).
PROFILE_COLUMNS: tuple[str, ...] = (
    "gpu",
    "model",
    "stage",
    "height",
    "width",
    "frames",
    "batch",
    "degree",
    "latency_ms",
    "peak_gib",
    "act_gib",
    "weights_gib",
    "source",
)


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
