"""`trident serve --devices cpu:2` as a terminal runs it: one line once it serves, and a quiet stop.

The server runs in its own process group (as a shell job does), with SIGINT at its default even when
this test runs under a shell that ignores it (``make test &``). Ctrl-C is SIGINT to the whole group
(what a terminal sends): the worker processes ignore it and the server drains, stops them and stores
the run, exit 130. SIGTERM to the server alone, or to the whole group (``kill -TERM -PGID``,
systemd's stop: the workers ignore it too), exits 0. Never a traceback, never a worker "exited with code" warning, and no
process of the server outlives it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from children import default_sigint, wait_ended  # noqa: E402  (tests/, on sys.path under pytest)
from folder_profiles import tiny_sd3_profile_as  # noqa: E402

from tridentcore.store import query_readonly

pytestmark = pytest.mark.slow

READY = re.compile(r"trident serve: ready at (http://127\.0\.0\.1:\d+) \(devices (\S+); models (\S+); policy (\S+);")


def _ready_line(err_path: Path, proc: subprocess.Popen, timeout_s: float = 240.0) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = err_path.read_text(errors="replace")
        m = READY.search(text)
        if m:
            return m
        if proc.poll() is not None:
            raise AssertionError(f"trident serve exited ({proc.returncode}) before it was ready:\n{text[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no ready line within {timeout_s} s:\n{err_path.read_text(errors='replace')[-3000:]}")


def _worker_processes(url: str) -> list[psutil.Process]:
    """The server's worker processes, by the pids its cluster view gives (forked from its forkserver:
    not its own children)."""
    return [psutil.Process(d["pid"]) for d in httpx.get(url + "/v1/cluster", timeout=30).json()["devices"]]


def _loading(server_pid: int) -> psutil.Process | None:
    """The process a starting CPU worker waits for: the forkserver importing torch and diffusers for it
    (a child of the server), or the worker itself once forked (a child of the forkserver)."""
    for child in psutil.Process(server_pid).children():
        if "forkserver" in _cmd(child):
            return next(iter(child.children()), child)
    return None


def _cmd(p: psutil.Process) -> str:
    """A process's command line; "" for one that ended or is a zombie meanwhile (a CI run failed on a
    zombie child read while the server started)."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _nohup() -> None:
    """As ``nohup`` starts a command: SIGHUP ignored (and SIGINT at its default, as ``default_sigint``)."""
    default_sigint()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 0), ("sigterm-group", 0), ("nohup, sighup", 0)])
