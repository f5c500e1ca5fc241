"""`--backend ray`: workers as Ray actors, the same engine and policies.

Every test runs inside one network namespace made for this module, with nothing but loopback: the
Ray head (``ray start --head``, 2 CPUs, no dashboard, no usage stats, ``RAY_AUTH_MODE=disabled``)
and the scenario processes (``tests/ray_scenarios.py``) run there through ``ip netns exec``, so no
Ray traffic can reach any other address. At the end every process in the namespace (all started
by this module) is killed by PID and the namespace deleted. Without root / ``ip netns`` the tests
skip, saying so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCENARIOS = HERE / "ray_scenarios.py"
PORT = 6379  # the namespace is new: nothing else listens there
ADDRESS = f"127.0.0.1:{PORT}"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install -e '.[ray]')")


def test_backend_setup_errors():
    from tridentcore.runtime.build import SetupError, build_runtime

    with pytest.raises(SetupError) as err:
        build_runtime("sd3-medium", "emulated:1xH200", backend="slurm", ray_address="auto")
    text = str(err.value)
    assert "unknown backend 'slurm'" in text and "local, ray" in text and "applies to backend 'ray' only" in text
    rt = build_runtime("sd3-medium", "emulated:2xH200", backend="ray", ray_address="auto")  # no side effects
    assert [w.kind for w in rt.engine.workers.workers] == ["ray-emulated"] * 2
    with pytest.raises(SetupError, match="an empty Ray address"):
        build_runtime("sd3-medium", "emulated:1xH200", backend="ray", ray_address=" ")


def test_an_address_that_does_not_answer_as_a_ray_head_fails_in_seconds(tmp_path, monkeypatch):
    """ray.init retries such an address for minutes, deaf to Ctrl-C: the probe says why at once (a real
    head passes it in the scenarios below, which connect to one)."""
    import http.server
    import socket
    import threading

    from tridentcore.runtime.ray_address import probe_ray_address as _probe

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts (the kernel does) and never says a word
    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="accepts connections but said nothing in 1 s"):
            _probe(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=1)
        assert time.monotonic() - t0 < 5
        with pytest.raises(RuntimeError, match="does not speak gRPC"):
            _probe(f"127.0.0.1:{web.server_address[1]}", timeout_s=2)
        for bad in ("garbage", "127.0.0.1:99999"):
            with pytest.raises(RuntimeError, match="give HOST:PORT"):
                _probe(bad)
        # outside test: Ray's own words for these said RAY_ADDRESS, or that ray[client] was missing
        # after the error had advised ray://; a space around the address was looked up as it was
        with pytest.raises(RuntimeError, match="a http:// address is not a Ray head's; give HEAD:PORT"):
            _probe("http://127.0.0.1:8265")
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            with pytest.raises(RuntimeError, match=r"Ray Client, which needs `pip install 'ray\[client\]'`"):
                _probe("ray://127.0.0.1:10001")
        with pytest.raises(RuntimeError, match="said nothing"):
            _probe(f" 127.0.0.1:{silent.getsockname()[1]} ", timeout_s=1)
        # auto: the cluster RAY_ADDRESS names, else the last one started on this host (its file may be stale)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
        with pytest.raises(RuntimeError, match="no Ray cluster is known on this host") as err:
            _probe("auto")  # none known: never left to ray.init (it joined another server's private instance)
        # where it looked, and why a `ray start --temp-dir` head is not found there (outside test 134)
        assert f"its address in {tmp_path / 'ray' / 'ray_current_cluster'}; a `ray start --temp-dir DIR`" in str(err.value)
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text("\n")  # an empty file names none either
        with pytest.raises(RuntimeError, match="no Ray cluster is known on this host"):
            _probe("auto")
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{silent.getsockname()[1]}\n")
        with pytest.raises(RuntimeError, match="said nothing"):
            _probe("auto", timeout_s=1)
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{web.server_address[1]}")
        with pytest.raises(RuntimeError, match="does not speak gRPC"):
            _probe("auto", timeout_s=2)
    finally:
        web.shutdown()
        web.server_close()
        silent.close()


def test_a_failed_call_that_ends_after_its_retry_began_leaves_the_retry_progress():
    """The race an outside test met: a dispatch whose actor was killed ends (its call raises) only
    after the engine has retried the work on the same slot's new actor; its end must not clear what
    the slot says of the retry's steps (they read 0 until the retry finished)."""
    import asyncio

    from tridentcore.core.types import StageKind
    from tridentcore.runtime.ray_workers import RayWorker
    from tridentcore.runtime.tasks import StageResult, StageTask

    class Calls:  # the actor's ``run`` method as the worker calls it: one awaitable per dispatch
        def __init__(self, calls: dict) -> None:
            self.calls = calls

        def remote(self, task, split):
            return self.calls[task.dispatch_id]

    async def scenario():
        loop = asyncio.get_running_loop()
        calls = {1: loop.create_future(), 2: loop.create_future()}
        worker = RayWorker(0, emulated=True)
        worker.actor, worker.alive = type("Actor", (), {"run": Calls(calls)})(), True
        task = {"stage": StageKind.DIFFUSE, "model": "m", "request_ids": (7,), "height": 8, "width": 8,
                "frames": 1, "steps": 100, "end_step": 100, "duration_s": 2.0}
        old = loop.create_task(worker.run(StageTask(1, **task)))
        await asyncio.sleep(0)
        new = loop.create_task(worker.run(StageTask(2, **task)))  # the retry, on the replaced actor
        await asyncio.sleep(0.5)
        calls[1].set_result(StageResult(error="worker 0: actor lost"))  # the old call ends now
        await old
        seen = worker.progress(2)
        calls[2].set_result(StageResult(end_step=100))
        await new
        return seen, worker.progress(2)

    seen, after = asyncio.run(scenario())
    assert seen is not None and 10 <= seen < 100, seen  # in proportion to the time gone (0.5 of 2 s)
    assert after is None  # the retry ended: nothing running


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


