"""Workers: one per device slot, all behind one interface (``await worker.run(task) -> StageResult``).

* :class:`EmulatedWorker` holds no weights and takes the time the engine tells it (the cost
  model's duration, scaled): the API, queues, dispatch and bookkeeping around it are all real.
* :class:`CpuWorker` is a real process (``spawn``; one torch thread) holding the requested tiny
  pipelines and running encode / diffuse / decode for real. Tensors travel through shared memory:
  ``torch.multiprocessing`` registers reductions with the pickler that ``Connection.send`` uses,
  so a CPU tensor crosses a pipe as a handle to a shared-memory segment, not as bytes. The engine
  keeps each request's embeddings and latents between stages (handles only) and passes them to
  the next worker.

A diffuse piece runs one denoising step per call of the resumable ``diffuse`` and checks a shared
flag between steps, which is how a ``Preempt`` (or the cancellation of every request in the batch)
stops it at the next step boundary. A worker process that dies (even by SIGKILL) is seen through
its process sentinel: the engine is told (``on_lost``), the process is restarted, and the engine is
told again when the new one is ready (``on_restored``).

An allocation failure in a worker (``MemoryError``, ``torch.OutOfMemoryError`` — which is
``torch.cuda.OutOfMemoryError`` — or torch's CPU allocator refusing) comes back as a value,
``StageResult(oom=True)``, which the engine reports to the policy as ``StageFailed(oom=True)``; the
request is retried at a safer configuration (a decode retried after an OOM runs tiled) and the OOM
is counted on the request. ``StageTask.fault`` is the test seam behind ``trident serve --inject-oom``.

The engine process imports torch only when CPU workers are used (to receive shared tensors).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.types import StageKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StageTask:
    """What one dispatch asks its lead worker to run (picklable; tensors ride as shared memory)."""

    dispatch_id: int
    stage: str  # encode | diffuse | decode
    model: str
    request_ids: tuple[int, ...]
    height: int
    width: int
    frames: int
    steps: int
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    guidances: tuple[float | None, ...] = ()
    start_step: int = 0
    end_step: int = 0
    # per request: encode (); diffuse (embeddings, latents-or-None); decode latents
    inputs: tuple[Any, ...] = ()
    duration_s: float = 0.0  # emulated workers: wall seconds the dispatch takes
    tiled: bool = False  # decode in tiles (bounded activation memory): a retry after an out-of-memory error
    # the (model, stage) instances the placement plan holds on the lead device at dispatch: a GPU worker
    # keeps exactly these weights on its GPU (evicting the rest) and loads this task's stage if missing
    resident: tuple[tuple[str, str], ...] = ()
    # testing aid (``trident serve --inject-oom``): "oom" makes the worker fail this task with a real
    # allocation failure (a CPU process asks torch's allocator for more than any address space)
    fault: str = ""


@dataclass(frozen=True, slots=True)
class StageResult:
    """What came of a task: per-request outputs, or an error (``lost``: the worker died)."""

    end_step: int = 0
    # per request: encode embeddings; diffuse latents; decode encoded media bytes (None: emulated)
    outputs: tuple[Any, ...] = ()
    error: str = ""
    oom: bool = False
    lost: bool = False
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.error or self.lost)


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What a worker reports about a model it loaded (the server validates requests with it)."""

    name: str
    video: bool
    min_size: int
    max_size: int
    size_multiple: int
    frames_multiple: int
    max_frames: int
    default_steps: int
    max_prompt_tokens: int


class Worker:
    """One device slot. ``run`` is called only while the slot is idle (dispatch is exclusive)."""

    slot: int
    kind: str = ""
    alive: bool = True

    async def start(self) -> None:
        """Bring the worker up (a process: spawned and its pipelines loaded)."""

    async def run(self, task: StageTask) -> StageResult:
        raise NotImplementedError

    async def _respawn(self) -> None:
        """Spawn the worker again until it comes up (back-off up to 30 s), then tell the engine.

        For workers that restart (``_spawn``, ``_stopping``, ``restarts``, ``on_restored``)."""
        delay = 0.0
        while not self._stopping:
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._spawn()
            except Exception as exc:  # noqa: BLE001
                logger.warning("worker %d: restart failed: %s", self.slot, exc)
                delay = min(30.0, max(0.5, 2 * delay))
                continue
            self.restarts += 1
            if self.on_restored is not None and not self._stopping:
                self.on_restored(self.slot)
            return

    def preempt(self, dispatch_id: int, stop_step: int, wall_at: float) -> None:
        """Stop the running diffuse ``dispatch_id`` at a step boundary (``stop_step`` by ``wall_at``
        on the emulated clock; real workers stop at their next boundary and report the step)."""

    async def stop(self) -> None:
        """Shut down (processes are terminated if they do not exit by themselves)."""