def test_serve_says_where_it_serves_and_stops_quietly(tmp_path, how, code):
    """``nohup, sighup``: a server started under nohup outlives its terminal's SIGHUP (it had been
    taken as SIGTERM, since SIGHUP stops a server that is not nohup'd), then stops on SIGTERM."""
    db = tmp_path / "serve.duckdb"
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:2", "--port", "0", "--db", str(db)], stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_nohup if how.startswith("nohup") else default_sigint)
    try:
        m = _ready_line(err, proc)
        url, devices, models, policy = m.groups()
        assert (devices, models, policy) == ("cpu:2", "tiny-sd3", "trident")
        assert httpx.get(url + "/healthz", timeout=10).json()["ok"] is True
        body = {"prompt": "a red fox", "model": "tiny-sd3", "size": "64x64", "steps": 2, "slo_ms": 10_000_000}
        assert httpx.post(url + "/v1/images/generations", json=body, timeout=120).status_code == 200
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 2  # the two workers (and multiprocessing's resource tracker)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # the group: the server and its workers, as a terminal does
        elif how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        elif how == "nohup, sighup":
            os.killpg(proc.pid, signal.SIGHUP)  # the terminal closed
            time.sleep(1.0)
            assert proc.poll() is None and httpx.post(url + "/v1/images/generations", json=body,
                                                      timeout=120).status_code == 200
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(120) == code
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    text = err.read_text(errors="replace") + out.read_text(errors="replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert "exited with code" not in text, text[-3000:]
    assert len(READY.findall(text)) == 1
    gone = psutil.wait_procs(family, timeout=15)[1]
    assert not gone, f"still running after the server: {gone}"
    runs = query_readonly(db, "SELECT run_id, status FROM runs")
    assert len(runs) == 1 and runs.status[0] == "done"
    assert f"trident serve: run {runs.run_id[0]} stored in {db}" in text and "WARNING" not in text  # a plain last line
    assert len(query_readonly(db, "SELECT 1 FROM requests WHERE run_id = ?", [runs.run_id[0]])) == (
        2 if how.startswith("nohup") else 1)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c twice"])
def test_a_stop_drains_while_the_server_still_answers(tmp_path, how):
    """Requests in flight at a stop: the server keeps answering while it drains (a job's status, 503
    ``shutting_down`` to a new generation); what the drain cuts short (past ``--drain-timeout``, or
    at once on a second Ctrl-C) gets the JSON 500 ``failed``, never uvicorn's plain-text 500; the
    stored run says exactly what the clients were told, and the last line says where it is."""
    import concurrent.futures as cf

    db = tmp_path / "serve.duckdb"
    drain = "1" if how == "sigterm" else "120"
    with open(tmp_path / "out.txt", "wb") as o, open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:2", "--port", "0", "--db", str(db), "--drain-timeout", drain],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=default_sigint)
    try:
        url = _ready_line(tmp_path / "err.txt", proc).group(1)
        body = {"prompt": "a red fox", "model": "tiny-sd3", "size": "256x256", "steps": 40, "slo_ms": 10_000_000}

        def one(i: int) -> httpx.Response:
            return httpx.post(url + "/v1/images/generations", json={**body, "seed": i}, timeout=300)

        with cf.ThreadPoolExecutor(12) as pool:
            calls = [pool.submit(one, i) for i in range(12)]
            job = httpx.post(url + "/v1/requests", json=body, timeout=30).json()["id"]
            time.sleep(1.0)
            t0 = time.monotonic()
            if how == "sigterm":
                proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGINT)
                time.sleep(0.3)
            # sent at once: refused from the signal on, not admitted in the moment before the drain begins
            # only to be cut short by it
            late = httpx.post(url + "/v1/images/generations", json=body, timeout=30)
            status = httpx.get(f"{url}/v1/requests/{job}", timeout=30)  # still answered while it drains
            if how != "sigterm":
                os.killpg(proc.pid, signal.SIGINT)  # the second Ctrl-C: stop waiting
            answers = [c.result(timeout=300) for c in calls]
        assert proc.wait(120) == (0 if how == "sigterm" else 130)
        assert time.monotonic() - t0 < 30  # not the drain timeout twice over, nor 120 s
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    assert status.status_code == 200 and status.json()["state"] in ("queued", "running", "done", "failed")
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    codes = [a.status_code for a in answers]
    cut = [a for a in answers if a.status_code != 200]
    assert cut, codes  # 12 requests of about a second each on 2 workers: some were still in flight
    assert all(a.status_code == 500 and a.json()["error"]["code"] == "failed" and "shut down" in a.text
               for a in cut), [a.text[:200] for a in cut]
    text = (tmp_path / "err.txt").read_text(errors="replace")
    assert "Traceback" not in text and "CancelledError" not in text, text[-3000:]
    runs = query_readonly(db, "SELECT run_id, status FROM runs")
    assert len(runs) == 1 and runs.status[0] == "interrupted"
    assert f"trident serve: run {runs.run_id[0]} stored in {db}" in text
    states = query_readonly(db, "SELECT state, count(*) AS n FROM requests GROUP BY state")
    stored = dict(zip(states.state, states.n))
    assert stored.get("done", 0) >= codes.count(200) and sum(stored.values()) == 13
    assert stored.get("done", 0) <= codes.count(200) + 1  # the synchronous answers match; +1: the async job


def test_a_generation_cut_short_by_the_drain_answers_the_items_it_finished(tmp_path):
    """A synchronous generation of 2 images on one worker, stopped after its first image was made: the
    drain (``--drain-timeout 0``) fails the second. The client was answered 500 ``failed`` with no
    data, though the first image was made and stored as done (outside test 130). The failure now
    carries the items that ended done: their indices, their images and timings."""
    import base64
    import concurrent.futures as cf

    db = tmp_path / "serve.duckdb"
    with open(tmp_path / "out.txt", "wb") as o, open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:1", "--port", "0", "--db", str(db), "--drain-timeout", "0",
                                 "--policy", "pipeline-static:degree=1"],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=default_sigint)
    try:
        url = _ready_line(tmp_path / "err.txt", proc).group(1)
        body = {"prompt": "a red fox", "model": "tiny-sd3", "size": "256x256", "steps": 200, "n": 2,
                "slo_ms": 10_000_000}
        with cf.ThreadPoolExecutor(1) as pool:
            call = pool.submit(httpx.post, url + "/v1/images/generations", json=body, timeout=300)
            deadline = time.monotonic() + 120
            items: list[str] = []
            steps = 0
            while time.monotonic() < deadline and not call.done():
                listed = httpx.get(url + "/v1/requests", timeout=30).json()["data"]
                items = [d["state"] for d in listed[0]["items"]] if listed else []
                steps = listed[0]["items"][1]["steps_done"] if listed else 0
                if items and items[0] == "done" and steps > 0:
                    break
                time.sleep(0.05)
            assert items[:1] == ["done"] and items[1] != "done" and 0 < steps < 200, (items, steps)  # the second's
            proc.send_signal(signal.SIGTERM)
            answer = call.result(timeout=120)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    assert answer.status_code == 500, answer.text[:300]
    error = answer.json()["error"]
    assert error["code"] == "failed" and "1 of its 2 done" in error["message"], error["message"]
    assert error["done"] == [0] and [t["index"] for t in error["timings"]] == [0]
    assert [d["index"] for d in error["data"]] == [0]
    assert base64.b64decode(error["data"][0]["b64_json"])[:4] == b"\x89PNG"
    states = query_readonly(db, "SELECT state, count(*) AS n FROM requests GROUP BY state")
    assert dict(zip(states.state, states.n)) == {"done": 1, "failed": 1}
    # its diffuse's span says how far it got (it read start 0, end 0: as if no step had run; outside test 126)
    cut = query_readonly(db, "SELECT s.start_step, s.end_step FROM stage_spans s JOIN requests r USING (run_id, "
                             "request_id) WHERE r.state = 'failed' AND s.stage = 'diffuse' AND s.outcome = 'failed'")
    assert len(cut) == 1 and cut.start_step[0] == 0 and steps <= cut.end_step[0] < 200, cut


