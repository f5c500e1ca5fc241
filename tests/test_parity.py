"""Exact parity: a live run's report log replayed through the simulator gives identical decisions.

The live engine (emulated devices, and real CPU worker processes) keeps every report it handled with
its engine time; ``sim.replay`` runs the log through a fresh policy on the simulator. Every stage
span (dispatch id, GPUs, batch, steps, outcome, times), placement change and request outcome must be
the same: 100 %, with cancellations, preemption, ticks and a worker killed mid-run in the log.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tridentcore.core.types import Shape
from tridentcore.runtime.build import build_runtime
from tridentcore.runtime.engine import Accepted, Submission
from tridentcore.sim.replay import compare, replay

from emulated_workload import SMALL, mixed, run  # noqa: E402  (tests/, on sys.path under pytest)



def assert_exact(engine) -> None:
    sim = replay(engine.core)
    parity = compare(engine.request_rows(), engine.spans, engine.placements, sim)
    assert parity.exact, parity.first_difference
    assert parity.requests > 0 and parity.fraction == 1.0
    assert len(sim.spans) == len(engine.spans)


@pytest.mark.parametrize("policy", ["trident", "pipeline-static:degree=1", "pipeline-dynamic", "trident-paper"])
def test_emulated_run_replays_identically(policy):
    """Open-loop arrivals in waves on 8 emulated GPUs, a queued and a running request cancelled."""
    async def main():
        rt = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:2x4xH200", policy, time_scale=0.002,
                           max_queued=1000, strict=True, log_reports=True)
        await rt.start()
        e = rt.engine
        ids = []
        for i in range(36):
            got = e.submit([mixed(i)])
            assert isinstance(got, Accepted)
            ids += got.ids
            if i % 6 == 5:
                await asyncio.sleep(0.01)
            if i == 20:
                running = [r for r in e.live_ids() if e.view.running_of(r) is not None]
                queued = [r for r in e.live_ids() if e.view.running_of(r) is None]
                for rid in running[:1] + queued[-1:]:
                    e.cancel(rid)
        await asyncio.gather(*(e.wait(r) for r in ids))
        await e.shutdown(5)
        return e

    e = run(main(), 120)
    states = {r.state for r in e.request_rows()}
    assert "done" in states
    assert_exact(e)


def test_preemption_and_forgetting_replay_identically():
    """trident preempts long videos for images at step boundaries; past keep_ended the engine forgets
    ended requests (the replay forgets them too)."""
    async def main():
        rt = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:1xH200", "trident", time_scale=0.001,
                           max_queued=1000, strict=True, log_reports=True, keep_ended=2)
        await rt.start()
        e = rt.engine
        long_video = Submission("wan2.1-1.3b", "v", Shape(480, 832, 81, 50), slo_s=1e6)
        waits = [asyncio.ensure_future(e.wait(r)) for r in e.submit([long_video]).ids]
        for i in range(6):
            await asyncio.sleep(0.01)  # 10 engine seconds
            waits += [asyncio.ensure_future(e.wait(r)) for r in
                      e.submit([Submission("sd3-medium", "i", SMALL, seed=i)]).ids]
        await asyncio.gather(*waits)
        await e.shutdown(5)
        return e

    e = run(main(), 120)
    assert e.forgotten > 0
    assert any(s.outcome == "preempted" for s in e.spans)
    assert_exact(e)


def test_a_head_start_grown_at_a_step_boundary_replays_identically():
    """``trident:grow=true`` live: on two emulated GPUs a 480p video takes one, and a 720p one that
    needs both (its SLO: 223 s; 243 s on one GPU) starts on the other at once, is paused at a step
    boundary when the first frees and resumes on both (``tests/test_trident_wide.py``: simulated)."""
    async def main():
        rt = build_runtime("wan2.1-1.3b", "emulated:1x2xH200", "trident:spread=0,wide=false,grow=true",
                           time_scale=0.005, max_queued=10, strict=True, log_reports=True)
        await rt.start()
        e = rt.engine
        got = e.submit([Submission("wan2.1-1.3b", "a", Shape(480, 832, 33, 50), seed=0, slo_s=31.0),
                        Submission("wan2.1-1.3b", "b", Shape(720, 1280, 81, 50), seed=1, slo_s=223.0)])
        await asyncio.gather(*(e.wait(r) for r in got.ids))
        await e.shutdown(5)
        return e

    e = run(main(), 120)
    assert {r.state for r in e.request_rows()} == {"done"}
    big = sorted((s.start_step, s.degree, s.outcome) for s in e.spans
                 if s.stage == "diffuse" and s.request_id == max(r.request_id for r in e.request_rows()))
    assert [(d, o) for _, d, o in big] == [(1, "preempted"), (2, "done")], big
    assert_exact(e)


def test_cpu_workers_with_a_killed_worker_replay_identically():
    """Real tiny pipelines in two worker processes; one is SIGKILLed while it runs a diffuse: its
    dispatch fails, the worker is restarted, every request completes, and the replay (lost and
    restored worker included) decides exactly as the live run did."""
    async def main():
        rt = build_runtime("tiny-sd3", "cpu:2", "trident", strict=True, log_reports=True)
        await rt.start()
        e = rt.engine
        try:
            ids = []
            for seed in range(6):
                ids += e.submit([Submission("tiny-sd3", "x", Shape(128, 128, 1, 40), seed=seed, slo_s=10_000)]).ids
            victim = None
            for _ in range(3000):
                victim = next((g for g in range(2) if (r := e.view.running_on(g)) is not None
                               and r.action.stage == "diffuse"), None)
                if victim is not None:
                    break
                await asyncio.sleep(0.005)
            assert victim is not None, "no diffuse ever ran"
            os.kill(e.workers[victim].pid, signal.SIGKILL)  # a worker process this test started
            await asyncio.gather(*(e.wait(r) for r in ids))
        finally:
            await e.shutdown(5)
        return e

    e = run(main(), 240)
    assert all(r.state == "done" for r in e.request_rows())
    assert any(s.outcome == "failed" for s in e.spans)
    assert_exact(e)
