"""Online calibration: what the devices really take, learnt from the dispatches that completed.

A profile is measured once, on one machine; the devices a run has differ (another GPU, another
library version, co-location, a busy host). :class:`Calibration` keeps, per model, stage and shape
bucket (tokens to the nearest power of two; encode has no shape), the recent ratios of measured to
predicted compute time and answers their median (robust to a stray slow run); a bucket with too few
observations borrows the model and stage's median over all shapes. Within a bucket each layout (the
dispatch's degree and batch) has its own median as well, used while it is current: a profile's
parallel and batching speed-ups may not hold on the devices a run has (outside test 117: on a 2-core
host a diffuse on 2 CPU workers took twice as long as on one, which the profile had as faster, and
its ratios, mixed with degree 1's, set both degrees' predictions wrong). A layout not dispatched in
the bucket's last ``window`` observations falls back to the bucket's median (the host may have
changed since: without it, a layout left while the host was busy kept its busy-host factor and was
never tried again). :class:`CalibratedCost` is the cost model with every stage latency scaled by that
factor, which is what the cluster state, the policy and the deadlines then see.

The driver core feeds it (``DriverCore(calibrate=True)``): the same reports give the same factors,
so a replayed run calibrates exactly as it did live. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from typing import Any

from .costmodel import CostModel
from .types import Shape, StageKind

__all__ = ["CalibratedCost", "Calibration"]


class Calibration:
    """Measured / predicted compute time per model, stage, shape bucket and layout: the median of the
    last ``window``.

    A factor moves only after ``min_samples`` observations and stays within ``[lo, hi]``; ``version``
    changes whenever a factor moves by more than ``step`` (relative), so a policy can drop answers it
    cached under the old factors."""

    def __init__(self, window: int = 32, min_samples: int = 3, lo: float = 0.05, hi: float = 50.0,
                 step: float = 0.05) -> None:
        self.window, self.min_samples, self.lo, self.hi, self.step = window, min_samples, lo, hi, step
        self._ratios: dict[tuple[str, str], deque[float]] = {}
        self._factors: dict[tuple[str, str], float] = {}
        self._published: dict[tuple[str, str], float] = {}
        # per layout (model, stage, bucket, degree, batch): the same three, and the bucket's count of
        # observations when it was last observed (``_seen``: that count per bucket)
        self._layout_ratios: dict[tuple, deque[float]] = {}
        self._layout_factors: dict[tuple, float] = {}
        self._layout_published: dict[tuple, float] = {}
        self._layout_last: dict[tuple, int] = {}
        self._seen: dict[tuple, int] = {}
        self._layouts: dict[tuple, list[tuple]] = {}  # per bucket, its layouts seen
        self.version = 0
        self.observations = 0

    @staticmethod
    def bucket(stage: str, shape: Shape | None) -> int:
        """The shape bucket: log2 of its tokens (pixels x frames), rounded; 0 for encode or no shape."""
        if shape is None or str(stage) == StageKind.ENCODE:
            return 0
        return round(math.log2(max(1, shape.height * shape.width * max(1, shape.frames))))

    def observe(self, model: str, stage: str, shape: Shape | None, predicted_s: float, measured_s: float,
                degree: int = 1, batch: int = 1) -> None:
        """One completed dispatch of ``degree`` devices and ``batch`` requests: its compute took
        ``measured_s`` where the profile said ``predicted_s``."""
        if not predicted_s > 0 or not measured_s >= 0:
            return
        ratio = min(self.hi, max(self.lo, measured_s / predicted_s))
        self.observations += 1
        bucket = (model, str(stage), self.bucket(stage, shape))
        seen = self._seen[bucket] = self._seen.get(bucket, 0) + 1
        layout = (*bucket, degree, batch)
        for other in self._layouts.setdefault(bucket, []):  # a layout that falls back now: its answer moves
            if seen - self._layout_last[other] == self.window and other != layout and other in self._layout_published:
                self.version += 1
        if layout not in self._layout_last:
            self._layouts[bucket].append(layout)
        self._layout_last[layout] = seen
        ratios = self._layout_ratios.setdefault(layout, deque(maxlen=self.window))
        ratios.append(ratio)
        if len(ratios) >= self.min_samples:
            factor = self._layout_factors[layout] = statistics.median(ratios)
            old = self._layout_published.get(layout)
            if old is None or abs(factor / old - 1.0) > self.step:
                self._layout_published[layout] = factor
                self.version += 1
        for key in (bucket, (model, str(stage), None)):
            ratios = self._ratios.setdefault(key, deque(maxlen=self.window))
            ratios.append(ratio)
            if len(ratios) < self.min_samples:
                continue
            factor = statistics.median(ratios)
            self._factors[key] = factor
            old = self._published.get(key, 1.0)
            if abs(factor / old - 1.0) > self.step:
                self._published[key] = factor
                self.version += 1

    def factor(self, model: str, stage: str, shape: Shape | None = None, degree: int = 1, batch: int = 1) -> float:
        """The published factor of the layout (``degree``, ``batch``) in the shape's bucket while it is
        current, else the bucket's, else the stage's over all shapes (1 until ``min_samples``
        observations; each moves in steps of ``step``)."""
        return self._answer((model, str(stage), self.bucket(stage, shape), degree, batch))

    def _answer(self, layout: tuple) -> float:
        key = layout[:3]
        mine = self._layout_published.get(layout)
        if mine is not None and self._seen[key] - self._layout_last[layout] < self.window:
            return mine
        if key in self._published:
            return self._published[key]
        return self._published.get((*layout[:2], None), 1.0)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per model and stage (all shapes; ``buckets``: per shape bucket): the factor in use, the
        current median and the observations kept."""
        out = []
        for (m, s, b), r in sorted(self._ratios.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] is not None,
                                                                       kv[0][2] or 0)):
            row = {"factor": self._published.get((m, s, b), 1.0), "median": self._factors.get((m, s, b), 1.0),
                   "samples": len(r)}
            if b is None:
                out.append({"model": m, "stage": s, **row, "buckets": []})
            else:
                seen = self._seen.get((m, s, b), 0)
                # ``factor``: the one in use for the layout (its own, or, too few samples or not current,
                # the bucket's: outside test 118 read 1.0 where 0.626 was used)
                layouts = [{"degree": d, "batch": n, "factor": self._answer(key),
                            "median": self._layout_factors.get(key, 1.0), "samples": len(lr),
                            "current": seen - self._layout_last[key] < self.window}
                           for key, lr in sorted(self._layout_ratios.items()) if key[:3] == (m, s, b)
                           for d, n in [key[3:]]]
                out[-1]["buckets"].append({"log2_tokens": b, **row, "layouts": layouts})
        return out


