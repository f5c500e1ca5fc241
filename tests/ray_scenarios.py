"""Scenarios for ``tests/test_runtime_ray.py``, each run as its own process *inside* the test's
loopback-only network namespace (so no Ray traffic can leave it), against the Ray head the test
started there. Each writes one JSON object to ``--out``; the test makes the assertions.

    python tests/ray_scenarios.py emulated|cpu|parallel --address 127.0.0.1:6379 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

from tridentcore.core.types import Shape
from tridentcore.runtime.build import build_runtime
from tridentcore.runtime.engine import Accepted, Submission

TERMINAL = {"done", "failed", "rejected", "cancelled"}
LONG_SLO_S = 1e7


class Recording:
    """A policy, unchanged, that notes the type of every event it is handed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def on_event(self, view, event, now):
        self.seen.append(type(event).__name__)
        return self.inner.on_event(view, event, now)


def spy(workers, seen: dict) -> None:
    """Note the types of what each worker is handed and hands back, per stage (refs, not tensors)."""
    for worker in workers:
        inner = worker.run

        async def run(task, inner=inner):
            flat = [x for item in task.inputs for x in (item if isinstance(item, tuple) else (item,)) if x is not None]
            seen.setdefault(f"{task.stage}_in", set()).update(type(x).__name__ for x in flat)
            result = await inner(task)
            seen.setdefault(f"{task.stage}_out", set()).update(type(o).__name__ for o in result.outputs)
            return result

        worker.run = run


def records(engine, ids) -> dict:
    """What the test checks: one terminal state per request, complete stage spans for done ones."""
    rows = {r.request_id: r for r in engine.request_rows()}
    out = {"states": {}, "terminal_entries": {}, "reasons_ok": True, "spans_ok": True}
    for rid in ids:
        row = rows[rid]
        out["states"][rid] = row.state
        out["terminal_entries"][rid] = sum(1 for _, s in engine.state.requests[rid].history if s.terminal)
        out["reasons_ok"] &= bool(row.reason)
        if row.state == "done":
            spans = [s for s in engine.spans if s.request_id == rid and s.outcome in ("done", "preempted")]
            steps = sorted((s.start_step, s.end_step) for s in spans if s.stage == "diffuse")
            out["spans_ok"] &= (spans[0].stage == "encode" and spans[-1].stage == "decode" and steps[0][0] == 0
                                and steps[-1][1] == row.steps and all(a[1] == b[0] for a, b in zip(steps, steps[1:])))
    out["live_left"] = engine.state.requests.live
    out["busy_left"] = sum(b is not None for b in engine.state.busy)
    out["errors"] = list(engine.errors)
    return out


def mixed(i: int) -> Submission:
    slo = None if i % 6 == 0 else LONG_SLO_S  # a few with the default deadline (the policy may reject them)
    if i % 4 == 3:
        return Submission("wan2.1-1.3b", f"video {i}", Shape(480, 832, 17, 50), seed=i, slo_s=slo)
    return Submission("sd3-medium", f"image {i}", Shape(1024, 1024, 1, 28) if i % 2 else Shape(512, 512, 1, 20),
                      seed=i, slo_s=slo)


