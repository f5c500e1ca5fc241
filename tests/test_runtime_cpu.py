"""Real pipelines in real worker processes: `trident serve --devices cpu:2` (127.0.0.1, port 0).

Same bytes as `trident generate`; video as animated WebP; a running diffuse stopped at a step
boundary by a cancel; a worker SIGKILLed mid-request is restarted and every request completes."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import time

import httpx
import pytest
from typer.testing import CliRunner

from tridentcore.bench.launch import start_server

from folder_profiles import tiny_sd3_profile_as  # noqa: E402  (tests/, on sys.path under pytest)

LONG_SLO_MS = 10_000_000  # these tests are about completion, not deadlines


@pytest.fixture(scope="module")
def cpu_server():
    server = start_server(["--models", "tiny-sd3,tiny-wan", "--devices", "cpu:2", "--policy", "trident"],
                          timeout_s=180)
    client = httpx.Client(base_url=server.url, timeout=120)
    yield server, client
    client.close()
    assert server.stop() == 0


def _wait_done(client, ids, timeout_s=90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    states = {}
    while time.monotonic() < deadline:
        states = {i: client.get(f"/v1/requests/{i}").json() for i in ids}
        if all(s["state"] not in ("queued", "running") for s in states.values()):
            return states
        time.sleep(0.05)
    raise AssertionError(f"not finished: {[(i, s['state']) for i, s in states.items()]}")


def test_png_equals_trident_generate(cpu_server, tmp_path):
    _, client = cpu_server
    body = {"prompt": "a red fox in snow", "model": "tiny-sd3", "size": "64x64", "steps": 2, "seed": 11,
            "slo_ms": LONG_SLO_MS}
    resp = client.post("/v1/images/generations", json=body)
    assert resp.status_code == 200, resp.text
    served = base64.b64decode(resp.json()["data"][0]["b64_json"])
    assert served[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s["stage"] for s in resp.json()["timings"][0]["stages"]] == ["encode", "diffuse", "decode"]
    import torch

    from tridentcore.cli import app

    out = tmp_path / "gen.png"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers run one torch thread; CPU reductions differ in the last bits otherwise
    try:
        result = CliRunner().invoke(app, ["generate", "--prompt", body["prompt"], "--out", str(out), "--model",
                                          "tiny-sd3", "--size", "64x64", "--steps", "2", "--seed", "11"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == served
    # the URL form serves the same file
    resp = client.post("/v1/images/generations", json={**body, "response_format": "url"})
    url = resp.json()["data"][0]["url"]
    raw = client.get(url)
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png" and raw.content == served


def test_video_is_an_animated_webp(cpu_server):
    _, client = cpu_server
    resp = client.post("/v1/videos/generations", json={"prompt": "waves", "model": "tiny-wan", "size": "32x32",
                                                       "frames": 5, "steps": 2, "n": 2, "seed": 1,
                                                       "slo_ms": LONG_SLO_MS})
    assert resp.status_code == 200, resp.text
    blobs = [base64.b64decode(d["b64_json"]) for d in resp.json()["data"]]
    assert len(blobs) == 2 and all(b[:4] == b"RIFF" and b[8:12] == b"WEBP" and b"ANIM" in b for b in blobs)
    assert blobs[0] != blobs[1]  # seeds 1 and 2
    # one frame is a WebP too, as its media type says (it was a PNG served as image/webp)
    resp = client.post("/v1/requests", json={"prompt": "one", "model": "tiny-wan", "size": "64x64", "frames": 1,
                                             "steps": 2, "slo_ms": LONG_SLO_MS, "response_format": "url"})
    assert resp.status_code == 202, resp.text
    job = resp.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/requests/{job}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    raw = client.get(f"/v1/requests/{job}/result/0")
    assert raw.headers["content-type"] == "image/webp" and raw.content[:4] == b"RIFF" and raw.content[8:12] == b"WEBP"
    from PIL import Image

    assert Image.open(io.BytesIO(raw.content)).size == (64, 64)


def test_media_is_encoded_after_the_decode_and_a_done_request_always_has_its_result(cpu_server):
    """The worker returns the decoded frames and the engine encodes the PNG on its own threads (on an
    H200 a served 1024x1024 decode took 0.27 s, its VAE 0.085 s). A request reads as
    decoding until its media is made: whenever it reads done, its result is there."""
    _, client = cpu_server
    body = {"prompt": "x", "model": "tiny-sd3", "size": "512x512", "steps": 2, "slo_ms": LONG_SLO_MS}
    ids = []
    for seed in range(4):
        resp = client.post("/v1/requests", json={**body, "seed": seed, "response_format": "url"})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    pending, seen = set(ids), set()
    deadline = time.monotonic() + 90
    while pending:
        assert time.monotonic() < deadline, f"not done: {pending}"
        for job in list(pending):
            got = client.get(f"/v1/requests/{job}").json()
            seen.add(got["items"][0]["state"])
            if got["state"] == "done":
                raw = client.get(f"/v1/requests/{job}/result/0")  # at once: no window where it is missing
                assert raw.status_code == 200 and raw.content[:8] == b"\x89PNG\r\n\x1a\n", raw.text[:200]
                item = client.get(f"/v1/requests/{job}").json()["items"][0]
                assert item["media_ms"] is not None and item["media_ms"] > 0
                decode = [s for s in item["stages"] if s["stage"] == "decode"]
                assert len(decode) == 1 and decode[0]["outcome"] == "done"
                pending.discard(job)
    assert "decoding" in seen or "diffusing" in seen  # (it was polled while it ran)


def test_a_worker_whose_death_is_reported_late_is_lost_at_its_closed_pipe_and_its_request_waits():
    """Outside test 112: the forkserver a worker was forked from stopped (``kill -STOP``, standing in for
    one slow to reap it), the worker killed: its exit status came 5 s later, and meanwhile the engine
    sent a request's encode to it three times, each a broken pipe within 7 ms (500 "encode failed 3
    times"), while /healthz said the device was alive. The closed pipe (or a send that fails) now
    marks the worker lost at once: /healthz says so, the request waits for the restart and is served."""
    import psutil

    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:1"], timeout_s=180)
    forkserver = None
    try:
        client = httpx.Client(base_url=server.url, timeout=60)
        ((pid,),) = [(d["pid"],) for d in client.get("/v1/cluster").json()["devices"] if d.get("pid")]
        forkserver = psutil.Process(pid).ppid()
        assert forkserver != server.proc.pid and forkserver in {p.pid for p in psutil.Process(
            server.proc.pid).children(recursive=True)}  # (the server's own forkserver: this test started it)
        os.kill(forkserver, signal.SIGSTOP)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(0.3)  # (the outside test's request came 0.5 s after the kill)
        job = client.post("/v1/requests", json={"prompt": "x", "model": "tiny-sd3", "size": "64x64", "steps": 2,
                                                "slo_ms": LONG_SLO_MS})
        assert job.status_code == 202, job.text
        while client.get("/healthz").json()["devices_alive"] != 0:  # (its exit status came after 5 s)
            assert time.monotonic() - killed < 3, "the killed worker still counted as alive"
            time.sleep(0.05)
        time.sleep(0.5)
        assert client.get(f"/v1/requests/{job.json()['id']}").json()["state"] != "failed"
        os.kill(forkserver, signal.SIGCONT)
        forkserver = None
        deadline = time.monotonic() + 60
        while (state := client.get(f"/v1/requests/{job.json()['id']}").json()["state"]) != "done":
            assert state != "failed" and time.monotonic() < deadline, client.get(f"/v1/requests/{job.json()['id']}").text
            time.sleep(0.1)
        log = server.log_path.read_text(errors="replace")
        assert "closed its pipe: it ended" in log or "could not be sent its work" in log, log[-3000:]
        client.close()
    finally:
        if forkserver is not None:
            os.kill(forkserver, signal.SIGCONT)
        assert server.stop() == 0


@pytest.mark.parametrize("devices", ["cpu:1", "emulated:1xH200,cpu:1"])
def test_with_no_device_back_waiting_requests_fail_and_new_ones_get_503(tmp_path, devices):
    """The only worker is killed and cannot come back (its model's folder is gone, as a dead Ray
    node's actors cannot): requests used to be accepted and wait for ever. Within
    ``--no-device-timeout`` they wait (a restart takes seconds); past it, the waiting ones fail,
    new ones get 503 no_devices with Retry-After, and /healthz says no device is alive. With a second
    kind of device alive (outside test: /healthz said all was well, the messages "no device is
    alive"), /healthz stays ok and names the kind that is down and its models; the other kind serves;
    the log names the lost worker by its device id, as /v1/cluster does (it counted each kind from 0)."""
    import shutil

    from tridentcore.pipelines import load_pipeline

    folder = tmp_path / "saved"
    load_pipeline("tiny-sd3").pipe.save_pretrained(folder)
    profile = tiny_sd3_profile_as(str(folder), tmp_path / "saved.csv")
    mixed = devices != "cpu:1"
    server = start_server(["--models", str(folder) + (",sd3-medium" if mixed else ""), "--devices", devices,
                           "--profile", f"cpu={profile},emulated=h200" if mixed else str(profile),
                           "--no-device-timeout", "4", *(["--time-scale", "0"] if mixed else [])], timeout_s=180)
    try:
        client = httpx.Client(base_url=server.url, timeout=60)
        body = {"prompt": "x", "model": str(folder), "size": "64x64", "steps": 2, "slo_ms": LONG_SLO_MS}
        assert client.post("/v1/images/generations", json=body).status_code == 200
        ((device, pid),) = [(d["id"], d["pid"]) for d in client.get("/v1/cluster").json()["devices"] if d.get("pid")]
        assert device == (1 if mixed else 0)
        shutil.rmtree(folder)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["devices_alive"] > mixed:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting = client.post("/v1/requests", json=body)
        assert waiting.status_code == 202, waiting.text  # an outage shorter than the timeout only queues
        job = waiting.json()["id"]
        t0 = time.monotonic()
        while client.get(f"/v1/requests/{job}").json()["state"] != "failed":
            assert time.monotonic() - t0 < 20, client.get(f"/v1/requests/{job}").json()
            time.sleep(0.1)
        reason = client.get(f"/v1/requests/{job}").json()["items"][0]["reason"]
        # how long it was down (at least the 4 s limit; checked every 0.5 s)
        # and why the restarts fail (outside test 110: said in the server's log only)
        assert re.search(r"no device of cpu:1 was alive for [45] s \(every worker lost, its restarts failing; the last "
                         rf"restart's error: .*{re.escape(str(folder))}.*\)$", reason), reason
        refused = client.post("/v1/images/generations", json=body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_devices", refused.text
        assert "the last restart's error: " in refused.json()["error"]["message"], refused.text
        assert float(refused.headers["retry-after"]) > 0
        health = client.get("/healthz")
        if mixed:
            assert health.status_code == 200 and health.json()["devices_alive"] == 1, health.text
            assert health.json()["down"] == [{"devices": "cpu:1", "models": [str(folder)]}], health.text
            other = {**body, "model": "sd3-medium", "size": "512x512"}
            assert client.post("/v1/images/generations", json=other).status_code == 200
            log = server.log_path.read_text(errors="replace")
            assert f"worker 1: worker process {pid} exited" in log and "worker 0: worker process" not in log, log[-3000:]
        else:
            assert health.status_code == 503 and health.json()["devices_alive"] == 0 and "down" not in health.json()
        client.close()
    finally:
        assert server.stop() == 0


def test_a_folder_whose_weights_give_nan_is_refused_at_the_start_instead_of_serving_black_images(tmp_path):
    """Outside test 110: a folder whose transformer weights had bytes overwritten (size and header
    intact) was served: HTTP 200, state done, an all-black PNG. Each stage now refuses NaN or inf
    output, so the worker's warm-up (a one-step request at start) fails and the server does not
    start, saying which stage and component; a request meeting it later fails the same way (its
    stage retried, then failed with the reason), never answered with the black image."""
    from tridentcore.bench.launch import LaunchError
    from tridentcore.pipelines import load_pipeline

    folder = tmp_path / "saved"
    load_pipeline("tiny-sd3").pipe.save_pretrained(folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    with weights.open("r+b") as fh:
        fh.seek(weights.stat().st_size // 3)
        fh.write(b"\xff" * (weights.stat().st_size // 3))
    profile = tiny_sd3_profile_as(str(folder), tmp_path / "saved.csv")
    try:
        server = start_server(["--models", str(folder), "--devices", "cpu:1", "--profile", str(profile)], timeout_s=180)
    except LaunchError as exc:
        said = str(exc)
    else:
        server.stop()  # (only the server this test started)
        pytest.fail("a folder whose weights give NaN was served")
    assert re.search(r"\(exit 2\):\s+error: the server could not start: worker 0: NonFiniteOutput: "
                     rf"{re.escape(str(folder))}: the diffuse's latents \(steps 0-1\) hold NaN or infinite values "
                     r"\(float32\): the denoiser's weights may be damaged", said), said


def test_a_worker_restarted_after_its_folder_was_replaced_does_not_serve_another_model(tmp_path):
    """Outside test 101: the folder a server served was replaced by another model's (a video pipeline)
    and the worker killed: the restarted worker loaded what the folder then held and served it under
    the old name, a WebP video for an image request, without a word. Now the restart is refused (and
    retried, as a failed restart is, until the folder is back); a folder whose files changed but that
    holds the same kind of model is served with a warning."""
    import shutil
    from pathlib import Path

    from tridentcore.pipelines import load_pipeline

    folder, video, same = tmp_path / "saved", tmp_path / "video", tmp_path / "same"
    load_pipeline("tiny-sd3").pipe.save_pretrained(folder)
    load_pipeline("tiny-wan").pipe.save_pretrained(video)
    shutil.copytree(folder, same)
    config = same / "vae" / "config.json"  # the same model, one config value written differently
    config.write_text(json.dumps({**json.loads(config.read_text()), "force_upcast": True}))
    profile = tiny_sd3_profile_as(str(folder), tmp_path / "saved.csv")
    server = start_server(["--models", str(folder), "--devices", "cpu:1", "--profile", str(profile)], timeout_s=180)
    try:
        client = httpx.Client(base_url=server.url, timeout=60)
        body = {"prompt": "x", "model": str(folder), "size": "64x64", "steps": 2, "slo_ms": LONG_SLO_MS}

        def kill_worker_and_swap(into: Path) -> None:
            ((pid,),) = [(d["pid"],) for d in client.get("/v1/cluster").json()["devices"] if d.get("pid")]
            shutil.move(folder, tmp_path / f"was-{into.name}")
            shutil.copytree(into, folder)
            os.kill(pid, signal.SIGKILL)  # the worker process of the server this test started

        assert client.post("/v1/images/generations", json=body).status_code == 200
        kill_worker_and_swap(video)
        deadline = time.monotonic() + 60
        while "is not the model it served" not in server.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, server.log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        log = server.log_path.read_text(errors="replace")
        assert re.search(rf"worker 0: restart failed: worker 0: {re.escape(str(folder))} is not the model it served "
                         r"\(an image model of sides \d+\.\.\d+, \d+ steps by default at the start, now a video "
                         r"model", log), log[-3000:]
        assert client.get("/healthz").json()["devices_alive"] == 0
        # a dead worker shows no pid (it showed the killed process's: outside test 133)
        assert [(d["alive"], d["pid"]) for d in client.get("/v1/cluster").json()["devices"]] == [(False, None)]
        shutil.rmtree(folder)
        shutil.copytree(same, folder)  # the same kind of model again: the next restart serves it, said
        deadline = time.monotonic() + 90
        while client.get("/healthz").json()["devices_alive"] != 1:
            assert time.monotonic() < deadline, server.log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        got = client.post("/v1/images/generations", json={**body, "response_format": "b64_json"})
        assert got.status_code == 200 and got.json()["kind"] == "image", got.text[:300]
        assert "changed since it was loaded" in server.log_path.read_text(errors="replace")
        client.close()
    finally:
        assert server.stop() == 0


def test_cancel_stops_a_running_diffuse_at_a_step_boundary(cpu_server):
    _, client = cpu_server
    rid = client.post("/v1/requests", json={"prompt": "x", "model": "tiny-sd3", "size": "128x128", "steps": 200,
                                            "slo_ms": LONG_SLO_MS}).json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/requests/{rid}").json()["items"][0]["state"] != "diffusing":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.delete(f"/v1/requests/{rid}").json()["state"] == "cancelled"
    deadline = time.monotonic() + 30
    while True:
        stages = client.get(f"/v1/requests/{rid}").json()["items"][0]["stages"]
        diffuse = [s for s in stages if s["stage"] == "diffuse"]
        if diffuse:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert diffuse[0]["outcome"] == "cancelled" and diffuse[0]["end_step"] < 200
    assert client.get(f"/v1/requests/{rid}/result").json()["error"]["code"] == "cancelled"


def test_an_item_done_before_its_generation_is_cancelled_is_still_served(cpu_server):
    """Outside test: an item of an n=4 generation was done when the generation was cancelled, and its
    image answered 409 cancelled, as the cancelled items did. A done item's file is served."""
    _, client = cpu_server
    job = client.post("/v1/requests", json={"prompt": "x", "model": "tiny-sd3", "size": "256x256", "steps": 150,
                                            "n": 4, "slo_ms": LONG_SLO_MS}).json()["id"]
    deadline = time.monotonic() + 120
    while "done" not in (states := [i["state"] for i in client.get(f"/v1/requests/{job}").json()["items"]]):
        assert time.monotonic() < deadline, states
        time.sleep(0.02)
    client.delete(f"/v1/requests/{job}")
    items = _wait_done(client, [job])[job]["items"]
    ended = [i["state"] for i in items]
    assert "done" in ended and "cancelled" in ended, ended  # (the four items do not all end at once)
    for k, state in enumerate(ended):
        resp = client.get(f"/v1/requests/{job}/result/{k}")
        if state == "done":
            assert resp.status_code == 200 and resp.content[:8] == b"\x89PNG\r\n\x1a\n", (k, resp.text[:200])
        else:
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "cancelled", (k, resp.text[:200])


def test_sigkilled_worker_is_restarted_and_every_request_completes(cpu_server):
    _, client = cpu_server
    body = {"prompt": "x", "model": "tiny-sd3", "size": "128x128", "steps": 40, "slo_ms": LONG_SLO_MS}
    ids = []
    for seed in range(6):
        resp = client.post("/v1/requests", json={**body, "seed": seed})
        assert resp.status_code == 202
        ids.append(resp.json()["id"])
    deadline = time.monotonic() + 30
    victim = None
    while victim is None:  # a worker with half its diffuse still to run (a CI run killed one whose diffuse
        # had ended between the two reads: its result was kept, and no stage failed)
        assert time.monotonic() < deadline, "no diffuse ever ran"
        early = {item["id"] for i in ids for item in client.get(f"/v1/requests/{i}").json()["items"]
                 if item["stage"] == "diffuse" and item["steps_done"] <= body["steps"] // 2}
        for d in client.get("/v1/cluster").json()["devices"]:
            run = d["running"]
            if run and run["stage"] == "diffuse" and d["pid"] and early & set(run["requests"]):
                victim = d
                break
        else:
            time.sleep(0.005)
    os.kill(victim["pid"], signal.SIGKILL)  # a worker process of the server this test started
    states = _wait_done(client, ids)
    assert all(s["state"] == "done" for s in states.values()), states
    outcomes = [st["outcome"] for s in states.values() for item in s["items"] for st in item["stages"]]
    assert "failed" in outcomes  # the killed dispatch is on record, then re-run
    deadline = time.monotonic() + 60
    while True:
        dev = client.get("/v1/cluster").json()["devices"][victim["id"]]
        if dev["alive"] and dev["pid"] != victim["pid"]:
            break
        assert time.monotonic() < deadline, dev
        time.sleep(0.1)
    resp = client.post("/v1/images/generations", json={**body, "steps": 2, "size": "64x64"})
    assert resp.status_code == 200
    # /metrics counts the restart (it was only in the stored run)
    metrics = client.get("/metrics").text
    assert f'trident_worker_restarts_total{{device="{victim["id"]}"}} 1.0' in metrics, metrics[-3000:]
    assert "trident_stages_hung_total 0.0" in metrics


def test_a_result_handed_over_just_before_its_worker_dies_is_kept():
    """A worker process that sends its decode's result and dies at once: the reader thread queues the
    result and the death back to back, and the death was handled first (the engine's task awaiting
    the result had not run): the stage failed as lost and was redone, an attempt spent; a request on
    its last attempt failed with its result in hand (outside review). Here the death is reported right
    behind the result, as the reader thread does, with one attempt allowed."""
    import asyncio

    from tridentcore.core.types import Shape, StageKind
    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission

    async def main():
        rt = build_runtime("tiny-sd3", "cpu:1", "trident")
        e = rt.engine
        e.core.max_attempts = 1
        (worker,) = e.workers.workers
        message = worker._message
        killed = []

        def dies_after_its_decode(gen, msg):
            message(gen, msg)
            run = e.state.running.get(msg[1]) if msg[0] == "result" else None
            if run is not None and run.action.stage == StageKind.DECODE and not killed:
                killed.append(worker.pid)
                worker._proc.kill()
                worker._died(gen, -9)  # (the reader thread's report comes later: a stale generation by then)

        worker._message = dies_after_its_decode
        await rt.start()
        rid = e.submit([Submission("tiny-sd3", "a cube", Shape(64, 64, 1, 4), 1)]).ids[0]
        out = await asyncio.wait_for(e.wait(rid), 120)
        spans = [(s.stage, s.outcome) for s in e.spans if s.request_id == rid]
        await e.shutdown(10)
        return out, killed, spans

    out, killed, spans = asyncio.run(main())
    assert killed and out.state == "done" and out.result.startswith(b"\x89PNG"), (out.state, out.reason)
    assert spans == [("encode", "done"), ("diffuse", "done"), ("decode", "done")]


def test_a_killed_worker_leaves_no_temporary_folder(tmp_path):
    """A worker process that has sent a tensor holds a ``pymp-*`` folder (multiprocessing's socket for
    sharing them); killed, it cannot remove it: each kill left one in $TMPDIR for good (outside test).
    Each worker's temporary files now go to a folder of its own that the server removes when it ends."""
    import shutil
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="tmpdir-"))  # (short: a socket's path must stay under 108 bytes)
    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:1"], env={"TMPDIR": str(tmp)}, timeout_s=180,
                          folder=tmp_path / "server")
    try:
        client = httpx.Client(base_url=server.url, timeout=120)
        body = {"prompt": "x", "model": "tiny-sd3", "size": "64x64", "steps": 2}
        assert client.post("/v1/images/generations", json=body).status_code == 200
        (device,) = client.get("/v1/cluster").json()["devices"]
        (own,) = tmp.iterdir()  # the server's folder (``runtime/tmpdirs.py``): everything of it is in there
        assert own.name.startswith(f"trident-{server.proc.pid}-")
        # the server's own, the worker's (and the lock that says the folder is in use); torch's cache
        # folder, made as the forkserver imports it, is in there too (it was left in $TMPDIR)
        assert sorted(p.name[:4] for p in own.iterdir() if not p.name.startswith("torchinductor_")) == [
            ".own", "pymp", "tw0-"]
        # the worker's socket for the tensors it sent is in its folder (it went to the server's
        # multiprocessing folder, handed down with the worker's configuration, and stayed after a kill)
        assert list(own.glob("tw0-*/pymp-*/listener-*"))
        server_sockets = sorted(p.name for p in own.glob("pymp-*/*"))
        os.kill(device["pid"], signal.SIGKILL)  # the worker process of the server this test started
        deadline = time.monotonic() + 60
        while (dev := client.get("/v1/cluster").json()["devices"][0])["pid"] in (device["pid"], None) \
                or not dev["alive"]:
            assert time.monotonic() < deadline, dev
            time.sleep(0.1)
        assert client.post("/v1/images/generations", json=body).status_code == 200
        assert len([p for p in own.iterdir() if p.name.startswith("tw0-")]) == 1  # the killed one's is gone
        assert sorted(p.name for p in own.glob("pymp-*/*")) == server_sockets
        client.close()
        assert server.stop() == 0
        assert list(tmp.iterdir()) == []
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_temporary_directory_too_long_for_a_unix_socket_still_serves(tmp_path):
    """Found by hand: with a $TMPDIR of 76 characters or more every request to a `cpu:N` server failed
    ("worker process ... exited with code 0", three times, then the request): the socket a worker
    passes tensors through (``pymp-*/listener-*``) did not fit in a Unix socket address. The server's
    folder then goes to /tmp, said once in its log, and is removed as it stops."""
    from pathlib import Path

    long_tmp = tmp_path / ("t" * max(1, 90 - len(str(tmp_path))))
    long_tmp.mkdir()
    assert len(str(long_tmp)) >= 90
    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:2"], env={"TMPDIR": str(long_tmp)},
                          timeout_s=180, folder=tmp_path / "server")
    pid = server.proc.pid
    try:
        client = httpx.Client(base_url=server.url, timeout=120)
        body = {"prompt": "x", "model": "tiny-sd3", "size": "64x64", "steps": 2}
        # several at once: encodes and diffuses on either worker, the server passing latents on
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/images/generations", json=body), range(4)))
        assert [a.status_code for a in answers] == [200] * 4, [a.text[:300] for a in answers]
        (own,) = Path("/tmp").glob(f"trident-{pid}-*")  # the server's folder, its workers' in it
        assert sorted(p.name[:4] for p in own.iterdir() if not p.name.startswith("torchinductor_")) == [
            ".own", "pymp", "tw0-", "tw1-"]
        assert list(long_tmp.iterdir()) == []  # (torch's cache folder too: the forkserver's imports make it)
        client.close()
        assert server.stop() == 0
        assert server.log().count("too long for the Unix sockets") == 1
        assert not list(Path("/tmp").glob(f"trident-{pid}-*"))
    finally:
        server.stop()


