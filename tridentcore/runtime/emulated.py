"""An emulated device: no weights, it takes the time the engine tells it (the cost model's duration,
scaled) and stops early at a preempted step. Given the engine's clock (``clock``, set by the engine
as it starts) it waits in engine time: the server's own busy time does not make it slower.
"""

from __future__ import annotations

import asyncio
import time

from .clock import EngineClock
from .pool import Worker
from .tasks import StageResult, StageTask

__all__ = ["EmulatedWorker", "proportional_step"]


def proportional_step(elapsed_s: float, duration_s: float, start: int, end: int) -> int:
    """The step an emulated piece of steps ``start..end`` taking ``duration_s`` has reached after
    ``elapsed_s``, in proportion (below ``end`` until the piece reports its end)."""
    frac = elapsed_s / duration_s if duration_s > 0 else 1.0
    return min(end - 1, start + int(max(frac, 0.0) * (end - start))) if end > start else start


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
        self._span = (0.0, 0.0, 0, 0)  # the running task's start, duration and steps
        self.clock: EngineClock | None = None

    def _now(self) -> float:
        """Seconds on the device's clock, in the units of ``StageTask.duration_s`` (scaled wall)."""
        return self.clock.now() * self.clock.scale if self.clock is not None else time.monotonic()

    async def run(self, task: StageTask) -> StageResult:
        if task.fault == "oom":  # an emulated device holds no memory: it raises what an allocator would
            raise MemoryError(f"emulated device {self.slot}: out of memory (fault injected by --inject-oom)")
        t0 = self._now()
        self._did, self._deadline, self._stop_step = task.dispatch_id, t0 + task.duration_s, None
        self._span = (t0, task.duration_s, task.start_step, task.end_step)
        self._wake = wake = asyncio.Event()
        try:
            while True:
                left = self._deadline - self._now()
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
            return StageResult(end_step=end, outputs=(None,) * len(task.request_ids), wall_s=self._now() - t0)
        finally:
            self._did = self._wake = None

    def progress(self, dispatch_id: int) -> int | None:
        """Steps in proportion to the emulated time gone (there is no step to count)."""
        if self._did != dispatch_id:
            return None
        t0, duration, start, end = self._span
        return proportional_step(self._now() - t0, duration, start, end)

    def preempt(self, dispatch_id: int, stop_step: int, wall_at: float) -> None:
        if self._did != dispatch_id or self._wake is None:
            return
        self._stop_step = stop_step
        if self.clock is not None:  # wall_at is on the wall clock: the same wait on the device's
            wall_at = self._now() + (wall_at - time.monotonic())
        self._deadline = min(self._deadline, wall_at)
        self._wake.set()
