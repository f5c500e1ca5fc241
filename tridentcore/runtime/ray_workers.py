"""Ray actor workers (``--backend ray``): one Ray actor per device slot, behind the same
:class:`~tridentcore.runtime.workers.Worker` interface as the local workers, so the engine and
the policies are unchanged.

* An **emulated** slot's actor holds no weights and takes the time it is told (as
  :class:`~tridentcore.runtime.workers.EmulatedWorker` does, in its own process).
* A **cpu** slot's actor loads the requested tiny pipelines (one torch thread) and runs the same
  stage code as a local :class:`~tridentcore.runtime.workers.CpuWorker` (``workers._execute``),
  ``slowdown`` (``--slowdown K``) included. A running diffuse's steps (``progress``, the API's
  ``steps_done``) are asked of the actor every ``STEPS_POLL_S`` (a threaded actor answers while
  it computes); an emulated slot's are in proportion to the time gone.

Tensors never pass through the engine. An encode or diffuse call is made with
``num_returns = 1 + batch``: the first return is the :class:`StageResult` without outputs, the
others are one object per request (embeddings, latents) left in the Ray object store. The engine
keeps those ``ObjectRef``\\ s as the request's artifacts and hands them, inside the next
:class:`StageTask`, to whichever actor runs the next stage, which fetches them itself. The caller
(the engine's process) owns the returned objects, so they outlive the actor that made them (on
the same node). A decode returns the request's frames in its result (``tasks.Pixels``), which
the engine encodes to media on its own threads.

Losing an actor is seen two ways: a call in flight raises ``RayActorError`` (``ActorDiedError``,
``ActorUnavailableError``), and every actor holds one parked call that raises the same when it dies
while idle. Either way the engine hears ``on_lost`` (it fails the running dispatch: ``StageFailed``
then ``WorkerLost``), a new actor is created, and the engine hears ``on_restored``
(``WorkerRestored``) once it is ready: the events local CPU workers produce.

``ray`` is imported only here and only once the pool starts (``pip install 'tridentserve[ray]'``).

About 520 lines, one job (device slots as Ray actors): the actor, its worker and the pool share the
actor's lifecycle (start, wait for room, loss, restart) and Ray's import, which stays here alone. Its
control calls, which wait for the head's GCS, run off the event loop (:mod:`.offloop`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..core.types import StageKind
from .emulated import proportional_step
from .offloop import in_background, off_loop
from .parallel_worlds import Worlds
from .ray_address import probe_ray_address
from .pool import StartInterrupted, not_the_models
from .workers import ModelCard, StageResult, StageTask, Worker, WorkerPool, failure, load_pipelines

logger = logging.getLogger(__name__)

STEPS_POLL_S = 0.25  # how often a running diffuse's actor is asked for its steps
EMULATED_CPUS = 0.05  # an emulated slot's actor mostly sleeps
CPU_SLOT_CPUS = 0.5  # a cpu slot's actor runs one torch thread
ACTOR_WAIT_SAID_S = 5.0  # an actor still not started after this long is said in the log, with the cluster's room
ROOM_LOOK_S = 2.0  # then the cluster's room is looked at this often (a restart with no node left fails)
RAY_CALL_TIMEOUT_S = 5.0  # a control call (an actor's creation, the cluster's resources) the head did not answer by
RAY_SHUTDOWN_TIMEOUT_S = 10.0
# how long this process's Ray waits for its head's GCS to answer again before it ends the process (Ray's
# default, 60 s, ended a server whose head was gone without a drain or its run stored: outside test 104);
# the server's own no-device timeout says what is lost meanwhile
HEAD_RECONNECT_S = 7 * 24 * 3600


class _StopFlag:
    """The ``.value`` protocol of the shared flag ``workers._execute`` checks between steps."""

    value = -1


def _fetch(value):
    """``value`` with every ObjectRef in it (nested in tuples or lists) replaced by its object."""
    import ray

    refs: list = []

    def collect(v) -> None:
        if isinstance(v, ray.ObjectRef):
            refs.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                collect(x)

    collect(value)
    if not refs:
        return value
    got = dict(zip((r.hex() for r in refs), ray.get(refs)))

    def rebuild(v):
        if isinstance(v, ray.ObjectRef):
            return got[v.hex()]
        if isinstance(v, (tuple, list)):
            return type(v)(rebuild(x) for x in v)
        return v

    return rebuild(value)


class StageActor:
    """The body of one slot's Ray actor (a threaded actor: ``run`` on one thread while ``preempt``
    and ``park`` arrive on others)."""

    def __init__(self, slot: int, models: Sequence[str], threads: int, emulated: bool,
                 slowdown: float = 1.0) -> None:
        self.slot = slot
        self.emulated = emulated
        self.slowdown = slowdown
        self.pipes: dict = {}
        self.cards: dict[str, ModelCard] = {}
        if not emulated:
            self.pipes, self.cards = load_pipelines(models, threads)
        self._flag = _StopFlag()
        self._cond = threading.Condition()
        self._preempts: dict[int, tuple[int, float]] = {}  # emulated: dispatch -> (stop step, monotonic deadline)
        self._parked = threading.Event()
        self._worlds = None  # this actor's sequence-parallel world (``parallel_worlds.Worlds``), made on first use
        self._steps: dict[int, int] = {}  # a running diffuse's dispatch -> steps reached (asked by ``steps``)

    def ready(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "cards": self.cards}

    def park(self) -> None:
        """Held by the worker while the actor lives: its failure is how an idle actor's death is seen."""
        self._parked.wait()

    def preempt(self, dispatch_id: int, stop_step: int, delay_s: float) -> None:
        if not self.emulated:
            self._flag.value = dispatch_id
            return
        with self._cond:
            self._preempts[dispatch_id] = (stop_step, time.monotonic() + max(0.0, delay_s))
            self._cond.notify_all()

    def steps(self, dispatch_id: int) -> int | None:
        """The steps a running diffuse has reached (answered on another thread while ``run`` runs)."""
        return self._steps.get(dispatch_id)

    def run(self, task: StageTask, split: bool):
        n = len(task.request_ids)
        if self.emulated:
            return self._emulate(task)
        try:
            task = replace(task, inputs=_fetch(task.inputs))
        except Exception as exc:  # noqa: BLE001 - e.g. an input lost with its node: a failed stage
            result = StageResult(error=f"worker {self.slot}: inputs unavailable: {type(exc).__name__}: {exc}")
            return (result, *([None] * n)) if split else result
        import torch

        from .workers import _execute

        if task.world is not None and self._worlds is None:
            import ray

            self._worlds = Worlds(ray.util.get_node_ip_address())
        try:
            with torch.inference_mode():
                result = _execute(self.pipes, self.cards, task, self._flag, None, self.slowdown, self._worlds,
                                  self._steps.__setitem__)
        except Exception as exc:  # noqa: BLE001 - an expected outcome, reported as a value
            result = failure(exc)
        finally:
            self._steps.pop(task.dispatch_id, None)
        if not split:
            return result
        # a member of a parallel diffuse other than the lead hands back no latents: one None per request
        outputs = result.outputs if result.ok and result.outputs else (None,) * n
        return (replace(result, outputs=()), *outputs)

    def _emulate(self, task: StageTask) -> StageResult:
        if task.fault == "oom":  # as EmulatedWorker: what an allocator would raise (--inject-oom)
            return failure(MemoryError(f"emulated device {self.slot}: out of memory (fault injected by --inject-oom)"))
        t0 = time.monotonic()
        deadline = t0 + task.duration_s
        stop_step = None
        with self._cond:
            while True:
                got = self._preempts.pop(task.dispatch_id, None)
                if got is not None:
                    stop_step = got[0]
                    deadline = min(deadline, got[1])
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            for did in [d for d in self._preempts if d <= task.dispatch_id]:  # late ones: nothing to stop
                del self._preempts[did]
        end = task.end_step if stop_step is None else stop_step
        return StageResult(end_step=end, outputs=(None,) * len(task.request_ids), wall_s=time.monotonic() - t0)


