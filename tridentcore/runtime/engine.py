"""The live engine: the wall-clock driver of the same policy objects the simulator drives.

decide -> execute -> absorb, on one asyncio loop:

* **events in**: a submission (``RequestArrived``), a worker finishing (``StageFinished``) or failing
  (``StageFailed``), a worker process lost or back (``WorkerLost`` / ``WorkerRestored``), and a
  ``Tick`` every ``policy.tick_s``;
* each event is first absorbed into the :class:`~tridentcore.core.state.ClusterState` with the same
  calls the simulator makes (``requests.add``, ``finish``, ``fail``, ``set_alive``), then handed to
  ``policy.on_event(view, event, now)``;
* **actions out** are applied as the simulator applies them (``problems``, ``dispatch_cost``, lazy
  ``place``, ``start``; ``Preempt`` at a step boundary; ``Reject`` / ``Fail`` of waiting requests;
  ``Place`` / ``Evict``) and a dispatch is sent to its lead worker; its completion comes back as
  an event.

Events are processed one at a time, in order, synchronously (no ``await`` between absorbing an
event and applying the policy's actions), so the state never changes under the policy.

Time ``now`` is the engine clock: seconds since the engine started, divided by ``time_scale``
(emulated devices sleep ``time_scale`` x the cost model's duration, so with ``time_scale`` 0.05
a run's records read as if the work had taken the cost model's time, twenty times faster).
``time_scale`` 0 means zero-cost stages on the wall clock (measures the engine's own overhead).

Every accepted request ends in exactly one terminal state with a reason: done, rejected (by the
policy), cancelled (by its client), or failed (a stage failed too often, or the engine shut down
before it could finish). Spans, placement changes and request outcomes are the simulator's
records (``SpanRow``, ``PlacementRow``, ``RequestRow``), written to the results store on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ..core.cluster import ClusterSpec
from ..core.costmodel import CostModel
from ..core.events import (Dispatch, Evict, Fail, Place, Preempt, Reject, RequestArrived, StageFailed,
                           StageFinished, Tick, WorkerLost, WorkerRestored)
from ..core.lifecycle import WAITING_FOR, RequestState
from ..core.policy import Policy
from ..core.records import GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow
from ..core.recording import gpu_samples, request_row, request_rows, span_rows
from ..core.state import ClusterState, ClusterView, Running
from ..core.types import Shape
from ..core.workload import RequestSpec, make_slo_fn
from .workers import StageResult, StageTask, WorkerPool, failure

logger = logging.getLogger(__name__)


class PolicyBug(RuntimeError):
    """A policy asked for something impossible (strict engines raise it; others fail the requests)."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_queued: int = 256  # waiting requests (not running) past which submissions are refused
    time_scale: float = 1.0  # wall seconds per engine second (emulated durations are scaled by it)
    slo_scale: float = 3.0  # default deadline: arrival + slo_scale x reference latency
    max_attempts: int = 3  # a request whose stage fails this often (lost worker, error) fails
    max_results: int = 1024  # finished results kept for clients to fetch (oldest dropped first)
    # ended requests kept in full (describe, outcome); older ones are forgotten, leaving only their
    # store row when ``record`` is on, so a long-lived server's memory stays bounded
    keep_ended: int = 10_000
    # keep the run's records (request rows, spans, placements) for the store; a server without --db
    # keeps none (listeners still see every span and ending)
    record: bool = True
    retry_after_s: float = 1.0  # suggested wait when the queue is full
    min_tick_wall_s: float = 0.005
    strict: bool = False  # raise PolicyBug instead of failing the requests of an invalid action
    # testing aid (``trident serve --inject-oom decode:1``): the first N dispatches of a stage fail in their
    # worker with an out-of-memory error, which then takes the real path (StageFailed(oom=True), retry)
    inject_oom: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Submission:
    """One image or video to make (the server turns a request for ``n`` images into ``n`` of these)."""

    model: str
    prompt: str
    shape: Shape
    seed: int = 0
    guidance: float | None = None
    negative_prompt: str = ""
    slo_s: float | None = None  # engine seconds; None: slo_scale x the reference latency


