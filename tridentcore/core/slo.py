"""SLOs: a request's objective and whether it was met (docs/design.md, "SLOs and metrics").

``slo_s = slo_scale x reference latency``; the reference is the request's no-queue latency at
batch 1: encode + steps x one diffuse step at the largest degree whose parallel efficiency is
>= :data:`~tridentcore.core.types.PARALLEL_EFFICIENCY` (degree 1 always allowed) + decode.

:func:`met_slo` is the one definition of "met its SLO": done, and finished by the deadline up to
:data:`SLO_TOLERANCE_S` (float sums of stage times land a hair past a deadline they meet exactly).
The store's ``requests.met_slo`` column is generated from the same constant
(``tridentcore.store.schema``) and a test checks the two agree.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .defaults import DEFAULT_SLO_SCALE
from .errors import is_int, is_number
from .types import DEGREES, MAX_DEGREE, PARALLEL_EFFICIENCY, Shape, StageKind

if TYPE_CHECKING:
    from .costmodel import CostModel

__all__ = [
    "DONE",
    "SLO_TOLERANCE_S",
    "SloFn",
    "make_slo_fn",
    "met_slo",
    "reference_degree",
    "reference_latency_s",
    "slo_s",
]

SloFn = Callable[[str, Shape], float]

DONE = "done"  # the one terminal state that can meet an SLO (RequestState.DONE's value)
SLO_TOLERANCE_S = 1e-9  # a finish this far past the deadline still meets it (float noise)


def met_slo(state: object, finish_s: float | None, deadline_s: float) -> bool:
    """Whether a request met its SLO: ``state`` is done (a string or a ``StrEnum``/``Enum`` whose
    value is ``"done"``) and it finished by ``deadline_s + SLO_TOLERANCE_S``. Rejected, failed,
    cancelled and unfinished requests miss."""
    value = getattr(state, "value", state)
    return value == DONE and finish_s is not None and finish_s <= deadline_s + SLO_TOLERANCE_S


def reference_degree(
    cost_model: "CostModel",
    model: str,
    shape: Shape,
    max_degree: int = MAX_DEGREE,
    efficiency: float = PARALLEL_EFFICIENCY,
    degrees: Sequence[int] = DEGREES,
    gpu: str | None = None,
) -> int:
    """The largest degree ``d <= max_degree`` in ``degrees`` whose diffuse parallel efficiency is
    ``>= efficiency`` (degree 1 always qualifies)."""
    if not (is_int(max_degree) and max_degree >= 1):
        raise ValueError(f"max_degree must be an integer >= 1 (got {max_degree!r})")
    best = 1
    for d in sorted(set(degrees)):
        if not (is_int(d) and d >= 1):
            raise ValueError(f"degrees must be integers >= 1 (got {d!r})")
        if d <= best or d > max_degree:
            continue
        if cost_model.parallel_efficiency(model, StageKind.DIFFUSE, shape, d, 1, gpu) >= efficiency - 1e-12:
            best = d
    return best


def reference_latency_s(
    cost_model: "CostModel",
    model: str,
    shape: Shape,
    max_degree: int = MAX_DEGREE,
    efficiency: float = PARALLEL_EFFICIENCY,
    degrees: Sequence[int] = DEGREES,
    gpu: str | None = None,
) -> float:
    """No-queue latency at batch 1: encode + steps x diffuse step at :func:`reference_degree` +
    decode (encode and decode on one GPU)."""
    degree = reference_degree(cost_model, model, shape, max_degree, efficiency, degrees, gpu)
    encode = cost_model.latency_s(model, StageKind.ENCODE, shape, 1, 1, gpu)
    step = cost_model.latency_s(model, StageKind.DIFFUSE, shape, 1, degree, gpu)
    decode = cost_model.latency_s(model, StageKind.DECODE, shape, 1, 1, gpu)
    return encode + shape.steps * step + decode


def slo_s(
    cost_model: "CostModel",
    model: str,
    shape: Shape,
    slo_scale: float = DEFAULT_SLO_SCALE,
    max_degree: int = MAX_DEGREE,
    gpu: str | None = None,
) -> float:
    """``slo_scale`` x :func:`reference_latency_s`."""
    if not (is_number(slo_scale) and slo_scale > 0 and math.isfinite(slo_scale)):
        raise ValueError(f"slo_scale must be a positive finite number (got {slo_scale!r})")
    return slo_scale * reference_latency_s(cost_model, model, shape, max_degree, gpu=gpu)


def make_slo_fn(
    cost_model: "CostModel", slo_scale: float = DEFAULT_SLO_SCALE, max_degree: int = MAX_DEGREE, gpu: str | None = None
) -> SloFn:
    """``slo_fn(model, shape)`` for ``generate_requests`` / ``requests_from_trace`` (memoised)."""
    cache: dict[tuple[str, Shape], float] = {}

    def slo_fn(model: str, shape: Shape) -> float:
        key = (model, shape)
        value = cache.get(key)
        if value is None:
            value = cache[key] = slo_s(cost_model, model, shape, slo_scale, max_degree, gpu)
        return value

    return slo_fn
