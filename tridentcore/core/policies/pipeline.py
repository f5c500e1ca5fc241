"""Pipeline-level serving, today's practice: the whole pipeline runs on one GPU group per request.

``pipeline-static:degree=k`` (xDiT-style): the cluster is cut into fixed replicas of k GPUs on one
node, each holding every stage of every model. A request joins the least-loaded replica's FIFO
queue (load = the replica's predicted remaining work) and holds all k GPUs from encode to decode;
encode and decode run at degree k too (they do not speed up: the other GPUs wait). A diffuse runs
on the replica's first d GPUs, d the largest degree up to k that its model can take
(``CostModel.max_degree``: a UNet 1, tiny-flux with 2 attention heads 2), the others held idle:
a replica wider than its model splits is what an operator asked for, so it is served rather than
refused (a warning at start names a head-bound model), as the simulator prices it and the live
workers run it.

``pipeline-dynamic``: one FIFO queue; each request gets its own GPU count, the SLO reference
degree (the largest degree its model can take whose parallel efficiency is >= 0.8), and holds
those GPUs on one node for its whole pipeline. Requests that do not fit the idle GPUs are passed over by later ones that do
(backfilling), so small requests do not wait behind a large one.

Neither batches, and neither checks memory before starting: an out-of-memory error fails the
request (counted, not hidden). Stages never share a GPU.

A stage lost with its worker (a process killed mid-stage, a member of a sequence-parallel diffuse
included) is not the request's fault: ``pipeline-static`` keeps the replica for the request and
runs the stage again there once every GPU of the replica is back (a diffuse from the step it had
reached); the driver's retry cap (``DEFAULT_MAX_ATTEMPTS``) still ends it. ``pipeline-dynamic``,
which has no replicas to keep, runs the stage again at the request's degree on the first idle GPUs
of a node that has enough (wherever its inputs are: they move, at their transfer cost), ahead of
every request still waiting for its encode; the same cap ends it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence

from ..cluster import CPU_KIND
from ..events import (Action, Dispatch, Fail, RequestArrived, RequestEnded, StageFailed, StageFinished,
                      WorkerRestored)
from ..policy import Policy, PolicyError, register
from ..state import ClusterView
from ..types import StageKind
from .common import degrees_for, efficient_degree, pipeline_seconds, place_everything
from .options import number

_NEXT = {StageKind.ENCODE: StageKind.DIFFUSE, StageKind.DIFFUSE: StageKind.DECODE}

log = logging.getLogger(__name__)


class _PipelineBase(Policy):
    """Shared: a request holds its group through the three stages."""

    def _next_stage(self, view: ClusterView, ev: StageFinished, group: tuple[int, ...] | None = None) -> list[Action]:
        """The request's next stage on its ``group`` (default: the GPUs the last stage ran on)."""
        nxt = _NEXT.get(ev.stage)
        if nxt is None:
            return []
        return [self._stage_on(view, nxt, ev.request_ids[0], group or ev.gpus)]

    @staticmethod
    def _stage_on(view: ClusterView, stage: StageKind, rid: int, group: tuple[int, ...]) -> Dispatch:
        """``stage`` of request ``rid`` on its ``group``; a diffuse (from the step it reached) on the
        group's first ``CostModel.max_degree`` GPUs."""
        if stage == StageKind.DIFFUSE:
            rec = view.request(rid)
            gpus = group[:view.cost.max_degree(rec.spec.model, len(group))]
            return Dispatch(StageKind.DIFFUSE, (rid,), gpus, rec.steps_done, rec.spec.shape.steps)
        return Dispatch(stage, (rid,), group)


