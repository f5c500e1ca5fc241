"""Online calibration (issue 11, point 1): the driver core learns measured / predicted stage times per
model and stage, and the cluster state, the policy and new deadlines see the calibrated cost model.

On the simulator with biased stage times (a deterministic stand-in for a slower machine), on a live
CPU server (visible in /v1/cluster and /metrics), and replayed exactly (parity)."""

from __future__ import annotations

import statistics

import httpx
import pytest

from tridentcore.bench.launch import start_server
from tridentcore.bench.scenario import load_scenario
from tridentcore.bench.spec import RunSpec
from tridentcore.core.calibration import CalibratedCost, Calibration
from tridentcore.core.policy import make_policy
from tridentcore.core.types import Shape
from tridentcore.profiles import load_profile
from tridentcore.sim.engine import StageNoise, simulate

H200 = load_profile("h200").cost_model()
LOADED = load_scenario(RunSpec(mix="sd3-mixed", duration_s=600, seed=1))
BIAS = (("encode", 3.0), ("diffuse", 2.0), ("decode", 2.5))


def _errors(spans) -> list[float]:
    """|actual / predicted - 1| of each whole dispatch's compute (after its weight loading and
    transfers), in start order."""
    seen, out = set(), []
    for s in sorted(spans, key=lambda s: s.started_s):
        overhead = s.load_s + s.transfer_s
        if s.dispatch_id in seen or s.outcome != "done" or s.predicted_s <= overhead:
            continue
        seen.add(s.dispatch_id)
        out.append(abs((s.ended_s - s.started_s - overhead) / (s.predicted_s - overhead) - 1.0))
    return out


def test_factors_are_robust_medians_that_move_in_steps_per_shape_bucket():
    cal = Calibration(window=8, min_samples=3, step=0.05)
    small, large = Shape(512, 512, 1, 28), Shape(2048, 2048, 1, 28)
    for measured in (2.0, 2.0):
        cal.observe("m", "decode", small, 1.0, measured)
    assert cal.factor("m", "decode", small) == 1.0 and cal.version == 0  # too few to move
    cal.observe("m", "decode", small, 1.0, 100.0)  # one stray slow run does not set the factor
    assert cal.factor("m", "decode", small) == 2.0
    version = cal.version
    cal.observe("m", "decode", small, 1.0, 2.04)  # within the step: the published factor stays
    assert cal.factor("m", "decode", small) == 2.0 and cal.version == version
    assert cal.factor("m", "decode", large) == 2.0  # an unseen bucket borrows the stage's factor
    for _ in range(5):
        cal.observe("m", "decode", large, 1.0, 4.0)
    assert cal.factor("m", "decode", large) == 4.0 and cal.factor("m", "decode", small) == 2.0
    (row,) = cal.snapshot()
    assert row["stage"] == "decode" and [b["samples"] for b in row["buckets"]] == [4, 5]
    cost = CalibratedCost(H200, cal)
    shape = Shape(1024, 1024, 1, 28)
    assert cost.latency_s("sd3-medium", "decode", shape, 1, 1, "H200") == H200.latency_s(
        "sd3-medium", "decode", shape, 1, 1, "H200")  # another model: uncalibrated
    assert cost.weights_gib("sd3-medium", "decode", "H200") == H200.weights_gib("sd3-medium", "decode", "H200")


def test_each_layout_has_its_own_factor_while_current_then_falls_back_to_its_bucket():
    """Outside test 117: on a 2-core host a diffuse on 2 CPU workers took 2x as long as on one (the
    profile has it faster); its ratios, mixed with degree 1's in one median, set both degrees'
    predictions wrong, and degree 2 went on being chosen after the host was quiet again."""
    cal = Calibration(window=8, min_samples=3, step=0.05)
    shape = Shape(256, 256, 1, 8)
    for _ in range(4):
        cal.observe("m", "diffuse", shape, 1.0, 1.5, degree=1)
        cal.observe("m", "diffuse", shape, 1.0, 3.0, degree=2)
    assert cal.factor("m", "diffuse", shape, 1) == 1.5 and cal.factor("m", "diffuse", shape, 2) == 3.0
    assert cal.factor("m", "diffuse", shape, 4) == 2.25  # never run: the bucket's median (of both degrees)
    for _ in range(3):  # a batch of 2 has its own too (a profile's batching gains may not hold either)
        cal.observe("m", "decode", shape, 1.0, 2.5, batch=2)
    assert cal.factor("m", "decode", shape, 1, 2) == 2.5
    # degree 2 alone from now on (the host changed): degree 1's factor is the bucket's once degree 1 was
    # not run in the bucket's last `window` observations, and the policy hears of the move (version)
    version = cal.version
    for _ in range(6):  # (degree 1 was the bucket's 7th observation of 8)
        cal.observe("m", "diffuse", shape, 1.0, 1.2, degree=2)
    assert cal.factor("m", "diffuse", shape, 1) == 1.5  # still current: 7 observations since
    cal.observe("m", "diffuse", shape, 1.0, 1.2, degree=2)
    assert cal.factor("m", "diffuse", shape, 1) == 1.2  # the bucket's (its window: degree 2's last 8)
    assert cal.version > version
    (row,) = [r for r in cal.snapshot() if r["stage"] == "diffuse"]
    layouts = {(x["degree"], x["batch"]): x for x in row["buckets"][0]["layouts"]}
    assert layouts[(1, 1)]["current"] is False and layouts[(2, 1)]["current"] is True
    assert layouts[(2, 1)]["factor"] == 1.2 and layouts[(1, 1)]["samples"] == 4
    assert layouts[(1, 1)]["factor"] == 1.2  # the factor in use (the bucket's), not its own stale 1.5
    cal.observe("m", "diffuse", shape, 1.0, 9.0, degree=8)  # one sample: the bucket's is in use (not 1.0)
    (row,) = [r for r in cal.snapshot() if r["stage"] == "diffuse"]
    (eight,) = [x for x in row["buckets"][0]["layouts"] if x["degree"] == 8]
    assert eight["factor"] == cal.factor("m", "diffuse", shape, 8) == 1.2 and eight["samples"] == 1
    # the speed-ups (and so the SLO's reference degree) follow each degree's factor
    cal2, big = Calibration(window=8, min_samples=3), Shape(1024, 1024, 1, 28)
    for _ in range(3):
        cal2.observe("sd3-medium", "diffuse", big, 1.0, 1.0, degree=1)
        cal2.observe("sd3-medium", "diffuse", big, 1.0, 4.0, degree=2)
    cost = CalibratedCost(H200, cal2)
    assert cost.speedup("sd3-medium", "diffuse", big, 2, 1, "H200") == pytest.approx(
        H200.speedup("sd3-medium", "diffuse", big, 2, 1, "H200") / 4.0)
    assert cost.parallel_efficiency("sd3-medium", "diffuse", big, 2, 1, "H200") == pytest.approx(
        H200.parallel_efficiency("sd3-medium", "diffuse", big, 2, 1, "H200") / 4.0)


