"""The engine clock under ``--time-scale`` (issue 11, point 3): emulated devices' time is compressed,
the server's own work is not multiplied into engine time, and the split is reported.

A unit check of :class:`~tridentcore.runtime.clock.EngineClock` on a fake loop and wall clock, then
the README's example: an emulated 2x8xH200 server at ``--time-scale 0.05`` and a burst of 600
concurrent 1024x1024 requests."""

from __future__ import annotations

import asyncio
import statistics

import httpx
import pytest

from tridentcore.bench.launch import start_server
from tridentcore.runtime.clock import EngineClock, LoopMeter

pytestmark = pytest.mark.serial  # timing bounds that need the machine to itself: `make test` runs these alone


class _FakeSelector:
    def __init__(self, wall: list[float]) -> None:
        self.wall = wall

    def select(self, timeout=None):
        self.wall[0] += timeout  # waits the whole timeout
        return []


class _FakeLoop:
    def __init__(self, wall: list[float]) -> None:
        self._selector = _FakeSelector(wall)


def test_waiting_is_scaled_and_busy_time_is_not():
    wall = [100.0]
    loop = _FakeLoop(wall)
    clock = EngineClock(0.1, wall=lambda: wall[0])
    clock.start(loop)
    assert isinstance(loop._selector, LoopMeter) and clock.separates
    loop._selector.select(1.0)  # 1 s waiting for devices: 10 engine seconds
    assert clock.now() == pytest.approx(10.0)
    wall[0] += 0.5  # the server busy for 0.5 s: 0.5 engine seconds, not 5
    assert clock.now() == pytest.approx(10.5)
    assert (clock.busy_s(), clock.idle_s()) == (pytest.approx(0.5), pytest.approx(1.0))
    assert clock.wall_at(12.5) == pytest.approx(wall[0] + 0.2)  # the earliest: if it only waits
    again = EngineClock(0.1, wall=lambda: wall[0])
    again.start(loop)  # a second engine on the same loop shares the meter, from its own start
    assert loop._selector.idle_s == pytest.approx(1.0) and again.now() == 0.0
    real = EngineClock(1.0, wall=lambda: wall[0])
    real.start(_FakeLoop(wall))
    wall[0] += 2.0
    assert real.now() == pytest.approx(2.0)  # real devices: the wall clock


def test_a_600_request_burst_on_emulated_devices_is_served_on_time_as_simulated():
    """With the server's busy time multiplied by 20, every stage read as 2-5x its cost and no request
    of this burst met its deadline; the simulator meets 16 (trident, the same requests at t=0)."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:2x8xH200", "--time-scale", "0.05",
                           "--max-queued", "1000"], timeout_s=120)
    try:
        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
            async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
                body = {"model": "sd3-medium", "prompt": "x", "size": "1024x1024"}
                return await asyncio.gather(*(client.post("/v1/images/generations", json={**body, "seed": i})
                                              for i in range(600)))

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 600
        timings = [r.json()["timings"][0] for r in responses]
        met = sum(t["met_slo"] for t in timings)
        ratio = statistics.median(s["run_ms"] / s["predicted_ms"] for t in timings for s in t["stages"]
                                  if s["stage"] == "diffuse" and s["outcome"] == "done")
        clock = httpx.get(f"{server.url}/v1/cluster", timeout=30).json()["clock"]
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        assert server.stop() == 0
    assert met >= 5, met
    assert ratio < 1.25, ratio  # a diffuse takes about its predicted time, burst or not
    assert clock["separates_overhead"] and 0 < clock["busy_wall_s"] < clock["wall_s"]
    assert "trident_engine_busy_wall_seconds" in metrics