class Namespace:
    """A loopback-only network namespace with a Ray head in it."""

    def __init__(self) -> None:
        self.name = f"trident-ray-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.tmp = tempfile.mkdtemp(prefix="trt-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_DISABLE_IMPORT_WARNING": "1", "PYTHONPATH": str(HERE.parent)}
        self.head: subprocess.Popen | None = None
        self.head_log = Path(self.tmp) / "head.log"

    def exec_cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def start(self) -> None:
        _ip("netns", "add", self.name)
        _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        links = _ip("netns", "exec", self.name, "ip", "-o", "link").stdout.strip().splitlines()
        assert len(links) == 1 and ": lo:" in links[0], links  # nothing but loopback
        ray_cli = str(Path(sys.executable).parent / "ray")
        with open(self.head_log, "wb") as log:
            self.head = subprocess.Popen(
                self.exec_cmd(ray_cli, "start", "--head", "--block", f"--port={PORT}", "--node-ip-address=127.0.0.1",
                              "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                              "--object-store-memory=200000000", f"--temp-dir={self.tmp}"),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        probe = ("import socket, time, sys\n"
                 "end = time.monotonic() + 60\n"
                 "while time.monotonic() < end:\n"
                 "    try:\n"
                 f"        socket.create_connection(('127.0.0.1', {PORT}), 1).close(); sys.exit(0)\n"
                 "    except OSError: time.sleep(0.1)\n"
                 "sys.exit(1)\n")
        ok = subprocess.run(self.exec_cmd(sys.executable, "-c", probe), timeout=90).returncode == 0
        if not ok or self.head.poll() is not None:
            raise RuntimeError(f"the Ray head did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.head_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def scenario(self, name: str, timeout_s: float = 240) -> dict:
        out = Path(self.tmp) / f"{name}.json"
        proc = subprocess.run(self.exec_cmd(sys.executable, str(SCENARIOS), name, "--address", ADDRESS,
                                            "--out", str(out)),
                              capture_output=True, text=True, timeout=timeout_s, env=self.env, cwd=HERE.parent)
        result = json.loads(out.read_text()) if out.exists() else {}
        if proc.returncode != 0 or not result or "scenario_error" in result:
            raise AssertionError(f"scenario {name} exited {proc.returncode}:\n{result.get('scenario_error', '')}\n"
                                 f"stderr:\n{proc.stderr[-4000:]}\nhead log:\n{self.log()[-1500:]}")
        return result

    def close(self) -> None:
        if self.head is not None and self.head.poll() is None:
            self.head.send_signal(signal.SIGTERM)  # `ray start --block` stops the head's processes
            try:
                self.head.wait(15)
            except subprocess.TimeoutExpired:
                pass
        # whatever is left in the namespace was started by this module: kill it by PID
        for _ in range(50):
            pids = _ns_pids(self.name)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self.head is not None and self.head.poll() is None:
            self.head.kill()
        if self.head is not None:
            self.head.wait(10)
        _ip("netns", "del", self.name, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ns():
    why = _netns_unavailable()
    if why:
        pytest.skip(f"Ray tests run inside a loopback-only network namespace: {why}")
    space = Namespace()
    try:
        space.start()
    except subprocess.CalledProcessError as exc:
        space.close()
        pytest.skip(f"cannot create a network namespace: {exc.stderr.strip()}")
    except BaseException:
        space.close()
        raise
    yield space
    space.close()
    assert not _ns_pids(space.name)
    assert space.name not in _ip("netns", "list").stdout


@pytest.fixture(scope="module")
def cpu_result(ns):
    return ns.scenario("cpu")


def test_emulated_devices_as_ray_actors_every_request_ends_once(ns):
    r = ns.scenario("emulated")
    assert r["worker_kinds"] == ["ray-emulated"]
    assert len(set(r["worker_pids"])) == 4 and r["own_pid"] not in r["worker_pids"]  # actors: other processes
    assert set(r["outcome_states"]) <= {"done", "failed", "rejected", "cancelled"}
    assert all(n == 1 for n in r["terminal_entries"].values()), r["terminal_entries"]
    assert r["reasons_ok"] and r["spans_ok"]
    assert r["live_left"] == 0 and r["busy_left"] == 0 and r["errors"] == []
    assert r["counts"].get("done", 0) >= 12 and r["counts"].get("cancelled", 0) >= 1
    steps = r["running_steps"]  # a long emulated diffuse: steps_done moved while it ran, below its end
    assert steps == sorted(steps) and 0 < steps[-1] < 1000 and steps[-1] > steps[0], steps
    assert r["long_state"] == "cancelled"
    assert r["bad_address"].startswith("no Ray cluster answers at 127.0.0.1:1") and r["bad_address_s"] < 10
    http = r["http"]
    assert http["status"] == 200 and http["stages"] == ["encode", "diffuse", "decode"], http
    assert http["workers"] == ["ray-emulated"] and http["exit_code"] == 0 and not http["own_gcs"], http
    # no --ray-address: a private instance of its own (it joined the cluster RAY_ADDRESS names, before)
    private = r["http_private"]
    assert private["status"] == 200 and private["own_gcs"] and private["exit_code"] == 0, private


def test_cpu_actors_png_equals_the_local_backend(cpu_result):
    r = cpu_result
    assert r["worker_kinds"] == ["ray-cpu"] and r["own_pid"] not in r["pids"]
    assert r["png_state"] == "done" and r["png_magic_ok"]
    assert r["png_equal_local"], "the Ray actors' PNG differs from the local backend's"
    # the engine holds object references between stages, never tensors; a decode hands back the
    # request's frames, which the engine encodes (the PNG above)
    types = r["types"]
    assert types["encode_out"] == types["diffuse_out"] == types["diffuse_in"] == types["decode_in"] == ["ObjectRef"]
    assert types["decode_out"] == ["Pixels"]


def test_cancel_stops_a_running_diffuse_in_an_actor(cpu_result):
    r = cpu_result
    steps = r["running_steps"]  # what GET /v1/requests/{id} says while it runs: it moved, below the end
    assert steps == sorted(steps) and 0 < steps[-1] < 1000 and steps[-1] > steps[0], steps
    assert r["cancel_state"] == "cancelled"
    assert len(r["cancel_diffuse"]) == 1
    outcome, end_step = r["cancel_diffuse"][0]
    assert outcome == "cancelled" and end_step < 1000


def test_killed_actor_is_restarted_and_every_request_completes(cpu_result):
    r = cpu_result
    assert r["killed_slot"] is not None, "no diffuse was ever seen running"
    assert r["kill_states"] == ["done"] * 6
    assert r["failed_spans"] >= 1  # the killed dispatch is on record, then re-run
    events = r["events"]
    assert events.get("StageFailed", 0) >= 1 and events.get("WorkerLost") == 1 and events.get("WorkerRestored") == 1
    assert r["restarts"] == 1 and r["alive_after"] and r["new_pid"] != r["killed_pid"]
    assert r["after_restart_equal"]
    assert all(n == 1 for n in r["terminal_entries"].values())
    assert r["live_left"] == 0 and r["busy_left"] == 0 and r["errors"] == []


def test_a_diffuse_on_two_actors_runs_sequence_parallel_and_survives_a_killed_member(ns):
    r = ns.scenario("parallel", timeout_s=400)
    assert r["state"] == "done" and r["own_pid"] not in r["pids"]
    assert [s[2] for s in r["spans"] if s[0] == "diffuse"] == [[0, 1]]
    assert r["parallel_runs"] == 1 and r["meetings"] == 1 and r["store_host"] == "127.0.0.1"  # split, not lead alone
    assert r["pixel_diff"] <= 1.0, r["pixel_diff"]  # the image equals the local backend's at degree 1
    assert r["kill_state"] == "done", r["kill_reason"]
    assert r["kill_diffuses"][0] == ["failed", [0, 1]] and r["kill_diffuses"][-1] == ["done", [0, 1]]
    assert r["restarts"] == 1 and r["new_pid"] != r["killed_pid"]
    steps = r["retry_steps"]  # the retried diffuse reports its steps as it runs (they stayed 0 after a kill)
    assert steps == sorted(steps) and any(0 < s < 300 for s in steps), steps
    assert r["meetings_after"] == 2 and r["parallel_runs_after"] == 2  # the broken world abandoned, met afresh
    assert all(n == 1 for n in r["terminal_entries"].values())
    assert r["live_left"] == 0 and r["busy_left"] == 0 and r["errors"] == []


def test_a_sigterm_while_ray_starts_stops_the_server_cleanly(ns, tmp_path):
    """SIGTERM to a server with a private Ray instance while ``ray.init`` runs (its GCS up, the rest
    starting) met Ray's own handler: a 40-line traceback, exit 2 (or an abort), and Ray's processes
    left running for a minute. Now: exit 0 as any stop, no traceback, and Ray's processes end."""
    import psutil

    env = {k: v for k, v in ns.env.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ns.tmp  # (its socket paths stay short)
    err = tmp_path / "err.txt"
    with open(err, "wb") as e:
        proc = subprocess.Popen(ns.exec_cmd(sys.executable, "-m", "tridentcore.cli", "serve", "--models", "sd3-medium",
                                            "--devices", "emulated:1xH200", "--backend", "ray", "--port", "0"),
                                stdout=subprocess.DEVNULL, stderr=e, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        server = psutil.Process(proc.pid)
        gcs = None
        deadline = time.monotonic() + 120
        while gcs is None and proc.poll() is None and time.monotonic() < deadline:
            for child in server.children(recursive=True):
                try:
                    if "gcs_server" in child.name():
                        gcs = child
                        break
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.01)
        assert gcs is not None, err.read_text(errors="replace")[-3000:]
        ray_procs = [p for p in server.children(recursive=True)]
        os.kill(proc.pid, signal.SIGTERM)  # ray.init is still running: its raylet and agents are not up yet
        code = proc.wait(60)
        text = err.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert "Traceback" not in text and "SystemExit" not in text, text[-3000:]
        _, alive = psutil.wait_procs(ray_procs, timeout=20)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        if proc.poll() is None:  # only the process this test started
            proc.kill()
            proc.wait(10)


def test_a_server_waiting_for_room_on_a_busy_cluster_says_so_and_stops_on_sigterm(ns, tmp_path):
    """Another job holds the cluster's CPUs: the server's actors wait for room. It waited deaf to
    SIGINT and SIGTERM until the 180 s actor timeout, then said "actor not ready" without why. Now
    it says what it waits for (the CPUs it asks, those free) and a SIGTERM stops it at once."""
    holder_code = ("import time, ray\n"
                   f"ray.init(address='{ADDRESS}', logging_level='ERROR')\n"
                   "@ray.remote(num_cpus=2)\n"
                   "class Hold:\n"
                   "    def ok(self):\n"
                   "        return 1\n"
                   "h = Hold.remote()\n"
                   "ray.get(h.ok.remote())\n"
                   "print('held', flush=True)\n"
                   "time.sleep(300)\n")
    holder = subprocess.Popen(ns.exec_cmd(sys.executable, "-c", holder_code), stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL, env=ns.env, start_new_session=True)
    err = tmp_path / "err.txt"
    proc = None
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(err, "wb") as e:
            proc = subprocess.Popen(ns.exec_cmd(sys.executable, "-m", "tridentcore.cli", "serve", "--models",
                                                "sd3-medium", "--devices", "emulated:1xH200", "--backend", "ray",
                                                "--ray-address", ADDRESS, "--port", "0"),
                                    stdout=subprocess.DEVNULL, stderr=e, stdin=subprocess.DEVNULL, env=ns.env,
                                    start_new_session=True)
        deadline = time.monotonic() + 90
        while "is not ready after" not in err.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        text = err.read_text(errors="replace")
        assert ("it asks 0.05 CPU; the cluster has 0 of 2 CPUs free: the rest is held: this server's other actors, or "
                "other work") in text, text[-2000:]
        text = _sigterm_stops(proc, err, within_s=10)
        assert "stopped before it served" in text, text[-3000:]
    finally:
        for p in (proc, holder):  # only the processes this test started
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)


@contextlib.contextmanager
def _private_ray_server(ns, tmp_path: Path, *args: str, timeout_s: float = 180):
    """``trident serve ARGS --backend ray`` with a private Ray instance, in the namespace: (the process,
    its URL, its stderr file) once it serves; killed at the end if it still runs (only the process this
    test started: Ray's end with the namespace)."""
    env = {k: v for k, v in ns.env.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ns.tmp  # (its socket paths stay short)
    port_file, err = tmp_path / "port", tmp_path / "err.txt"
    with open(err, "wb") as e:
        proc = subprocess.Popen(ns.exec_cmd(sys.executable, "-m", "tridentcore.cli", "serve", *args, "--backend", "ray",
                                            "--port", "0", "--port-file", str(port_file)),
                                stdout=subprocess.DEVNULL, stderr=e, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        yield proc, f"http://127.0.0.1:{port_file.read_text().strip()}", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _sigterm_stops(proc: subprocess.Popen, err: Path, within_s: float) -> str:
    """SIGTERM ``proc``: it exits 0 within ``within_s``, no traceback; its stderr (``err``)."""
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.wait(2 * within_s)
    text = err.read_text(errors="replace")
    assert code == 0 and time.monotonic() - t0 < within_s, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return text


def _ask(ns, url: str, body: dict | None = None, timeout_s: float = 3.0) -> int:
    """The HTTP status of GET (POST with ``body``) ``url`` asked from inside the namespace; 0: no answer in time."""
    code = ("import json, sys, urllib.request, urllib.error\n"
            f"body = {json.dumps(body)!r}\n"
            f"req = urllib.request.Request({url!r}, data=None if body == 'null' else body.encode(),\n"
            "                             headers={'content-type': 'application/json'})\n"
            "try:\n"
            f"    print(urllib.request.urlopen(req, timeout={timeout_s}).status)\n"
            "except urllib.error.HTTPError as exc:\n"
            "    print(exc.code)\n"
            "except OSError:\n"
            "    print(0)\n")
    out = subprocess.run(ns.exec_cmd(sys.executable, "-c", code), capture_output=True, text=True, timeout=60,
                         env=ns.env)
    return int(out.stdout.strip() or 0)


def test_a_server_whose_ray_head_is_lost_still_answers_and_drains_on_sigterm(ns, tmp_path):
    """The head of the server's Ray killed (outside test 104: a head's GCS killed under a server): its
    blocking Ray calls on the event loop left it deaf to requests and to SIGTERM until Ray ended it 60 s
    later, exit 1, its run left `running`. Now it answers (503: no device alive), a SIGTERM drains it,
    exit 0, and its run is stored."""
    import psutil

    from tridentcore.store import query_readonly

    db = tmp_path / "r.duckdb"
    with _private_ray_server(ns, tmp_path, "--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale",
                             "0.05", "--db", str(db), "--run-id", "headless") as (proc, url, err):
        body = {"model": "sd3-medium", "prompt": "x", "size": "512x512", "steps": 4}
        assert _ask(ns, f"{url}/v1/images/generations", body, timeout_s=60) == 200
        node = psutil.Process(proc.pid).children(recursive=True)  # Ray's: its GCS, raylet, actors, agents
        assert any(p.name() == "gcs_server" for p in node), err.read_text(errors="replace")[-3000:]
        for p in node:  # the head node gone, at once
            p.kill()
        answers = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15:  # past the actors' loss and their restarts' 5 s wait
            answers.append(_ask(ns, f"{url}/healthz"))
            time.sleep(0.5)
        assert 0 not in answers and answers[-1] == 503, (answers, err.read_text(errors="replace")[-3000:])
        text = _sigterm_stops(proc, err, within_s=30)
        assert "run headless stored in" in text, text[-3000:]
    row = query_readonly(db, "SELECT status, requests FROM run_summary WHERE run_id = 'headless'").iloc[0]
    assert row.status != "running" and row.requests == 1, row


def test_an_actor_restarted_after_its_folder_was_replaced_does_not_serve_another_model(ns, tmp_path):
    """The process-worker case of outside test 101 (`tests/test_runtime_cpu.py`), on a Ray actor: the
    folder a server served replaced by a video pipeline's and the actor killed; the new actor's models
    are checked by the same function (``pool.not_the_models``) and the restart is refused, not served."""
    import shutil

    import psutil

    from tridentcore.pipelines import load_pipeline

    folder, video = tmp_path / "saved", tmp_path / "video"
    load_pipeline("tiny-sd3").pipe.save_pretrained(folder)
    load_pipeline("tiny-wan").pipe.save_pretrained(video)
    lines = (HERE.parent / "tridentcore" / "profiles" / "data" / "cpu.csv").read_text().splitlines()
    profile = tmp_path / "saved.csv"
    profile.write_text("\n".join([lines[0]] + [line.replace("cpu,tiny-sd3,", f"cpu,{folder},", 1)
                                               for line in lines if line.startswith("cpu,tiny-sd3,")]) + "\n")
    with _private_ray_server(ns, tmp_path, "--models", str(folder), "--devices", "cpu:1", "--profile",
                             str(profile)) as (proc, url, err):
        body = {"model": str(folder), "prompt": "x", "size": "64x64", "steps": 2, "slo_ms": 80_000_000}
        assert _ask(ns, f"{url}/v1/images/generations", body, timeout_s=120) == 200
        actors = [p for p in psutil.Process(proc.pid).children(recursive=True) if "StageActor" in " ".join(p.cmdline())]
        assert len(actors) == 1, (actors, err.read_text(errors="replace")[-3000:])
        shutil.move(folder, tmp_path / "was")
        shutil.copytree(video, folder)
        actors[0].kill()
        deadline = time.monotonic() + 120
        while "is not the model it served" not in err.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        text = err.read_text(errors="replace")
        assert "restart failed" in text and "now a video model" in text, text[-3000:]
        assert _ask(ns, f"{url}/healthz") == 503  # no device alive: nothing served under the old name
        _sigterm_stops(proc, err, within_s=30)
