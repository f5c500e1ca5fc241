"""Multi-GPU (sequence-parallel) speed-up of a denoising step as a function of work size.

Pure: stdlib only, no I/O. The cost model (``costmodel.py``) uses a :class:`ScalingModel` for a
``diffuse`` stage at a degree its profile has not measured.

The model is Amdahl's law with a serial fraction that shrinks as the sequence grows::

    speedup(d, tokens) = d / (1 + (d - 1) * f(tokens))
    f(tokens)          = min(1, (t0_tokens / tokens) ** alpha)

``f`` is the part of a step that does not split across GPUs (kernel launches, all-to-all
latency, norms and small GEMMs that stop saturating a GPU once the sequence is divided). Below
``t0_tokens`` nothing is gained at all; large videos approach linear speed-up. ``tokens`` counts
output pixels x frames (``Shape.tokens``), the same axis the cost model interpolates on, so a
model's latent compression and patch size are folded into the two parameters.

The defaults come from :func:`calibrate` on ``tridentcore/profiles/data/published_scaling.csv``
(xDiT and vLLM-Omni figures for HunyuanVideo, Flux and Qwen-Image on H100/H20/L20/H800; 18
degree > 1 rows). ``benchmarks/cost_accuracy.py`` reports the fit's error (in-sample and leave one
model out); ``tests/test_costmodel.py`` checks that re-calibrating reproduces these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ScalingModel", "ScalingPoint", "calibrate", "DEFAULT_T0_TOKENS", "DEFAULT_ALPHA"]

# Result of calibrate(load_published_scaling()) (least squares on log time ratios).
DEFAULT_T0_TOKENS = 56_234.0
DEFAULT_ALPHA = 0.41


@dataclass(frozen=True, slots=True)
class ScalingPoint:
    """One published multi-GPU measurement: ``ratio`` = total_s(degree) / total_s(1)."""

    gpu: str
    model: str
    height: int
    width: int
    frames: int
    degree: int
    ratio: float
    note: str = ""

    @property
    def tokens(self) -> int:
        return self.height * self.width * self.frames


@dataclass(frozen=True, slots=True)
class ScalingModel:
    """Amdahl-like speed-up with a token-dependent serial fraction (see module docstring)."""

    t0_tokens: float = DEFAULT_T0_TOKENS
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        problems = []
        if not (self.t0_tokens > 0 and math.isfinite(self.t0_tokens)):
            problems.append(f"t0_tokens must be a positive number (got {self.t0_tokens!r})")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            problems.append(f"alpha must be a positive number (got {self.alpha!r})")
        if problems:
            raise ValueError("invalid scaling model: " + "; ".join(problems))

    def serial_fraction(self, tokens: float) -> float:
        """Fraction of a step that does not speed up with more GPUs, in [0, 1]."""
        if tokens <= 0:
            raise ValueError(f"tokens must be > 0 (got {tokens!r})")
        return min(1.0, (self.t0_tokens / tokens) ** self.alpha)

    def speedup(self, degree: int, tokens: float) -> float:
        """How many times faster a step runs on ``degree`` GPUs than on one (>= 1)."""
        if degree < 1:
            raise ValueError(f"degree must be >= 1 (got {degree!r})")
        if degree == 1:
            return 1.0
        f = self.serial_fraction(tokens)
        return degree / (1.0 + (degree - 1) * f)

    def efficiency(self, degree: int, tokens: float) -> float:
        """``speedup / degree``: 1.0 is perfect scaling."""
        return self.speedup(degree, tokens) / degree

    def time_ratio(self, degree: int, tokens: float) -> float:
        """Predicted time(degree) / time(1), the quantity published scaling tables report."""
        return 1.0 / self.speedup(degree, tokens)


def calibrate(
    points: Iterable[ScalingPoint],
    *,
    log10_t0_range: tuple[float, float] = (3.0, 8.0),
    alpha_range: tuple[float, float] = (0.01, 1.5),
    grid: int = 200,
) -> ScalingModel:
    """Fit ``t0_tokens`` and ``alpha`` by least squares on ``log(predicted / published ratio)``.

    A deterministic grid search (``grid`` x ``grid`` over the two ranges, then a finer grid around
    the best cell); points with ``degree == 1`` carry no information and are ignored.
    """
    data = [(p.tokens, p.degree, p.ratio) for p in points if p.degree > 1]
    if not data:
        raise ValueError("calibrate needs at least one point with degree > 1")
    if any(r <= 0 for _, _, r in data):
        raise ValueError("every ratio must be > 0")

    def loss(log10_t0: float, alpha: float) -> float:
        model = ScalingModel(10.0**log10_t0, alpha)
        return sum(math.log(model.time_ratio(d, t) / r) ** 2 for t, d, r in data)

    def search(lo_t: float, hi_t: float, lo_a: float, hi_a: float) -> tuple[float, float]:
        best: tuple[float, float, float] | None = None
        for i in range(grid + 1):
            lt = lo_t + (hi_t - lo_t) * i / grid
            for j in range(grid + 1):
                a = lo_a + (hi_a - lo_a) * j / grid
                if a <= 0:
                    continue
                value = loss(lt, a)
                if best is None or value < best[0]:
                    best = (value, lt, a)
        assert best is not None
        return best[1], best[2]

    lt, a = search(*log10_t0_range, *alpha_range)
    step_t = (log10_t0_range[1] - log10_t0_range[0]) / grid
    step_a = (alpha_range[1] - alpha_range[0]) / grid
    lt, a = search(lt - step_t, lt + step_t, max(a - step_a, 1e-6), a + step_a)
    return ScalingModel(10.0**lt, a)
