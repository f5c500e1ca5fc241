"""The cost model's lookup tables: profile rows of one (gpu, model, stage, degree) as batch levels of
token curves, made monotone and precomputed for the hot path.

Pure and stdlib-only, like :mod:`tridentcore.core.costmodel`, which builds them (:func:`build_table`)
and answers queries from them; the interpolation rules are described in that module's docstring.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from .types import ProfileRow, StageKind

__all__ = ["Adjustment", "Curve", "QUANTITIES", "Table", "Uncovered", "build_table", "monotone"]

QUANTITIES = ("latency_ms", "act_gib")


class Uncovered(Exception):
    """One curve or table cannot answer; the caller adds model/stage/shape context."""


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A measured value raised to keep costs monotone in tokens and batch."""

    gpu: str
    model: str
    stage: StageKind
    tokens: int | None
    batch: int
    degree: int
    quantity: str  # "latency_ms" or "act_gib"
    measured: float
    used: float

    def describe(self) -> str:
        where = f"tokens {self.tokens} " if self.tokens is not None else ""
        return (f"{self.model} {self.stage.value} {where}batch {self.batch} degree {self.degree} on {self.gpu}: "
                f"{self.quantity} measured {self.measured:.4g}, used {self.used:.4g}")


class Curve:
    """One quantity along the token axis at one batch level (precomputed for fast lookup)."""

    __slots__ = ("tokens", "values", "log_tokens", "log_slopes", "lin_slopes")

    def __init__(self, tokens: tuple[int, ...] | None, values: tuple[float, ...]) -> None:
        self.tokens = tokens
        self.values = values
        if tokens is None:
            self.log_tokens = ()
            self.log_slopes = ()
            self.lin_slopes = ()
            return
        self.log_tokens = tuple(math.log(t) for t in tokens)
        log_slopes: list[float | None] = []
        lin_slopes: list[float] = []
        for k in range(len(tokens) - 1):
            v0, v1 = values[k], values[k + 1]
            lin_slopes.append((v1 - v0) / (tokens[k + 1] - tokens[k]))
            if v0 > 0 and v1 > 0:
                log_slopes.append((math.log(v1) - math.log(v0)) / (self.log_tokens[k + 1] - self.log_tokens[k]))
            else:
                log_slopes.append(None)
        self.log_slopes = tuple(log_slopes)
        self.lin_slopes = tuple(lin_slopes)

    def describe(self) -> str:
        if self.tokens is None:
            return "no shape axis"
        if len(self.tokens) == 1:
            return f"one measured shape ({self.tokens[0]} tokens)"
        return f"measured {self.tokens[0]}..{self.tokens[-1]} tokens"

    def span(self, max_extrapolation: float) -> tuple[int, int] | None:
        """The token counts :meth:`at` answers: None for no shape axis (every count), else the closed
        range, as far as ``max_extrapolation`` reaches past the measured ends (one measured shape: that
        shape alone)."""
        if self.tokens is None:
            return None
        if len(self.tokens) == 1:
            return self.tokens[0], self.tokens[0]
        return math.ceil(self.tokens[0] / max_extrapolation), math.floor(self.tokens[-1] * max_extrapolation)

    def at(self, tokens: int | None, max_extrapolation: float) -> float:
        if self.tokens is None:
            return self.values[0]
        if tokens is None:
            raise Uncovered("needs a shape")
        xs, vs = self.tokens, self.values
        n = len(xs)
        i = bisect.bisect_left(xs, tokens)
        if i < n and xs[i] == tokens:
            return vs[i]
        if n == 1:
            raise Uncovered(f"only one measured shape ({xs[0]} tokens) at this batch; cannot interpolate")
        if i == 0:
            if xs[0] / tokens > max_extrapolation:
                raise Uncovered(
                    f"{tokens} tokens is more than {max_extrapolation:g}x below the smallest measured "
                    f"shape ({xs[0]} tokens)"
                )
            slope = self.log_slopes[0]
            slope = 1.0 if slope is None else min(max(slope, 0.0), 1.0)
            return vs[0] * (tokens / xs[0]) ** slope
        if i == n:
            if tokens / xs[-1] > max_extrapolation:
                raise Uncovered(
                    f"{tokens} tokens is more than {max_extrapolation:g}x above the largest measured "
                    f"shape ({xs[-1]} tokens)"
                )
            slope = self.log_slopes[-1]
            if slope is None:
                return vs[-1] + (tokens - xs[-1]) * max(self.lin_slopes[-1], 0.0)
            return vs[-1] * (tokens / xs[-1]) ** max(slope, 0.0)
        k = i - 1
        slope = self.log_slopes[k]
        if slope is None:
            return vs[k] + (tokens - xs[k]) * self.lin_slopes[k]
        return vs[k] * math.exp(slope * (math.log(tokens) - self.log_tokens[k]))


