"""The discrete-event driver: runs a policy on a virtual clock with durations from the cost model.

A heap of timed events; each popped event is applied to the :class:`ClusterState`, handed to the
policy, and the policy's actions are applied in turn (a dispatch schedules its own completion).
The same seed gives the same run: no wall clock enters any decision (wall time is only measured
around the policy, to report its decision time).
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..core.cluster import ClusterSpec
from ..core.costmodel import CostModel
from ..core.events import (Dispatch, Evict, Fail, Place, Preempt, Reject, RequestArrived, StageFailed,
                           StageFinished, Tick)
from ..core.lifecycle import RequestState
from ..core.policy import Policy
from ..core.records import GpuSample, PlacementRow, RequestRow, SpanRow
from ..core.recording import gpu_samples, request_rows, span_rows
from ..core.state import ClusterState, ClusterView, Running
from ..core.workload import RequestSpec

logger = logging.getLogger(__name__)

_ARRIVAL, _FINISH, _OOM, _TICK = 0, 1, 2, 3


class PolicyBug(RuntimeError):
    """A policy asked for something impossible (a busy GPU, a request in the wrong state...)."""


@dataclass
class SimResult:
    policy: str
    requests: list[RequestRow]
    spans: list[SpanRow]
    placements: list[PlacementRow]
    gpu_samples: list[GpuSample] = field(default_factory=list)
    decision_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    events: int = 0
    end_s: float = 0.0


class Simulator:
    """One run of one policy over one request sequence."""

    def __init__(
        self,
        cluster: ClusterSpec,
        cost: CostModel,
        policy: Policy,
        requests: Sequence[RequestSpec],
        *,
        gpu_kind: str | None = None,
        sample_s: float = 10.0,
        record: bool = True,
        time_limit_s: float | None = None,
    ) -> None:
        self.state = ClusterState(cluster, cost, gpu_kind)
        self.view = ClusterView(self.state)
        self.policy = policy
        self.requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
        self.sample_s = sample_s
        self.record = record
        self.time_limit_s = time_limit_s
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self.spans: list[SpanRow] = []
        self.placements: list[PlacementRow] = []
        self.decision_ms: list[float] = []
        self.now = 0.0
        self._tick_pending = False
        self._oom_seq = 0  # failed allocations get negative dispatch ids (they never ran)
        self._act_gib: dict[int, float] = {}  # dispatch id -> activation memory per GPU

    # ---------------------------------------------------------------------------------- loop
    def _push(self, t: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        state, policy = self.state, self.policy
        models = sorted({r.model for r in self.requests})
        expected: dict = {}
        for r in self.requests:
            expected[(r.model, r.shape)] = expected.get((r.model, r.shape), 0) + 1
        self._apply(self._decide(lambda: policy.start(self.view, models, 0.0, expected)), initial=True)
        arrivals = iter(self.requests)
        nxt = next(arrivals, None)
        if nxt is not None:
            self._push(nxt.arrival_s, _ARRIVAL, nxt)
        events = 0
        heap = self._heap
        while heap:
            t, _, kind, payload = heapq.heappop(heap)
            if self.time_limit_s is not None and t > self.time_limit_s:
                break
            self.now = t
            if kind == _ARRIVAL:
                spec: RequestSpec = payload  # type: ignore[assignment]
                state.requests.add(spec, t)
                event = RequestArrived(spec)
                nxt = next(arrivals, None)
                if nxt is not None:
                    self._push(nxt.arrival_s, _ARRIVAL, nxt)
            elif kind == _FINISH:
                did, expected_end = payload  # type: ignore[misc]
                run = state.running.get(did)
                if run is None or run.predicted_end_s != expected_end:
                    continue  # superseded (preempted: a new end was scheduled)
                event = self._finish(run, t)
            elif kind == _OOM:
                did, action = payload  # type: ignore[misc]
                if self.record:
                    for rid in action.request_ids:
                        rec = state.requests[rid]
                        self.spans.append(SpanRow(did, rid, action.stage, action.gpus, len(action.gpus),
                                                  len(action.request_ids), rec.ready_s, t, t, 0.0,
                                                  action.start_step, action.start_step, "oom"))
                event = StageFailed(did, action.stage, action.request_ids, action.gpus, "out of memory", oom=True)
            else:
                self._tick_pending = False
                if state.requests.live == 0 and nxt is None:
                    continue
                event = Tick()
            events += 1
            actions = self._decide(lambda: policy.on_event(self.view, event, t))
            if actions:
                self._apply(actions)
            if policy.tick_s and not self._tick_pending and (state.requests.live or nxt is not None):
                self._tick_pending = True
                self._push(math.floor(t / policy.tick_s + 1e-9) * policy.tick_s + policy.tick_s, _TICK, None)
        # anything still live at a time limit is reported as it stands: not done
        rows = self._request_rows()
        return SimResult(
            policy=policy.spec, requests=rows, spans=self.spans, placements=self.placements,
            gpu_samples=self._gpu_samples() if self.record else [], decision_ms=self.decision_ms,
            wall_s=time.perf_counter() - wall0, events=events, end_s=self.now,
        )

    def _decide(self, call):
        t0 = time.perf_counter()
        actions = call()
        self.decision_ms.append((time.perf_counter() - t0) * 1000.0)
        return actions

    # ------------------------------------------------------------------------------- actions
    def _apply(self, actions: Iterable[object], initial: bool = False) -> None:
        state, now = self.state, self.now
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action)
            elif isinstance(action, (Reject, Fail)):
                end = RequestState.REJECTED if isinstance(action, Reject) else RequestState.FAILED
                problem = state.end_waiting(action.request_id, end, now, action.reason)
                if problem:
                    raise PolicyBug(problem)
            elif isinstance(action, Preempt):
                self._preempt(action.request_id)
            elif isinstance(action, (Place, Evict)):
                row = state.apply_placement(action, now, initial)
                if row is not None and self.record:
                    self.placements.append(row)
            else:
                raise PolicyBug(f"unknown action {action!r}")

    def _dispatch(self, action: Dispatch) -> None:
        state, now = self.state, self.now
        problems = state.problems(action)
        if problems:
            raise PolicyBug(f"{self.policy.spec}: invalid dispatch {action}: " + "; ".join(problems))
        c = state.dispatch_cost(action)
        if c.oom:
            # The allocation fails as the stage starts: nothing runs, the requests stay waiting
            # with an OOM counted, and the policy hears of it (a retry is its decision).
            state.note_oom(action.request_ids)
            self._oom_seq -= 1
            self._push(now, _OOM, (self._oom_seq, action))
            return
        rec0 = state.requests[action.request_ids[0]]
        for g in action.gpus:  # lazy placement: weights loaded as part of this dispatch
            if state.place(rec0.spec.model, action.stage, g) and self.record:
                self.placements.append(PlacementRow(now, g, rec0.spec.model, action.stage, "place",
                                                    state.cost.weights_gib(rec0.spec.model, action.stage, state.gpu_kind),
                                                    c.load_s))
        compute_start = now + c.load_s + c.transfer_s
        end = compute_start + c.compute_s
        run = state.start(action, now, compute_start, end, c.step_s, c.load_s, c.transfer_s)
        self._push(end, _FINISH, (run.id, end))

    def _preempt(self, request_id: int) -> None:
        state, now = self.state, self.now
        did = state.by_request.get(request_id)
        if did is None:
            return
        run = state.running[did]
        if run.action.stage != "diffuse" or run.preempt_at_step is not None:
            return
        a = run.action
        done = 0 if now <= run.compute_start_s else math.ceil((now - run.compute_start_s) / run.step_s - 1e-9)
        stop = a.start_step + done
        if stop >= a.end_step:
            return  # finishes at its next boundary anyway
        run.preempt_at_step = stop
        run.predicted_end_s = max(now, run.compute_start_s + done * run.step_s)
        self._push(run.predicted_end_s, _FINISH, (run.id, run.predicted_end_s))

    # ------------------------------------------------------------------------------- results
    def _finish(self, run: Running, t: float) -> StageFinished:
        a = run.action
        self._act_gib[run.id] = run.act_gib
        preempted = run.preempt_at_step is not None
        end_step = run.preempt_at_step if preempted else a.end_step
        self.state.finish(run.id, t, end_step)
        self._span(run, t, "preempted" if preempted else "done", end_step)
        return StageFinished(run.id, a.stage, a.request_ids, a.gpus, end_step, preempted)

    def _span(self, run: Running, t: float, outcome: str, end_step: int) -> None:
        if self.record:
            self.spans.extend(span_rows(run, t, outcome, end_step))

    def _request_rows(self) -> list[RequestRow]:
        return request_rows(self.state.requests)

    def _gpu_samples(self) -> list[GpuSample]:
        if not self.spans:
            return []
        return gpu_samples(self.spans, self.placements, self._act_gib, len(self.state.gpus), self.now, self.sample_s)


def simulate(cluster: ClusterSpec, cost: CostModel, policy: Policy, requests: Sequence[RequestSpec], **kw) -> SimResult:
    return Simulator(cluster, cost, policy, requests, **kw).run()
