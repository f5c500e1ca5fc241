"""One definition per metric: the store's SQL views are primary, ``core.metrics`` mirrors them in
Python for the simulator's loops, and these tests hold the two (and the per-request definitions
``met_slo`` and ``class_label``) equal (docs/metrics.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("duckdb")

from tridentcore.core.cluster import parse_cluster  # noqa: E402
from tridentcore.core.metrics import attainment_by_class, met, summarize  # noqa: E402
from tridentcore.core.policy import make_policy  # noqa: E402
from tridentcore.core.records import RequestRow, RunMeta  # noqa: E402
from tridentcore.core.slo import SLO_TOLERANCE_S, met_slo  # noqa: E402
from tridentcore.core.types import Shape, class_label  # noqa: E402
from tridentcore.core.workload import generate_requests, make_slo_fn  # noqa: E402
from tridentcore.profiles import load_profile  # noqa: E402
from tridentcore.sim.engine import simulate  # noqa: E402
from tridentcore.store import ResultsStore, query_readonly, run_summary  # noqa: E402
from tridentcore.formats.mixes import load_mix  # noqa: E402

METRICS = ("attainment", "mean_s", "p50_s", "p95_s", "p99_s")


def _meta(run_id: str, policy: str = "x") -> RunMeta:
    return RunMeta(run_id, "sim", policy, 0, "h200", "1x8xH200", "test", 1.0, 60.0, 3.0, "{}", created_unix_s=1.0)


def _close(a: float, b: float) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("policy", ["pipeline-static:degree=1", "trident"])
def test_sql_views_equal_python_metrics_on_a_simulated_run(tmp_path: Path, policy: str):
    cost = load_profile("h200").cost_model()
    cluster = parse_cluster("1x8xH200")
    requests = generate_requests(load_mix("image-video"), "poisson", 1.5, 120.0, 3, make_slo_fn(cost, 1.5))
    result = simulate(cluster, cost, make_policy(policy), requests, gpu_kind="H200")
    states = {r.state for r in result.requests}
    assert len(result.requests) > 50 and "done" in states
    met_n = sum(map(met, result.requests))
    assert 0 < met_n < len(result.requests)  # both outcomes present, so attainment is tested

    db = tmp_path / "m.duckdb"
    ResultsStore(db).write_run(_meta("r", policy), result.requests, result.spans, result.placements)
    sql = run_summary(db).iloc[0]
    py = summarize(policy, result.requests, result.spans)
    for key in METRICS:
        assert _close(float(sql[key]), py[key]), (key, sql[key], py[key])
    assert int(sql["met"]) == met_n
    assert _close(float(sql["gpu_s_per_met"]), py["gpu_s_per_met"])

    by_class = query_readonly(db, "SELECT request_class, requests, attainment FROM attainment_by_shape")
    sql_by_class = {r.request_class: (int(r.requests), float(r.attainment)) for r in by_class.itertuples()}
    assert sql_by_class.keys() == attainment_by_class(result.requests).keys()
    for label, (n, att) in attainment_by_class(result.requests).items():
        assert sql_by_class[label][0] == n and _close(sql_by_class[label][1], att), label


def test_met_slo_tolerance_is_the_same_in_sql_and_python(tmp_path: Path):
    d = 10.0
    rows = [
        RequestRow(0, "m", 64, 64, 1, 4, 0.0, d, "done", finish_s=d),  # exactly on time
        RequestRow(1, "m", 64, 64, 1, 4, 0.0, d, "done", finish_s=d + SLO_TOLERANCE_S / 2),  # float noise: met
        RequestRow(2, "m", 64, 64, 1, 4, 0.0, d, "done", finish_s=d + 10 * SLO_TOLERANCE_S),  # late
        RequestRow(3, "m", 64, 64, 1, 4, 0.0, d, "failed", finish_s=1.0),  # failed early: missed
        RequestRow(4, "m", 64, 64, 1, 4, 0.0, d, "rejected", finish_s=None),
        RequestRow(5, "m", 64, 64, 1, 4, 0.0, d, "done", finish_s=None),  # never finished
    ]
    db = tmp_path / "t.duckdb"
    ResultsStore(db).write_run(_meta("t"), rows, [])
    got = query_readonly(db, "SELECT request_id, met_slo FROM requests ORDER BY request_id")
    assert list(got.met_slo) == [met(r) for r in rows] == [True, True, False, False, False, False]
    assert [met_slo(r.state, r.finish_s, r.deadline_s) for r in rows] == [met(r) for r in rows]
    sql = run_summary(db).iloc[0]
    assert _close(float(sql["attainment"]), summarize("x", rows)["attainment"])


def test_class_label_sql_equals_python(tmp_path: Path):
    shapes = [Shape(1024, 1024), Shape(480, 832, 81, 30), Shape(768, 1360, 1, 28), Shape(64, 48, 2, 1)]
    rows = [RequestRow(i, f"model-{i}", s.height, s.width, s.frames, s.steps, 0.0, 1.0, "done", finish_s=0.5)
            for i, s in enumerate(shapes)]
    db = tmp_path / "c.duckdb"
    ResultsStore(db).write_run(_meta("c"), rows, [])
    got = list(query_readonly(db, "SELECT request_class FROM requests ORDER BY request_id").request_class)
    assert got == [class_label(r.model, s) for r, s in zip(rows, shapes, strict=True)]
    assert got == [r.request_class for r in rows]
    assert got[:2] == ["model-0 1024x1024", "model-1 832x480x81"]


def test_met_slo_agrees_on_many_rows_around_the_deadline(tmp_path: Path):
    import random

    rng = random.Random(7)
    rows = []
    for i in range(400):
        deadline = rng.uniform(0.1, 1e4)
        finish = None if rng.random() < 0.05 else deadline + rng.randint(-8, 8) * SLO_TOLERANCE_S / 4
        state = rng.choice(["done", "done", "done", "failed", "rejected", "cancelled"])
        rows.append(RequestRow(i, "m", 64, 64, rng.choice([1, 5]), 4, 0.0, deadline, state, finish_s=finish))
    db = tmp_path / "many.duckdb"
    ResultsStore(db).write_run(_meta("many"), rows, [])
    got = list(query_readonly(db, "SELECT met_slo FROM requests ORDER BY request_id").met_slo)
    assert got == [met_slo(r.state, r.finish_s, r.deadline_s) for r in rows]
    assert 0 < sum(got) < len(got)
