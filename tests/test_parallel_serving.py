"""A diffuse dispatched on k > 1 `cpu:N` devices runs sequence-parallel over exactly those k worker
processes (issue 13; `tridentcore/runtime/parallel_worlds.py`).

tiny-flux at 64x64 (16 image tokens, 2 heads) divides by 2. The image must equal degree 1's (the
split changes float rounding only); the response's stage timings name both devices; a member
SIGKILLed mid-diffuse fails the dispatch, the request is retried and finishes, and nothing hangs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import time

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")

from tridentcore.core.types import Shape  # noqa: E402
from tridentcore.runtime.api import Submission  # noqa: E402
from tridentcore.runtime.build import build_runtime  # noqa: E402

LONG_SLO_S = 10_000.0


def _pixels(png: bytes):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def run(coro, timeout_s: float):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def _diffusing(running):
    """Wait until ``running()`` is a diffuse, then 0.2 s more (it is mid-way); that dispatch."""
    for _ in range(3000):
        r = running()
        if r is not None and r.action.stage == "diffuse":
            await asyncio.sleep(0.2)
            return r
        await asyncio.sleep(0.005)
    raise AssertionError("no diffuse ever ran")


async def _serve_one(policy: str, steps: int = 4, seed: int = 3):
    rt = build_runtime("tiny-flux", "cpu:2", policy, strict=True)
    await rt.start()
    e = rt.engine
    try:
        rid = e.submit([Submission("tiny-flux", "a red cube", Shape(64, 64, 1, steps), seed=seed,
                                   slo_s=LONG_SLO_S)]).ids[0]
        out = await e.wait(rid, 120)
        return out, list(e.spans), e.workers.worlds
    finally:
        await e.shutdown(5)


def test_pipeline_static_degree_2_runs_the_diffuse_on_both_workers_and_gives_degree_1s_image():
    two, spans2, worlds = run(_serve_one("pipeline-static:degree=2"), 240)
    one, spans1, _ = run(_serve_one("pipeline-static:degree=1"), 240)
    assert two.state == one.state == "done"
    assert [(s.stage, s.gpus) for s in spans2] == [("encode", (0, 1)), ("diffuse", (0, 1)), ("decode", (0, 1))]
    assert [s.gpus for s in spans1] == [(0,), (0,), (0,)]
    assert worlds.parallel_runs == 1 and worlds.meetings == 1  # it really ran split, not on the lead alone
    diff = np.abs(_pixels(two.result) - _pixels(one.result)).mean()
    assert diff <= 1.0, diff


def test_a_diffuse_its_model_cannot_split_runs_on_the_lead_alone_and_is_said_and_stored_as_degree_1():
    """Outside test 126: a diffuse dispatched on both workers whose shape the model cannot split (tiny-flux
    at 48x48: 9 image tokens) ran on its lead alone (logged) but its status and stored span said degree 2,
    and calibration learnt its degree-1 time as degree 2's."""
    from tridentcore.runtime import views

    async def go():
        rt = build_runtime("tiny-flux", "cpu:2", "pipeline-static:degree=2", strict=True)
        await rt.start()
        e = rt.engine
        try:
            rid = e.submit([Submission("tiny-flux", "a red cube", Shape(48, 48, 1, 4), seed=3,
                                       slo_s=LONG_SLO_S)]).ids[0]
            out = await e.wait(rid, 120)
            return out, list(e.spans), e.workers.worlds, views.describe(e, rid), views.calibration(e)
        finally:
            await e.shutdown(5)

    out, spans, worlds, status, calibration = run(go(), 240)
    assert out.state == "done" and worlds.parallel_runs == 0
    diffuse = [s for s in spans if s.stage == "diffuse"]
    assert [(s.gpus, s.degree) for s in diffuse] == [((0, 1), 1)]  # it held both, ran on one
    said = [st for st in status["stages"] if st["stage"] == "diffuse"]
    assert [(st["devices"], st["degree"]) for st in said] == [([0, 1], 1)]
    # (the encode and decode on the group's lead are learnt; the diffuse, predicted for 2, is not)
    assert {row["stage"] for row in calibration} == {"encode", "decode"}, calibration