@register
class PipelineStatic(_PipelineBase):
    name = "pipeline-static"
    summary = "fixed replicas of k GPUs, each holding the whole pipeline; least-loaded replica"
    options = {"degree": (number(1, integer=True), 1, "GPUs per replica (1, 2, 4 or 8; divides GPUs per node)")}

    def start(self, view: ClusterView, models: Sequence[str], now: float, expected=None) -> list[Action]:
        k = self.opts["degree"]
        bad = [len(n) for n in view.nodes if k < 1 or len(n) % k]
        if bad:
            devices = "CPU devices" if view.gpu_kind == CPU_KIND else "GPUs"  # (outside test 126: "GPUs" of cpu:2)
            raise PolicyError(f"pipeline-static: degree {k} must divide the {devices} per node ({bad[0]})")
        self.replicas = [tuple(node[i:i + k]) for node in view.nodes for i in range(0, len(node), k)]
        self.replica_of_gpu = {g: r for r, group in enumerate(self.replicas) for g in group}
        self.queues: list[deque[int]] = [deque() for _ in self.replicas]
        self.queued_s = [0.0] * len(self.replicas)  # predicted work waiting per replica
        self.active: list[int | None] = [None] * len(self.replicas)
        self.again: dict[int, StageKind] = {}  # replica -> the stage its request lost with a worker
        self.estimate: dict[int, float] = {}
        for m in models:  # a UNet's degree 1 is long documented; a head-bound transformer is noted
            d = view.cost.max_degree(m, k)
            if d < k and view.cost.splits(m):
                log.warning("pipeline-static: %s's diffuse splits at most %d ways (%d attention heads): each "
                            "replica of %d GPUs runs it on %d of them", m, d, view.cost.heads.get(m, 0), k, d)
        return place_everything(view, models, policy=self.name)

    def on_event(self, view: ClusterView, event, now: float) -> list[Action]:
        if isinstance(event, RequestArrived):
            spec = event.request
            est = pipeline_seconds(view.cost, view.gpu_kind, spec.model, spec.shape, self.opts["degree"])
            self.estimate[spec.id] = est

            def load(r: int) -> tuple[bool, float]:  # (a replica with a GPU down comes last)
                busy = max(0.0, view.busy_until(self.replicas[r][0], now) - now) if self.active[r] is not None else 0.0
                return not self._whole(view, r), busy + self.queued_s[r]

            r = min(range(len(self.replicas)), key=lambda i: (*load(i), i))
            self.queues[r].append(spec.id)
            self.queued_s[r] += est
            return self._start_next(view, r)
        if isinstance(event, StageFinished):
            r = self.replica_of_gpu[event.gpus[0]]
            if event.stage == StageKind.DECODE or view.request(event.request_ids[0]).state.terminal:
                self.active[r] = None
                return self._start_next(view, r)
            return self._next_stage(view, event, self.replicas[r])
        if isinstance(event, StageFailed):
            r = self.replica_of_gpu[event.gpus[0]]
            rid = event.request_ids[0]
            if event.lost and not view.request(rid).state.terminal:
                self.again[r] = event.stage  # lost with a worker: again on this replica when it is whole
                return self._again(view, r)
            self.active[r] = None
            actions: list[Action] = [Fail(rid, event.reason) for rid in event.request_ids]
            return actions + self._start_next(view, r)
        if isinstance(event, WorkerRestored):
            actions = [a for r in list(self.again) for a in self._again(view, r)]
            return actions + [a for r in range(len(self.replicas)) for a in self._start_next(view, r)]
        if isinstance(event, RequestEnded):  # out of its queue (or replica) now: it may be forgotten next
            rid = event.request_id
            for r, queue in enumerate(self.queues):
                if rid in queue:
                    queue.remove(rid)
                    self.queued_s[r] -= self.estimate.pop(rid, 0.0)
                    return []
                if self.active[r] == rid:  # it waited to run its stage again, lost with a worker
                    self.again.pop(r, None)
                    self.active[r] = None
                    return self._start_next(view, r)
        return []

    def _whole(self, view: ClusterView, r: int) -> bool:
        return all(view.is_alive(g) for g in self.replicas[r])

    def _again(self, view: ClusterView, r: int) -> list[Action]:
        if not all(view.is_alive(g) and view.is_idle(g) for g in self.replicas[r]):
            return []
        stage, rid = self.again.pop(r), self.active[r]
        return [self._stage_on(view, stage, rid, self.replicas[r])]

    def _start_next(self, view: ClusterView, r: int) -> list[Action]:
        # a replica with a GPU down (its worker restarting) starts nothing until it is whole again: a
        # dispatch there was invalid, its request failed, and the replica waited for it for ever
        if self.active[r] is not None or not self.queues[r] or not self._whole(view, r):
            return []
        rid = self.queues[r].popleft()
        self.queued_s[r] -= self.estimate.pop(rid, 0.0)
        self.active[r] = rid
        return [Dispatch(StageKind.ENCODE, (rid,), self.replicas[r])]


