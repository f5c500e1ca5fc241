"""What ``trident`` knows about one request class (model, shape): the cost model's answers, computed
once per class (:func:`class_info`), and how far an observed mix has drifted from the planned one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..state import ClusterView
from ..types import PARALLEL_EFFICIENCY, Shape, StageKind

__all__ = ["ClassInfo", "class_info", "mix_drift"]


@dataclass(slots=True)
class ClassInfo:
    """Cost-model answers for one (model, shape), computed once."""

    enc_s: float
    dec_s: float
    step_s: dict[int, float]  # degree -> seconds per step at batch 1
    eff_d: int  # efficient degree (SLO reference)
    fast_d: int  # fastest degree
    batch: int  # best diffuse batch (1 = batching does not pay)
    dec_batch: int
    never_fits: str  # non-empty: why no GPU can ever hold it
    degrees: tuple[int, ...] = (1,)  # the diffuse degrees it may run at (CostModel.allows_degree)
    # (stage, degree) -> activation GiB per GPU of one request, as the cost model answers (filled as asked)
    act_gib: dict[tuple[str, int], float] = field(default_factory=dict)


def mix_drift(planned: dict, observed: dict) -> float:
    """Total variation distance between two mixes given as ``{class: weight}``."""
    tp, to = sum(planned.values()) or 1.0, sum(observed.values()) or 1.0
    keys = set(planned) | set(observed)
    return 0.5 * sum(abs(planned.get(k, 0.0) / tp - observed.get(k, 0.0) / to) for k in keys)


def class_info(view: ClusterView, degrees: tuple[int, ...], model: str, shape: Shape) -> ClassInfo:
    """The cost model's answers for one (model, shape) on this cluster, at the given degrees."""
    cost, kind = view.cost, view.gpu_kind
    degrees = tuple(d for d in degrees if cost.allows_degree(model, d))  # a UNet: 1 only; heads bound the rest
    enc = cost.latency_s(model, StageKind.ENCODE, None, 1, 1, kind)
    dec = cost.latency_s(model, StageKind.DECODE, shape, 1, 1, kind)
    step = {d: cost.latency_s(model, StageKind.DIFFUSE, shape, 1, d, kind) for d in degrees}
    eff = 1
    for d in degrees:
        if d > 1 and step[1] / (step[d] * d) >= PARALLEL_EFFICIENCY:
            eff = d
    fast = min(degrees, key=lambda d: (step[d], d))
    batch = dec_batch = 1
    for b in (4, 3, 2):
        try:
            if batch == 1 and cost.latency_s(model, StageKind.DIFFUSE, shape, b, 1, kind) / b <= 0.85 * step[1]:
                batch = b
            if dec_batch == 1 and cost.latency_s(model, StageKind.DECODE, shape, b, 1, kind) / b <= 0.85 * dec:
                dec_batch = b
        except LookupError:
            continue
    biggest = max(view.mem_gib(g) for g in range(view.num_gpus))
    problems = []
    for stage, d in ((StageKind.ENCODE, 1), (StageKind.DIFFUSE, max(degrees)), (StageKind.DECODE, 1)):
        need = cost.weights_gib(model, stage, kind) + cost.activation_gib(
            model, stage, None if stage == StageKind.ENCODE else shape, 1, d, kind)
        if need > biggest:
            problems.append(f"{stage} needs {need:.1f} GiB per GPU, the largest GPU has {biggest:.1f} GiB")
    return ClassInfo(enc, dec, step, eff, fast, batch, dec_batch, "; ".join(problems), tuple(degrees))
