"""Turning driver state into store rows: the one place both drivers (simulator, live engine) use.

Pure: the rows are built from the cluster state, the dispatches and the spans already recorded.
:class:`Recorder` keeps a run's spans and placement changes as the driver core produces them (or,
streaming, only the GPU samples they make: :class:`GpuUsage`).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence

from .defaults import MAX_GPU_SAMPLES
from .lifecycle import RequestRecord, RequestTable
from .records import GpuSample, PlacementRow, RequestRow, SpanRow
from .events import Dispatch
from .dispatch import Running
from .state import ClusterState
from .types import StageKind


def span_rows(run: Running, t: float, outcome: str, end_step: int, compute_s: float | None = None,
              degree: int | None = None) -> list[SpanRow]:
    """One row per request of a dispatch that ended at ``t`` (``predicted_s``: the cost model's
    duration for the dispatch as planned, load and transfers included; 0 for a failed allocation;
    ``compute_s``: its compute time as the worker measured it, if it did; ``degree``: the degree it
    ran at where fewer than its GPUs, which the row's ``gpus`` still lists: it held them)."""
    a = run.action
    if outcome == "oom":
        predicted = 0.0
    elif a.stage == StageKind.DIFFUSE:
        predicted = run.compute_start_s - run.started_s + (a.end_step - a.start_step) * run.step_s
    else:
        predicted = run.predicted_end_s - run.started_s
    degree, batch, queued = degree or len(a.gpus), len(a.request_ids), run.queued_s
    return [SpanRow(run.id, rid, a.stage, a.gpus, degree, batch, queued[rid], run.started_s, t, predicted,
                    a.start_step, end_step, outcome, run.load_s, run.transfer_s, compute_s)  # positionally
            for rid in a.request_ids]


def request_row(rec: RequestRecord) -> RequestRow:
    """A request as it stands; one not yet ended is reported ``unfinished``."""
    spec = rec.spec
    terminal = rec.state.terminal
    return RequestRow(
        request_id=spec.id, model=spec.model, height=spec.shape.height, width=spec.shape.width,
        frames=spec.shape.frames, steps=spec.shape.steps, arrival_s=spec.arrival_s,
        deadline_s=spec.deadline_s, state=rec.state.value if terminal else "unfinished",
        reason=rec.reason if terminal else f"still {rec.state.value} when the run ended",
        finish_s=rec.finish_s, ooms=rec.ooms, preemptions=rec.preemptions, job_id=spec.job_id or None,
    )


def request_rows(requests: RequestTable) -> list[RequestRow]:
    """Every request of the table as it stands."""
    return [request_row(rec) for rec in requests]


def gpu_samples(spans: Sequence[SpanRow], placements: Iterable[PlacementRow], act_gib: Mapping[int, float],
                num_gpus: int, end_s: float, sample_s: float = 10.0) -> list[GpuSample]:
    """Per GPU and sampling interval: the busy fraction (each dispatch counted once) and the memory
    in use at the interval's start (resident weights, placements replayed, plus the activations
    ``act_gib[dispatch_id]`` of the dispatch running then).

    At most ``MAX_GPU_SAMPLES`` rows: a run too long for that many at ``sample_s`` is sampled at a
    whole multiple of it (a run of 4096 GPUs over a day at 10 s would otherwise be 35 million)."""
    if not (sample_s > 0 and math.isfinite(end_s) and num_gpus > 0):
        return []
    usage = GpuUsage(num_gpus, sample_s, end_s)
    usage.add(spans, act_gib)
    for p in placements:
        usage.placement(p)
    return usage.samples(end_s)


class GpuUsage:
    """What :func:`gpu_samples` is made of, gathered as spans and placement changes come: per GPU and
    interval, the busy seconds and the activation memory at the interval's start. A server keeps
    this instead of its spans (:meth:`Recorder.stream`), so its memory grows with the length of the
    run, not with its requests.

    ``end_s`` known (a finished run): the interval is :func:`gpu_samples`' at once. Not known (a
    server): the arrays grow as spans end, and the interval doubles whenever they would hold more
    than ``MAX_GPU_SAMPLES`` values (the run is then sampled at a whole multiple of ``sample_s``)."""

    def __init__(self, num_gpus: int, sample_s: float = 10.0, end_s: float | None = None) -> None:
        if not (sample_s > 0 and num_gpus > 0):
            raise ValueError(f"GpuUsage needs sample_s > 0 and num_gpus > 0 (got {sample_s!r}, {num_gpus!r})")
        self.num_gpus = num_gpus
        self.sample_s = sample_s
        self.limit: int | None = None  # end_s known: the intervals, fixed
        if end_s is not None:
            bins = int(math.ceil(max(end_s, sample_s) / sample_s))
            if bins * num_gpus > MAX_GPU_SAMPLES:
                self.sample_s = sample_s * math.ceil(bins * num_gpus / MAX_GPU_SAMPLES)
                bins = int(math.ceil(max(end_s, self.sample_s) / self.sample_s))
            self.limit = bins
        self.busy = [array("d", bytes(8 * (self.limit or 0))) for _ in range(num_gpus)]
        self.act = [array("d", bytes(8 * (self.limit or 0))) for _ in range(num_gpus)]
        self.placements: list[PlacementRow] = []
        self.dispatches = 0

    def placement(self, row: PlacementRow) -> None:
        self.placements.append(row)

    def add(self, spans: Iterable[SpanRow], act_gib: Mapping[int, float]) -> None:
        """The spans of dispatches that ended (each dispatch counted once, failed allocations not)."""
        seen: set[int] = set()
        for sp in spans:
            if sp.dispatch_id in seen or sp.dispatch_id < 0 or sp.outcome == "oom":
                continue
            seen.add(sp.dispatch_id)
            self.dispatches += 1
            if self.limit is None:
                self._cover(sp.ended_s)
            bins, step = len(self.busy[0]), self.sample_s
            a, b = sp.started_s, sp.ended_s
            k = int(a // step)
            while a < b and k < bins:
                edge = min(b, (k + 1) * step)
                for g in sp.gpus:
                    self.busy[g][k] += edge - a
                a, k = edge, k + 1
            act = act_gib.get(sp.dispatch_id, 0.0)
            k = int(math.ceil(sp.started_s / step - 1e-9))
            while act and k < bins and k * step < sp.ended_s:
                for g in sp.gpus:
                    self.act[g][k] += act
                k += 1

    def _cover(self, t: float) -> None:
        """Grow the arrays to the interval holding ``t`` (doubling the interval past the bound)."""
        if not math.isfinite(t):
            return
        need = int(t // self.sample_s) + 1
        while need * self.num_gpus > MAX_GPU_SAMPLES and need > 1:
            self._coarsen()
            need = int(t // self.sample_s) + 1
        grow = need - len(self.busy[0])
        if grow > 0:
            zeros = bytes(8 * grow)
            for rows in (self.busy, self.act):
                for row in rows:
                    row.frombytes(zeros)

    def _coarsen(self) -> None:
        """Twice the interval: busy seconds add up, the memory is the one at the first half's start."""
        self.sample_s *= 2
        for g in range(self.num_gpus):
            busy, act = self.busy[g], self.act[g]
            if len(busy) % 2:
                busy.append(0.0)
                act.append(0.0)
            self.busy[g] = array("d", (busy[k] + busy[k + 1] for k in range(0, len(busy), 2)))
            self.act[g] = act[::2]

    def samples(self, end_s: float) -> list[GpuSample]:
        """The rows, for a run that ended at ``end_s`` (none if no dispatch ran)."""
        if not self.dispatches or not math.isfinite(end_s):
            return []
        if self.limit is None:
            self._cover(max(end_s, self.sample_s) - 1e-9)
        sample_s, num_gpus = self.sample_s, self.num_gpus
        bins = self.limit if self.limit is not None else int(math.ceil(max(end_s, sample_s) / sample_s))
        bins = min(bins, len(self.busy[0]))
        mem = [[0.0] * bins for _ in range(num_gpus)]
        for p in sorted(self.placements, key=lambda p: p.t_s):
            k0 = min(bins, int(math.ceil(p.t_s / sample_s - 1e-9)))
            delta = p.weights_gib if p.action == "place" else -p.weights_gib
            row = mem[p.gpu]
            row[k0:] = [m + delta for m in row[k0:]]
        for g in range(num_gpus):
            act = self.act[g]
            mem[g] = [m + act[k] if act[k] else m for k, m in enumerate(mem[g])]
        busy = [self.busy[g][:bins] for g in range(num_gpus)]
        # the run's largest row list (GPUs x intervals), built once at its end: positional, no calls
        # but the rows' own (``v if v < 1.0 else 1.0`` is ``min(1.0, v)``), and round(m, 4) (slow: a
        # correctly rounded decimal) once per distinct memory figure (but for zeros, whose sign it keeps)
        times = [k * sample_s for k in range(bins)]
        r4 = {m: round(m, 4) for ms in mem for m in set(ms) if m}
        return [GpuSample(t, g, v if v < 1.0 else 1.0, r4[m] if m else round(m, 4))
                for g, b, ms in zip(range(num_gpus), busy, mem) for t, v, m in zip(times, [x / sample_s for x in b], ms)]


class Recorder:
    """A run's records: stage spans, placement changes and each dispatch's activation memory.

    ``record`` off keeps nothing (a server without a results store); ``listeners`` still see every
    span as it is made (a live server's per-request timings), ``placement_listeners`` every
    placement change (a live server's journal)."""

    def __init__(self, record: bool = True) -> None:
        self.record = record
        self.spans: list[SpanRow] = []
        self.placements: list[PlacementRow] = []
        self.act_gib: dict[int, float] = {}  # dispatch id -> activation memory per GPU
        self.usage: GpuUsage | None = None  # streaming (``stream``): only the GPU samples are kept
        self.listeners: list[Callable[[SpanRow], None]] = []
        self.placement_listeners: list[Callable[[PlacementRow], None]] = []

    def stream(self, num_gpus: int, sample_s: float = 10.0) -> None:
        """From now on keep no rows, only what the GPU samples need (:class:`GpuUsage`): a server whose
        listeners take every row to its journal as it is made would otherwise hold them all, about
        2 KiB a request, for as long as it serves. The rows kept so far are folded in and dropped."""
        usage = GpuUsage(num_gpus, sample_s)
        usage.add(self.spans, self.act_gib)
        for row in self.placements:
            usage.placement(row)
        self.usage = usage
        self.record = False
        self.spans, self.placements, self.act_gib = [], [], {}

    def span(self, run: Running, t: float, outcome: str, end_step: int, compute_s: float | None = None,
             degree: int | None = None) -> None:
        """The rows of a dispatch that ended at ``t``."""
        if self.record:
            self.act_gib[run.id] = run.act_gib
        rows = span_rows(run, t, outcome, end_step, compute_s, degree)
        if self.usage is not None:
            self.usage.add(rows, {run.id: run.act_gib})
        self._add(rows)

    def oom(self, dispatch_id: int, action: Dispatch, state: ClusterState, t: float) -> None:
        """The rows of a dispatch whose allocation failed as it started (nothing ran)."""
        n = len(action.request_ids)
        self._add([SpanRow(dispatch_id, rid, action.stage, action.gpus, len(action.gpus), n,
                           state.requests[rid].ready_s, t, t, 0.0, action.start_step, action.start_step, "oom")
                   for rid in action.request_ids])

    def placement(self, row: PlacementRow) -> None:
        if self.record:
            self.placements.append(row)
        if self.usage is not None:
            self.usage.placement(row)
        for listener in self.placement_listeners:
            listener(row)

    def _add(self, rows: list[SpanRow]) -> None:
        if self.record:
            self.spans.extend(rows)
        for listener in self.listeners:
            for row in rows:
                listener(row)

    def gpu_samples(self, num_gpus: int, end_s: float, sample_s: float = 10.0) -> list[GpuSample]:
        if self.usage is not None:  # (streaming: at the interval it was started with, maybe doubled)
            return self.usage.samples(end_s)
        if not self.spans:
            return []
        return gpu_samples(self.spans, self.placements, self.act_gib, num_gpus, end_s, sample_s)