@pytest.mark.parametrize("policy", ["pipeline-static:degree=1", "pipeline-static:degree=2"])
def test_a_drain_that_times_out_stops_a_diffuse_under_way_at_its_next_step(policy):
    """Outside test 126: with `--drain-timeout 3` a server whose diffuse was still running exited after
    8.5 s: each worker waited 5 s for its process, which was computing the failed stage's remaining steps,
    before it was killed. Now the diffuse stops at its next step boundary and the process reads the stop."""
    from tridentcore.runtime import views

    async def go():
        rt = build_runtime("tiny-flux", "cpu:2", policy, strict=True)
        await rt.start()
        e = rt.engine
        rid = e.submit([Submission("tiny-flux", "a red cube", Shape(64, 64, 1, 100_000), seed=3,
                                   slo_s=LONG_SLO_S)]).ids[0]
        for _ in range(3000):
            if (views.describe(e, rid) or {}).get("steps_done", 0) >= 3:
                break
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await e.shutdown(0.5)
        return time.monotonic() - t0, views.describe(e, rid)

    took, status = run(go(), 240)
    assert status["state"] == "failed" and "shut down" in status["reason"], status
    assert took < 3.0, f"shutdown took {took:.1f} s after a 0.5 s drain"


def test_a_replica_meets_once_and_a_preempted_parallel_diffuse_stops_on_every_member():
    async def main():
        rt = build_runtime("tiny-flux", "cpu:2", "pipeline-static:degree=2", strict=True)
        await rt.start()
        e = rt.engine
        try:
            ids = [e.submit([Submission("tiny-flux", "x", Shape(64, 64, 1, 3), seed=s, slo_s=LONG_SLO_S)]).ids[0]
                   for s in range(2)]
            await asyncio.gather(*(e.wait(r, 120) for r in ids))
            assert e.workers.worlds.meetings == 1 and e.workers.worlds.parallel_runs == 2
            long = e.submit([Submission("tiny-flux", "x", Shape(128, 128, 1, 400), seed=9, slo_s=LONG_SLO_S)]).ids[0]
            await _diffusing(lambda: e.view.running_of(long))
            assert e.cancel(long)
            await e.wait(long, 60)
            # both members stopped at the lead's step: the next request runs at once on the same world
            after = e.submit([Submission("tiny-flux", "x", Shape(64, 64, 1, 2), seed=1, slo_s=LONG_SLO_S)]).ids[0]
            out = await e.wait(after, 60)
            return e, long, out
        finally:
            await e.shutdown(5)

    e, long, out = run(main(), 300)
    assert out.state == "done"
    diffuse = [s for s in e.spans if s.request_id == long and s.stage == "diffuse"]
    assert diffuse and diffuse[0].outcome == "cancelled" and diffuse[0].end_step < 400
    assert e.workers.worlds.parallel_runs == 4


def test_a_member_killed_mid_diffuse_fails_the_dispatch_and_the_request_is_retried():
    async def main():
        rt = build_runtime("tiny-flux", "cpu:2", "pipeline-static:degree=2", strict=True)
        await rt.start()
        e = rt.engine
        try:
            rid = e.submit([Submission("tiny-flux", "x", Shape(128, 128, 1, 300), seed=4, slo_s=LONG_SLO_S)]).ids[0]
            await _diffusing(lambda: e.view.running_on(1))
            os.kill(e.workers[1].pid, signal.SIGKILL)  # the member (not the lead), a process this test started
            out = await e.wait(rid, 240)
            return e, out
        finally:
            await e.shutdown(5)

    e, out = run(main(), 400)
    assert out.state == "done", out.reason
    outcomes = [(s.stage, s.outcome, s.gpus) for s in e.spans if s.stage == "diffuse"]
    assert outcomes[0] == ("diffuse", "failed", (0, 1)) and outcomes[-1] == ("diffuse", "done", (0, 1)), outcomes
    assert e.workers[1].restarts == 1
    assert e.workers.worlds.meetings == 2  # the broken world was abandoned, the retry met afresh


@pytest.mark.slow
def test_trident_serve_degree_2_names_both_devices_and_serves_degree_1s_image():
    import httpx

    from tridentcore.bench.launch import start_server

    body = {"prompt": "a red fox in snow", "model": "tiny-flux", "size": "64x64", "steps": 4, "seed": 11,
            "slo_ms": 10_000_000}
    images, devices = {}, {}
    for degree in (2, 1):
        server = start_server(["--models", "tiny-flux", "--devices", "cpu:2", "--policy",
                               f"pipeline-static:degree={degree}"], timeout_s=180)
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                resp = client.post("/v1/images/generations", json=body)
                assert resp.status_code == 200, resp.text
                images[degree] = _pixels(base64.b64decode(resp.json()["data"][0]["b64_json"]))
                devices[degree] = {s["stage"]: s["devices"] for s in resp.json()["timings"][0]["stages"]}
        finally:
            assert server.stop() == 0
    assert devices[2]["diffuse"] == [0, 1] and devices[1]["diffuse"] == [0]
    assert np.abs(images[2] - images[1]).mean() <= 1.0


