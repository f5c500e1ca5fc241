"""Live benches: each policy on a real ``trident serve`` driven by Locust, one stored run per policy.

For every policy, :meth:`LiveBench.run`

1. writes the run spec (:class:`~tridentcore.bench.spec.RunSpec`, the policy its one policy) to a
   file both children read (``--spec FILE``: no settings as argv strings);
2. starts ``trident serve`` (a child process, loopback, a free port; ``--db`` a private temporary
   file; an API key of the run's own, which Locust and these calls send) and waits for ``GET /healthz``;
3. runs Locust headless (a child process: its gevent patching must not share a process with
   anything else) on ``workloads/mixed.py``, so the requests and their send times are the
   simulator's for the same seed (:func:`~tridentcore.bench.scenario.schedule_requests`); it writes
   its client rows as JSON lines;
4. asks the server which engine request each API job became (``GET /v1/requests``), stops the
   server by its PID (SIGTERM: it drains and stores the rest of its rows) and reads the rows it
   stored (first ingesting its journal if it left one: killed past the stop timeout);
5. writes the run in **one transaction** to the results store: a ``runs`` row with what
   reproduces it (the run spec as ``config_json``, git commit, package versions, hardware), the
   server's ``requests``/``stage_spans``/``placements``/``gpu_samples`` and the client's
   ``client_requests``, all under one run id.

Request ids of a stored live run are the schedule's indices (the simulator's request ids for the
same seed), so a live and a simulated run of one schedule join on ``request_id``;
``client_requests.server_request_id`` keeps the engine's own id. A request the server accepted
but the client never learned the id of (only in an interrupted run, and every request of a run
whose Locust died: the mapping comes from the client's rows) keeps ``UNMAPPED_ID_BASE + engine id``.

Ctrl-C stops Locust and the server (the context managers of :mod:`.live_procs`: only the
processes started here, by PID), stores what both had written with status ``interrupted`` in one
transaction and raises :class:`LiveBenchInterrupted` (a ``KeyboardInterrupt``) whose ``partial``
is that stored run (``None`` when nothing could be stored). A server that dies on its own during
the load (killed, crashed) ends the load at once: Locust is stopped and writes its rows, the
server's journal is ingested, the run is stored with status ``crashed`` and
:class:`LiveServerDied` (a :class:`LiveRunCrashed`) says so, with the end of the server's log.
Locust ending without its rows (killed, crashed) does not lose what the server did: the server is
stopped as usual (it drains and stores), the run is stored as ``crashed`` with the server's rows
and no client rows, and :class:`LiveClientDied` says so. A Ctrl-C to the process group of a bench
that ignores SIGINT reaches the server alone (exit 130, drained): at any moment, an interrupted run.

One module of about 480 lines with one job, a policy's live run from its two children to its
stored run: every way the children can end is decided and stored in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.defaults import (API_KEY_ENV, DEFAULT_DB_WAIT_S, DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_LIVE_CALIBRATE,
                             DEFAULT_LIVE_DEVICES)
from ..core.errors import TridentError
from ..core.metrics import finite, quantile
from . import live_procs as procs
from .live_procs import exit_words
from .live_rows import UNMAPPED_ID_BASE, live_run_meta, remap_to_schedule, server_run_ids
from .orphans import PREFIX, Owner, info_of
from .spec import RunSpec

SERVER_INTERRUPTED = 130  # `trident serve`'s exit after a Ctrl-C, having drained (cli.common.EXIT_INTERRUPTED)

__all__ = ["LiveBench", "LiveBenchError", "LiveBenchInterrupted", "LiveBenchSpec", "LiveOptions", "LiveRun",
           "LiveClientDied", "LiveRunCrashed", "LiveServerDied", "UNMAPPED_ID_BASE", "cluster_of_devices",
           "run_policy", "served_models", "spec_from_config"]

Progress = Callable[[str, int, int], None]  # (phase, finished, scheduled)


class LiveBenchError(TridentError, RuntimeError):
    """A live bench that could not run (a child process failed); the message says which and why."""


class LiveRunCrashed(LiveBenchError):
    """A child died during the load (killed, crashed); ``partial`` is the run stored as ``crashed``
    with what both children had written (None: nothing could be stored)."""

    def __init__(self, message: str, partial: LiveRun | None) -> None:
        super().__init__(message)
        self.partial = partial


class LiveServerDied(LiveRunCrashed):
    """``trident serve`` exited on its own during the load: Locust is stopped and both rows are stored."""


class LiveClientDied(LiveRunCrashed):
    """Locust ended without writing its rows (killed, crashed): the server is stopped as usual
    and the run is stored with the server's rows alone (no ``client_requests``)."""


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
class LiveOptions:
    """The live harness's own knobs (everything else is the run spec)."""

    models: tuple[str, ...] = ()  # models served besides the workload's (see served_models)
    max_queued: int = 100_000  # the simulator has no admission queue bound: keep 429s out of comparisons
    users: int = 1  # Locust users: the pool that carries requests (one is enough, see workloads/mixed.py)
    answer_timeout_s: float | None = None  # wall seconds after the last send to wait for answers (None: auto)
    startup_timeout_s: float = 180.0
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S  # the server's drain at stop
    calibrate: bool = DEFAULT_LIVE_CALIBRATE  # the server's online calibration (False: --no-calibrate)

    def serve_args(self) -> list[str]:
        """The ``trident serve`` options these knobs set (the spec file, models and store are the bench's)."""
        return ["--max-queued", str(self.max_queued), "--drain-timeout", str(self.drain_timeout_s),
                "--calibrate" if self.calibrate else "--no-calibrate"]


