"""A worker process on this host (CPU, or one GPU with ``device="cuda:I"``), watched through its
process sentinel, and restarted when it dies. A CPU worker is forked from a server process that has
imported torch, diffusers and transformers once (multiprocessing's forkserver,
:mod:`.worker_forkserver`): a worker killed is back in about 0.4 s, where a spawned one spent 6-7 s
importing them (the first start waits for the forkserver's imports once); one whose forkserver died
under it is watched on through a pidfd (``worker_forkserver.Watched``). A GPU worker is spawned (a
process forked from one that touched CUDA cannot use it).

Its parent stops it (a "stop" message, then SIGKILL): the worker ignores SIGINT and SIGTERM, so a
Ctrl-C at the terminal, which signals the whole foreground process group, or a SIGTERM to the group
stops only the server, which drains its requests on live workers and then stops them. A worker that
dies during the drain (killed, crashed) is lost as at any other time: its work goes elsewhere and it
is restarted until the server stops it.

About 470 lines, one job (one worker process and its life: start, messages, loss, restart, stop): the
reader thread, the pending work and the restart share its generation and its pipe.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

from . import worker_forkserver
from .pool import StartInterrupted, Worker, not_the_models
from .sigint import STOP_SIGNALS, signals_blocked
from .tasks import ModelCard, StageResult, StageTask
from .tmpdirs import socket_safe_base, socket_safe_mp_dir
from .worker_process import worker_main

logger = logging.getLogger(__name__)

__all__ = ["CpuWorker"]

# A worker's temporary folder, ``$TMPDIR/twN-XXXXXXXX``, holds multiprocessing's ``pymp-*/listener-*``
# socket, whose path must stay under the 108 bytes of a Unix socket address: with a longer $TMPDIR
# it is made in /tmp (``tmpdirs.socket_safe_base``).
_MAX_TMP_CHARS = 60


def _start_in_thread(proc, done: asyncio.Future, loop: asyncio.AbstractEventLoop, forked: bool = False) -> None:
    """(A thread.) Start ``proc`` with the stop signals blocked: it is born deaf to them (``worker_main``
    ignores them, then unblocks), and so is the forkserver its first start launches, and every process
    forked from it. ``done`` is resolved on ``loop``."""
    def settle(exc: BaseException | None) -> None:
        if not done.done():
            done.set_result(None) if exc is None else done.set_exception(exc)

    try:
        with signals_blocked(STOP_SIGNALS):
            if forked:
                worker_forkserver.ensure_running()
            proc.start()
    except BaseException as exc:  # noqa: BLE001 - handed to the loop
        error: BaseException | None = exc
    else:
        error = None
    try:
        loop.call_soon_threadsafe(settle, error)
    except RuntimeError:  # the loop is closed: the server is gone, and so must the process be
        if error is None and proc.is_alive():
            proc.kill()


def _sharer():
    """multiprocessing's resource sharer of this process, which holds each file descriptor a pickled
    tensor sent to a worker until that worker fetches it (None where CPython keeps it otherwise)."""
    from multiprocessing import resource_sharer

    sharer = getattr(resource_sharer, "_resource_sharer", None)
    ok = isinstance(getattr(sharer, "_cache", None), dict) and isinstance(getattr(sharer, "_key", None), int)
    return sharer if ok and hasattr(sharer, "_lock") else None


_UNSHARE_AFTER_S = 2.0  # a dead worker's unfetched tensors are given back this long after its death is seen


def _unshare(shared: dict[int, range]) -> None:
    """Close what a dead worker's tasks left in the resource sharer: the descriptors it never fetched
    (killed before it read a task) stayed open, and their shared memory allocated, for the server's
    lifetime (outside test 91)."""
    sharer = _sharer()
    if sharer is None or not shared:
        return
    with sharer._lock:
        left = [entry for keys in shared.values() for k in keys if (entry := sharer._cache.pop(k, None)) is not None]
    shared.clear()
    for _send, close in left:
        try:
            close()
        except OSError:
            pass


_SHARER_HOOKED = False


def _quiet_sharer_errors() -> None:
    """A worker that dies while it fetches a task's tensors (killed right after its restart; outside test
    91) breaks the resource sharer's connection mid-handshake: its thread, which goes on serving, printed
    the whole ``ConnectionResetError`` traceback to stderr. That one case is a warning line now (what
    the worker did not fetch is given back when its death is handled: ``_unshare``); every other error
    reaches the hook that was there."""
    global _SHARER_HOOKED
    if _SHARER_HOOKED:
        return
    _SHARER_HOOKED = True
    previous = sys.excepthook
    where = os.path.join("multiprocessing", "resource_sharer.py")

    def hook(kind, exc, tb) -> None:
        frames, t = [], tb
        while t is not None:
            frames.append(t.tb_frame.f_code.co_filename)
            t = t.tb_next
        if issubclass(kind, (ConnectionError, EOFError)) and any(f.endswith(where) for f in frames):
            logger.warning("a worker process went away while it fetched a task's tensors (%s: %s)",
                           kind.__name__, exc)
            return
        previous(kind, exc, tb)

    sys.excepthook = hook


class CpuWorker(Worker):
    """A worker process on this host, computing on the CPU or on one GPU (``device="cuda:I"``);
    restarted when it dies. ``slowdown`` K: a testing aid, the process takes K times the time it
    computed (``worker_process``)."""

    def __init__(self, slot: int, models: Sequence[str], *, threads: int = 1, device: str = "cpu",
                 sources: dict[str, str] | None = None, slowdown: float = 1.0,
                 on_lost: Callable[..., None] | None = None,
                 on_restored: Callable[[int], None] | None = None,
                 restart: bool = True, start_timeout_s: float | None = None) -> None:
        self.slot = slot
        self.models = tuple(models)
        self.device = device
        self.kind = "cuda" if device.startswith("cuda") else "cpu"
        self.sources = dict(sources or {})
        self.slowdown = slowdown
        # building published architectures on a GPU takes longer than the tiny CPU models
        start_timeout_s = start_timeout_s or (600.0 if self.kind == "cuda" else 120.0)
        self.threads = threads
        self.on_lost = on_lost
        self.on_restored = on_restored
        self.restart = restart
        self.start_timeout_s = start_timeout_s
        self.alive = False
        self.cards: dict[str, ModelCard] = {}
        self.pid: int | None = None
        self.restarts = 0
        self._proc = None
        self._watch: worker_forkserver.Watched | None = None  # ``_proc``, watched (also once its forkserver died)
        self._conn = None
        self._flag = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._steps: dict[int, int] = {}  # dispatch id -> denoising steps its process reports done
        self._ready: asyncio.Future | None = None
        self._stopping = False
        self._start_stopped = False  # told to stop while not (yet) up: a start under way or to come ends
        self._restart_task: asyncio.Task | None = None
        self._shared: dict[int, range] = {}  # dispatch id -> its tensors' keys in the resource sharer (``_sharer``)
        self._generation = 0
        self._was_up = False  # its first start is over: a start now is a restart, which a stop lets finish
        # the last result handed over (dispatch id, result): its process may die before the engine's task
        # awaiting it has run; the engine is told of it with the loss (``on_lost``), not to lose it
        self._delivered: tuple[int, StageResult] | None = None
        self._tmp: dict[int, str] = {}  # generation -> its process's temporary folder (removed when it ends)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    async def _spawn(self) -> None:
        self._ready = self._loop.create_future()  # (before the check: a stop from now on interrupts it)
        if self._start_stopped:  # told to stop before this start
            raise StartInterrupted(f"{self.name}: stopped before it started")
        socket_safe_mp_dir()  # (the forkserver's socket; and this process passes on the tensors a worker sent)
        _quiet_sharer_errors()
        ctx = worker_forkserver.context(self.device)
        parent, child = ctx.Pipe(duplex=True)
        self._flag = ctx.Value("q", -1, lock=False)
        self._generation += 1
        gen = self._generation
        folder = None
        base = socket_safe_base(tempfile.gettempdir(), _MAX_TMP_CHARS)  # (else the socket's path is too long)
        if base is not None:
            folder = self._tmp[gen] = tempfile.mkdtemp(prefix=f"tw{self.slot}-", dir=base)
        proc = ctx.Process(target=worker_main, args=(self.slot, self.models, child, self._flag, self.threads,
                                                      self.device, self.sources, self.slowdown, folder),
                           name=f"trident-worker-{self.slot}", daemon=True)
        # off the loop, in a thread of its own: the first start waits for the forkserver's imports, and a
        # stop meanwhile neither waits for it (the thread is a daemon's) nor leaves the process running
        start = self._loop.create_future()
        forked = ctx.get_start_method() == "forkserver"
        threading.Thread(target=_start_in_thread, args=(proc, start, self._loop, forked),
                         name=f"trident-start-{self.slot}", daemon=True).start()
        try:
            # torch's shared-memory reductions in this process, for the tensors sent to the process:
            # imported now, while the forkserver imports the same libraries on the other core (its
            # first start), once the other workers starting beside this one have been spawned too
            # (they run until their first await). Imported before the spawn, its 2-3 s of CPU delayed
            # every worker; once the process had started, the first start waited for it (`trident
            # serve --devices cpu:1` ready in 8.5-8.8 s on a quiet 2-core host, now 7.0-7.6 s). In
            # this thread: torch imported in two threads at once aborted the server
            await asyncio.sleep(0)
            importlib.import_module("torch.multiprocessing")
            await asyncio.wait((start, self._ready), return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # stopped while the forkserver still imports: this start ends now
                self._ready.result()  # (its StartInterrupted)
                raise StartInterrupted(f"{self.name}: stopped while it started")
        except BaseException:  # (a stop, or a cancelled restart): the process, once started, is killed
            start.add_done_callback(lambda f: f.cancelled() or f.exception() is not None or self._kill(proc))
            raise
        start.result()
        child.close()
        started = worker_forkserver.start_time(proc.pid) if forked else None  # (known again if its forkserver dies)
        watch = worker_forkserver.Watched(proc)
        self._proc, self._watch, self._conn, self.pid = proc, watch, parent, proc.pid
        if self._ready.done():  # stopped while it started (``_interrupt_start`` found no process yet)
            self._kill(proc)
        threading.Thread(target=self._reader, args=(watch, parent, gen, started), name=f"trident-reader-{self.slot}",
                         daemon=True).start()
        first = dict(self.cards)  # (empty before the first start)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.start_timeout_s)
        except asyncio.TimeoutError:
            self._kill(proc)
            raise RuntimeError(f"{self.name}: not ready after {self.start_timeout_s:.0f} s") from None
        self._same_models(first, proc)
        self.alive = self._was_up = True

    def _same_models(self, first: dict[str, ModelCard], proc) -> None:
        """A restarted worker serves the models it was started with (:func:`pool.not_the_models`):
        otherwise its process is stopped and the start fails (retried as any failed restart)."""
        problem = not_the_models(self.name, first, self.cards)
        if problem:
            self.cards = first
            self._kill(proc)
            raise RuntimeError(problem)

    def _reader(self, watch: worker_forkserver.Watched, conn, gen: int, started: int | None) -> None:
        """Thread: hand every message to the loop; report the process's end once. A forked process whose
        forkserver died is watched on through a pidfd (``worker_forkserver.outliving``)."""
        from multiprocessing.connection import wait

        loop, proc = self._loop, watch.proc
        sentinel = proc.sentinel
        closed = False  # the pipe met its end (the process ended, or is ending)
        while True:
            try:
                ready = wait([conn, sentinel])
            except OSError:
                break
            if conn in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    closed = True
                    break
                except Exception as exc:  # noqa: BLE001 - e.g. a shared tensor whose sender died
                    logger.warning("%s: unreadable message: %s", self.name, exc)
                    continue
                try:
                    loop.call_soon_threadsafe(self._message, gen, msg)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    return
                continue
            if sentinel is proc.sentinel and (pidfd := worker_forkserver.outliving(proc, started)) is not None:
                watch.pidfd = sentinel = pidfd
                logger.warning("%s: the forkserver died; worker process %s runs on", self.name, proc.pid)
                continue
            break
        if watch.pidfd is None:
            proc.join(timeout=0.5 if closed else 5)
            if closed and proc.exitcode is None:  # lost now; its exit status follows when it is reaped
                try:
                    loop.call_soon_threadsafe(self._gone, gen, "closed its pipe: it ended (its exit status has "
                                                               "not come yet)")
                except RuntimeError:
                    return
                proc.join(timeout=5)
        try:
            loop.call_soon_threadsafe(self._died, gen, None if watch.pidfd is not None else proc.exitcode, watch)
        except RuntimeError:
            pass

    def _message(self, gen: int, msg) -> None:
        if gen != self._generation:
            return
        kind = msg[0]
        if kind == "ready":
            self.cards = msg[2]
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(True)
        elif kind == "broken":
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(RuntimeError(f"{self.name}: {msg[2]}"))
        elif kind == "step":
            if msg[1] in self._pending:
                self._steps[msg[1]] = msg[2]
        elif kind == "result":
            self._steps.pop(msg[1], None)
            fut = self._pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])
                self._delivered = (msg[1], msg[2])

    def _died(self, gen: int, exitcode, watch: worker_forkserver.Watched | None = None) -> None:
        self._remove_tmp(gen)
        if watch is not None:  # (its pidfd, if any, closed here, on the loop: ``_kill`` may use it until now)
            watch.close()
        if gen != self._generation:
            return
        self._lost(f"worker process {self.pid} exited with code {exitcode}" if exitcode is not None else
                   f"worker process {self.pid} ended (its exit code went with its forkserver)")

    def _gone(self, gen: int, why: str) -> None:
        """The pipe to process generation ``gen`` closed (its reader met its end, or a send failed): the
        process ended or is ending, so the worker is lost now. Its exit status may come seconds later (a
        forkserver that is slow to reap it: outside test 112 stopped one, and the three attempts of a
        request went to the dead worker within 7 ms, each a broken pipe, while /healthz said it was alive);
        ``_died`` then only adds its exit code to the log."""
        if gen != self._generation or not self.alive:
            return
        self._kill(self._proc)  # (if it lives on without its pipe, it serves nobody)
        self._lost(f"worker process {self.pid} {why}")

    def _lost(self, reason: str) -> None:
        was_alive = self.alive
        self.alive = False
        pending, self._pending = self._pending, {}
        if self._shared:  # (later: the sharer's thread may be serving the worker's last fetch right now)
            self._loop.call_later(_UNSHARE_AFTER_S, _unshare, self._shared)
            self._shared = {}
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError(f"{self.name}: {reason} while starting"))
        if self._stopping:
            for fut in pending.values():
                if not fut.done():
                    fut.set_result(StageResult(error=reason, lost=True))
            return
        logger.warning("%s: %s", self.name, reason)
        delivered, self._delivered = self._delivered, None
        self._steps.clear()
        if was_alive and self.on_lost is not None:
            self.on_lost(self.slot, reason, delivered)  # the engine fails the running dispatch first
        for fut in pending.values():
            if not fut.done():
                fut.set_result(StageResult(error=reason, lost=True))
        if self.restart and self._restart_task is None:
            self._restart_task = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        try:
            await self._respawn()
        finally:
            self._restart_task = None

    def _kill(self, proc) -> None:
        watch = self._watch
        if watch is not None and watch.proc is proc:
            watch.kill()
        elif proc is not None and proc.is_alive():
            proc.kill()

    def _alive(self, proc) -> bool:
        watch = self._watch
        return watch.alive() if watch is not None and watch.proc is proc else proc.is_alive()

    async def stop(self) -> None:
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        proc, conn = self._proc, self._conn
        if self._flag is not None and self._pending:
            # a diffuse under way (a drain that timed out failed it) stops at its next step boundary, so the
            # process reads the stop then, not after the rest of its steps or the 5 s below (outside test 126:
            # `--drain-timeout 3` exited after 8.5 s)
            self._flag.value = next(iter(self._pending))
        if conn is not None:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        if proc is not None:
            deadline = time.monotonic() + 5.0
            while self._alive(proc) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._kill(proc)  # (it ignores SIGTERM)
            if self._alive(proc):
                watch = self._watch
                await asyncio.to_thread(watch.join if watch is not None and watch.proc is proc else proc.join, 5)
        self.alive = False
        for gen in list(self._tmp):
            self._remove_tmp(gen)

    def _remove_tmp(self, gen: int) -> None:
        folder = self._tmp.pop(gen, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def stopping(self) -> None:
        """The server was told to stop. A worker still loading its pipelines is stopped now (its
        process killed: it has no work; its start ends with ``StartInterrupted``), so that a Ctrl-C
        while the server starts does not wait for every model to load. Otherwise nothing changes
        here: its process ignores the signals a terminal or a service manager sends the whole group,
        so one that ends during the drain was killed or crashed, and is handled as at any other time
        (``_died``: lost, restarted), and one that was already restarting when the stop came goes on
        restarting: the requests the drain still serves wait for it. (Called from a signal handler:
        the work is the loop's.)"""
        if self.alive or self._was_up:
            return
        self._start_stopped = True  # (a start not yet under way ends as it begins: ``_spawn``)
        if self._loop is not None and self._ready is not None and not self._ready.done():
            self._loop.call_soon_threadsafe(self._interrupt_start)

    def _interrupt_start(self) -> None:
        if self._ready is None or self._ready.done():
            return  # (it became ready meanwhile: it stops with the others)
        self._stopping = True  # no restart
        self._ready.set_exception(StartInterrupted(f"{self.name}: stopped while it loaded its pipelines"))
        self._kill(self._proc)

    # -- work --------------------------------------------------------------------------------
    async def run(self, task: StageTask) -> StageResult:
        if not self.alive or self._conn is None:
            return StageResult(error=f"{self.name} is down", lost=True)
        fut = self._loop.create_future()
        self._pending[task.dispatch_id] = fut
        self._flag.value = -1
        sharer = _sharer()
        first = sharer._key if sharer is not None else 0
        try:
            self._conn.send(("run", task))
        except (BrokenPipeError, OSError) as exc:
            self._pending.pop(task.dispatch_id, None)
            if sharer is not None and sharer._key > first:  # pickled, never to be fetched
                self._loop.call_later(_UNSHARE_AFTER_S, _unshare, {0: range(first + 1, sharer._key + 1)})
            self._gone(self._generation, f"could not be sent its work ({exc})")
            return StageResult(error=f"{self.name}: {exc}", lost=True)
        if sharer is not None and sharer._key > first:  # its tensors, held for the worker to fetch
            self._shared[task.dispatch_id] = range(first + 1, sharer._key + 1)
        try:
            return await fut
        finally:
            self._shared.pop(task.dispatch_id, None)

    def progress(self, dispatch_id: int) -> int | None:
        return self._steps.get(dispatch_id)

    def abort(self) -> None:
        self._kill(self._proc)  # this worker's own process; its death is seen and it restarts

    def preempt(self, dispatch_id: int, stop_step: int, wall_at: float) -> None:
        if self._flag is not None:
            self._flag.value = dispatch_id
