"""Live benches: each policy on a real ``trident serve`` driven by Locust, one stored run per policy.

For every policy, :func:`run_policy`

1. starts ``trident serve`` (a child process, loopback, a free port; ``--db`` a private temporary
   file) and waits for ``GET /healthz``;
2. runs Locust headless (a child process: its gevent patching must not share a process with
   anything else) on ``workloads/mixed.py`` with the schedule's arguments, so the requests and
   their send times are the simulator's for the same seed (``workloads.schedule``);
3. asks the server which engine request each API job became (``GET /v1/requests``), stops the
   server by its PID (SIGTERM: it drains and writes its rows) and reads the rows it wrote;
4. writes the run in **one transaction** to the results store: a ``runs`` row with what
   reproduces it (resolved config, seed, git commit, package versions, hardware), the server's
   ``requests``/``stage_spans``/``placements``/``gpu_samples`` and the client's
   ``client_requests``, all under one run id.

Request ids of a stored live run are the schedule's indices (the simulator's request ids for the
same seed), so a live and a simulated run of one schedule join on ``request_id``;
``client_requests.server_request_id`` keeps the engine's own id. A request the server accepted
but the client never learned the id of (only in an interrupted run) keeps
``UNMAPPED_ID_BASE + engine id``.

Ctrl-C (``KeyboardInterrupt``) stops Locust and the server (only the processes started here, by
PID), stores what both had written with status ``interrupted`` in one transaction, and re-raises.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.metrics import quantile
from .core.records import RunMeta

__all__ = ["LiveBenchSpec", "LiveBenchError", "LiveRun", "UNMAPPED_ID_BASE", "cluster_of_devices", "locustfile",
           "run_policy", "served_models", "spec_from_config"]

UNMAPPED_ID_BASE = 1_000_000_000
LIVE_PACKAGES = ("tridentserve", "duckdb", "numpy", "scipy", "torch", "diffusers", "locust", "gevent",
                 "geventhttpclient", "fastapi", "uvicorn")

Progress = Callable[[str, int, int], None]  # (phase, finished, scheduled)


class LiveBenchError(RuntimeError):
    """A live bench that could not run (a child process failed); the message says which and why."""


def locustfile() -> Path:
    """``workloads/mixed.py`` of the installed ``workloads`` package."""
    import workloads

    return Path(workloads.__file__).resolve().parent / "mixed.py"


def cluster_of_devices(devices: str) -> str | None:
    """The emulated part of ``--devices`` as a cluster (``cpu:1,emulated:2x8xH200`` -> ``2x8xH200``)."""
    for part in devices.split(","):
        kind, _, rest = part.strip().partition(":")
        if kind.strip().lower() == "emulated" and rest.strip():
            return rest.strip()
    return None


def served_models(devices: str, workload: set[str], extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The workload's models plus ``extra``; with a ``cpu:N`` part in ``devices`` and no ``extra``,
    also ``tiny-sd3`` (a mixed server refuses a device kind that serves no model, and the profile
    models run on the emulated GPUs only)."""
    kinds = {part.strip().partition(":")[0].strip().lower() for part in devices.split(",")}
    add = set(extra) or ({"tiny-sd3"} if "cpu" in kinds and len(kinds) > 1 else set())
    return tuple(sorted(set(workload) | add))


@dataclass(frozen=True)
class LiveBenchSpec:
    """Everything a live bench of one policy needs besides the policy itself."""

    schedule: Any  # workloads.schedule.ScheduleSpec
    devices: str = "emulated:2x8xH200"
    models: tuple[str, ...] = ()  # models served besides the workload's (see served_models)
    max_queued: int = 100_000  # the simulator has no admission queue bound: keep 429s out of comparisons
    users: int = 1  # Locust users: the pool that carries requests (one is enough, see workloads/mixed.py)
    answer_timeout_s: float | None = None  # wall seconds after the last send to wait for answers (None: auto)
    startup_timeout_s: float = 180.0
    drain_timeout_s: float = 30.0  # the server's drain at stop

    def config(self) -> dict:
        """The resolved configuration stored with each run (enough to run it again)."""
        sc = self.schedule.scenario()
        return {**dataclasses.asdict(sc), "rate": self.schedule.rate, "backend": "live", "devices": self.devices,
                "time_scale": self.schedule.time_scale, "models": list(self.models), "max_queued": self.max_queued,
                "users": self.users, "answer_timeout_s": self.answer_timeout_s,
                "startup_timeout_s": self.startup_timeout_s, "drain_timeout_s": self.drain_timeout_s,
                "arrival_spec": self.schedule.arrival}