@dataclass(frozen=True)
class LiveBenchSpec:
    """A live bench: the run spec (backend ``live``, its devices and time scale) and the harness's options."""

    run: RunSpec
    options: LiveOptions = LiveOptions()

    def __post_init__(self) -> None:
        # the server and Locust run in a work folder of their own: a file named relative to here
        # (``--mix benchmarks/tiny-cpu.yaml``) is handed to them as an absolute path
        files = {k: os.path.abspath(v) for k in ("mix", "cluster", "trace", "profile")
                 if isinstance(v := getattr(self.run, k), str) and os.path.isfile(v)}
        object.__setattr__(self, "run", self.run.replace(backend="live", devices=self.run.devices or DEFAULT_LIVE_DEVICES,
                                                         **files))

    @property
    def devices(self) -> str:
        return self.run.devices or DEFAULT_LIVE_DEVICES

    def config(self, **extra: Any) -> dict:
        """The resolved configuration stored with each run (enough to run it again)."""
        opts = dataclasses.asdict(self.options)
        opts["models"] = list(self.options.models)
        return self.run.config(**opts, **extra)


def spec_from_config(config: Mapping[str, Any]) -> tuple[LiveBenchSpec, str]:
    """The spec and policy a stored live run's ``config_json`` holds (:meth:`LiveBenchSpec.config`)."""
    missing = [k for k in ("devices", "time_scale", "seed", "slo_scale", "profile", "cluster", "duration_s")
               if k not in config]
    if not config.get("policy") and not config.get("policies"):
        missing.append("policy")
    if missing:
        raise ValueError(f"config_json lacks {', '.join(missing)}; the live run cannot be run again")
    from .spec_schema import validate_spec

    run = validate_spec(config)  # (RunSpecError is a ValueError)
    if len(run.policies) != 1:
        raise ValueError(f"config_json names {len(run.policies)} policies; a live run has one")
    opts = LiveOptions(tuple(config.get("models") or ()), int(config.get("max_queued", 100_000)),
                       int(config.get("users", 1)), config.get("answer_timeout_s"),
                       float(config.get("startup_timeout_s", 180.0)), float(config.get("drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S)),
                       bool(config.get("calibrate", DEFAULT_LIVE_CALIBRATE)))
    return LiveBenchSpec(run, opts), run.policies[0]


@dataclass
class LiveRun:
    """One policy's live run, as stored."""

    policy: str
    run_id: str
    status: str  # complete | interrupted | crashed (the server, or Locust, died during the load)
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


class LiveBenchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a live run: ``partial`` is the run as stored (None: nothing stored):
    ``interrupted`` when the stop cut its load short; ``complete`` when the stop came after its load,
    while it was being stopped or stored (it was held until the run was stored)."""

    def __init__(self, partial: LiveRun | None) -> None:
        super().__init__()
        self.partial = partial


@dataclass
class _Collected:
    """What the children left: the client's rows and both exit codes."""

    rows: list[dict] | None = None
    locust_exit: int | None = None
    server_exit: int | None = None
    interrupted: bool = False
    server_died: bool = False  # the server exited on its own before the bench stopped it
    client_died: bool = False  # Locust ended without writing its rows
    orphaned: bool = False  # stored by bench.orphans from the folder of a killed bench
    models: tuple[str, ...] = ()


# ------------------------------------------------------------------------------ one policy
class LiveBench:
    """One policy's live run (see the module docstring). ``artifacts``: a folder to keep Locust's
    CSV/HTML reports, the rows file, the spec file and both logs in (default: a temporary folder)."""

    def __init__(self, spec: LiveBenchSpec, policy: str, run_id: str, db: str | os.PathLike[str], *,
                 extra_config: Mapping[str, Any] | None = None, progress: Progress | None = None,
                 artifacts: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.run_spec = spec.run.replace(policies=(policy,))
        self.policy = policy
        self.run_id = run_id
        self.db = db
        self.extra_config = dict(extra_config or {})
        self.report = progress or (lambda phase, done, total: None)
        self.artifacts = Path(artifacts).resolve() if artifacts is not None else None  # (the children run elsewhere)
        self.span: tuple[float, float] | None = None  # a trace's (seconds, mean rate), from its schedule

    def run(self) -> LiveRun:
        """Run, store, return the stored run; :class:`LiveBenchInterrupted` on Ctrl-C,
        :class:`LiveServerDied` when the server died during the load, :class:`LiveClientDied` when Locust
        ended without its rows (either way the run stored as crashed)."""
        from .scenario import schedule_requests
        from .spec import RunSpecError

        try:
            requests = schedule_requests(self.run_spec)
        except RunSpecError as exc:
            raise LiveBenchError(str(exc)) from None
        if not requests:
            raise LiveBenchError("the schedule has no requests (rate x duration too small?)")
        if self.run_spec.trace:
            from ..formats.traces import trace_span

            self.span = trace_span([r.arrival_s for r in requests])
        created, t0 = time.time(), time.monotonic()
        temporary = self.artifacts is None
        work = Path(tempfile.mkdtemp(prefix=PREFIX)) if temporary else self.artifacts
        work.mkdir(parents=True, exist_ok=True)
        kept = not temporary
        # the folder is claimed (locked, with what stores its run) while this process or a child
        # runs: if this process is killed, the next bench on the database (or `runs recover`) stores it
        owner = Owner(work, info_of(self.db, self.run_id, self.policy, LiveBenchSpec(self.run_spec, self.spec.options)
                                    .config(), self.extra_config, len(requests), self._models(requests), created,
                                    kept=not temporary))
        try:
            got = self._serve_and_load(work, requests, owner)
            log = "server.log" if got.server_died else "locust.log" if got.client_died else None
            last = ([line for line in procs.tail(work / log).splitlines() if line.strip()][-3:]
                    if log else [])  # (read before a temporary work folder goes)
            try:
                with procs.no_interrupts():
                    result = self._store(work, got, len(requests), created, time.monotonic() - t0, kept)
            except LiveBenchError:
                raise
            except Exception as exc:  # the run happened: its rows stay where they are, and the message says where
                kept = True
                owner.update(store_failed=f"{type(exc).__name__}: {exc}")
                raise LiveBenchError(f"the run could not be stored in {self.db} ({type(exc).__name__}: {exc}); its "
                                     f"rows are kept: the server's in {work / 'server.duckdb'}, the client's in "
                                     f"{work / 'rows.jsonl'}; `trident runs recover --db {self.db}"
                                     + (f" --folder {work}" if not temporary else "") + "` stores them") from None
            if not temporary:
                owner.done()  # stored: a kept folder is the user's, nothing in it left to recover
        finally:
            if not kept:
                shutil.rmtree(work, ignore_errors=True)
            owner.close()  # (a folder whose run was not stored: the next bench or recover stores it)
        if procs.take_held_interrupt() or got.interrupted:  # a stop that came while it was stopped or stored
            raise LiveBenchInterrupted(result)
        if got.server_died or got.client_died:
            tail = "; the last lines of its log:\n" + "\n".join(last) if last else ""
            if got.server_died:
                what = (f"run {result.run_id} stored as crashed with what both had written" if result is not None
                        else "nothing could be stored")
                client = "; Locust wrote no rows" if got.client_died else ""
                raise LiveServerDied(f"trident serve died during the load ({exit_words(got.server_exit)}){client}; "
                                     f"{what}{tail}", result)
            what = (f"run {result.run_id} stored as crashed with the server's rows" if result is not None
                    else "the server served nothing, nothing stored")
            raise LiveClientDied(f"Locust ended during the load ({exit_words(got.locust_exit)}) without writing its "
                                 f"rows; {what}{tail}", result)
        return result

    # -------------------------------------------------------------- the children
    def _models(self, requests) -> tuple[str, ...]:
        return served_models(self.spec.devices, {r.model for r in requests}, self.spec.options.models)

    def _server_args(self, work: Path, spec_file: Path, models: Sequence[str]) -> list[str]:
        return ["--spec", str(spec_file), "--models", ",".join(models), "--db", str(work / "server.duckdb"),
                *self.spec.options.serve_args()]

    def _serve_and_load(self, work: Path, requests, owner) -> _Collected:
        from .spec import write_spec_file

        if (work / "server.duckdb").exists():
            raise LiveBenchError(f"{work / 'server.duckdb'} exists: give each run its own artifacts folder")
        opts, total = self.spec.options, len(requests)
        last_send_s = requests[-1].arrival_s * self.run_spec.time_scale
        answer_s = opts.answer_timeout_s if opts.answer_timeout_s is not None else max(120.0, 20.0 * last_send_s)
        run_time_s = int(math.ceil(last_send_s + answer_s + 5))
        spec_file = write_spec_file(self.run_spec, work / "spec.json")
        got = _Collected(models=self._models(requests))
        stop_s = opts.drain_timeout_s + 60.0
        # a key of this run's own, given to both children through their environment: the server
        # answers nobody else, and a key in this process's environment plays no part
        api_key = secrets.token_urlsafe(24)
        key_env = {API_KEY_ENV: api_key}
        self.report("starting server", 0, total)
        fds = owner.fds
        try:  # (the server's port file and log in the work folder: nothing of it elsewhere)
            with procs.server_process(self._server_args(work, spec_file, got.models),
                                      opts.startup_timeout_s, stop_s, env=key_env, pass_fds=fds, folder=work) as server:
                try:
                    self.report("load", 0, total)
                    cmd = procs.locust_cmd(server.url, spec_file, self.run_id, work, opts.users, run_time_s)
                    with procs.locust_process(cmd, work / "locust.log", work, env=key_env, pass_fds=fds) as locust:
                        while locust.poll() is None:
                            if _ended_on_its_own(got, server.proc.poll()):  # Locust is stopped on the
                                break  # way out and writes its rows
                            if server.stopping_signal() == signal.SIGINT:  # a Ctrl-C to the group, which
                                got.interrupted = True  # this bench ignores, reached the server: it drains,
                                break  # and what Locust sends now would only be refused (503)
                            seen = procs.read_progress(work / "progress")
                            if seen is not None:
                                self.report("load", seen[0], seen[2])
                            time.sleep(0.25)
                    got.locust_exit = locust.returncode
                    _ended_on_its_own(got, server.proc.poll())
                    got.rows = procs.read_rows(work / "rows.jsonl")
                    got.client_died = got.rows is None  # (killed, crashed): the server's rows are still stored
                    owner.update(**_outcome(got))  # the load is over: a recovery stores the run as this
                    self.report("collecting", _answered(got.rows), total)
                    if got.rows and server.proc.poll() is None:
                        try:
                            procs.engine_ids(server.url, got.rows, api_key)
                        except (OSError, ValueError):  # it ended meanwhile: why is read below
                            pass
                        if _ended_on_its_own(got, server.proc.poll()):
                            owner.update(**_outcome(got))
                except KeyboardInterrupt:  # Locust is stopped (its context manager); keep what it wrote
                    got.interrupted = True
                    with procs.no_interrupts():
                        got.rows = procs.read_rows(work / "rows.jsonl")
                        if got.rows is not None and server.proc.poll() is None:
                            try:
                                procs.engine_ids(server.url, got.rows, api_key)
                            except (OSError, ValueError):
                                pass
                # stop the server: it drains and writes its rows to its own store
                self.report(f"interrupted: stopping the server (it drains its work, up to {opts.drain_timeout_s:g} s)"
                            if got.interrupted else
                            f"trident serve died ({exit_words(server.proc.returncode)}): storing what it wrote"
                            if got.server_died else
                            f"Locust ended without its rows ({exit_words(got.locust_exit)}): stopping the server"
                            if got.client_died else "stopping server", _answered(got.rows), total)
                with procs.no_interrupts():  # (a stop asked for now is acted on once the run is stored)
                    got.server_exit = server.stop(stop_s)
                if got.server_exit == SERVER_INTERRUPTED and not got.server_died:  # a group Ctrl-C that reached
                    got.interrupted = True  # it as Locust ended or after (our stop is a SIGTERM: exit 0)
        except procs.ChildError as exc:
            raise LiveBenchError(str(exc)) from None
        return got

    # -------------------------------------------------------------- the store
    def store_left(self, work: Path, scheduled: int, models: Sequence[str], created: float, wall_s: float,
                   status: str = "interrupted", crashed: str | None = None,
                   lock_wait_s: float = DEFAULT_DB_WAIT_S) -> LiveRun | None:
        """Store the run a bench left in its work folder ``work`` (killed, or its store failed: what
        its server and Locust wrote there as they ended; :mod:`.orphans`) with the ``status`` it had
        reached (``interrupted`` if the bench was killed during the load); None when nothing was served."""
        got = _Collected(rows=procs.read_rows(work / "rows.jsonl"), interrupted=status == "interrupted",
                         server_died=crashed == "server", client_died=crashed == "locust", orphaned=True,
                         models=tuple(models))
        return self._store(work, got, scheduled, created, wall_s, False, lock_wait_s)

    def _store(self, work: Path, got: _Collected, scheduled: int, created: float, wall_s: float,
               kept: bool, lock_wait_s: float = DEFAULT_DB_WAIT_S) -> LiveRun | None:
        from ..store import ResultsStore, read_run_tables
        from ..store.journal import pending_journals
        from ..store.recovery import recover

        server_db = work / "server.duckdb"
        if pending_journals(server_db):  # a server killed past its stop timeout, or whose final write failed
            for r in recover(server_db):
                if r.outcome == "failed":
                    raise LiveBenchError(f"the server's journal {r.path} could not be ingested: {r.message}")
        outcome = _outcome(got)
        crashed = outcome["crashed"] is not None
        if not server_db.exists():
            if got.interrupted or crashed:
                return None
            raise LiveBenchError(f"trident serve ({exit_words(got.server_exit)}) wrote no rows to its store:\n"
                                 f"{procs.tail(work / 'server.log')}")
        ids = server_run_ids(server_db)
        if len(ids) != 1:
            raise LiveBenchError(f"trident serve wrote {len(ids)} runs to {server_db}; expected one")
        server_meta, tables = read_run_tables(server_db, ids[0])
        if (got.orphaned or got.client_died and not got.server_died) and tables["requests"].num_rows == 0:
            return None  # Locust died, or the bench was killed, before anything was sent: no run to keep
        rows = got.rows or []
        notes = []
        if not (got.interrupted or crashed) and len(rows) != scheduled:
            notes.append(f"{scheduled - len(rows)} scheduled requests have no client row")
        tables = remap_to_schedule(tables, rows)
        lags = [r["lag_ms"] for r in rows if r.get("lag_ms") is not None]
        states: dict[str, int] = {}
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        extra = {**self.extra_config, "server_run_id": server_meta.run_id,
                 "server_config": json.loads(server_meta.config_json), "locust_exit": got.locust_exit,
                 "server_exit": got.server_exit, "client_states": states, "scheduled": scheduled,
                 "served_models": list(got.models),
                 "lag_p50_ms": finite(quantile(lags, 0.5)), "lag_p99_ms": finite(quantile(lags, 0.99))}
        if crashed:
            extra["crashed"] = outcome["crashed"]
        status = outcome["status"]
        meta = live_run_meta(self.spec, self.policy, self.run_id, status, created, wall_s, extra, self.span)
        self.report("storing", len(rows) - states.get("unfinished", 0), scheduled)  # (a row per scheduled request)
        with procs.no_interrupts():  # one transaction, not cut short
            ResultsStore(self.db, lock_wait_s=lock_wait_s).write_run_tables(meta, {**tables, "client_requests": rows})
        return LiveRun(self.policy, self.run_id, status, scheduled, states, quantile(lags, 0.5),
                       quantile(lags, 0.99), wall_s, server_meta.run_id, got.locust_exit, got.server_exit,
                       work if kept else None, notes)


def _ended_on_its_own(got: _Collected, code: int | None) -> bool:
    """Note in ``got`` a server that has ended before the bench stopped it (``code``, its exit, None
    while it runs); whether it is news. Exit 130 is a Ctrl-C to the process group that the bench
    ignores (started with SIGINT ignored, as ``cmd &`` in a script is): the server drained and
    stopped as asked, an interrupted run; any other exit is a crash."""
    if code is None or got.interrupted or got.server_died:
        return False
    got.interrupted = code == SERVER_INTERRUPTED
    got.server_died = not got.interrupted
    return True


def _answered(rows: list[dict] | None) -> int:
    """The client rows that got an answer (Locust writes one per scheduled request, ``unfinished`` if none)."""
    return sum(1 for r in rows or () if r.get("state") != "unfinished")


def _outcome(got: _Collected) -> dict:
    """The stored status of a run whose children left ``got``, and which child died (None: neither)."""
    crashed = "server" if got.server_died else "locust" if got.client_died else None
    return {"status": "interrupted" if got.interrupted else "crashed" if crashed else "complete", "crashed": crashed}


def run_policy(spec: LiveBenchSpec, policy: str, run_id: str, db: str | os.PathLike[str], *,
               extra_config: Mapping[str, Any] | None = None, progress: Progress | None = None,
               artifacts: str | os.PathLike[str] | None = None) -> LiveRun:
    """``LiveBench(...).run()``: run one policy live and store it."""
    return LiveBench(spec, policy, run_id, db, extra_config=extra_config, progress=progress,
                     artifacts=artifacts).run()
