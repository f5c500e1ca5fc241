"""Helpers shared by the policies: degrees, reference latencies, GPU groups."""

from __future__ import annotations

import math

from ..costmodel import CostModel
from ..state import ClusterView
from ..types import DEGREES, PARALLEL_EFFICIENCY, STAGES, Shape, StageKind, degrees_up_to

__all__ = ["degrees_for", "efficient_degree", "pipeline_seconds", "place_everything"]


def degrees_for(view: ClusterView, model: str | None = None) -> tuple[int, ...]:
    """Degrees a group on one node can have on this cluster; with ``model``, only those its diffuse
    can take (``CostModel.allows_degree``: a UNet 1 only, a head-bound transformer the degrees that
    divide its heads)."""
    per_node = min(len(n) for n in view.nodes)
    degrees = degrees_up_to(per_node, DEGREES)
    return degrees if model is None else tuple(d for d in degrees if view.cost.allows_degree(model, d))


def efficient_degree(cost: CostModel, kind: str, model: str, shape: Shape, degrees: tuple[int, ...]) -> int:
    """The largest degree whose diffuse parallel efficiency is >= PARALLEL_EFFICIENCY (1 always qualifies)."""
    best = 1
    for d in degrees:
        if d > 1 and cost.parallel_efficiency(model, StageKind.DIFFUSE, shape, d, 1, kind) >= PARALLEL_EFFICIENCY:
            best = d
    return best


def pipeline_seconds(cost: CostModel, kind: str, model: str, shape: Shape, degree: int, steps: int | None = None) -> float:
    """No-queue time of encode + diffuse (``steps``, default all) + decode at ``degree``."""
    steps = shape.steps if steps is None else steps
    return (cost.latency_s(model, StageKind.ENCODE, None, 1, 1, kind)
            + steps * cost.latency_s(model, StageKind.DIFFUSE, shape, 1, degree, kind)
            + cost.latency_s(model, StageKind.DECODE, shape, 1, 1, kind))


def check_stages_fit(view: ClusterView, models, policy: str, stages=STAGES) -> None:
    """``PolicyError`` naming each stage whose weights (an encode's with its working memory, the same
    for every request) exceed every GPU's memory: no placement can run it, and every request of the
    model would be turned away (outside tests: 1 GiB and 11 GiB GPUs, exit 0 and every request
    rejected without a word)."""
    from ..policy import PolicyError

    largest = max(view.mem_gib(g) for g in range(view.num_gpus))

    def least(m, s):  # weights, and an encode's working memory (the same for every request)
        act = view.cost.activation_gib(m, s, None, 1, 1, view.gpu_kind) if s == StageKind.ENCODE else 0.0
        return view.instance_gib(m, s) + act

    too_big = [(m, s, least(m, s)) for m in models for s in stages if least(m, s) > largest + 1e-9]
    if too_big:
        up = lambda gib: math.ceil(gib * 100 - 1e-6) / 100  # noqa: E731 - (11.0007 is said as 11.01, not as 11.00)
        named = ", ".join(f"{m} {s.value} ({up(gib):.2f} GiB)" for m, s, gib in too_big)
        which = "this stage's" if len(too_big) == 1 else "these stages'"
        raise PolicyError(f"{policy}: no GPU can hold {which} weights (an encode: with its working memory): {named}; "
                          f"the largest GPU has {math.floor(largest * 100 + 1e-6) / 100:.2f} GiB")


def place_everything(view: ClusterView, models, stages=STAGES, policy: str = "pipeline-level"):
    """Place actions putting every stage of every model on every GPU (pipeline-level deployment).

    Raises ``PolicyError`` where those weights exceed a GPU's memory: the deployment cannot exist
    (placed anyway, the GPU held more than it has and every request ran out of memory)."""
    from ..events import Place
    from ..policy import PolicyError

    need = sum(view.instance_gib(m, s) for m in models for s in stages)
    small = [g for g in range(view.num_gpus) if need > view.mem_gib(g) + 1e-9]
    if small:
        names = ", ".join(models)
        raise PolicyError(
            f"{policy}: every GPU holds every stage of every model ({names}): {need:.1f} GiB of weights, "
            f"more than GPU {small[0]}'s {view.mem_gib(small[0]):.1f} GiB; serve fewer models, use GPUs "
            f"with more memory, or leave out the policies that deploy so (pipeline-static, pipeline-dynamic, "
            f"trident-paper): trident places each stage where it fits")
    return [Place(m, s, g) for g in range(view.num_gpus) for m in models for s in stages]