_ACTOR_CLASS = None


def _actor_class():
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(max_concurrency=4, max_restarts=0, max_task_retries=0)(StageActor)
    return _ACTOR_CLASS


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    return tuple(e for e in (getattr(rex, "RayActorError", None), getattr(rex, "ActorUnavailableError", None))
                 if e is not None)


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _cluster_cpus() -> tuple[float, float]:
    """The Ray cluster's (free, total) CPUs; blocks while its head does not answer (call it off the loop)."""
    import ray

    return ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)


async def _room(num_cpus: float) -> tuple[str, bool]:
    """Why an actor may wait: the CPUs it asks against those the cluster has free (" (...)"; "" unknown);
    and whether it cannot start now: no node is left, or the cluster's head does not answer."""
    try:
        free, total = await off_loop(_cluster_cpus, timeout_s=RAY_CALL_TIMEOUT_S, name="ray-resources")
    except TimeoutError:
        return f" (the Ray cluster's head did not answer in {RAY_CALL_TIMEOUT_S:g} s: it is gone, or overloaded)", True
    except Exception:  # noqa: BLE001 - the message only
        return "", False
    if free + 1e-9 < num_cpus:  # (outside test: "other work" said of this server's own actors, and of a lost node)
        held = "no node is left" if total <= 0 else "the rest is held: this server's other actors, or other work"
        return f" (it asks {num_cpus:g} CPU; the cluster has {free:g} of {total:g} CPUs free: {held})", total <= 0
    # (an actor holds its CPUs while it loads: room is not what it waits for)
    return (f" (it asks {num_cpus:g} CPU and {free:g} of {total:g} are free: most likely it is still loading its "
            "models)"), False