# ------------------------------------------------------------------------------------- emulated
class EmulatedWorker(Worker):
    """A device that holds no weights and sleeps for the duration it is given."""

    kind = "emulated"

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.alive = True
        self._did: int | None = None
        self._deadline = 0.0
        self._stop_step: int | None = None
        self._wake: asyncio.Event | None = None

    async def run(self, task: StageTask) -> StageResult:
        if task.fault == "oom":  # an emulated device holds no memory: it raises what an allocator would
            raise MemoryError(f"emulated device {self.slot}: out of memory (fault injected by --inject-oom)")
        t0 = time.monotonic()
        self._did, self._deadline, self._stop_step = task.dispatch_id, t0 + task.duration_s, None
        self._wake = wake = asyncio.Event()
        try:
            while True:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    if task.duration_s <= 0:
                        await asyncio.sleep(0)
                    break
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except asyncio.TimeoutError:
                    pass
                wake.clear()
            end = task.end_step if self._stop_step is None else self._stop_step
            return StageResult(end_step=end, outputs=(None,) * len(task.request_ids), wall_s=time.monotonic() - t0)
        finally:
            self._did = self._wake = None

    def preempt(self, dispatch_id: int, stop_step: int, wall_at: float) -> None:
        if self._did != dispatch_id or self._wake is None:
            return
        self._stop_step = stop_step
        self._deadline = min(self._deadline, wall_at)
        self._wake.set()


