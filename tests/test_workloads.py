"""Workloads: clusters, mixes, arrival processes (common random numbers), SLOs and traces."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tridentcore.core.cluster import (
    GPU_MEMORY_GIB,
    ClusterError,
    ClusterSpec,
    GpuSpec,
    cluster_from_dict,
    parse_cluster,
)
from tridentcore.core.records import RequestRow
from tridentcore.core.types import Shape
from tridentcore.core.workload import (
    ArrivalProcess,
    Mix,
    RequestClass,
    RequestSpec,
    WorkloadError,
    generate_requests,
    make_slo_fn,
    mix_from_dict,
    parse_arrival,
    reference_degree,
    reference_latency_s,
    slo_s,
    unit_arrivals,
)
from tridentcore.profiles import load_profile
from tridentcore.formats.mixes import list_mixes, load_cluster, load_mix
from tridentcore.formats.traces import (
    TraceEntry,
    TraceError,
    entries_from_requests,
    parse_trace,
    read_trace,
    requests_from_trace,
    write_trace,
)

SHIPPED_MIXES = ("flux-uniform", "image-video", "sd3-mixed", "video-wan")


@pytest.fixture(scope="module")
def h200():
    return load_profile("h200").cost_model()


def const_slo(model: str, shape: Shape) -> float:
    return 10.0


def small_mix() -> Mix:
    return Mix(
        "t",
        (
            RequestClass("sd3-medium", 512, 512, 1, 28, 3.0),
            RequestClass("wan2.1-1.3b", 480, 832, 17, 50, 1.0),
        ),
    )


# ---------------------------------------------------------------------- clusters
@pytest.mark.parametrize(
    "text, nodes, per_node, kind",
    [
        ("8xH200", 1, 8, "H200"),
        ("2x8xH200", 2, 8, "H200"),
        ("16x8xL20", 16, 8, "L20"),
        ("1xh100", 1, 1, "H100"),
        (" 4 x 2 x a100 ", 4, 2, "A100"),
    ],
)
def test_parse_cluster_forms(text, nodes, per_node, kind):
    spec = parse_cluster(text)
    assert (spec.nodes, spec.gpus_per_node, spec.kind) == (nodes, per_node, kind)
    assert spec.mem_gib == GPU_MEMORY_GIB[kind]
    assert spec.num_gpus == nodes * per_node == len(spec.gpus)
    assert spec.label == f"{nodes}x{per_node}x{kind}"
    assert parse_cluster(spec.label) == spec


def test_cluster_gpus_are_node_major():
    spec = parse_cluster("2x4xH200")
    assert [g.id for g in spec.gpus] == list(range(8))
    assert [g.node for g in spec.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert spec.gpus[5] == GpuSpec(id=5, node=1, kind="H200", mem_gib=141.0)
    assert spec.gpus_on(1) == spec.gpus[4:]
    assert spec.node_of(3) == 0 and spec.node_of(4) == 1
    assert spec.link_gbps(0, 3) == spec.intra_link_gbps
    assert spec.link_gbps(3, 4) == spec.inter_link_gbps


def test_parse_cluster_memory_overrides():
    assert parse_cluster("8xH200", {"h200": 130.0}).mem_gib == 130.0
    spec = parse_cluster("2xcpu", {"cpu": 16})
    assert spec.kind == "cpu" and spec.mem_gib == 16
    assert GPU_MEMORY_GIB["H200"] == 141.0  # the table itself is untouched


@pytest.mark.parametrize("text", ["junk", "8x", "x8xH200", "2x8x8xH200", "", "8xH200x2"])
def test_parse_cluster_junk_lists_forms_and_kinds(text):
    with pytest.raises(ClusterError) as err:
        parse_cluster(text)
    message = str(err.value)
    assert "8xH200" in message and "2x8xH200" in message
    assert "H100" in message and "L20" in message


def test_parse_cluster_collects_every_problem():
    with pytest.raises(ClusterError) as err:
        parse_cluster("0x0xB200")
    problems = err.value.problems
    assert len(problems) == 3
    assert any("node count" in p for p in problems)
    assert any("GPU count" in p for p in problems)
    assert any("'B200'" in p and "H200" in p for p in problems)


def test_cluster_spec_validation_collects():
    with pytest.raises(ClusterError) as err:
        ClusterSpec(nodes=0, gpus_per_node=True, kind="", mem_gib=-1, inter_link_gbps=float("nan"))
    assert len(err.value.problems) == 5


def test_cluster_from_dict_and_yaml(tmp_path):
    spec = cluster_from_dict({"nodes": 2, "gpus_per_node": 8, "kind": "h200"})
    assert spec == parse_cluster("2x8xH200")
    custom = cluster_from_dict(
        {"nodes": 1, "gpus_per_node": 4, "kind": "B200", "mem_gib": 180, "intra_link_gbps": 900, "inter_link_gbps": 100}
    )
    assert custom.kind == "B200" and custom.mem_gib == 180.0 and custom.intra_link_gbps == 900.0
    assert cluster_from_dict(custom.to_dict()) == custom

    path = tmp_path / "cluster.yaml"
    path.write_text("nodes: 2\ngpus_per_node: 8\nkind: L20\ninter_link_gbps: 25\n")
    loaded = load_cluster(str(path))
    assert (loaded.label, loaded.mem_gib, loaded.inter_link_gbps) == ("2x8xL20", 48.0, 25.0)
    wrapped = tmp_path / "wrapped.yml"
    wrapped.write_text("cluster:\n  nodes: 1\n  gpus_per_node: 8\n  kind: H200\n")
    assert load_cluster(wrapped).label == "1x8xH200"
    assert load_cluster("16x8xL20").num_gpus == 128


def test_cluster_from_dict_names_each_bad_key(tmp_path):
    with pytest.raises(ClusterError) as err:
        cluster_from_dict({"nodes": "two", "gpus": 8, "kind": "B200", "intra_link_gbps": 0})
    text = "\n".join(err.value.problems)
    assert "unknown key(s) gpus;" in text and "nodes must be an integer" in text
    assert "missing key(s) gpus_per_node" in text
    assert "B200" in text and "mem_gib" in text
    assert "intra_link_gbps" in text
    assert len(err.value.problems) == 5

    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: 1\ngpus_per_node: 0\nkind: H200\n")
    with pytest.raises(ClusterError, match=r"bad\.yaml.*gpus_per_node"):
        load_cluster(str(bad))
    with pytest.raises(ClusterError, match="no such file"):
        load_cluster(str(tmp_path / "missing.yaml"))


# ---------------------------------------------------------------------- classes and mixes
def test_request_class_labels_match_records():
    image = RequestClass("sd3-medium", 1024, 1024, 1, 28, 1.0)
    video = RequestClass("wan2.1-1.3b", 480, 832, 81, 50, 1.0)
    assert image.label == "sd3-medium 1024x1024"
    assert video.label == "wan2.1-1.3b 832x480x81"  # WIDTHxHEIGHTxFRAMES
    assert video.shape == Shape(480, 832, 81, 50)
    for cls in (image, video):
        spec = RequestSpec(0, cls.model, "p", cls.shape, 1, None, 5.0, 2.0)
        row = RequestRow(0, cls.model, cls.height, cls.width, cls.frames, cls.steps, 2.0, 7.0, "done")
        assert spec.request_class == cls.label == row.request_class
        assert spec.deadline_s == 7.0


def test_request_spec_validation_collects():
    with pytest.raises(WorkloadError) as err:
        RequestSpec(-1, "", "p", Shape(8, 8), 1.5, -2.0, 0.0, -1.0)
    assert len(err.value.problems) == 6


def test_mix_validation():
    with pytest.raises(WorkloadError, match="at least one class"):
        Mix("empty", ())
    with pytest.raises(WorkloadError, match="duplicate class 'm 8x8'"):
        Mix("dup", (RequestClass("m", 8, 8), RequestClass("m", 8, 8, weight=2)))
    with pytest.raises(WorkloadError) as err:
        RequestClass("m", 0, 8, 1, 28, 0.0)
    assert len(err.value.problems) == 2
    mix = small_mix()
    assert mix.probabilities() == {"sd3-medium 512x512": 0.75, "wan2.1-1.3b 832x480x17": 0.25}
    rng = random.Random(3)
    draws = [mix.choose(rng).model for _ in range(4000)]
    assert 0.72 < draws.count("sd3-medium") / len(draws) < 0.78


@pytest.mark.parametrize("name", SHIPPED_MIXES)
def test_shipped_mixes_load_and_are_answerable(name, h200):
    mix = load_mix(name)
    assert mix.name == name
    assert mix.description
    for cls in mix.classes:
        shape = cls.shape
        for stage in ("encode", "diffuse", "decode"):
            assert h200.latency_s(cls.model, stage, shape, 1, 1) > 0
        assert reference_latency_s(h200, cls.model, shape) > 0


def test_shipped_mix_contents():
    assert set(SHIPPED_MIXES) <= set(list_mixes())
    squares = [512, 768, 1024, 1536, 2048]
    for name, model in (("flux-uniform", "flux-dev"), ("sd3-mixed", "sd3-medium")):
        mix = load_mix(name)
        assert [(c.model, c.height, c.width, c.frames, c.steps) for c in mix.classes] == [
            (model, s, s, 1, 28) for s in squares
        ]
        assert len({c.weight for c in mix.classes}) == 1
    video = load_mix("video-wan")
    assert [(c.height, c.width, c.frames, c.steps) for c in video.classes] == [
        (480, 832, 17, 50), (480, 832, 33, 50), (480, 832, 81, 50), (720, 1280, 81, 50),
    ]  # fmt: skip
    both = load_mix("image-video")
    p = both.probabilities()
    assert math.isclose(sum(v for k, v in p.items() if k.startswith("sd3-medium")), 0.8)
    assert math.isclose(sum(v for k, v in p.items() if k.startswith("wan2.1-1.3b")), 0.2)
    assert len(both.classes) == 9


def test_bad_mix_yaml_names_file_index_and_field(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(
        "name: broken\n"
        "classes:\n"
        "  - {model: sd3-medium, height: 512, width: 512, steps: 28}\n"
        "  - {model: sd3-medium, height: big, width: 512, steps: 28, weight: -1}\n"
        "  - {model: sd3-medium, width: 512, steps: 28, colour: red}\n"
    )
    with pytest.raises(WorkloadError) as err:
        load_mix(str(path))
    message = str(err.value)
    assert "broken.yaml" in message
    assert "classes[1].height" in message and "'big'" in message
    assert "classes[1].weight" in message
    assert "classes[2]: unknown key(s) colour" in message
    assert "classes[2]: missing key(s) height" in message

    dup = tmp_path / "dup.yaml"
    dup.write_text("name: d\nclasses:\n  - {model: m, height: 8, width: 8, steps: 2}\n  - {model: m, height: 8, width: 8, steps: 2}\n")
    with pytest.raises(WorkloadError, match=r"dup\.yaml.*classes\[1\]: duplicate"):
        load_mix(str(dup))
    notyaml = tmp_path / "x.yaml"
    notyaml.write_text("name: [unclosed\n")
    with pytest.raises(WorkloadError, match=r"x\.yaml: not valid YAML"):
        load_mix(str(notyaml))
    with pytest.raises(WorkloadError, match="shipped mixes: .*sd3-mixed"):
        load_mix("no-such-mix")
    with pytest.raises(WorkloadError, match="classes: must be a non-empty list"):
        mix_from_dict({"name": "x", "classes": []})
    # a file without `name:` is named after the file (it was an error that hid the file's other problems)
    unnamed = tmp_path / "my-mix.yaml"
    unnamed.write_text("classes:\n  - {model: m, height: 8, width: 8, steps: 2}\n")
    assert load_mix(str(unnamed)).name == "my-mix"
    with pytest.raises(WorkloadError, match="name: must be a string"):
        mix_from_dict({"classes": [{"model": "m", "height": 8, "width": 8, "steps": 2}]})  # (no file: no default)


# ---------------------------------------------------------------------- arrival processes
def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def _cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def test_poisson_mean_and_cv():
    rate = 4.0
    times = [t / rate for t in unit_arrivals("poisson", 20_001, random.Random(11))]
    gaps = _gaps(times)
    assert len(gaps) == 20_000
    assert times[0] == 0.0
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    assert _cv(gaps) == pytest.approx(1.0, abs=0.05)


def test_gamma_cv():
    gaps = _gaps(unit_arrivals("gamma:cv=4", 20_001, random.Random(5)))
    assert statistics.fmean(gaps) == pytest.approx(1.0, rel=0.15)
    assert _cv(gaps) == pytest.approx(4.0, rel=0.2)
    regular = _gaps(unit_arrivals("gamma:cv=0.5", 20_001, random.Random(5)))
    assert _cv(regular) == pytest.approx(0.5, rel=0.05)


def test_a_bursty_gamma_stream_holds_the_requests_its_rate_asks_for():
    """Outside test: the arrival at 0 began a gap, so T unit times held about T + (K**2 + 1) / 2
    arrivals (cv=30 at 0.5 req/s for 600 s: 689 requests on average for 300 asked). The first gap is
    now the stationary stream's: 1 + T on average, whatever K."""
    for cv in (10.0, 0.5):
        counts = [len(unit_arrivals(f"gamma:cv={cv:g}", 100.0, random.Random(seed))) for seed in range(1000)]
        assert statistics.fmean(counts) == pytest.approx(101.0, abs=8.0), (cv, statistics.fmean(counts))


