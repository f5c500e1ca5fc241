"""Mixed device kinds: ``--devices cpu:1,emulated:1x2xH200`` serves a tiny pipeline for real on a CPU
worker and a profile model on emulated GPUs, behind one API and one stored run."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import pytest
from PIL import Image

from tridentcore.bench.launch import start_server
from tridentcore.store import query_readonly


def test_mixed_cpu_and_emulated_devices_one_api_one_run(tmp_path):
    db = tmp_path / "mixed.duckdb"
    server = start_server(["--models", "tiny-sd3,sd3-medium", "--devices", "cpu:1,emulated:1x2xH200",
                           "--time-scale", "0.02", "--policy", "trident", "--db", str(db)])
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
            assert models["tiny-sd3"]["emulated"] is False and models["sd3-medium"]["emulated"] is True
            real = client.post("/v1/images/generations", json={"prompt": "a red cube", "model": "tiny-sd3",
                                                               "size": "128x128", "steps": 2, "seed": 3})
            assert real.status_code == 200, real.text
            png = Image.open(io.BytesIO(base64.b64decode(real.json()["data"][0]["b64_json"])))
            assert png.size == (128, 128)
            assert [s["devices"] for s in real.json()["timings"][0]["stages"]] == [[0], [0], [0]]
            emulated = client.post("/v1/images/generations", json={"prompt": "x", "model": "sd3-medium",
                                                                   "size": "512x512", "n": 2, "steps": 8})
            assert emulated.status_code == 200, emulated.text
            body = emulated.json()
            assert body["data"] == [] and body["time_scale"] == 0.02
            devices = {d for t in body["timings"] for s in t["stages"] for d in s["devices"]}
            assert devices and devices <= {1, 2}  # the emulated GPUs are numbered after the CPU worker
            # the size limits are each part's: 2048 is past what the tiny CPU model takes here (emulated: 4096)
            bad = client.post("/v1/images/generations", json={"prompt": "x", "model": "tiny-sd3", "size": "2048x2048"})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "size"
            snap = client.get("/v1/cluster").json()
            assert [(d["id"], d["kind"], d["part"]) for d in snap["devices"]] == [
                (0, "cpu", "cpu:1"), (1, "H200", "emulated:1x2xH200"), (2, "H200", "emulated:1x2xH200")]
            assert {p["devices"]: p["models"] for p in snap["parts"]} == {"cpu:1": ["tiny-sd3"],
                                                                          "emulated:1x2xH200": ["sd3-medium"]}
            # the server's clock is the scaled part's (it read the cpu part's 1.0: outside test)
            assert snap["time_scale"] == snap["clock"]["time_scale"] == 0.02
            assert {p["devices"]: p["time_scale"] for p in snap["parts"]} == {"cpu:1": 1.0, "emulated:1x2xH200": 0.02}
            ids = [item["id"] for job in client.get("/v1/requests").json()["data"] for item in job["items"]]
            assert len(ids) == len(set(ids)) == 3
            metrics = client.get("/metrics").text
            assert 'trident_requests_ended_total{state="done"} 3.0' in metrics
    finally:
        assert server.stop() == 0
    runs = query_readonly(db, "SELECT run_id, cluster, profile, config_json, rate_rps, duration_s FROM runs")
    assert len(runs) == 1 and runs["cluster"][0] == "1x1xcpu + 1x2xH200" and runs["profile"][0] == "cpu,h200"
    config = json.loads(runs["config_json"][0])  # the stored run's clock too is the scaled part's (it was 1.0)
    assert config["time_scale"] == config["clock"]["time_scale"] == 0.02
    # each part's requests, duration and rate on its own clock, and `runs show` says so (outside test 112:
    # "0.0083 req/s for 12511 s", the emulated clock's, for 104 requests in 686 s, said as the whole run's)
    cpu, emu = config["parts"]
    assert (cpu["requests"], emu["requests"]) == (1, 2) and 0 < cpu["duration_s"] < emu["duration_s"]
    # the run's own rate and duration are the scaled part's (outside test 133: all 3 requests over its clock)
    assert runs["duration_s"][0] == emu["duration_s"]
    assert runs["rate_rps"][0] == pytest.approx(2 / emu["duration_s"])
    from typer.testing import CliRunner

    from tridentcore.cli.main import app

    shown = CliRunner().invoke(app, ["runs", "show", runs["run_id"][0], "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"parts on clocks of their own \(each request is timed on its part's; the rate and duration "
                     r"above are the time-scaled part's\): cpu:1 at time scale 1: 1 request in [\d.]+ s of its "
                     r"clock \([\d.e-]+ req/s\); emulated:1x2xH200 at time scale 0\.02: 2 requests in [\d.]+ s",
                     shown.output), shown.output
    reqs = query_readonly(db, "SELECT request_id, model, state FROM requests ORDER BY request_id")
    assert sorted(reqs["request_id"]) == sorted(ids) and set(reqs["state"]) == {"done"}
    spans = query_readonly(db, "SELECT request_id, gpus, dispatch_id, stage FROM stage_spans")
    by_model = dict(zip(reqs["request_id"], reqs["model"]))
    for rid, gpus, stage in zip(spans["request_id"], spans["gpus"], spans["stage"]):
        assert set(gpus) <= ({0} if by_model[rid] == "tiny-sd3" else {1, 2}), (rid, gpus, stage)
    # dispatch ids of the two engines do not collide: one dispatch is one stage
    per_dispatch = spans.groupby("dispatch_id")["stage"].nunique()
    assert (per_dispatch == 1).all()