class CalibratedCost:
    """A :class:`CostModel` whose stage latencies are scaled by a :class:`Calibration`'s factors (and so
    its speed-ups and parallel efficiencies: each degree has its own factor).

    Everything else (weights, activations, load and transfer times) is the base model's answer."""

    def __init__(self, base: CostModel, calibration: Calibration) -> None:
        self.base = base
        self.calibration = calibration

    @property
    def version(self) -> int:
        return self.calibration.version

    def latency_s(self, model: str, stage: StageKind | str, shape: Shape | None, batch: int = 1, degree: int = 1,
                  gpu: str | None = None) -> float:
        return (self.base.latency_s(model, stage, shape, batch, degree, gpu)
                * self.calibration.factor(model, stage, shape, degree, batch))

    def speedup(self, model: str, stage: StageKind | str, shape: Shape | None, degree: int, batch: int = 1,
                gpu: str | None = None) -> float:
        """latency(degree 1) / latency(degree), calibrated: each degree has its own factor."""
        return (self.latency_s(model, stage, shape, batch, 1, gpu)
                / self.latency_s(model, stage, shape, batch, degree, gpu))

    def parallel_efficiency(self, model: str, stage: StageKind | str, shape: Shape | None, degree: int,
                            batch: int = 1, gpu: str | None = None) -> float:
        return self.speedup(model, stage, shape, degree, batch, gpu) / degree

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def __dir__(self) -> Iterable[str]:
        return sorted(set(dir(self.base)) | {"base", "calibration", "version", "speedup", "parallel_efficiency"})
