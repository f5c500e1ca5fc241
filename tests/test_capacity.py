"""Capacity ceilings (tridentcore/core/capacity.py): the efficient one and the SLO-aware one.

A tiny profile whose prices are computed by hand, then the shipped mixes: the SLO-aware price at
batch 1 is never below the efficient one, each class's priced latency meets its SLO, and the
commands report both ceilings.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tridentcore.bench.scenario import capacity_rps, ceilings, load_scenario
from tridentcore.bench.spec import RunSpec
from tridentcore.cli import app
from tridentcore.core.capacity import (ClassDemand, efficient_ceiling, pipeline_gpu_s, slo_aware_ceiling,
                                       slo_aware_price)
from tridentcore.core.costmodel import CostModel
from tridentcore.core.slo import make_slo_fn
from tridentcore.core.types import ProfileRow, Shape, StageKind

SHAPE = Shape(512, 512, 1, 10)
MIXES = ("sd3-mixed", "flux-uniform", "video-wan", "image-video")
SCALES = (1.5, 3.0, 5.0)


def _row(stage: StageKind, batch: int, degree: int, ms: float) -> ProfileRow:
    h = w = f = None if stage is StageKind.ENCODE else 512
    if stage is not StageKind.ENCODE:
        f = 1
    return ProfileRow("G", "m", stage, h, w, f, batch, degree, ms, 1.1, 0.1, 1.0, "measured")


@pytest.fixture(scope="module")
def tiny() -> CostModel:
    """Per call, batch 1 / batch 4: encode 100 / 200 ms; a diffuse step 100 / 200 ms on one GPU and
    60 / 110 ms on two; decode 100 / 200 ms. With 10 steps (latency s, GPU-s per request):
    d1 b1 (1.2, 1.2); d2 b1 (0.8, 1.4); d1 b4 (2.4, 0.6); d2 b4 (1.5, 0.65)."""
    rows = [_row(StageKind.ENCODE, 1, 1, 100.0), _row(StageKind.ENCODE, 4, 1, 200.0),
            _row(StageKind.DIFFUSE, 1, 1, 100.0), _row(StageKind.DIFFUSE, 4, 1, 200.0),
            _row(StageKind.DIFFUSE, 1, 2, 60.0), _row(StageKind.DIFFUSE, 4, 2, 110.0),
            _row(StageKind.DECODE, 1, 1, 100.0), _row(StageKind.DECODE, 4, 1, 200.0)]
    return CostModel(rows)


def _demand(slo_s: float | None, weight: float = 1.0) -> ClassDemand:
    return ClassDemand("m", SHAPE, weight, slo_s)


def test_pipeline_gpu_seconds_by_hand(tiny):
    assert pipeline_gpu_s(tiny, "G", "m", SHAPE, 1) == pytest.approx((1.2, 1.2))
    assert pipeline_gpu_s(tiny, "G", "m", SHAPE, 2) == pytest.approx((1.4, 0.8))
    assert pipeline_gpu_s(tiny, "G", "m", SHAPE, 1, 4) == pytest.approx((0.6, 2.4))
    assert pipeline_gpu_s(tiny, "G", "m", SHAPE, 2, 4) == pytest.approx((0.65, 1.5))
    assert tiny.batches("m", StageKind.DIFFUSE, "G") == (1, 4)


@pytest.mark.parametrize("slo_s, degree, batch, gpu_s", [
    (3.0, 1, 4, 0.6),    # everything meets it: the cheapest, a batch of 4 on one GPU
    (2.4, 1, 4, 0.6),    # exactly the batch's latency meets it
    (2.0, 2, 4, 0.65),   # a batch of 4 on one GPU is too slow; on two it fits
    (1.0, 2, 1, 1.4),    # no batch fits; one GPU alone (1.2 s) is too slow
])
def test_slo_aware_price_is_the_cheapest_degree_and_batch_that_meets_the_slo(tiny, slo_s, degree, batch, gpu_s):
    price = slo_aware_price(tiny, "G", _demand(slo_s), max_degree=2)
    assert (price.degree, price.batch) == (degree, batch)
    assert price.gpu_s_each == pytest.approx(gpu_s)
    assert price.latency_s <= slo_s + 1e-9 and not price.turned_away


def test_without_batching_the_slo_aware_price_is_at_least_the_efficient_one(tiny):
    unbatched = slo_aware_price(tiny, "G", _demand(3.0), max_degree=2, batching=False)
    assert (unbatched.degree, unbatched.batch, unbatched.gpu_s_each) == (1, 1, pytest.approx(1.2))
    eff = efficient_ceiling(tiny, "G", [_demand(None)], num_gpus=4, max_degree=2)
    assert eff.rps == pytest.approx(4 / 1.2) and eff.classes[0].degree == 1
    slo = slo_aware_ceiling(tiny, "G", [_demand(3.0)], num_gpus=4, max_degree=2)
    assert slo.rps == pytest.approx(4 / 0.6)  # batching lifts it above the efficient ceiling


def test_ceiling_weights_the_classes_and_turns_away_the_hopeless(tiny):
    both = slo_aware_ceiling(tiny, "G", [_demand(3.0, 3.0), _demand(1.0, 1.0)], num_gpus=4, max_degree=2)
    assert both.mean_gpu_s == pytest.approx((3 * 0.6 + 1 * 1.4) / 4)
    assert both.rps == pytest.approx(5.0) and both.note() == ""
    # 0.5 s is below the fastest no-queue latency at degree <= 2 (0.8 s): turned away, 0 GPU-s, still in the rate
    partly = slo_aware_ceiling(tiny, "G", [_demand(1.0), _demand(0.5)], num_gpus=4, max_degree=2)
    assert partly.turned_away == ("m 512x512",) and partly.classes[1].gpu_s_each == 0.0
    assert partly.rps == pytest.approx(4 / ((1.4 + 0.0) / 2))
    assert "1 of 2 classes" in partly.note() and "turned away" in partly.note()
    nobody = slo_aware_ceiling(tiny, "G", [_demand(0.5)], num_gpus=4, max_degree=2)
    assert nobody.rps == 0.0
    # degree 4 (Amdahl from the degree-2 rows: serial fraction 0.2, 40 ms a step) meets 0.6 s
    wider = slo_aware_price(tiny, "G", _demand(0.6), max_degree=4)
    assert (wider.degree, wider.batch) == (4, 1) and wider.gpu_s_each == pytest.approx(0.2 + 4 * 10 * 0.04)


def test_the_slo_aware_price_needs_an_slo(tiny):
    with pytest.raises(ValueError, match="slo_s"):
        slo_aware_price(tiny, "G", _demand(None), max_degree=2)


@pytest.mark.parametrize("mix", MIXES)
def test_shipped_mixes_slo_aware_against_the_efficient_ceiling(mix):
    for scale in SCALES:
        loaded = load_scenario(RunSpec(profile="h200", cluster="2x8xH200", mix=mix, slo_scale=scale))
        efficient, slo_aware = ceilings(loaded)
        assert efficient.rps == capacity_rps(loaded)
        cost, kind, cluster = loaded.cost, loaded.gpu_kind, loaded.cluster
        slo = make_slo_fn(cost, scale, cluster.gpus_per_node, kind)
        demands = [ClassDemand(c.model, c.shape, c.weight, slo(c.model, c.shape)) for c in loaded.mix.classes]
        unbatched = slo_aware_ceiling(cost, kind, demands, cluster.num_gpus, cluster.gpus_per_node, batching=False)
        assert unbatched.rps <= efficient.rps * (1 + 1e-12), (mix, scale)
        # with batching: never above the same pricing with no deadline at all
        free = [ClassDemand(d.model, d.shape, d.weight, math.inf) for d in demands]
        unbounded = slo_aware_ceiling(cost, kind, free, cluster.num_gpus, cluster.gpus_per_node)
        assert slo_aware.rps <= unbounded.rps * (1 + 1e-12), (mix, scale)
        assert not slo_aware.turned_away  # a scale >= 1 always admits the reference degree
        for demand, price in zip(demands, slo_aware.classes, strict=True):
            assert price.latency_s <= demand.slo_s + 1e-9


def test_batching_lifts_sd3_above_the_efficient_ceiling_at_scale_3():
    """The module docstring's example: sd3-medium 512x512 in a batch of 4 still meets SLO scale 3."""
    efficient, slo_aware = ceilings(load_scenario(RunSpec(profile="h200", cluster="2x8xH200", mix="sd3-mixed",
                                                          slo_scale=3.0)))
    small = slo_aware.classes[0]
    assert small.label == "sd3-medium 512x512" and small.batch == 4
    assert slo_aware.rps > efficient.rps


def test_sweep_reports_both_ceilings():
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", "--rates", "0.5", "--mix", "video-wan", "--duration", "30", "--policies",
                                 "pipeline-static:degree=1"])
    assert result.exit_code == 0, result.output
    assert "capacity ceiling: 0.190 req/s" in result.output and "SLO-aware ceiling: 0.181 req/s" in result.output
    result = runner.invoke(app, ["sweep", "--rates", "0.5", "--mix", "video-wan", "--duration", "30", "--policies",
                                 "pipeline-static:degree=1", "--json"])
    out = json.loads(result.output)
    assert out["slo_aware_capacity_rps"] == pytest.approx(0.181, abs=5e-4)
    assert out["slo_aware_capacity_rps"] < out["capacity_rps"]
