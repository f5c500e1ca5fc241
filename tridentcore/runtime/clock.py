"""The engine clock: device time compressed by ``--time-scale``, the server's own work at real speed.

Emulated devices take ``time_scale`` x the cost model's time, so a run at 0.05 reads as if the work
had taken the cost model's time, twenty times faster. Dividing the whole wall clock by the scale
would also multiply the server's own work (parsing a burst of HTTP requests, the policy's decisions,
handing results over) by twenty: a 600-request burst that keeps the event loop busy for 2 s would
read as 40 s of engine time, and every deadline would be missed because of the emulation itself.

:class:`EngineClock` therefore splits the wall clock into the time the event loop waited (in its
selector: nothing to do but wait for devices and clients) and the time it was busy (running the
server). Engine time is ``idle / scale + busy``: waiting is device time and compressed, the server's
work counts at real speed, as it would next to real devices. The busy and idle seconds are reported
(``/metrics``, ``/v1/cluster``, the stored run). At scale 1 (real devices) engine time is the wall
clock; on an event loop whose selector cannot be timed (another loop implementation) it falls back
to ``wall / scale`` and says so (``separates`` False).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["EngineClock", "LoopMeter", "loop_meter"]


class LoopMeter:
    """Wall seconds an event loop spent waiting in its selector (timed around ``select``)."""

    def __init__(self, inner, wall: Callable[[], float]) -> None:
        self._inner = inner
        self._wall = wall
        self.idle_s = 0.0

    def select(self, timeout=None):
        t = self._wall()
        try:
            return self._inner.select(timeout)
        finally:
            self.idle_s += self._wall() - t

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def loop_meter(loop: asyncio.AbstractEventLoop, wall: Callable[[], float] = time.monotonic) -> LoopMeter | None:
    """The loop's meter, installed around its selector on first use; None if the loop has no
    selector to time (only selector event loops have one)."""
    selector = getattr(loop, "_selector", None)
    if isinstance(selector, LoopMeter):
        return selector
    if selector is None or not hasattr(selector, "select"):
        return None
    meter = LoopMeter(selector, wall)
    loop._selector = meter  # type: ignore[attr-defined]
    return meter


class EngineClock:
    """Engine seconds since :meth:`start`: the loop's idle wall time / ``scale`` + its busy wall time."""

    def __init__(self, scale: float = 1.0, wall: Callable[[], float] = time.monotonic) -> None:
        self.scale = scale if scale > 0 else 1.0
        self._wall = wall
        self._t0 = 0.0
        self._idle0 = 0.0
        self._meter: LoopMeter | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Time 0 is now; on a scaled clock, meter the running loop (or ``loop``)."""
        if self.scale != 1.0:
            self._meter = loop_meter(loop or asyncio.get_running_loop(), self._wall)
        self._idle0 = self._meter.idle_s if self._meter is not None else 0.0
        self._t0 = self._wall()

    @property
    def separates(self) -> bool:
        """Whether the server's busy time is kept out of the scaling (False: ``wall / scale``)."""
        return self._meter is not None or self.scale == 1.0

    def wall_s(self) -> float:
        return self._wall() - self._t0

    def idle_s(self) -> float:
        """Wall seconds the loop waited since the start (all of them where it is not metered)."""
        if self._meter is None:
            return self.wall_s()
        return min(self._meter.idle_s - self._idle0, self.wall_s())

    def busy_s(self) -> float:
        """Wall seconds the loop ran the server since the start (0 where it is not metered; never below 0,
        though the two readings it is the difference of round apart by a microsecond)."""
        return max(0.0, self.wall_s() - self.idle_s())

    def now(self) -> float:
        if self.scale == 1.0:
            return self.wall_s()
        idle = self.idle_s()
        return idle / self.scale + (self.wall_s() - idle)

    def wall_at(self, t: float) -> float:
        """The wall clock (``wall`` units) at which engine time reaches ``t`` if the loop only waits
        from now on (the earliest it can)."""
        w = self._wall()
        return w + (t - self.now()) * self.scale

    def wall_for(self, engine_s: float) -> float:
        """Wall seconds of waiting that make ``engine_s`` engine seconds."""
        return engine_s * self.scale
