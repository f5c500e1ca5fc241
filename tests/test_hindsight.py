"""The hindsight bound (``tridentcore/core/hindsight.py``): no simulated schedule beats it, it binds
under overload, and its pieces (the options' hull, hopeless requests) do what they say."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from tridentcore.core.cluster import parse_cluster
from tridentcore.core.hindsight import StageOption, _compress, _hull, hindsight_bound, stage_options
from tridentcore.core.metrics import attainment_by_class, min_class_attainment
from tridentcore.core.policy import make_policy
from tridentcore.core.types import Shape, StageKind, class_label
from tridentcore.core.workload import generate_requests, make_slo_fn
from tridentcore.formats.mixes import load_mix
from tridentcore.profiles import load_profile
from tridentcore.sim.engine import simulate

H200 = load_profile("h200").cost_model()
POLICIES = ("pipeline-static:degree=1", "pipeline-static:degree=2", "pipeline-dynamic", "trident-paper", "trident",
            "trident:late=reject", "trident:grow=true")


def _stream(mix: str, rate: float, duration: float, seed: int, scale: float, max_degree: int):
    return generate_requests(load_mix(mix), "poisson", rate, duration, seed, make_slo_fn(H200, scale, max_degree))


@pytest.mark.parametrize(("mix", "cluster", "rate", "seed", "scale"), [
    ("flux-uniform", "1x4xH200", 0.5, 0, 3.0),  # bound 0.85, trident 0.67 (measured when written)
    ("flux-uniform", "1x4xH200", 0.3, 1, 1.5),  # 0.97, trident:late=reject 0.5
    ("sd3-mixed", "1x4xH200", 2.5, 2, 3.0),  # 0.59, trident 0.42
    ("video-wan", "1x8xH200", 0.12, 3, 3.0),  # 1.0, trident 0.78
    ("video-wan", "1x8xH200", 0.08, 3, 3.0),  # 1.0, trident 1.0
])
def test_no_simulated_policy_beats_the_bound(mix, cluster, rate, seed, scale):
    c = parse_cluster(cluster)
    reqs = _stream(mix, rate, 120.0 if mix != "video-wan" else 400.0, seed, scale, c.gpus_per_node)
    bound = hindsight_bound(reqs, H200, "H200", c.num_gpus, c.gpus_per_node)
    best = 0.0
    for spec in POLICIES:
        res = simulate(c, H200, make_policy(spec), reqs, gpu_kind="H200", record=True)
        got = min_class_attainment(res.requests)
        assert got <= bound.min_class + 1e-6, (spec, got, bound)
        for label, (_, a) in attainment_by_class(res.requests).items():  # a class alone may beat the min, not 1
            assert a <= 1.0 and bound.by_class[label][0] == sum(r.request_class == label for r in res.requests)
        best = max(best, got)
    assert best >= 0.4  # some policy serves the stream: the comparison means something


@pytest.mark.parametrize(("mix", "cluster", "rate", "seed"), [
    ("flux-uniform", "1x4xH200", 0.5, 0),  # linear 0.86, integral 0.83, trident 0.67 (when written)
    ("video-wan", "1x8xH200", 0.12, 3),  # 1.0 and 1.0, trident 0.78
])
def test_no_simulated_policy_beats_the_integral_bound(mix, cluster, rate, seed):
    c = parse_cluster(cluster)
    reqs = _stream(mix, rate, 120.0 if mix != "video-wan" else 400.0, seed, 3.0, c.gpus_per_node)
    n, k = c.num_gpus, c.gpus_per_node  # 2 s slots: integral programs of 1 s slots take a minute here
    linear = hindsight_bound(reqs, H200, "H200", n, k, slot_s=2.0)
    integral = hindsight_bound(reqs, H200, "H200", n, k, slot_s=2.0, integral=True)
    assert integral.integral and not linear.integral
    assert integral.found <= integral.min_class + 1e-6 <= linear.min_class + 2e-6
    best = 0.0
    for spec in POLICIES:
        res = simulate(c, H200, make_policy(spec), reqs, gpu_kind="H200", record=True)
        got = min_class_attainment(res.requests)
        assert got <= integral.min_class + 1e-6, (spec, got, integral)
        best = max(best, got)
    assert best >= 0.6


def test_an_integral_bound_finishes_requests_whole():
    """Two requests, one GPU, time for one and a half: the linear bound finishes three quarters of each,
    the integral one a single request."""
    one = _stream("flux-uniform", 0.2, 60.0, 0, 3.0, 1)[0]
    alone_s = sum(H200.latency_s(one.model, stage, one.shape if stage is not StageKind.ENCODE else None, 1, 1, "H200")
                  * (one.shape.steps if stage is StageKind.DIFFUSE else 1) for stage in StageKind)
    pair = [dataclasses.replace(one, id=i, arrival_s=0.0, slo_s=1.5 * alone_s) for i in (0, 1)]
    linear = hindsight_bound(pair, H200, "H200", 1, 1, slot_s=0.25)
    integral = hindsight_bound(pair, H200, "H200", 1, 1, slot_s=0.25, integral=True)
    assert 0.7 < linear.min_class < 0.85
    assert integral.min_class == pytest.approx(0.5, abs=1e-6)


def test_the_bound_binds_under_overload_and_rises_with_the_cluster():
    reqs = _stream("flux-uniform", 3.0, 120.0, 0, 3.0, 8)
    small = hindsight_bound(reqs, H200, "H200", 4, 4)
    large = hindsight_bound(reqs, H200, "H200", 16, 8)
    assert small.min_class < 0.6  # 3 req/s of flux on 4 GPUs is far past what they can do
    assert large.min_class > small.min_class + 0.2
    assert set(small.by_class) == {class_label(r.model, r.shape) for r in reqs}


def test_a_request_that_no_degree_can_meet_counts_as_a_miss():
    reqs = _stream("flux-uniform", 0.2, 60.0, 0, 3.0, 8)
    hopeless = dataclasses.replace(reqs[0], slo_s=0.05)  # below any degree's no-queue latency
    bound = hindsight_bound([hopeless, *reqs[1:]], H200, "H200", 16, 8)
    assert bound.min_class < 1.0
    n, att = bound.by_class[class_label(hopeless.model, hopeless.shape)]
    assert att == pytest.approx((n - 1) / n, abs=1e-4)


def test_the_hull_keeps_only_options_no_mix_of_the_others_beats():
    a = StageOption(1, 1, 10.0, 1.0)  # 10 GPU-s
    b = StageOption(2, 1, 6.0, 2.0)  # 12 GPU-s, faster
    c = StageOption(4, 1, 5.0, 4.0)  # 20 GPU-s, a little faster: above the chord from b to d
    d = StageOption(8, 1, 2.0, 8.0)  # 16 GPU-s, fastest
    slow = StageOption(2, 1, 12.0, 2.0)  # slower and dearer than a
    assert _hull([c, slow, d, a, b]) == [a, b, d]
    opts = stage_options(H200, "H200", "flux-dev", Shape(1024, 1024, 1, 28), 8)
    assert [o.degree for o in opts[StageKind.DIFFUSE]] == sorted(o.degree for o in opts[StageKind.DIFFUSE])
    assert len(opts[StageKind.ENCODE]) == len(opts[StageKind.DECODE]) == 1


def _lowest_share(options, rate):
    """The fewest GPUs a mix of ``options`` (and standing still) holds while progressing at ``rate``."""
    pts = [(0.0, 0.0)] + sorted((1.0 / o.duration_s, o.share) for o in options)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
        if x1 <= rate <= x2 * (1 + 1e-12):
            return y1 + (y2 - y1) * (rate - x1) / (x2 - x1)
    return math.inf


@pytest.mark.parametrize("seed", range(20))
def test_compressed_options_do_at_least_as_well_as_every_real_one(seed):
    rng = random.Random(seed)
    real = []
    for d in (1, 2, 3, 4, 8):  # a diminishing speed-up per degree, a diminishing saving per batch size
        step = 10.0 / d ** rng.uniform(0.5, 0.95)
        for b in range(1, rng.randint(1, 60)):
            real.append(StageOption(d, b, step * b ** rng.uniform(0.6, 1.0), d / b))
    hull = _hull(real)
    small = _compress(hull)
    assert len(small) <= len(hull) and small[-1] == hull[-1]  # the fastest stays a real option
    for o in real:
        assert _lowest_share(small, 1.0 / o.duration_s) <= o.share * (1 + 1e-9)


def test_a_cost_model_that_batches_far_gives_a_short_option_list():
    opts = stage_options(H200, "H200", "sd3-medium", Shape(512, 512, 1, 28), 8)[StageKind.DIFFUSE]
    assert len(opts) <= 24  # from some 260 hull options (batches up to 256 at every degree)
    assert {o.degree for o in opts} == set(range(1, 9))  # a node's every group size, not only powers of 2


def test_bad_input_is_refused_in_words():
    reqs = _stream("flux-uniform", 0.2, 30.0, 0, 3.0, 8)
    with pytest.raises(ValueError, match="at least one request"):
        hindsight_bound([], H200, "H200", 16, 8)
    with pytest.raises(ValueError, match="slot_s and num_gpus"):
        hindsight_bound(reqs, H200, "H200", 16, 8, slot_s=0)


def test_the_stream_ceiling_prices_the_classes_as_often_as_the_stream_has_them():
    from collections import Counter

    from tridentcore.bench.scenario import ceilings, load_scenario, stream_ceiling
    from tridentcore.bench.spec import RunSpec

    loaded = load_scenario(RunSpec(profile="h200", cluster="2x8xH200", mix="video-wan", duration_s=1800.0,
                                   slo_scale=3.0, seed=0))
    mix_ceiling = ceilings(loaded)[1]
    reqs = loaded.requests(0.141)
    price = {c.label: c.gpu_s_each for c in mix_ceiling.classes}
    counts = Counter(class_label(r.model, r.shape) for r in reqs)
    own = stream_ceiling(loaded, 0.141)
    assert own.rps == pytest.approx(16 * len(reqs) / sum(price[k] * n for k, n in counts.items()), rel=1e-9)
    assert counts["wan2.1-1.3b 1280x720x81"] / len(reqs) > 0.28  # this draw is 720p-heavy (README) ...
    assert own.rps < 0.9 * mix_ceiling.rps  # ... so its own ceiling is lower: 0.160 against 0.181 req/s