def test_constant_is_exact():
    assert unit_arrivals("constant", 5, random.Random(0)) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert unit_arrivals("constant", 3.0, random.Random(0)) == [0.0, 1.0, 2.0]  # a float is a horizon
    requests = generate_requests(small_mix(), "constant", 4.0, 2.0, 0, const_slo)
    assert [r.arrival_s for r in requests] == [i / 4 for i in range(8)]


def test_bursts_keep_the_mean_rate():
    times = unit_arrivals("bursts:size=3", 9, random.Random(0))
    assert times == [0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 6.0, 6.0, 6.0]
    requests = generate_requests(small_mix(), "bursts:size=4", 2.0, 10.0, 0, const_slo)
    assert len(requests) == 20
    assert sorted({r.arrival_s for r in requests}) == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_bursts_are_whole_and_less_than_one_is_refused():
    """Outside test: ``bursts:size=1000`` at 0.01/s over 10 s simulated 1000 requests (0.1 asked),
    and ``size=100000`` at 0.5/s over 10 s one burst of 100,000, past the size guard (it counted
    rate x duration). Less than one burst's worth is refused; the guard counts whole bursts."""
    from tridentcore.core.defaults import MAX_REQUESTS
    from tridentcore.core.workload import generated_size_problems

    for size, rate, duration in ((1000, 0.01, 10.0), (100_000, 0.5, 10.0), (100, 0.5, 100.0)):
        with pytest.raises(WorkloadError, match=rf"arrival: bursts:size={size} at {rate:g}/s over {duration:g} s: "
                                                r"rate x duration is [\d.]+ requests, less than one burst"):
            generate_requests(small_mix(), f"bursts:size={size}", rate, duration, 0, const_slo)
    # whole bursts: 2.5 bursts' worth sends 3 (the first at 0 s), and the guard counts those
    assert len(generate_requests(small_mix(), "bursts:size=4", 1.0, 10.0, 0, const_slo)) == 12
    assert MAX_REQUESTS == 100_000
    (field, msg), = generated_size_problems(990.01, 100.0, "bursts:size=3000")  # 99,001 asked: 34 bursts
    assert field == "rate" and "99001 requests expected (102000 in whole bursts of 3000)" in msg
    assert generated_size_problems(990.0, 100.0, "bursts:size=3000") == []  # 99,000: 33 bursts
    (field, msg), = generated_size_problems(1e300, 600.0, "bursts:size=3")  # a number too large to spell out
    assert field == "rate" and "= 6e+302 requests expected;" in msg and len(msg) < 200, msg
    for arrival in (None, "poisson", "bursts:size=10"):  # past a float's range (outside test 99: a traceback)
        (field, msg), = generated_size_problems(1e308, 600.0, arrival)
        assert field == "rate" and "= more than 1.8e+308 requests expected;" in msg, msg
    # other processes are not bursts: one request at 0 s whatever the rate
    assert len(generate_requests(small_mix(), "poisson", 0.01, 1.0, 0, const_slo)) == 1
    assert generated_size_problems(0.01, 1.0, "bursts:size=1") == []


