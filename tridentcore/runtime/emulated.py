"""An emulated device: no weights, it takes the time the engine tells it (the cost model's duration,
scaled) and stops early at a preempted step.
"""

from __future__ import annotations

import asyncio
import time

from .pool import Worker
from .tasks import StageResult, StageTask

__all__ = ["EmulatedWorker"]


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