@dataclass(frozen=True, slots=True)
class Accepted:
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    code: str  # queue_full | shutting_down
    reason: str
    retry_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended (``result``: encoded media bytes; None on emulated devices)."""

    request_id: int
    state: str
    reason: str
    result: bytes | None = None


@dataclass
class _Flight:
    """A dispatch in flight: its task and what it was asked to do."""

    task: asyncio.Task | None = None
    cancelled: set[int] = field(default_factory=set)


_ARRIVAL, _FINISH, _LOST, _RESTORED, _TICK, _EVENT = range(6)


class Engine:
    """One live run: a policy, a cluster state, workers and the records."""

    def __init__(self, cluster: ClusterSpec, cost: CostModel, policy: Policy, workers: WorkerPool,
                 models: Sequence[str], *, gpu_kind: str | None = None, config: EngineConfig = EngineConfig(),
                 profile: str = "", devices: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.cost = cost
        self.policy = policy
        self.workers = workers
        self.models = tuple(models)
        self.config = config
        self.profile = profile
        self.devices = devices or cluster.label
        self._clock = clock
        self.state = ClusterState(cluster, cost, gpu_kind)
        self.view = ClusterView(self.state)
        self._slo = make_slo_fn(cost, config.slo_scale, cluster.gpus_per_node, self.state.gpu_kind)
        self._t0 = 0.0
        self._scale = config.time_scale if config.time_scale > 0 else 1.0
        self._pending: deque = deque()
        self._processing = False
        self._next_id = 0
        self._id_step = 1
        self.device_offset = 0  # added to device ids in snapshots and timings (engines of a mixed run)
        self._skip_seq = 0
        self._live: set[int] = set()
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self._flights: dict[int, _Flight] = {}
        self._attempts: dict[int, int] = {}
        self._artifacts: dict[int, dict] = {}
        self.results: OrderedDict[int, bytes | None] = OrderedDict()
        self.spans: list[SpanRow] = []
        self._act_gib: dict[int, float] = {}  # dispatch id -> activation memory per device
        self.placements: list[PlacementRow] = []
        self.decision_ms: deque[float] = deque(maxlen=10_000)  # the most recent policy decisions (bounded)
        self.errors: list[str] = []
        self.span_listeners: list[Callable[[SpanRow], None]] = []
        self.end_listeners: list[Callable[[object], None]] = []  # called with each request record as it ends
        self.forget_listeners: list[Callable[[int], None]] = []  # called with a request id just before it is forgotten
        self._spans_of: dict[int, list[SpanRow]] = {}
        self._ended: deque[int] = deque()  # ended requests still in the table, oldest first
        self._rows: list[RequestRow] = []  # rows of forgotten requests (record on)
        self.forgotten = 0
        self._faults = {stage: n for stage, n in config.inject_oom if n > 0}  # stage -> injections left
        self._tiled: set[int] = set()  # decode dispatches run tiled (a retry after an out-of-memory error)
        self._tick_task: asyncio.Task | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self.started_unix_s = 0.0
        self.wall_s = 0.0
        self.events = 0

    # ------------------------------------------------------------------------------ clock
    def now(self) -> float:
        return (self._clock() - self._t0) / self._scale

    def _wall_at(self, t: float) -> float:
        return self._t0 + t * self._scale

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the workers, apply the policy's initial placement, start the tick timer."""
        for w in self.workers.workers:
            if hasattr(w, "on_lost"):
                w.on_lost = self._worker_lost
                w.on_restored = self._worker_restored
        await self.workers.start()
        self._t0 = self._clock()
        self.started_unix_s = time.time()
        actions = self._decide(lambda: self.policy.start(self.view, list(self.models), 0.0, None))
        self._apply(actions, initial=True)
        if self.policy.tick_s:
            self._tick_task = asyncio.get_running_loop().create_task(self._ticker())
        self._started = True

    async def _ticker(self) -> None:
        tick = self.policy.tick_s
        while not self._closed:
            now = self.now()
            nxt = math.floor(now / tick + 1e-9) * tick + tick
            wall = max(self._wall_at(nxt) - self._clock(), self.config.min_tick_wall_s)
            await asyncio.sleep(wall)
            if self.state.requests.live and not self._closed:
                self._post(_TICK, None)

    async def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, let in-flight work finish for up to ``drain_timeout_s``, fail the rest."""
        if self._closed:
            return
        self._closing = True
        deadline = self._clock() + max(0.0, drain_timeout_s)
        while self._live and self._clock() < deadline:
            await asyncio.sleep(0.01)
        self._post(_EVENT, ("shutdown", None))
        self._closed = True
        if self._tick_task is not None:
            self._tick_task.cancel()
        for flight in list(self._flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        await self.workers.stop()
        self.wall_s = self._clock() - self._t0

    # ------------------------------------------------------------------------------ client API
    @property
    def closing(self) -> bool:
        return self._closing

    def share_ids(self, index: int, parts: int) -> None:
        """Number requests ``index``, ``index + parts``, ...: the engines of a mixed run never reuse an id,
        and ``id % parts`` names the engine that owns a request. Call before the first submission."""
        if self._next_id or self._started:
            raise RuntimeError("share_ids must be called before the engine starts")
        self._next_id, self._id_step = index, parts

    def live_states(self) -> dict[str, int]:
        """How many live requests are in each (non-terminal) state."""
        counts: dict[str, int] = {}
        reqs = self.state.requests
        for rid in self._live:
            s = reqs[rid].state.value
            counts[s] = counts.get(s, 0) + 1
        return counts

    def live_ids(self) -> list[int]:
        """Requests accepted and not yet ended."""
        return list(self._live)

    def waiting_count(self) -> int:
        reqs = self.state.requests
        return sum(1 for rid in self._live if reqs[rid].state in WAITING_FOR)

    def submit(self, items: Sequence[Submission]) -> Accepted | Refused:
        """Admit requests (all or none); they arrive now."""
        if self._closing or not self._started:
            return Refused("shutting_down", "the server is shutting down" if self._closing else "not started yet")
        waiting = self.waiting_count()
        if waiting + len(items) > self.config.max_queued:
            return Refused("queue_full", f"{waiting} requests are waiting (at most {self.config.max_queued})",
                           self.config.retry_after_s)
        now = self.now()
        ids = []
        for item in items:
            rid = self._next_id
            self._next_id += self._id_step
            slo = item.slo_s if item.slo_s is not None else self._slo(item.model, item.shape)
            spec = RequestSpec(rid, item.model, item.prompt, item.shape, int(item.seed), item.guidance, float(slo),
                               now, item.negative_prompt)
            ids.append(rid)
            self._post(_ARRIVAL, spec)
        return Accepted(tuple(ids))

    def cancel(self, request_id: int, reason: str = "cancelled by the client") -> bool:
        """Cancel a request; False if it is unknown or already ended."""
        rec = self.state.requests.get(request_id)
        if rec is None or rec.state.terminal:
            return False
        self._post(_EVENT, ("cancel", (request_id, reason)))
        return True

    async def wait(self, request_id: int, timeout_s: float | None = None) -> Outcome:
        rec = self.state.requests.get(request_id)
        if rec is None:
            raise KeyError(request_id)
        if not rec.state.terminal:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(request_id, []).append(fut)
            await asyncio.wait_for(fut, timeout_s)
        return self.outcome(request_id)

    def outcome(self, request_id: int) -> Outcome | None:
        rec = self.state.requests.get(request_id)
        if rec is None or not rec.state.terminal:
            return None
        return Outcome(request_id, rec.state.value, rec.reason, self.results.get(request_id))

    def has_result(self, request_id: int) -> bool:
        return request_id in self.results

    def describe(self, request_id: int) -> dict | None:
        """State, the stage it is in or waits for, progress and per-stage timings (engine seconds)."""
        rec = self.state.requests.get(request_id)
        if rec is None:
            return None
        run = self.view.running_of(request_id)
        state = rec.state
        stage = run.action.stage if run is not None else WAITING_FOR.get(state)
        spec = rec.spec
        return {
            "id": request_id, "state": state.value, "stage": stage, "model": spec.model,
            "reason": rec.reason if state.terminal else "", "steps_done": rec.steps_done, "steps": spec.shape.steps,
            "arrival_s": spec.arrival_s, "deadline_s": spec.deadline_s, "finish_s": rec.finish_s,
            "met_slo": bool(state is RequestState.DONE and rec.finish_s is not None
                            and rec.finish_s <= spec.deadline_s + 1e-9),
            "ooms": rec.ooms, "preemptions": rec.preemptions,
            "stages": [self._span_dict(sp) for sp in self._spans_of.get(request_id, ())],
        }

    def _span_dict(self, sp: SpanRow) -> dict:
        out = {"stage": sp.stage, "devices": [g + self.device_offset for g in sp.gpus], "batch": sp.batch, "outcome": sp.outcome,
               "queued_ms": 1000 * (sp.started_s - sp.queued_s), "run_ms": 1000 * (sp.ended_s - sp.started_s),
               "predicted_ms": 1000 * sp.predicted_s, "load_ms": 1000 * sp.load_s,
               "transfer_ms": 1000 * sp.transfer_s, "start_step": sp.start_step, "end_step": sp.end_step}
        if sp.stage == "decode":
            out["tiled"] = sp.dispatch_id in self._tiled
        return out

    # ------------------------------------------------------------------------------ workers
    def _worker_lost(self, slot: int, reason: str) -> None:
        self._post(_LOST, (slot, reason))

    def _worker_restored(self, slot: int) -> None:
        self._post(_RESTORED, slot)

    # ------------------------------------------------------------------------------ the loop
    def _post(self, kind: int, payload) -> None:
        self._pending.append((kind, payload))
        if self._processing:
            return
        self._processing = True
        try:
            while self._pending:
                k, p = self._pending.popleft()
                try:
                    self._step(k, p)
                except PolicyBug:
                    if self.config.strict:
                        raise
                    logger.exception("policy bug")
                except Exception as exc:  # noqa: BLE001 - a server must outlive a bad event
                    if self.config.strict:
                        raise
                    logger.exception("engine error on event %s", k)
                    self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._processing = False

    def _step(self, kind: int, payload) -> None:
        touched: set[int] = set()
        events = self._absorb(kind, payload, touched)
        for event in events:
            self.events += 1
            now = self.now()
            actions = self._decide(lambda: self.policy.on_event(self.view, event, now))
            if actions:
                self._apply(actions, touched=touched)
        for rid in touched:
            self._maybe_finalize(rid)

    def _decide(self, call):
        t0 = time.perf_counter()
        actions = call()
        self.decision_ms.append((time.perf_counter() - t0) * 1000.0)
        return actions

    def _absorb(self, kind: int, payload, touched: set[int]) -> list:
        state, now = self.state, self.now()
        if kind == _ARRIVAL:
            spec: RequestSpec = payload
            state.requests.add(spec, now)
            self._live.add(spec.id)
            touched.add(spec.id)
            return [RequestArrived(spec)]
        if kind == _FINISH:
            did, result = payload
            return self._completed(did, result, touched)
        if kind == _LOST:
            slot, reason = payload
            events: list = []
            did = state.busy[slot]
            if did is not None and did in state.running:
                events.append(self._failed(state.running[did], f"worker {slot} lost: {reason}", False, touched))
            if state.alive[slot]:
                for (model, stage), gib in sorted(state.resident[slot].items()):
                    self._placed(PlacementRow(now, slot, model, stage, "evict", gib))
                state.set_alive(slot, False)
            events.append(WorkerLost(slot, reason))
            return events
        if kind == _RESTORED:
            state.set_alive(payload, True)
            return [WorkerRestored(payload)]
        if kind == _TICK:
            return [Tick()] if state.requests.live else []
        what, arg = payload
        if what == "event":  # a synthetic event (a dispatch skipped because its requests ended)
            return [arg]
        if what == "cancel":
            rid, reason = arg
            self._cancel(rid, reason, touched)
            return []
        if what == "shutdown":
            self._fail_everything("the server shut down before the request finished", touched)
            return []
        raise ValueError(f"unknown engine message {what!r}")

    # ------------------------------------------------------------------------------ actions
    def _apply(self, actions, initial: bool = False, touched: set[int] | None = None) -> None:
        state, now = self.state, self.now()
        touched = touched if touched is not None else set()
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action, touched)
            elif isinstance(action, (Reject, Fail)):
                end = RequestState.REJECTED if isinstance(action, Reject) else RequestState.FAILED
                problem = state.end_waiting(action.request_id, end, now, action.reason)
                if problem:
                    raise PolicyBug(problem)
                touched.add(action.request_id)
            elif isinstance(action, Preempt):
                self._preempt(action.request_id)
            elif isinstance(action, (Place, Evict)):
                row = state.apply_placement(action, now, initial)
                if row is not None:
                    self._placed(row)
            else:
                raise PolicyBug(f"unknown action {action!r}")

    def _dispatch(self, action: Dispatch, touched: set[int]) -> None:
        state, now = self.state, self.now()
        live = tuple(r for r in action.request_ids
                     if (rec := state.requests.get(r)) is not None and not rec.state.terminal)
        if live != action.request_ids:
            if not live:
                # Every request of it ended while the policy held it (cancelled): nothing runs.
                # The policy hears that the stage "finished" for ended requests, which every
                # policy already handles (a request cancelled while running ends the same way).
                self._skip_seq -= 1
                ev = StageFinished(self._skip_seq, action.stage, action.request_ids, action.gpus, action.start_step)
                self._pending.append((_EVENT, ("event", ev)))
                return
            action = replace(action, request_ids=live)
        problems = state.problems(action)
        if problems:
            msg = f"{self.policy.spec}: invalid dispatch {action}: " + "; ".join(problems)
            if self.config.strict:
                raise PolicyBug(msg)
            logger.error(msg)
            self.errors.append(msg)
            for rid in action.request_ids:
                rec = state.requests.get(rid)
                if rec is not None and not rec.state.terminal and state.by_request.get(rid) is None:
                    state.end_request(rid, RequestState.FAILED, now, "internal error: the policy made an invalid dispatch")
                    touched.add(rid)
            return
        c = state.dispatch_cost(action)
        if c.oom:
            state.note_oom(action.request_ids)
            self._skip_seq -= 1
            for rid in action.request_ids:
                self._record(SpanRow(self._skip_seq, rid, action.stage, action.gpus, len(action.gpus),
                                     len(action.request_ids), state.requests[rid].ready_s, now, now, 0.0,
                                     action.start_step, action.start_step, "oom"))
            ev = StageFailed(self._skip_seq, action.stage, action.request_ids, action.gpus, "out of memory", oom=True)
            self._pending.append((_EVENT, ("event", ev)))
            return
        recs = [state.requests[r] for r in action.request_ids]
        model = recs[0].spec.model
        for g in action.gpus:  # lazy placement: weights loaded as part of this dispatch
            if state.place(model, action.stage, g):
                self._placed(PlacementRow(now, g, model, action.stage, "place",
                                                    state.stage_weights_gib(model, action.stage), c.load_s))
        compute_start = now + c.load_s + c.transfer_s
        end = compute_start + c.compute_s
        run = state.start(action, now, compute_start, end, c.step_s, c.load_s, c.transfer_s)
        task = self._task(run, recs, c.total_s)
        flight = _Flight()
        self._flights[run.id] = flight
        worker = self.workers[action.gpus[0]]
        flight.task = asyncio.get_running_loop().create_task(self._run(run.id, worker, task))

    def _task(self, run: Running, recs, total_s: float) -> StageTask:
        a, shape = run.action, run.shape
        ids = a.request_ids
        if a.stage == "encode":
            inputs: tuple = ()
        elif a.stage == "diffuse":
            inputs = tuple((self._artifacts.get(r, {}).get("embeddings"), self._artifacts.get(r, {}).get("latents"))
                           for r in ids)
        else:
            inputs = tuple(self._artifacts.get(r, {}).get("latents") for r in ids)
        scale = self.config.time_scale
        # a decode retried after an out-of-memory error runs tiled (bounded activation memory); the
        # policy decides the rest of the safer configuration (batch, degree)
        tiled = a.stage == "decode" and any(r.ooms for r in recs)
        if tiled:
            self._tiled.add(run.id)
        fault = ""
        if self._faults.get(a.stage, 0) > 0:
            self._faults[a.stage] -= 1
            fault = "oom"
        return StageTask(
            dispatch_id=run.id, stage=a.stage, model=run.model, request_ids=ids, height=shape.height,
            width=shape.width, frames=shape.frames, steps=shape.steps,
            prompts=tuple(r.spec.prompt for r in recs), negative_prompts=tuple(r.spec.negative_prompt for r in recs),
            seeds=tuple(r.spec.seed for r in recs), guidances=tuple(r.spec.guidance for r in recs),
            start_step=a.start_step, end_step=a.end_step, inputs=inputs, duration_s=total_s * scale,
            tiled=tiled, fault=fault, resident=tuple(sorted(self.state.resident[a.gpus[0]])),
        )

    async def _run(self, did: int, worker, task: StageTask) -> None:
        try:
            result = await worker.run(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker bug is a failed stage, not a dead engine
            result = failure(exc)
            if result.oom:  # an expected outcome: the policy retries it at a safer configuration
                logger.warning("worker %s: %s", getattr(worker, "slot", "?"), result.error)
            else:
                logger.exception("worker %s failed", getattr(worker, "slot", "?"))
        if not self._closed:
            self._post(_FINISH, (did, result))

    def _preempt(self, request_id: int) -> None:
        state, now = self.state, self.now()
        did = state.by_request.get(request_id)
        if did is None:
            return
        run = state.running[did]
        if run.action.stage != "diffuse" or run.preempt_at_step is not None:
            return
        stop, at = self._next_boundary(run, now)
        if stop >= run.action.end_step:
            return  # finishes at its next boundary anyway
        run.preempt_at_step = stop
        run.predicted_end_s = at
        self.workers[run.action.gpus[0]].preempt(run.id, stop, self._wall_at(at))

    @staticmethod
    def _next_boundary(run: Running, now: float) -> tuple[int, float]:
        """The step boundary a running diffuse reaches next, and when (as the simulator computes it)."""
        if run.step_s <= 0 or now <= run.compute_start_s:
            return run.action.start_step, max(now, run.compute_start_s)
        done = math.ceil((now - run.compute_start_s) / run.step_s - 1e-9)
        return run.action.start_step + done, max(now, run.compute_start_s + done * run.step_s)

    # ------------------------------------------------------------------------------ absorbing results
    def _completed(self, did: int, result: StageResult, touched: set[int]) -> list:
        state, now = self.state, self.now()
        self._flights.pop(did, None)
        run = state.running.get(did)
        if run is None:
            return []  # already failed (its worker was lost) or the engine shut it down
        if not result.ok:
            return [self._failed(run, result.error or "worker lost", result.oom, touched)]
        a = run.action
        end_step = 0
        preempted = False
        if a.stage == "diffuse":
            end_step = max(a.start_step, min(result.end_step, a.end_step))
            preempted = end_step < a.end_step
            run.preempt_at_step = end_step if preempted else None
        state.finish(did, now, end_step)
        self._span(run, now, "preempted" if preempted else "done", end_step)
        for i, rid in enumerate(a.request_ids):
            touched.add(rid)
            rec = state.requests[rid]
            if rec.state.terminal and rec.state is not RequestState.DONE:
                continue  # cancelled while it ran: its result is dropped
            out = result.outputs[i] if i < len(result.outputs) else None
            if a.stage == "encode":
                self._artifacts.setdefault(rid, {})["embeddings"] = out
            elif a.stage == "diffuse":
                self._artifacts.setdefault(rid, {})["latents"] = out
            else:
                self._artifacts.pop(rid, None)
                self.results[rid] = out
                while len(self.results) > self.config.max_results:
                    self.results.popitem(last=False)
        return [StageFinished(did, a.stage, a.request_ids, a.gpus, end_step, preempted)]

    def _failed(self, run: Running, reason: str, oom: bool, touched: set[int]) -> StageFailed:
        """A running dispatch failed: its requests go back to waiting, or fail after max_attempts."""
        state, now = self.state, self.now()
        a = run.action
        self._flights.pop(run.id, None)
        give_up = []
        for rid in a.request_ids:
            n = self._attempts[rid] = self._attempts.get(rid, 0) + 1
            if n >= self.config.max_attempts:
                give_up.append(rid)
        state.fail(run.id, now, reason, oom=oom, retry=True)
        self._span(run, now, "oom" if oom else "failed", a.start_step)
        for rid in a.request_ids:
            touched.add(rid)
            if rid in give_up and not state.requests[rid].state.terminal:
                state.end_request(rid, RequestState.FAILED, now,
                                  f"{a.stage} failed {self.config.max_attempts} times; last: {reason}")
        return StageFailed(run.id, a.stage, a.request_ids, a.gpus, reason, oom)

    def _cancel(self, rid: int, reason: str, touched: set[int]) -> None:
        state, now = self.state, self.now()
        rec = state.requests.get(rid)
        if rec is None or rec.state.terminal:
            return
        touched.add(rid)
        did = state.by_request.get(rid)
        if did is None:
            state.end_request(rid, RequestState.CANCELLED, now, reason)
            return
        # Running: the request ends now; its stage runs on and its output is dropped when it ends.
        state.requests.transition(rid, RequestState.CANCELLED, now, reason)
        run = state.running[did]
        if run.action.stage == "diffuse" and all(state.requests[r].state.terminal for r in run.action.request_ids):
            stop, at = self._next_boundary(run, now)
            if stop < run.action.end_step:
                self.workers[run.action.gpus[0]].preempt(run.id, stop, self._wall_at(at))

    def _fail_everything(self, reason: str, touched: set[int]) -> None:
        state, now = self.state, self.now()
        for did in list(state.running):
            run = state.running[did]
            state.fail(did, now, reason, retry=False)
            self._span(run, now, "failed", run.action.start_step)
            touched.update(run.action.request_ids)
        for rid in list(self._live):
            rec = state.requests[rid]
            if not rec.state.terminal:
                state.end_request(rid, RequestState.FAILED, now, reason)
            touched.add(rid)

    def _maybe_finalize(self, rid: int) -> None:
        rec = self.state.requests.get(rid)
        if rec is None or not rec.state.terminal or rid not in self._live:
            return
        self._live.discard(rid)
        self._attempts.pop(rid, None)
        if rec.state is not RequestState.DONE:
            self._artifacts.pop(rid, None)
        if self.state.by_request.get(rid) is None:
            self._artifacts.pop(rid, None)
        for listener in self.end_listeners:
            listener(rec)
        for fut in self._waiters.pop(rid, ()):
            if not fut.done():
                fut.set_result(None)
        self._ended.append(rid)
        self._retire()

    def _retire(self) -> None:
        """Forget the oldest ended requests past ``keep_ended`` (not while a running dispatch still holds
        one: a request cancelled while running stays until its stage ends)."""
        state = self.state
        while len(self._ended) > self.config.keep_ended:
            rid = self._ended[0]
            if state.by_request.get(rid) is not None:
                return
            self._ended.popleft()
            for listener in self.forget_listeners:
                listener(rid)
            rec = state.requests.forget(rid)
            if self.config.record:
                self._rows.append(request_row(rec))
            self._spans_of.pop(rid, None)
            self.forgotten += 1

    # ------------------------------------------------------------------------------ records
    def _placed(self, row: PlacementRow) -> None:
        if self.config.record:
            self.placements.append(row)

    def _record(self, span: SpanRow) -> None:
        if self.config.record:
            self.spans.append(span)
        self._spans_of.setdefault(span.request_id, []).append(span)
        for listener in self.span_listeners:
            listener(span)

    def _span(self, run: Running, t: float, outcome: str, end_step: int) -> None:
        if self.config.record:
            self._act_gib[run.id] = run.act_gib
        for row in span_rows(run, t, outcome, end_step):
            self._record(row)

    def request_rows(self) -> list[RequestRow]:
        """Every request of the run: forgotten ones from their rows, the rest as they stand."""
        return self._rows + request_rows(self.state.requests)

    def gpu_samples(self, sample_s: float = 10.0) -> list[GpuSample]:
        """Busy fraction and memory per device and interval (see ``core.recording.gpu_samples``)."""
        end = self.now() if self._started else 0.0
        return gpu_samples(self.spans, self.placements, self._act_gib, len(self.state.gpus), end, sample_s)

    def run_meta(self, run_id: str, config: dict | None = None) -> RunMeta:
        import json

        from ..sim.bench import git_sha, hardware, package_versions

        accepted = len(self.state.requests) + self.forgotten
        duration = self.now() if self._started else 0.0
        return RunMeta(
            run_id=run_id, backend="live", policy=self.policy.spec, seed=0, profile=self.profile,
            cluster=self.cluster.label, mix="live", rate_rps=accepted / duration if duration > 0 else 0.0,
            duration_s=duration, slo_scale=self.config.slo_scale,
            config_json=json.dumps({"devices": self.devices, "models": list(self.models),
                                    "time_scale": self.config.time_scale, "max_queued": self.config.max_queued,
                                    **(config or {})}, sort_keys=True),
            git_sha=git_sha(), packages_json=json.dumps(package_versions(), sort_keys=True),
            hardware_json=json.dumps(hardware(), sort_keys=True), status="complete",
            created_unix_s=self.started_unix_s, wall_s=self.wall_s or (self._clock() - self._t0),
        )

    def write_store(self, path: str, run_id: str | None = None, config: dict | None = None) -> str:
        """Write this run's records to a DuckDB results store; returns the run id."""
        from ..store import ResultsStore, new_run_id

        run_id = run_id or new_run_id(self.policy.spec, 0, salt="live")
        ResultsStore(path).write_run(self.run_meta(run_id, config), self.request_rows(), self.spans,
                                     self.placements, self.gpu_samples())
        return run_id

    # ------------------------------------------------------------------------------ cluster view
    def snapshot(self) -> dict:
        """Devices, resident stage instances (the live placement), queues and memory."""
        state = self.state
        devices = []
        instances: dict[tuple[str, str], list[int]] = {}
        for g, spec in enumerate(state.gpus):
            for key in state.resident[g]:
                instances.setdefault(key, []).append(g + self.device_offset)
            did = state.busy[g]
            run = state.running.get(did) if did is not None else None
            worker = self.workers[g]
            devices.append({
                "id": g + self.device_offset, "node": spec.node, "kind": spec.kind, "worker": worker.kind,
                "alive": bool(state.alive[g]), "busy": did is not None,
                "running": None if run is None else {"dispatch": run.id, "stage": run.action.stage,
                                                     "requests": list(run.action.request_ids)},
                "mem_gib": spec.mem_gib, "weights_gib": state.weights_gib[g], "activations_gib": state.act_gib[g],
                "free_gib": state.free_gib(g),
                "resident": [f"{m}/{s}" for m, s in sorted(state.resident[g])],
                "pid": getattr(worker, "pid", None),
            })
        queues = {"encode": 0, "diffuse": 0, "decode": 0}
        running = {"encode": 0, "diffuse": 0, "decode": 0}
        for rid in self._live:
            rec = state.requests[rid]
            stage = WAITING_FOR.get(rec.state)
            if stage is not None:
                queues[stage] += 1
        for run in state.running.values():
            running[run.action.stage] += len(run.action.request_ids)
        return {
            "devices": devices,
            "instances": [{"model": m, "stage": s, "devices": gs} for (m, s), gs in sorted(instances.items())],
            "queues": queues, "running": running, "live_requests": len(self._live),
            "policy": self.policy.spec, "cluster": self.cluster.label, "profile": self.profile,
            "time_scale": self.config.time_scale, "now_s": self.now() if self._started else 0.0,
        }