async def emulated(address: str) -> dict:
    """(a) emulated GPUs as Ray actors: a mixed workload with cancels; and `trident serve --backend ray`."""
    bad = build_runtime("sd3-medium", "emulated:1xH200", backend="ray", ray_address="127.0.0.1:1")
    t0 = time.monotonic()
    try:
        await bad.start()
        bad_address = "started"
    except RuntimeError as exc:
        bad_address = str(exc)
    bad_s = time.monotonic() - t0
    rt = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:2x2xH200", "trident", time_scale=0.001, strict=True,
                       backend="ray", ray_address=address)
    t0 = time.monotonic()
    await rt.start()
    started_s = time.monotonic() - t0
    e = rt.engine
    ids = []
    for i in range(24):
        got = e.submit([mixed(i)])
        assert isinstance(got, Accepted), got
        ids += got.ids
    e.cancel(ids[5])
    e.cancel(ids[-1])
    outs = await asyncio.gather(*(e.wait(r, 60) for r in ids))
    # a long emulated diffuse (1000 steps of a 720p video, seconds at this time scale): its steps_done
    # moves while the actor sleeps, in proportion to the time gone
    long = e.submit([Submission("wan2.1-1.3b", "long", Shape(720, 1280, 81, 1000), slo_s=LONG_SLO_S)]).ids[0]
    deadline = time.monotonic() + 60
    while e.describe(long)["state"] != "diffusing" and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    running_steps = []
    for _ in range(8):
        await asyncio.sleep(0.1)
        running_steps.append(e.describe(long)["steps_done"])
    e.cancel(long)
    cancelled = await e.wait(long, 60)
    snap = e.snapshot()
    await e.shutdown(5)
    out = records(e, ids)
    out.update(start_s=started_s, run_s=time.monotonic() - t0 - started_s,
               outcome_states=[o.state for o in outs], counts=dict(Counter(o.state for o in outs)),
               worker_kinds=sorted({d["worker"] for d in snap["devices"]}),
               worker_pids=[d["pid"] for d in snap["devices"]], own_pid=os.getpid(),
               preemptions=sum(e.state.requests[r].preemptions for r in ids), bad_address=bad_address,
               bad_address_s=bad_s, running_steps=running_steps, long_state=cancelled.state)
    out["http"] = serve_over_http(address)
    # without --ray-address: a private instance, though RAY_ADDRESS names the head (ray.init() would join it)
    tmp = tempfile.mkdtemp(prefix="trt-rp-", dir="/tmp")  # its session files (short: Ray's socket paths)
    try:
        out["http_private"] = serve_over_http(None, env={"RAY_ADDRESS": address, "RAY_TMPDIR": tmp})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def serve_over_http(address: str | None, env: dict[str, str] | None = None) -> dict:
    """The CLI path: `trident serve --backend ray --ray-address ADDR` answers a generation (None: no
    --ray-address, a private Ray instance: its own GCS, a child process of the server)."""
    import httpx
    import psutil

    from tridentcore.bench.launch import start_server

    t0 = time.monotonic()
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0.01",
                           "--backend", "ray", *(["--ray-address", address] if address else [])],
                          timeout_s=120, env=env)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            resp = client.post("/v1/images/generations", json={"prompt": "x", "model": "sd3-medium",
                                                               "size": "512x512", "steps": 4, "slo_ms": 80_000_000})
            cluster = client.get("/v1/cluster").json()
        result = {"status": resp.status_code, "stages": [s["stage"] for s in resp.json()["timings"][0]["stages"]]
                  if resp.status_code == 200 else resp.text,
                  "workers": sorted({d["worker"] for d in cluster["devices"]}),
                  "own_gcs": any(p.name().startswith("gcs_server")
                                 for p in psutil.Process(server.pid).children(recursive=True))}
    finally:
        log = server.log()
        result_code = server.stop()
    result.update(exit_code=result_code, wall_s=time.monotonic() - t0, log_tail="" if result_code == 0 else log[-3000:])
    return result


def fox() -> Submission:
    return Submission("tiny-sd3", "a red fox in snow", Shape(64, 64, 1, 2), seed=11, slo_s=LONG_SLO_S)


async def local_png() -> tuple[bytes, float]:
    """The local backend's bytes for the same request (a worker process, one torch thread)."""
    rt = build_runtime("tiny-sd3", "cpu:1", "trident", backend="local", strict=True)
    t0 = time.monotonic()
    await rt.start()
    e = rt.engine
    out = await e.wait(e.submit([fox()]).ids[0], 120)
    await e.shutdown(5)
    assert out.state == "done", out
    return out.result, time.monotonic() - t0


