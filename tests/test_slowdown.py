"""``trident serve --slowdown K`` (issue 11, point 5): a testing aid that makes each cpu worker a device K
times slower than it is (after computing, it sleeps K-1 times the time it measured; per denoising step
in a diffuse). Bad values are refused; a stage's reported wall time grows about K-fold; a preemption
still stops a slowed diffuse at a step boundary; on real servers the calibration learns the factor and
trident meets at least as many deadlines as pipeline-static.
"""

from __future__ import annotations

import asyncio
import json
import statistics

import httpx
import pytest
from typer.testing import CliRunner

from tridentcore.bench.launch import start_server
from tridentcore.cli import app
from tridentcore.core.types import StageKind
from tridentcore.runtime.build import SetupError, build_runtime
from tridentcore.runtime.tasks import StageTask

from http_bursts import burst  # noqa: E402  (tests/, on sys.path under pytest)

pytestmark = pytest.mark.serial  # timing bounds that need the machine to itself: `make test` runs these alone

K = 3.0


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("value", ["0", "0.5", "-1", "nan", "inf", "x"])
def test_bad_values_are_refused_by_the_cli(value):
    result = CliRunner().invoke(app, ["serve", "--models", "tiny-sd3", "--devices", "cpu:2", "--slowdown", value])
    assert result.exit_code == 2, result.output
    assert "slowdown" in result.output.lower()
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", [0, 0.5, -1, float("nan"), float("inf"), "x", None, 1e308, 1000.5])
def test_bad_values_are_refused_by_build_runtime(value):
    """(1e308 was taken, and every request then failed: a sleep's timestamp out of range.)"""
    with pytest.raises(SetupError, match=r"slowdown must be a number in \[1, 1000\]"):
        build_runtime("tiny-sd3", "cpu:2", slowdown=value)


def test_slowdown_applies_to_cpu_devices_only():
    with pytest.raises(SetupError, match="--slowdown applies to cpu devices only") as err:
        build_runtime("sd3-medium", "emulated:8xH200", time_scale=0.01, slowdown=2)
    assert "--time-scale" in str(err.value)
    # every problem in one error, this one among them
    with pytest.raises(SetupError) as err:
        build_runtime("nope", "emulated:8xH200", time_scale=-1, slowdown=0.5)
    assert "nope" in str(err.value) and "time_scale" in str(err.value) and "slowdown" in str(err.value)
    # a mixed run: the cpu part is slowed, the emulated part is not (built only: nothing starts)
    rt = build_runtime("tiny-sd3,sd3-medium", "cpu:1,emulated:2xH200", slowdown=2.5)
    cpu, emulated = rt.parts
    assert [cpu.engine.workers[g].slowdown for g in range(len(cpu.engine.workers))] == [2.5]
    assert [emulated.engine.workers[g].slowdown for g in range(len(emulated.engine.workers))] == [1.0, 1.0]
    assert [d["slowdown"] for d in rt.engine.snapshot()["devices"]] == [2.5, 1.0, 1.0]
    config = json.loads(rt.engine.run_meta("mixed").config_json)  # the stored run's config
    assert config["slowdown"] == 2.5 and [p["slowdown"] for p in config["parts"]] == [2.5, 1.0]
    # the default: no slowdown at all
    rt = build_runtime("tiny-sd3", "cpu:2")
    assert [d["slowdown"] for d in rt.engine.snapshot()["devices"]] == [1.0, 1.0]


def test_the_stored_config_records_it_and_a_slowed_run_is_not_folded_into_a_profile(tmp_path):
    from tridentcore.bench.fold import fold_run
    from tridentcore.store import ResultsStore

    db = tmp_path / "runs.duckdb"
    for run_id, slowdown in (("plain", 1.0), ("slowed", K)):
        rt = build_runtime("tiny-sd3", "cpu:1", slowdown=slowdown)  # built only: its config, no requests
        meta = rt.engine.run_meta(run_id)
        assert json.loads(meta.config_json)["slowdown"] == slowdown
        ResultsStore(db).write_run(meta, [], [])
    assert fold_run(db, "plain", "cpu").updated == ()  # no measurements, but no refusal
    with pytest.raises(ValueError, match="--slowdown 3"):
        fold_run(db, "slowed", "cpu")


# ------------------------------------------------------------------------------ one worker
def _task(did: int, stage: StageKind, inputs=(), *, size: int = 128, steps: int = 8, end: int | None = None):
    return StageTask(did, stage, "tiny-sd3", (0,), size, size, 1, steps, prompts=("a red cube",),
                     negative_prompts=("",), seeds=(0,), guidances=(None,), start_step=0,
                     end_step=steps if end is None else end, inputs=inputs)


