"""A live run's ``runs`` row and its records in the results store (one engine, or a mixed group).

Two ways in:

* :func:`write`: the whole run in one transaction, after it (a test, a script);
* :class:`RunRecords`: a server's run as it goes (``trident serve --db``). :func:`open_journal`
  reserves the run id (ingesting the journals that crashed servers left first, refusing an id
  that is stored or reserved); :meth:`RunRecords.start` writes the ``runs`` row (``running``);
  every :data:`FLUSH_S` the requests that ended, the spans and the placement changes since the
  last flush go to the run's journal (``tridentcore.store.journal``; flushed and fsynced), and at
  once when an answer waits for them (:meth:`RunRecords.written`: a request is answered only once the
  journal holds it as it stands, so a ``kill -9`` loses no request a client was told about), and
  about every second, in a task of its own (an answer never waits for it), what the journal holds is
  ingested into DuckDB in one short transaction (the file is locked only while it lasts; a lock held
  by a reader just postpones it).
  :meth:`RunRecords.close` writes the rest (requests never ended, GPU samples, the final
  ``runs`` row: ``done``, or ``interrupted`` when the drain ran out), ingests it, and deletes the
  journal; when that fails the journal stays for ``trident runs recover`` and ``close`` says why.
  Past ``compact_bytes`` (``serve --journal-mb``) the journal is compacted after an ingest: the
  lines the store holds give way to one line with what a recovery still needs of them
  (:meth:`~tridentcore.store.journal.Journal.compact`), so a server that runs for weeks keeps a
  journal of about that size.

Provenance (git commit, package versions, hardware) is the caller's to give: it is gathered by the
bench layer (``tridentcore.bench.provenance``), which sits above the runtime.

One module of about 570 lines with one job, a live run's records on their way to the store:
``RunRecords``' flushing, answering and closing share its buffers and their bookkeeping, and ``write``
is the same rows in one go.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..core.defaults import DEFAULT_DB_WAIT_S, DEFAULT_JOURNAL_MIB
from ..core.errors import TridentError
from ..core.records import PlacementRow, RequestRow, RunMeta, SpanRow
from ..core.recording import request_row
from . import views

if TYPE_CHECKING:
    from ..store.journal import Journal
    from .engine import Engine
    from .group import EngineGroup

logger = logging.getLogger(__name__)

FLUSH_S = 0.5  # journal cadence: rows reach the disk at most this long after they appear
INGEST_S = 1.0  # DuckDB cadence: the store is at most about this long behind the journal
LOCK_WAIT_S = 0.25  # how long a running server's ingest waits for another process's lock (then: next time)
HEARTBEAT_S = 5.0  # an idle run still journals its clock this often (a crashed run's duration)
COMPACT_BYTES = int(DEFAULT_JOURNAL_MIB * (1 << 20))  # a journal past this size is compacted after an ingest
_SHORT = 300  # characters of another library's error kept in a log line (ours are kept whole)
_DOWN_LOG_S = 60.0  # a journal that still cannot be written is logged again this often (or when the error changes)


class RecordsNotStored(TridentError, RuntimeError):
    """A server's run could not be stored in full; its journal holds what was not (the message says
    where and how to recover it)."""


def run_meta(engine: Engine, run_id: str, config: dict | None = None,
             provenance: Mapping[str, str] | None = None) -> RunMeta:
    prov = dict(provenance or {})
    accepted = len(engine.state.requests) + engine.forgotten
    duration = (engine.ended_s if engine.ended_s is not None else engine.now()) if engine.started else 0.0
    return RunMeta(
        run_id=run_id, backend="live", policy=engine.policy.spec, seed=0, profile=engine.profile,
        cluster=engine.cluster.label, mix="live", rate_rps=accepted / duration if duration > 0 else 0.0,
        duration_s=duration, slo_scale=engine.config.slo_scale,
        config_json=json.dumps({"devices": engine.devices, "models": list(engine.models),
                                "time_scale": engine.config.time_scale, "max_queued": engine.config.max_queued,
                                "slowdown": views.slowdown(engine), "calibration": views.calibration(engine),
                                "clock": views.clock(engine),
                                # turned away before admission (429 queue_full, 503 shutting_down, 503 no_devices): never rows
                                "refused": dict(sorted(engine.refused.items())),
                                "hung": engine.hung,  # stages whose worker was taken as hung (stopped, restarted)
                                "workers": views.workers(engine),
                                # told to stop (a signal): a run its journal leaves unended was stopped, not crashed
                                **({"stopping": True} if engine.closing else {}),
                                **(config or {})}, sort_keys=True),
        git_sha=prov.get("git_sha", ""), packages_json=prov.get("packages_json", "{}"),
        hardware_json=prov.get("hardware_json", "{}"), status="complete",
        created_unix_s=engine.started_unix_s, wall_s=engine.wall_s or engine.elapsed_wall_s(),
    )


def write(run: Engine | EngineGroup, path: str, run_id: str | None = None, config: dict | None = None,
          provenance: Mapping[str, str] | None = None) -> str:
    """Write a live run's records in one transaction; returns the run id."""
    from ..store import ResultsStore, new_run_id

    run_id = run_id or new_run_id(run.policy.spec, 0, salt="live")
    ResultsStore(path).write_run(run.run_meta(run_id, config, provenance), run.request_rows(), run.span_rows(),
                                 run.placement_rows(), run.gpu_samples())
    return run_id


