"""The interface of one device slot (:class:`Worker`) and the workers of a run (:class:`WorkerPool`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .tasks import ModelCard, StageResult, StageTask

logger = logging.getLogger(__name__)

__all__ = ["Worker", "WorkerPool"]


class StartInterrupted(RuntimeError):
    """A worker's (or the pool's) start was stopped by a signal: the server, told of it, stops
    without serving."""


def not_the_models(name: str, first: dict[str, ModelCard], now: dict[str, ModelCard]) -> str:
    """Why a restarted worker's models (``now``) are not those it was started with (``first``; empty
    at the first start): "" if they are. One whose folder now holds another kind of pipeline is not
    (outside test 101: it was served under the old name, without a word); one whose folder's files
    changed but that holds the same kind of model is, said in the log."""
    for model, card in first.items():
        loaded = now.get(model)
        changed = card.changed(loaded) if loaded is not None else "not loaded"
        if changed:
            return (f"{name}: {model} is not the model it served ({changed}): its folder was replaced; restore it, "
                    "or restart the server to serve what it holds now")
        if loaded.source != card.source:
            logger.warning("%s: the folder of %s changed since it was loaded (its configs or weights files differ): "
                           "the restarted worker serves what it holds now", name, model)
    return ""


class Worker:
    """One device slot. ``run`` is called only while the slot is idle (dispatch is exclusive)."""

    slot: int
    kind: str = ""
    alive: bool = True
    slowdown: float = 1.0  # testing aid (``trident serve --slowdown K``): K times the time it computed
    restart_failures: int = 0  # restarts of this lost worker that failed since it was last up
    last_restart_error: str = ""  # why its last restart failed (said to the requests that fail meanwhile)
    device_offset: int = 0  # its slot + this is its device id in a run of several kinds (EngineGroup)

    @property
    def name(self) -> str:
        """``worker N``, N its device id as ``/v1/cluster`` and ``/metrics`` give it (outside test: the
        logs of a run of several kinds named each kind's devices from 0)."""
        return f"worker {self.slot + self.device_offset}"

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
            except StartInterrupted:  # the server stops: no restart
                return
            except Exception as exc:  # noqa: BLE001
                logger.warning("%s: restart failed: %s", self.name, exc)
                self.restart_failures += 1
                self.last_restart_error = str(exc)
                delay = min(30.0, max(0.5, 2 * delay))
                continue
            self.restart_failures = 0
            self.last_restart_error = ""
            self.restarts += 1
            if self.on_restored is not None and not self._stopping:
                self.on_restored(self.slot)
            return

    def progress(self, dispatch_id: int) -> int | None:
        """The denoising steps the running diffuse ``dispatch_id`` has reached (None: not known)."""
        return None

    def preempt(self, dispatch_id: int, stop_step: int, wall_at: float) -> None:
        """Stop the running diffuse ``dispatch_id`` at a step boundary (``stop_step`` by ``wall_at``
        on the emulated clock; real workers stop at their next boundary and report the step)."""

    def abort(self) -> None:
        """Stop this worker's work in flight by stopping its process (restarted as a lost one is); a
        worker without a process of its own cannot."""

    def stopping(self) -> None:
        """The server was told to stop (SIGINT, SIGTERM): a worker that ends from now on was stopped
        with it (a signal to the whole process group reaches its process too), not lost: no warning,
        no restart. Its work in flight still ends as lost; :meth:`stop` follows."""
        self._stopping = True

    async def stop(self) -> None:
        """Shut down (processes are terminated if they do not exit by themselves)."""


@dataclass
class WorkerPool:
    """The workers of a run, indexed by device slot (= GPU id in the cluster)."""

    workers: list[Worker] = field(default_factory=list)
    # local worker processes (cpu, cuda): a diffuse on k > 1 of them runs sequence-parallel, its
    # members meeting through this (``parallel_worlds``); None: a multi-device dispatch runs on its lead
    worlds: object = None

    def __getitem__(self, slot: int) -> Worker:
        return self.workers[slot]

    def __len__(self) -> int:
        return len(self.workers)

    async def start(self) -> None:
        # processes import torch and build pipelines: start them together. The store that the members
        # of a parallel diffuse meet through imports torch.distributed in this process (about 2 s of
        # CPU, which came before any worker was spawned): after they are, and not at all for one worker
        # (no dispatch has two members)
        starts = [w.start() for w in self.workers]
        if self.worlds is not None and len(self.workers) > 1:
            starts.append(self._start_worlds())
        await asyncio.gather(*starts)

    async def _start_worlds(self) -> None:
        await asyncio.sleep(0)  # (the workers' starts run first, to their first await: their spawn)
        self.worlds.start()

    def stopping(self) -> None:
        for w in self.workers:
            w.stopping()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    def cards(self) -> dict[str, ModelCard]:
        out: dict[str, ModelCard] = {}
        for w in self.workers:
            out.update(getattr(w, "cards", {}) or {})
        return out