def test_a_process_passing_tensors_on_makes_its_socket_folder_short_when_tmpdir_is_long(tmp_path):
    """An engine run in-process (a live bench, a test) forwards the tensors one worker sent it to
    another through a socket in its own multiprocessing folder: with a long $TMPDIR that folder is
    made in /tmp (``tmpdirs.socket_safe_mp_dir``); with a short one, where it was."""
    import subprocess
    import sys

    code = ("from multiprocessing import util; from tridentcore.runtime.tmpdirs import socket_safe_mp_dir; "
            "socket_safe_mp_dir(); print(util.get_temp_dir())")
    long_tmp = tmp_path / ("t" * max(1, 90 - len(str(tmp_path))))
    long_tmp.mkdir()
    for tmp, where in ((long_tmp, "/tmp"), (tmp_path, str(tmp_path))):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp)},
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        assert os.path.dirname(out) == where and os.path.basename(out).startswith("pymp-"), out


def test_a_cancelled_diffuse_slower_than_predicted_stops_at_its_next_step():
    """A cancelled request's running diffuse stops at the device's next step boundary. The driver
    pauses it at the boundary the cost model predicts; on a device slower than predicted (an
    uncalibrated profile, a busy host) the predicted end had passed, the driver saw nothing to stop,
    and the device ran every remaining step (outside test: 34 more steps, 1.2 s of a device kept busy
    after the request had ended). Here a cpu slot slowed 10-fold, uncalibrated: cancelled well past
    its predicted end, it stops within a few steps."""
    pytest.importorskip("torch")
    import asyncio

    from tridentcore.core.types import Shape, StageKind
    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission

    async def main():
        rt = build_runtime("tiny-sd3", "cpu:1", "pipeline-static:degree=1", slowdown=10.0, calibrate=False)
        await rt.start()
        e = rt.engine
        try:
            shape = Shape(64, 64, 1, 100)
            rid = e.submit([Submission("tiny-sd3", "x", shape, seed=1)]).ids[0]
            while True:  # its diffuse running, past the end the cost model predicted for it
                run = e.view.running_of(rid)
                if run is not None and run.action.stage == StageKind.DIFFUSE and e.now() > run.predicted_end_s:
                    break
                await asyncio.sleep(0.01)
            at = e.describe(rid)["steps_done"]
            assert e.cancel(rid)
            await e.wait(rid)
            while e.view.running_of(rid) is not None:
                await asyncio.sleep(0.01)
            return at, [s for s in e.spans if s.request_id == rid and s.stage == StageKind.DIFFUSE]
        finally:
            await e.shutdown(5)

    at, (span,) = asyncio.run(asyncio.wait_for(main(), 300))
    print(f"cancelled at step {at} (predicted end passed); the diffuse stopped at step {span.end_step} of 100")
    assert span.outcome == "cancelled" and span.end_step < 100, span
    assert span.end_step <= at + 20, (at, span)  # (its next boundary; loose: steps go on while it is told)