@pytest.mark.parametrize("restored_first", [False, True])
def test_pipeline_static_runs_a_stage_lost_with_a_worker_again_on_its_replica_once_it_is_whole(restored_first):
    """Pure scenario (no processes): the diffuse on replica (0, 1) dies with worker 1. Worker 0 stays
    busy (still in the group) until the dispatch's own failed end is reported, whether worker 1 is
    back before it or after; the diffuse then fails as lost (not the request's fault) and starts
    again on the whole replica from the step it had reached."""
    from tridentcore.core.cluster import parse_cluster
    from tridentcore.core.driver import Completed, DriverCore
    from tridentcore.core.events import RequestArrived, WorkerLost, WorkerRestored
    from tridentcore.core.policy import make_policy
    from tridentcore.core.workload import RequestSpec
    from tridentcore.profiles import load_profile

    cost = load_profile("cpu").cost_model()
    core = DriverCore(parse_cluster("1x2xcpu", {"cpu": 8.0}), cost, make_policy("pipeline-static:degree=2"),
                      gpu_kind="cpu")
    core.start(["tiny-flux"], None, 0.0)
    shape = Shape(64, 64, 1, 10)
    (enc,) = core.step(RequestArrived(RequestSpec(0, "tiny-flux", "x", shape, 1, None, LONG_SLO_S, 0.0)), 0.0).started
    (dif,) = core.step(Completed(enc.run.id), 0.1).started
    assert dif.run.action.gpus == (0, 1)
    lost = core.step(WorkerLost(1, "killed"), 0.2)
    assert lost.started == [] and core.view.request(0).state.value == "diffusing"
    assert not core.view.is_idle(0) and not core.view.is_alive(1)
    if restored_first:  # back (a forked worker, in well under a second) while worker 0 is still in the group
        assert core.step(WorkerRestored(1), 0.3).started == [] and not core.view.is_idle(0)
        (again,) = core.step(Completed(dif.run.id, error="worker process exited with code -9"), 0.5).started
    else:
        failed = core.step(Completed(dif.run.id, error="worker process exited with code -9"), 0.3)
        assert failed.started == [] and core.view.request(0).state.value == "encoded"
        (again,) = core.step(WorkerRestored(1), 0.5).started
    assert (again.run.action.stage, again.run.action.gpus, again.run.action.start_step) == ("diffuse", (0, 1), 0)
    (dec,) = core.step(Completed(again.run.id), 0.6).started
    core.step(Completed(dec.run.id), 0.7)
    assert core.view.request(0).state.value == "done"
    assert [s.outcome for s in core.recorder.spans if s.stage == "diffuse"] == ["failed", "done"]


def test_pipeline_dynamic_runs_a_stage_lost_with_a_worker_again_first_and_within_the_retry_cap():
    """Pure scenario (no processes): pipeline-dynamic on two devices, tiny-flux at degree 1. A diffuse
    dies with worker 0; it runs again on the next free device, ahead of a request that arrived before
    its loss; a request whose stage is lost three times fails (``DEFAULT_MAX_ATTEMPTS``)."""
    from tridentcore.core.cluster import parse_cluster
    from tridentcore.core.driver import DEFAULT_MAX_ATTEMPTS, Completed, DriverCore
    from tridentcore.core.events import RequestArrived, WorkerLost, WorkerRestored
    from tridentcore.core.policy import make_policy
    from tridentcore.core.workload import RequestSpec
    from tridentcore.profiles import load_profile

    core = DriverCore(parse_cluster("1x2xcpu", {"cpu": 8.0}), load_profile("cpu").cost_model(),
                      make_policy("pipeline-dynamic"), gpu_kind="cpu")
    core.start(["tiny-flux"], None, 0.0)
    shape = Shape(64, 64, 1, 10)

    def arrive(rid, now):
        return core.step(RequestArrived(RequestSpec(rid, "tiny-flux", "x", shape, rid, None, LONG_SLO_S, now)), now)

    def only(effects):
        (s,) = effects.started
        return s.run

    enc0, enc1 = arrive(0, 0.0).started[0].run, arrive(1, 0.0).started[0].run
    assert (enc0.action.gpus, enc1.action.gpus) == ((0,), (1,))
    only(core.step(Completed(enc0.id), 0.1))  # request 0's diffuse, on device 0 (lost with it below)
    dif1 = only(core.step(Completed(enc1.id), 0.1))
    assert arrive(2, 0.15).started == []  # no device free: it waits
    assert core.step(WorkerLost(0, "killed"), 0.2).started == []  # the diffuse waits for a device too
    dec1 = only(core.step(Completed(dif1.id), 0.3))  # request 1's decode, on its own device
    again = only(core.step(Completed(dec1.id), 0.4))  # device 1 free: request 0 first, not request 2
    assert (again.action.request_ids, again.action.stage, again.action.gpus, again.action.start_step) == (
        (0,), "diffuse", (1,), 0)
    assert again.transfer_s > 0  # its embeddings move from device 0 to device 1
    enc2 = only(core.step(WorkerRestored(0), 0.5))
    assert (enc2.action.request_ids, enc2.action.gpus) == ((2,), (0,))
    # request 0 again: lost on device 1 (second attempt), then on device 0 (third): it fails
    assert core.step(WorkerLost(1, "killed"), 0.6).started == []
    third = only(core.step(Completed(enc2.id), 0.7))  # request 2's diffuse on device 0; request 0 waits
    assert third.action.request_ids == (2,)
    core.step(WorkerRestored(1), 0.8)
    retry = core.view.running_on(1)
    assert retry is not None and retry.action.request_ids == (0,)
    core.step(WorkerLost(1, "killed"), 0.9)
    assert DEFAULT_MAX_ATTEMPTS == 3 and core.view.request(0).state.value == "failed"
    assert "failed 3 times" in core.view.request(0).reason
    assert [s.outcome for s in core.recorder.spans if s.request_id == 0 and s.stage == "diffuse"] == ["failed"] * 3