_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure: ``MemoryError``, ``torch.OutOfMemoryError``
    (``torch.cuda.OutOfMemoryError`` is the same class), or torch's CPU allocator failing
    (a ``RuntimeError`` "DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, MemoryError):
        return True
    if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(t in text for t in _OOM_TEXT)


def failure(exc: BaseException) -> StageResult:
    """A task that raised, as a value: the error text and whether it was out of memory."""
    return StageResult(error=f"{type(exc).__name__}: {exc}", oom=is_oom(exc))


# ------------------------------------------------------------------------------------ processes
def _slice(value, i: int):
    return value[i:i + 1].clone()


def residency_moves(on_device: set[tuple[str, str]], resident: Sequence[tuple[str, str]],
                    needed: tuple[str, str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What a GPU worker moves before running a stage: evict every instance the plan no longer holds
    there (first, to free memory), then load the stage it is asked to run if it is not there yet.
    Instances the plan holds but this task does not need are loaded when a task needs them."""
    want = set(resident) | {needed}
    evict = sorted(on_device - want)
    load = [] if needed in on_device else [needed]
    return evict, load


class Residency:
    """The stage weights on one GPU, moved between host memory and the device as the plan says."""

    def __init__(self, pipes: dict, device: str) -> None:
        self.pipes = pipes
        self.device = device
        self.on_device: set[tuple[str, str]] = set()
        self.loads = 0
        self.evictions = 0

    def sync(self, task: StageTask) -> None:
        import torch

        evict, load = residency_moves(self.on_device, task.resident, (task.model, task.stage))
        for model, stage in evict:
            self.pipes[model].to("cpu", [stage])
            self.on_device.discard((model, stage))
            self.evictions += 1
        if evict:
            torch.cuda.empty_cache()
        for model, stage in load:
            self.pipes[model].to(self.device, [stage])
            self.on_device.add((model, stage))
            self.loads += 1


def _execute(pipes: dict, cards: dict, task: StageTask, stop_flag, residency: Residency | None = None) -> StageResult:
    """Run one task inside a worker process (torch imported there); an allocation failure comes back as
    a value (``oom``), which the engine reports to the policy as ``StageFailed(oom=True)``."""
    try:
        if residency is not None:
            residency.sync(task)
        return _execute_stage(pipes, task, stop_flag)
    except Exception as exc:  # noqa: BLE001 - only allocation failures are values here; the rest propagate
        if not is_oom(exc):
            raise
        result = failure(exc)
        if task.fault:
            result = StageResult(error=f"{result.error} (fault injected by --inject-oom)", oom=True)
        return result


def _provoke_oom() -> None:
    """A real allocation failure from torch's allocator (``--inject-oom``): more bytes than any address space."""
    import torch

    torch.empty((1 << 62,), dtype=torch.uint8)


def _execute_stage(pipes: dict, task: StageTask, stop_flag) -> StageResult:
    import torch

    from ..pipelines.media import encode_animation, encode_image

    pipe = pipes[task.model]
    dev = pipe.device  # where the stage computes; inputs and outputs cross processes in host memory
    host = dev.type == "cpu"

    def out(t):
        return t if host else t.cpu()

    t0 = time.perf_counter()
    n = len(task.request_ids)
    if task.fault == "oom":
        _provoke_oom()
    if task.stage == StageKind.ENCODE:
        emb = pipe.encode(list(task.prompts), list(task.negative_prompts))
        outputs = tuple({k: out(_slice(v, i)) for k, v in emb.items()} for i in range(n))
        return StageResult(0, outputs, wall_s=time.perf_counter() - t0)
    if task.stage == StageKind.DIFFUSE:
        # requests of one batch share model and shape; guidance may differ: one sub-batch per value
        groups: dict[float | None, list[int]] = {}
        for i, g in enumerate(task.guidances):
            groups.setdefault(g, []).append(i)
        state = []
        for g, idx in groups.items():
            embs = [task.inputs[i][0] for i in idx]
            emb = {k: torch.cat([e[k] for e in embs]).to(dev) for k in embs[0]}
            lat = None
            if task.start_step > 0:
                lat = torch.cat([task.inputs[i][1] for i in idx]).to(dev)
            state.append([g, idx, emb, lat])
        reached = task.start_step
        shape = (task.height, task.width, task.frames)
        for step in range(task.start_step, task.end_step):
            for entry in state:
                g, idx, emb, lat = entry
                entry[3] = pipe.diffuse(emb, shape, seed=[task.seeds[i] for i in idx], steps=task.steps,
                                        guidance=g, start_step=step, end_step=step + 1, latents=lat)
            reached = step + 1
            if stop_flag.value == task.dispatch_id and reached < task.end_step:
                break
        outputs: list = [None] * n
        for g, idx, emb, lat in state:
            for j, i in enumerate(idx):
                outputs[i] = out(_slice(lat, j))
        return StageResult(reached, tuple(outputs), wall_s=time.perf_counter() - t0)
    latents = torch.cat(list(task.inputs))
    pixels = out(pipe.decode(latents, tiled=task.tiled))
    media = []
    for i in range(n):
        arr = pixels[i]
        media.append(encode_animation(arr, "WEBP") if arr.ndim == 4 and arr.shape[0] > 1
                     else encode_image(arr[0] if arr.ndim == 4 else arr, "PNG"))
    return StageResult(0, tuple(media), wall_s=time.perf_counter() - t0)


def load_pipelines(models: Sequence[str], threads: int, device: str = "cpu",
                   sources: dict[str, str] | None = None) -> tuple[dict, dict[str, ModelCard]]:
    """Load and warm up the pipelines of one slot (a worker process or a Ray actor).

    ``models`` are the names served; ``sources`` maps a name to the pipeline it runs when they differ
    (``sd3-medium`` -> ``arch:sd3-medium`` on a GPU). On ``cuda:I`` pipelines are bfloat16, built on the
    GPU, then moved to host memory: no weights stay on the GPU until the placement plan puts them there.

    Warm-up runs a one-step generation per model: first calls pay one-off costs the profile
    does not show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(threads)
    from ..pipelines import load_pipeline

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(device)
    pipes = {}
    for m in models:
        src = (sources or {}).get(m, m)
        pipes[m] = load_pipeline(src, device=device, dtype="bfloat16") if cuda else load_pipeline(src)
    cards = {}
    for m, p in pipes.items():
        lim = p.limits
        cards[m] = ModelCard(m, lim.video, lim.min_size, lim.max_size, lim.size_multiple, lim.frames_multiple,
                             lim.max_frames, p.default_steps, lim.max_prompt_tokens)
    for m, p in pipes.items():
        card = cards[m]
        size = max(card.min_size, 32)
        emb = p.encode(["warm-up"], [""])
        p.decode(p.diffuse(emb, (size, size, 1 + card.frames_multiple if card.video else 1), steps=2, end_step=1))
        if cuda:  # back to host memory; the device stays the pipeline's compute device
            p.to("cpu")
            p.device = torch.device(device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return pipes, cards


def _worker_main(slot: int, models: Sequence[str], conn, stop_flag, threads: int, device: str = "cpu",
                 sources: dict[str, str] | None = None) -> None:
    """Entry point of a worker process."""
    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions)

    try:
        pipes, cards = load_pipelines(models, threads, device, sources)
        residency = Residency(pipes, device) if device.startswith("cuda") else None
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which gives up on this slot
        conn.send(("broken", slot, f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", slot, cards))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "stop":
            break
        task: StageTask = msg[1]
        try:
            with torch.inference_mode():
                result = _execute(pipes, cards, task, stop_flag, residency)
        except Exception as exc:  # noqa: BLE001 - an expected outcome, reported as a value
            result = failure(exc)
        try:
            conn.send(("result", task.dispatch_id, result))
        except (BrokenPipeError, OSError):
            break


class CpuWorker(Worker):
    """A worker process on this host, computing on the CPU or on one GPU (``device="cuda:I"``);
    restarted when it dies."""

    def __init__(self, slot: int, models: Sequence[str], *, threads: int = 1, device: str = "cpu",
                 sources: dict[str, str] | None = None,
                 on_lost: Callable[[int, str], None] | None = None,
                 on_restored: Callable[[int], None] | None = None,
                 restart: bool = True, start_timeout_s: float | None = None) -> None:
        self.slot = slot
        self.models = tuple(models)
        self.device = device
        self.kind = "cuda" if device.startswith("cuda") else "cpu"
        self.sources = dict(sources or {})
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
        self._conn = None
        self._flag = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ready: asyncio.Future | None = None
        self._stopping = False
        self._restart_task: asyncio.Task | None = None
        self._generation = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    async def _spawn(self) -> None:
        import torch.multiprocessing as tmp  # noqa: F401  (shared-memory reductions in this process)
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._flag = ctx.Value("q", -1, lock=False)
        self._generation += 1
        gen = self._generation
        proc = ctx.Process(target=_worker_main, args=(self.slot, self.models, child, self._flag, self.threads,
                                                      self.device, self.sources),
                           name=f"trident-worker-{self.slot}", daemon=True)
        self._ready = self._loop.create_future()
        proc.start()
        child.close()
        self._proc, self._conn, self.pid = proc, parent, proc.pid
        threading.Thread(target=self._reader, args=(proc, parent, gen), name=f"trident-reader-{self.slot}",
                         daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.start_timeout_s)
        except asyncio.TimeoutError:
            self._kill(proc)
            raise RuntimeError(f"worker {self.slot}: not ready after {self.start_timeout_s:.0f} s") from None
        self.alive = True

    def _reader(self, proc, conn, gen: int) -> None:
        """Thread: hand every message to the loop; report the process's end once."""
        from multiprocessing.connection import wait

        loop = self._loop
        while True:
            try:
                ready = wait([conn, proc.sentinel])
            except OSError:
                break
            if conn in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    break
                except Exception as exc:  # noqa: BLE001 - e.g. a shared tensor whose sender died
                    logger.warning("worker %d: unreadable message: %s", self.slot, exc)
                    continue
                try:
                    loop.call_soon_threadsafe(self._message, gen, msg)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    return
                continue
            break
        proc.join(timeout=5)
        try:
            loop.call_soon_threadsafe(self._died, gen, proc.exitcode)
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
                self._ready.set_exception(RuntimeError(f"worker {self.slot}: {msg[2]}"))
        elif kind == "result":
            fut = self._pending.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])

    def _died(self, gen: int, exitcode) -> None:
        if gen != self._generation:
            return
        was_alive = self.alive
        self.alive = False
        reason = f"worker process {self.pid} exited with code {exitcode}"
        pending, self._pending = self._pending, {}
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError(f"worker {self.slot}: {reason} while starting"))
        if self._stopping:
            for fut in pending.values():
                if not fut.done():
                    fut.set_result(StageResult(error=reason, lost=True))
            return
        logger.warning("worker %d: %s", self.slot, reason)
        if was_alive and self.on_lost is not None:
            self.on_lost(self.slot, reason)  # the engine fails the running dispatch first
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

    @staticmethod
    def _kill(proc) -> None:
        if proc is not None and proc.is_alive():
            proc.kill()

    async def stop(self) -> None:
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        proc, conn = self._proc, self._conn
        if conn is not None:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        if proc is not None:
            deadline = time.monotonic() + 5.0
            while proc.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.is_alive():
                proc.terminate()
                await asyncio.sleep(0.2)
                self._kill(proc)
        self.alive = False

    # -- work --------------------------------------------------------------------------------
    async def run(self, task: StageTask) -> StageResult:
        if not self.alive or self._conn is None:
            return StageResult(error=f"worker {self.slot} is down", lost=True)
        fut = self._loop.create_future()
        self._pending[task.dispatch_id] = fut
        self._flag.value = -1
        try:
            self._conn.send(("run", task))
        except (BrokenPipeError, OSError) as exc:
            self._pending.pop(task.dispatch_id, None)
            return StageResult(error=f"worker {self.slot}: {exc}", lost=True)
        return await fut

    def preempt(self, dispatch_id: int, stop_step: int, wall_at: float) -> None:
        if self._flag is not None:
            self._flag.value = dispatch_id


@dataclass
class WorkerPool:
    """The workers of a run, indexed by device slot (= GPU id in the cluster)."""

    workers: list[Worker] = field(default_factory=list)

    def __getitem__(self, slot: int) -> Worker:
        return self.workers[slot]

    def __len__(self) -> int:
        return len(self.workers)

    async def start(self) -> None:
        # processes import torch and build pipelines: start them together
        await asyncio.gather(*(w.start() for w in self.workers))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    def cards(self) -> dict[str, ModelCard]:
        out: dict[str, ModelCard] = {}
        for w in self.workers:
            out.update(getattr(w, "cards", {}) or {})
        return out