def test_cpu_workers_fork_from_the_forkserver_and_gpu_workers_are_spawned():
    """CPU workers are forked from a preloaded forkserver (its socket in this process's multiprocessing
    folder, made short when $TMPDIR is long: the test of a long $TMPDIR above); a process forked from
    one that touched CUDA cannot use it, so GPU workers are spawned."""
    from tridentcore.runtime import worker_forkserver

    assert worker_forkserver.context("cpu").get_start_method() == "forkserver"
    assert worker_forkserver.context("cuda:0").get_start_method() == "spawn"


def test_a_worker_killed_before_it_read_its_task_leaves_no_tensor_shared_for_it():
    """A task's tensors go to the worker as file descriptors that this process keeps, in
    multiprocessing's resource sharer, until the worker asks for them while it reads the task. A
    worker killed before it read its task never asks: each such descriptor (and the shared memory
    behind it) stayed for the server's lifetime (outside test 91: a worker killed just after its
    restart). Here the worker is stopped (SIGSTOP), handed a task with two tensors, and killed."""
    import asyncio
    from multiprocessing import resource_sharer

    import torch

    from tridentcore.core.types import StageKind
    from tridentcore.runtime.process_worker import CpuWorker
    from tridentcore.runtime.tasks import StageTask

    def shared() -> int:
        return len(resource_sharer._resource_sharer._cache)

    async def main():
        worker = CpuWorker(0, ["tiny-sd3"], restart=False)
        await worker.start()
        try:
            before = shared()
            os.kill(worker.pid, signal.SIGSTOP)  # a process this test started
            task = StageTask(1, StageKind.DECODE, "tiny-sd3", (0,), 64, 64, 1, 4, prompts=("x",),
                             negative_prompts=("",), seeds=(0,), guidances=(None,), end_step=4,
                             inputs=(torch.ones(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)))
            run = asyncio.ensure_future(worker.run(task))
            await asyncio.sleep(0.5)
            assert shared() >= before + 2  # the tensors wait for a worker that cannot read them
            os.kill(worker.pid, signal.SIGKILL)
            result = await asyncio.wait_for(run, 30)
            deadline = time.monotonic() + 15  # (given back a little after the death: ``_UNSHARE_AFTER_S``)
            while shared() != before and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return before, shared(), result
        finally:
            await worker.stop()

    before, after, result = asyncio.run(main())
    assert result.lost and after == before, (before, after, result)