def test_parse_arrival():
    assert parse_arrival("poisson") == ArrivalProcess("poisson")
    assert parse_arrival("Gamma:cv=2.5") == ArrivalProcess("gamma", cv=2.5)
    assert parse_arrival("bursts:size=8").size == 8
    for text in ("poisson", "constant", "gamma:cv=4", "bursts:size=8"):
        assert parse_arrival(text).label == text
    for bad in ("uniform", "gamma", "gamma:cv=0", "gamma:cv=x", "bursts:size=2.5", "poisson:cv=1", "gamma:k=2",
                # a tiny cv divided by zero (1e-300) or hung drawing gaps (1e-160); a huge one overflowed
                "gamma:cv=1e-300", "gamma:cv=1e-160", "gamma:cv=0.0009", "gamma:cv=1e300", "gamma:cv=inf"):
        with pytest.raises(WorkloadError, match="valid forms: poisson, constant, gamma:cv=K"):
            parse_arrival(bad)
    with pytest.raises(WorkloadError) as got:  # the valid forms are a hint, not a second problem
        parse_arrival("bursts:size=0")
    assert list(got.value.problems) == [f"size must be an integer in 1..{100_000} (got '0'); valid forms: "
                                  f"poisson, constant, gamma:cv=K (0.001 <= K <= 1000), bursts:size=N (1 <= N <= 100000)"]
    with pytest.raises(WorkloadError, match=r"cv must be a number in \[0.001, 1000\] \(got '1e-160'\)"):
        parse_arrival("gamma:cv=1e-160")
    for edge in ("gamma:cv=0.001", "gamma:cv=1000"):  # the bounds draw gaps at once
        assert len(unit_arrivals(edge, 1000, random.Random(1))) == 1000