# ------------------------------------------------------------------------------ a server's run, as it goes
def open_journal(db: str, run_id: str) -> Journal:
    """Reserve ``run_id`` in ``db`` for a server: first ingest the journals dead servers left (each is
    logged), then create this run's journal (atomic: a second server with the id gets
    ``DuplicateRunError``) and refuse an id already stored (``DuplicateRunError``, journal removed).
    An id with ``{n}`` (``RUN_NUMBER``) takes the next number that neither is stored nor has a
    journal, so a server a supervisor restarts with the same ``--run-id`` after a crash is not refused."""
    from ..store import RUN_NUMBER, DuplicateRunError, next_run_number
    from ..store.journal import named_run_id, pending_journals
    from ..store.recovery import recover

    for r in recover(db):
        if r.outcome == "ingested":
            logger.warning("recovered run %s from %s: %d rows (%d requests), status %s%s", r.run_id, r.path, r.rows,
                           r.requests, r.status, f"; {r.message}" if r.message else "")  # (as `runs recover` says it)
        elif r.outcome == "failed":
            logger.error("could not recover run %s from %s: %s", r.run_id, r.path, r.message)
    if RUN_NUMBER not in run_id:
        return _reserve(db, run_id)
    held = [named_run_id(p) for p in pending_journals(db)]
    first = next_run_number(run_id, [*held, *_stored(db, None, run_id.partition(RUN_NUMBER)[0])])
    for n in range(first, first + 100):  # (an id taken meanwhile by a server starting beside this one: the next)
        with contextlib.suppress(DuplicateRunError):
            return _reserve(db, run_id.replace(RUN_NUMBER, str(n)))
    raise DuplicateRunError(f"run {run_id!r}: numbers {first}-{first + 99} were all taken while this server started")


def _reserve(db: str, run_id: str) -> Journal:
    from ..store import DuplicateRunError
    from ..store.journal import Journal

    journal = Journal.reserve(db, run_id)
    try:
        if _stored(db, run_id):
            raise DuplicateRunError(f"run {run_id!r} is already in {db}; choose another --run-id (one with {{n}}, "
                                    f"as 'prod-{{n}}', is numbered afresh at each start)")
    except BaseException:
        journal.remove()
        raise
    return journal


def _stored(db: str, run_id: str | None, head: str = ""):
    """Whether ``run_id`` is in ``db``'s ``runs`` table, or (``run_id`` None) the stored ids that start
    with ``head`` (read-only; no pandas in a server). ``NotADatabaseError`` for another program's
    database, ``SchemaVersionError`` for one this code cannot write (outside test: a newer schema was
    found only by the final write, after the whole run was served)."""
    import os

    from ..store import NotADatabaseError, check_version, open_readonly
    from ..store.schema import ForeignSchemaError

    if not os.path.exists(db):
        return [] if run_id is None else False
    con = open_readonly(db)
    try:
        check_version(con)
        if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'runs'").fetchall():
            return [] if run_id is None else False
        if run_id is None:
            return [r for (r,) in con.execute("SELECT run_id FROM runs WHERE starts_with(run_id, ?)", [head]).fetchall()]
        return bool(con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall())
    except ForeignSchemaError as exc:  # another program's database: refused before serving
        raise NotADatabaseError(db, str(exc)) from None
    finally:
        con.close()