def test_a_peer_that_goes_away_while_fetching_shared_tensors_is_a_warning_not_a_traceback(caplog, capfd):
    """multiprocessing's resource sharer (the tensors sent to workers) prints the traceback of any error
    of its thread: a worker killed while it fetched its task's tensors printed a bare
    ``ConnectionResetError`` traceback in the server's log (outside test 91). Here a peer connects to
    the sharer and closes at once, mid-handshake."""
    import logging
    import socket
    from multiprocessing import resource_sharer

    from tridentcore.runtime import process_worker

    process_worker._quiet_sharer_errors()
    r, w = os.pipe()
    try:
        shared = resource_sharer.DupFd(r)  # starts the sharer's thread, as a tensor sent to a worker does
        address = shared._id[0]
        with caplog.at_level(logging.WARNING, logger="tridentcore.runtime.process_worker"):
            with socket.socket(socket.AF_UNIX) as peer:
                peer.connect(address)
            deadline = time.monotonic() + 10
            while "went away while it fetched" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "went away while it fetched" in caplog.text
        assert "Traceback" not in capfd.readouterr().err
        os.close(shared.detach())  # (the sharer still serves)
    finally:
        os.close(r)
        os.close(w)


def test_the_forkserver_ends_as_soon_as_its_server_has_ended(tmp_path):
    """The forkserver CPU workers are forked from ends when its server does (the pipe it watches
    closes), but it went through the interpreter's teardown of torch, diffusers and transformers: 1.1 s
    of CPU on a quiet host, and an outside test saw it outlive its server by up to 5 s. It now ends at
    once (``_worker_preload._exit_at_once``). A module preloaded ahead of the workers' one here
    registers an exit handler the teardown would run: it must not have run."""
    import subprocess
    import sys

    import psutil

    (tmp_path / "exit_marker.py").write_text(
        "import atexit, pathlib\natexit.register(pathlib.Path(__file__).with_suffix('.ran').touch)\n")
    script = ("import os\n"
              "from multiprocessing import forkserver\n"
              "from tridentcore.runtime import worker_forkserver\n"
              "ctx = worker_forkserver.context('cpu')\n"
              "ctx.set_forkserver_preload(['exit_marker', *worker_forkserver.PRELOAD])\n"
              "p = ctx.Process(target=os.getpid)\n"  # forked once the preload is over
              "p.start()\n"
              "p.join()\n"
              "print(forkserver._forkserver._forkserver_pid, flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    ended = time.monotonic()
    assert out.returncode == 0, out.stderr[-2000:]
    pid = int(out.stdout.split()[-1])
    try:
        forkserver = psutil.Process(pid)
        forkserver.wait(timeout=10)  # (reaped by whoever adopted it; a loose bound: it takes about 0.05 s)
    except psutil.NoSuchProcess:
        pass
    gone_after_s = time.monotonic() - ended
    assert not (tmp_path / "exit_marker.ran").exists(), "the forkserver went through the interpreter's teardown"
    assert gone_after_s < 10


def test_workers_outlive_a_killed_forkserver_and_are_still_watched_restarted_and_stopped():
    """multiprocessing learns a forked worker's end from its forkserver: with the forkserver killed, the
    server took every worker for dead (exit code 255) though they ran on, and had none for 5-7 s, until
    a new forkserver had imported. They are now watched through a pidfd: kept, still restarted when
    killed, and stopped with the server."""
    import psutil

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:2"], timeout_s=180)
    try:
        client = httpx.Client(base_url=server.url, timeout=120)
        body = {"prompt": "x", "model": "tiny-sd3", "size": "64x64", "steps": 2}
        before = [d["pid"] for d in client.get("/v1/cluster").json()["devices"]]
        (forkserver,) = [p for p in psutil.Process(server.proc.pid).children()
                         if "multiprocessing.forkserver" in " ".join(p.cmdline())]
        forkserver.kill()  # a child of the server this test started
        deadline = time.monotonic() + 10
        while not gone(forkserver.pid):  # (a zombie until the server starts a new one)
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(1.0)  # (the reader threads took the workers for dead at once)
        devices = client.get("/v1/cluster").json()["devices"]
        assert [(d["pid"], d["alive"]) for d in devices] == [(pid, True) for pid in before], devices
        assert client.post("/v1/images/generations", json=body).status_code == 200
        assert 'trident_worker_restarts_total{device="0"} 0.0' in client.get("/metrics").text
        os.kill(before[0], signal.SIGKILL)  # a worker of this server, now watched through its pidfd
        deadline = time.monotonic() + 90
        while (dev := client.get("/v1/cluster").json()["devices"][0])["pid"] in (before[0], None) or not dev["alive"]:
            assert time.monotonic() < deadline, dev  # (through a new forkserver: its imports first)
            time.sleep(0.1)
        assert client.post("/v1/images/generations", json=body).status_code == 200
        assert client.get("/v1/cluster").json()["devices"][1]["pid"] == before[1]
        client.close()
        assert server.stop() == 0
        assert gone(before[1]) and gone(dev["pid"])  # the one that outlived its forkserver too
    finally:
        server.stop()