def test_pipeline_dynamic_serves_a_request_whose_worker_was_killed_mid_diffuse_and_replays_identically():
    """Live on cpu:2: the worker running a pipeline-dynamic diffuse is SIGKILLed; the diffuse runs again
    on the other worker and the request is served; the report log replays identically."""
    from tridentcore.sim.replay import compare, replay

    async def main():
        rt = build_runtime("tiny-flux", "cpu:2", "pipeline-dynamic", strict=True, log_reports=True)
        await rt.start()
        e = rt.engine
        try:
            rid = e.submit([Submission("tiny-flux", "x", Shape(128, 128, 1, 300), seed=4, slo_s=LONG_SLO_S)]).ids[0]
            r = await _diffusing(lambda: e.view.running_of(rid))
            victim = r.action.gpus[0]
            os.kill(e.workers[victim].pid, signal.SIGKILL)  # a worker process this test started
            out = await e.wait(rid, 240)
            for _ in range(2400):  # the request did not wait for the restart; the shutdown does
                if e.view.is_alive(victim):
                    break
                await asyncio.sleep(0.05)
            return e, out, victim
        finally:
            await e.shutdown(5)

    e, out, victim = run(main(), 400)
    assert out.state == "done", out.reason
    diffuse = [(s.outcome, s.gpus) for s in e.spans if s.stage == "diffuse"]
    assert diffuse == [("failed", (victim,)), ("done", (1 - victim,))], diffuse
    assert e.workers[victim].restarts == 1
    sim = replay(e.core)
    parity = compare(e.request_rows(), e.spans, e.placements, sim)
    assert parity.exact, parity.first_difference


# ------------------------------------------------------------------------------ UNets: degree 1 only
@pytest.mark.parametrize("profile,model,shape", [("cpu", "tiny-sd", Shape(256, 256, 1, 10)),
                                                 ("cpu", "tiny-sdxl", Shape(256, 256, 1, 10)),
                                                 ("h200", "sdxl", Shape(1024, 1024, 1, 30))])
def test_a_unet_diffuse_is_priced_at_degree_1_and_every_policy_dispatches_it_on_one_gpu(profile, model, shape):
    from tridentcore.core.cluster import parse_cluster
    from tridentcore.profiles import load_profile

    from first_diffuse import first_diffuse

    cost = load_profile(profile).cost_model()
    kind = cost.gpus()[0]
    assert not cost.splits(model) and cost.splits("tiny-flux" if profile == "cpu" else "flux-dev")
    for d in (2, 4, 8):
        assert cost.latency_s(model, "diffuse", shape, 1, d, kind) == cost.latency_s(model, "diffuse", shape, 1, 1, kind)
        assert cost.activation_gib(model, "diffuse", shape, 1, d, kind) == cost.activation_gib(model, "diffuse", shape, 1, 1, kind)
    cluster = parse_cluster(f"1x8x{kind}") if profile == "h200" else parse_cluster("1x8xcpu", {"cpu": 8.0})
    for spec in ("pipeline-static:degree=2", "pipeline-dynamic", "trident-paper", "trident"):
        diffuse = first_diffuse(cluster, cost, kind, spec, model, shape)
        assert len(diffuse.gpus) == 1, (spec, diffuse)