def _kill(actor) -> None:
    """End ``actor`` for good, not waiting: a kill waits for the head's GCS, gone or not."""
    import ray

    in_background(lambda: ray.kill(actor, no_restart=True), name="ray-kill")


class RayWorker(Worker):
    """One device slot served by a Ray actor; a new actor replaces one that dies."""

    def __init__(self, slot: int, models: Sequence[str] = (), *, emulated: bool, threads: int = 1,
                 slowdown: float = 1.0, num_cpus: float | None = None,
                 on_lost: Callable[[int, str], None] | None = None,
                 on_restored: Callable[[int], None] | None = None, restart: bool = True,
                 start_timeout_s: float = 180.0) -> None:
        self.slot = slot
        self.models = tuple(models)
        self.emulated = emulated
        self.kind = "ray-emulated" if emulated else "ray-cpu"
        self.threads = threads
        self.slowdown = 1.0 if emulated else slowdown  # cpu slots only (emulated ones take their given time)
        self.num_cpus = num_cpus if num_cpus is not None else (EMULATED_CPUS if emulated else CPU_SLOT_CPUS)
        self.on_lost = on_lost
        self.on_restored = on_restored
        self.restart = restart
        self.start_timeout_s = start_timeout_s
        self.alive = False
        self.cards: dict[str, ModelCard] = {}
        self.pid: int | None = None
        self.node: str | None = None
        self.restarts = 0
        self.actor = None  # the current actor's handle (tests kill it with ray.kill)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._lost_generation = 0
        self._stopping = False
        self._watch: asyncio.Task | None = None
        self._restart_task: asyncio.Task | None = None
        self._running: tuple[int, float, StageTask] | None = None  # (dispatch, monotonic start, task)
        self._steps: dict[int, int] = {}  # a cpu slot's running diffuse -> steps reached, as last asked

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    def _create(self):
        return _actor_class().options(num_cpus=self.num_cpus, scheduling_strategy="SPREAD").remote(
            self.slot, self.models, self.threads, self.emulated, self.slowdown)

    async def _spawn(self) -> None:
        restart = self._generation > 0
        try:
            actor = await off_loop(self._create, timeout_s=RAY_CALL_TIMEOUT_S, name="ray-create")
        except TimeoutError:
            raise RuntimeError(f"{self.name}: its actor could not be created: the Ray cluster's head did not answer "
                               f"in {RAY_CALL_TIMEOUT_S:g} s") from None
        ready = asyncio.ensure_future(actor.ready.remote())
        deadline = time.monotonic() + self.start_timeout_s
        # in slices: a server told to stop (``stopping``) while its actors wait for room on a busy
        # cluster stops now, not at the timeout
        said, look_at = False, ACTOR_WAIT_SAID_S
        while not ready.done():
            left = deadline - time.monotonic()
            if self._stopping or left <= 0:
                break
            if self.start_timeout_s - left >= look_at:
                room, hopeless = await _room(self.num_cpus)
                look_at = self.start_timeout_s - left + ROOM_LOOK_S
                if not said:
                    said = True
                    logger.warning("%s: its actor is not ready after %.0f s%s", self.name, ACTOR_WAIT_SAID_S, room)
                if hopeless and restart:  # (no node left: the restart fails now, and is tried again, with the
                    ready.cancel()        # engine's no-device clock running; it waited 180 s: outside test 104)
                    _kill(actor)
                    raise RuntimeError(f"{self.name}: its actor cannot start{room}")
            await asyncio.wait((ready,), timeout=min(0.2, left))
        if not ready.done():
            ready.cancel()
            _kill(actor)
            if self._stopping:
                raise StartInterrupted(f"{self.name}: stopped while its actor started")
            raise RuntimeError(f"{self.name}: actor not ready after {self.start_timeout_s:.0f} s"
                               f"{(await _room(self.num_cpus))[0]}")
        try:
            info = ready.result()
        except Exception as exc:
            _kill(actor)
            raise RuntimeError(f"{self.name}: actor failed to start: {_reason(exc)}") from exc
        problem = not_the_models(self.name, self.cards, info["cards"])  # (a restart after its folder was replaced)
        if problem:
            _kill(actor)
            raise RuntimeError(problem)
        self._generation += 1
        gen = self._generation
        self.actor, self.pid, self.node, self.cards = actor, info["pid"], info["node"], info["cards"]
        self.alive = True
        self._watch = self._loop.create_task(self._watch_actor(gen, actor.park.remote()))

    async def _watch_actor(self, gen: int, parked) -> None:
        try:
            await parked
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any end of the parked call means the actor is gone
            self._died(gen, _reason(exc))
            return
        self._died(gen, "actor released its parked call")

    def _died(self, gen: int, reason: str) -> None:
        """The actor of generation ``gen`` is gone: tell the engine once, then replace it."""
        if gen != self._generation or self._lost_generation == gen:
            return
        self._lost_generation = gen
        was_alive, self.alive = self.alive, False
        if self._stopping:
            return
        logger.warning("%s: actor (pid %s) lost: %s", self.name, self.pid, reason)
        if was_alive and self.on_lost is not None:
            self.on_lost(self.slot, f"ray actor (pid {self.pid}) lost: {reason}")
        if self.restart and self._restart_task is None:
            self._restart_task = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        try:
            old = self.actor
            if old is not None:
                _kill(old)  # unavailable is not dead: make sure of it
            await self._respawn()
        finally:
            self._restart_task = None

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._restart_task, self._watch):
            if task is not None:
                task.cancel()
        if self.actor is not None:
            _kill(self.actor)
        self.alive = False

    # -- work --------------------------------------------------------------------------------
    async def run(self, task: StageTask) -> StageResult:
        actor, gen = self.actor, self._generation
        if not self.alive or actor is None:
            return StageResult(error=f"{self.name} is down", lost=True)
        n = len(task.request_ids)
        split = not self.emulated and task.stage in (StageKind.ENCODE, StageKind.DIFFUSE) and n > 0
        if split:
            refs = actor.run.options(num_returns=n + 1).remote(task, True)
            head, outputs = refs[0], tuple(refs[1:])
        else:
            head, outputs = actor.run.remote(task, False), ()
        self._running = (task.dispatch_id, time.monotonic(), task)
        asking = (asyncio.get_running_loop().create_task(self._ask_steps(actor, task.dispatch_id))
                  if not self.emulated and task.stage == StageKind.DIFFUSE else None)
        try:
            result: StageResult = await head
        except _lost_errors() as exc:
            reason = _reason(exc)
            self._died(gen, reason)  # the engine fails the running dispatch first
            return StageResult(error=f"{self.name}: {reason}", lost=True)
        finally:
            # only its own: a dispatch failed for a lost peer may end here after its retry began on this
            # worker (a killed actor's call can take seconds to raise), whose progress must stay
            if self._running is not None and self._running[0] == task.dispatch_id:
                self._running = None
            if asking is not None:
                asking.cancel()
            self._steps.pop(task.dispatch_id, None)
        if split and result.ok:
            result = replace(result, outputs=outputs)  # references; the objects stay in the store
        return result

    async def _ask_steps(self, actor, dispatch_id: int) -> None:
        """Ask the actor for a running diffuse's steps every ``STEPS_POLL_S`` (its pipe: ``progress``)."""
        while True:
            await asyncio.sleep(STEPS_POLL_S)
            try:
                reached = await actor.steps.remote(dispatch_id)
            except Exception:  # noqa: BLE001 - the actor died: ``run`` says so
                return
            if reached is not None:
                self._steps[dispatch_id] = reached

    def progress(self, dispatch_id: int) -> int | None:
        """A running diffuse's steps: as the actor last said (cpu slots, every ``STEPS_POLL_S``), or
        in proportion to the time gone (emulated slots, which sleep the given duration)."""
        running = self._running
        if running is None or running[0] != dispatch_id:
            return None
        if not self.emulated:
            return self._steps.get(dispatch_id)
        _, t0, task = running
        return proportional_step(time.monotonic() - t0, task.duration_s, task.start_step, task.end_step)

    def abort(self) -> None:
        """Stop the actor (a member of a parallel dispatch whose peer died, still waiting on it): it is
        replaced as a lost one is."""
        if self.alive and self.actor is not None:
            _kill(self.actor)

    def preempt(self, dispatch_id: int, stop_step: int, wall_at: float) -> None:
        if not self.alive or self.actor is None:
            return
        # the engine's monotonic clock is not the actor's (another node): send a delay instead
        self.actor.preempt.remote(dispatch_id, stop_step, max(0.0, wall_at - time.monotonic()))