def test_a_request_submitted_without_waiting_that_ends_in_the_drain_can_still_be_read(tmp_path):
    """A client polling for a request (``POST /v1/requests``) while the server drains: the request
    ended, the server stopped at once, and the next poll found the doors closed: its image made and
    never seen (a browser test caught it once workers stopped quicker). The server now answers on
    until each such client has read how its request ended, for up to 5 s (``serve._PICKUP_S``); a
    client that never comes back only holds the stop that long, said in the log. A dashboard listing
    the recent requests meanwhile (the workbench's Live page, every 2 s) is not their client: its list
    showed the request ended, the server took the end as read and stopped, and the client polling
    for it found the doors closed (a CI run of the browser test)."""
    import threading

    with open(tmp_path / "out.txt", "wb") as o, open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "sd3-medium", "--devices",
                                 "emulated:1xH200", "--time-scale", "1", "--port", "0"],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = _ready_line(tmp_path / "err.txt", proc).group(1)
        body = {"prompt": "a red fox", "model": "sd3-medium", "size": "1024x1024", "slo_ms": 10_000_000}
        # on one GPU: the first ends, its client gone; the second ends last, and the drain with it
        gone, read = (httpx.post(url + "/v1/requests", json=body, timeout=30).json()["id"] for _ in range(2))
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        listed = []

        def dashboard() -> None:  # lists the recent requests every 0.2 s while the server answers
            while proc.poll() is None:
                try:
                    listed.append({j["id"]: j["state"] for j in httpx.get(f"{url}/v1/requests?limit=10",
                                                                          timeout=30).json()["data"]})
                except httpx.TransportError:
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=dashboard, daemon=True)
        watcher.start()
        states = []
        while not states or states[-1] != "done":  # a client polling every 2 s
            time.sleep(2.0)
            states.append(httpx.get(f"{url}/v1/requests/{read}", timeout=30).json()["state"])
            assert len(states) < 30, states
        result = httpx.get(f"{url}/v1/requests/{read}/result", timeout=30)
        assert result.status_code == 200 and result.json()["state"] == "done"
        # the dashboard saw both end before the client did, which did not make them read
        assert any(seen.get(read) == "done" and seen.get(gone) == "done" for seen in listed), listed[-3:]
        t0 = time.monotonic()
        assert proc.wait(60) == 0
        waited = time.monotonic() - t0  # for the other client, which never came back
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    text = (tmp_path / "err.txt").read_text(errors="replace")
    line = re.search(r"1 request\(s\) submitted without waiting ended in the drain or in the 60 s before it and "
                     r"their clients had not read how "
                     r"([\d.]+) s after it: (\S+); stopping", text)  # the one never read, named
    assert line and 4.9 <= float(line.group(1)) < 15 and line.group(2) == gone, text[-2000:]
    assert waited < 15, waited
    watcher.join(10)


@contextlib.contextmanager
def _one_emulated_gpu(tmp_path: Path):
    """`trident serve` on one emulated H200 at the cost model's own speed, its log in ``err.txt``: the
    process and its URL; killed at the end if it still runs (only the process started here)."""
    with open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "sd3-medium", "--devices",
                                 "emulated:1xH200", "--time-scale", "1", "--port", "0"],
                                stdout=subprocess.DEVNULL, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc, _ready_line(tmp_path / "err.txt", proc).group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _stop_time(proc: subprocess.Popen) -> float:
    """Seconds until ``proc`` exits (0, else the test fails)."""
    t0 = time.monotonic()
    assert proc.wait(60) == 0
    return time.monotonic() - t0


def test_a_request_that_ended_just_before_the_stop_is_still_read_by_its_polling_client(tmp_path):
    """Outside test 106: the drain waited only for requests submitted without waiting that were still in
    flight as it began. One that had ended a moment before the stop, its client polling every 2 s
    and not yet back, was not waited for: the server stopped at once, the client's next poll found the
    port closed and the log said nothing. Now it answers on until that client has read the end."""
    with _one_emulated_gpu(tmp_path) as (proc, url):
        body = {"prompt": "a red fox", "model": "sd3-medium", "size": "512x512", "steps": 1}
        job = httpx.post(url + "/v1/requests", json=body, timeout=30).json()["id"]
        for _ in range(200):  # until it has ended, read from the list (which tells its client nothing)
            listed = {j["id"]: j["state"] for j in httpx.get(f"{url}/v1/requests", timeout=30).json()["data"]}
            if listed[job] == "done":
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the client's next poll
        got = httpx.get(f"{url}/v1/requests/{job}", timeout=30)
        assert got.status_code == 200 and got.json()["state"] == "done", got.text
        waited = _stop_time(proc)
    text = (tmp_path / "err.txt").read_text(errors="replace")
    assert "had not read how" not in text and waited < 4.0, (waited, text[-2000:])  # it stops once read


