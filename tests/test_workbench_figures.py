"""Workbench figures and data helpers on small synthetic data (no Streamlit runtime)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import pytest

from tridentcore.core.records import GpuSample, PlacementRow, RequestRow, SpanRow
from tridentcore.core.types import ProfileRow, StageKind
from workbench import data, figures


# ------------------------------------------------------------------------------ factories
def _requests() -> pd.DataFrame:
    rows = [
        RequestRow(0, "sd3-medium", 512, 512, 1, 28, 0.0, 10.0, "done", finish_s=4.0),
        RequestRow(1, "sd3-medium", 512, 512, 1, 28, 0.5, 10.5, "done", finish_s=12.0),
        RequestRow(2, "wan2.1-1.3b", 480, 832, 17, 50, 1.0, 30.0, "rejected", reason="no capacity", finish_s=1.0),
    ]
    return data.requests_to_frame(rows)


def _spans() -> pd.DataFrame:
    rows = [
        SpanRow(1, 0, "encode", (0,), 1, 2, 0.0, 0.0, 1.0, 1.0),
        SpanRow(1, 1, "encode", (0,), 1, 2, 0.5, 0.0, 1.0, 1.0),  # batched with request 0
        SpanRow(2, 0, "diffuse", (0, 1), 2, 1, 1.0, 1.0, 3.0, 2.0, 0, 28),
        SpanRow(3, 1, "diffuse", (2,), 1, 1, 1.0, 1.5, 10.0, 8.5, 0, 28),
        SpanRow(4, 0, "decode", (3,), 1, 1, 3.0, 3.0, 4.0, 1.0),
        SpanRow(5, 1, "decode", (3,), 1, 1, 10.0, 10.0, 12.0, 2.0),
    ]
    return data.spans_to_frame(rows)


def _placements() -> pd.DataFrame:
    rows = [
        PlacementRow(0.0, 0, "sd3-medium", "encode", "place", 10.4),
        PlacementRow(0.0, 0, "sd3-medium", "diffuse", "place", 3.8),
        PlacementRow(0.0, 1, "sd3-medium", "diffuse", "place", 3.8),
        PlacementRow(5.0, 0, "sd3-medium", "encode", "evict", 10.4),
        PlacementRow(5.0, 0, "wan2.1-1.3b", "encode", "place", 10.6),
        PlacementRow(6.0, 1, "sd3-medium", "diffuse", "place", 3.8),  # already resident: ignored
        PlacementRow(7.0, 1, "flux-dev", "decode", "evict", 0.2),  # never placed: ignored
    ]
    return data.placements_to_frame(rows)


def _samples() -> pd.DataFrame:
    rows = [GpuSample(t, g, 0.5, 10.0 + t + g) for t in (0.0, 10.0, 20.0) for g in range(3)]
    return data.samples_to_frame(rows)


def _profile() -> pd.DataFrame:
    def row(model, stage, h, w, f, batch, lat, peak, act, weights):
        return ProfileRow("H200", model, StageKind(stage), h, w, f, batch, 1, lat, peak, act, weights)

    rows = [
        row("m", "encode", None, None, None, 1, 50.0, 10.5, 0.1, 10.4),
        row("m", "encode", None, None, None, 4, 120.0, 10.9, 0.5, 10.4),
        row("m", "diffuse", 512, 512, 1, 1, 30.0, 4.0, 0.1, 3.8),
        row("m", "diffuse", 1024, 1024, 1, 1, 100.0, 4.4, 0.6, 3.8),
        row("m", "diffuse", 1024, 1024, 1, 2, 190.0, 5.0, 1.2, 3.8),
        row("m", "decode", 512, 512, 1, 1, 20.0, 0.8, 0.6, 0.2),
        row("m", "decode", 1024, 1024, 1, 1, 80.0, 2.6, 2.4, 0.2),
        row("v", "encode", None, None, None, 1, 50.0, 11.0, 0.4, 10.6),
        row("v", "diffuse", 480, 832, 17, 1, 166.0, 3.4, 0.7, 2.6),
        row("v", "decode", 480, 832, 17, 1, 383.0, 7.2, 4.2, 0.2),
        row("only-diffuse", "diffuse", 512, 512, 1, 1, 30.0, 4.0, 0.1, 3.8),
    ]
    return data.profile_frame(rows)


# ------------------------------------------------------------------------------ data helpers
def test_request_frame_derives_latency_met_and_shape():
    df = _requests()
    assert list(df["latency_s"].round(3).fillna(-1)) == [4.0, 11.5, -1]
    assert list(df["met_slo"]) == [True, False, False]
    assert list(df["shape"]) == ["512x512", "512x512", "832x480x17"]


def test_parse_rates_sorts_dedups_and_names_bad_items():
    assert data.parse_rates("0.5, 0.25 1;0.5") == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="abc, -1"):
        data.parse_rates("0.5, abc, -1")
    with pytest.raises(ValueError, match="at least one"):
        data.parse_rates("  ")
    # outside test: an empty item dropped, fullwidth digits read, 399 rates taken
    with pytest.raises(ValueError, match="an empty item in '1,,2'"):
        data.parse_rates("1,,2")
    with pytest.raises(ValueError, match="cannot use: ０.５"):
        data.parse_rates("０.５")
    with pytest.raises(ValueError, match="cannot use: 1_0"):  # (outside test 93: read as 10 req/s)
        data.parse_rates("0.5, 1_0")
    with pytest.raises(ValueError, match=f"51 rates: at most {data.MAX_RATES}"):
        data.parse_rates(",".join(str(0.01 * i) for i in range(1, 52)))
    assert len(data.parse_rates(" ".join(str(0.01 * i) for i in range(1, 51)))) == 50


def test_goodput_on_grid_is_the_highest_passing_rate_below_the_first_failure():
    pts = pd.DataFrame({"policy": ["a"] * 4 + ["b"] * 2, "rate": [0.2, 0.4, 0.6, 0.8, 0.2, 0.4],
                        "attainment": [0.99, 0.95, 0.7, 0.92, 0.5, 0.99]})
    assert data.goodput_on_grid(pts) == {"a": 0.4, "b": 0.0}


def test_kpis_give_deltas_against_the_baseline():
    base = {"requests": 10, "attainment": 0.8, "mean_s": 10.0, "p95_s": 20.0, "p99_s": 30.0, "ooms": 2,
            "rejected": 1, "failed": 0, "gpu_s_per_met": 12.0}
    other = dict(base, attainment=0.9, p95_s=15.0, ooms=0, gpu_s_per_met=math.inf)
    cards = {k.label: k for k in data.kpis(other, base, {"goodput_rps": 0.5, "grid": True})}
    assert cards["SLO attainment"].value == "90.0%" and cards["SLO attainment"].delta == "+10.0 pp"
    assert cards["P95 latency"].delta == "-5.0 s" and cards["P95 latency"].delta_color == "inverse"
    assert cards["OOMs"].delta == "-2"
    assert cards["GPU-s per SLO-met request"].value.startswith("∞") and cards["GPU-s per SLO-met request"].delta is None
    assert cards["Goodput"].value == "≥ 0.5 req/s"
    # no rate of the sweep reached 90 %: a bound that fits the card ("below the sweep" was cut off; outside test 97)
    cards = {k.label: k for k in data.kpis(other, base, {"goodput_rps": 0.0, "grid": True, "lowest_rps": 0.25})}
    assert cards["Goodput"].value == "< 0.25 req/s" and "lowest swept rate" in cards["Goodput"].help
    assert all(k.delta is None for k in data.kpis(base, base))
    # a difference that rounds to nothing has no delta (outside test 108: "-0.0 pp" with a red arrow)
    assert {k.label: k for k in data.kpis(dict(base, attainment=0.79999), base)}["SLO attainment"].delta is None
    assert "Goodput" not in {k.label for k in data.kpis(base)}


def test_sql_examples_come_from_the_results_readme():
    examples = data.sql_examples()
    assert len(examples) >= 5
    titles = [t for t, _ in examples]
    assert all(t and not t.startswith("```") for t in titles)
    assert any("run_summary" in sql for _, sql in examples)
    assert data.sql_examples("/no/such/README.md") == []


def test_save_upload_is_content_addressed(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "UPLOAD_DIR", tmp_path)
    a, b, c = data.save_upload(b"x: 1\n", ".yaml"), data.save_upload(b"x: 1\n", ".yaml"), data.save_upload(b"x: 2\n", ".yaml")
    assert a == b != c and a.endswith(".yaml")
    assert open(a, "rb").read() == b"x: 1\n"


def test_uploads_are_the_users_own_and_old_ones_go(tmp_path, monkeypatch):
    """Uploads (traces may hold prompts) were readable by every user (0644) and kept for ever."""
    import os
    import stat
    import time

    folder = tmp_path / "uploads"
    monkeypatch.setattr(data, "UPLOAD_DIR", folder)
    first = data.save_upload(b"x: 1\n", ".yaml")
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    old = time.time() - data.UPLOAD_KEEP_S - 60
    os.utime(first, (old, old))
    second = data.save_upload(b"x: 2\n", ".yaml")
    assert not os.path.exists(first) and os.path.exists(second)  # unused for a week: removed
    os.utime(second, (old, old))
    assert data.save_upload(b"x: 2\n", ".yaml") == second and os.path.exists(second)  # used again: kept
    # the folder is capped: the least recently used go first (an outside test: no cap on 200 MB uploads)
    monkeypatch.setattr(data, "UPLOAD_MAX_BYTES", 25)
    now = time.time()
    paths = []
    for i in range(4):  # 10 bytes each, one second apart
        paths.append(data.save_upload(f"y: {i:05d}\n".encode(), ".yaml"))
        os.utime(paths[-1], (now - 10 + i, now - 10 + i))
    assert [os.path.exists(p) for p in paths] == [False, False, True, True] and os.path.exists(second)  # (newer)
    elsewhere = tmp_path / "not-mine"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    monkeypatch.setattr(data, "UPLOAD_DIR", tmp_path / "link")
    with pytest.raises(OSError, match="not a folder of this user's"):
        data.save_upload(b"x: 3\n", ".yaml")


def test_db_signature_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results database"):
        data.db_signature(tmp_path / "none.duckdb")


# ------------------------------------------------------------------------------ figures
def test_dispatch_bars_one_bar_per_gpu_and_batch_listed_once():
    bars = figures.dispatch_bars(_spans(), _requests())
    enc = bars[bars["dispatch_id"] == 1]
    assert len(enc) == 1 and enc.iloc[0]["request_ids"] == [0, 1] and enc.iloc[0]["batch"] == 2
    assert enc.iloc[0]["what"] == "sd3-medium 512x512"
    dif = bars[bars["dispatch_id"] == 2]
    assert sorted(dif["gpu"]) == [0, 1] and set(dif["degree"]) == {2}
    assert figures.dispatch_bars(data.spans_to_frame([])).empty


def test_gpu_timeline_panels_stages_window_and_bar_limit():
    fig = figures.gpu_timeline({"p1": _spans(), "p2": _spans()}, {"p1": _requests(), "p2": _requests()}, gpus=range(4))
    assert isinstance(fig, go.Figure)
    assert [a.text for a in fig.layout.annotations] == ["p1", "p2"]
    stages = [t.name for t in fig.data]
    assert stages == ["encode", "diffuse", "decode"] * 2
    assert [t.showlegend for t in fig.data] == [True] * 3 + [False] * 3
    hover = fig.data[0].customdata[0]
    assert "0, 1" in hover[0] and hover[1] == "sd3-medium 512x512" and int(hover[2]) == 2
    # only GPU 0 and spans overlapping [0, 2]: the encode and the degree-2 diffuse
    small = figures.gpu_timeline({"p": _spans()}, gpus=[0], window=(0.0, 2.0))
    assert sum(len(t.x) for t in small.data) == 2
    assert list(small.layout.xaxis.range) == [0.0, 2.0]
    capped = figures.gpu_timeline({"p": _spans()}, gpus=range(4), max_bars=2)
    assert sum(len(t.x) for t in capped.data) == 2 and "first 2 bars" in capped.layout.annotations[0].text


def test_placement_intervals_replay_place_and_evict():
    iv = figures.placement_intervals(_placements(), end_s=20.0)
    got = {(r.gpu, r.instance): (r.start_s, r.end_s) for r in iv.itertuples()}
    assert got == {
        (0, "sd3-medium/encode"): (0.0, 5.0),
        (0, "sd3-medium/diffuse"): (0.0, 20.0),
        (0, "wan2.1-1.3b/encode"): (5.0, 20.0),
        (1, "sd3-medium/diffuse"): (0.0, 20.0),
    }
    fig = figures.placement_timeline({"p": _placements()}, {"p": 20.0}, gpus=[0, 1])
    assert sorted(t.name for t in fig.data) == ["sd3-medium/diffuse", "sd3-medium/encode", "wan2.1-1.3b/encode"]
    assert fig.layout.barmode == "group"


def test_placement_heatmap_counts_gpus_per_instance_over_time():
    fig = figures.placement_heatmap({"p": _placements()}, {"p": 20.0}, n_gpus=4)
    (hm,) = fig.data
    assert list(hm.y) == ["sd3-medium/diffuse", "sd3-medium/encode", "wan2.1-1.3b/encode"]
    assert list(hm.x) == [0.0, 5.0, 20.0]  # the edges: an eviction and a placement at t=5
    assert [list(r) for r in hm.z] == [[2, 2], [1, 0], [0, 1]]
    assert hm.text[0][0] == "0–1" and hm.text[1][1] == "none"
    assert fig.layout.coloraxis.cmax == 4
    windowed = figures.placement_heatmap({"p": _placements()}, {"p": 20.0}, window=(6.0, 10.0))
    assert list(windowed.data[0].x) == [6.0, 10.0]
    assert "no stage instances" in figures.placement_heatmap({"p": _placements().iloc[:0]}, {"p": 1.0}).layout.annotations[0].text


def test_gpu_memory_one_line_per_gpu_with_capacity():
    fig = figures.gpu_memory({"a": _samples(), "b": _samples()}, gpus=[0, 1], window=(0.0, 10.0), mem_cap_gib=141.0)
    assert [t.name for t in fig.data] == ["GPU 0", "GPU 1"] * 2
    assert list(fig.data[1].y) == [11.0, 21.0]
    assert any(s.y0 == 141.0 for s in fig.layout.shapes)


def test_latency_cdf_downsamples_and_rises_from_zero_to_one():
    fig = figures.latency_cdf({"a": [float(i) for i in range(10_000)], "b": [3.0, 1.0, 2.0], "one": [4.0]},
                              max_points=500)
    a, b, one = fig.data
    assert len(a.x) <= 502 and a.y[-1] == 1.0 and a.x[-1] == 9999.0 and (a.x[0], a.y[0]) == (0.0, 0.0)
    assert list(b.x) == [1.0, 1.0, 2.0, 3.0] and list(b.y) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    # one finished request: a vertical step, drawn (a single point was no line at all: outside test 115)
    assert list(one.x) == [4.0, 4.0] and list(one.y) == [0.0, 1.0]
    assert len(figures.latency_cdf({"empty": []}).data[0].x) == 0


def test_rate_curves_two_panels_per_policy():
    pts = pd.DataFrame({"policy": ["a", "a", "b", "b"], "rate": [0.5, 0.25, 0.25, 0.5],
                        "attainment": [0.8, 0.95, 0.9, 0.6], "p95_s": [20.0, 10.0, 11.0, 40.0]})
    fig = figures.rate_curves(pts)
    assert len(fig.data) == 4
    assert list(fig.data[0].x) == [0.25, 0.5] and list(fig.data[0].y) == [0.95, 0.8]
    # the second panel: requests met per second, not a P95 that latency_vs_rate draws already
    assert list(fig.data[1].y) == [0.2375, 0.4] and "within SLO" in fig.layout.annotations[1].text


def test_latency_vs_rate_marks_the_pareto_frontier():
    pts = pd.DataFrame({"policy": ["a", "a", "a", "b", "b", "b"], "rate": [0.25, 0.5, 1.0, 0.25, 0.5, 1.0],
                        "attainment": [0.99, 0.95, 0.5, 0.97, 0.8, 0.6],
                        "mean_s": [4.0, 6.0, 30.0, 3.0, 5.0, 20.0], "p95_s": [9.0, 12.0, 80.0, 10.0, 9.0, 50.0]})
    front = figures.latency_frontier(pts, "mean_s")
    # b is faster at 0.5 req/s but below 90 %: a holds the frontier there; at 1.0 nobody reaches 90 %
    assert list(front["rate"]) == [0.25, 0.5] and list(front["policy"]) == ["b", "a"]
    assert list(figures.latency_frontier(pts, "p95_s")["policy"]) == ["a", "a"]
    fig = figures.latency_vs_rate(pts)
    assert len(fig.data) == 6  # per panel: a, b and the frontier
    by_name = [(t.name, t.xaxis) for t in fig.data]
    assert by_name[2] == ("frontier: lowest latency at each rate (attainment >= 90%)", "x") and by_name[5][1] == "x2"
    mean_front, p95_front = fig.data[2], fig.data[5]
    assert list(mean_front.x) == [0.25, 0.5] and list(mean_front.y) == [3.0, 6.0] and mean_front.line.dash == "dash"
    assert list(p95_front.y) == [9.0, 12.0] and list(p95_front.text) == ["a", "a"]
    assert list(fig.data[0].x) == [0.25, 0.5, 1.0] and list(fig.data[0].y) == [4.0, 6.0, 30.0]
    none = figures.latency_vs_rate(pts.assign(attainment=0.1))
    assert len(none.data[2].x) == 0


def test_the_latency_frontier_names_every_policy_that_ties_and_what_each_turned_away():
    """Outside test 93: with `trident:late=reject` beside `trident` at rates where their runs were the
    same, every star named only `trident`; and goodput mode's stars, fast because it had turned
    requests away (which have no latency), did not say so."""
    pts = pd.DataFrame({"policy": ["trident", "trident", "goodput", "goodput"], "rate": [0.5, 1.0, 0.5, 1.0],
                        "attainment": [0.95, 0.92, 0.95, 0.93], "mean_s": [3.0, 9.0, 3.0, 6.0],
                        "p95_s": [8.0, 30.0, 8.0, 20.0], "rejected": [0, 0, 0, 26], "requests": [250, 500, 250, 500]})
    front = figures.latency_frontier(pts, "mean_s")
    assert list(front["policy"]) == ["trident = goodput", "goodput"]
    fig = figures.latency_vs_rate(pts)
    assert list(fig.data[2].text) == ["trident = goodput", "goodput, 26 of 500 turned away"]
    assert list(fig.data[1].text) == ["", ", 26 of 500 turned away"]  # goodput's own line says it too
    assert "finished requests" in fig.layout.annotations[0].text


def test_profile_figures_show_the_stage_discrepancy():
    prof = _profile()
    assert list(prof.loc[prof["stage"] == "encode", "shape"].unique()) == ["-"]
    lat = figures.stage_latency_by_shape(prof, "H200", "m", steps=10)
    by_name = {t.name: t for t in lat.data}
    assert list(by_name["diffuse, 10 steps"].y) == [300.0, 1000.0]
    assert list(by_name["encode (batch 1)"].y) == [50.0, 50.0]
    mem = figures.stage_memory_by_shape(prof, "H200", "m")
    assert {t.name for t in mem.data} >= {"encode peak", "diffuse peak", "decode peak", "decode weights"}
    disc = figures.stage_discrepancy(prof, "H200", {"m": 10, "v": 50})
    labels = set(disc.data[0].y)
    assert labels == {"m 1024x1024", "v 832x480x17"}  # only-diffuse has no encode/decode: left out
    for col in (0, 1, 2):  # each panel's three stages add up to 100 % per model
        panel = [t for i, t in enumerate(disc.data) if i % 3 == col]
        assert [sum(x) for x in zip(*(t.x for t in panel))] == pytest.approx([1.0, 1.0])
    time_diffuse = [t for t in disc.data if t.name == "diffuse"][0]
    assert time_diffuse.x[0] == pytest.approx(1000 / (50 + 1000 + 80))
    empty = figures.stage_latency_by_shape(prof, "H200", "nothing")
    assert "no diffuse or decode rows" in empty.layout.annotations[0].text


def test_class_attainment_and_quick_chart():
    df = pd.DataFrame({"run": ["A", "A", "B"], "request_class": ["x", "y", "x"], "attainment": [1.0, 0.0, 0.75]})
    fig = figures.class_attainment(df)
    assert [t.name for t in fig.data] == ["A", "B"]
    # a class at 0 % has no bar to see: its label says 0 % (B has no class y at all: nothing there)
    assert list(fig.data[0].text) == ["100%", "0%"] and list(fig.data[1].text) == ["75%"]
    res = pd.DataFrame({"policy": ["a", "b"], "attainment": [0.9, 0.8], "p95_s": [10.0, 12.0]})
    for kind in figures.CHART_KINDS:
        q = figures.quick_chart(res, "policy", ["attainment", "p95_s"], kind)
        assert len(q.data) == 2
    with pytest.raises(ValueError, match="no column"):
        figures.quick_chart(res, "nope", "p95_s")
    with pytest.raises(ValueError, match="unknown chart kind"):
        figures.quick_chart(res, "policy", "p95_s", "pie")


def test_policy_colours_are_stable_and_distinct():
    both = figures.latency_cdf({"pipeline-dynamic": [1.0], "trident": [2.0]})
    alone = figures.latency_cdf({"trident": [2.0]})
    assert both.data[1].line.color == alone.data[0].line.color
    many = figures.latency_cdf({n: [1.0] for n in ("trident", "trident:x=1", "pipeline-static:degree=1",
                                                   "pipeline-static:degree=3", "custom")})
    colours = [t.line.color for t in many.data]
    assert len(set(colours)) == len(colours)