# ---------------------------------------------------------------------- generate_requests
@pytest.mark.parametrize("arrival", ["poisson", "gamma:cv=3", "bursts:size=5", "constant"])
def test_common_random_numbers_across_rates(arrival):
    mix = load_mix("image-video")
    one = generate_requests(mix, arrival, 1.0, 200.0, 42, const_slo)
    two = generate_requests(mix, arrival, 2.0, 200.0, 42, const_slo)
    assert len(two) > len(one) > 100
    for a, b in zip(one, two):
        assert b.arrival_s == a.arrival_s / 2
        assert (b.id, b.model, b.shape, b.prompt, b.seed, b.slo_s) == (a.id, a.model, a.shape, a.prompt, a.seed, a.slo_s)
    # the same contents under another arrival process (a separate stream draws the gaps)
    other = generate_requests(mix, "constant", 1.0, 200.0, 42, const_slo)
    assert [(r.model, r.shape, r.seed) for r in other[:50]] == [(r.model, r.shape, r.seed) for r in one[:50]]


def test_same_seed_same_list():
    mix = load_mix("sd3-mixed")
    first = generate_requests(mix, "poisson", 3.0, 60.0, 7, const_slo)
    assert first == generate_requests(mix, "poisson", 3.0, 60.0, 7, const_slo)
    assert first != generate_requests(mix, "poisson", 3.0, 60.0, 8, const_slo)
    assert len({r.prompt for r in first}) > 5 and len({r.seed for r in first}) == len(first)