def test_the_simulator_learns_a_slower_machine():
    """Stage times 2-3x the profile's (per-stage bias, plus 10 % noise): uncalibrated, predictions stay
    that far off; calibrated, after the first dispatches the median error is under 10 %."""
    reqs = LOADED.requests(1.0)
    noise = StageNoise(sigma=0.1, bias=BIAS, seed=3)
    off = simulate(LOADED.cluster, LOADED.cost, make_policy("trident"), reqs, gpu_kind=LOADED.gpu_kind, noise=noise)
    on = simulate(LOADED.cluster, LOADED.cost, make_policy("trident"), reqs, gpu_kind=LOADED.gpu_kind, noise=noise,
                  calibrate=True)
    late_off, late_on = _errors(off.spans)[60:], _errors(on.spans)[60:]
    assert len(late_on) > 200
    assert statistics.median(late_off) > 0.9
    assert statistics.median(late_on) < 0.10
    assert {r.state for r in on.requests} == {"done"}


def test_a_live_cpu_server_shows_its_calibration():
    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:1", "--policy", "trident"], timeout_s=180)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for seed in range(6):
                body = {"model": "tiny-sd3", "prompt": "x", "size": "64x64", "steps": 2, "seed": seed}
                assert client.post("/v1/images/generations", json=body).status_code == 200
            rows = client.get("/v1/cluster").json()["calibration"]
            metrics = client.get("/metrics").text
        stages = {r["stage"]: r for r in rows if r["model"] == "tiny-sd3"}
        assert set(stages) == {"encode", "diffuse", "decode"}
        assert all(r["samples"] >= 3 and r["factor"] > 0 and r["kind"] == "cpu" for r in stages.values())
        assert 'trident_calibration_factor{kind="cpu",model="tiny-sd3",stage="decode"}' in metrics
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("calibrate", [True, False])
def test_calibration_is_replayed_exactly(calibrate):
    """The factors follow from the reports alone: the replay calibrates as the live run did."""
    import asyncio

    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission
    from tridentcore.sim.replay import compare, replay

    async def main():
        rt = build_runtime("tiny-sd3", "cpu:1", "trident", strict=True, log_reports=True, calibrate=calibrate)
        await rt.start()
        e = rt.engine
        try:
            ids = [e.submit([Submission("tiny-sd3", "x", Shape(64, 64, 1, 2), seed=i)]).ids[0] for i in range(6)]
            await asyncio.gather(*(e.wait(r) for r in ids))
        finally:
            await e.shutdown(5)
        return e

    e = asyncio.run(asyncio.wait_for(main(), 180))
    assert (e.core.calibration is not None) == calibrate
    parity = compare(e.request_rows(), e.spans, e.placements, replay(e.core))
    assert parity.exact, parity.first_difference


def test_the_workers_own_measurement_is_what_calibration_learns():
    """A completion that carries the worker's compute time teaches that time, not the driver's clock
    (which adds the hand-over to and from the worker), and the span records it."""
    from tridentcore.core.cluster import parse_cluster
    from tridentcore.core.driver import Completed, DriverCore
    from tridentcore.core.events import RequestArrived
    from tridentcore.core.requests import RequestSpec
    from tridentcore.core.types import StageKind

    core = DriverCore(parse_cluster("1x1xH200"), H200, make_policy("pipeline-static:degree=1"), gpu_kind="H200",
                      calibrate=True)
    core.start(["sd3-medium"], None, 0.0)
    shape, now = Shape(1024, 1024, 1, 28), 0.0
    for rid in range(3):
        effects = core.step(RequestArrived(RequestSpec(rid, "sd3-medium", "x", shape, rid, None, 1e6, now)), now)
        while effects.started:
            (started,) = effects.started
            run = started.run
            predicted = run.predicted_end_s - run.compute_start_s
            # the driver's clock says 10x the prediction, the worker measured 3x
            now = run.compute_start_s + 10 * predicted
            effects = core.step(Completed(run.id, compute_s=3 * predicted / run.factor), now)
    for stage in StageKind:
        assert core.calibration.factor("sd3-medium", stage, shape) == pytest.approx(3.0)
    assert {round(s.compute_s / (s.predicted_s - s.load_s - s.transfer_s), 6) for s in core.recorder.spans
            if s.stage == "encode"} == {3.0}  # 3x the prediction (each encode ran before the factor moved)
