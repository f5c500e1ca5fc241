"""workloads/mixed.py (the Locust mix): its options, the light-import rule, bad values, the web UI,
and that its schedule is the simulator's.

Locust is only ever run as a child process here: importing it (gevent's monkey patching) into a
process that already imported requests/transformers breaks, so this test process never does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tridentcore.bench.launch import start_server
from tridentcore.bench.scenario import load_scenario
from tridentcore.bench.spec import RunSpec
from workloads.schedule import build_schedule

from children import wait_ended  # noqa: E402  (tests/, on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "workloads" / "mixed.py"
OPTIONS = ("--mix", "--rate", "--arrival", "--slo-scale", "--seed", "--duration", "--time-scale", "--cost-profile",
           "--cluster", "--db", "--run-id")


def _locust(*args: str, timeout: float = 60.0, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Locust on the locustfile with ``args``; ``env``: variables added to this process's environment."""
    return subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def test_options_are_locust_options():
    out = subprocess.run([sys.executable, str(LOCUSTFILE), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for opt in OPTIONS:
        assert f"\n  {opt} " in out.stdout, opt
    assert "--headless" in out.stdout and "--csv" in out.stdout  # Locust's own, from the same parser


def test_locustfile_imports_nothing_heavy():
    code = (
        "import sys, importlib.util\n"
        "import locust\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('mixed', {str(LOCUSTFILE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['mixed'] = mod; spec.loader.exec_module(mod)\n"
        "new = sorted({m.split('.')[0] for m in set(sys.modules) - before})\n"
        "print(repr(new)); print(repr(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    new, everything = (eval(line) for line in out.stdout.strip().splitlines()[-2:])  # noqa: S307 - our own output
    heavy = {"torch", "diffusers", "transformers", "requests", "numpy", "scipy", "pandas", "pyarrow", "duckdb",
             "fastapi", "uvicorn", "streamlit", "ray"}
    assert not heavy & set(new), sorted(heavy & set(new))
    assert not {"torch", "diffusers", "transformers"} & set(everything)
    # and none of our modules on its import path names requests (Locust itself imports it)
    for path in (LOCUSTFILE, REPO / "workloads" / "schedule.py"):
        text = path.read_text()
        assert "import requests" not in text and "from requests" not in text


@pytest.mark.parametrize("args, needle", [
    (["--mix", "no-such-mix"], "--mix: no-such-mix: unknown mix 'no-such-mix'"),  # (not all three)
    (["--mix", "tiny", "--cluster", "3xfoo"], "--cluster: cluster '3xfoo': unknown GPU kind 'foo'"),
    (["--rate", "-1"], "--rate: must be a number > 0"),
    (["--arrival", "gamma:cv=x"], "--arrival:"),
    (["--time-scale", "0"], "--time-scale: must be a number in (0, 1000]"),
    (["--arrival", "trace:no-such-file.jsonl"], "no-such-file.jsonl"),
    (["--rate", "abc"], "argument --rate: invalid float value"),
    (["--mix", "tiny", "--cost-profile", "h200"], "it is priced by --cost-profile cpu --cluster 2xcpu"),
    (["--mix", "tiny", "--cluster", "8xH200"], "--mix/--cost-profile/--cluster: profile 'h200' on 1x8xH200"),
    # ("give --mix" is no help when the server cannot be asked: it was "--mix: cannot ask ...; give --mix")
    ([], "--host http://127.0.0.1:9: cannot ask the server which models it serves (GET http://127.0.0.1:9/v1/models"),
    (["--rate", "-1"], "--host http://127.0.0.1:9: cannot ask the server"),  # (with the other problems, in one message)
    # where the rows go is checked before the run, not after it (a traceback at the end, the rows lost)
    (["--mix", "tiny", "--rows-out", "no-such-folder/rows.jsonl"], "--rows-out no-such-folder/rows.jsonl: the folder"),
    (["--mix", "tiny", "--db", "."], "--db .: is a folder, not a file"),
    (["--arrival", "trace:paper.txt"], "--trace-model to the Locust file"),
    # the server is asked before any load with --mix too (the whole -t of failed requests, then exit 1)
    (["--mix", "tiny"], "--host http://127.0.0.1:9: cannot ask the server which models it serves"),
    # and with --spec naming a mix (outside test: the whole -t of failed requests, then exit 1)
    (["--spec", "run.json"], "--host http://127.0.0.1:9: cannot ask the server which models it serves"),
    (["--spec", "big-seed.json"], "big-seed.json: seed: must be an integer in 0..2147483647, got 1099511627776"),
    (["--mix", "tiny", "--host", "http://[::zz"], "--host http://[::zz: cannot ask the server which models it serves "
                                                   "(GET http://[::zz/v1/models: Invalid IPv6 URL)"),  # (a traceback)
    # rows that could only fail at the end: a folder no file can be made in, a file that is not DuckDB
    (["--mix", "tiny", "--rows-out", "/proc/nope.jsonl"], "--rows-out /proc/nope.jsonl: cannot be written"),
    (["--mix", "tiny", "--db", "paper.txt"], "--db paper.txt: paper.txt: not a DuckDB database"),
    # what trident refuses too (outside test: each was taken, or ignored without a word)
    (["--mix", "tiny", "--seed", "-1"], "--seed: must be an integer in 0..2147483647, got -1"),
    (["--mix", "tiny", "--seed", "2147483648"], "--seed: must be an integer in 0..2147483647, got 2147483648"),
    (["--arrival", "trace:t.jsonl", "--mix", "tiny"], "--mix: not used with --arrival trace:FILE (the trace gives "
                                                      "the requests and their times); drop it"),
    (["--arrival", "trace:t.jsonl", "--rate", "50", "--duration", "5"], "--rate, --duration: not used with --arrival "
                                                                         "trace:FILE"),
    (["--mix", "tiny", "-u", "0"], "-u 0: no user would send the schedule; give -u 1"),
    # argparse reads --trace as --trace-model: the default mix was sent instead of the trace (outside test)
    # (and said it as --trace-model, an option not typed: now named as typed, outside test)
    (["--trace", "t.jsonl"], "--trace t.jsonl: (taken as --trace-model) only with --arrival trace:FILE"),
    (["--trace-model", "t.jsonl"], "error: --trace-model t.jsonl: only with --arrival trace:FILE"),
    # a run refused before its load leaves no database behind
    (["--mix", "tiny", "--db", "new.duckdb"], "--host http://127.0.0.1:9: cannot ask the server"),
    # the spec file gives the whole workload (outside test 125: the file's rate was sent, unsaid)
    # a trace's problems, each said (they were one line without a separator: "missing steps line 2: ...")
    (["--arrival", "trace:bad.jsonl"], "bad.jsonl: 2 problems: line 1: missing steps; line 2: missing steps"),
    (["--spec", "run.json", "--rat", "5"], "--rate: not used with --spec run.json"),  # (as argparse takes it)
    (["--spec", "run.json", "--rate", "5", "--seed=2"], "--rate, --seed: not used with --spec run.json (the spec file "
                                                        "gives the whole workload); drop them"),
    # ... and so did a config file's values or TRIDENT_MIX beside it (outside test 129)
    (["--spec", "run.json", "--config", "c.conf"], "--rate (from c.conf), --slo-scale (from c.conf): not used with "
                                                   "--spec run.json"),
    (["--spec", "run.json", "TRIDENT_MIX=tiny"], "--mix (TRIDENT_MIX): not used with --spec run.json"),
])  # fmt: skip
def test_bad_option_values_give_a_clear_error(args, needle, tmp_path):
    (tmp_path / "paper.txt").write_text("Request(request_id=0, timestamp=0.0, height=64, width=64, "
                                        "num_inference_steps=2, prompt='a')\n")
    (tmp_path / "t.jsonl").write_text('{"t": 0, "model": "tiny-sd3", "height": 64, "width": 64, "steps": 2}\n')
    (tmp_path / "bad.jsonl").write_text('{"t": 0, "model": "tiny-sd3", "height": 64, "width": 64}\n' * 2)
    (tmp_path / "run.json").write_text('{"mix": "sd3-mixed", "rate": 2, "duration_s": 10}')
    (tmp_path / "big-seed.json").write_text('{"mix": "sd3-mixed", "seed": 1099511627776}')
    (tmp_path / "c.conf").write_text("rate = 5\nslo-scale = 2\n")
    env = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    args = [a for a in args if a.split("=", 1)[0] not in env]
    out = _locust("--headless", "-t", "2s", "--host", "http://127.0.0.1:9", *args, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert needle in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "new.duckdb").exists()


def test_schedule_is_the_simulators():
    spec = RunSpec(mix="image-video", arrival="gamma:cv=4", rate=1.5, duration_s=90, seed=11, slo_scale=2.5,
                   time_scale=0.1)
    arrivals = build_schedule(spec)
    sim = load_scenario(RunSpec(mix="image-video", arrival="gamma:cv=4", duration_s=90, seed=11,
                                 slo_scale=2.5)).requests(1.5)
    assert len(arrivals) == len(sim) > 30
    for a, r in zip(arrivals, sim, strict=True):
        assert (a.index, a.spec) == (r.id, r)
        assert a.send_s == pytest.approx(r.arrival_s * 0.1)
        assert a.body["seed"] == r.seed and a.body["slo_ms"] == pytest.approx(1000 * r.slo_s)
        assert a.body["size"] == f"{r.shape.width}x{r.shape.height}"
        assert a.path.endswith("videos/generations" if r.shape.frames > 1 else "images/generations")
        assert a.name == f"{r.model} {r.shape.label()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return resp.read()


def test_web_ui_lists_the_options_and_runs_the_schedule(tmp_path):
    """Without --headless: the options are in the web UI's form, a swarm started there runs the
    schedule and stops by itself when every request has finished; Locust's CSV still comes out."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:8xH200", "--time-scale", "0.05"])
    port = _free_port()
    rows = tmp_path / "rows.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1",
                             "--web-port", str(port), "--rows-out", str(rows), "--csv", str(tmp_path / "ui")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        page = b""
        while time.monotonic() < deadline:
            try:
                page = _get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(0.2)
        text = page.decode()
        for name in ("mix", "rate", "arrival", "slo_scale", "seed", "time_scale", "run_id"):
            assert f'"{name}"' in text, name
        form = {"user_count": "1", "spawn_rate": "1", "host": server.url, "mix": "sd3-mixed", "rate": "3",
                "duration": "8", "time_scale": "0.05", "seed": "3", "run_id": "ui-run"}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/swarm", data=urllib.parse.urlencode(form).encode())
        assert json.loads(_get_req(req))["success"]
        expected = len(build_schedule(RunSpec(mix="sd3-mixed", rate=3, duration_s=8, seed=3, time_scale=0.05)))
        state = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not rows.exists():
            state = json.loads(_get(f"http://127.0.0.1:{port}/stats/requests"))["state"]
            time.sleep(0.3)
        assert rows.exists(), state
        got = [json.loads(line) for line in rows.read_text().splitlines()]
        assert len(got) == expected
        assert {r["state"] for r in got} == {"done"}
        for _ in range(50):  # (the web UI's state follows the runner's)
            state = json.loads(_get(f"http://127.0.0.1:{port}/stats/requests"))["state"]
            if state == "stopped":
                break
            time.sleep(0.1)
        assert state == "stopped"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        server.stop()


def _get_req(req: urllib.request.Request) -> bytes:
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
        return resp.read()


def test_headless_run_writes_client_rows_and_locust_reports(tmp_path):
    from tridentcore.store import query_readonly

    server = start_server(["--models", "sd3-medium,wan2.1-1.3b", "--devices", "emulated:2x8xH200",
                           "--time-scale", "0.05"])
    try:
        db = tmp_path / "c.duckdb"
        out = _locust("--headless", "-t", "60s", "--host", server.url, "--mix", "image-video", "--rate", "2",
                      "--duration", "15", "--time-scale", "0.05", "--seed", "5", "--db", str(db), "--run-id", "hl",
                      "--csv", str(tmp_path / "hl"), "--html", str(tmp_path / "hl.html"), "--only-summary",
                      cwd=tmp_path, timeout=120)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "schedule lag p50" in out.stderr
    expected = len(build_schedule(RunSpec(mix="image-video", rate=2, duration_s=15, seed=5, time_scale=0.05)))
    df = query_readonly(db, "SELECT * FROM client_requests WHERE run_id = 'hl' ORDER BY request_index")
    assert list(df.request_index) == list(range(expected))
    assert set(df.state) == {"done"} and set(df.http_status) == {200}
    assert (df.finished_s >= df.sent_s).all() and (df.lag_ms >= -1.0).all()
    assert df.latency_ms.notna().all() and (df.encode_ms > 0).all() and (df.decode_ms > 0).all()
    assert (tmp_path / "hl.html").stat().st_size > 1000
    stats = (tmp_path / "hl_stats.csv").read_text().splitlines()
    header = stats[0].split(",")
    counts = {}
    for line in stats[1:]:
        cells = dict(zip(header, line.split(","), strict=False))
        counts[cells["Name"]] = int(cells["Request Count"])
    assert counts.pop("Aggregated") == expected
    assert counts == df.groupby("request_class").size().to_dict()  # names are model and shape


def test_a_run_whose_starter_is_gone_ends_at_once_with_its_rows_written(tmp_path):
    """``TRIDENT_STOP_WITH_PARENT`` (a live bench's Locust): the bench killed while Locust was still
    starting left it sending for the whole ``-t`` to a server that was gone. Now a starter already
    gone when the run starts ends it at once, every scheduled request in the rows."""
    rows = tmp_path / "rows.jsonl"
    spec = tmp_path / "spec.json"  # (as a bench gives it)
    spec.write_text(json.dumps({"mix": "image-video", "rate": 1, "duration_s": 500, "backend": "live"}))
    # a server that answers (one that is down is refused before the run starts)
    server = start_server(["--models", "sd3-medium,wan2.1-1.3b", "--devices", "emulated:1x2xH200", "--time-scale",
                           "0.05"])
    try:
        _starter_gone(server.url, spec, rows)
    finally:
        server.stop()


def _starter_gone(host: str, spec: Path, rows: Path) -> None:
    starter = (
        "import os, subprocess, sys\n"
        "from tridentcore.core.defaults import PARENT_PID_ENV\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'locust', '-f', {str(LOCUSTFILE)!r}, '--headless', '-u', '1',\n"
        f"                      '-r', '1', '-t', '600s', '--host', {host!r}, '--spec', {str(spec)!r},\n"
        f"                      '--rows-out', {str(rows)!r}],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,\n"
        "                     env={**os.environ, PARENT_PID_ENV: str(os.getpid())})\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, cwd=REPO)
    pid = int(out.stdout.split()[0])
    alive = not wait_ended(pid, 60)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "Locust went on sending after its starter was gone"
    lines = rows.read_text().splitlines()
    assert len(lines) > 400  # the whole schedule, recorded as never sent


def test_a_server_that_lacks_a_model_of_the_mix_is_named_before_any_load(tmp_path):
    """A server of sd3-medium only, a mix with wan videos: refused before any load, by the flag the mix
    came from (a --spec's mix was named as --mix: outside test)."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0.05"])
    try:
        (tmp_path / "run.json").write_text('{"mix": "image-video", "rate": 2, "duration_s": 10}')
        for args, said in ((["--mix", "image-video"], f"--mix image-video: the server at {server.url} does not "
                                                       "serve wan2.1-1.3b (it serves sd3-medium)"),
                           (["--spec", "run.json"], f"--spec run.json: its mix image-video: the server at "
                                                    f"{server.url} does not serve wan2.1-1.3b")):
            out = _locust("--headless", "-t", "5s", "--host", server.url, *args, cwd=tmp_path)
            assert out.returncode == 2 and said in out.stderr, out.stderr[-2000:]
        # a trace's models too (outside test 104: all its 25 requests sent, each a 404 unknown_model)
        made = subprocess.run([sys.executable, "-m", "tridentcore.cli", "trace", "generate", "--mix", "image-video",
                               "--rate", "2", "--duration", "20", "--seed", "1", "--out", str(tmp_path / "t.jsonl")],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert made.returncode == 0, made.stderr
        out = _locust("--headless", "-t", "5s", "--host", server.url, "--arrival", "trace:t.jsonl", cwd=tmp_path)
        said = f"--arrival trace:t.jsonl: the server at {server.url} does not serve wan2.1-1.3b (it serves sd3-medium)"
        assert out.returncode == 2 and said in out.stderr, out.stderr[-2000:]
        # a host without its scheme: said how to give it (it read "unknown url type: 127.0.0.1")
        bare = server.url.removeprefix("http://")
        out = _locust("--headless", "-t", "5s", "--host", bare, "--mix", "image-video", cwd=tmp_path)
        assert out.returncode == 2 and f"(give the host as a URL: --host http://{bare})" in out.stderr, out.stderr[-2000:]
    finally:
        assert server.stop() == 0


def test_a_run_whose_server_is_killed_ends_soon_saying_so_with_every_request_in_its_rows(tmp_path):
    """Outside test: after a `kill -9` of the server the run sent the rest of its schedule into refused
    connections (44 rows of "[Errno 111] Connection refused", Locust's median 1 ms) and exited 1 with
    nothing said. Now it ends about SERVER_GONE_AFTER_S after the first refusal, says when the server
    stopped answering, exits 2, and the requests it did not send are rows saying why."""
    server = start_server(["--models", "sd3-medium,wan2.1-1.3b", "--devices", "emulated:1x8xH200", "--time-scale",
                           "0.5"])
    rows, progress = tmp_path / "rows.jsonl", tmp_path / "progress"
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-t", "120s",
                             "--host", server.url, "--mix", "image-video", "--rate", "1", "--duration", "80",
                             "--time-scale", "0.5", "--seed", "3", "--rows-out", str(rows),
                             "--progress-file", str(progress)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (progress.exists() and int(progress.read_text().split()[0] or 0) >= 2):
            time.sleep(0.2)
        assert progress.exists() and int(progress.read_text().split()[0]) >= 2, "no answers before the kill"
        server.proc.kill()
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 2 and "stopped answering at" in err and "Traceback" not in err, err[-3000:]
    assert took < 20, f"Locust went on for {took:.0f} s after the server was killed"
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    expected = len(build_schedule(RunSpec(mix="image-video", rate=1, duration_s=80, seed=3, time_scale=0.5)))
    assert len(lines) == expected  # nothing lost
    unsent = [r for r in lines if r["sent_s"] is None]
    assert unsent and all("the server stopped answering (connection refused)" in r["reason"] for r in unsent)
    refused = [r for r in lines if r["sent_s"] is not None and "refused" in r["reason"]]
    assert 0 < len(refused) < 10, len(refused)  # a few in the seconds it took to tell, not the rest of the schedule


def test_the_servers_time_scale_is_followed_or_warned_of_and_a_signal_is_the_exit_status(tmp_path):
    """Outside test 125: without --time-scale a run against `trident serve --time-scale 0.05` was sent at
    time scale 1 (a load 20 times lighter than asked), unsaid; a run stopped by SIGINT or SIGTERM exited 0,
    as one that ended by itself; a trace cut short by -t was told to give --duration, which it refuses."""
    server = start_server(["--models", "sd3-medium,wan2.1-1.3b", "--devices", "emulated:1x8xH200", "--time-scale",
                           "0.05"])
    try:
        rows = tmp_path / "rows.jsonl"
        out = _locust("--headless", "-t", "30s", "--host", server.url, "--mix", "image-video", "--rate", "2",
                      "--duration", "6", "--seed", "3", "--rows-out", str(rows), cwd=tmp_path, timeout=90)
        assert out.returncode == 0, out.stderr[-3000:]
        assert (f"[mixed.py] no --time-scale: the server at {server.url} runs its clock at time scale 0.05; sending "
                "the schedule at it") in out.stderr
        sent = [json.loads(line) for line in rows.read_text().splitlines()]
        assert sent and all(abs(r["scheduled_s"] - 0.05 * r["workload_t_s"]) < 1e-6 for r in sent)
        out = _locust("--headless", "-t", "30s", "--host", server.url, "--mix", "image-video", "--rate", "2",
                      "--duration", "3", "--time-scale", "0.1", cwd=tmp_path, timeout=90)
        assert out.returncode == 0, out.stderr[-3000:]
        assert (f"WARNING: the schedule is sent at time scale 0.1, but the server at {server.url} runs its clock at "
                "0.05: it sees the schedule's rates x 0.5 (give --time-scale 0.05, or leave it out)") in out.stderr
        trace = tmp_path / "t.jsonl"
        trace.write_text("".join(json.dumps({"t": 2 * i, "model": "sd3-medium", "height": 512, "width": 512, "steps": 28})
                                 + "\n" for i in range(40)))
        out = _locust("--headless", "-t", "3s", "--host", server.url, "--arrival", f"trace:{trace}", cwd=tmp_path,
                      timeout=90)
        assert "-t (3 s) ended the run before the trace's last requests were answered: raise -t" in out.stderr, \
            out.stderr[-3000:]
        for sig in (signal.SIGINT, signal.SIGTERM):
            progress = tmp_path / f"progress-{sig}"
            proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-t", "120s",
                                     "--host", server.url, "--mix", "image-video", "--rate", "1", "--duration", "400",
                                     "--progress-file", str(progress)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not (progress.exists() and progress.read_text().split()
                                                            and int(progress.read_text().split()[0]) >= 1):
                    time.sleep(0.2)
                proc.send_signal(sig)
                _, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 128 + sig, (sig, proc.returncode, err[-3000:])
            assert "the run was stopped before they ended" in err and "Traceback" not in err, err[-3000:]
    finally:
        assert server.stop() == 0


def test_a_spec_file_is_priced_as_its_mix_and_its_problems_name_its_keys(tmp_path):
    """Outside test: a spec of `{"mix": "tiny", ...}` was priced by h200 (which cannot price the tiny
    models) where `--mix tiny` takes the cpu profile, and the error named flags never given
    (`--mix/--cost-profile/--cluster: ...`, `--arrival: ...`)."""
    (tmp_path / "tiny.json").write_text('{"mix": "tiny", "rate": 1, "duration_s": 5}')
    (tmp_path / "h200.json").write_text('{"mix": "tiny", "rate": 1, "duration_s": 5, "profile": "h200"}')
    probe = (
        "import sys, types\n"
        "import workloads.mixed as m\n"
        "for name in sys.argv[1:]:\n"
        "    options = types.SimpleNamespace(spec=name)\n"
        "    try:\n"
        "        spec = m.spec_from_options(options)\n"
        "        print('ok', spec.profile, spec.cluster, len(m._schedule(spec, options)))\n"
        "    except m.ScheduleError as exc:\n"
        "        print('error', '; '.join(exc.problems))\n")
    out = subprocess.run([sys.executable, "-c", probe, "tiny.json", "h200.json"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    tiny, h200 = out.stdout.splitlines()
    assert tiny.startswith("ok cpu 2xcpu ") and int(tiny.split()[-1]) > 0, tiny
    assert h200.startswith("error --spec h200.json: mix/profile/cluster: ") and "--mix" not in h200, h200


def test_several_users_send_the_whole_schedule_and_a_host_with_a_slash_is_that_host(tmp_path):
    """Outside test: with more than one user, the first to find no arrival left ended the run while the
    others still slept on theirs (a schedule sparse enough that nothing was in flight then): `-u 10`
    sent 16 of 22, `-u 200` none, exit 0. And `--host URL/` sent every request to `//v1/...` (each a
    traceback, none answered) while `/v1/models`, asked before the load, answered."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x4xH200", "--time-scale", "0.05"])
    runs = []
    try:
        for users, host in (("10", server.url), ("200", server.url), ("1", server.url + "/")):
            rows = tmp_path / f"rows-{users}.jsonl"
            out = _locust("--headless", "-u", users, "-r", "100", "-t", "60s", "--host", host, "--mix", "sd3-mixed",
                          "--rate", "0.1", "--duration", "200", "--time-scale", "0.05", "--seed", "3",
                          "--rows-out", str(rows), "--only-summary", cwd=tmp_path, timeout=120)
            runs.append((users, host, out, [json.loads(line) for line in rows.read_text().splitlines()]))
    finally:
        assert server.stop() == 0
    expected = len(build_schedule(RunSpec(mix="sd3-mixed", rate=0.1, duration_s=200, seed=3, time_scale=0.05)))
    for users, host, out, rows in runs:
        assert out.returncode == 0 and "Traceback" not in out.stderr, (users, host, out.stderr[-3000:])
        assert len(rows) == expected and {r["state"] for r in rows} == {"done"}, (users, host, out.stderr[-2000:])


def test_a_second_ctrl_c_while_the_rows_are_stored_keeps_them_and_says_where(tmp_path):
    """Outside test: a second Ctrl-C while the rows went into --db ended Locust in a traceback, the rows
    lost and their temporary file left unsaid. Here the store waits on a lock this test holds; the second
    SIGINT stops the insert, and the rows are kept in a file the error names, which the named command
    stores."""
    import duckdb

    from tridentcore.store import ResultsStore, query_readonly

    from children import default_sigint

    db, tmp = tmp_path / "c.duckdb", tmp_path / "tmp"
    tmp.mkdir()
    ResultsStore(db).check()  # (a results database: made here, before the lock)
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x4xH200", "--time-scale", "0.05"])
    try:
        proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1",
                                 "-t", "120s", "--host", server.url, "--mix", "sd3-mixed", "--rate", "1", "--duration",
                                 "2000", "--time-scale", "0.05", "--db", str(db), "--run-id", "cc", "--only-summary"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env={**os.environ, "TMPDIR": str(tmp)}, preexec_fn=default_sigint)
        try:
            deadline = time.monotonic() + 60
            while _done_on(server.url) < 5:  # (started, and sending)
                assert time.monotonic() < deadline and proc.poll() is None, "Locust never sent a request"
                time.sleep(0.2)
            lock = duckdb.connect(str(db))  # read-write: the store's child waits for it
            try:
                proc.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 30
                while not list(tmp.glob("mixed-rows-*/rows.jsonl")):
                    assert time.monotonic() < deadline and proc.poll() is None, "the rows were never written"
                    time.sleep(0.05)
                time.sleep(1.0)  # (its child is waiting for the lock)
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=60)
            finally:
                lock.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    finally:
        server.stop()
    assert proc.returncode == 2 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[:3000]
    (line,) = [line for line in err.splitlines() if "could not write the client rows" in line]
    assert "stopped by Ctrl-C" in line and "the rows are kept in " in line, line
    kept = line.split("the rows are kept in ")[1].split(" (")[0]
    command = line.split("`")[1].replace("DB", str(db)).split()
    assert command[:3] == ["python", "-m", "tridentcore.bench.client_rows"]
    stored = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=120)
    assert stored.returncode == 0, stored.stderr
    n = len(Path(kept).read_text().splitlines())
    assert n > 10 and len(query_readonly(db, "SELECT 1 FROM client_requests WHERE run_id = 'cc'")) == n


def _done_on(url: str) -> float:
    """The requests a server has done, as its /metrics says."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    (line,) = [line for line in text.splitlines() if line.startswith('trident_requests_ended_total{state="done"}')]
    return float(line.split()[-1])