def test_generate_requests_uses_slo_fn_and_validates(h200):
    slo_fn = make_slo_fn(h200, slo_scale=2.0)
    requests = generate_requests(load_mix("video-wan"), "poisson", 0.5, 60.0, 1, slo_fn)
    for r in requests:
        assert r.slo_s == pytest.approx(2.0 * reference_latency_s(h200, r.model, r.shape))
        assert r.deadline_s == r.arrival_s + r.slo_s
    with pytest.raises(WorkloadError) as err:
        generate_requests(small_mix(), "nope", 0.0, -1.0, 1.5, const_slo)
    assert len(err.value.problems) >= 4


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(min_value=0.05, max_value=50.0),
    duration=st.floats(min_value=0.1, max_value=60.0),
    seed=st.integers(min_value=0, max_value=2**32),
    arrival=st.sampled_from(["poisson", "constant", "gamma:cv=0.3", "gamma:cv=5", "bursts:size=1", "bursts:size=7"]),
)
def test_generated_requests_property(rate, duration, seed, arrival):
    if arrival == "bursts:size=7" and rate * duration < 7:  # less than one burst: refused (the next test)
        with pytest.raises(WorkloadError, match="less than one burst"):
            generate_requests(small_mix(), arrival, rate, duration, seed, const_slo)
        return
    requests = generate_requests(small_mix(), arrival, rate, duration, seed, const_slo)
    times = [r.arrival_s for r in requests]
    assert times == sorted(times)
    assert all(0.0 <= t < duration for t in times)
    assert [r.id for r in requests] == list(range(len(requests)))
    assert requests and requests[0].arrival_s == 0.0  # every process starts with an arrival at 0