def test_a_slowed_worker_reports_about_k_times_the_wall_time_and_still_stops_at_a_step():
    """Two worker processes, as ``cpu:N`` makes them, one slowed K-fold: the same stages, interleaved,
    take about K times as long there (loose, medians of five: a diffuse >= 2x; a decode >= 1.5x, as
    its wall time also holds the PNG encoding and the hand-over, which the slowdown does not stretch,
    and it lasts only tens of ms on a shared host), and a preempted slowed diffuse stops at a step
    boundary."""
    pytest.importorskip("torch")
    from tridentcore.runtime.process_worker import CpuWorker

    async def main():
        plain, slow = CpuWorker(0, ["tiny-sd3"]), CpuWorker(1, ["tiny-sd3"], slowdown=K)
        await asyncio.gather(plain.start(), slow.start())
        try:
            enc = await plain.run(_task(1, StageKind.ENCODE))
            assert enc.ok, enc.error
            did = 10
            walls: dict[tuple[str, float], list[float]] = {}
            for _ in range(5):
                for worker in (plain, slow):
                    did += 1
                    dif = await worker.run(_task(did, StageKind.DIFFUSE, ((enc.outputs[0], None),)))
                    assert dif.ok and dif.end_step == 8, dif.error
                    did += 1
                    dec = await worker.run(_task(did, StageKind.DECODE, (dif.outputs[0],)))
                    assert dec.ok and dec.outputs[0].encode()[:8] == b"\x89PNG\r\n\x1a\n", dec.error
                    walls.setdefault(("diffuse", worker.slowdown), []).append(dif.wall_s)
                    walls.setdefault(("decode", worker.slowdown), []).append(dec.wall_s)
            # a long slowed diffuse, preempted a little after it began: it stops at a step boundary
            steps = 64
            run = asyncio.ensure_future(slow.run(_task(99, StageKind.DIFFUSE, ((enc.outputs[0], None),),
                                                       steps=steps)))
            seen = []  # the steps the worker reports done while it runs (the API's steps_done)
            while len(set(seen)) < 2 and not run.done():
                await asyncio.sleep(0.02)
                if (k := slow.progress(99)) is not None:
                    seen.append(k)
            slow.preempt(99, 0, 0.0)
            stopped = await run
            assert seen == sorted(seen) and 1 <= seen[0] < seen[-1] < steps, seen
            assert slow.progress(99) is None and stopped.end_step >= seen[-1]  # forgotten once it ended
            return walls, stopped, steps
        finally:
            await asyncio.gather(plain.stop(), slow.stop())

    walls, stopped, steps = asyncio.run(asyncio.wait_for(main(), 300))
    for stage in ("diffuse", "decode"):
        base, slowed = statistics.median(walls[(stage, 1.0)]), statistics.median(walls[(stage, K)])
        print(f"{stage}: median wall {base:.4f} s plain, {slowed:.4f} s at --slowdown {K:g} ({slowed / base:.2f}x)")
        assert slowed >= (2.0 if stage == "diffuse" else 1.5) * base, (stage, walls)
        assert slowed <= 10.0 * base, (stage, walls)  # a sanity bound: it waits K-1 times, not more
    print(f"preempted slowed diffuse: stopped at step {stopped.end_step} of {steps} after {stopped.wall_s:.3f} s")
    assert stopped.ok and 0 < stopped.end_step < steps, stopped


def test_ray_cpu_slots_are_slowed_too():
    """``--backend ray``: the workers of cpu slots carry the slowdown to their actors, whose body (run here
    in this process, without Ray) slows a stage as a worker process does; emulated slots are never slowed."""
    pytest.importorskip("ray")
    pytest.importorskip("torch")
    from tridentcore.runtime.ray_workers import RayWorker, StageActor

    rt = build_runtime("tiny-sd3", "cpu:2", backend="ray", slowdown=K)  # built only: Ray is not started
    assert [rt.engine.workers[g].slowdown for g in range(2)] == [K, K]
    assert RayWorker(0, emulated=True, slowdown=K).slowdown == 1.0
    actor = StageActor(0, ["tiny-sd3"], 1, False, slowdown=1.0)
    enc = actor.run(_task(1, StageKind.ENCODE), False)
    walls: dict[float, list[float]] = {}
    for did in range(2, 8):
        actor.slowdown = 1.0 if did % 2 else K
        dif = actor.run(_task(did, StageKind.DIFFUSE, ((enc.outputs[0], None),)), False)
        assert dif.ok and dif.end_step == 8, dif.error
        walls.setdefault(actor.slowdown, []).append(dif.wall_s)
    assert statistics.median(walls[K]) >= 2.0 * statistics.median(walls[1.0]), walls