async def cpu(address: str) -> dict:
    """(b) cpu:2 tiny-sd3 as Ray actors: the PNG equals the local backend's; (c) an actor killed
    with ray.kill mid-diffuse: restarted, every request completes."""
    import ray

    rt = build_runtime("tiny-sd3", "cpu:2", "trident", backend="ray", ray_address=address, strict=True)
    rec = rt.engine.policy = Recording(rt.engine.policy)
    seen: dict[str, set] = {}
    spy(rt.engine.workers.workers, seen)
    t0 = time.monotonic()
    local = asyncio.get_running_loop().create_task(local_png())  # meanwhile (its own process)
    await rt.start()
    start_s = time.monotonic() - t0
    e = rt.engine
    out: dict = {"start_s": start_s, "worker_kinds": sorted({w.kind for w in e.workers.workers}),
                 "own_pid": os.getpid(), "pids": [w.pid for w in e.workers.workers]}
    # (b) one PNG
    rid = e.submit([fox()]).ids[0]
    first = await e.wait(rid, 120)
    ray_png = first.result
    out["png_state"] = first.state
    out["png_magic_ok"] = bool(ray_png) and ray_png[:8] == b"\x89PNG\r\n\x1a\n"
    # (c) kill the actor running a diffuse
    ids = list(e.submit([Submission("tiny-sd3", "x", Shape(128, 128, 1, 40), seed=s, slo_s=LONG_SLO_S)
                         for s in range(6)]).ids)
    t1 = time.monotonic()
    victim = None
    while victim is None and time.monotonic() - t1 < 60:
        for d in e.snapshot()["devices"]:
            if d["running"] and d["running"]["stage"] == "diffuse":
                victim = d["id"]
                break
        else:
            await asyncio.sleep(0.005)
    out["killed_slot"] = victim
    if victim is not None:
        worker = e.workers[victim]
        out["killed_pid"] = worker.pid
        ray.kill(worker.actor)
    outs = await asyncio.gather(*(e.wait(r, 120) for r in ids))
    out["kill_states"] = [o.state for o in outs]
    deadline = time.monotonic() + 60
    while victim is not None and not (e.workers[victim].alive and e.state.alive[victim]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if victim is not None:
        w = e.workers[victim]
        out.update(restarts=w.restarts, new_pid=w.pid, alive_after=bool(w.alive and e.state.alive[victim]))
    out["kill_wall_s"] = time.monotonic() - t1
    out["failed_spans"] = sum(1 for s in e.spans if s.outcome == "failed")
    out["events"] = dict(Counter(rec.seen))
    # one more request on the restarted actor
    again = e.submit([fox()])
    after = [await e.wait(r, 120) for r in again.ids]
    out["after_restart_equal"] = bool(after[0].result == ray_png)
    # a cancel stops a running diffuse at a step boundary (the actor's stop flag)
    long = e.submit([Submission("tiny-sd3", "x", Shape(128, 128, 1, 1000), slo_s=LONG_SLO_S)]).ids[0]
    deadline = time.monotonic() + 60
    while e.describe(long)["state"] != "diffusing" and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    seen_steps = []  # steps_done while the diffuse runs in its actor (asked of it every 0.25 s)
    for _ in range(12):
        await asyncio.sleep(0.1)
        seen_steps.append(e.describe(long)["steps_done"])
    out["running_steps"] = seen_steps
    e.cancel(long)
    cancelled = await e.wait(long, 60)
    while e.state.by_request.get(long) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    out["cancel_state"] = cancelled.state
    out["cancel_diffuse"] = [(s.outcome, s.end_step) for s in e.spans if s.request_id == long and s.stage == "diffuse"]
    await e.shutdown(5)
    out.update(records(e, [rid, *ids, *again.ids, long]))
    out["types"] = {k: sorted(v) for k, v in seen.items()}
    local_bytes, local_s = await local
    out["png_equal_local"] = bool(local_bytes == ray_png)
    out["local_s"] = local_s
    out["total_s"] = time.monotonic() - t0
    return out


async def local_flux():
    """tiny-flux at degree 1 on the local backend (a worker process): the image degree 2 must equal."""
    rt = build_runtime("tiny-flux", "cpu:1", "pipeline-static:degree=1", backend="local", strict=True)
    await rt.start()
    e = rt.engine
    try:
        return await e.wait(e.submit([cube()]).ids[0], 120)
    finally:
        await e.shutdown(5)


def cube() -> Submission:
    return Submission("tiny-flux", "a red cube", Shape(64, 64, 1, 4), seed=3, slo_s=LONG_SLO_S)


async def parallel(address: str) -> dict:
    """(d) cpu:2 tiny-flux as Ray actors under pipeline-static:degree=2: the diffuse runs
    sequence-parallel across both actors (a gloo world met inside them), its image equals the local
    backend's at degree 1; a member killed mid-diffuse: the request is retried, the world met afresh."""
    import io

    import numpy as np
    import ray
    from PIL import Image

    def pixels(png: bytes):
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)

    t0 = time.monotonic()
    one = await local_flux()
    rt = build_runtime("tiny-flux", "cpu:2", "pipeline-static:degree=2", backend="ray", ray_address=address,
                       strict=True)
    await rt.start()
    e = rt.engine
    out: dict = {"pids": [w.pid for w in e.workers.workers], "own_pid": os.getpid()}
    try:
        rid = e.submit([cube()]).ids[0]
        two = await e.wait(rid, 120)
        out.update(state=two.state, spans=[(s.stage, s.outcome, list(s.gpus)) for s in e.spans],
                   pixel_diff=float(np.abs(pixels(two.result) - pixels(one.result)).mean()) if two.result else None,
                   parallel_runs=e.workers.worlds.parallel_runs, meetings=e.workers.worlds.meetings,
                   store_host=e.workers.worlds.host)
        # kill the member (not the lead) mid-diffuse
        long = e.submit([Submission("tiny-flux", "x", Shape(128, 128, 1, 300), seed=4, slo_s=LONG_SLO_S)]).ids[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = e.view.running_on(1)
            if r is not None and r.action.stage == "diffuse":
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        out["killed_pid"] = e.workers[1].pid
        first = e.view.running_on(0).id
        ray.kill(e.workers[1].actor)
        while time.monotonic() < deadline + 120:  # the retry: steps_done moves while it runs
            r = e.view.running_on(0)
            if r is not None and r.id != first and r.action.stage == "diffuse":
                break
            await asyncio.sleep(0.005)
        retry_steps = []
        for _ in range(10):
            await asyncio.sleep(0.3)
            retry_steps.append(e.describe(long)["steps_done"])
        out["retry_steps"] = retry_steps
        after = await e.wait(long, 240)
        out.update(kill_state=after.state, kill_reason=after.reason,
                   kill_diffuses=[(s.outcome, list(s.gpus)) for s in e.spans if s.request_id == long
                                  and s.stage == "diffuse"],
                   restarts=e.workers[1].restarts, new_pid=e.workers[1].pid,
                   meetings_after=e.workers.worlds.meetings, parallel_runs_after=e.workers.worlds.parallel_runs)
    finally:
        await e.shutdown(5)
    out.update(records(e, [rid, long]))
    out["total_s"] = time.monotonic() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("emulated", "cpu", "parallel"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        result = asyncio.run({"emulated": emulated, "cpu": cpu, "parallel": parallel}[args.scenario](args.address))
    except BaseException:  # the test shows it first, above the logs
        import traceback

        result = {"scenario_error": traceback.format_exc()}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    sys.exit(main())