def test_a_live_run_at_degree_2_with_a_killed_member_replays_identically():
    """Sim/live parity at degree 2: pipeline-static:degree=2 on cpu:2 (tiny-flux), a member killed
    mid parallel diffuse; the report log replayed through the simulator decides exactly alike."""
    from tridentcore.sim.replay import compare, replay

    async def main():
        rt = build_runtime("tiny-flux", "cpu:2", "pipeline-static:degree=2", strict=True, log_reports=True)
        await rt.start()
        e = rt.engine
        try:
            ids = [e.submit([Submission("tiny-flux", "x", Shape(128, 128, 1, 60), seed=s, slo_s=LONG_SLO_S)]).ids[0]
                   for s in range(3)]
            for _ in range(3000):
                r = e.view.running_on(1)
                if r is not None and r.action.stage == "diffuse":
                    break
                await asyncio.sleep(0.005)
            os.kill(e.workers[1].pid, signal.SIGKILL)  # a worker process this test started
            await asyncio.gather(*(e.wait(r, 240) for r in ids))
        finally:
            await e.shutdown(5)
        return e

    e = run(main(), 400)
    assert all(r.state == "done" for r in e.request_rows())
    assert any(s.outcome == "failed" and s.gpus == (0, 1) for s in e.spans)
    sim = replay(e.core)
    parity = compare(e.request_rows(), e.spans, e.placements, sim)
    assert parity.exact, parity.first_difference
    assert parity.fraction == 1.0 and len(sim.spans) == len(e.spans)


def test_a_hung_member_of_a_parallel_diffuse_stops_the_whole_group_and_the_request_is_served():
    """The hang watch stops a stuck dispatch's worker (``abort``); a sequence-parallel dispatch's worker
    is its member set, whose abort must stop every member (it stopped none: the base class's no-op)."""
    from children import served_past_a_hung_worker  # (tests/, on sys.path under pytest)

    outcome, hung = served_past_a_hung_worker(
        "tiny-flux", "pipeline-static:degree=2", Submission("tiny-flux", "x", Shape(64, 64, 1, 60), seed=3,
                                                             slo_s=LONG_SLO_S), degree=2)
    assert outcome.state == "done" and hung >= 1, (outcome, hung)


def test_a_frozen_member_fails_the_dispatch_at_the_collective_timeout_not_the_hang_watch():
    """A member frozen mid-diffuse (SIGSTOP): the lead's collective times out and fails, but the
    dispatch waited for the frozen member until the hang watch (180 s) stopped it (outside test: 180 s
    for a 60 s collective timeout). Now once a member has failed, one that has not ended within a
    grace period is stopped and restarts; the request is retried and served, counted as no hang."""
    async def main():
        rt = build_runtime("tiny-flux", "cpu:2", "pipeline-static:degree=2")
        e = rt.engine
        e.workers.worlds.timeout_s = 3.0  # the collective timeout of the first dispatch (60 s by default)
        assert e.config.hung_min_s >= 60  # the hang watch stays out of it
        await rt.start()
        try:
            rid = e.submit([Submission("tiny-flux", "x", Shape(128, 128, 1, 60), seed=3, slo_s=LONG_SLO_S)]).ids[0]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run = next((r for r in list(e.state.running.values())
                            if r.action.stage.value == "diffuse" and len(r.action.gpus) == 2), None)
                # frozen mid-diffuse: once the lead has done a step (the members have met and computed)
                if run is not None and (e.workers[run.action.gpus[0]].progress(run.id) or 0) >= 1:
                    os.kill(e.workers[run.action.gpus[-1]].pid, signal.SIGSTOP)  # a process this runtime started
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("no degree-2 diffuse ran")
            e.workers.worlds.timeout_s = 60.0  # the retry's (it meets the restarted member)
            t0 = time.monotonic()
            outcome = await e.wait(rid, 170)  # (the hang watch would end it at 180 s)
            return outcome, time.monotonic() - t0, e.hung
        finally:
            await e.shutdown(5)

    outcome, waited, hung = run(main(), 200)
    assert outcome.state == "done" and hung == 0, (outcome, hung)
    assert waited < 60, waited  # the 3 s timeout, the grace and a restart; not the hang watch's 180 s
