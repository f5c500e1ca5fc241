"""Capacity ceilings: the request rate a cluster could sustain, priced from the cost model alone.

A ceiling is ``cluster GPUs / mean GPU-seconds per request`` (GPU-seconds per second over
GPU-seconds per request = requests per second): perfect packing, no queueing, no weight loads.
Each request class (model and shape) is priced at one (degree, batch); the mean is weighted by the
classes' shares of the requests. Two ways to price a class:

* **efficient** (the ceiling reported since the first goodput sweeps): the most GPU-efficient
  degree at batch 1, whatever the deadline: encode (1 GPU) + ``d x steps x step(d)`` + decode
  (1 GPU), minimised over the degrees ``d`` in 1, 2, 4, 8 up to a node's GPU count.
* **SLO-aware** (docs/design.md, "SLOs and metrics"): the cheapest (fewest GPU-seconds per
  request) degree and batch whose no-queue latency ``encode(b) + steps x step(b, d) + decode(b)``
  meets the class's SLO ``slo_s`` (up to :data:`~tridentcore.core.slo.SLO_TOLERANCE_S`, as
  :func:`~tridentcore.core.slo.met_slo`); the price is that pipeline's GPU-seconds divided by
  ``b``. A batch is ``b`` requests of the class run through all three stages together; the sizes
  tried are 1 and the diffuse stage's measured batch levels (:meth:`CostModel.batches`), never a
  size the profile did not measure; a size the cost model cannot answer for some stage is skipped.

At batch 1 the SLO-aware price is never below the efficient one (the cheapest degree that meets a
deadline costs at least the cheapest degree overall), so without batching the SLO-aware ceiling is
at most the efficient ceiling. With batching it can be above it: on the ``h200`` profile an
sd3-medium 512x512 request costs 0.38 GPU-s in a batch of 4 and 1.06 GPU-s alone, and at SLO scale
3 a batch of 4 still meets its deadline.

A class that meets its SLO at no degree and batch (its SLO is below its fastest no-queue latency:
an SLO scale under 1, or a client's own ``slo_ms``) is **turned away** by the SLO-aware pricing, as
``late=reject`` would at admission: it costs 0 GPU-seconds and still counts in the rate, and
:attr:`Ceiling.turned_away` lists it (:meth:`Ceiling.note` says so in a sentence). When every class
is turned away no request can meet its SLO and the ceiling is 0.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .slo import SLO_TOLERANCE_S
from .types import Shape, StageKind, class_label, degrees_up_to

if TYPE_CHECKING:
    from .costmodel import CostModel

__all__ = [
    "EFFICIENT",
    "SLO_AWARE",
    "Ceiling",
    "ClassDemand",
    "ClassPrice",
    "efficient_ceiling",
    "efficient_price",
    "pipeline_gpu_s",
    "slo_aware_ceiling",
    "slo_aware_price",
]

EFFICIENT = "efficient"
SLO_AWARE = "slo-aware"


@dataclass(frozen=True, slots=True)
class ClassDemand:
    """One request class of a workload: its share of the requests and its SLO (seconds)."""

    model: str
    shape: Shape
    weight: float
    slo_s: float | None = None  # needed by the SLO-aware price only

    @property
    def label(self) -> str:
        return class_label(self.model, self.shape)


@dataclass(frozen=True, slots=True)
class ClassPrice:
    """GPU-seconds per request of one class at the (degree, batch) it is priced at."""

    label: str
    weight: float
    gpu_s_each: float  # 0.0 when turned away
    degree: int | None  # None: turned away (no degree and batch meets its SLO)
    batch: int | None
    latency_s: float | None  # no-queue latency at that degree and batch

    @property
    def turned_away(self) -> bool:
        return self.degree is None


@dataclass(frozen=True, slots=True)
class Ceiling:
    """A capacity ceiling: ``num_gpus`` over the weighted mean of the classes' prices."""

    kind: str  # EFFICIENT or SLO_AWARE
    num_gpus: int
    classes: tuple[ClassPrice, ...]

    @property
    def mean_gpu_s(self) -> float:
        total = sum(c.weight for c in self.classes)
        return sum(c.weight * c.gpu_s_each for c in self.classes) / total if total > 0 else 0.0

    @property
    def rps(self) -> float:
        """Requests per second with perfect packing (0 when no class can meet its SLO)."""
        mean = self.mean_gpu_s
        return self.num_gpus / mean if mean > 0 else 0.0

    @property
    def turned_away(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.classes if c.turned_away)

    def note(self) -> str:
        """'' or a sentence naming the classes turned away."""
        gone = self.turned_away
        if not gone:
            return ""
        return (f"{len(gone)} of {len(self.classes)} classes meet their SLO at no degree or batch ({', '.join(gone)}): "
                "counted as turned away at admission (0 GPU-seconds)")


