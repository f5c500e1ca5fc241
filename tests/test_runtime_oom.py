"""Out-of-memory at run time: a worker's allocation failure is a StageFailed(oom=True), the request is
retried at a safer configuration (a tiled decode; the policy picks batch 1 / more GPUs) and counted.

The fault comes from the product's own test seam, ``trident serve --inject-oom STAGE:N``: on a CPU
worker it is a real allocation failure from torch's allocator inside ``_execute``; on an emulated
device the worker raises ``MemoryError``. Either way it travels the path a real one would."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tridentcore.core.types import Shape
from tridentcore.runtime.build import SetupError, build_runtime, parse_faults
from tridentcore.runtime.engine import Submission
from tridentcore.runtime.workers import StageTask, _execute, is_oom
from tridentcore.bench.launch import start_server

LONG_SLO_S = 10_000.0


def test_is_oom_recognises_allocation_failures_only():
    import torch

    assert is_oom(MemoryError())
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    try:
        torch.empty((1 << 62,), dtype=torch.uint8)  # torch's CPU allocator refusing, as it really does
    except RuntimeError as exc:
        assert is_oom(exc), exc
    else:  # pragma: no cover
        pytest.fail("a 4 EiB allocation succeeded")
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("size out of memory range"))


def test_parse_faults_and_setup_errors():
    assert parse_faults("decode:1, diffuse:2") == ((("decode", 1), ("diffuse", 2)), [])
    assert parse_faults("decode") == ((("decode", 1),), [])
    assert parse_faults(None) == ((), [])
    with pytest.raises(SetupError) as err:
        build_runtime("sd3-medium", "emulated:1xH200", inject_oom="paint:1,decode:x")
    assert "unknown stage 'paint'" in str(err.value) and "whole number" in str(err.value)


def _one(stage_faults: str, devices: str, shape: Shape, policy: str = "trident"):
    async def main():
        rt = build_runtime("sd3-medium", devices, policy, time_scale=0, inject_oom=stage_faults)
        await rt.start()
        eng = rt.engine
        got = eng.submit([Submission("sd3-medium", "x", shape, seed=1, slo_s=LONG_SLO_S)])
        out = await eng.wait(got.ids[0], 30)
        desc = eng.describe(got.ids[0])
        rows = eng.request_rows()
        await eng.shutdown(1)
        return out, desc, rows, eng.errors

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_decode_oom_is_retried_tiled_and_counted():
    out, desc, rows, errors = _one("decode:1", "emulated:1x2xH200", Shape(1024, 1024, 1, 28))
    assert out.state == "done" and desc["ooms"] == 1 and rows[0].ooms == 1 and not errors, list(errors)
    decodes = [s for s in desc["stages"] if s["stage"] == "decode"]
    assert [(s["outcome"], s["tiled"]) for s in decodes] == [("oom", False), ("done", True)]


def test_diffuse_oom_is_retried_and_counted(caplog):
    with caplog.at_level("WARNING", logger="tridentcore.runtime.engine"):
        out, desc, rows, _ = _one("diffuse:1", "emulated:1x8xH200", Shape(1024, 1024, 1, 28))
    # why a stage failed is in the log (outside test: a failed attempt's reason was nowhere)
    assert any("diffuse of dispatch" in r.getMessage() and "failed: " in r.getMessage() and "out of memory"
               in r.getMessage().lower() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert out.state == "done" and rows[0].ooms == 1
    diffuses = [s for s in desc["stages"] if s["stage"] == "diffuse"]
    assert [s["outcome"] for s in diffuses] == ["oom", "done"]
    assert [s["batch"] for s in diffuses] == [1, 1]


def test_diffuse_oom_retry_takes_more_gpus():
    # unwidened: alone on the node, the work-conserving default would already take all 8 GPUs
    _, desc, _, _ = _one("diffuse:1", "emulated:1x8xH200", Shape(1024, 1024, 1, 28), "trident:wide=false")
    diffuses = [s for s in desc["stages"] if s["stage"] == "diffuse"]
    assert len(diffuses[1]["devices"]) > len(diffuses[0]["devices"])
    _, desc, _, _ = _one("diffuse:1", "emulated:1x8xH200", Shape(1024, 1024, 1, 28))
    diffuses = [s for s in desc["stages"] if s["stage"] == "diffuse"]
    assert len(diffuses[0]["devices"]) == len(diffuses[1]["devices"]) == 8


def test_cpu_worker_real_allocation_failure_is_an_oom_value_and_tiled_decode_works():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker runs; restored below (later tests in this process run as before)
    try:
        _oom_then_tiled()
    finally:
        torch.set_num_threads(threads)


def _oom_then_tiled():
    import torch

    from tridentcore.pipelines import load_pipeline

    pipes = {"tiny-sd3": load_pipeline("tiny-sd3")}
    common = {"model": "tiny-sd3", "request_ids": (0,), "height": 64, "width": 64, "frames": 1, "steps": 2,
              "prompts": ("x",), "negative_prompts": ("",), "seeds": (3,), "guidances": (None,)}

    class Flag:
        value = -1

    with torch.inference_mode():
        enc = _execute(pipes, {}, StageTask(1, "encode", **common), Flag)
        dif = _execute(pipes, {}, StageTask(2, "diffuse", start_step=0, end_step=2,
                                            inputs=((enc.outputs[0], None),), **common), Flag)
        failed = _execute(pipes, {}, StageTask(3, "decode", inputs=(dif.outputs[0],), fault="oom", **common), Flag)
        retried = _execute(pipes, {}, StageTask(4, "decode", inputs=(dif.outputs[0],), tiled=True, **common), Flag)
    assert not failed.ok and failed.oom
    assert "can't allocate memory" in failed.error and "--inject-oom" in failed.error  # torch's own words
    assert retried.ok and retried.outputs[0].encode()[:8] == b"\x89PNG\r\n\x1a\n"  # (the engine encodes it)


def test_served_decode_oom_completes_and_the_store_counts_it(tmp_path):
    from tridentcore.store import query_readonly

    db = tmp_path / "oom.duckdb"
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0",
                           "--policy", "trident", "--inject-oom", "decode:1", "--db", str(db)])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 20, "slo_ms": 1e7}
            resp = client.post("/v1/requests", json=body)
            assert resp.status_code == 202
            job = resp.json()["id"]
            result = client.get(f"/v1/requests/{job}/result")
            for _ in range(200):
                if result.status_code != 409:
                    break
                result = client.get(f"/v1/requests/{job}/result")
            assert result.status_code == 200, result.text
            item = client.get(f"/v1/requests/{job}").json()["items"][0]
            assert item["state"] == "done" and item["ooms"] == 1
            assert [(s["stage"], s["outcome"]) for s in item["stages"]] == [
                ("encode", "done"), ("diffuse", "done"), ("decode", "oom"), ("decode", "done")]
            # the injection is spent: the next request sees no fault
            again = client.post("/v1/images/generations", json=body).json()
            assert [s["outcome"] for s in again["timings"][0]["stages"]] == ["done"] * 3
    finally:
        assert server.stop() == 0
    rows = query_readonly(db, "SELECT state, ooms FROM requests ORDER BY request_id")
    assert list(rows["state"]) == ["done", "done"] and list(rows["ooms"]) == [1, 0]
    spans = query_readonly(db, "SELECT count(*) AS n FROM stage_spans WHERE outcome = 'oom'")
    assert spans["n"][0] == 1


def test_cpu_worker_process_oom_is_retried_tiled():
    """The whole path with a real worker process: torch's allocator fails inside it, the result crosses
    the pipe as an oom value, the engine retries the decode tiled, and the PNG comes back."""
    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:1", "--policy", "trident",
                           "--inject-oom", "decode:1"], timeout_s=180)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            resp = client.post("/v1/images/generations", json={"prompt": "x", "model": "tiny-sd3", "size": "64x64",
                                                               "steps": 2, "seed": 5, "slo_ms": 1e7})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            stages = [(s["stage"], s["outcome"], s.get("tiled")) for s in body["timings"][0]["stages"]]
            assert stages == [("encode", "done", None), ("diffuse", "done", None), ("decode", "oom", False),
                              ("decode", "done", True)]
            import base64

            assert base64.b64decode(body["data"][0]["b64_json"])[:8] == b"\x89PNG\r\n\x1a\n"
            assert client.get(f"/v1/requests/{body['id']}").json()["items"][0]["ooms"] == 1
    finally:
        assert server.stop() == 0