@dataclass
class RayWorkerPool(WorkerPool):
    """Ray workers, and the connection to the Ray cluster they live on (made when the pool starts).

    ``address``: a running cluster (``auto``, ``HOST:6379``; ``ray://…`` with Ray Client installed);
    None starts a Ray instance on this host for this process (stopped again with the pool).
    ``init_options`` go to ``ray.init`` as they are (e.g. ``num_cpus`` of a local instance)."""

    address: str | None = None
    init_options: dict[str, Any] | None = None
    connected_here: bool = False

    async def start(self) -> None:
        os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(HEAD_RECONNECT_S))  # (read at ray.init)
        import ray

        if not ray.is_initialized():
            probe_ray_address(self.address)
            opts: dict[str, Any] = {"logging_level": logging.WARNING}
            if self.address is None:  # a new local instance: no dashboard (options of a running cluster are its own)
                opts["include_dashboard"] = False
            opts.update(self.init_options or {})
            # ray.init installs a SIGTERM handler that exits at once; the server's own (drain, then
            # exit 0) must stay in charge
            main = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGTERM) if main else None
            try:
                # "local": a new instance even where RAY_ADDRESS or a cluster started on this host would be
                # joined (or, if it is gone, waited for without end)
                ray.init(address=self.address or "local", **opts)
            except SystemExit as exc:
                # a SIGTERM while ray.init ran met Ray's handler (sys.exit inside ray.init: a traceback,
                # Ray's processes left running); what is started is stopped and the server is told, as
                # if the signal had come a moment later
                if main and previous is not None:
                    signal.signal(signal.SIGTERM, previous)
                ray.shutdown()
                if exc.code != signal.SIGTERM or not callable(previous):
                    raise
                previous(signal.SIGTERM, None)
                raise StartInterrupted("stopped by SIGTERM while connecting to Ray") from None
            finally:
                if main and previous is not None:
                    signal.signal(signal.SIGTERM, previous)
            self.connected_here = True
        need = sum(getattr(w, "num_cpus", 0.0) for w in self.workers)
        have = ray.cluster_resources().get("CPU")  # None: not known yet (the actors wait for room)
        if have is not None and need > have + 1e-9:
            raise RuntimeError(f"the Ray cluster has {have:g} CPUs; {len(self.workers)} workers ask for {need:g} "
                               f"(add nodes, or fewer devices)")
        if self.worlds is not None and self.address is not None:
            # actors on other nodes meet at this node's address (a private instance: all on loopback)
            self.worlds.host = ray.util.get_node_ip_address()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self.connected_here:
            import ray

            try:  # (it waits for the head's GCS too)
                await off_loop(ray.shutdown, timeout_s=RAY_SHUTDOWN_TIMEOUT_S, name="ray-shutdown")
            except TimeoutError:
                logger.warning("Ray did not shut down in %.0f s (its head is gone?); it ends with this process",
                               RAY_SHUTDOWN_TIMEOUT_S)
            self.connected_here = False
