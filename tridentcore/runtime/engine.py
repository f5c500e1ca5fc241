"""The live engine: the wall-clock driver of the same policy objects the simulator drives.

decide -> execute -> absorb, on one asyncio loop. The deciding and absorbing are the driver core's
(:class:`~tridentcore.core.driver.DriverCore`, the code the simulator runs too); this module keeps
only how time passes and how work reaches the workers:

* **reports in**: a submission (``RequestArrived``), a worker's result (``Completed``), a worker
  process lost or back (``WorkerLost`` / ``WorkerRestored``), a client's cancellation, the
  shutdown, and a ``Tick`` every ``policy.tick_s``. Each is handed to the core with ``now``, the
  engine clock read once;
* **effects out**: a started dispatch becomes a task on its lead worker (its inputs from the
  :class:`~tridentcore.runtime.artifacts.ArtifactCache`), a paused diffuse a stop request to its
  worker, an ended request wakes its waiters.

Reports are processed one at a time, in order, synchronously (no ``await`` between absorbing a
report and applying the policy's actions), so the state never changes under the policy. With
``EngineConfig.log_reports`` the core keeps every report with its time: replayed through the
simulator (``Simulator(..., replay=engine.core.log)``) it must give the same decisions.

Time ``now`` is the engine clock (``runtime/clock.py``): on real devices the wall clock since the
engine started; with ``time_scale`` (emulated devices wait ``time_scale`` x the cost model's
duration) the event loop's waiting is divided by the scale and the server's own busy time counts
at real speed, so a run at 0.05 reads as if the devices had taken the cost model's time, twenty
times faster, without multiplying the server's overhead by twenty. ``time_scale`` 0 means
zero-cost stages on the wall clock (measures the engine's own overhead).

Every accepted request ends in exactly one terminal state with a reason: done, rejected (by the
policy), cancelled (by its client), or failed (a stage failed too often, or the engine shut down
before it could finish). Spans, placement changes and request outcomes are the simulator's
records (``SpanRow``, ``PlacementRow``, ``RequestRow``); a server with a results store journals
them as they appear and ingests them as it goes (``runtime/stored.py``). The HTTP views are
``runtime/views.py``, the client types ``runtime/api.py``.

One class of about 800 lines, one job (a live run on one device kind): the loop, the client API,
the worker tasks and the endings share the pending queue, the waiters and the live set, and
splitting them would only pass those around.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..core.cluster import ClusterSpec
from ..core.costmodel import CostModel
from ..core.defaults import DEFAULT_DRAIN_TIMEOUT_S
from ..core.driver import (Cancelled, Completed, DriverCore, Effects, Forgot, PolicyBug, Report, ResultLost, ShutDown,
                           Started, StepFailed)
from ..core.events import RequestArrived, Tick, WorkerLost, WorkerRestored
from ..core.lifecycle import WAITING_FOR, RequestState
from ..core.policy import Policy
from ..core.records import GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow
from ..core.recording import request_row, request_rows
from ..core.types import Shape, StageKind
from ..core.workload import RequestSpec, make_slo_fn
from . import stored, views
from .api import Accepted, EngineConfig, Outcome, Refused, Submission
from .artifacts import ArtifactCache
from .clock import EngineClock
from .parallel_worlds import MemberSet
from .tasks import Pixels
from .workers import StageResult, StageTask, WorkerPool, failure

__all__ = ["Accepted", "Engine", "EngineConfig", "Outcome", "PolicyBug", "REFUSED_WITH", "Refused", "Submission"]

logger = logging.getLogger(__name__)

# a full queue's Retry-After: the rate requests ended at, over the latest endings within a window
_RATE_ENDS = 256
_RATE_WINDOW_S = 60.0
_MAX_RETRY_S = 300.0
RECORDS_RETRY_S = 5.0  # Retry-After while the run's records cannot be written
STUCK_AFTER = 3  # events in a row whose step raised: the engine is taken as stuck (``Engine.stuck``)
_MAX_ERRORS = 1000  # errors kept for a look (a server that outlives bad events for weeks keeps the latest)
# the reason of a request refused with another of its generation: this, that one's id, then its reason
REFUSED_WITH = "refused with request "


class Engine:
    """One live run: the driver core, the workers, the clock and the clients' waiters."""

    def __init__(self, cluster: ClusterSpec, cost: CostModel, policy: Policy, workers: WorkerPool,
                 models: Sequence[str], *, gpu_kind: str | None = None, config: EngineConfig = EngineConfig(),
                 profile: str = "", devices: str = "", clock: Callable[[], float] = time.monotonic,
                 expected: Mapping[tuple[str, Shape], float] | None = None) -> None:
        self.cluster = cluster
        self.cost = cost
        self.workers = workers
        self.models = tuple(models)
        self.expected = dict(expected) if expected is not None else None
        self.config = config
        self.profile = profile
        self.devices = devices or cluster.label
        self._clock = clock
        self.core = DriverCore(cluster, cost, policy, gpu_kind=gpu_kind, max_attempts=config.max_attempts,
                               strict=config.strict, record=config.record, log=config.log_reports,
                               timer=time.perf_counter, decision_window=10_000, calibrate=config.calibrate)
        self.state = self.core.state
        self.view = self.core.view
        self._slo_version = -1  # the calibration version the memoised deadlines were computed at
        self._slo = self._slo_fn()
        self._t0 = 0.0
        self._scale = config.time_scale if config.time_scale > 0 else 1.0
        self.clock = EngineClock(self._scale, clock)
        self._pending: deque[tuple[Report, StageResult | None]] = deque()
        self._processing = False
        self._next_id = 0
        self._id_step = 1
        self.device_offset = 0  # added to device ids in snapshots and timings (engines of a mixed run)
        self._live: set[int] = set()
        self._arriving: tuple[int, ...] = ()  # the generation being submitted (its requests arriving one by one)
        self._refusing: set[int] = set()  # requests being refused with a rejected one of their generation
        self._arrival_refused: tuple[int, str, float] | None = None  # the first of those arriving rejected
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self._tasks: dict[int, asyncio.Task] = {}  # dispatch id -> its worker task
        self.artifacts = ArtifactCache(config.max_results, config.results_mib << 20)
        self.errors: deque[str] = deque(maxlen=_MAX_ERRORS)  # the latest (each is also logged)
        self.failing = 0  # events in a row whose step raised (reset by one that did not): see ``stuck``
        self.errors_total = 0  # events whose step raised, since the start (/metrics)
        self.end_listeners: list[Callable[[object], None]] = []  # called with each request record as it ends
        self.forget_listeners: list[Callable[[int], None]] = []  # called with a request id just before it is forgotten
        self._spans_of: dict[int, list[SpanRow]] = {}
        self.core.recorder.listeners.append(self._on_span)
        self._ended: deque[int] = deque()  # ended requests still in the table, oldest first
        self._ends_at: deque[float] = deque(maxlen=_RATE_ENDS)  # wall times of the latest endings
        self._rows: list[RequestRow] = []  # rows of forgotten requests (record on, not streaming)
        self.streaming = False  # stream_records(): every row goes to the listeners' journal, none is kept
        self.forgotten = 0
        self.refused: dict[str, int] = {}  # submissions turned away before admission (items), by code
        # why the run's records cannot be written now (its journal: a full disk): new work is refused
        # meanwhile (503 records_unwritable), so that no request is accepted that could not be recorded
        self.records_down = ""
        self.hung = 0  # stages whose worker was taken as hung and stopped (_watched)
        self._faults = {stage: n for stage, n in config.inject_oom if n > 0}  # stage -> injections left
        self._tiled: dict[int, int] = {}  # decode dispatches run tiled (retried after an OOM) -> requests kept
        # requests whose decode ended and whose media is being encoded (tasks.Pixels), with the wall time
        # that began; each ends for its client (waiters, listeners, its result) once its media is made
        self._encoding: dict[int, float] = {}
        self._encoder: ThreadPoolExecutor | None = None
        self.media_s: dict[int, float] = {}  # wall seconds each request's media took to encode
        self._tick_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._down_since: float | None = None  # wall clock since when no device has been alive (_watch_devices)
        self.started = False
        self._closing = False
        self._hurry = False  # the drain under way stops waiting (a second Ctrl-C)
        self._closed = False
        self.started_unix_s = 0.0
        self.wall_s = 0.0
        self.ended_s: float | None = None  # the engine clock when the run stopped (stop())
        self.cut_short = 0  # requests the shutdown failed because the drain ran out before they ended

    @property
    def policy(self) -> Policy:
        return self.core.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Swap the policy before the engine starts (a test wraps it to watch the events it is handed)."""
        if self.started:
            raise RuntimeError("the policy can only be replaced before the engine starts")
        self.core.policy = policy

    # ------------------------------------------------------------------------------ records (the core's)
    @property
    def spans(self) -> list[SpanRow]:
        return self.core.recorder.spans

    @property
    def placements(self) -> list[PlacementRow]:
        return self.core.recorder.placements

    @property
    def span_listeners(self) -> list[Callable[[SpanRow], None]]:
        return self.core.recorder.listeners

    @property
    def placement_listeners(self) -> list[Callable[[PlacementRow], None]]:
        return self.core.recorder.placement_listeners

    @property
    def decision_ms(self) -> deque[float]:
        return self.core.decision_ms  # the most recent policy decisions (bounded)

    @property
    def events(self) -> int:
        return self.core.events

    @property
    def results(self):
        return self.artifacts.results

    def _slo_fn(self):
        """Deadlines from the cost model as calibrated now (memoised until the calibration moves)."""
        version = getattr(self.state.cost, "version", 0)
        if version != self._slo_version:
            self._slo_version = version
            self._slo = make_slo_fn(self.state.cost, self.config.slo_scale, self.cluster.gpus_per_node,
                                    self.state.gpu_kind)
        return self._slo

    # ------------------------------------------------------------------------------ clock
    def now(self) -> float:
        return self.clock.now()

    def elapsed_wall_s(self) -> float:
        return self._clock() - self._t0

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the workers, apply the policy's initial placement, start the tick timer."""
        for w in self.workers.workers:
            if hasattr(w, "on_lost"):
                w.on_lost = self._worker_lost
                w.on_restored = self._worker_restored
            if hasattr(w, "clock"):
                w.clock = self.clock  # an emulated device waits in engine time
        await self.workers.start()
        self._t0 = self._clock()
        self.clock.start()
        self.started_unix_s = time.time()
        self._execute(self.core.start(self.models, self.expected, 0.0), 0.0)
        if self.policy.tick_s:
            self._tick_task = asyncio.get_running_loop().create_task(self._ticker())
        if any(hasattr(w, "on_lost") for w in self.workers.workers):  # workers that can be lost
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_devices())
        self.started = True

    async def _ticker(self) -> None:
        tick = self.policy.tick_s
        while not self._closed:
            now = self.now()
            nxt = math.floor(now / tick + 1e-9) * tick + tick
            wall = max(self.clock.wall_at(nxt) - self._clock(), self.config.min_tick_wall_s)
            await asyncio.sleep(wall)
            if self.state.requests.live and not self._closed:
                self._post(Tick())

    async def _watch_devices(self, every_s: float = 0.5) -> None:
        """With no device alive for ``config.no_device_timeout_s`` and every lost worker's restart
        failing (a Ray node gone, a model folder removed under a restarting worker), fail the
        waiting requests, which would otherwise wait for ever; ``submit`` refuses new ones
        meanwhile. A restart still under way (a model loading for a minute, an actor on a busy
        cluster) only keeps them queued."""
        limit = self.config.no_device_timeout_s
        while not self._closed:
            await asyncio.sleep(every_s)
            if self._closed or self._closing:
                return
            if any(self.state.alive):
                self._down_since = None
                continue
            if self._down_since is None:
                self._down_since = self._clock()
                logger.warning("no device of %s (models %s) is alive: its waiting requests fail if none is back in "
                               "%.0f s and every restart fails", self.devices, ", ".join(self.models), limit)
            elif (down_s := self.devices_down_s()) >= limit and self.state.requests.live:
                # (how long, not the limit: a restart that failed only after 180 s made it read "30 s")
                self._post(ShutDown(f"no device of {self.devices} was alive for {down_s:.0f} s (every worker lost, "
                                    f"its restarts failing{self._restart_errors()})"))

    def _restart_errors(self) -> str:
        """``; the last restart's error: WHY`` of the lost workers (each distinct one, at most two; each cut
        at 300 characters), for the requests that fail and the submissions refused: the cause had been in
        the server's log only (outside test 110: a truncated weights file under a killed worker)."""
        said = list(dict.fromkeys(why if len(why) <= 300 else why[:299] + "…" for w in self.workers.workers
                                  if not getattr(w, "alive", True)
                                  and (why := " ".join(getattr(w, "last_restart_error", "").split()))))
        if not said:
            return ""
        more = f" (and {len(said) - 2} more)" if len(said) > 2 else ""
        return "; the last restart's error: " + " | ".join(said[:2]) + more

    def devices_down_s(self) -> float:
        """Wall seconds since no device has been alive while every lost worker's restart fails
        (0: a device is alive, or a restart may still succeed)."""
        if self._down_since is None or any(self.state.alive):
            return 0.0
        workers = self.workers.workers
        if not all(getattr(w, "restart_failures", 0) > 0 for w in workers if not getattr(w, "alive", True)):
            return 0.0
        return self._clock() - self._down_since

    def _reached(self) -> tuple[tuple[int, int], ...]:
        """(dispatch id, step) of each running diffuse whose worker says how far it got."""
        out = []
        for did, run in self.state.running.items():
            if run.action.stage == StageKind.DIFFUSE:
                step = self.workers[run.action.gpus[0]].progress(did)
                if step is not None:
                    out.append((did, step))
        return tuple(out)

    async def shutdown(self, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Refuse new work, let in-flight work finish for up to ``drain_timeout_s``, fail the rest."""
        if self._closed:
            return
        self._closing = True
        deadline = self._clock() + max(0.0, drain_timeout_s)
        while self._live and self._clock() < deadline and not self._hurry:
            await asyncio.sleep(0.01)
        self.cut_short = len(self._live) - len(self._encoding)
        self._post(ShutDown("the server shut down before the request finished", self._reached()))
        while self._encoding:  # done requests whose media is still being made (at most seconds)
            await asyncio.sleep(0.01)
        if self._encoder is not None:
            self._encoder.shutdown(wait=False)
        self._closed = True
        for task in (self._tick_task, self._watch_task):
            if task is not None:
                task.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        await self.workers.stop()
        self.wall_s = self._clock() - self._t0
        self.ended_s = self.now()  # the run's duration: the clock runs on after the stop (outside test 113)

    def close_doors(self) -> None:
        """Refuse new work from now on (``shutting_down``), before the drain itself begins: a signal
        handler calls it, so a request that arrives between the signal and the drain is not admitted
        only to be cut short."""
        self._closing = True

    def hurry(self) -> None:
        """End a drain under way now (``shutdown`` then fails what is still in flight)."""
        self._hurry = True

    def note_refused(self, reason: str, items: int = 1) -> None:
        """Count a submission turned away before admission (``reason``: its error code), here or
        before its body was read (a stopping server's HTTP layer: one, whatever its ``n``)."""
        self.refused[reason] = self.refused.get(reason, 0) + items

    # ------------------------------------------------------------------------------ client API
    @property
    def closing(self) -> bool:
        """Whether new work is refused for good: the server was told to stop (:meth:`close_doors`)."""
        return self._closing

    def share_ids(self, index: int, parts: int) -> None:
        """Number requests ``index``, ``index + parts``, ...: the engines of a mixed run never reuse an id,
        and ``id % parts`` names the engine that owns a request. Call before the first submission."""
        if self._next_id or self.started:
            raise RuntimeError("share_ids must be called before the engine starts")
        self._next_id, self._id_step = index, parts

    def live_states(self) -> dict[str, int]:
        """How many live requests are in each (non-terminal) state."""
        counts: dict[str, int] = {}
        reqs = self.state.requests
        for rid in self._live:
            s = RequestState.DECODING.value if rid in self._encoding else reqs[rid].state.value
            counts[s] = counts.get(s, 0) + 1
        return counts

    def queue_retry_s(self, excess: int) -> float:
        """Wall seconds until ``excess`` more requests have left the queue, at the rate requests ended
        over the last minute (at least two endings in it); else ``config.retry_after_s``. Between
        that and ``_MAX_RETRY_S``."""
        floor = self.config.retry_after_s
        now = self._clock()
        recent = [t for t in self._ends_at if t >= now - _RATE_WINDOW_S]
        if len(recent) < 2:
            return floor
        rate = len(recent) / max(1e-3, now - recent[0])  # falls while no request ends
        if recent[-1] > recent[0]:
            rate = min(rate, (len(recent) - 1) / (recent[-1] - recent[0]))  # n endings are n - 1 intervals
        return min(_MAX_RETRY_S, max(floor, excess / rate))

    def live_ids(self) -> list[int]:
        """Requests accepted and not yet ended."""
        return list(self._live)

    def is_live(self, rid: int) -> bool:
        """Whether request ``rid`` was accepted here and has not ended."""
        return rid in self._live

    def waiting_count(self) -> int:
        reqs = self.state.requests
        return sum(1 for rid in self._live if reqs[rid].state in WAITING_FOR)

    def submit(self, items: Sequence[Submission]) -> Accepted | Refused:
        """Admit requests (all or none); they arrive now."""
        if self._closing or not self.started:
            self.note_refused("shutting_down", len(items))
            return Refused("shutting_down", "the server is shutting down" if self._closing else "not started yet")
        if self.records_down:
            self.note_refused("records_unwritable", len(items))
            return Refused("records_unwritable", f"{self.records_down}: a request accepted now could not be recorded",
                           RECORDS_RETRY_S)
        down_s = self.devices_down_s()
        if down_s >= self.config.no_device_timeout_s:
            self.note_refused("no_devices", len(items))
            return Refused("no_devices", f"no device of {self.devices} has been alive for {down_s:.0f} s (every "
                                         f"worker lost, its restarts failing{self._restart_errors()}): nothing could "
                                         "run it",
                           self.config.no_device_timeout_s)
        waiting = self.waiting_count()
        if waiting + len(items) > self.config.max_queued:
            self.note_refused("queue_full", len(items))
            adds = f"this one adds {len(items)}" if len(items) == 1 else f"these add {len(items)}"
            return Refused("queue_full", f"{waiting} requests are waiting (for any stage) and {adds}: more than "
                                         f"the queue's {self.config.max_queued} (--max-queued)",
                           self.queue_retry_s(waiting + len(items) - self.config.max_queued))
        now = self.now()
        slo_of = self._slo_fn()
        specs = []
        for item in items:
            rid = self._next_id
            self._next_id += self._id_step
            slo = item.slo_s if item.slo_s is not None else slo_of(item.model, item.shape)
            specs.append(RequestSpec(rid, item.model, item.prompt, item.shape, int(item.seed), item.guidance,
                                     float(slo), now, item.negative_prompt, item.job_id))
        ids = tuple(spec.id for spec in specs)
        self.artifacts.group(ids)  # (before they arrive: one may be rejected, so end, at once)
        self._arriving, self._arrival_refused = ids, None
        try:
            for spec in specs:
                self._live.add(spec.id)
                self._post(RequestArrived(spec))
        finally:
            self._arriving, refused = (), self._arrival_refused
            self._arrival_refused = None
        if refused is not None and len(ids) > 1:  # each heard by the policy: then refused together
            self._refuse_siblings(*refused)
        return Accepted(ids)

    def _refuse_siblings(self, rid: int, reason: str, retry_s: float) -> None:
        """Request ``rid`` of a generation of several was rejected (``reason``, ``retry_s``): the others end
        rejected with it, waiting or running (outside test 119: under ``--late reject`` two images of three
        were made and the third refused; the client, answered 503 for the whole generation, was told to
        retry all three). An encode of the first may have begun: the policy dispatches each as it hears
        it; its output is dropped."""
        for other_id in self.artifacts.siblings(rid):
            other = self.state.requests.get(other_id)
            if other is not None and not other.state.terminal and other_id not in self._refusing:
                self._refusing.add(other_id)  # (its end refuses no one again: _finalize)
                self._post(Cancelled(other_id, f"{REFUSED_WITH}{rid} of its generation: {reason}",
                                     rejected=True, retry_s=retry_s))

    def cancel(self, request_id: int, reason: str = "cancelled by the client") -> bool:
        """Cancel a request; False if it is unknown or already ended."""
        rec = self.state.requests.get(request_id)
        if rec is None or rec.state.terminal:
            return False
        self._post(Cancelled(request_id, reason))
        return True

    def encoding(self, request_id: int) -> bool:
        """Whether this request's decode ended and its media is still being encoded: done for the
        policy, not yet for its client (no result yet)."""
        return request_id in self._encoding

    async def wait(self, request_id: int, timeout_s: float | None = None) -> Outcome:
        rec = self.state.requests.get(request_id)
        if rec is None:
            raise KeyError(request_id)
        if not rec.state.terminal or request_id in self._encoding:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(request_id, []).append(fut)
            await asyncio.wait_for(fut, timeout_s)
        return self.outcome(request_id)

    def outcome(self, request_id: int) -> Outcome | None:
        rec = self.state.requests.get(request_id)
        if rec is None or not rec.state.terminal or request_id in self._encoding:
            return None
        return Outcome(request_id, rec.state.value, rec.reason, self.artifacts.result(request_id))

    def result(self, request_id: int) -> bytes | None:
        """A finished request's media bytes while the results cache keeps them (also after the
        request itself is forgotten past ``keep_ended``)."""
        return self.artifacts.result(request_id)

    def hold_results(self, request_ids: Sequence[int]) -> None:
        """Keep these requests' results, whatever the cache's limits, until :meth:`release_results`."""
        self.artifacts.hold(request_ids)

    def release_results(self, request_ids: Sequence[int]) -> None:
        self.artifacts.release(request_ids)

    @property
    def stuck(self) -> str:
        """Why the engine is taken as stuck (``/healthz`` 503), empty while it is not: its last
        ``STUCK_AFTER`` events each raised in the policy or the engine, so it may dispatch nothing
        again (outside test 106: a policy that raised on every event left requests waiting for ever
        while the server said it was healthy). Restarting the server is the way out."""
        if self.failing < STUCK_AFTER:
            return ""
        return f"its last {self.failing} events each failed (latest: {self.errors[-1] if self.errors else '?'})"

    def describe(self, request_id: int) -> dict | None:
        """State, the stage it is in or waits for, progress and per-stage timings (engine seconds)."""
        return views.describe(self, request_id)

    def snapshot(self) -> dict:
        """Devices, resident stage instances (the live placement), queues and memory."""
        return views.snapshot(self)

    def spans_of(self, request_id: int) -> list[SpanRow]:
        return self._spans_of.get(request_id, [])

    def ran_tiled(self, dispatch_id: int) -> bool:
        return dispatch_id in self._tiled

    # ------------------------------------------------------------------------------ workers
    def _worker_lost(self, slot: int, reason: str, delivered: tuple[int, StageResult] | None = None) -> None:
        if getattr(self.workers, "worlds", None) is not None:
            self.workers.worlds.forget([slot])  # its worlds are broken; the next parallel dispatch meets afresh
        if delivered is not None:  # a result its process handed over just before it ended
            did, result = delivered
            run, task = self.state.running.get(did), self._tasks.get(did)
            if result.ok and run is not None and run.action.gpus == (slot,) and task is not None and not task.done():
                # the task awaiting it has not run yet: the stage is taken as done, not failed and redone
                task.cancel()
                self._post(self._completed(did, run.action.stage, result), result)
        self._post(WorkerLost(slot, reason))

    def _worker_restored(self, slot: int) -> None:
        self._post(WorkerRestored(slot))

    async def _run(self, did: int, worker, task: StageTask) -> None:
        try:
            result = await self._watched(did, worker, task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker bug is a failed stage, not a dead engine
            result = failure(exc)
            if not result.oom:  # (an out-of-memory is expected: the policy retries at a safer configuration)
                logger.exception("%s failed", _worker_name(worker))
        if not result.ok and not self._closed:  # why, said here: the stored span has no room for it
            logger.warning("%s: %s of dispatch %d failed: %s", _worker_name(worker),
                           task.stage.value, did, result.error or "no reason given")
        if not self._closed:
            self._post(self._completed(did, task.stage, result), result)

    def _completed(self, did: int, stage: StageKind, result: StageResult) -> Completed:
        if not result.ok:
            return Completed(did, error=result.error or "worker lost", oom=result.oom)
        return Completed(did, result.end_step if stage == StageKind.DIFFUSE else None,
                         compute_s=result.wall_s / self._scale if result.wall_s > 0 else None,
                         degree=1 if result.alone else None)

    async def _watched(self, did: int, worker, task: StageTask) -> StageResult:
        """``worker.run(task)``; on real devices (time scale 1), a stage still running after
        ``hung_min_s`` and ``hung_factor`` times its predicted time (``EngineConfig``) takes its worker as hung
        (a stopped process, a stuck driver): the worker is stopped (``abort``: its process is killed),
        so the stage fails as lost, is retried elsewhere, and the worker restarts. It used to run on
        for ever, the devices counted alive and the request's client waiting to the end."""
        work = asyncio.ensure_future(worker.run(task))
        run = self.state.running.get(did)
        if self.config.time_scale != 1.0 or run is None or str(getattr(worker, "kind", "")).endswith("emulated"):
            return await work  # (an emulated device takes the profile's time: nothing to stop)
        limit = max(self.config.hung_min_s, self.config.hung_factor * max(0.0, run.predicted_end_s - run.started_s))
        try:
            done, _ = await asyncio.wait((work,), timeout=limit)
            if not done:
                logger.warning("worker %s: %s of dispatch %d still running after %.0f s (predicted %.2f s): "
                               "taken as hung, stopped and restarted", getattr(worker, "slot", "?"),
                               task.stage.value, did, limit, run.predicted_end_s - run.started_s)
                self.hung += 1
                worker.abort()
            return await work
        finally:
            if not work.done():
                work.cancel()

    # ------------------------------------------------------------------------------ the loop
    def _post(self, report: Report, result: StageResult | None = None) -> None:
        self._pending.append((report, result))
        if self._processing:
            return
        self._processing = True
        try:
            while self._pending:
                rep, res = self._pending.popleft()
                try:
                    self._step(rep, res)
                except PolicyBug as exc:
                    if self.config.strict:
                        raise
                    logger.exception("policy bug")
                    self.errors.append(f"PolicyBug: {exc}")
                    self.failing += 1
                    self.errors_total += 1
                except Exception as exc:  # noqa: BLE001 - a server must outlive a bad event
                    if self.config.strict:
                        raise
                    logger.exception("engine error on %s", type(rep).__name__)
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    self.failing += 1
                    self.errors_total += 1
                else:
                    self.failing = 0
        finally:
            self._processing = False

    def _step(self, report: Report, result: StageResult | None) -> None:
        now = self.now()
        run = None
        if isinstance(report, Completed):
            self._tasks.pop(report.dispatch_id, None)
            run = self.state.running.get(report.dispatch_id)
        failed = None
        try:
            effects = self.core.step(report, now)
        except StepFailed as exc:  # what the step applied before it failed is carried out all the same
            effects, failed = exc.effects, exc.__cause__
        if run is not None and result is not None and result.ok:
            self._keep_outputs(run.action.stage, run.action.request_ids, result)
        self._execute(effects, now)
        if isinstance(report, Cancelled):
            self._refusing.discard(report.request_id)
            self._stop_cancelled(report.request_id, effects, now)
        if failed is not None:
            raise failed  # (logged by _post, as any error of a step)

    def _stop_cancelled(self, rid: int, effects: Effects, now: float) -> None:
        """A cancelled request's running diffuse, every request of it ended, stops at the device's next
        step boundary. The driver pauses it at the boundary the cost model predicts; a device slower
        than predicted is already past its predicted end, where the driver sees nothing to stop (it
        ran every remaining step, its device busy, outside test): the device is told all the same."""
        did = self.state.by_request.get(rid)
        run = self.state.running.get(did) if did is not None else None
        if (run is None or run.action.stage != StageKind.DIFFUSE or any(p.run.id == did for p in effects.paused)
                or not all((rec := self.state.requests.get(r)) is None or rec.state.terminal
                           for r in run.action.request_ids)):
            return
        # (an emulated device, which takes the predicted time, keeps its end: it is in its last step)
        self.workers[run.action.gpus[0]].preempt(did, run.action.end_step,
                                                 self.clock.wall_at(max(now, run.predicted_end_s)))

    def _keep_outputs(self, stage: StageKind, request_ids: Sequence[int], result: StageResult) -> None:
        reqs = self.state.requests
        for i, rid in enumerate(request_ids):
            rec = reqs.get(rid)
            if rec is None or (rec.state.terminal and rec.state is not RequestState.DONE):
                continue  # cancelled while it ran: its output is dropped
            output = result.outputs[i] if i < len(result.outputs) else None
            if isinstance(output, Pixels):
                self._encode_media(rid, output)
            else:
                self.artifacts.keep(stage, rid, output)

    def _encode_media(self, rid: int, pixels: Pixels) -> None:
        """Encode a decoded request's frames on the engine's media threads (PNG and WebP encoders let go
        of the GIL), the device already free for its next stage; the request ends for its client when
        they are done (``_encoded``)."""
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="media")
        self._encoding[rid] = time.perf_counter()
        fut = asyncio.get_running_loop().run_in_executor(self._encoder, pixels.encode)
        fut.add_done_callback(lambda f, rid=rid: self._encoded(rid, f))

    def _encoded(self, rid: int, fut: asyncio.Future) -> None:
        began = self._encoding.pop(rid, None)
        if began is not None:
            self.media_s[rid] = time.perf_counter() - began
        try:
            media = fut.result()
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - one request's media; the server goes on
            logger.error("request %d: encoding its media failed", rid, exc_info=exc)
            self.errors.append(f"media of request {rid}: {type(exc).__name__}: {exc}")
            # it ends failed, not done without a result: its client, the metrics and the records agree
            self._post(ResultLost(rid, f"its media could not be encoded ({type(exc).__name__}: {exc})"[:300]))
            return
        self.artifacts.keep(StageKind.DECODE, rid, media)
        self._finalize(rid, self.now())

    def _execute(self, effects: Effects, now: float) -> None:
        for started in effects.started:
            self._send(started)
        for p in effects.paused:
            self.workers[p.run.action.gpus[0]].preempt(p.run.id, p.step, self.clock.wall_at(p.at_s))
        self.core.errors, errors = [], self.core.errors
        for msg in errors:
            logger.error(msg)
            self.errors.append(msg)
        for rid in effects.ended:
            self._finalize(rid, now)

    def _send(self, started: Started) -> None:
        run = started.run
        a, shape = run.action, run.shape
        recs = [self.state.requests[r] for r in a.request_ids]
        # a decode retried after an out-of-memory error runs tiled (bounded activation memory); the
        # policy decides the rest of the safer configuration (batch, degree)
        tiled = a.stage == StageKind.DECODE and any(r.ooms for r in recs)
        if tiled:
            self._tiled[run.id] = len(a.request_ids)
        fault = ""
        if self._faults.get(a.stage, 0) > 0:
            self._faults[a.stage] -= 1
            fault = "oom"
        task = StageTask(
            dispatch_id=run.id, stage=a.stage, model=run.model, request_ids=a.request_ids, height=shape.height,
            width=shape.width, frames=shape.frames, steps=shape.steps,
            prompts=tuple(r.spec.prompt for r in recs), negative_prompts=tuple(r.spec.negative_prompt for r in recs),
            seeds=tuple(r.spec.seed for r in recs), guidances=tuple(r.spec.guidance for r in recs),
            start_step=a.start_step, end_step=a.end_step, inputs=self.artifacts.inputs(a.stage, a.request_ids),
            duration_s=self._emulated_s(started), tiled=tiled, fault=fault,
            resident=tuple(sorted(self.state.resident[a.gpus[0]])),
        )
        worker = self.workers[a.gpus[0]]
        keys = getattr(self.workers, "worlds", None)
        if keys is not None and a.stage == StageKind.DIFFUSE and len(a.gpus) > 1:  # sequence-parallel
            worker = MemberSet([self.workers[g] for g in a.gpus], keys,
                               [tuple(sorted(self.state.resident[g])) for g in a.gpus])
        self._tasks[run.id] = asyncio.get_running_loop().create_task(self._run(run.id, worker, task))

    def _emulated_s(self, started: Started) -> float:
        """Wall seconds an emulated device takes: the profile's time (a calibrated prediction is the
        policy's belief, not the device's truth), scaled."""
        run = started.run
        fixed = run.load_s + run.transfer_s
        return (fixed + (started.total_s - fixed) / run.factor) * self.config.time_scale

    # ------------------------------------------------------------------------------ endings
    def _finalize(self, rid: int, now: float) -> None:
        rec = self.state.requests.get(rid)
        if rec is None or not rec.state.terminal or rid not in self._live or rid in self._encoding:
            return  # (a request whose media is being encoded ends when that is done: _encoded)
        self._live.discard(rid)
        self._ends_at.append(self._clock())
        if rec.state is RequestState.REJECTED and rid not in self._refusing:
            if rid in self._arriving:  # submit refuses the others once all have arrived (this one may be
                if self._arrival_refused is None:  # forgotten by then: --keep-ended 0, outside test 122)
                    self._arrival_refused = (rid, rec.reason, rec.retry_s)
            else:
                self._refuse_siblings(rid, rec.reason, rec.retry_s)
        if rec.state is not RequestState.DONE or self.state.by_request.get(rid) is None:
            self.artifacts.drop(rid)
        self.artifacts.ended(rid)
        for listener in self.end_listeners:
            listener(rec)
        for fut in self._waiters.pop(rid, ()):
            if not fut.done():
                fut.set_result(None)
        self._ended.append(rid)
        self._retire(now)

    def _retire(self, now: float) -> None:
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
            rec = state.requests[rid]
            self.core.step(Forgot(rid), now)  # at the time of the step that ended it (one clock read)
            if self.config.record and not self.streaming:
                self._rows.append(request_row(rec))
            for span in self._spans_of.pop(rid, ()):
                if span.dispatch_id in self._tiled:
                    self._tiled[span.dispatch_id] -= 1
                    if self._tiled[span.dispatch_id] <= 0:
                        del self._tiled[span.dispatch_id]
            self.media_s.pop(rid, None)
            self.forgotten += 1

    # ------------------------------------------------------------------------------ records
    def _on_span(self, span: SpanRow) -> None:
        self._spans_of.setdefault(span.request_id, []).append(span)

    def stream_records(self) -> None:
        """Keep no rows from now on, only the GPU samples: a server whose rows all reach its journal
        through the listeners as they are made (``trident serve --db``) would otherwise hold them
        all, about 2 KiB a request, for as long as it serves. ``request_rows`` then gives only the
        requests still in the table, and ``span_rows`` / ``placement_rows`` nothing new."""
        self.streaming = True
        self.core.recorder.stream(len(self.state.gpus))

    def span_rows(self) -> list[SpanRow]:
        return self.spans

    def placement_rows(self) -> list[PlacementRow]:
        return self.placements

    def request_rows(self) -> list[RequestRow]:
        """Every request of the run: forgotten ones from their rows, the rest as they stand."""
        return self._rows + request_rows(self.state.requests)

    def gpu_samples(self, sample_s: float = 10.0) -> list[GpuSample]:
        """Busy fraction and memory per device and interval (see ``core.recording.gpu_samples``)."""
        end = self.now() if self.started else 0.0
        return self.core.recorder.gpu_samples(len(self.state.gpus), end, sample_s)

    def run_meta(self, run_id: str, config: dict | None = None,
                 provenance: Mapping[str, str] | None = None) -> RunMeta:
        """This run's ``runs`` row (``provenance``: from the caller, a layer above the runtime)."""
        return stored.run_meta(self, run_id, config, provenance)

    def write_store(self, path: str, run_id: str | None = None, config: dict | None = None,
                    provenance: Mapping[str, str] | None = None) -> str:
        """Write this run's records to a DuckDB results store; returns the run id."""
        return stored.write(self, path, run_id, config, provenance)


def _worker_name(worker) -> str:
    """``worker N``, N the device id /v1/cluster gives it (outside test 112: in a run of several kinds a
    failure was logged under its index within its kind, beside a line that named it by its device id)."""
    name = getattr(worker, "name", None)
    return name if isinstance(name, str) else f"worker {getattr(worker, 'slot', '?')}"