def spec_from_config(config: dict) -> tuple[LiveBenchSpec, str]:
    """The spec and policy a stored live run's ``config_json`` holds (:meth:`LiveBenchSpec.config`)."""
    from workloads.schedule import ScheduleSpec

    missing = [k for k in ("devices", "time_scale", "policy", "seed", "slo_scale", "profile", "cluster",
                           "duration_s", "arrival_spec") if k not in config]
    if missing:
        raise ValueError(f"config_json lacks {', '.join(missing)}; the live run cannot be run again")
    schedule = ScheduleSpec(mix=config.get("mix") or "image-video", arrival=config["arrival_spec"],
                            rate=config.get("rate") or 1.0, duration_s=config["duration_s"], seed=config["seed"],
                            slo_scale=config["slo_scale"], profile=config["profile"], cluster=config["cluster"],
                            time_scale=config["time_scale"], trace_model=config.get("trace_model"))
    spec = LiveBenchSpec(schedule, config["devices"], tuple(config.get("models") or ()),
                         int(config.get("max_queued", 100_000)), int(config.get("users", 1)),
                         config.get("answer_timeout_s"), float(config.get("startup_timeout_s", 180.0)),
                         float(config.get("drain_timeout_s", 30.0)))
    return spec, config["policy"]


@dataclass
class LiveRun:
    """One policy's live run, as stored."""

    policy: str
    run_id: str
    status: str  # complete | interrupted
    scheduled: int
    states: dict[str, int]  # client states -> count
    lag_p50_ms: float
    lag_p99_ms: float
    wall_s: float
    server_run_id: str
    locust_exit: int | None
    server_exit: int | None
    artifacts: Path | None = None  # Locust's CSV/HTML reports and both logs, when kept
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ child processes
def _http_json(url: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback URLs we built
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LiveBenchError(f"trident serve exited ({proc.returncode}) before it was healthy")
        try:
            status, body = _http_json(f"{url}/healthz", 5.0)
            if status == 200 and isinstance(body, dict) and body.get("ok"):
                return
            last = f"HTTP {status} {body}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise LiveBenchError(f"trident serve at {url} not healthy after {timeout_s:.0f} s ({last})")


def _stop(proc: subprocess.Popen | None, timeout_s: float) -> int | None:
    """SIGTERM the child we started, wait; SIGKILL past the timeout. Returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _locust_cmd(spec: LiveBenchSpec, url: str, run_id: str, work: Path, run_time_s: int) -> list[str]:
    s = spec.schedule
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless", "--host", url,
           "-u", str(spec.users), "-r", str(max(spec.users, 1)), "-t", f"{run_time_s}s", "--only-summary",
           "--csv", str(work / "locust"), "--html", str(work / "locust.html"), "--loglevel", "WARNING",
           "--mix", s.mix, "--arrival", s.arrival, "--rate", repr(float(s.rate)), "--duration", repr(float(s.duration_s)),
           "--seed", str(s.seed), "--slo-scale", repr(float(s.slo_scale)), "--time-scale", repr(float(s.time_scale)),
           "--cost-profile", s.profile, "--cluster", s.cluster, "--run-id", run_id,
           "--rows-out", str(work / "rows.jsonl"), "--progress-file", str(work / "progress")]
    if s.trace_model:
        cmd += ["--trace-model", s.trace_model]
    return cmd


def _read_progress(path: Path) -> tuple[int, int, int] | None:
    try:
        done, sent, total = (int(x) for x in path.read_text().split())
        return done, sent, total
    except (OSError, ValueError):
        return None


def _read_rows(path: Path) -> list[dict] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _engine_ids(url: str, rows: list[dict]) -> None:
    """Fill ``server_request_id`` from the server's job list (the API's job ids are not engine ids)."""
    want = {r["server_job_id"] for r in rows if r.get("server_job_id") and r.get("server_request_id") is None}
    if not want:
        return
    found: dict[str, int] = {}
    status, body = _http_json(f"{url}/v1/requests?limit=1000", 30.0)
    if status == 200 and isinstance(body, dict):
        for job in body.get("data") or []:
            items = job.get("items") or []
            if job.get("id") in want and len(items) == 1:
                found[job["id"]] = int(items[0]["id"])
    for job_id in sorted(want - set(found)):  # more jobs than one page holds
        status, job = _http_json(f"{url}/v1/requests/{job_id}", 10.0)
        items = (job or {}).get("items") or [] if status == 200 else []
        if len(items) == 1:
            found[job_id] = int(items[0]["id"])
    for r in rows:
        if r.get("server_request_id") is None and r.get("server_job_id") in found:
            r["server_request_id"] = found[r["server_job_id"]]


def _remap(tables: dict, rows: list[dict]) -> dict:
    """Server tables with request ids replaced by schedule indices (see the module docstring)."""
    import pyarrow as pa

    index_of = {int(r["server_request_id"]): int(r["request_index"]) for r in rows
                if r.get("server_request_id") is not None}
    out = dict(tables)
    for name in ("requests", "stage_spans"):
        table = tables[name]
        ids = table.column("request_id").to_pylist()
        new = pa.array([index_of.get(i, UNMAPPED_ID_BASE + i) for i in ids], type=pa.int64())
        out[name] = table.set_column(table.column_names.index("request_id"), "request_id", new)
    return out


def _meta(spec: LiveBenchSpec, policy: str, run_id: str, status: str, created: float, wall_s: float,
          extra: dict) -> RunMeta:
    from .sim.bench import git_sha, hardware, package_versions

    s = spec.schedule
    sc = s.scenario()
    config = {**spec.config(), "policy": policy, **extra}
    hw = {**hardware(), "devices": spec.devices, "gpus": cluster_of_devices(spec.devices) or s.cluster,
          "gpus_emulated": cluster_of_devices(spec.devices) is not None}
    return RunMeta(run_id=run_id, backend="live", policy=policy, seed=s.seed, profile=s.profile,
                   cluster=_cluster_label(s.cluster), mix=sc.workload_label, rate_rps=float(s.rate if not s.trace else 0.0),
                   duration_s=float(s.duration_s), slo_scale=float(s.slo_scale),
                   config_json=json.dumps(config, sort_keys=True, default=str), git_sha=git_sha(),
                   packages_json=json.dumps(package_versions(LIVE_PACKAGES), sort_keys=True),
                   hardware_json=json.dumps(hw, sort_keys=True), status=status, created_unix_s=created, wall_s=wall_s)


def _cluster_label(cluster: str) -> str:
    try:
        from workloads.mixes import load_cluster

        return load_cluster(cluster).label
    except (ValueError, OSError):
        return cluster


# ------------------------------------------------------------------------------ one policy
def run_policy(spec: LiveBenchSpec, policy: str, run_id: str, db: str | os.PathLike[str], *,
               extra_config: dict | None = None, progress: Progress | None = None,
               artifacts: str | os.PathLike[str] | None = None) -> LiveRun:
    """Run one policy live and store it (see the module docstring). ``artifacts``: a folder to keep
    Locust's CSV/HTML reports, the rows file and both logs in (default: a temporary folder)."""
    from workloads.schedule import build_schedule

    from .server.launch import LaunchError, start_server
    from .store import ResultsStore, read_run_tables

    arrivals = build_schedule(spec.schedule)
    if not arrivals:
        raise LiveBenchError("the schedule has no requests (rate x duration too small?)")
    models = served_models(spec.devices, {a.spec.model for a in arrivals}, spec.models)
    last_send_s = arrivals[-1].send_s
    answer_s = spec.answer_timeout_s if spec.answer_timeout_s is not None else max(120.0, 20.0 * last_send_s)
    run_time_s = int(math.ceil(last_send_s + answer_s + 5))

    tmp = None
    if artifacts is None:
        tmp = tempfile.TemporaryDirectory(prefix="trident-live-")
        work = Path(tmp.name)
    else:
        work = Path(artifacts)
        work.mkdir(parents=True, exist_ok=True)
    server_db = work / "server.duckdb"
    if server_db.exists():
        raise LiveBenchError(f"{server_db} exists: give each run its own artifacts folder")
    report = progress or (lambda phase, done, total: None)
    created = time.time()
    t0 = time.monotonic()
    server = locust = None
    server_exit = locust_exit = None
    interrupted = False
    notes: list[str] = []
    rows: list[dict] | None = None
    try:
        try:
            report("starting server", 0, len(arrivals))
            server = start_server(["--models", ",".join(models), "--devices", spec.devices, "--policy", policy,
                                   "--time-scale", repr(float(spec.schedule.time_scale)), "--db", str(server_db),
                                   "--slo-scale", repr(float(spec.schedule.slo_scale)),
                                   "--max-queued", str(spec.max_queued),
                                   "--drain-timeout", repr(float(spec.drain_timeout_s)),
                                   *(["--profile", spec.schedule.profile] if cluster_of_devices(spec.devices) else [])],
                                  timeout_s=spec.startup_timeout_s)
            wait_healthy(server.url, server.proc, spec.startup_timeout_s)
            report("load", 0, len(arrivals))
            with open(work / "locust.log", "wb") as log:
                locust = subprocess.Popen(_locust_cmd(spec, server.url, run_id, work, run_time_s), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                          cwd=work)
            while locust.poll() is None:
                got = _read_progress(work / "progress")
                if got is not None:
                    report("load", got[0], got[2])
                time.sleep(0.25)
            locust_exit = locust.returncode
            rows = _read_rows(work / "rows.jsonl")
            if rows is None:
                raise LiveBenchError(f"Locust (exit {locust_exit}) wrote no rows:\n{_tail(work / 'locust.log')}")
            report("collecting", len(rows), len(arrivals))
            _engine_ids(server.url, rows)
        except KeyboardInterrupt:
            interrupted = True
            with _no_sigint():  # the cleanup must not be cut short
                locust_exit = _stop(locust, 30.0)
                rows = _read_rows(work / "rows.jsonl")
                if rows is not None and server is not None and server.proc.poll() is None:
                    try:
                        _engine_ids(server.url, rows)
                    except (OSError, ValueError):
                        pass
        except LaunchError as exc:
            raise LiveBenchError(str(exc)) from None
        # stop the server: it drains and writes its rows to its own store
        report("stopping server", len(rows or ()), len(arrivals))
        if server is not None:
            with _no_sigint() if interrupted else _nothing():
                server_exit = _stop(server.proc, spec.drain_timeout_s + 60.0)
                (work / "server.log").write_text(server.log())
        if not server_db.exists():
            if interrupted:
                raise KeyboardInterrupt(None)
            raise LiveBenchError(f"trident serve (exit {server_exit}) wrote no rows to its store:\n"
                                 f"{_tail(work / 'server.log')}")
        ids = _run_ids(server_db)
        if len(ids) != 1:
            raise LiveBenchError(f"trident serve wrote {len(ids)} runs to {server_db}; expected one")
        server_meta, tables = read_run_tables(server_db, ids[0])
        rows = rows or []
        if not interrupted and len(rows) != len(arrivals):
            notes.append(f"{len(arrivals) - len(rows)} scheduled requests have no client row")
        tables = _remap(tables, rows)
        lags = [r["lag_ms"] for r in rows if r.get("lag_ms") is not None]
        states: dict[str, int] = {}
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        wall_s = time.monotonic() - t0
        extra = {**(extra_config or {}), "server_run_id": server_meta.run_id,
                 "server_config": json.loads(server_meta.config_json), "locust_exit": locust_exit,
                 "server_exit": server_exit, "client_states": states, "scheduled": len(arrivals),
                 "served_models": list(models),
                 "lag_p50_ms": _finite(quantile(lags, 0.5)), "lag_p99_ms": _finite(quantile(lags, 0.99))}
        status = "interrupted" if interrupted else "complete"
        meta = _meta(spec, policy, run_id, status, created, wall_s, extra)
        report("storing", len(rows), len(arrivals))
        with _no_sigint():  # one transaction, not cut short
            ResultsStore(db).write_run_tables(meta, {**tables, "client_requests": rows})
        result = LiveRun(policy, run_id, status, len(arrivals), states, quantile(lags, 0.5), quantile(lags, 0.99),
                         wall_s, server_meta.run_id, locust_exit, server_exit, None if tmp else work, notes)
    finally:
        _stop(locust, 30.0)
        if server is not None:
            server.stop(spec.drain_timeout_s + 60.0)  # (a no-op when stopped; removes its temporary folder)
        if tmp is not None:
            tmp.cleanup()
    if interrupted:
        raise KeyboardInterrupt(result)
    return result


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


class _no_sigint:
    """SIGINT ignored inside (main thread only): cleanup and the store write run to their end."""

    def __enter__(self):
        import threading

        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return None

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return None


def _run_ids(path: Path) -> list[str]:
    from .store import open_readonly

    con = open_readonly(path)
    try:
        return [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY created_unix_s").fetchall()]
    finally:
        con.close()


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x
