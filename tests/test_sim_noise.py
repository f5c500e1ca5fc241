"""A simulator that is not told the future (issue 11, point 4): actual stage times are the cost
model's predictions x a seeded lognormal factor (and a per-stage bias), while the policy plans with
the predictions. Off, the simulator is exactly as before."""

from __future__ import annotations

import math
import statistics

import pytest

from tridentcore.bench.scenario import load_scenario, run_one
from tridentcore.bench.spec import RunSpec, RunSpecError
from tridentcore.bench.spec_schema import validate_spec
from tridentcore.core.cluster import parse_cluster
from tridentcore.core.policy import make_policy
from tridentcore.core.types import Shape
from tridentcore.core.workload import RequestSpec, make_slo_fn
from tridentcore.profiles import load_profile
from tridentcore.sim.engine import StageNoise, simulate

H200 = load_profile("h200").cost_model()
LOADED = load_scenario(RunSpec(mix="image-video", duration_s=900, seed=2))


def _run(policy: str, noise: StageNoise | None, rate: float = 0.5):
    return simulate(LOADED.cluster, LOADED.cost, make_policy(policy), LOADED.requests(rate), gpu_kind=LOADED.gpu_kind,
                    expected=LOADED.expected(), noise=noise)


def _ratios(spans, stage: str) -> list[float]:
    """Actual over predicted compute time of the stage's whole dispatches (no weights loaded)."""
    out = []
    for s in spans:
        if s.stage == stage and s.outcome == "done" and s.load_s == 0 and s.transfer_s == 0 and s.predicted_s > 0:
            out.append((s.ended_s - s.started_s) / s.predicted_s)
    return out


def test_off_is_exactly_the_old_simulator():
    plain = _run("trident", None)
    for noise in (StageNoise(), StageNoise(sigma=0.0, bias=(("decode", 1.0),), seed=5)):
        assert _run("trident", noise).spans == plain.spans


@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_stage_times_stray_by_the_asked_spread_around_the_prediction(sigma):
    res = _run("pipeline-static:degree=1", StageNoise(sigma=sigma, seed=1))
    ratios = _ratios(res.spans, "encode") + _ratios(res.spans, "decode")
    assert len(ratios) > 200
    logs = [math.log(r) for r in ratios]
    assert statistics.pstdev(logs) == pytest.approx(sigma, rel=0.2)
    assert statistics.fmean(ratios) == pytest.approx(1.0, abs=0.05)  # mean 1: unbiased
    assert {r.state for r in res.requests} == {"done"}


def test_a_stage_bias_shifts_only_that_stage():
    res = _run("pipeline-static:degree=1", StageNoise(sigma=0.0, bias=(("decode", 2.0),), seed=1))
    assert statistics.median(_ratios(res.spans, "decode")) == pytest.approx(2.0, rel=1e-6)
    assert statistics.median(_ratios(res.spans, "encode")) == pytest.approx(1.0, rel=1e-6)


def test_same_seed_same_run_other_seed_other_run():
    a = _run("trident", StageNoise(sigma=0.3, seed=4))
    b = _run("trident", StageNoise(sigma=0.3, seed=4))
    c = _run("trident", StageNoise(sigma=0.3, seed=5))
    assert a.spans == b.spans and a.spans != c.spans


@pytest.mark.parametrize("seed", range(4))
def test_preemption_under_noise_keeps_every_request_whole(seed):
    """trident pauses a long video for an urgent image; with noisy step times the pause lands on a
    step boundary the diffuse actually reaches, and the pieces still cover every step once."""
    cluster = parse_cluster("1x1xH200")
    slo = make_slo_fn(H200, 3.0, 1)
    video = RequestSpec(0, "wan2.1-1.3b", "v", Shape(480, 832, 81, 50), 0, None, 1e6, 0.0)
    img = Shape(512, 512, 1, 28)
    images = [RequestSpec(i, "sd3-medium", "i", img, i, None, slo("sd3-medium", img), 10.0 * i) for i in range(1, 5)]
    res = simulate(cluster, H200, make_policy("trident"), [video, *images], noise=StageNoise(sigma=0.3, seed=seed))
    assert {r.state for r in res.requests} == {"done"}
    pieces = sorted((s.start_step, s.end_step, s.outcome) for s in res.spans if s.request_id == 0 and s.stage == "diffuse")
    assert pieces[0][0] == 0 and pieces[-1][1] == 50
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert any(p[2] == "preempted" for p in pieces)