@register
class PipelineDynamic(_PipelineBase):
    name = "pipeline-dynamic"
    summary = "per-request GPU count (the SLO reference degree), held for the whole pipeline"
    options = {}

    def start(self, view: ClusterView, models: Sequence[str], now: float, expected=None) -> list[Action]:
        self.queue: deque[int] = deque()
        self.degree_of: dict[int, int] = {}
        self.again: deque[tuple[int, StageKind, int]] = deque()  # (request, stage lost with a worker, degree)
        return place_everything(view, models, policy=self.name)

    def on_event(self, view: ClusterView, event, now: float) -> list[Action]:
        actions: list[Action] = []
        if isinstance(event, RequestArrived):
            spec = event.request
            self.degree_of[spec.id] = efficient_degree(view.cost, view.gpu_kind, spec.model, spec.shape,
                                                       degrees_for(view, spec.model))
            self.queue.append(spec.id)
        elif isinstance(event, StageFinished):
            if event.stage != StageKind.DECODE and not view.request(event.request_ids[0]).state.terminal:
                return self._next_stage(view, event)
        elif isinstance(event, StageFailed) and event.lost:  # not the request's fault: run the stage again
            self.again.extend((rid, event.stage, len(event.gpus)) for rid in event.request_ids
                              if not view.request(rid).state.terminal)
        elif isinstance(event, StageFailed):
            actions += [Fail(rid, event.reason) for rid in event.request_ids]
        elif isinstance(event, RequestEnded):  # out of the queues now: it may be forgotten next
            rid = event.request_id
            if self.degree_of.pop(rid, None) is not None:
                self.queue.remove(rid)
            self.again = deque(a for a in self.again if a[0] != rid)
        return actions + self._fill(view)

    def _fill(self, view: ClusterView) -> list[Action]:
        """Stages lost with a worker first, then new requests, each on the first node with enough idle
        GPUs; one that finds no room holds back every later one at least as wide (backfilling)."""
        if not (self.queue or self.again) or view.idle_count == 0:
            return []
        idle = {k: view.idle_gpus(k) for k in range(len(view.nodes))}
        out: list[Action] = []
        blocked = [math.inf]  # the smallest degree that found no room in this pass

        def room(d: int) -> tuple[int, ...] | None:
            if d >= blocked[0]:
                return None
            node = next((k for k, g in idle.items() if len(g) >= d), None)
            if node is None:
                blocked[0] = d
                return None
            group, idle[node] = tuple(idle[node][:d]), idle[node][d:]
            return group

        again: deque[tuple[int, StageKind, int]] = deque()
        for rid, stage, d in self.again:
            if view.request(rid).state.terminal:
                continue  # cancelled while it waited
            group = room(d)
            if group is None:
                again.append((rid, stage, d))
            else:
                out.append(self._stage_on(view, stage, rid, group))
        self.again = again
        kept: deque[int] = deque()
        while self.queue and blocked[0] > 1:
            rid = self.queue.popleft()
            group = room(self.degree_of[rid])
            if group is None:
                kept.append(rid)
                continue
            out.append(Dispatch(StageKind.ENCODE, (rid,), group))
            del self.degree_of[rid]
        kept.extend(self.queue)
        self.queue = kept
        return out
