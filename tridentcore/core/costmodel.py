"""The cost model: what a stage call costs in time and memory, from a stage profile.

Pure (stdlib only; no torch, numpy, clock or I/O): the simulator calls it on its hot path and the
live planner calls it for every decision. Build it from :class:`~tridentcore.core.types.ProfileRow`
values (``tridentcore.profiles.load_profile(...).cost_model()`` does that). The interpolation tables
below are built by :mod:`tridentcore.core.costtables`; this module answers queries from them. It is
about 500 lines (a sixth of them this docstring): one class whose answers share the tables, the
memo and the degree rules, so splitting it would only pass those around.

Units and meanings
------------------
* ``latency_s``: ``diffuse`` = ONE denoising step; ``encode`` / ``decode`` = one call.
* ``batch`` = requests served together by one call, exactly as in the profile's ``batch`` column.
  For CFG models (sd3-medium, sdxl, wan2.1-1.3b) one request is a tensor batch of 2 (prompt and
  negative prompt run together); the profile's rows already count requests, not tensor rows (the
  raw encode supplement's tensor batch 2/8/16 appears in h200.csv as batch 1/4/8), so no factor 2
  is applied anywhere here.
* ``tokens`` = output pixels x frames (:attr:`Shape.tokens`); ``encode`` has no shape axis.
* GiB = 2**30 bytes, GB/s = 1e9 bytes per second.

Interpolation
-------------
Rows are grouped per (gpu, model, stage, degree) into *batch levels* (the measured batches); at
each level the measured token counts form a curve.

* Tokens: log-log piecewise linear between neighbouring measured token counts. Outside the
  measured range a level extrapolates at most ``max_extrapolation`` (default 2x) beyond it, using
  the slope of the end segment: upwards with slope >= 0, downwards with the slope clamped to
  [0, 1], i.e. a shape half the size never costs less than half (small shapes are launch-bound).
  Further out, or a level with a single measured shape asked for another one, raises
  :class:`CostModelError` naming model, stage and shape.
* Batch: linear between the two neighbouring measured batches (``benchmarks/cost_accuracy.py``
  measured linear to beat log-log in batch: cost is nearly affine in batch). Beyond the largest
  measured batch: linear per extra request from the last two levels (slope >= 0); with a single
  level, proportional (b calls' worth). Below the smallest measured batch: error.
* Monotonicity: a bigger shape or a bigger batch never costs less. Measured points that violate
  that (launch-bound noise, e.g. sd3-medium 512x512 batch 2 faster than batch 1) are raised to the
  running maximum over all points with fewer-or-equal tokens and batch (two shapes with the same
  token count, e.g. 1024x512 and 512x1024, are one point: the larger value); every such change is
  listed in :attr:`CostModel.adjustments`. Every other measured point is reproduced exactly.
* Activation memory (``act_gib``) is interpolated the same way.

Degree (GPUs cooperating on one call)
-------------------------------------
Only ``diffuse`` splits across GPUs (sequence parallelism). ``encode`` and ``decode`` at degree > 1
cost what they cost at degree 1: one GPU of the group runs them (speed-up 1.0).
For ``diffuse`` at degree d:

1. rows measured at degree d that cover the shape are used directly (interpolated as above);
2. else, if the profile measured other degrees > 1 for this model and stage, the serial fraction
   they imply at this shape (Amdahl) is applied, taking the measured degree nearest to d; where that
   degree measured slower than degree 1, d costs what it measured (no split is priced faster);
3. else the analytic :class:`~tridentcore.core.scaling.ScalingModel` of tokens x batch.

Activation memory at degree d > 1 for ``diffuse`` is the degree-1 value divided by d (each GPU
holds 1/d of the sequence) unless rows at degree d exist. Weights are per GPU and do not shrink
with degree (sequence parallelism replicates them).

**Degrees a model cannot take.** A UNet denoiser (SD 1.x, SDXL) has no token sequence to split: its
diffuse runs at degree 1 only (``pipelines/parallel.py`` refuses more). A transformer split by our
Ulysses kernel must divide its attention heads among the members (tiny-flux, 2 heads: degree 2 at
most). Both come from the profile (:func:`tridentcore.profiles.load_profile` reads
``profiles/data/denoisers.csv``): the models named in ``degree_one`` answer :meth:`CostModel.splits`
False, and ``heads`` bounds the others (:meth:`CostModel.allows_degree`: degree 1 always, else a
model that splits and whose head count, if given, the degree divides). A diffuse at a degree its
model cannot take costs what it costs at degree 1 in time and in activation memory, because that
is what the live worker does (the dispatch's lead runs it alone, the others wait): so no efficiency
floor ever picks such a degree, and the policies dispatch the diffuse on a group it can take
(:meth:`CostModel.max_degree`). The real models' heads (sd3-medium and flux-dev 24, wan2.1-1.3b 12)
are left unbound there: on GPUs xDiT splits past the heads with ring x Ulysses, which the shipped
H200 profile's scaling model stands for and our kernel does not have yet.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

from .costtables import Adjustment, Table, Uncovered, build_table
from .errors import TridentError
from .scaling import ScalingModel
from .types import ProfileRow, Shape, StageKind

__all__ = [
    "Adjustment",
    "CostModel",
    "CostModelError",
    "DEFAULT_LINKS_GBPS",
    "GB_BYTES",
    "GIB_BYTES",
]

log = logging.getLogger(__name__)
# a measured latency raised more than this many times to keep costs monotone is warned about (the
# shipped profiles' largest: 1.3x); the warnings said so far in this process
RAISED_WARN = 2.0
_SAID: set[tuple[str, ...]] = set()

GB_BYTES = 1e9
GIB_BYTES = 2**30

# Link bandwidths in GB/s (1e9 bytes/s), one direction.
#   host:    measured: pinned host->device copies on the H200 machine (profiles/README.md)
#   nvlink:  nominal NVLink 4 per direction (H100/H200 SXM); not measured here
#   pcie:    nominal-ish PCIe Gen4 x16 peer-to-peer between GPUs without NVLink; not measured
#   network: 400 Gb/s InfiniBand / RoCE between nodes; nominal
DEFAULT_LINKS_GBPS: Mapping[str, float] = {
    "host": 55.0,
    "nvlink": 450.0,
    "pcie": 25.0,
    "network": 50.0,
}

_MEMO_LIMIT = 200_000


class CostModelError(TridentError, LookupError):
    """The profile cannot answer: missing model/stage/gpu, or a shape too far from the data."""


class CostModel:
    """Latency and memory of stage calls, from profile rows. See the module docstring."""

    __slots__ = (
        "_tables", "_links", "_scaling", "_max_extrapolation", "_gpus", "_adjustments", "_memo", "_models", "_stages",
        "_degree_one", "_heads",
    )  # fmt: skip

    def __init__(
        self,
        rows: Iterable[ProfileRow],
        *,
        host_link_gbps: float = DEFAULT_LINKS_GBPS["host"],
        links: Mapping[str, float] | None = None,
        scaling: ScalingModel | None = None,
        max_extrapolation: float = 2.0,
        degree_one: Iterable[str] = (),
        heads: Mapping[str, int] | None = None,
    ) -> None:
        rows = tuple(rows)
        self._degree_one = frozenset(degree_one)
        self._heads = dict(heads or {})
        bad_heads = [f"{m}={h!r}" for m, h in self._heads.items() if isinstance(h, bool) or not isinstance(h, int) or h < 1]
        if bad_heads:
            raise ValueError("heads must be integers >= 1: " + ", ".join(bad_heads))
        if not rows:
            raise ValueError("a cost model needs at least one profile row")
        if not (max_extrapolation >= 1.0 and math.isfinite(max_extrapolation)):
            raise ValueError(f"max_extrapolation must be a finite number >= 1 (got {max_extrapolation!r})")
        table_links = dict(DEFAULT_LINKS_GBPS)
        table_links["host"] = host_link_gbps
        table_links.update(links or {})
        bad = [f"{name}={gbps!r}" for name, gbps in table_links.items() if not (gbps > 0 and math.isfinite(gbps))]
        if bad:
            raise ValueError("link bandwidths must be positive GB/s: " + ", ".join(bad))
        self._links = table_links
        self._scaling = scaling if scaling is not None else ScalingModel()
        self._max_extrapolation = float(max_extrapolation)
        self._gpus = tuple(sorted({r.gpu for r in rows}))
        self._memo: dict[tuple, float] = {}

        grouped: dict[tuple[str, str, StageKind, int], list[ProfileRow]] = {}
        for row in rows:
            grouped.setdefault((row.gpu, row.model, StageKind.parse(row.stage), row.degree), []).append(row)
        tables: dict[tuple[str, str, StageKind, int], Table] = {}
        adjustments: list[Adjustment] = []
        for key, group in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2].value, kv[0][3])):
            tables[key] = build_table(key, group, adjustments)
        self._tables = tables
        self._adjustments = tuple(adjustments)
        # indexes answering "what is there" without scanning the tables
        self._models = {g: tuple(sorted({m for gg, m, _, _ in tables if gg == g})) for g in self._gpus}
        self._stages = {
            (g, m): tuple(s for s in StageKind if any(k[:3] == (g, m, s) for k in tables))
            for g in self._gpus
            for m in self._models[g]
        }
        for adj in self._adjustments:
            log.debug("monotone adjustment: %s", adj)
        raised = self.raised()
        if raised and (said := tuple(a.describe() for a in raised)) not in _SAID:
            _SAID.add(said)  # once per process (a profile is priced many times over)
            top = raised[0]  # the value it was raised to is a smaller shape's or batch's: name that row
            source = next((r for r in rows if (r.gpu, r.model, r.stage, r.degree) == (top.gpu, top.model, top.stage,
                                                                                   top.degree)
                           and r.latency_ms == top.used), None)
            folded = source is not None and source.source.startswith("run ")  # (`trident profile --from-run`)
            culprit = ("" if source is None else f"; the row that sets it: {source.model} {source.stage.value} "
                       f"{source.width}x{source.height}x{source.frames} batch {source.batch} degree {source.degree} "
                       f"{source.latency_ms:g} ms " + (
                           f"({source.source.partition(':')[0]} measured it, beside rows measured elsewhere: its "
                           "host slower than theirs? fold a run that measures the rest too, or measure them "
                           "again on that host)" if folded else "(a typo or an outlier?)"))
            log.warning("%d measured latencies of the profile were raised over %gx to keep costs monotone in shape and "
                        "batch: %s%s%s", len(raised), RAISED_WARN, "; ".join(said[:3]), "; ..." if len(said) > 3 else "",
                        culprit)

    # ------------------------------------------------------------------ what the profile holds
    @property
    def adjustments(self) -> tuple[Adjustment, ...]:
        """Measured values raised to keep costs monotone (launch-bound noise); empty if none."""
        return self._adjustments

    def raised(self, over: float = 0.0) -> tuple[Adjustment, ...]:
        """The measured latencies raised more than ``over`` (default RAISED_WARN) times, largest first:
        no launch-bound noise, a row that prices every larger shape (one 85x outlier in a custom CSV
        repriced the whole range above it, said only in a debug log: outside test)."""
        over = over or RAISED_WARN
        big = [a for a in self._adjustments if a.quantity == "latency_ms" and a.used > over * a.measured]
        return tuple(sorted(big, key=lambda a: a.used / a.measured if a.measured > 0 else math.inf, reverse=True))

    @property
    def links(self) -> Mapping[str, float]:
        """Link bandwidths in GB/s used by :meth:`transfer_s` and :meth:`load_s`."""
        return dict(self._links)

    @property
    def scaling(self) -> ScalingModel:
        return self._scaling

    @property
    def max_extrapolation(self) -> float:
        return self._max_extrapolation

    def gpus(self) -> tuple[str, ...]:
        return self._gpus

    def models(self, gpu: str | None = None) -> tuple[str, ...]:
        """Models with rows (on ``gpu``, or on any gpu kind when ``gpu`` is None)."""
        return tuple(sorted({m for g, m, _, _ in self._tables if gpu is None or g == gpu}))

    def stages(self, model: str, gpu: str | None = None) -> tuple[StageKind, ...]:
        """Stages with rows for ``model`` (on ``gpu``, or any gpu kind when None)."""
        found = {s for g, m, s, _ in self._tables if m == model and (gpu is None or g == gpu)}
        return tuple(s for s in StageKind if s in found)

    def splits(self, model: str) -> bool:
        """Whether ``model``'s diffuse can run sequence-parallel (False: a UNet, degree 1 only)."""
        return model not in self._degree_one and self._heads.get(model, 2) > 1

    def allows_degree(self, model: str, degree: int) -> bool:
        """Whether ``model``'s diffuse really splits ``degree`` ways: degree 1 always; else a model that
        splits, whose attention heads (where the profile bounds them) ``degree`` divides."""
        if degree == 1:
            return True
        heads = self._heads.get(model)
        return degree > 1 and self.splits(model) and (heads is None or heads % degree == 0)

    def max_degree(self, model: str, limit: int) -> int:
        """The largest degree ``<= limit`` that ``model``'s diffuse can take (1 at least)."""
        return next((d for d in range(limit, 1, -1) if self.allows_degree(model, d)), 1)

    @property
    def heads(self) -> Mapping[str, int]:
        """The models whose degree must divide their attention heads, with that head count."""
        return dict(self._heads)

    @property
    def degree_one(self) -> frozenset[str]:
        """The models whose diffuse runs at degree 1 only (the module docstring)."""
        return self._degree_one

    def degrees(self, model: str, stage: StageKind | str, gpu: str | None = None) -> tuple[int, ...]:
        """Degrees with measured rows for ``model``/``stage``."""
        gpu = self._resolve_gpu(gpu)
        stage = StageKind.parse(stage)
        return tuple(sorted(d for g, m, s, d in self._tables if (g, m, s) == (gpu, model, stage)))

    def batches(self, model: str, stage: StageKind | str, gpu: str | None = None) -> tuple[int, ...]:
        """Batch sizes measured for ``model``/``stage`` at degree 1 (its batch levels)."""
        gpu = self._resolve_gpu(gpu)
        table = self._tables.get((gpu, model, self._resolve_stage(model, stage, gpu), 1))
        return () if table is None else table.levels

    def has(self, model: str, stage: StageKind | str, gpu: str | None = None) -> bool:
        """Whether rows exist for ``model``/``stage`` (on ``gpu``; on any kind when None)."""
        try:
            stage_kind = StageKind.parse(stage)
        except ValueError:
            return False
        if gpu is None and len(self._gpus) > 1:
            return any(m == model and s is stage_kind for _, m, s, _ in self._tables)
        gpu = self._gpus[0] if gpu is None else gpu
        return any((g, m, s) == (gpu, model, stage_kind) for g, m, s, _ in self._tables)

    def token_span(self, model: str, stage: StageKind | str, gpu: str | None = None) -> tuple[int, int] | None:
        """The token counts (pixels x frames) :meth:`latency_s` prices ``model``/``stage`` at, batch 1 and
        degree 1: a closed range, or None where the stage's cost does not depend on the shape. Raises
        :class:`CostModelError` when there are no such rows."""
        gpu = self._resolve_gpu(gpu)
        kind = self._resolve_stage(model, stage, gpu)
        table = self._tables.get((gpu, model, kind, 1))
        if table is None or table.levels[0] != 1:
            raise CostModelError(f"no data for {self._where(gpu, model, kind, None, 1, 1)}")
        return table.curves["latency_ms"][1].span(self._max_extrapolation)

    # ------------------------------------------------------------------ answers
    def latency_s(
        self,
        model: str,
        stage: StageKind | str,
        shape: Shape | None,
        batch: int = 1,
        degree: int = 1,
        gpu: str | None = None,
    ) -> float:
        """Seconds for one call (``diffuse``: one denoising step) of ``batch`` requests."""
        key = ("latency", model, stage, shape, batch, degree, gpu)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        gpu, stage, tokens = self._check(model, stage, shape, batch, degree, gpu)
        value = self._latency_ms(gpu, model, stage, shape, tokens, batch, degree) / 1000.0
        self._remember(key, value)
        return value

    def activation_gib(
        self,
        model: str,
        stage: StageKind | str,
        shape: Shape | None,
        batch: int = 1,
        degree: int = 1,
        gpu: str | None = None,
    ) -> float:
        """Peak activation memory per GPU of one call, GiB (weights not included)."""
        key = ("act", model, stage, shape, batch, degree, gpu)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        gpu, stage, tokens = self._check(model, stage, shape, batch, degree, gpu)
        value = None
        if stage is StageKind.DIFFUSE and degree > 1 and not self.allows_degree(model, degree):
            value = self._eval(gpu, model, stage, shape, tokens, batch, 1, "act_gib")  # all of it on one GPU
        elif stage is StageKind.DIFFUSE and degree > 1:
            table = self._tables.get((gpu, model, stage, degree))
            if table is not None:
                try:
                    value = table.at("act_gib", tokens, batch, self._max_extrapolation)
                except Uncovered:
                    value = None
            if value is None:
                value = self._eval(gpu, model, stage, shape, tokens, batch, 1, "act_gib") / degree
        else:
            value = self._eval(gpu, model, stage, shape, tokens, batch, 1, "act_gib")
        self._remember(key, value)
        return value

    def weights_gib(self, model: str, stage: StageKind | str, gpu: str | None = None) -> float:
        """Weights of that stage alone, per GPU, GiB (the largest value its rows report)."""
        gpu = self._resolve_gpu(gpu)
        stage = self._resolve_stage(model, stage, gpu)
        found = [t.weights_gib for (g, m, s, d), t in self._tables.items() if (g, m, s) == (gpu, model, stage) and d == 1]
        if not found:
            found = [t.weights_gib for (g, m, s, _), t in self._tables.items() if (g, m, s) == (gpu, model, stage)]
        return max(found)

    def load_s(self, model: str, stage: StageKind | str, gpu: str | None = None) -> float:
        """Seconds to copy the stage's weights from host memory over the host link."""
        return self.weights_gib(model, stage, gpu) * GIB_BYTES / (self._links["host"] * GB_BYTES)

    def transfer_s(self, nbytes: float, link: str = "host") -> float:
        """Seconds to move ``nbytes`` over ``link`` (bandwidth only, no per-transfer latency)."""
        if not (nbytes >= 0 and math.isfinite(nbytes)):
            raise ValueError(f"nbytes must be a finite number >= 0 (got {nbytes!r})")
        gbps = self._links.get(link)
        if gbps is None:
            raise CostModelError(f"unknown link {link!r}; links: {', '.join(sorted(self._links))}")
        return nbytes / (gbps * GB_BYTES)

    def speedup(
        self,
        model: str,
        stage: StageKind | str,
        shape: Shape | None,
        degree: int,
        batch: int = 1,
        gpu: str | None = None,
    ) -> float:
        """latency(degree 1) / latency(degree): 1.0 for encode and decode."""
        base = self.latency_s(model, stage, shape, batch, 1, gpu)
        return base / self.latency_s(model, stage, shape, batch, degree, gpu)

    def parallel_efficiency(
        self,
        model: str,
        stage: StageKind | str,
        shape: Shape | None,
        degree: int,
        batch: int = 1,
        gpu: str | None = None,
    ) -> float:
        """``speedup / degree``; docs/design.md's SLO reference uses the largest degree with >= 0.8."""
        return self.speedup(model, stage, shape, degree, batch, gpu) / degree

    # ------------------------------------------------------------------ internals
    def _remember(self, key: tuple, value: float) -> None:
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = value

    def _resolve_gpu(self, gpu: str | None) -> str:
        if gpu is None:
            if len(self._gpus) == 1:
                return self._gpus[0]
            raise CostModelError(f"this profile has several gpu kinds ({', '.join(self._gpus)}); pass gpu=")
        if gpu not in self._gpus:
            raise CostModelError(f"gpu {gpu!r} is not in this profile; gpu kinds: {', '.join(self._gpus)}")
        return gpu

    def _resolve_stage(self, model: str, stage: StageKind | str, gpu: str) -> StageKind:
        have = self._stages.get((gpu, model))
        if have is None:
            models = self._models[gpu]
            raise CostModelError(f"no rows for model {model!r} on {gpu}; models on {gpu}: {', '.join(models)}")
        try:
            kind = stage if isinstance(stage, StageKind) else StageKind.parse(stage)
        except ValueError as exc:
            raise CostModelError(f"{exc}; {model} on {gpu} has: {', '.join(s.value for s in have)}") from None
        if kind not in have:
            raise CostModelError(
                f"no {kind.value!r} rows for model {model!r} on {gpu}; its stages: {', '.join(s.value for s in have)}"
            )
        return kind

    def _check(
        self, model: str, stage: StageKind | str, shape: Shape | None, batch: int, degree: int, gpu: str | None
    ) -> tuple[str, StageKind, int | None]:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1 (got {batch!r})")
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree must be an integer >= 1 (got {degree!r})")
        gpu = self._resolve_gpu(gpu)
        kind = self._resolve_stage(model, stage, gpu)
        if kind is StageKind.ENCODE:
            return gpu, kind, None
        if shape is None:
            raise CostModelError(f"{model} {kind.value} needs a shape (its cost depends on height, width, frames)")
        return gpu, kind, shape.tokens

    @staticmethod
    def _where(gpu: str, model: str, stage: StageKind, shape: Shape | None, batch: int, degree: int) -> str:
        at = "" if stage is StageKind.ENCODE or shape is None else f" at {shape.label()} ({shape.tokens} tokens)"
        return f"{model} {stage.value}{at}, batch {batch}, degree {degree} on {gpu}"

    def _eval(
        self,
        gpu: str,
        model: str,
        stage: StageKind,
        shape: Shape | None,
        tokens: int | None,
        batch: int,
        degree: int,
        quantity: str,
    ) -> float:
        table = self._tables.get((gpu, model, stage, degree))
        if table is None:
            measured = self.degrees(model, stage, gpu)
            raise CostModelError(
                f"no data for {self._where(gpu, model, stage, shape, batch, degree)}: "
                f"no rows at degree {degree} (measured degrees: {', '.join(map(str, measured))})"
            )
        try:
            return table.at(quantity, tokens, batch, self._max_extrapolation)
        except Uncovered as exc:
            raise CostModelError(
                f"no data for {self._where(gpu, model, stage, shape, batch, degree)}: {exc} "
                f"[{table.describe()}]"
            ) from None

    def _latency_ms(
        self, gpu: str, model: str, stage: StageKind, shape: Shape | None, tokens: int | None, batch: int, degree: int
    ) -> float:
        if degree == 1 or stage is not StageKind.DIFFUSE or not self.allows_degree(model, degree):
            return self._eval(gpu, model, stage, shape, tokens, batch, 1, "latency_ms")
        table = self._tables.get((gpu, model, stage, degree))
        if table is not None:
            try:
                return table.at("latency_ms", tokens, batch, self._max_extrapolation)
            except Uncovered as exc:
                log.debug("degree-%d rows of %s %s do not cover %s tokens (%s); modelling", degree, model, stage.value, tokens, exc)
        base_ms = self._eval(gpu, model, stage, shape, tokens, batch, 1, "latency_ms")
        nearest = self._nearest_measured_ms(gpu, model, stage, tokens, batch, degree)
        if nearest is None:
            assert tokens is not None
            fraction = self._scaling.serial_fraction(tokens * batch)
        else:
            other, other_ms = nearest
            if other_ms >= base_ms:  # the split measured slower than one GPU (a small model in a gloo
                # group): no other split is priced faster than it (outside test 133: an unmeasured
                # degree 4 at degree 1's time, cheaper than the degree 2 measured)
                return other_ms
            speedup = base_ms / other_ms  # the Amdahl serial fraction it implies
            fraction = min(max((other / speedup - 1.0) / (other - 1), 0.0), 1.0)
        return base_ms * (1.0 + (degree - 1) * fraction) / degree

    def _nearest_measured_ms(
        self, gpu: str, model: str, stage: StageKind, tokens: int | None, batch: int, degree: int
    ) -> tuple[int, float] | None:
        """The nearest measured degree > 1 whose rows cover the shape, and its time there."""
        measured = [d for g, m, s, d in self._tables if (g, m, s) == (gpu, model, stage) and d > 1 and d != degree]
        measured.sort(key=lambda d: (abs(math.log(d / degree)), -d))
        for other in measured:
            try:
                return other, self._tables[(gpu, model, stage, other)].at("latency_ms", tokens, batch,
                                                                           self._max_extrapolation)
            except Uncovered:
                continue
        return None