# ------------------------------------------------------------------------------ real servers (the check)
SMALL = {"model": "tiny-sd3", "prompt": "a red cube", "size": "64x64", "steps": 4}
LARGE = {"model": "tiny-sd3", "prompt": "a red cube", "size": "128x128", "steps": 8}


def _slowed_burst(policy: str, n: int = 16, warm: int = 2, bursts: int = 3) -> tuple[list[int], int, dict]:
    """A server on ``cpu:2 --slowdown 3``; ``warm`` rounds of one request of each class at a time (with a
    deadline they always meet) teach the calibration the slower devices, then ``bursts`` bursts of ``n``,
    small and large requests in turn (one burst after the other has been answered), under the default
    deadlines. Returns the bursts' status codes, how many of them met their SLO, and ``GET /v1/cluster``."""
    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:2", "--slowdown", f"{K:g}",
                           "--policy", policy], timeout_s=300)
    try:
        for _ in range(warm):
            for body in (SMALL, LARGE):
                (resp,) = burst(server.url, 1, body, slo_ms=600_000)
                assert resp.status_code == 200, resp.text
        got = [r for _ in range(bursts) for r in burst(server.url, n, (SMALL, LARGE))]
        codes = [r.status_code for r in got]
        met = sum(t["met_slo"] for r in got if r.status_code == 200 for t in r.json()["timings"])
        cluster = httpx.get(f"{server.url}/v1/cluster", timeout=10).json()
    finally:
        assert server.stop() == 0
    return codes, met, cluster


@pytest.mark.slow
def test_trident_serves_a_slowed_burst_and_meets_at_least_as_many_slos_as_pipeline_static():
    """The issue's check. The warm-up matters: a deadline is fixed at admission from the cost model as
    calibrated then, and the uncalibrated profile's deadlines are below what one request alone takes
    at K = 3, so without it no request of the burst can meet its SLO under any policy and the
    comparison says nothing. The bursts mix two classes (64 px at 4 steps, 128 px at 8): a burst of
    one class is served first come, first served by both policies alike (level within noise on a
    shared host), a mixed one shows what ordering by deadline and setting hopeless requests aside
    gains (simulated with the same classes and the cpu profile: 16 of 32 met against 12). Three
    bursts per policy, so that a busy host's noise (a request or two per burst) does not decide it;
    where it still says trident met fewer (seen once in many runs on the 2-core host: 14 against 15,
    where other runs gave 21 against 11 and 17 against 12), a second round of both policies is run
    and the sums of the two rounds decide."""
    policies = ("trident", "pipeline-static:degree=1")
    met = dict.fromkeys(policies, 0)
    for round_ in range(2):
        results = {policy: _slowed_burst(policy) for policy in policies}
        for policy, (codes, got, cluster) in results.items():
            met[policy] += got
            assert codes == [200] * 48, (policy, codes)
            assert [d["slowdown"] for d in cluster["devices"]] == [K, K]
            # the calibration saw the slower devices: its factors are about K x what this host takes over
            # the shipped cpu profile (loose bounds: the host's own factor varies with its load, and a
            # quiet CI host ran the diffuse at 0.66 x the profile, a factor of 1.98 at K = 3). Decode reads
            # lowest: this host decodes in about a third of the profile's time (its decode rows were timed
            # with glibc's mmap threshold pinned, profiles/data/README.md). The same warm-up and burst on
            # the 2-core host read decode 0.45 at K = 1 and 1.54 at K = 3, and a CI run 1.03 at K = 3
            # (it failed the bound of 1.2 then): 0.9 still tells K = 3 from K = 1
            factors = {row["stage"]: row["factor"] for row in cluster["calibration"]}
            assert set(factors) == {"encode", "diffuse", "decode"}, (policy, factors)
            assert factors["diffuse"] >= 1.6 and min(factors.values()) >= 0.9, (policy, factors)
        print(f"in-SLO of {round_ + 1} x 3 x 16 at --slowdown {K:g}: {met}")
        if met["trident"] >= met["pipeline-static:degree=1"]:
            break
    assert met["trident"] >= met["pipeline-static:degree=1"], met