def _parts(run: Engine | EngineGroup) -> tuple[Engine, ...]:
    return tuple(getattr(run, "parts", (run,)))


class RunRecords:
    """A server's run on its way to the results store while it serves (see the module docstring).

    ``start`` after the runtime started, ``close`` after it shut down; both on the server's event
    loop. The journal and DuckDB work runs in a thread, one call at a time."""

    def __init__(self, run: Engine | EngineGroup, journal: Journal, *, config: dict | None = None,
                 provenance: Mapping[str, str] | None = None, flush_s: float = FLUSH_S, ingest_s: float = INGEST_S,
                 lock_wait_s: float = LOCK_WAIT_S, final_wait_s: float = DEFAULT_DB_WAIT_S,
                 compact_bytes: int = COMPACT_BYTES) -> None:
        from ..store import ResultsStore
        from ..store.journal import Ingester

        self.run = run
        self.journal = journal
        self.config = dict(config or {})
        self.provenance = dict(provenance or {})
        self.flush_s, self.ingest_s = flush_s, ingest_s
        self.lock_wait_s, self.final_wait_s = lock_wait_s, final_wait_s
        self.ingester = Ingester(ResultsStore(journal.db), journal.path, run_id=journal.run_id, track=True)
        self.compact_bytes = compact_bytes
        self.compactions = 0
        self._compact_said = -_DOWN_LOG_S  # (monotonic) when a failed compaction was last logged
        # appends (the flush thread) and compactions (the ingest thread) change the file one at a time,
        # and the ingester hears of an append before a compaction can move it
        self._journal_lock = threading.Lock()
        self._requests: list[RequestRow] = []
        self._spans: list[SpanRow] = []
        self._placements: list[PlacementRow] = []
        self._arrived: set[int] = set()  # live requests already journaled as arrivals
        self._unwritten: list[dict] = []  # lines a failed journal write left (tried again first)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # the flush loop's: stop, or an answer waits for its request's row
        self._ended = 0  # requests ended so far (their rows numbered in that order)
        self._unjournaled: dict[int, int] = {}  # request id -> its row's number, until the journal holds it
        self._arriving: set[int] = set()  # arrivals collected into the write under way
        self._flushed = asyncio.Event()  # set (and replaced) after each write attempt
        self._task: asyncio.Task | None = None
        self._ingest_task: asyncio.Task | None = None
        self._last_line = 0.0
        self._refused_said: dict[str, int] = {}  # the refusal counts of the last line made (a change is a line)
        self._refused_written: dict[str, int] = {}  # ... and of the last line the journal holds
        self._stopping_said = False  # the last line made said the server was told to stop
        self._busy_since: float | None = None  # the store refused our ingests since (locked)
        self._down_since: float | None = None  # the journal could not be written since (a full disk)
        self._down_said: tuple[float, str] = (0.0, "")  # when the failure was last logged, and as what
        self._refused_before = 0
        self.started = False
        self.problem = ""  # why the run is not (all) in the store, once close() says so
        self.stored = False  # close() stored it all
        self.journal_errors = 0

    @property
    def run_id(self) -> str:
        return self.journal.run_id

    @property
    def db(self) -> str:
        return str(self.journal.db)

    # ---------------------------------------------------------------- the run's rows as they appear
    def _on_end(self, rec) -> None:
        self._requests.append(request_row(rec))
        self._arrived.discard(rec.spec.id)
        self._ended += 1
        self._unjournaled[rec.spec.id] = self._ended

    def _unsaved(self, rid: int) -> bool:
        """Whether the journal does not hold ``rid`` as it stands: ended and its row not written, or
        accepted and its arrival not written."""
        if rid in self._unjournaled or rid in self._arriving:
            return True
        return rid not in self._arrived and any(e.is_live(rid) for e in _parts(self.run))

    async def written(self, request_ids) -> None:
        """Return once the journal holds ``request_ids`` as they stand: the rows of those that ended,
        the arrivals of those still live (a server answers only then, a 202 or a status as much as a
        result: a ``kill -9`` after an answer loses no request the client was told about), flushing
        now rather than at the next :data:`FLUSH_S`. Also returns when a write attempt fails (the
        journal cannot be written: the rows wait in memory and new requests are refused, but the
        answers already due go out) or the run is closing (``close`` writes the rest)."""
        while (self._task is not None and not self._task.done() and not self._stop.is_set()
               and any(self._unsaved(r) for r in request_ids)):
            flushed = self._flushed
            self._wake.set()
            await flushed.wait()
            if self._down_since is not None:
                return

    def _journaled(self, upto: int | None) -> None:
        """(On the event loop, after a write attempt.) The rows of the requests ended up to number
        ``upto`` and the arrivals collected are in the journal (None: the attempt failed); wake the
        answers waiting."""
        if upto is not None:
            self._unjournaled = {r: n for r, n in self._unjournaled.items() if n > upto}
            self._arriving = set()
        flushed, self._flushed = self._flushed, asyncio.Event()
        flushed.set()

    def _on_span(self, row: SpanRow) -> None:
        self._spans.append(row)

    def _on_placement(self, row: PlacementRow) -> None:
        self._placements.append(row)

    def _collect(self) -> list[dict]:
        """Journal lines of what appeared since the last call (on the event loop)."""
        from ..store.journal import rows_lines

        tables = {"requests": self._requests, "stage_spans": self._spans, "placements": self._placements}
        self._requests, self._spans, self._placements = [], [], []
        arrivals = []
        for e in _parts(self.run):
            for rid in e.live_ids():
                if rid not in self._arrived:
                    self._arrived.add(rid)
                    self._arriving.add(rid)
                    arrivals.append(request_row(e.state.requests[rid]))
        now = time.monotonic()
        refused = self._refused_all()
        stopping = any(e.closing for e in _parts(self.run))  # a stop begun is said at once (config_json's "stopping")
        if (not arrivals and not any(tables.values()) and refused == self._refused_said
                and stopping == self._stopping_said and now - self._last_line < HEARTBEAT_S):
            return []
        self._last_line, self._refused_said, self._stopping_said = now, refused, stopping
        t_s = max(e.now() for e in _parts(self.run))
        wall_s = max(e.elapsed_wall_s() for e in _parts(self.run))
        lines = list(rows_lines({k: v for k, v in tables.items() if v}, arrivals, t_s, wall_s))
        # the run's counts as they stand (refusals, hung stages, restarts, its clock): a crashed run's
        # ``config_json`` is its last line's, not the start's; a running run's ``runs`` row follows them
        meta = self.run.run_meta(self.run_id, self.config, self.provenance)
        lines[-1]["config_json"], lines[-1]["rate_rps"] = meta.config_json, meta.rate_rps
        return lines

    def _refused_all(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in _parts(self.run):
            for reason, n in e.refused.items():
                out[reason] = out.get(reason, 0) + n
        return out

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Journal the ``runs`` row (``running``) and the initial placement, ingest them, and start
        flushing. Call once the runtime has started."""
        from ..store.journal import start_line

        run = self.run
        self._placements = list(run.placement_rows())  # the initial placement, made as it started
        run.stream_records()  # every row reaches the journal through the listeners: the run keeps none
        run.end_listeners.append(self._on_end)
        run.span_listeners.append(self._on_span)
        run.placement_listeners.append(self._on_placement)
        meta = dataclasses.replace(run.run_meta(self.run_id, self.config, self.provenance), status="running")
        gpus = sum(len(e.state.gpus) for e in _parts(run))
        lines = [start_line(meta, gpus), *self._collect()]
        self.started = True
        await asyncio.to_thread(self._write_and_ingest, lines, self.lock_wait_s)
        self._arriving = set()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop())
        self._ingest_task = loop.create_task(self._ingest_loop())

    async def _loop(self) -> None:
        """Write what appeared every ``flush_s``, and at once when an answer waits for it."""
        try:
            while not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
                upto = self._ended
                lines = self._collect()
                wrote = True
                if lines or self._unwritten:
                    wrote = await asyncio.to_thread(self._write_and_ingest, lines, None)
                self._journaled(upto if wrote else None)
        finally:
            self._journaled(None)  # (stopped: close writes the rest; nobody waits on)

    async def _ingest_loop(self) -> None:
        """Ingest what the journal holds about every ``ingest_s``, in a thread of its own: an answer
        waiting for a journal write never waits for DuckDB (its lock, a reader's)."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.ingest_s)
            if self._stop.is_set():
                return
            if self.ingester.pending():
                await asyncio.to_thread(self._ingest, self.lock_wait_s)

    def _write_and_ingest(self, lines: list[dict], wait_s: float | None) -> bool:
        """(In a thread.) Append ``lines`` to the journal; then, when ``wait_s`` is given, ingest what
        the journal holds. Returns whether both went through."""
        lines = self._unwritten + lines
        self._unwritten = []
        said = self._refused_said  # (the last line's: every line made so far is in ``lines`` or written)
        try:
            with self._journal_lock:
                self.ingester.wrote(*self.journal.append(lines))
            self._refused_written = said
        except OSError as exc:
            self._unwritten = lines
            self.journal_errors += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._refused_before = self._refused_all().get("records_unwritable", 0)
            why = f"the run's journal {self.journal.path} cannot be written ({exc.strerror or exc})"
            for e in _parts(self.run):  # no request is accepted that could not be recorded
                e.records_down = why
            now, said = time.monotonic(), str(exc)
            if said != self._down_said[1] or now - self._down_said[0] >= _DOWN_LOG_S:  # not twice a second
                self._down_said = (now, said)
                logger.error("could not write the journal %s (%s) for %.0f s; %d lines wait in memory, new requests "
                             "are refused (503 records_unwritable)", self.journal.path, exc, now - self._down_since,
                             len(lines))
            return False
        if self._down_since is not None:
            for e in _parts(self.run):
                e.records_down = ""
            logger.warning("journal %s written again after %.1f s; %d requests were refused meanwhile",
                           self.journal.path, time.monotonic() - self._down_since,
                           self._refused_all().get("records_unwritable", 0) - self._refused_before)
            self._down_since, self._down_said = None, (0.0, "")
        if wait_s is None or not self.ingester.pending():
            return True
        return self._ingest(wait_s)

    def _ingest(self, wait_s: float) -> bool:
        """(In a thread.) Ingest what the journal holds; whether it went through."""
        try:
            self.ingester.ingest(wait_s)
        except Exception as exc:  # noqa: BLE001 - the journal holds the rows; next time
            if self._busy_since is None:
                self._busy_since = time.monotonic()
                logger.warning("results store %s not written (%s); its rows wait in the journal %s",
                               self.db, _short(exc), self.journal.path)
            return False
        if self._busy_since is not None:
            logger.warning("results store %s written again after %.1f s", self.db, time.monotonic() - self._busy_since)
            self._busy_since = None
        self._compact()
        return True

    def _compact(self) -> None:
        """(In a thread, after an ingest.) Compact the journal once it is past ``compact_bytes``; a
        failure (a full disk) leaves it as it was, to be tried again after the next ingest (logged once
        a minute: an outside test's disk freed after a failed compaction was filled again by the
        journal in 9 s while the next try waited a minute)."""
        with self._journal_lock:
            if self._stop.is_set() or self.journal.closed:
                return
            try:
                size = self.journal.size()
                if size <= self.compact_bytes:
                    return
                ing, t0 = self.ingester, time.monotonic()
                offset = self.journal.compact(ing.offset, ing.seq, ing.summary())
            except OSError as exc:
                now = time.monotonic()
                if now - self._compact_said >= _DOWN_LOG_S:
                    self._compact_said = now
                    logger.warning("could not compact the journal %s (%s); it stays as it is (tried again after "
                                   "each ingest)", self.journal.path, exc)
                return
            if offset is None:
                return
            ing.compacted(offset)
            self.compactions += 1
            logger.info("journal %s compacted: %d bytes to %d in %.1f ms", self.journal.path, size, self.journal.size(),
                        1e3 * (time.monotonic() - t0))

    async def close(self) -> bool:
        """Write the rest and the final ``runs`` row, ingest all, delete the journal; call once the
        runtime has shut down. False (and ``problem`` says why) when the store could not take it all:
        the journal then stays, released, for ``trident runs recover``."""
        from ..store.journal import end_line

        if not self.started:
            self.discard()
            return True
        self._stop.set()
        self._wake.set()
        for task in (self._task, self._ingest_task):
            if task is not None:
                await task
        run = self.run
        lines = self._collect()
        unfinished = [r for r in run.request_rows() if r.state == "unfinished"]
        status = "interrupted" if run.cut_short else "done"
        meta = dataclasses.replace(run.run_meta(self.run_id, self.config, self.provenance), status=status)
        lines.append(end_line(meta, {"requests": unfinished, "gpu_samples": run.gpu_samples()}))
        return await asyncio.to_thread(self._finish, lines)

    def _finish(self, lines: list[dict]) -> bool:
        lines = self._unwritten + lines
        self._unwritten = []
        give_up = time.monotonic() + self.final_wait_s  # a full disk may get room (as --db-wait waits for a lock)
        tries = 0
        while True:
            try:
                with self._journal_lock:
                    self.ingester.wrote(*self.journal.append(lines))
                break
            except OSError as exc:
                tries += 1
                if time.monotonic() >= give_up:
                    self.journal.close()
                    ended, arrived = _requests_in(lines)
                    refused = self._refused_all()  # (outside test 100: the refusals lost went unsaid)
                    lost = {r: n - self._refused_written.get(r, 0) for r, n in sorted(refused.items())
                            if n > self._refused_written.get(r, 0)}
                    counts = (f", and {sum(lost.values())} refusals ({', '.join(f'{r}: {n}' for r, n in lost.items())}) "
                              f"not counted in it" if lost else "")
                    self.problem = (f"could not write the end of the run's journal {self.journal.path} ({exc}) "
                                    f"within {self.final_wait_s:g} s: the rows of {ended} requests that ended (each "
                                    f"stored as unfinished where its arrival was journaled, else not at all) and "
                                    f"the arrivals of {arrived} more are lost{counts}; what the journal holds is "
                                    f"recoverable (run {self.run_id} is stored as crashed once recovered): "
                                    f"trident runs recover --db {self.db}")
                    logger.error("%s", self.problem)
                    return False
                if tries == 1:
                    logger.warning("could not write the end of the run's journal %s (%s); trying again for up to "
                                   "%.0f s", self.journal.path, exc, give_up - time.monotonic())
                time.sleep(min(0.5, max(0.0, give_up - time.monotonic())))
        try:
            self.ingester.ingest(self.final_wait_s)
        except Exception as exc:  # noqa: BLE001 - reported, never hidden: the exit status says so
            self.journal.close()
            from ..store.errors import RECOVER_ADVICE, damaged

            why = damaged(exc, RECOVER_ADVICE) or _short(exc)
            self.problem = (f"could not write run {self.run_id} to {self.db} ({why}); its rows are in "
                            f"{self.journal.path}: trident runs recover --db {self.db}")
            logger.error("%s", self.problem)
            return False
        self.stored = True
        try:
            self.journal.remove()
        except OSError as exc:  # (outside test 100: a traceback, and "not stored ... (a third signal)")
            logger.warning("stored run %s in %s (%s), but its journal %s could not be deleted (%s): delete it once "
                           "it can be (a recovery of it stores nothing twice)", self.run_id, self.db,
                           lines[-1]["meta"]["status"], self.journal.path, exc.strerror or exc)
            return True
        logger.info("stored run %s in %s (%s)", self.run_id, self.db, lines[-1]["meta"]["status"])
        return True

    def wake(self) -> None:
        """Write what there is now, not at the next :data:`FLUSH_S` (the server was told to stop: a third
        signal may end the process before then). Safe from a signal handler: the loop sets the event."""
        if self._task is not None and not self._task.done():
            self._task.get_loop().call_soon_threadsafe(self._wake.set)

    def flush_journal(self) -> None:
        """Append what ended since the last flush to the journal (no ingest, no end line): a server
        stopped at once (a third signal) keeps in its journal the endings its clients were already
        told, for ``trident runs recover``. Call with the event loop stopped."""
        if self.started and not self.stored and not self.journal.closed:
            self._write_and_ingest(self._collect(), None)

    def discard(self) -> None:
        """Give up a run that never started serving: its reservation goes (nothing to store). A run
        that started keeps its journal (released) for a recovery."""
        if self.journal.closed:
            return
        if self.started:
            self.journal.close()
        else:
            self.journal.remove()


def _requests_in(lines: list[dict]) -> tuple[int, int]:
    """(request rows, arrivals) that journal ``lines`` hold."""
    from ..store.journal import _count

    return (sum(_count((line.get("tables") or {}).get("requests")) for line in lines),
            sum(_count(line.get("arrivals")) for line in lines))


def _short(exc: BaseException) -> str:
    """An error for the log: ours (and the store's lock message) whole, another library's cut to about
    300 characters at a word ("(...)" marks the cut; it was cut mid-word, our messages too)."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    if len(text) > _SHORT and not (isinstance(exc, TridentError) or getattr(exc, "locked", False)):
        text = text[:_SHORT].rsplit(" ", 1)[0] + " (...)"
    return f"{type(exc).__name__}: {text}"