class Table:
    """All rows of one (gpu, model, stage, degree), as batch levels of token curves."""

    __slots__ = ("levels", "curves", "weights_gib")

    def __init__(self, levels: tuple[int, ...], curves: dict[str, dict[int, Curve]], weights_gib: float) -> None:
        self.levels = levels
        self.curves = curves
        self.weights_gib = weights_gib

    def describe(self) -> str:
        parts = [f"batch {b}: {self.curves['latency_ms'][b].describe()}" for b in self.levels]
        return "; ".join(parts)

    def at(self, quantity: str, tokens: int | None, batch: int, max_extrapolation: float) -> float:
        levels = self.levels
        curves = self.curves[quantity]
        if batch < levels[0]:
            raise Uncovered(f"batch {batch} is below the smallest measured batch ({levels[0]})")

        def level_value(k: int) -> float:
            # Running maximum over lower levels keeps the result monotone in batch even where
            # levels measured at different token counts cross after interpolation.
            value = curves[levels[k]].at(tokens, max_extrapolation)
            for j in range(k):
                try:
                    value = max(value, curves[levels[j]].at(tokens, max_extrapolation))
                except Uncovered:
                    continue
            return value

        i = bisect.bisect_right(levels, batch)  # levels[i - 1] <= batch
        if levels[i - 1] == batch:
            return level_value(i - 1)
        if i < len(levels):
            b0, b1 = levels[i - 1], levels[i]
            v0, v1 = level_value(i - 1), level_value(i)
            return v0 + (batch - b0) * (v1 - v0) / (b1 - b0)
        last = levels[-1]
        v_last = level_value(len(levels) - 1)
        if len(levels) == 1:
            return v_last * batch / last
        prev = levels[-2]
        v_prev = level_value(len(levels) - 2)
        per_request = max((v_last - v_prev) / (last - prev), 0.0)
        return v_last + (batch - last) * per_request


def monotone(points: dict[tuple[int | None, int], float]) -> dict[tuple[int | None, int], float]:
    """Smallest majorant of ``points`` that is non-decreasing in tokens and in batch: each point's
    value is the largest of the points at no more batch and no more tokens (a point without tokens,
    an encode, takes every point at no more batch). O(n log n): the points in batch order, a
    prefix-maximum (Fenwick) tree over tokens (comparing each pair took 7 s for 20,000 rows)."""
    tokens = sorted({t for t, _ in points if t is not None})
    rank = {t: i + 1 for i, t in enumerate(tokens)}
    tree = [-math.inf] * (len(tokens) + 1)  # tree[i]: the max over a range of token ranks ending at i
    best = -math.inf  # the max over every point inserted so far (all at no more batch)
    items = sorted(points.items(), key=lambda kv: kv[0][1])
    out: dict[tuple[int | None, int], float] = {}
    i = 0
    while i < len(items):
        j = i
        while j < len(items) and items[j][0][1] == items[i][0][1]:  # every point of this batch first
            (t2, _), v2 = items[j]
            best = max(best, v2)
            if t2 is not None:
                k = rank[t2]
                while k <= len(tokens):
                    tree[k] = max(tree[k], v2)
                    k += k & -k
            j += 1
        for (t, b), _ in items[i:j]:
            if t is None:
                out[(t, b)] = best
                continue
            k, top = rank[t], -math.inf
            while k > 0:
                top = max(top, tree[k])
                k -= k & -k
            out[(t, b)] = top
        i = j
    return out


def build_table(
    key: tuple[str, str, StageKind, int], group: list[ProfileRow], adjustments: list[Adjustment]
) -> Table:
    """The table of one (gpu, model, stage, degree) key; appends each monotone adjustment to ``adjustments``."""
    gpu, model, stage, degree = key
    encode = stage is StageKind.ENCODE
    curves: dict[str, dict[int, Curve]] = {}
    for quantity in QUANTITIES:
        # Shapes with the same token count (1024x512 and 512x1024) are one point on the token
        # axis: the larger value is kept, like any other monotone adjustment.
        measured: list[tuple[int | None, int, float]] = []
        points: dict[tuple[int | None, int], float] = {}
        for row in group:
            tokens = None if encode else row.tokens
            value = float(getattr(row, quantity))
            measured.append((tokens, row.batch, value))
            points[(tokens, row.batch)] = max(value, points.get((tokens, row.batch), value))
        used = monotone(points)
        for tokens, batch, value in sorted(measured, key=lambda m: (m[1], m[0] or 0, m[2])):
            if used[(tokens, batch)] > value:
                adjustments.append(
                    Adjustment(gpu, model, stage, tokens, batch, degree, quantity, value, used[(tokens, batch)])
                )
        per_level: dict[int, Curve] = {}
        for batch in sorted({b for _, b in used}):
            if encode:
                per_level[batch] = Curve(None, (used[(None, batch)],))
            else:
                xs = tuple(sorted(t for t, b in used if b == batch and t is not None))
                per_level[batch] = Curve(xs, tuple(used[(t, batch)] for t in xs))
        curves[quantity] = per_level
    levels = tuple(sorted(curves["latency_ms"]))
    return Table(levels, curves, max(r.weights_gib for r in group))