def test_a_client_reading_only_an_emulated_items_file_counts_as_told(tmp_path):
    """Outside test 102: a client polling only `/v1/requests/{id}/result/0` of an emulated request got
    409 `no_pixels` once it was done (emulated devices make none), which did not count as having read
    how it ended: the drain waited its 5 s for that client and named it as never told."""
    with _one_emulated_gpu(tmp_path) as (proc, url):
        body = {"prompt": "a red fox", "model": "sd3-medium", "size": "1024x1024", "slo_ms": 10_000_000}
        job = httpx.post(url + "/v1/requests", json=body, timeout=30).json()["id"]
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        codes = []
        while not codes or codes[-1][1] != "no_pixels":  # the item's file, and nothing else
            got = httpx.get(f"{url}/v1/requests/{job}/result/0", timeout=30)
            codes.append((got.status_code, got.json()["error"]["code"]))
            assert len(codes) < 100, codes
            time.sleep(0.2)
        waited = _stop_time(proc)
    text = (tmp_path / "err.txt").read_text(errors="replace")
    assert codes[-1] == (409, "no_pixels") and "had not read how" not in text, text[-2000:]
    assert waited < 4.0, (waited, text[-2000:])  # (it waited the whole 5 s for this client)


def test_a_second_stop_cuts_the_wait_for_pollers_short_and_the_log_says_so(tmp_path):
    """Outside tests 96 and 98: a second Ctrl-C ends the drain and the wait for pollers at once, and the
    log said they had not read how their requests ended "in 5 s", naming none (96); on CPU workers with
    synchronous requests in flight too, it said nothing at all (98: the second stop closed the doors at
    once, and the loop's end cancelled the drain, hurried, before its last line)."""
    import concurrent.futures as cf

    with open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:1", "--port", "0"],
                                stdout=subprocess.DEVNULL, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = _ready_line(tmp_path / "err.txt", proc).group(1)
        body = {"prompt": "a red fox", "model": "tiny-sd3", "size": "256x256", "steps": 40}
        with cf.ThreadPoolExecutor(10) as pool:
            calls = [pool.submit(httpx.post, url + "/v1/images/generations", json=body, timeout=120) for _ in range(10)]
            ids = {httpx.post(url + "/v1/requests", json=body, timeout=30).json()["id"] for _ in range(20)}
            time.sleep(2.0)
            os.killpg(proc.pid, signal.SIGINT)  # (the terminal's Ctrl-C: to the whole group)
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(60) == 130
            cf.wait(calls, timeout=60)
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    text = (tmp_path / "err.txt").read_text(errors="replace")
    line = re.search(r"(\d+) request\(s\) submitted without waiting ended in the drain or in the 60 s before it and "
                     r"their clients had not read how ([\d.]+) s after it \(cut short by a second stop\): (.*); "
                     r"stopping", text)
    assert line and float(line.group(2)) < 1, text[-2000:]
    named = line.group(3).split(", ")
    assert int(line.group(1)) == len(named) >= 1 and set(named) <= ids, (named, ids)


def test_a_third_ctrl_c_exits_at_once_and_says_the_run_was_not_stored(tmp_path):
    """Three Ctrl-Cs in a row: out at once, no traceback, exit 1 with the run's id and the way to
    recover it; the journal keeps what was written, and ``runs recover`` closes the run, interrupted."""
    from tridentcore.store.recovery import STOPPED_REASON

    import concurrent.futures as cf

    db = tmp_path / "serve.duckdb"
    with open(tmp_path / "out.txt", "wb") as o, open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:2", "--port", "0", "--db", str(db)], stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_sigint)
    try:
        url = _ready_line(tmp_path / "err.txt", proc).group(1)
        body = {"prompt": "a red fox", "model": "tiny-sd3", "size": "256x256", "steps": 40, "slo_ms": 10_000_000}
        quick = {"prompt": "a cat", "model": "tiny-sd3", "size": "64x64", "steps": 2, "slo_ms": 60_000}
        with cf.ThreadPoolExecutor(16) as pool:
            calls = [pool.submit(httpx.post, url + "/v1/images/generations", json={**body, "seed": i}, timeout=300)
                     for i in range(8)]
            time.sleep(1.0)
            calls += [pool.submit(httpx.post, url + "/v1/images/generations", json={**quick, "seed": i}, timeout=300)
                      for i in range(6)]  # some answered just before the signals: their endings must survive
            time.sleep(0.5)
            for _ in range(3):
                os.killpg(proc.pid, signal.SIGINT)
                time.sleep(0.05)
            cf.wait(calls, timeout=120)
        assert proc.wait(60) == 1
        answered = [c.result().json()["request_ids"][0] for c in calls
                    if c.exception() is None and c.result().status_code == 200]
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    text = (tmp_path / "err.txt").read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "was not stored" in text and f"trident runs recover --db {db}" in text
    assert "stored in" not in text.splitlines()[-1]
    from tridentcore.cli import app
    from typer.testing import CliRunner

    assert CliRunner().invoke(app, ["runs", "recover", "--db", str(db)]).exit_code == 0
    runs = query_readonly(db, "SELECT status FROM runs")
    # told to stop before it ended: interrupted, not crashed (outside test 119), and its unfinished requests say so
    assert list(runs.status) == ["interrupted"]
    reasons = set(query_readonly(db, "SELECT reason FROM requests WHERE state = 'unfinished'").reason)
    assert reasons <= {STOPPED_REASON}, reasons
    done = set(query_readonly(db, "SELECT request_id FROM requests WHERE state = 'done'").request_id)
    assert set(answered) <= done, (answered, done)  # every answer a client got is in the recovered run