# ---------------------------------------------------------------------- SLO reference latency
@pytest.mark.parametrize(
    "model, shape, expected_degree",
    [
        ("sd3-medium", Shape(2048, 2048, 1, 28), 2),
        ("sd3-medium", Shape(1024, 1024, 1, 28), 1),
        ("wan2.1-1.3b", Shape(720, 1280, 81, 50), 4),
    ],
)
def test_reference_latency_uses_largest_efficient_degree(h200, model, shape, expected_degree):
    efficiency = {d: h200.parallel_efficiency(model, "diffuse", shape, d) for d in (2, 4, 8)}
    # the hand check: the expected degree qualifies, the next one up does not
    if expected_degree > 1:
        assert efficiency[expected_degree] >= 0.8
    assert efficiency[expected_degree * 2] < 0.8
    assert reference_degree(h200, model, shape) == expected_degree
    by_hand = (
        h200.latency_s(model, "encode", shape, 1, 1)
        + shape.steps * h200.latency_s(model, "diffuse", shape, 1, expected_degree)
        + h200.latency_s(model, "decode", shape, 1, 1)
    )
    assert reference_latency_s(h200, model, shape) == pytest.approx(by_hand, rel=1e-12)
    assert slo_s(h200, model, shape) == pytest.approx(3.0 * by_hand, rel=1e-12)
    assert slo_s(h200, model, shape, slo_scale=1.5) == pytest.approx(1.5 * by_hand, rel=1e-12)


def test_reference_degree_respects_max_degree(h200):
    shape = Shape(720, 1280, 81, 50)
    assert reference_degree(h200, "wan2.1-1.3b", shape, max_degree=2) == 2
    assert reference_degree(h200, "wan2.1-1.3b", shape, max_degree=1) == 1
    assert reference_degree(h200, "wan2.1-1.3b", shape, efficiency=0.5) == 8
    single = reference_latency_s(h200, "wan2.1-1.3b", shape, max_degree=1)
    assert single > reference_latency_s(h200, "wan2.1-1.3b", shape)


# ---------------------------------------------------------------------- traces
def test_trace_jsonl_round_trip(tmp_path):
    entries = [
        TraceEntry(0.0, "sd3-medium", 1024, 1024, 1, 28, "a cat"),
        TraceEntry(0.125, "wan2.1-1.3b", 480, 832, 81, 50, 'quotes " and \\ and ünïcode', seed=9,
                   negative_prompt="blurry", guidance=5.0),
        TraceEntry(1 / 3, "flux-dev", 512, 512, 1, 28, "", seed=0),
    ]  # fmt: skip
    path = write_trace(entries, tmp_path / "t.jsonl")
    assert read_trace(path) == entries
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"t": 0.0, "model": "sd3-medium", "height": 1024, "width": 1024, "frames": 1, "steps": 28, "prompt": "a cat"}
    generated = generate_requests(small_mix(), "poisson", 5.0, 5.0, 3, const_slo)
    replayed = requests_from_trace(read_trace(write_trace(entries_from_requests(generated), tmp_path / "g.jsonl")), const_slo, 0)
    assert replayed == generated


def test_jsonl_defaults_and_errors(tmp_path):
    ok = parse_trace('# comment\n\n{"t": 1, "height": 64, "width": 64, "steps": 2}\n', default_model="tiny-sd3")
    assert ok == [TraceEntry(1.0, "tiny-sd3", 64, 64, 1, 2, "")]
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"t": 0, "model": "m", "height": 8, "width": 8, "steps": 2}\n'
        '{"t": -1, "model": "m", "height": 1.5, "width": 8, "steps": 2, "colour": 1}\n'
        "not json\n"
        "{broken\n"
    )
    with pytest.raises(TraceError) as err:
        read_trace(path)
    message = str(err.value)
    assert str(path) in message
    assert "line 2: unknown key(s) colour" in message and "line 2: t:" in message and "line 2: height:" in message
    assert "line 3: expected a JSON object" in message
    assert "line 4: not valid JSON" in message
    with pytest.raises(TraceError, match="line 1: missing model"):
        parse_trace('{"t": 0, "height": 8, "width": 8, "steps": 2}')
    with pytest.raises(TraceError, match="line 2: unknown trace format"):
        parse_trace("\nhello")


PAPER_LINES = (
    "Request(request_id=12, timestamp=3.5, height=1024, width=1024, num_frames=1, "
    "prompt='a cat, \"quoted\"', negative_prompt='', num_inference_steps=28)\n"
    "Request(request_id=13, timestamp=4.25, height=480, width=832, num_frames=81, "
    "prompt=\"it's a \\\"dog\\\", sitting=yes)\", negative_prompt='blurry, low', num_inference_steps=50)\n"
    "Request(request_id=14, timestamp=5, height=512, width=512, num_frames=1, "
    "prompt='Request(x=1), \\'nested\\' ,', negative_prompt=None, num_inference_steps=4, extra=[1, 2]),\n"
)