def test_the_run_spec_carries_the_noise():
    spec = RunSpec(mix="image-video", rate=0.5, duration_s=300, noise_sigma=0.2, noise_bias=(("decode", 1.5),))
    again = validate_spec(spec.config())
    assert again == spec and again.noise_bias == (("decode", 1.5),)
    with pytest.raises(RunSpecError) as err:
        validate_spec(spec.replace(noise_sigma=-1.0, noise_bias=(("vae", 2.0),)).config())
    assert "--noise" in str(err.value) and "--bias" in str(err.value)
    loaded = load_scenario(spec)
    noisy, quiet = run_one(loaded, "trident", 0.5), run_one(load_scenario(spec.replace(noise_sigma=0.0,
                                                                                        noise_bias=())), "trident", 0.5)
    assert noisy.spans != quiet.spans


# ------------------------------------------------------------------------------ trident under noise
TIGHT = load_scenario(RunSpec(mix="sd3-mixed", duration_s=900, slo_scale=1.5, seed=0))


def _tight(policy: str, sigma: float, rate: float = 0.1):
    return simulate(TIGHT.cluster, TIGHT.cost, make_policy(policy), TIGHT.requests(rate), gpu_kind=TIGHT.gpu_kind,
                    expected=TIGHT.expected(), noise=StageNoise(sigma=sigma, seed=0))


def test_trident_without_noise_plans_exactly_as_predicted():
    """Stage times as predicted: the observed spread stays 0, so the noise margin changes nothing."""
    assert _tight("trident", 0.0, 1.0).spans == _tight("trident:noise_z=0", 0.0, 1.0).spans


def test_trident_gives_a_request_the_gpus_that_cover_a_slow_run_while_they_are_spare():
    """SLO 1.5x its reference latency and stage times 30 % noisy: at the efficient degree about one
    request in twelve runs past its deadline, whoever schedules it. With spare GPUs, trident picks
    the degree that meets the deadline even with the noise it has seen (exp(2 sigma)). (Widening,
    ``wide``, also covers it at this light load, so it is off here: the noise margin alone must.)"""
    from tridentcore.core.metrics import min_class_attainment

    plain, margin = _tight("trident:noise_z=0,wide=false", 0.3), _tight("trident:wide=false", 0.3)
    assert min_class_attainment(_tight("trident", 0.3).requests) >= 0.97
    assert min_class_attainment(plain.requests) < 0.9
    assert min_class_attainment(margin.requests) >= 0.97
    degree = {s.request_id: s.degree for s in plain.spans if s.stage == "diffuse"}
    assert any(s.degree > degree[s.request_id] for s in margin.spans if s.stage == "diffuse")


def test_a_late_request_runs_on_an_idle_gpu_at_once():
    """A request that cannot meet its deadline is served after the others, but an idle GPU takes it in
    the same pass: it does not wait for the next, unrelated event."""
    cluster = parse_cluster("1x1xH200")
    shape = Shape(512, 512, 1, 28)
    late = RequestSpec(0, "sd3-medium", "i", shape, 0, None, 0.01, 0.0)  # hopeless from the start
    res = simulate(cluster, H200, make_policy("trident"), [late])
    spans = sorted(res.spans, key=lambda s: s.started_s)
    assert [s.stage for s in spans] == ["encode", "diffuse", "decode"]
    assert all(b.started_s == pytest.approx(a.ended_s) for a, b in zip(spans, spans[1:]))
    assert res.requests[0].finish_s == pytest.approx(spans[-1].ended_s) and spans[-1].ended_s < 5.0


def test_under_load_trident_buys_the_noise_margin_only_where_it_is_cheap():
    """A busy cluster of long videos (their diffuse scales almost perfectly to 2 GPUs): under load the
    predictions decide which degrees are feasible, and the one that also covers the noise is taken
    when it costs at most noise_cost (1.1) x the GPU-seconds (noise_cost=1: never)."""
    from collections import Counter

    loaded = load_scenario(RunSpec(mix="video-wan", duration_s=900, slo_scale=5.0, noise_sigma=0.3))
    degrees = {}
    for policy in ("trident", "trident:noise_cost=1"):
        res = run_one(loaded, policy, 0.16)
        degrees[policy] = Counter(s.degree for s in res.spans if s.stage == "diffuse" and s.start_step == 0)
    assert degrees["trident"][2] > 2 * degrees["trident:noise_cost=1"][2]
    assert degrees["trident"][1] < degrees["trident:noise_cost=1"][1]
