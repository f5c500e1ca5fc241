"""The HTTP API against a real `trident serve` process on emulated devices (127.0.0.1, port 0)."""

from __future__ import annotations

import time

import httpx
import pytest
from typer.testing import CliRunner

from tridentcore.bench.launch import start_server

MODELS = "sd3-medium,wan2.1-1.3b"


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """Zero-cost emulated stages: the API and bookkeeping only."""
    db = tmp_path_factory.mktemp("db") / "fast.duckdb"
    server = start_server(["--models", MODELS, "--devices", "emulated:1x4xH200", "--time-scale", "0",
                           "--db", str(db)])
    client = httpx.Client(base_url=server.url, timeout=30)
    yield server, client, db
    client.close()
    server.stop()


@pytest.fixture(scope="module")
def slow():
    """One emulated GPU at 1/20 of the cost model's time, FIFO, a queue of 2: requests wait."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "0.05",
                           "--policy", "pipeline-static:degree=1", "--max-queued", "2", "--drain-timeout", "0"])
    client = httpx.Client(base_url=server.url, timeout=30)
    yield server, client
    client.close()
    server.stop()


def _problem(resp):
    body = resp.json()["error"]
    return body["field"], body["message"]


@pytest.mark.parametrize("body, field, words", [
    ({"prompt": "x", "model": "sd3-medium", "size": "500x512"}, "size", ["multiple of 16"]),
    ({"prompt": "x", "model": "sd3-medium", "size": "8192x512"}, "size", ["outside", "4096"]),
    ({"prompt": "x", "model": "sd3-medium", "size": "big"}, "size", ["WIDTHxHEIGHT"]),
    ({"prompt": "x", "model": "sd3-medium", "n": 9}, "n", ["8"]),
    ({"prompt": "x", "model": "sd3-medium", "steps": 0}, "steps", ["1"]),
    ({"prompt": "x", "model": "sd3-medium", "steps": 201}, "steps", ["200"]),
    ({"prompt": "x" * 2001, "model": "sd3-medium"}, "prompt", ["2000"]),
    ({"prompt": "x", "model": "sd3-medium", "response_format": "png"}, "response_format", ["b64_json"]),
    ({"model": "sd3-medium"}, "prompt", ["required"]),
    ({"prompt": "x", "model": "sd3-medium", "colour": "red"}, "colour", ["not permitted"]),
    # issue 12: valid-schema input that was a 500, types that slipped through, digits of other scripts
    ({"prompt": "x", "model": "sd3-medium", "slo_ms": 5e-324}, "slo_ms", ["greater than or equal to 1"]),
    ({"prompt": "x", "model": "sd3-medium", "slo_ms": 0.5}, "slo_ms", ["1"]),
    ({"prompt": "x", "model": "sd3-medium", "slo_ms": 1e9}, "slo_ms", ["86400000"]),
    ({"prompt": "x", "model": "sd3-medium", "steps": True}, "steps", ["integer"]),
    ({"prompt": "x", "model": "sd3-medium", "steps": "8"}, "steps", ["integer"]),
    ({"prompt": "x", "model": "sd3-medium", "n": True}, "n", ["integer"]),
    ({"prompt": "x", "model": "sd3-medium", "seed": False}, "seed", ["integer"]),
    ({"prompt": "x", "model": "sd3-medium", "guidance": True}, "guidance", ["number"]),
    ({"prompt": "x", "model": "sd3-medium", "slo_ms": True}, "slo_ms", ["number"]),
    ({"prompt": "x", "model": "sd3-medium", "size": "\u0661\u0660\u0662\u0664x\u0665\u0661\u0662"}, "size",
     ["ASCII"]),
    ({"prompt": "x", "model": "sd3-medium", "size": "1024X1024"}, "size", ["WIDTHxHEIGHT"]),
    ({"prompt": "x", "model": "sd3-medium", "size": "1" * 5000 + "x512"}, "size", ["WIDTHxHEIGHT", "at most 5"]),
])
def test_invalid_image_requests_name_field_and_limit(fast, body, field, words):
    _, client, _ = fast
    resp = client.post("/v1/images/generations", json=body)
    assert resp.status_code == 422, resp.text
    got_field, message = _problem(resp)
    assert got_field == field
    for w in words:
        assert w in message


def test_invalid_video_frames_and_kind(fast):
    _, client, _ = fast
    resp = client.post("/v1/videos/generations", json={"prompt": "x", "model": "wan2.1-1.3b", "frames": 18})
    assert resp.status_code == 422 and _problem(resp)[0] == "frames" and "k*4+1" in _problem(resp)[1]
    resp = client.post("/v1/images/generations", json={"prompt": "x", "model": "sd3-medium", "frames": 5})
    assert resp.status_code == 422 and _problem(resp)[0] == "frames"
    resp = client.post("/v1/videos/generations", json={"prompt": "x", "model": "sd3-medium"})
    assert resp.status_code == 422 and _problem(resp)[0] == "model"


def test_a_huge_size_or_a_non_finite_number_is_a_clean_422(fast):
    _, client, _ = fast
    resp = client.post("/v1/images/generations", json={"prompt": "x", "size": "9" * 5000 + "x512"})
    assert resp.status_code == 422 and _problem(resp)[0] == "size"
    assert "int_max_str_digits" not in resp.text and "4300" not in resp.text and len(resp.text) < 1000
    for raw in (b'{"prompt": "x", "slo_ms": NaN}', b'{"prompt": "x", "slo_ms": Infinity}',
                b'{"prompt": "x", "guidance": 1e999}'):
        resp = client.post("/v1/images/generations", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 422 and "finite" in _problem(resp)[1], resp.text
    resp = client.post("/v1/videos/generations", json={"prompt": "x", "model": "wan2.1-1.3b", "frames": 133})
    assert resp.status_code == 422 and _problem(resp) == ("frames", "frames: Input should be less than or equal to 129")
    resp = client.post("/v1/videos/generations", json={"prompt": "x", "model": "wan2.1-1.3b", "frames": True})
    assert resp.status_code == 422 and _problem(resp)[0] == "frames"


def test_parse_errors_unknown_paths_and_wrong_methods_answer_in_the_error_shape(fast):
    _, client, _ = fast
    for raw in (b'{"prompt": ', b"\xff\xfe{}", b""):  # not JSON; not UTF-8; empty
        resp = client.post("/v1/images/generations", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request", resp.text
        assert resp.json()["error"]["field"] == "body" and "detail" not in resp.json()
    for path in ("/v1/images/generations", "/v1/requests"):  # not "body: Field required"
        resp = client.post(path, content=b"", headers={"content-type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"]["message"] == "the body is empty: send a JSON object"
    # why it could not be read, not the framework's "There was an error parsing the body"
    for raw, why in ((b'{"prompt": "x", "steps": ' + b"9" * 5000 + b"}", "a number in it has more than 4300 digits"),
                     (b'{"prompt": "\xff"}', "it is not UTF-8 (byte 0xff at byte 12)")):
        resp = client.post("/v1/images/generations", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"]["message"].endswith(why), resp.text
    resp = client.post("/v1/images/generations", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"})
    assert resp.status_code == 422 and "Content-Type: application/json (got text/plain)" in _problem(resp)[1], resp.text
    resp = client.post("/v1/images/generations", json="a fox")  # JSON, but not an object
    assert resp.status_code == 422 and _problem(resp)[1].endswith("the body must be a JSON object ({...}), not a JSON string")
    resp = client.get("/v1/no-such-thing")
    assert resp.status_code == 404 and resp.json()["error"] == {"code": "not_found",
                                                                "message": "no such path: /v1/no-such-thing"}
    # a trailing slash: no redirect (Starlette's 307 went to whatever host the Host header named)
    for method, path in (("GET", "/v1/models/"), ("GET", "/healthz/"), ("POST", "/v1/images/generations/"),
                         ("DELETE", "/v1/requests/")):
        resp = client.request(method, path, headers={"host": "elsewhere.example"}, json={"prompt": "x"})
        assert resp.status_code == 404 and "location" not in resp.headers, (method, path, resp.status_code, resp.headers)
        assert resp.json()["error"] == {"code": "not_found", "message": f"no such path: {path}"}
    resp = client.put("/v1/images/generations", json={"prompt": "x"})
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert resp.headers["allow"] == "POST"
    resp = client.patch("/v1/requests")  # two routes on the path: Allow names both methods
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD, POST", resp.headers
    assert "PATCH is not allowed" in resp.json()["error"]["message"]


def test_openapi_declares_every_status_and_the_real_limits(fast):
    _, client, _ = fast
    spec = client.get("/openapi.json").json()
    ops = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    image = ops[("POST", "/v1/images/generations")]["responses"]
    assert {"200", "400", "401", "404", "413", "422", "429", "503"} <= set(image)
    assert {"202", "400", "401", "404", "413", "422", "429", "503"} <= set(ops[("POST", "/v1/requests")]["responses"])
    assert {"404", "409", "410"} <= set(ops[("GET", "/v1/requests/{job_id}/result")]["responses"])
    assert set(ops[("GET", "/v1/requests/{job_id}/result/{index}")]["responses"]["200"]["content"]) == {
        "image/png", "image/webp"}
    assert set(ops[("GET", "/metrics")]["responses"]["200"]["content"]) == {"text/plain"}
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for (method, path), op in ops.items():
        for status, resp in op["responses"].items():
            if int(status) >= 400 and path != "/healthz":
                assert resp["content"]["application/json"]["schema"] == error_ref, (method, path, status)
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    video = schemas["VideoGenerationRequest"]["properties"]
    assert video["frames"]["anyOf"][0]["maximum"] == 129
    assert video["size"]["pattern"] == "^[0-9]{1,5}x[0-9]{1,5}$"
    assert video["slo_ms"]["anyOf"][0]["minimum"] == 1 and video["steps"]["anyOf"][0]["maximum"] == 200
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["wan2.1-1.3b"]["frames"]["max"] == 129  # the schema's maximum is a served model's


def test_models_advertise_the_pixels_the_profile_prices_and_the_server_keeps_to_them(fast):
    """A size inside a model's side bounds can still be one the profile cannot price: ``/v1/models`` says
    which (width*height*frames), and the server takes a request at its edge and refuses one past it."""
    _, client, _ = fast
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    sd3, wan = models["sd3-medium"], models["wan2.1-1.3b"]
    lo, hi = sd3["pixels"]["min"], sd3["pixels"]["max"]
    assert sd3["pixels"]["of"] == "width*height*frames" and 0 < lo < 1024 * 1024 < hi < sd3["size"]["max"] ** 2
    side = int(hi ** 0.5) // 16 * 16  # the largest square of 16s within the range, and the next one past it
    ok = client.post("/v1/images/generations", json={"prompt": "x", "model": "sd3-medium", "size": f"{side}x{side}"})
    assert ok.status_code == 200, ok.text
    big = side + 16
    past = client.post("/v1/images/generations", json={"prompt": "x", "model": "sd3-medium", "size": f"{big}x{big}"})
    assert past.status_code == 422, past.text
    assert f"from {lo:,} to {hi:,}" in past.json()["error"]["message"]
    # the device kind named as such, not as the profile's name (outside test 120: "the cpu profile" for a CSV)
    assert past.json()["error"]["message"].startswith(f"size: the profile cannot price sd3-medium on H200 at {big}x{big}")
    # a video's frames count: a size the 17-frame default takes is past the range at 129 frames
    w, h = map(int, wan["size"]["default"].split("x"))
    assert w * h * wan["frames"]["default"] <= wan["pixels"]["max"] < 2048 * 1152 * 129
    resp = client.post("/v1/videos/generations", json={"prompt": "x", "model": "wan2.1-1.3b", "size": "2048x1152",
                                                        "frames": 129})
    assert resp.status_code == 422 and "width*height*frames" in resp.json()["error"]["message"], resp.text


def test_unknown_model_404_and_body_too_large_413(fast):
    _, client, _ = fast
    resp = client.post("/v1/images/generations", json={"prompt": "x", "model": "dall-e-9"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_model"
    assert "sd3-medium" in resp.json()["error"]["message"]
    assert client.get("/v1/requests/gen-999999").status_code == 404
    # a job id from before a restart: said where it is (outside test: only "no request ...")
    message = client.get("/v1/requests/gen-999999").json()["error"]["message"]
    assert message.startswith("no request 'gen-999999' on this server (it began ") and "job_id = " in message
    big = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
    resp = client.post("/v1/images/generations", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"

    def chunks():  # no Content-Length: counted while read
        for _ in range(40):
            yield b"x" * 65536

    resp = client.post("/v1/requests", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_sync_generation_on_emulated_devices_returns_timings_and_no_pixels(fast):
    _, client, _ = fast
    resp = client.post("/v1/images/generations",
                       json={"prompt": "a red fox", "model": "sd3-medium", "size": "1024x1024", "n": 2, "seed": 7})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["data"] == [] and body["emulated"] is True and "no pixels" in body["note"]
    assert body["seed"] == 7 and len(body["timings"]) == 2
    stages = [s["stage"] for s in body["timings"][0]["stages"]]
    assert stages[0] == "encode" and stages[-1] == "decode" and "diffuse" in stages
    resp = client.post("/v1/videos/generations", json={"prompt": "waves", "model": "wan2.1-1.3b", "frames": 17})
    assert resp.status_code == 200 and resp.json()["kind"] == "video" and resp.json()["frames"] == 17


def test_async_submit_poll_result(fast):
    _, client, _ = fast
    resp = client.post("/v1/requests", json={"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 8})
    assert resp.status_code == 202
    rid = resp.json()["id"]
    for _ in range(200):
        status = client.get(f"/v1/requests/{rid}").json()
        if status["state"] == "done":
            break
        time.sleep(0.01)
    assert status["state"] == "done" and status["items"][0]["steps_done"] == 8
    result = client.get(f"/v1/requests/{rid}/result")
    assert result.status_code == 200 and result.json()["id"] == rid
    assert result.json()["request_ids"] == [item["id"] for item in status["items"]]
    assert client.get(f"/v1/requests/{rid}/result/0").status_code == 409  # emulated: no file


def test_recent_requests_listed_newest_first(fast):
    _, client, _ = fast
    ids = [client.post("/v1/requests", json={"prompt": f"p{i}", "model": "sd3-medium", "size": "512x512",
                                             "steps": 2 + i}).json()["id"] for i in range(3)]
    listed = client.get("/v1/requests", params={"limit": 2}).json()
    assert listed["object"] == "list"
    assert [j["id"] for j in listed["data"]] == ids[::-1][:2]
    assert listed["data"][0]["steps"] == 4 and listed["data"][0]["items"][0]["model"] == "sd3-medium"
    resp = client.get("/v1/requests", params={"limit": 0})
    assert resp.status_code == 422 and _problem(resp)[0] == "limit"


def test_cluster_models_metrics_docs(fast):
    from prometheus_client.parser import text_string_to_metric_families

    _, client, _ = fast
    cluster = client.get("/v1/cluster").json()
    assert len(cluster["devices"]) == 4 and cluster["instances"]
    assert set(cluster["queues"]) == {"encode", "diffuse", "decode"}
    assert all(d["mem_gib"] == 141.0 and d["alive"] for d in cluster["devices"])
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["wan2.1-1.3b"]["kind"] == "video" and models["sd3-medium"]["kind"] == "image"
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("trident_requests_ended", "trident_stage_seconds", "trident_queue_depth", "trident_slo_attainment",
                 "trident_device_busy", "trident_device_memory_gib", "trident_requests_live"):
        assert name in families, name
    done = [s.value for s in families["trident_requests_ended"].samples
            if s.name == "trident_requests_ended_total" and s.labels["state"] == "done"]
    assert done and done[0] >= 1
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/images/generations" in spec["paths"] and "/v1/requests/{job_id}" in spec["paths"]
    assert client.get("/healthz").json()["ok"] is True


def test_queue_full_429_and_cancel(slow):
    _, client = slow
    body = {"prompt": "x", "model": "sd3-medium", "size": "1024x1024", "steps": 28}
    codes, ids = [], []
    for _ in range(5):
        resp = client.post("/v1/requests", json=body)
        codes.append(resp.status_code)
        if resp.status_code == 202:
            ids.append(resp.json()["id"])
        else:
            assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
            assert resp.json()["error"]["code"] == "queue_full"
    assert codes[:3] == [202, 202, 202] and 429 in codes
    last = ids[-1]
    resp = client.delete(f"/v1/requests/{last}")
    assert resp.status_code == 200 and resp.json()["cancelled"] == 1 and resp.json()["state"] == "cancelled"
    resp = client.get(f"/v1/requests/{last}/result")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "cancelled"
    status = client.get(f"/v1/requests/{last}").json()
    assert status["items"][0]["reason"] == "cancelled by the client" and status["items"][0]["stages"] == []
    assert client.get(f"/v1/requests/{ids[0]}/result").status_code in (409, 200)


def test_store_written_at_shutdown_is_consistent(tmp_path):
    from tridentcore.store import query_readonly

    db = tmp_path / "run.duckdb"
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:2xH200", "--time-scale", "0",
                           "--policy", "pipeline-dynamic", "--db", str(db), "--run-id", "live-1"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            jobs = []
            for i in range(3):
                resp = client.post("/v1/images/generations", json={"prompt": "x", "model": "sd3-medium",
                                                                   "size": "512x512", "n": 2})
                assert resp.status_code == 200
                jobs.append(resp.json()["id"])
            assert client.post("/v1/requests", json={"prompt": "x", "model": "nope"}).status_code == 404
    finally:
        assert server.stop() == 0
    # each request's row names its generation (outside test: a job id could not be traced after a restart)
    named = query_readonly(db, "SELECT job_id, count(*) AS n FROM requests GROUP BY job_id")
    assert dict(zip(named["job_id"], named["n"])) == {job: 2 for job in jobs}
    runs = query_readonly(db, "SELECT run_id, backend, policy FROM runs")
    assert len(runs) == 1 and runs["backend"][0] == "live" and runs["policy"][0] == "pipeline-dynamic"
    assert runs["run_id"][0] == "live-1"
    from tridentcore.cli import app

    again = CliRunner().invoke(app, ["serve", "--models", "sd3-medium", "--devices", "emulated:1xH200",
                                     "--db", str(db), "--run-id", "live-1"])
    assert again.exit_code == 2 and "already in" in again.output
    # without --db the id names nothing (outside test: served, the option ignored without a word)
    alone = CliRunner().invoke(app, ["serve", "--models", "sd3-medium", "--devices", "emulated:1xH200",
                                     "--run-id", "../../etc"])
    assert alone.exit_code == 2 and alone.output.strip().endswith(
        "error: --run-id '../../etc': the id of the run stored in --db; give --db FILE, or leave --run-id out")
    req = query_readonly(db, "SELECT state, count(*) AS n FROM requests GROUP BY state")
    assert dict(zip(req["state"], req["n"])) == {"done": 6}
    spans = query_readonly(db, "SELECT stage, count(*) AS n FROM stage_spans GROUP BY stage ORDER BY stage")
    assert dict(zip(spans["stage"], spans["n"])) == {"decode": 6, "diffuse": 6, "encode": 6}
    bad = query_readonly(db, """SELECT count(*) AS n FROM stage_spans s JOIN requests r USING (run_id, request_id)
                                WHERE s.ended_s > r.finish_s + 1e-9 OR s.started_s < r.arrival_s - 1e-9""")
    assert bad["n"][0] == 0


def test_api_key_required_when_set_and_off_loopback():
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "0"],
                          env={"TRIDENT_API_KEY": "s3cret"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = {"prompt": "x", "model": "sd3-medium", "size": "512x512"}
            assert client.post("/v1/images/generations", json=body).status_code == 401
            bad = {"Authorization": "Bearer wrong"}
            assert client.post("/v1/images/generations", json=body, headers=bad).status_code == 401
            good = {"Authorization": "Bearer s3cret"}
            assert client.post("/v1/images/generations", json=body, headers=good).status_code == 200
            assert client.get("/v1/cluster").status_code == 401  # reads need the key too (tests/test_auth.py)
    finally:
        server.stop()
    from tridentcore.cli import app

    result = CliRunner().invoke(app, ["serve", "--models", "sd3-medium", "--devices", "emulated:1xH200",
                                      "--host", "0.0.0.0", "--port", "0"], env={"TRIDENT_API_KEY": ""})
    assert result.exit_code == 2 and "api-key" in result.output
    # a port file where none can be written: one line before anything starts (not a traceback once it serves)
    result = CliRunner().invoke(app, ["serve", "--models", "sd3-medium", "--devices", "emulated:1xH200",
                                      "--port", "0", "--port-file", "/proc/nosuch/p.port"])
    assert result.exit_code == 2 and "--port-file /proc/nosuch/p.port: cannot write there" in result.output


def test_keep_alive_requests_are_not_delayed_by_nagle(fast):
    """The pre-bound socket says it is TCP, so asyncio sets TCP_NODELAY (else ~40 ms per response)."""
    import socket

    from tridentcore.server.serve import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
    _, client, _ = fast
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        times.append(time.perf_counter() - t0)
    assert sorted(times)[7] < 0.025


def test_requests_the_engine_forgot_still_answer_with_how_they_ended():
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0",
                           "--keep-ended", "2"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ids = []
            for i in range(6):
                resp = client.post("/v1/images/generations", json={"prompt": "x", "model": "sd3-medium",
                                                                   "size": "512x512", "steps": 4, "seed": i})
                assert resp.status_code == 200
                ids.append(resp.json()["id"])
            listed = client.get("/v1/requests").json()["data"]
            assert [j["id"] for j in listed] == ids[::-1] and all(j["state"] == "done" for j in listed)
            first = client.get(f"/v1/requests/{ids[0]}").json()
            assert first["items"][0]["steps_done"] == 4 and [s["stage"] for s in first["items"][0]["stages"]] == [
                "encode", "diffuse", "decode"]
            assert client.get(f"/v1/requests/{ids[0]}/result").status_code == 200
            assert client.delete(f"/v1/requests/{ids[0]}").json()["cancelled"] == 0
    finally:
        assert server.stop() == 0


def test_a_request_rejected_on_arrival_and_forgotten_at_once_still_answers_rejected():
    """Goodput mode with --keep-ended 0: a request turned away on arrival ends, and is forgotten, inside
    its own submission, before the server has recorded whose it is. It answered 500 (TypeError) and the
    list of requests answered 500 from then on (outside review)."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "0.05",
                           "--policy", "trident:late=reject", "--keep-ended", "0", "--drain-timeout", "0"])
    body = {"prompt": "x", "model": "sd3-medium", "size": "1024x1024", "steps": 28}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = [client.post("/v1/requests", json={**body, "seed": i}) for i in range(8)]
            assert [r.status_code for r in answers] == [202] * 8, [r.text[:200] for r in answers]
            states = [r.json()["state"] for r in answers]
            assert "rejected" in states and states[0] == "running", states
            rejected = answers[states.index("rejected")].json()
            again = client.get(f"/v1/requests/{rejected['id']}")
            assert again.status_code == 200 and again.json()["items"][0]["state"] == "rejected"
            assert "deadline" in again.json()["items"][0]["reason"]
            sync = client.post("/v1/images/generations", json={**body, "seed": 99})
            assert sync.status_code == 503 and sync.json()["error"]["code"] == "rejected", sync.text[:300]
            assert "Retry-After" in sync.headers
            listed = client.get("/v1/requests")
            assert listed.status_code == 200, listed.text[:300]
            assert len(listed.json()["data"]) == 9
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("keep_ended", [None, "0"])
def test_a_generation_is_refused_whole_when_one_of_its_images_is_rejected(keep_ended):
    """Goodput mode admits each image of a generation on its own: of 8 on one GPU the first ran and
    were made while the last were refused, and the client, answered 503 for the whole generation, was
    told to retry it, images already made included (outside test 119). One refused refuses them all,
    at once, before any is made: waiting (/v1/requests) or answered (the images endpoint); also when
    each ended request is forgotten at once (``--keep-ended 0``: outside test 122, split as before)."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "0.05",
                           "--policy", "trident:late=reject", "--drain-timeout", "0",
                           *(["--keep-ended", keep_ended] if keep_ended else [])])
    body = {"prompt": "x", "model": "sd3-medium", "size": "1024x1024", "steps": 28, "n": 8}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job = client.post("/v1/requests", json=body)
            assert job.status_code == 202, job.text[:300]
            assert job.json()["state"] == "rejected", job.json()
            items = client.get(f"/v1/requests/{job.json()['id']}").json()["items"]
            assert [i["state"] for i in items] == ["rejected"] * 8, items
            assert not [s for i in items for s in i["stages"] if s["stage"] != "encode"], items  # (an encode began)
            by_policy = [i for i in items if not i["reason"].startswith("refused with request")]
            assert by_policy and all("deadline" in i["reason"] for i in by_policy), items
            assert all(i["reason"].startswith(f"refused with request {by_policy[0]['id']} of its generation: ")
                       for i in items if i not in by_policy), items
            sync = client.post("/v1/images/generations", json={**body, "seed": 5})
            assert sync.status_code == 503 and "Retry-After" in sync.headers, sync.text[:300]
            err = sync.json()["error"]
            # the policy's reason, once: not again inside each item's "refused with request R ...: <it>"
            assert "refused with request" not in err["message"] and "deadline" in err["message"], err
            again = client.get(f"/v1/requests/{err['id']}").json()
            assert [i["state"] for i in again["items"]] == ["rejected"] * 8, again
            alone = client.post("/v1/images/generations", json={**body, "n": 1, "seed": 9})
            assert alone.status_code == 200, alone.text[:300]  # nothing of the refused ones holds the GPU
    finally:
        assert server.stop() == 0


def test_results_outlive_forgotten_requests_within_their_own_budget():
    """--keep-ended 0 forgets a request as it ends, yet its client still gets the image (it got a 500
    after the work was done); results are dropped by --results-mib (410 gone), never by --keep-ended,
    nor before a synchronous answer has read them (n=2 over the limit together);
    a request for more items than the queue holds is a 422 naming n, not a 429 retried forever."""
    import base64

    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:1", "--keep-ended", "0", "--results-mib", "1",
                           "--max-queued", "2"], timeout_s=300)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            body = {"prompt": "x", "model": "tiny-sd3", "size": "256x256", "steps": 2}
            ids, sizes = [], []
            for seed in range(8):
                resp = client.post("/v1/images/generations", json={**body, "seed": seed})
                assert resp.status_code == 200, resp.text
                sizes.append(len(base64.b64decode(resp.json()["data"][0]["b64_json"])))
                ids.append(resp.json()["id"])
            assert min(sizes) > 1 << 17  # (noise-like PNGs of ~190 KB: 1 MiB holds a few)
            got = [client.get(f"/v1/requests/{i}/result").status_code for i in ids]
            assert got[-1] == 200 and got[0] == 410 and set(got) == {200, 410}, got
            assert client.get(f"/v1/requests/{ids[0]}").json()["state"] == "done"  # how it ended is still known
            # a synchronous answer gets all of its own, more than --results-mib together (it was a 410)
            resp = client.post("/v1/images/generations", json={**body, "size": "512x512", "n": 2})
            assert resp.status_code == 200, resp.text
            pngs = [base64.b64decode(d["b64_json"]) for d in resp.json()["data"]]
            assert len(pngs) == 2 and sum(map(len, pngs)) > 1 << 20 and all(p[:4] == b"\x89PNG" for p in pngs)
            # ... and so does a polled one: its first item's result was dropped for its second, so it read
            # done and answered 410 (an outside test); a generation's results are kept and dropped together
            job = client.post("/v1/requests", json={**body, "size": "512x512", "n": 2}).json()["id"]
            deadline = time.monotonic() + 120
            while client.get(f"/v1/requests/{job}").json()["state"] != "done" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get(f"/v1/requests/{job}/result").status_code == 200
            files = [client.get(f"/v1/requests/{job}/result/{k}") for k in range(2)]
            assert [f.status_code for f in files] == [200, 200] and sum(len(f.content) for f in files) > 1 << 20
            client.post("/v1/images/generations", json={**body, "seed": 9})  # a newer one: the pair goes, both
            assert [client.get(f"/v1/requests/{job}/result/{k}").status_code for k in range(2)] == [410, 410]
            resp = client.post("/v1/images/generations", json={**body, "n": 3})
            assert resp.status_code == 422 and resp.json()["error"]["field"] == "n", resp.text
            assert "--max-queued" in resp.json()["error"]["message"]
            metrics = client.get("/metrics").text
            assert 'trident_requests_refused_total{reason="queue_full"} 0.0' in metrics
            long_id = "a" * 20_000
            assert len(client.get(f"/v1/requests/{long_id}").content) < 1000  # the id quoted briefly
    finally:
        assert server.stop() == 0


def test_a_synchronous_generation_whose_client_disconnects_is_cancelled(tmp_path):
    """Clients that time out and go: their generations were served to the end, in front of the requests
    of clients still waiting (an outside test: ten abandoned 720p videos, then an image that waited
    27 s for a 3 s SLO). Now each is cancelled when its connection closes, stored as cancelled with
    the reason; the next request is served at once."""
    from tridentcore.store import query_readonly

    db = tmp_path / "run.duckdb"
    server = start_server(["--models", "sd3-medium,wan2.1-1.3b", "--devices", "emulated:1x2xH200", "--time-scale",
                           "0.05", "--db", str(db)])
    try:
        video = {"model": "wan2.1-1.3b", "prompt": "v", "size": "1280x720", "frames": 81}
        for _ in range(4):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{server.url}/v1/videos/generations", json=video, timeout=0.5)
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/healthz").json()["live_requests"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{server.url}/healthz").json()["live_requests"] == 0
        image = {"model": "sd3-medium", "prompt": "x", "size": "512x512"}
        resp = httpx.post(f"{server.url}/v1/images/generations", json=image, timeout=60)
        assert resp.status_code == 200 and resp.json()["timings"][0]["met_slo"], resp.text
    finally:
        assert server.stop() == 0
    rows = query_readonly(str(db), "SELECT model, state, reason FROM requests ORDER BY request_id")
    assert list(rows["state"]) == ["cancelled"] * 4 + ["done"], rows
    assert set(rows["reason"][:4]) == {"the client disconnected before the answer"}, rows
    # a stage that ran for them is stored cancelled, not preempted (no preemption counted that never was)
    spans = query_readonly(str(db), "SELECT q.state, s.outcome FROM stage_spans s JOIN requests q USING (run_id, request_id)")
    ran = set(zip(spans["state"], spans["outcome"]))
    assert ("cancelled", "cancelled") in ran and "preempted" not in {o for _, o in ran}, ran  # (encodes: done)


def test_steps_done_moves_while_a_diffuse_runs():
    """GET /v1/requests/{id}: a running diffuse's ``steps_done`` is what its device reports (an
    emulated device: in proportion to its emulated time), not 0 until the whole stage ends."""
    server = start_server(["--models", "wan2.1-1.3b", "--devices", "emulated:1xH200", "--time-scale", "0.05",
                           "--policy", "pipeline-static:degree=1"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            resp = client.post("/v1/requests", json={"prompt": "waves", "model": "wan2.1-1.3b",
                                                     "frames": 33, "steps": 40})
            assert resp.status_code == 202, resp.text
            rid, seen = resp.json()["id"], []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                item = client.get(f"/v1/requests/{rid}").json()["items"][0]
                if item["state"] == "diffusing":
                    seen.append(item["steps_done"])
                if item["state"] == "done":
                    break
                time.sleep(0.05)
    finally:
        server.stop()
    assert item["state"] == "done" and item["steps_done"] == 40
    moving = sorted(set(seen))
    assert seen == sorted(seen) and len(moving) >= 3 and 0 < moving[1] and moving[-1] < 40, seen


def test_a_port_file_and_its_stopping_file_left_by_an_earlier_server_are_not_taken_as_this_ones(tmp_path):
    """``--port-file FILE``: FILE holds the port once the server serves, FILE.stopping the signal that
    stops it. An earlier server's were left in place: the new one served while FILE.stopping said it
    was stopping (15), and FILE held the old port until the new one was ready (outside test). Both
    go as it starts; FILE.stopping is written again when this one stops."""
    import signal
    import subprocess
    import sys

    port_file = tmp_path / "p.port"
    stopping = tmp_path / "p.port.stopping"
    port_file.write_text("1\n")
    stopping.write_text("15\n")
    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "sd3-medium", "--devices",
                             "emulated:1xH200", "--port", "0", "--port-file", str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip() not in ("", "1")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert not stopping.exists()  # (removed before it served)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    assert stopping.read_text().strip() == str(int(signal.SIGTERM))


def test_slo_attainment_is_nan_until_a_request_has_ended():
    """``trident_slo_attainment`` read 1.0 on a server that had ended no request (0 of 0), a figure a
    dashboard takes for a perfect run (outside test); it is NaN until one ends, then met / ended."""
    import math

    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from tridentcore.runtime.build import build_runtime
    from tridentcore.server.app import create_app

    def attainment(client) -> float:
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        (sample,) = families["trident_slo_attainment"].samples
        return sample.value

    with TestClient(create_app(build_runtime("sd3-medium", "emulated:1xH200", time_scale=0.0))) as client:
        assert math.isnan(attainment(client))
        body = {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 4, "slo_ms": 10_000_000}
        assert client.post("/v1/images/generations", json=body).status_code == 200
        assert attainment(client) == 1.0


def test_healthz_says_an_engine_whose_events_all_fail_is_stuck_until_one_passes():
    """Outside test 106: a policy that raised on every event (it looked up a request the engine had
    forgotten) dispatched nothing again, requests waited for ever, and ``/healthz`` said ok: a
    supervisor had no way to know that a restart was needed. After ``STUCK_AFTER`` failed events in a
    row it is 503 with the latest error; one event that passes makes it 200 again."""
    from fastapi.testclient import TestClient

    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import STUCK_AFTER
    from tridentcore.server.app import ServerConfig, create_app

    rt = build_runtime("sd3-medium", "emulated:1xH200", time_scale=0.0)
    body = {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 2}
    with TestClient(create_app(rt, ServerConfig(drain_timeout_s=0))) as client:
        assert client.get("/healthz").status_code == 200
        policy = rt.engine.core.policy

        def broken(view, event, now):
            raise KeyError(4242)

        policy.on_event = broken  # (an instance attribute: the driver looks it up at each step)
        for i in range(STUCK_AFTER):
            assert client.get("/healthz").status_code == 200, i
            assert client.post("/v1/requests", json=body).status_code == 202
        got = client.get("/healthz")
        assert got.status_code == 503 and got.json()["ok"] is False, got.text
        assert "KeyError: 4242" in got.json()["engine"] and f"last {STUCK_AFTER} events" in got.json()["engine"]
        assert f"trident_engine_errors_total {float(STUCK_AFTER)}" in client.get("/metrics").text
        del policy.on_event
        assert client.post("/v1/requests", json=body).status_code == 202
        assert client.get("/healthz").status_code == 200