def test_paper_trace_lines_parse(tmp_path):
    path = tmp_path / "paper.txt"
    path.write_text(PAPER_LINES)
    entries = read_trace(path, default_model="sd3-medium")
    assert [e.t for e in entries] == [3.5, 4.25, 5.0]
    assert entries[0].prompt == 'a cat, "quoted"'
    assert entries[1].prompt == 'it\'s a "dog", sitting=yes)'
    assert entries[1].negative_prompt == "blurry, low"
    assert entries[2].prompt == "Request(x=1), 'nested' ,"
    assert entries[2].negative_prompt == ""
    assert [(e.height, e.width, e.frames, e.steps) for e in entries] == [
        (1024, 1024, 1, 28), (480, 832, 81, 50), (512, 512, 1, 4),
    ]  # fmt: skip
    assert {e.model for e in entries} == {"sd3-medium"}
    requests = requests_from_trace(entries, const_slo, seed=1)
    assert [r.arrival_s for r in requests] == [3.5, 4.25, 5.0]
    assert requests_from_trace(entries, const_slo, seed=1, start_at_zero=True)[1].arrival_s == 0.75


def test_paper_trace_errors(tmp_path):
    with pytest.raises(TraceError, match=r"^<trace>: line 1: this Request\(\.\.\.\) line names no model \(and 2 more "
                                         r"lines\): the paper's traces do not; give one \(--model to trident"):
        parse_trace(PAPER_LINES)
    # a line that names its model needs no default (outside test: it was refused all the same)
    named = "Request(timestamp=0, height=64, width=64, num_inference_steps=8, model='tiny-sd')\n"
    assert [e.model for e in parse_trace(named)] == ["tiny-sd"]
    assert [e.model for e in parse_trace(named, default_model="tiny-sd3")] == ["tiny-sd"]
    with pytest.raises(TraceError, match="^<trace>: line 2: this Request"):
        parse_trace(named + "Request(timestamp=1, height=64, width=64, num_inference_steps=8)\n")
    path = tmp_path / "paper_bad.txt"
    path.write_text(
        PAPER_LINES.splitlines()[0] + "\n"
        "Request(timestamp=1.0, height=8, width=8, prompt=__import__('os').system('true'), num_inference_steps=2)\n"
        "Request(timestamp=2.0, height=8, width=8, prompt='x'\n"
        "Request(timestamp=3.0, width=8, prompt='x', num_inference_steps=2)\n"
        '{"t": 1}\n'
        "Other(timestamp=1)\n"
    )
    with pytest.raises(TraceError) as err:
        read_trace(path, default_model="m")
    message = str(err.value)
    assert str(path) in message
    assert "line 2: prompt: not a literal value" in message
    assert "line 3: cannot parse" in message
    assert "line 4: missing height" in message
    assert "line 5: expected a Request(...) line" in message
    assert "line 6: expected a Request(...) line" in message


def test_requests_from_trace_seeds_and_order():
    entries = [
        TraceEntry(2.0, "m", 8, 8, 1, 2, "b"),
        TraceEntry(1.0, "m", 8, 8, 1, 2, "a", seed=5),
        TraceEntry(3.0, "m", 8, 8, 1, 2, "c"),
    ]
    requests = requests_from_trace(entries, const_slo, seed=4)
    assert [r.prompt for r in requests] == ["a", "b", "c"]
    assert [r.id for r in requests] == [0, 1, 2]
    assert requests[0].seed == 5
    assert requests == requests_from_trace(entries, const_slo, seed=4)
    with_seed = requests_from_trace([TraceEntry(2.0, "m", 8, 8, 1, 2, "b", seed=1), *entries[1:]], const_slo, seed=4)
    assert with_seed[2].seed == requests[2].seed  # one draw per entry: others are unaffected


# ---------------------------------------------------------------------- import rules
def test_workloads_import_stays_light():
    code = (
        "import sys, json\n"
        "import tridentcore.formats.mixes, tridentcore.formats.traces, tridentcore.core.workload, tridentcore.core.cluster\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'requests', 'numpy')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