def test_a_server_started_by_a_bench_stops_and_stores_its_run_when_the_bench_is_killed(tmp_path):
    """``kill -9`` of the process that started ``trident serve`` (``trident bench --backend live``, the
    workbench): the server noticed nothing and served for ever. Now it drains and stops on its own
    within seconds, and its run is stored (interrupted: it was stopped, not lost)."""
    db = tmp_path / "runs.duckdb"
    starter = (
        "import sys, time\n"
        "from tridentcore.bench.launch import start_server\n"
        f"s = start_server(['--models', 'sd3-medium', '--devices', 'emulated:1x2xH200', '--db', {str(db)!r}])\n"
        "print(s.proc.pid, s.url, s.log_path.parent, flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        pid, url, folder = parent.stdout.readline().split()
        pid = int(pid)
        assert Path(folder).name.startswith("trident-serve-") and (Path(folder) / "server.log").exists()
        body = {"model": "sd3-medium", "prompt": "x", "size": "512x512"}
        assert httpx.post(f"{url}/v1/images/generations", json=body, timeout=60).status_code == 200
        parent.kill()
        parent.wait(10)
        assert wait_ended(pid, 60), "the server outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
        try:
            psutil.Process(pid).kill()
        except (psutil.NoSuchProcess, NameError, UnboundLocalError):
            pass
    rows = query_readonly(str(db), "SELECT status, (SELECT count(*) FROM requests) AS n FROM runs")
    assert list(rows["n"]) == [1] and rows["status"][0] in ("interrupted", "done"), rows
    # the folder its starter made for its port file and log went with it (each such kill left one)
    assert not Path(folder).exists()


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_server_whose_starter_dies_while_it_starts_stops_once_up(reaped):
    """The same ``kill -9`` while ``trident serve`` is still starting: by the time it looked, its parent was
    already init, and it took that for "started by hand" and served for ever. Now the starter named in
    its environment being gone is enough: it stops as soon as it is up; also while the dead starter is
    a zombie its own parent has not reaped yet (a workbench job killed while nobody lists the jobs)."""
    starter = (
        "import os, subprocess, sys\n"
        "from tridentcore.core.defaults import PARENT_PID_ENV\n"
        "p = subprocess.Popen([sys.executable, '-m', 'tridentcore.cli', 'serve', '--models', 'sd3-medium',\n"
        "                      '--devices', 'emulated:1x2xH200', '--port', '0'], stdout=subprocess.DEVNULL,\n"
        "                     stderr=subprocess.DEVNULL, env={**os.environ, PARENT_PID_ENV: str(os.getpid())})\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n")  # gone at once, long before the server serves
    first = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    pid = int(first.stdout.readline().split()[0])
    if reaped:
        first.wait(60)
    try:
        assert wait_ended(pid, 90), "the server outlived the process that started it"
    finally:
        first.wait(60)
        first.stdout.close()
        try:
            psutil.Process(pid).kill()
        except (psutil.NoSuchProcess, NameError):
            pass


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_while_the_workers_load_ends_the_start_at_once(tmp_path, how):
    """Ctrl-C while the workers loaded their pipelines waited for every model to load, then stopped
    (10.5 s on tiny-sd3 + tiny-wan, longer than a whole start; outside test). A worker still loading
    is now stopped at once. Here its loading process is frozen (SIGSTOP): without that, the server
    would wait for it until the start timeout."""
    db = tmp_path / "serve.duckdb"
    err = tmp_path / "err.txt"
    with open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:1", "--port", "0", "--db", str(db)], stdout=subprocess.DEVNULL, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_sigint)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while worker is None and time.monotonic() < deadline and proc.poll() is None:
            worker = _loading(proc.pid)
            time.sleep(0.05)
        assert worker is not None, err.read_text(errors="replace")[-3000:]
        worker.suspend()  # (frozen while it imports or loads: the worker would never say ready)
        time.sleep(0.5)
        t0 = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # the group, as a terminal does (the worker ignores it)
        else:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        took = time.monotonic() - t0
        outlived = [_cmd(p) for p in psutil.wait_procs([worker], timeout=15)[1]]  # (frozen: ends only if killed)
    finally:
        if proc.poll() is None:  # only the processes this test started
            proc.kill()
            proc.wait(10)
        if worker is not None and psutil.pid_exists(worker.pid) and worker.status() == psutil.STATUS_STOPPED:
            worker.kill()  # (frozen, it would outlive the test)
    text = err.read_text(errors="replace")
    assert code == (130 if how == "ctrl-c" else 0), text[-3000:]
    assert took < 30, took  # (about 1 s here; it waited for the start timeout, 180 s)
    assert "Traceback" not in text and not READY.search(text), text[-3000:]
    assert text.rstrip().endswith("trident serve: stopped before it served; nothing stored"), text[-3000:]
    # the forkserver, frozen while it imports, was left running (once thawed, it imported on for up to
    # 5 s, holding the server's stderr open): the server kills it as it exits (``worker_forkserver``)
    assert outlived == [], f"the loading process outlived the server: {outlived}"
    assert not db.exists() or len(query_readonly(db, "SELECT 1 FROM runs")) == 0


@contextlib.contextmanager
def _held_at(fifo, proc, timeout_s: float, said):
    """Once ``proc`` has opened ``fifo`` to read (and is held there): the FIFO's write end. ``proc``
    (started by the test) is killed if it is still running at the end."""
    writer = None
    try:
        deadline = time.monotonic() + timeout_s
        while writer is None:  # (opening it to write fails until the process has opened it to read)
            assert proc.poll() is None and time.monotonic() < deadline, said()[-3000:]
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.02)
        yield writer
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_sigterm_before_the_workers_start_ends_the_start_as_ctrl_c_does(tmp_path, sig):
    """Until uvicorn's handlers took them, a SIGTERM (or SIGHUP) killed the server where it stood (outside
    test 92: exit -15 and an empty log, 2 s after launch on a busy host, while it imported). Here the
    server is held where it reads its --spec (a FIFO nobody writes to), after its imports began."""
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)
    db = tmp_path / "serve.duckdb"
    err = tmp_path / "err.txt"
    with open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:1", "--port", "0", "--db", str(db), "--spec", str(fifo)], stdout=subprocess.DEVNULL,
                                stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    with _held_at(fifo, proc, 120, lambda: err.read_text(errors="replace")):
        proc.send_signal(sig)
        code = proc.wait(60)
    text = err.read_text(errors="replace")
    assert code == 0, (code, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
    assert text.rstrip().endswith("trident serve: stopped before it served; nothing stored"), text[-3000:]
    assert not db.exists() or len(query_readonly(db, "SELECT 1 FROM runs")) == 0


def test_a_sigterm_just_as_its_handler_is_taken_ends_the_start_as_ctrl_c_does(tmp_path):
    """The handlers were taken one by one before the command's ``try``: a SIGTERM right after SIGTERM's
    was taken, before SIGHUP's, raised outside it (exit 130 and no line here; once, in a sweep of
    random early stops, a traceback and exit 1). Here ``signal.signal`` sends the SIGTERM itself as it
    takes SIGTERM's handler, so Python runs the handler at the next instruction."""
    db = tmp_path / "serve.duckdb"
    script = (
        "import os, signal, sys\n"
        "_take, _sent = signal.signal, []\n"
        "def take(sig, handler):\n"
        "    old = _take(sig, handler)\n"
        "    if sig == signal.SIGTERM and callable(handler) and not _sent:\n"
        "        _sent.append(sig)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return old\n"
        "signal.signal = take\n"
        "from tridentcore.cli import app\n"
        f"app(['serve', '--models', 'tiny-sd3', '--devices', 'cpu:1', '--port', '0', '--db', {str(db)!r}])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.rstrip().endswith("trident serve: stopped before it served; nothing stored"), out.stderr[-3000:]
    assert not db.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_while_the_command_imports_ends_the_start_as_ctrl_c_does(tmp_path, sig):
    """Python takes 0.2-0.4 s (more on a busy host) to import the command before ``serve`` runs; a
    SIGTERM or SIGHUP then killed the server (exit -15, an empty log). Here the import is held where
    the commands import typer: a module of that name ahead on the path waits on a FIFO, then hands
    over to the real one."""
    shim = tmp_path / "shim"
    shim.mkdir()
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    (shim / "typer.py").write_text(
        "import os, sys\n"
        f"with open({str(fifo)!r}, 'rb') as held:\n"
        "    held.read(1)\n"
        f"sys.path.remove({str(shim)!r})\n"
        "del sys.modules['typer']\n"
        "import typer\n"
        "sys.modules['typer'] = typer\n")
    db = tmp_path / "serve.duckdb"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                             "cpu:1", "--port", "0", "--db", str(db)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, start_new_session=True, text=True)
    with _held_at(fifo, proc, 60, lambda: proc.stderr.read()) as writer:
        proc.send_signal(sig)
        time.sleep(0.2)
        if proc.poll() is None:
            os.write(writer, b"x")  # the import goes on
        _, text = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
    assert text.rstrip().endswith("trident serve: stopped before it served; nothing stored"), text[-3000:]
    assert not db.exists()


def test_other_commands_keep_the_default_stop_while_they_import(tmp_path):
    """Only ``serve`` holds a stop that comes while the command imports: any other command still ends
    of it there (a held SIGTERM would be lost once it ran)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "typer.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "tridentcore.cli", "profiles"], capture_output=True, text=True,
                         env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == -signal.SIGTERM, (out.returncode, out.stderr[-2000:])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_while_it_starts_the_port_refuses_and_a_failed_start_is_one_line(tmp_path):
    """A client that comes while the workers load is refused at once (it used to hang on a socket that
    listened before the app could answer); a start that fails in a worker (a saved pipeline without its
    denoiser's weights) ends in one `error:` line and exit 2 (it was a traceback and exit 3)."""
    from tridentcore.pipelines import load_pipeline

    port = _free_port()
    err = tmp_path / "err.txt"
    with open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3",
                                 "--devices", "cpu:1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_sigint)
    refused = 0
    try:
        while not READY.search(err.read_text(errors="replace")) and proc.poll() is None:
            t0 = time.monotonic()
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except httpx.ConnectError:
                refused += 1
            assert time.monotonic() - t0 < 2, "a client waited on a server still starting"
            time.sleep(0.05)
        m = _ready_line(err, proc)
        assert refused >= 1  # the workers take seconds to load: it was asked while they did
        assert httpx.get(m.group(1) + "/healthz", timeout=10).json()["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    folder = tmp_path / "saved"
    load_pipeline("tiny-sd3").pipe.save_pretrained(folder)
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()
    profile = tiny_sd3_profile_as("saved", tmp_path / "saved.csv")
    out = subprocess.run([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "saved", "--devices", "cpu:1",
                          "--profile", str(profile), "--port", "0"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "startup failed" not in out.stderr, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: the server could not start: worker 0:") and "transformer" in line, line


@pytest.mark.parametrize("how", ["sigterm-group", "sighup-group", "sigterm, then a worker killed",
                                 "both workers killed, then a sigterm"])
def test_a_sigterm_drains_on_live_workers_and_a_worker_lost_meanwhile_is_replaced(tmp_path, how):
    """SIGTERM to the whole group (``kill -TERM -PGID``, GNU ``timeout``, systemd's control-group
    stop) with requests in flight: the worker processes ignore it, as they do a Ctrl-C, and the
    server drains on them; every request is answered. Before, the workers died at once and the
    drain sent each dispatch to a dead device three times: most requests failed ("worker 0 is
    down") within a second, the run stored as done. A worker killed during the drain (``kill -9``)
    is lost as at any other time: its work goes to the other one and it is restarted (before, the
    same three failures, with a live worker beside it). SIGHUP (a closed terminal, a dropped SSH
    session) is taken as SIGTERM: it killed the server and its workers at once, the run left
    ``running`` for ``runs recover``. Both workers killed and then a SIGTERM while they restart: the
    restarts go on and the drain serves every request on them (the stop killed the restarts, and every
    request still waiting failed when the drain ran out, outside test)."""
    import concurrent.futures as cf

    db = tmp_path / "serve.duckdb"
    with open(tmp_path / "out.txt", "wb") as o, open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "tiny-sd3", "--devices",
                                 "cpu:2", "--port", "0", "--db", str(db), "--drain-timeout", "240"],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=default_sigint)
    try:
        url = _ready_line(tmp_path / "err.txt", proc).group(1)
        workers = _worker_processes(url)
        assert len(workers) == 2, workers
        body = {"prompt": "a red fox", "model": "tiny-sd3", "size": "256x256", "steps": 60, "slo_ms": 10_000_000}

        def one(i: int) -> httpx.Response:
            return httpx.post(url + "/v1/images/generations", json={**body, "seed": i}, timeout=300)

        with cf.ThreadPoolExecutor(12) as pool:
            calls = [pool.submit(one, i) for i in range(12)]
            cf.wait(calls, return_when=cf.FIRST_COMPLETED)  # (about a second each: most still to do)
            if how.endswith("-group"):
                os.killpg(proc.pid, signal.SIGTERM if how == "sigterm-group" else signal.SIGHUP)
            elif how.endswith("then a sigterm"):  # the stop came while both restarted: it stopped the restarts,
                for w in workers:                  # and the drain waited for devices that never came back
                    w.kill()
                time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                workers[0].kill()
            answers = [c.result(timeout=300) for c in calls]
        assert proc.wait(240) == 0
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    text = (tmp_path / "err.txt").read_text(errors="replace")
    assert [a.status_code for a in answers] == [200] * 12, [a.text[:200] for a in answers if a.status_code != 200]
    assert "Traceback" not in text, text[-3000:]
    runs = query_readonly(db, "SELECT run_id, status FROM runs")
    assert list(runs.status) == ["done"]
    states = query_readonly(db, "SELECT state, count(*) AS n FROM requests GROUP BY state")
    assert dict(zip(states.state, states.n)) == {"done": 12}


def test_refusals_while_it_drains_are_counted_in_metrics_and_the_stored_run(tmp_path):
    """A generation sent while the server drains gets 503 ``shutting_down`` from its HTTP layer,
    before its body is read; those refusals were counted nowhere (``/metrics`` read 0, the run's
    ``refused`` was empty). Each now counts once (its ``n`` unread) in both."""
    import json

    db = tmp_path / "serve.duckdb"
    with open(tmp_path / "out.txt", "wb") as o, open(tmp_path / "err.txt", "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "sd3-medium", "--devices",
                                 "emulated:1xH200", "--time-scale", "1", "--port", "0", "--db", str(db)],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = _ready_line(tmp_path / "err.txt", proc).group(1)
        body = {"prompt": "a red fox", "model": "sd3-medium", "size": "1024x1024", "slo_ms": 10_000_000}
        assert httpx.post(url + "/v1/requests", json={**body, "n": 4}, timeout=30).status_code == 202  # seconds
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the drain has begun: the HTTP layer refuses
        late = [httpx.post(url + "/v1/images/generations", json={**body, "n": n}, timeout=30) for n in (1, 2, 1)]
        assert [r.status_code for r in late] == [503] * 3 and all(r.json()["error"]["code"] == "shutting_down"
                                                                  for r in late)
        metrics = httpx.get(url + "/metrics", timeout=30).text
        assert 'trident_requests_refused_total{reason="shutting_down"} 3.0' in metrics, metrics[-2000:]
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)
    runs = query_readonly(db, "SELECT status, config_json FROM runs")
    assert list(runs.status) == ["done"] and json.loads(runs.config_json[0])["refused"] == {"shutting_down": 3}
    assert json.loads(runs.config_json[0])["workers"] == {"kinds": ["emulated"], "restarts": 0}  # what ran it


def test_a_server_keeps_its_temporary_files_in_a_folder_of_its_own_and_the_next_one_removes_a_killed_ones():
    """Outside tests, twice: `kill -9` of a `cpu:1` server left its `pymp-*` folder (multiprocessing's
    socket) in $TMPDIR, one per kill. A server's temporary files now go into `trident-PID-*`, removed
    as it ends; one killed with SIGKILL cannot, and the next server to start removes it."""
    import shutil
    import tempfile

    from tridentcore.bench.launch import start_server

    base = tempfile.mkdtemp(prefix="tt", dir="/tmp")  # short: a socket's path has to fit in 108 bytes
    try:
        def own(pid: int) -> list[str]:
            return [p for p in os.listdir(base) if p.startswith(f"trident-{pid}-")]

        first = start_server(["--models", "tiny-sd3", "--devices", "cpu:1"], env={"TMPDIR": base})
        try:
            body = {"model": "tiny-sd3", "prompt": "x", "size": "64x64", "steps": 2}
            assert httpx.post(f"{first.url}/v1/images/generations", json=body, timeout=120).status_code == 200
            (mine,) = own(first.proc.pid)
            inside = os.listdir(os.path.join(base, mine))
            assert any(p.startswith("tw0-") for p in inside), inside  # its worker's folder is in it
            assert sorted(os.listdir(base)) == [mine]  # nothing of it elsewhere
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait(10)
        finally:
            first.stop()
        assert own(first.proc.pid), "a server killed with SIGKILL cannot remove its folder"
        # a live server of another PID namespace (its PID means nothing here): its lock keeps its folder
        import fcntl

        other = os.path.join(base, f"trident-{first.proc.pid}-otherpid")
        os.mkdir(other)
        held = os.open(os.path.join(other, ".owner"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            second = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200"], env={"TMPDIR": base})
            try:
                assert own(first.proc.pid) == [os.path.basename(other)]  # the killed one's removed, the other kept
                assert own(second.proc.pid)
            finally:
                assert second.stop() == 0
        finally:
            os.close(held)
        shutil.rmtree(other)
        assert os.listdir(base) == []  # a server that stops removes its own
    finally:
        shutil.rmtree(base, ignore_errors=True)



def test_a_worker_whose_server_is_killed_ends_at_its_next_step():
    """Outside test: `kill -9` of a busy `cpu:2` server left its workers computing at 82 % CPU for
    7-19 s, to the end of their stage (on a GPU, a long stage's whole length, the device held). A
    worker now ends at its next step boundary: its progress message finds the pipe broken."""
    from tridentcore.bench.launch import start_server

    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:1", "--slowdown", "50"])
    worker = None
    try:
        body = {"model": "tiny-sd3", "prompt": "x", "size": "64x64", "steps": 200}
        job = httpx.post(f"{server.url}/v1/requests", json=body, timeout=30).json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the diffuse under way: a few steps done, ~200 to go
            items = httpx.get(f"{server.url}/v1/requests/{job}", timeout=30).json()["items"]
            if items[0].get("steps_done", 0) >= 2:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the diffuse did not start: {items}")
        (worker,) = _worker_processes(server.url)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        t0 = time.monotonic()
        gone, _ = psutil.wait_procs([worker], timeout=60)
        assert gone, "the worker computed on after its server was killed"
        assert time.monotonic() - t0 < 30  # (a step takes about 50x its compute; the stage's rest, minutes)
    finally:
        server.stop()
        if worker is not None and worker.is_running():  # (the test failed: the orphan this test made)
            worker.kill()