def pipeline_gpu_s(cost: "CostModel", gpu_kind: str, model: str, shape: Shape, degree: int,
                   batch: int = 1) -> tuple[float, float]:
    """(GPU-seconds per request, no-queue latency) of ``batch`` requests of one class run together:
    encode and decode on one GPU, the diffuse's ``shape.steps`` steps on ``degree`` GPUs."""
    encode = cost.latency_s(model, StageKind.ENCODE, None, batch, 1, gpu_kind)
    step = cost.latency_s(model, StageKind.DIFFUSE, shape, batch, degree, gpu_kind)
    decode = cost.latency_s(model, StageKind.DECODE, shape, batch, 1, gpu_kind)
    gpu_s = encode + degree * shape.steps * step + decode
    return (gpu_s if batch == 1 else gpu_s / batch), encode + shape.steps * step + decode


def efficient_price(cost: "CostModel", gpu_kind: str, demand: ClassDemand, max_degree: int) -> ClassPrice:
    """The class at its most GPU-efficient degree, batch 1, its SLO aside."""
    options = []
    for d in degrees_up_to(max_degree):
        gpu_s, latency = pipeline_gpu_s(cost, gpu_kind, demand.model, demand.shape, d)
        options.append((gpu_s, d, latency))
    gpu_s, degree, latency = min(options)
    return ClassPrice(demand.label, demand.weight, gpu_s, degree, 1, latency)


def slo_aware_price(cost: "CostModel", gpu_kind: str, demand: ClassDemand, max_degree: int, *,
                    batching: bool = True) -> ClassPrice:
    """The class at the cheapest degree and batch whose no-queue latency meets ``demand.slo_s``
    (ties: the smaller degree, then the smaller batch); turned away when none does."""
    if demand.slo_s is None:
        raise ValueError(f"{demand.label}: the SLO-aware price needs the class's slo_s")
    batches = (1,)
    if batching:
        batches = tuple(sorted({1, *cost.batches(demand.model, StageKind.DIFFUSE, gpu_kind)}))
    best: tuple[float, int, int, float] | None = None
    for b in batches:
        for d in degrees_up_to(max_degree):
            try:
                gpu_s, latency = pipeline_gpu_s(cost, gpu_kind, demand.model, demand.shape, d, b)
            except LookupError:
                if b == 1:
                    raise  # batch 1 is what every price rests on: the cost model's error names what is missing
                continue
            if latency <= demand.slo_s + SLO_TOLERANCE_S and (best is None or (gpu_s, d, b) < best[:3]):
                best = (gpu_s, d, b, latency)
    if best is None:
        return ClassPrice(demand.label, demand.weight, 0.0, None, None, None)
    gpu_s, degree, batch, latency = best
    return ClassPrice(demand.label, demand.weight, gpu_s, degree, batch, latency)


def efficient_ceiling(cost: "CostModel", gpu_kind: str, demands: Iterable[ClassDemand], num_gpus: int,
                      max_degree: int) -> Ceiling:
    """Every class at its most GPU-efficient degree (batch 1, SLOs aside)."""
    prices = tuple(efficient_price(cost, gpu_kind, c, max_degree) for c in demands)
    return Ceiling(EFFICIENT, num_gpus, prices)


def slo_aware_ceiling(cost: "CostModel", gpu_kind: str, demands: Iterable[ClassDemand], num_gpus: int,
                      max_degree: int, *, batching: bool = True) -> Ceiling:
    """Every class at the cheapest degree and batch that meets its SLO without queueing."""
    prices = tuple(slo_aware_price(cost, gpu_kind, c, max_degree, batching=batching) for c in demands)
    return Ceiling(SLO_AWARE, num_gpus, prices)
