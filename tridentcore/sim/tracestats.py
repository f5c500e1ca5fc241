"""What a request sequence asks of a cluster: counts, rate and offered load in GPU-seconds per second.

Each request is costed at its most GPU-efficient degree, as the capacity ceiling of
:func:`tridentcore.bench.scenario.capacity_rps` does (:func:`tridentcore.core.capacity.efficient_price`):
encode (1 GPU) + min over degrees ``d`` of ``d x steps x step(d)`` + decode (1 GPU), batch 1,
degrees 1, 2, 4, 8 up to a node's GPU count. The offered load is the arrival rate times the mean of
that cost; the cluster's capacity is its GPU count (GPU-seconds per second). An offered load above
capacity means queues grow without bound under any policy: no placement or dispatch can pack the
work tighter than that.

The rate of ``n`` arrivals spanning ``first..last`` is ``(n - 1) / (last - first)`` (gaps per
second, exact for constant arrivals); it is undefined for one request or when all arrive at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.capacity import ClassDemand, efficient_price
from ..core.cluster import ClusterSpec
from ..core.costmodel import CostModel
from ..core.types import Shape, class_label
from ..core.workload import RequestSpec

__all__ = ["ClassLoad", "TraceStats", "min_gpu_s", "trace_stats"]


@dataclass(frozen=True, slots=True)
class ClassLoad:
    """One request class of a trace: how many, and the GPU-seconds one costs at its best degree."""

    label: str  # 'model WxH' / 'model WxHxF', as RequestRow.request_class
    steps: int
    requests: int
    best_degree: int
    gpu_s_each: float


@dataclass(frozen=True, slots=True)
class TraceStats:
    requests: int
    first_s: float
    last_s: float
    classes: tuple[ClassLoad, ...]
    num_gpus: int

    @property
    def duration_s(self) -> float:
        return self.last_s - self.first_s

    @property
    def rate_rps(self) -> float | None:
        if self.requests < 2 or self.duration_s <= 0:
            return None
        return (self.requests - 1) / self.duration_s

    @property
    def mean_gpu_s(self) -> float:
        return sum(c.requests * c.gpu_s_each for c in self.classes) / self.requests if self.requests else 0.0

    @property
    def offered_gpu_s_per_s(self) -> float | None:
        rate = self.rate_rps
        return None if rate is None else rate * self.mean_gpu_s

    @property
    def capacity_gpu_s_per_s(self) -> float:
        return float(self.num_gpus)

    @property
    def capacity_rps(self) -> float:
        """The rate this class mix could reach with perfect packing (as ``capacity_rps``)."""
        return self.num_gpus / self.mean_gpu_s if self.mean_gpu_s > 0 else float("inf")

    @property
    def load_fraction(self) -> float | None:
        offered = self.offered_gpu_s_per_s
        return None if offered is None else offered / self.capacity_gpu_s_per_s

    @property
    def overloaded(self) -> bool:
        fraction = self.load_fraction
        return fraction is not None and fraction > 1.0


def min_gpu_s(cost: CostModel, gpu_kind: str, model: str, shape: Shape, max_degree: int) -> tuple[float, int]:
    """GPU-seconds of one request at its most GPU-efficient degree, and that degree."""
    price = efficient_price(cost, gpu_kind, ClassDemand(model, shape, 1.0), max_degree)
    return price.gpu_s_each, price.degree


def trace_stats(requests: Sequence[RequestSpec], cost: CostModel, cluster: ClusterSpec, gpu_kind: str) -> TraceStats:
    """Counts per class and offered load of ``requests`` on ``cluster`` (costs from ``cost``)."""
    counts: dict[tuple[str, Shape], int] = {}
    for r in requests:
        counts[(r.model, r.shape)] = counts.get((r.model, r.shape), 0) + 1
    classes = []
    for (model, shape), n in counts.items():
        gpu_s, degree = min_gpu_s(cost, gpu_kind, model, shape, cluster.gpus_per_node)
        classes.append(ClassLoad(class_label(model, shape), shape.steps, n, degree, gpu_s))
    classes.sort(key=lambda c: (c.label, c.steps))
    times = [r.arrival_s for r in requests]
    return TraceStats(
        requests=len(requests),
        first_s=min(times, default=0.0),
        last_s=max(times, default=0.0),
        classes=tuple(classes),
        num_gpus=cluster.num_gpus,
    )
