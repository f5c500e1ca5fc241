"""Running the app under uvicorn on a pre-bound socket (port 0 works; ``port_file`` tells the port)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.defaults import (DEFAULT_CLIENT_TIMEOUT_S, DEFAULT_DB_WAIT_S, DEFAULT_JOURNAL_MIB, DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_NO_DEVICE_TIMEOUT_S, DEFAULT_KEEP_ENDED, DEFAULT_RESULTS_MIB, DEFAULT_LIVE_CALIBRATE,
                             DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUED, DEFAULT_POLICY, DEFAULT_SERVE_DEVICES,
                             DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE, PARENT_PID_ENV, STOPPING_SUFFIX)
from ..core.errors import brief
from ..core.types import Shape
from ..bench.parent import starter, starter_gone
from ..runtime.build import SetupError, build_runtime
from ..runtime.sigint import stop_signals_heard
from ..runtime.stored import RecordsNotStored, RunRecords, open_journal
from .app import ServerConfig, create_app, is_loopback
from .auth import ApiKeyError, load_api_key
from .protocol import protocol_class, raise_open_files_limit

logger = logging.getLogger(__name__)

_DOORS_CLOSE_S = 5.0  # after the drain: how long uvicorn waits for the connections still open
_PICKUP_S = 5.0  # after the drain: how long it waits for pollers to read how their requests ended
_RECENT_S = 60.0  # ... those whose requests were in flight as it began, or ended this long before it
_NAMED = 20  # of the requests whose pollers never read how they ended, the log names this many


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ServeOptions:
    models: str
    devices: str = DEFAULT_SERVE_DEVICES
    policy: str = DEFAULT_POLICY
    host: str = "127.0.0.1"
    port: int = 8000
    db: str | None = None
    run_id: str | None = None
    db_wait_s: float = DEFAULT_DB_WAIT_S  # how long the final write waits for another process's lock on db
    journal_mib: float = DEFAULT_JOURNAL_MIB  # the run's journal is compacted past this size
    keep_ended: int = DEFAULT_KEEP_ENDED
    results_mib: int = DEFAULT_RESULTS_MIB  # finished images/videos kept for clients: at most this many MiB
    time_scale: float = DEFAULT_TIME_SCALE
    profile: str | None = None
    max_queued: int = DEFAULT_MAX_QUEUED
    slo_scale: float = DEFAULT_SLO_SCALE
    api_key: str | None = None  # the key itself (from TRIDENT_API_KEY, read by the entry point)
    api_key_file: str | None = None  # or a file holding it (stripped); not both
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    no_device_timeout_s: float = DEFAULT_NO_DEVICE_TIMEOUT_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S  # a request's head, then its body, must arrive within this
    port_file: str | None = None
    log_level: str = "warning"
    backend: str = "local"  # local | ray
    ray_address: str | None = None
    inject_oom: str | None = None  # testing aid: "decode:1" fails the first decode out of memory
    late: str | None = None  # serve | reject (goodput mode); None: as the policy spec says (serve by default)
    calibrate: bool = DEFAULT_LIVE_CALIBRATE  # learn measured / predicted stage times
    slowdown: float = 1.0  # testing aid: cpu workers take K times the time they computed (1: as they are)
    # the workload the policy plans its initial placement for (``bench.scenario.planned_workload``
    # of the run spec); None: the served models, evenly
    expected: Mapping[tuple[str, Shape], float] | None = None


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # not listening yet: uvicorn listens once the app has started (its workers, its models), so a
    # client or health check that comes while it starts is refused at once instead of hanging
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class Ready:
    """What a server that has started serving tells its entry point (``trident serve``'s ready line)."""

    url: str
    devices: str  # as parsed, one part per device kind (cpu:2,emulated:8xH200)
    models: tuple[str, ...]
    policy: str
    db: str | None = None
    run_id: str | None = None


def _server_class():
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server, stopped in the order a serving system needs. The first SIGTERM/SIGINT
        (or SIGHUP: a closed terminal, a dropped SSH session; as SIGTERM) drains the runtime while
        the server still answers (``drain``): a new generation gets 503 ``shutting_down``, a job's status and result answer as before, in-flight requests finish or,
        past the drain timeout, fail with the JSON 500 ``failed``; only then does uvicorn close its
        doors. A second signal ends the drain at once (``hurry``; the run is still stored), a third
        exits without waiting for anything (what is not stored stays in the run's journal).

        uvicorn re-raises the signal after its shutdown, which would make every clean stop look like
        a kill: not here. The first signal is kept in ``stop_signal`` and reported to ``on_signal``,
        so the entry point chooses the exit status and the workers know their end is coming."""

        stop_signal: int | None = None
        on_signal: Callable[[int], None] | None = None
        drain: Callable[[], Awaitable[None]] | None = None
        hurry: Callable[[], None] | None = None
        signals = 0
        _draining: asyncio.Task | None = None
        parent_pid: int | None = None  # stop (as on SIGTERM) once the process that started it is gone

        def handle_exit(self, sig: int, frame) -> None:
            self.signals += 1
            if self.signals == 1:
                self.stop_signal = sig
                if self.on_signal is not None:
                    self.on_signal(sig)
                if self.drain is None:
                    self.should_exit = True
            elif self.signals == 2:
                if self.hurry is not None:
                    self.hurry()
                if self._draining is None:  # (a drain under way ends soon, hurried, and closes the doors then:
                    self.should_exit = True  # closed now, the loop's end cancelled it before its last words)
            else:
                self.should_exit = self.force_exit = True

        async def on_tick(self, counter: int) -> bool:
            if self.parent_pid is not None and counter % 10 == 0 and self.signals == 0 and starter_gone(self.parent_pid):
                logger.warning("the process that started this server (%s %s) is gone: stopping", PARENT_PID_ENV,
                               os.environ.get(PARENT_PID_ENV))
                self.handle_exit(signal.SIGTERM, None)
            if self.stop_signal is not None and self.drain is not None and self._draining is None:
                self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit())
            return await super().on_tick(counter)

        async def _drain_then_exit(self) -> None:
            try:
                await self.drain()
                await asyncio.sleep(0.05)  # the failed requests' handlers answer before the doors close
            finally:
                self.should_exit = True

        async def startup(self, sockets=None) -> None:
            try:
                await super().startup(sockets=sockets)
            except SystemExit:  # the app's start failed (uvicorn exits 3): ``run_server`` says why, in a line
                self.should_exit = True

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in stop_signals_heard()}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return _Server


def run_server(opts: ServeOptions, on_ready: Callable[[Ready], None] | None = None) -> int | None:
    """Validate, build, reserve the run id (with ``db``), bind, serve until SIGINT/SIGTERM (then drain,
    stop the workers and store the rest); returns the signal that stopped it (None: it stopped
    otherwise). ``on_ready`` is called once it serves. ``RecordsNotStored`` when the run could not
    all be stored (its journal says what is missing and stays for ``trident runs recover``)."""
    try:
        api_key = load_api_key(opts.api_key, opts.api_key_file)
    except ApiKeyError as exc:
        raise SetupError([str(exc)]) from None
    if not is_loopback(opts.host) and not api_key:
        raise SetupError([f"binding {opts.host} (not loopback) needs an API key: TRIDENT_API_KEY or --api-key-file"])
    if opts.run_id is not None and not opts.db:  # (outside test: taken without a word, nothing stored under it)
        raise SetupError([f"--run-id {brief(opts.run_id)}: the id of the run stored in --db; give --db FILE, "
                          "or leave --run-id out"])
    if opts.run_id is not None:
        _check_run_id(opts.run_id)
    if opts.port_file:  # its folder made now, as --db's is: not found only once the server serves
        try:
            Path(opts.port_file).parent.mkdir(parents=True, exist_ok=True)
            for stale in (opts.port_file, opts.port_file + STOPPING_SUFFIX):  # an earlier server's, at this path:
                Path(stale).unlink(missing_ok=True)  # its port, and that it stopped, are not this one's
        except OSError as exc:
            raise SetupError([f"--port-file {opts.port_file}: cannot write there ({exc.strerror or exc})"]) from None
    profile, inputs = _profile_files(opts.profile)
    runtime = build_runtime(opts.models, opts.devices, opts.policy, profile=profile, time_scale=opts.time_scale,
                            max_queued=opts.max_queued, slo_scale=opts.slo_scale, backend=opts.backend,
                            ray_address=opts.ray_address, inject_oom=opts.inject_oom, late=opts.late,
                            calibrate=opts.calibrate, slowdown=opts.slowdown,
                            record=bool(opts.db), keep_ended=opts.keep_ended, results_mib=opts.results_mib,
                            expected=opts.expected, no_device_timeout_s=opts.no_device_timeout_s)
    records = _records(opts, runtime, {"inputs": inputs} if inputs else None) if opts.db else None
    try:
        stopped_by = _serve(opts, runtime, records, api_key, on_ready)
    finally:
        if records is not None:
            records.flush_journal()  # (stopped at once: what ended since the last flush, for a recovery)
            records.discard()  # a run that never started serving gives its id back
    if records is not None and records.started and not records.stored and not records.problem:
        records.problem = (f"run {records.run_id} was not stored: the server was stopped before its end was "
                           f"written (a third signal); its journal holds what it has: "
                           f"trident runs recover --db {records.db}")
    if records is not None and records.problem:
        raise RecordsNotStored(records.problem)
    return stopped_by


MAX_RUN_ID_BYTES = 200  # %-encoded, with {n} at 20 digits: the journal's file name (and its temporary one) fit 255


def _check_run_id(run_id: str) -> None:
    """A ``--run-id`` the journal can be named after (outside test: 30 CJK characters, or 225 ASCII ones,
    ended in a raw ENAMETOOLONG; a newline split the one-line messages that name the run)."""
    import unicodedata

    from ..store import RUN_NUMBER
    from ..store.journal import journal_path

    if run_id.count(RUN_NUMBER) > 1:
        raise SetupError([f"--run-id {brief(run_id)}: at most one {RUN_NUMBER} (the number it takes at each start)"])
    other = re.search(r"\{[^{}]*\}", run_id.replace(RUN_NUMBER, ""))
    if other:  # ({N} taken as it is: the id of the first start, refused as stored at the next one)
        raise SetupError([f"--run-id {brief(run_id)}: {brief(other.group())} is not a placeholder; the number a "
                          f"run takes at each start is written {RUN_NUMBER} (lowercase, no spaces)"])
    if any(unicodedata.category(c).startswith("C") for c in run_id):
        raise SetupError([f"--run-id {brief(run_id)}: control characters (a newline, a tab) are not allowed"])
    size = len(journal_path("", run_id.replace(RUN_NUMBER, "9" * 20)).stem)
    if size > MAX_RUN_ID_BYTES:
        raise SetupError([f"--run-id {brief(run_id)}: {size} bytes once %-encoded for its journal's file name "
                          f"(non-ASCII characters take 6-12), at most {MAX_RUN_ID_BYTES}"])


def _profile_files(text: str | None) -> tuple[str | None, dict[str, dict[str, str]]]:
    """``--profile`` with each profile given as a file named by its absolute path (the run's row
    names it so: ``trident profile --from-run`` read a relative one from wherever it ran, outside
    test 103), and those files as a stored config's ``inputs`` (path and SHA-256: a fold refuses
    one that has changed since). A shipped name stays a name, as ``load_profile`` takes it."""
    from ..bench.spec import file_input
    from ..profiles import shipped_profiles

    if not text:
        return text, {}
    shipped, inputs, parts = set(shipped_profiles()), {}, []
    for part in text.split(",") if "=" in text else [text]:
        kind, sep, name = part.partition("=") if "=" in text else ("", "", part)
        name = name.strip()
        if name not in shipped and os.path.isfile(name):
            inputs[f"profile:{kind.strip().lower()}" if sep else "profile"] = got = file_input(name)
            name = got["path"]
        parts.append(f"{kind}{sep}{name}")
    return ",".join(parts), inputs


def _records(opts: ServeOptions, runtime, config: dict | None = None) -> RunRecords:
    """Reserve the run id in ``opts.db`` (after ingesting what crashed servers left there)."""
    from ..bench.provenance import provenance
    from ..store import DuplicateRunError, NotADatabaseError, StoreError, new_run_id
    from ..store.errors import damaged

    import duckdb

    run_id = opts.run_id or new_run_id(runtime.engine.policy.spec, 0, salt="live")
    if Path(opts.db).is_dir():
        raise SetupError([f"--db {opts.db}: is a folder, not a DuckDB file"])
    if opts.db.endswith(("/", os.sep)):  # (outside test 131: a folder of that name was made, then refused)
        raise SetupError([f"--db {opts.db}: ends in '/', a folder's name: give the results database file's path"])
    try:
        journal = open_journal(opts.db, run_id)
    except DuplicateRunError as exc:
        raise SetupError([str(exc)]) from None
    except NotADatabaseError as exc:
        raise SetupError([f"--db {opts.db}: cannot store the run there: {exc.reason}"]) from None
    except (StoreError, OSError, duckdb.Error) as exc:
        said = damaged(exc, "restore it from a copy, or give another file")
        raise SetupError([f"cannot store the run in {opts.db}: {said or exc}"]) from None
    return RunRecords(runtime.engine, journal, config=config, provenance=provenance(), final_wait_s=opts.db_wait_s,
                      compact_bytes=int(opts.journal_mib * (1 << 20)))


def _serve(opts: ServeOptions, runtime, records: RunRecords | None, api_key: str | None,
           on_ready: Callable[[Ready], None] | None) -> int | None:
    import uvicorn

    app = create_app(runtime, ServerConfig(api_key=api_key, max_body_bytes=opts.max_body_bytes, db=opts.db,
                                           run_id=records.run_id if records else opts.run_id,
                                           drain_timeout_s=opts.drain_timeout_s,
                                           client_timeout_s=opts.client_timeout_s), records)
    raised = raise_open_files_limit()  # a connection is an open file: the soft limit is often 1024
    if raised is not None:
        logger.info("open files limit raised from %d to %d", *raised)
    try:
        sock = bind(opts.host, opts.port)
    except OSError as exc:
        raise SetupError([f"cannot bind {opts.host}:{opts.port}: {exc}"]) from None
    port = sock.getsockname()[1]  # now: a server stopped while it started closes the socket
    # the drain happens before uvicorn's shutdown (``_Server``): what is left then are answers being
    # written, idle keep-alive connections and bodies that stall
    config = uvicorn.Config(app, log_level=opts.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=_DOORS_CLOSE_S, http=protocol_class(opts.client_timeout_s))
    server = _server_class()(config)
    def on_signal(sig: int) -> None:
        runtime.stopping()  # a worker that ends from now on was stopped, not lost
        if records is not None:  # the journal says so now: a run left unended by a forced stop was stopped
            records.wake()
        if opts.port_file:  # who started it learns that it stops, and why, before it has drained
            with contextlib.suppress(OSError):
                _write_atomically(Path(opts.port_file + STOPPING_SUFFIX), f"{sig}\n")

    server.on_signal = on_signal
    server.parent_pid = starter()  # (gone already: the starter died while this server started)

    async def drain() -> None:
        app.state.body_waits.stop()  # a body still arriving is answered 503 now, not held to the end
        polled = app.state.jobs.polled_untold(_RECENT_S)
        await runtime.engine.shutdown(opts.drain_timeout_s)
        # a client polling for a request that ended in the drain (or just before it) would next find the
        # doors closed, its image made and never seen: the server answers on until each has read how its
        # request ended
        untold, waited = await app.state.jobs.picked_up(polled, _PICKUP_S, lambda: server.signals >= 2)
        if untold:
            ids = ", ".join(j.id for j in untold[:_NAMED])
            more = f" and {len(untold) - _NAMED} more" if len(untold) > _NAMED else ""
            cut = " (cut short by a second stop)" if server.signals >= 2 else ""
            logger.warning("%d request(s) submitted without waiting ended in the drain or in the %.0f s before it "
                           "and their clients had not read how %.1f s after it%s: %s%s; stopping", len(untold),
                           _RECENT_S, waited, cut, ids, more)

    server.drain = drain
    server.hurry = runtime.engine.hurry

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        serving = server.started and server.stop_signal is None  # not stopped (Ctrl-C) while it started
        if serving:
            # everything loaded so far (libraries, app, pipelines' bookkeeping) lives as long as the server:
            # keep it out of the cyclic collector's full passes, whose pauses otherwise stall every request
            gc.collect()
            gc.freeze()
        if serving and opts.port_file:
            _write_atomically(Path(opts.port_file), f"{port}\n")
        if serving and on_ready is not None:
            on_ready(_ready(opts, runtime, records, port))
        await task

    quiet = _QuietFailedStart(app)  # the failed start's traceback (uvicorn logs it) is said in one line instead
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)
    try:
        asyncio.run(main())
    finally:
        uvicorn_log.removeFilter(quiet)
        sock.close()
    if not server.started and server.stop_signal is None:
        error = app.state.startup_error
        raise SetupError([f"the server could not start: {_one_line(error)}" if error is not None else
                          "the server could not start (its log above says why)"])
    return server.stop_signal


class _QuietFailedStart(logging.Filter):
    """Drops uvicorn's records of a start that failed in the runtime (a traceback, "Application
    startup failed"): ``run_server`` raises the cause as one line."""

    def __init__(self, app) -> None:
        super().__init__()
        self.app = app

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(self.app.state, "startup_error", None) is None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (RuntimeError, ValueError, OSError)) else f"{type(exc).__name__}: {text}"


def _ready(opts: ServeOptions, runtime, records: RunRecords | None, port: int) -> Ready:
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    return Ready(url=f"http://{host}:{port}", devices=",".join(p.devices.text for p in runtime.parts),
                 models=tuple(runtime.models), policy=str(runtime.engine.policy.spec), db=opts.db,
                 run_id=records.run_id if records is not None else None)
