"""The driver core: the one place that turns what happened into state changes, policy decisions and
effects. Both drivers (the simulator and the live engine) and the test drivers use it; they keep only
how time passes.

A driver reports what happened (:data:`Report`: a request arrived, a dispatch completed or failed, a
worker was lost or came back, a tick fell due, a client cancelled, a result was lost, the run shut
down) together with ``now``. The core

1. **absorbs** the report into the :class:`~tridentcore.core.state.ClusterState` (``requests.add``,
   ``finish``, ``fail``, ``set_alive``...), which yields the policy events (``StageFinished``...);
2. hands each event to ``policy.on_event(view, event, now)``;
3. **applies** the actions (``Dispatch``, ``Preempt``, ``Reject``, ``Fail``, ``Place``, ``Evict``),
   checking each against the state; an allocation that does not fit, or a dispatch whose requests
   all ended meanwhile, becomes a follow-up event handled in the same step at the same ``now``;
4. returns the :class:`Effects`: dispatches started (with their predicted end), diffuses to pause at
   a step boundary, requests that ended. The simulator turns a started dispatch into a timed
   completion on its heap; the live engine sends it to a worker.

With ``calibrate`` on, each completed dispatch also teaches a :class:`~tridentcore.core.calibration.Calibration`
its measured / predicted compute time, and the state and the policy see the calibrated cost model.

Everything here is deterministic: given the same reports at the same times, the same decisions
follow. With ``log`` on, the core keeps every report and its time, so a live run can be replayed
through the simulator (``Simulator(..., replay=core.log)``) and must give the same decisions.

Pure: no clock (decision times are measured only if the driver passes a ``timer``), no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from .calibration import CalibratedCost, Calibration
from .cluster import ClusterSpec
from .costmodel import CostModel
from .dispatch import next_boundary
from .errors import TridentError
from .events import (Action, Dispatch, Event, Evict, Fail, Place, Preempt, Reject, RequestArrived, RequestEnded,
                     StageFailed, StageFinished, Tick, WorkerLost, WorkerRestored)
from .lifecycle import TERMINAL, RequestState
from .policy import Policy
from .records import PlacementRow
from .recording import Recorder
from .reports import Cancelled, Completed, Effects, Forgot, Paused, Report, ResultLost, ShutDown, Started
from .state import ClusterState, ClusterView, Running
from .types import Shape, StageKind

__all__ = ["DEFAULT_MAX_ATTEMPTS", "Cancelled", "Completed", "DriverCore", "Effects", "Forgot", "Paused", "PolicyBug",
           "Report", "ResultLost", "ShutDown", "Started", "StepFailed", "expected_mix", "next_boundary"]

DEFAULT_MAX_ATTEMPTS = 3  # a request whose running stage fails this often (lost worker, error) fails
MAX_FOLLOW_UPS = 10_000  # follow-up events in one step past which the policy is looping (a bug)


class PolicyBug(TridentError, RuntimeError):
    """A policy asked for something impossible (a busy GPU, a request in the wrong state...)."""


class StepFailed(TridentError, RuntimeError):
    """A step of a non-strict core that raised part-way (a policy bug, or the policy itself raised):
    ``effects`` holds what it had applied by then, which the driver must still carry out (a dispatch
    already marked running that no worker is sent to would hold its GPUs for ever). The error that
    stopped the step is ``__cause__``."""

    def __init__(self, effects: "Effects") -> None:
        super().__init__("a step failed part-way")
        self.effects = effects


# ------------------------------------------------------------------------------------ start inputs


def expected_mix(items: Iterable[tuple[str, Shape, float]]) -> dict[tuple[str, Shape], float]:
    """The workload a policy plans its initial placement for: ``{(model, shape): weight}``.

    Both drivers build ``policy.start``'s input with this one function: from a mix's classes and
    their weights when the run declares a mix, else from the requests of a trace (weight 1 each)."""
    out: dict[tuple[str, Shape], float] = {}
    for model, shape, weight in items:
        out[(model, shape)] = out.get((model, shape), 0.0) + float(weight)
    return out


# --------------------------------------------------------------------------------------- the core


class DriverCore:
    """Cluster state, policy and records of one run; :meth:`step` is the one applier of actions.

    ``strict``: an invalid dispatch raises :class:`PolicyBug` (the simulator, tests); otherwise its
    requests fail with an internal-error reason and the message goes to ``errors`` (a server
    outlives a bad decision), and a step that raises part-way (any other policy bug, or the policy
    itself raising) raises :class:`StepFailed` carrying the effects applied before it. ``timer``: a
    clock for measuring decision times (None: not measured).
    """

    def __init__(self, cluster: ClusterSpec, cost: CostModel, policy: Policy, *, gpu_kind: str | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, strict: bool = True, record: bool = True,
                 log: bool = False, timer: Callable[[], float] | None = None,
                 decision_window: int | None = None, calibrate: bool = False) -> None:
        self.calibration = Calibration() if calibrate else None
        if self.calibration is not None:
            cost = CalibratedCost(cost, self.calibration)  # type: ignore[assignment]
        self.state = ClusterState(cluster, cost, gpu_kind)
        self.view = ClusterView(self.state)
        self.policy = policy
        self.max_attempts = max_attempts
        self.strict = strict
        self.recorder = Recorder(record)
        self.log: list[tuple[float, Report]] | None = [] if log else None
        self.started_with: tuple[tuple[str, ...], dict[tuple[str, Shape], float] | None] | None = None
        self.decision_ms: deque[float] = deque(maxlen=decision_window)
        self.errors: list[str] = []
        self.events = 0  # events handed to the policy
        self._timer = timer
        self._attempts: dict[int, int] = {}
        self._skip_seq = 0  # dispatches that never ran (failed allocation, skipped) get ids -1, -2, ...

    # ------------------------------------------------------------------------------ entry points
    def start(self, models: Sequence[str], expected: Mapping[tuple[str, Shape], float] | None,
              now: float = 0.0) -> Effects:
        """The policy's initial placement (a deployment: costs no load time, and is not timed as a
        decision: ``decision_ms`` is the dispatch path's, not the deployment's solver and its imports)."""
        self.started_with = (tuple(models), dict(expected) if expected is not None else None)
        out = Effects()
        actions = self.policy.start(self.view, list(models), now, expected)
        follow = self._apply(actions, now, out, initial=True)
        self._run(follow, now, out)
        return out

    def step(self, report: Report, now: float) -> Effects:
        """Absorb one report at ``now``, let the policy decide, apply its actions."""
        if self.log is not None:
            self.log.append((now, report))
        out = Effects()
        try:
            self._run(self._absorb(report, now, out), now, out)
        except Exception as exc:
            if self.strict:
                raise
            self._settle(out)  # the rest of this step's events are dropped; what was applied stands
            raise StepFailed(out) from exc
        return out

    # A step in two halves, for scenario tests that look at a policy's actions before applying them
    # (``step`` is ``absorb``, ``policy.on_event`` for each event, then ``apply``).
    def absorb(self, report: Report, now: float) -> list[Event]:
        """Only the state change of a report; returns the events the policy would be handed."""
        return self._absorb(report, now, Effects())

    def apply(self, actions: Iterable[Action], now: float) -> Effects:
        """Apply actions decided outside :meth:`step` (follow-up events still go to the policy)."""
        out = Effects()
        self._run(self._apply(actions, now, out), now, out)
        return out

    # ------------------------------------------------------------------------------ the loop
    def _run(self, events: Iterable[Event], now: float, out: Effects) -> None:
        queue = deque(events)
        handled = 0
        on_event, view = self.policy.on_event, self.view
        while queue:
            event = queue.popleft()
            handled += 1
            if handled > MAX_FOLLOW_UPS:
                raise PolicyBug(f"{self.policy.spec}: {MAX_FOLLOW_UPS} events at t={now:.6f} without progress")
            self.events += 1
            actions = self._decide(on_event, view, event, now)
            if actions:
                queue.extend(self._apply(actions, now, out))
        self._settle(out)

    def _settle(self, out: Effects) -> None:
        """``out.ended``: each request once, only those that did end."""
        if out.ended:
            get = self.state.requests.by_id.get
            out.ended = [rid for rid in dict.fromkeys(out.ended) if (rec := get(rid)) is not None
                         and rec.state in TERMINAL]

    def _decide(self, call: Callable[..., list[Action]], *args) -> list[Action]:
        """``call(*args)``: a policy's decision, timed into ``decision_ms`` when the driver has a timer."""
        if self._timer is None:
            return call(*args)
        t0 = self._timer()
        actions = call(*args)
        self.decision_ms.append((self._timer() - t0) * 1000.0)
        return actions

    # ------------------------------------------------------------------------------ absorbing
    def _absorb(self, report: Report, now: float, out: Effects) -> list[Event]:
        state = self.state
        if isinstance(report, RequestArrived):
            state.requests.add(report.request, now)
            out.ended.append(report.request.id)
            return [report]
        if isinstance(report, Completed):
            run = state.running.get(report.dispatch_id)
            if run is None:
                return []  # already failed (its worker was lost) or shut down
            if report.error:
                return [self._failed(run, report.error, report.oom, now, out, lost=run.member_lost)]
            return [self._finished(run, report.end_step, now, out, report.compute_s, report.degree)]
        if isinstance(report, Tick):
            return [report] if state.requests.live else []
        if isinstance(report, WorkerLost):
            return self._lost(report.gpu, report.reason, now, out)
        if isinstance(report, WorkerRestored):
            state.set_alive(report.gpu, True)
            return [report]
        if isinstance(report, Cancelled):
            # one that waited leaves the policy's queues at once: its record may be forgotten next
            # (outside test 106: a policy that met it later looked up a forgotten id on every event)
            end = RequestState.REJECTED if report.rejected else RequestState.CANCELLED
            waited = self._cancel(report.request_id, report.reason, now, out, end, report.retry_s)
            return [RequestEnded(report.request_id)] if waited else []
        if isinstance(report, Forgot):
            state.requests.forget(report.request_id)
            self._attempts.pop(report.request_id, None)
            return []
        if isinstance(report, ResultLost):
            rec = state.requests.get(report.request_id)
            if rec is not None and rec.state is RequestState.DONE:
                state.requests.lose_result(report.request_id, now, report.reason)
                out.ended.append(report.request_id)
            return []
        if isinstance(report, ShutDown):
            # (a live engine goes on after one, once a device is back: those that waited leave the queues)
            return [RequestEnded(rid) for rid in self._fail_everything(report.reason, now, out, dict(report.reached))]
        raise TypeError(f"unknown report {report!r}")

    def _finished(self, run: Running, end_step: int | None, now: float, out: Effects,
                  compute_s: float | None = None, degree: int | None = None) -> StageFinished:
        a = run.action
        end = 0
        preempted = False
        if a.stage == StageKind.DIFFUSE:
            if end_step is None:
                end_step = run.preempt_at_step if run.preempt_at_step is not None else a.end_step
            end = max(a.start_step, min(end_step, a.end_step))
            preempted = end < a.end_step
            run.preempt_at_step = end if preempted else None
        self.state.finish(run.id, now, end)
        # every request of it cancelled while it ran: its output is dropped, whether it stopped early or not
        get = self.state.requests.by_id.get
        states = [rec.state for r in a.request_ids if (rec := get(r)) is not None]
        cancelled = bool(states) and all(st == RequestState.CANCELLED for st in states)
        self.recorder.span(run, now, "cancelled" if cancelled else "preempted" if preempted else "done", end,
                           compute_s, degree)
        # its compute time (after the predicted weight loading and transfers), predicted and taken: as
        # the worker measured it, or else by the driver's clock (which adds the hand-over to and from it)
        if a.stage == StageKind.DIFFUSE:
            predicted = (end - a.start_step) * run.step_s
        else:
            predicted = run.predicted_end_s - run.compute_start_s
        measured = compute_s if compute_s is not None else max(0.0, now - run.compute_start_s)
        if degree is not None and degree != len(a.gpus):
            # it ran at another degree than its prediction's (outside test 126: a degree-2 diffuse its model
            # could not split ran on its lead alone): nothing to learn from the pair, neither by calibration
            # nor by a policy's noise estimate (said as nothing predicted)
            predicted = measured = 0.0
        if self.calibration is not None and predicted > 0:
            # learnt against the uncalibrated prediction
            self.calibration.observe(run.model, a.stage, run.shape, predicted / run.factor, measured, len(a.gpus),
                                     len(a.request_ids))
        out.ended.extend(a.request_ids)
        return StageFinished(run.id, a.stage, a.request_ids, a.gpus, end, preempted, predicted, measured)

    def _failed(self, run: Running, reason: str, oom: bool, now: float, out: Effects, lost: bool = False) -> StageFailed:
        """A running dispatch failed: its requests go back to waiting, or fail after ``max_attempts``."""
        state, a = self.state, run.action
        give_up = set()
        for rid in a.request_ids:
            n = self._attempts[rid] = self._attempts.get(rid, 0) + 1
            if n >= self.max_attempts:
                give_up.add(rid)
        state.fail(run.id, now, reason, oom=oom, retry=True)
        self.recorder.span(run, now, "oom" if oom else "failed", a.start_step)
        for rid in a.request_ids:
            out.ended.append(rid)
            if rid in give_up and not state.requests[rid].state.terminal:
                state.end_request(rid, RequestState.FAILED, now,
                                  f"{a.stage} failed {self.max_attempts} times; last: {reason}")
        return StageFailed(run.id, a.stage, a.request_ids, a.gpus, reason, oom, lost)

    def _lost(self, gpu: int, reason: str, now: float, out: Effects) -> list[Event]:
        state = self.state
        events: list[Event] = []
        did = state.busy[gpu]
        run = state.running.get(did) if did is not None else None
        if run is not None and len(run.action.gpus) > 1:
            # A member of a multi-GPU dispatch: the others are still in its group (a survivor leaves it
            # when its collective fails, or is stopped after a grace period), so none is free until the
            # dispatch's own end is reported (it fails then, as lost). Freed at once, a survivor got the
            # next stage while its process was still in the broken group, which then stopped it.
            run.member_lost = True
        elif run is not None:
            events.append(self._failed(run, f"worker {gpu} lost: {reason}", False, now, out, lost=True))
        if state.alive[gpu]:
            for (model, stage), gib in sorted(state.resident[gpu].items()):
                self.recorder.placement(PlacementRow(now, gpu, model, stage, "evict", gib))
            state.set_alive(gpu, False)
        events.append(WorkerLost(gpu, reason))
        return events

    def _cancel(self, rid: int, reason: str, now: float, out: Effects, end: RequestState = RequestState.CANCELLED,
                retry_s: float = 0.0) -> bool:
        """End ``rid`` cancelled (or ``end``); whether it was waiting (no stage of it running)."""
        state = self.state
        rec = state.requests.get(rid)
        if rec is None or rec.state.terminal:
            return False
        out.ended.append(rid)
        did = state.by_request.get(rid)
        if did is None:
            state.requests.transition(rid, end, now, reason, retry_s)
            return True
        # Running: the request ends now; its stage runs on and its output is dropped when it ends
        # (a diffuse whose every request ended stops at its next step boundary).
        state.requests.transition(rid, end, now, reason, retry_s)
        run = state.running[did]
        if run.action.stage == StageKind.DIFFUSE and all(state.requests[r].state.terminal for r in run.action.request_ids):
            stop, at = next_boundary(run, now)
            if stop < run.action.end_step:
                out.paused.append(Paused(run, stop, at))
        return False

    def _fail_everything(self, reason: str, now: float, out: Effects, reached: dict[int, int] | None = None) -> list[int]:
        """Fail every running dispatch and every live request; the requests that were waiting.
        ``reached``: the step each running diffuse got to, by dispatch id, where its worker said."""
        state = self.state
        waited = []
        for did in list(state.running):
            run = state.running[did]
            state.fail(did, now, reason, retry=False)
            a = run.action
            end = min(max(a.start_step, (reached or {}).get(did, a.start_step)), a.end_step)
            self.recorder.span(run, now, "failed", end)
            out.ended.extend(run.action.request_ids)
        for rec in list(state.requests):
            if not rec.state.terminal:  # (those of the running dispatches ended above)
                state.end_request(rec.id, RequestState.FAILED, now, reason)
                out.ended.append(rec.id)
                waited.append(rec.id)
        return waited

    # ------------------------------------------------------------------------------ applying
    def _apply(self, actions: Iterable[Action], now: float, out: Effects, initial: bool = False) -> list[Event]:
        """Apply a policy's actions in order; returns the follow-up events they cause."""
        state = self.state
        follow: list[Event] = []
        for action in actions:
            if isinstance(action, Dispatch):
                ev = self._dispatch(action, now, out)
                if ev is not None:
                    follow.append(ev)
            elif isinstance(action, (Reject, Fail)):
                end = RequestState.REJECTED if isinstance(action, Reject) else RequestState.FAILED
                problem = state.end_waiting(action.request_id, end, now, action.reason,
                                            action.retry_s if isinstance(action, Reject) else 0.0)
                if problem:
                    raise PolicyBug(f"{self.policy.spec}: {problem}")
                out.ended.append(action.request_id)
            elif isinstance(action, Preempt):
                self._preempt(action.request_id, now, out)
            elif isinstance(action, (Place, Evict)):
                row = state.apply_placement(action, now, initial)
                if row is not None:
                    self.recorder.placement(row)
            else:
                raise PolicyBug(f"{self.policy.spec}: unknown action {action!r}")
        return follow

    def _skip_id(self) -> int:
        self._skip_seq -= 1
        return self._skip_seq

    def _dispatch(self, action: Dispatch, now: float, out: Effects) -> Event | None:
        state = self.state
        get = state.requests.get
        if any((rec := get(r)) is None or rec.state in TERMINAL for r in action.request_ids):
            live = tuple(r for r in action.request_ids if (rec := get(r)) is not None and rec.state not in TERMINAL)
            if not live:
                # Every request of it ended while the policy held it (cancelled): nothing runs. The
                # policy hears that the stage "finished" for ended requests, which every policy
                # already handles (a request cancelled while running ends the same way).
                return StageFinished(self._skip_id(), action.stage, action.request_ids, action.gpus,
                                     action.start_step)
            action = replace(action, request_ids=live)
        problems = state.problems(action)
        if problems:
            msg = f"{self.policy.spec}: invalid dispatch {action}: " + "; ".join(problems)
            if self.strict:
                raise PolicyBug(msg)
            self.errors.append(msg)
            for rid in action.request_ids:
                rec = state.requests.get(rid)
                if rec is not None and not rec.state.terminal and state.by_request.get(rid) is None:
                    state.end_request(rid, RequestState.FAILED, now, "internal error: the policy made an invalid dispatch")
                    out.ended.append(rid)
            return None
        c = state.dispatch_cost(action)
        if c.oom:
            # The allocation fails as the stage starts: nothing runs, the requests stay waiting with
            # an out-of-memory error counted, and the policy hears of it (a retry is its decision).
            state.note_oom(action.request_ids)
            did = self._skip_id()
            self.recorder.oom(did, action, state, now)
            return StageFailed(did, action.stage, action.request_ids, action.gpus, "out of memory", oom=True)
        model = state.requests[action.request_ids[0]].spec.model
        held = state.gpus_holding(model, action.stage)
        for g in action.gpus:  # lazy placement: weights loaded as part of this dispatch
            if g not in held and state.place(model, action.stage, g):
                self.recorder.placement(PlacementRow(now, g, model, action.stage, "place",
                                                     state.stage_weights_gib(model, action.stage), c.load_s))
        compute_start = now + c.load_s + c.transfer_s
        end = compute_start + c.compute_s
        run = state.start(action, now, compute_start, end, c.step_s, c.load_s, c.transfer_s, c.act_gib)
        if self.calibration is not None:
            run.factor = self.calibration.factor(model, action.stage, run.shape, len(action.gpus),
                                                 len(action.request_ids))
        out.started.append(Started(run, c.total_s))
        return None

    def _preempt(self, request_id: int, now: float, out: Effects) -> None:
        state = self.state
        did = state.by_request.get(request_id)
        if did is None:
            return
        run = state.running[did]
        if run.action.stage != StageKind.DIFFUSE or run.preempt_at_step is not None:
            return
        stop, at = next_boundary(run, now)
        if stop >= run.action.end_step:
            return  # finishes at its next boundary anyway
        run.preempt_at_step = stop
        run.predicted_end_s = at
        out.paused.append(Paused(run, stop, at))
