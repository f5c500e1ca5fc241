"""Recovery of the journals dead servers left (:mod:`tridentcore.store.journal`): each is ingested,
closed as ``crashed`` (an ``end`` line with the requests it accepted and never ended, as
``unfinished``, and the GPU samples derived from its spans and placements) and deleted; a live
server's journal is left alone, and a damaged one is stored line by line and kept for a look.

``trident serve --db`` runs :func:`recover` before it reserves its run id, and so does ``trident runs
recover``. A compacted journal (``serve --journal-mb``) holds only the lines its last compaction
left: the spans, placements and ended requests before it are taken from the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tridentcore.core.records import ROW_TYPES, GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow
from tridentcore.core.recording import gpu_samples as derive_gpu_samples

from .connection import LOCK_WAIT_S, fetch_arrow
from .errors import RECOVER_ADVICE, damaged
from .journal import (Ingester, Journal, _count, columns_of, _fsync_dir, _line_rows, _lock_current, _meta_dict, _meta_of,
                      _owner_of, _parsed, _well_formed, _writer_gone, journal_dir, named_run_id, pending_journals,
                      read_lines, rows_of, try_lock)

__all__ = ["CRASHED_REASON", "Recovery", "recover", "recover_journal"]

# (a result or an end state is answered only once the journal holds it: such a request is never stored so,
# unless the journal could not be written then, which the server logs and answers new requests 503 for;
# a 202 or a status while it ran may have been answered)
CRASHED_REASON = ("the server crashed before the request finished (its client was told no result and no end "
                  "state)")
# the same, for a run whose journal could not be written for a while (a full disk): requests answered
# then may have ended with no row, their answers sent unrecorded (503 records_unwritable for new ones)
CRASHED_UNWRITTEN_REASON = ("the server crashed before the request finished, or after its end was answered while "
                            "the run's journal could not be written (a full disk), before it was recorded")
# a run whose last journal line says it was told to stop (a signal), then ended before its end was written:
# a third signal, or a kill during its drain. Stored ``interrupted``, not ``crashed`` (outside test 119)
STOPPED_REASON = ("the server was told to stop, then ended before the request finished (a further signal or a "
                  "kill during its drain; its client was told no result and no end state)")
SAMPLE_S = 10.0  # the gpu_samples interval (as the engine's)
TMP_GRACE_S = 60.0  # a temporary file younger than this is never swept (its owner may not have locked it yet)


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` did with one journal."""

    run_id: str
    path: Path
    # ingested | live (its server runs) | busy (another recovery holds it) | gone (recovered by another
    # process meanwhile) | empty (the server never started) | failed
    outcome: str
    status: str = ""  # the run's status as stored (crashed, or done / interrupted when it had ended)
    rows: int = 0  # rows this recovery inserted
    requests: int = 0  # request rows the journal holds
    message: str = ""
    stays: bool = False  # ingested, but the journal could not be deleted (an append-only file, a read-only disk)


def recover(db: str | os.PathLike[str], *, wait_s: float = LOCK_WAIT_S) -> list[Recovery]:
    """Ingest every journal of ``db`` whose owner is gone (a crashed server, or one whose final write
    failed), close it, and delete it; leave live servers' journals alone."""
    if journal_dir(db).is_dir():
        _sweep_temporaries(journal_dir(db))
    return [recover_journal(db, path, wait_s=wait_s) for path in pending_journals(db)]


def recover_journal(db: str | os.PathLike[str], path: Path, *, wait_s: float = LOCK_WAIT_S) -> Recovery:
    """:func:`recover` for one journal."""
    from .writer import ResultsStore

    named = named_run_id(path)
    try:
        fd, locked = _lock_current(path, os.O_RDWR | os.O_APPEND)
    except OSError as exc:  # a folder by that name, a file it may not write (immutable, read-only disk)
        what = "a folder, not a journal" if path.is_dir() else f"cannot open it for writing: {exc.strerror or exc}"
        return Recovery(named, path, "failed", message=what)
    if fd is None:
        if path.is_symlink():
            return Recovery(named, path, "failed", message=f"a link to {os.readlink(path)}, which does not exist")
        return Recovery(named, path, "gone", message="recovered by another process meanwhile")
    try:
        if not locked:
            if _writer_gone(path):
                return Recovery(_safe_run_id(path), path, "busy",
                                message=f"another process is recovering it (its server, {_owner_of(path)}, is gone)")
            return Recovery(_safe_run_id(path), path, "live", message=f"owned by {_owner_of(path)}")
        if not path.exists():
            return Recovery(named, path, "gone", message="recovered by another process meanwhile")
        skipped: list[int] = []
        lines, good = read_lines(path, skipped=skipped)
        completed, notes = _mend_tail(fd, path, good, lines)
        if completed:  # a last line whole but for its newline: read again with it
            skipped = []
            lines, good = read_lines(path, skipped=skipped)
        if skipped:
            notes.insert(0, _bytes(skipped))
        run_id = _run_id_in(lines) or named
        start = next((line for line in lines if line["kind"] == "start"), None)
        data = [line for line in lines if line["kind"] in ("rows", "end")]
        ingester = Ingester(ResultsStore(db), path, run_id=run_id, skipped=[])
        try:
            meta = _meta_of(start["meta"]) if start is not None else _stored_meta(ingester, run_id, wait_s)
        except Exception as exc:  # noqa: BLE001 - the store cannot be read now: the journal stays for the next try
            return Recovery(run_id, path, "failed", message=_why(exc, db))
        if meta is None:  # no start line, and the store has no row of the run
            if not data and not skipped:
                _unlink(path)  # reserved, never served: nothing to store
                return Recovery(run_id, path, "empty", message="the server never started serving")
            kept = _keep(path)
            rows = sum(_line_rows(line) - 1 for line in data)
            return Recovery(run_id, path, "failed", message="; ".join(
                [*notes, f"its start line is lost and the store has no row of run {run_id}: its {rows} rows cannot "
                         f"be stored; the journal is kept as {kept}"]))
        end = next((line for line in lines if line["kind"] == "end"), None)
        try:
            rows = ingester.ingest(wait_s)
            stored, held = _stored_status(ingester, run_id, wait_s)
            if end is None and stored in ("running", ""):  # its server died: close the run as crashed
                # (in the journal first), numbered past all the store holds: a journal whose tail was
                # lost with the machine can be behind the store
                compacted = any(line["kind"] == "compact" for line in lines)
                end = _crash_end(lines, meta, int((start or {}).get("gpus") or 0),
                                 _stored_rows(ingester, run_id, wait_s) if compacted else None)
                seq = max([held, ingester.seq, *(line["seq"] for line in lines)]) + 1
                Journal(db, run_id, path, fd, seq).append([end])
                lines.append(end)
                rows += ingester.ingest(wait_s)
        except Exception as exc:  # noqa: BLE001 - reported; the journal stays for the next try
            status = end["meta"]["status"] if end is not None else ""
            return Recovery(run_id, path, "failed", status, message=_why(exc, db))
        status = end["meta"]["status"] if end is not None else stored  # the store had its end already
        requests = sum(_count((line.get("tables") or {}).get("requests")) for line in lines)
        if not skipped:
            try:
                _unlink(path)
            except OSError as exc:  # (outside test 100: "error: [Errno 1] ...", the run stored without a word)
                return Recovery(run_id, path, "ingested", status, rows, requests, stays=True, message="; ".join(
                    [*notes, f"its journal {path} could not be deleted ({exc.strerror or exc}): delete it once it can "
                             f"be (a recovery of it stores nothing twice)"]))
            return Recovery(run_id, path, "ingested", status, rows, requests, message="; ".join(notes))
        kept = _keep(path)
        return Recovery(run_id, path, "ingested", status, rows, requests,
                        message="; ".join([*notes, f"every other line stored; the journal is kept as {kept}"]))
    finally:
        os.close(fd)


def _mend_tail(fd: int, path: Path, good: int, lines: list[dict]) -> tuple[bool, list[str]]:
    """What follows a journal's last newline (its dead writer's last line): completed (True) when it
    is a whole line but for the newline (added), else cut off, with a note that says so."""
    size = os.fstat(fd).st_size
    if size <= good:
        return False, []
    with open(path, "rb") as f:
        f.seek(good)
        tail = f.read()
    last = _parsed(tail)
    if last is not None and last["seq"] not in {line["seq"] for line in lines} and _well_formed(last):
        os.write(fd, b"\n")
        return True, []
    os.ftruncate(fd, good)  # torn as its writer died: never complete, never ingested
    return False, [f"its last line, cut short ({size - good} bytes), dropped"]


def _keep(path: Path) -> Path:
    """Move a journal out of the journals' way (``RUN.jsonl.damaged``), kept for a look."""
    kept = path.with_name(path.name + ".damaged")
    os.replace(path, kept)
    _fsync_dir(path.parent)
    return kept


def _stored_meta(ingester: Ingester, run_id: str, wait_s: float) -> RunMeta | None:
    """The run's ``runs`` row in the store, if the store has one."""
    if not os.path.exists(ingester.store.path):
        return None
    import duckdb

    names = [f.name for f in dataclasses.fields(RunMeta)]
    with ingester.store._transaction(ensure_schema=False, wait_s=wait_s) as con:  # (a lock held past the wait raises)
        try:
            got = con.execute(f"SELECT {', '.join(names)} FROM runs WHERE run_id = ?", [run_id]).fetchall()
        except duckdb.CatalogException:  # no runs table yet
            return None
    return RunMeta(**dict(zip(names, got[0]))) if got else None


def _why(exc: BaseException, db) -> str:
    """A failed recovery's reason: a damaged database said so, with what to do (outside test 132: DuckDB's
    read error, and "it stays for the next try", which failed the same way for ever)."""
    said = damaged(exc, RECOVER_ADVICE + " (the journal stays)")
    return f"{db}: {said}" if said else f"{type(exc).__name__}: {exc}".strip()


def _run_id_in(lines: list[dict]) -> str | None:
    """The run id of a journal's lines: its ``open`` line's, else (that line damaged) its ``start``'s."""
    for line in lines:
        if line["kind"] == "open" and isinstance(line.get("run_id"), str):
            return line["run_id"]
        meta = line.get("meta")
        if line["kind"] == "start" and isinstance(meta, dict) and isinstance(meta.get("run_id"), str):
            return meta["run_id"]
    return None


def _bytes(offsets: list[int]) -> str:
    """``N damaged line(s) left out (at byte(s) ...)``."""
    shown = ", ".join(map(str, offsets[:5])) + (f" and {len(offsets) - 5} more" if len(offsets) > 5 else "")
    many = len(offsets) > 1
    return f"{len(offsets)} damaged line{'s' if many else ''} left out (at byte{'s' if many else ''} {shown})"


def _stored_status(ingester: Ingester, run_id: str, wait_s: float) -> tuple[str, int]:
    """The run's status in the store ("" if it has no row), and the last journal line it holds (-1: none)."""
    with ingester.store._transaction(ensure_schema=False, wait_s=wait_s) as con:
        got = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
        seq = con.execute("SELECT max(seq) FROM journal_ingests WHERE run_id = ?", [run_id]).fetchall()[0][0]
    return (str(got[0][0]) if got else ""), (-1 if seq is None else int(seq))


def _safe_run_id(path: Path) -> str:
    try:
        found = _run_id_in(read_lines(path, skipped=[])[0])
    except OSError:
        found = None
    return found or named_run_id(path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _fsync_dir(path.parent)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def _sweep_temporaries(folder: Path) -> None:
    """Remove the temporary files of reservations, compactions and restores whose process died before it
    put them in place: nobody holds their lock, and they are older than :data:`TMP_GRACE_S` (a live
    owner creates one and only then locks it: an outside test's recovery in a loop took the lock in
    between and removed a compaction's file)."""
    for tmp in folder.glob(".*.tmp"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime >= TMP_GRACE_S and try_lock(fd):
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        finally:
            os.close(fd)


def _stored_rows(ingester: Ingester, run_id: str, wait_s: float) -> tuple[list[SpanRow], list[PlacementRow], set[int]]:
    """The spans, placements and ended request ids the store holds of ``run_id`` (those of the lines a
    compaction dropped, and more)."""
    out = []
    with ingester.store._transaction(ensure_schema=False, wait_s=wait_s) as con:
        for table in ("stage_spans", "placements"):
            names = [f.name for f in dataclasses.fields(ROW_TYPES[table])]
            cols = fetch_arrow(con, f"SELECT {', '.join(names)} FROM {table} WHERE run_id = ?", [run_id]).to_pydict()
            out.append(rows_of(cols, table))
        ended = {int(r[0]) for r in con.execute("SELECT request_id FROM requests WHERE run_id = ?", [run_id]).fetchall()}
    return out[0], out[1], ended


def _crash_end(lines: list[dict], meta: RunMeta, gpus: int = 0,
               stored: tuple[list[SpanRow], list[PlacementRow], set[int]] | None = None) -> dict:
    """The ``end`` line a recovery writes for a dead server's journal: status ``crashed``, the run's
    duration as far as the journal knows, the requests it accepted and never ended (``unfinished``)
    and the GPU samples derived from its spans and placements (weights only: the dispatches'
    activation memory is not journaled). ``stored``: the spans, placements and ended requests of
    the run in the store once the journal is ingested, used instead of the journal's for a compacted
    journal (:func:`_stored_rows`)."""
    ended: set[int] = set(stored[2]) if stored else set()
    arrived: dict[int, RequestRow] = {}
    spans: list[SpanRow] = list(stored[0]) if stored else []
    placements: list[PlacementRow] = list(stored[1]) if stored else []
    t_s, wall_s = 0.0, 0.0
    config_json = meta.config_json
    for line in lines:
        if isinstance(line.get("config_json"), str):
            config_json = line["config_json"]  # the run's counts as its last line had them
        tables = line.get("tables") or {}
        ended.update(tables.get("requests", {}).get("request_id", ()))
        for row in rows_of(line.get("arrivals") or {}, "requests"):
            arrived[row.request_id] = row
        if not stored:
            spans += rows_of(tables.get("stage_spans") or {}, "stage_spans")
            placements += rows_of(tables.get("placements") or {}, "placements")
        t_s = max(t_s, float(line.get("t_s") or 0.0))
        wall_s = max(wall_s, float(line.get("wall_s") or 0.0))
    # (a journal with no clock, emptied say, leaves the stored row's: outside test 120, it was set to 0 s, 0 req/s)
    t_s = max([t_s, meta.duration_s or 0.0, *(s.ended_s for s in spans), *(p.t_s for p in placements)])
    wall_s = max(wall_s, meta.wall_s or 0.0)
    config = _config_of(config_json)
    if config is not None:  # its counts (refusals, restarts) as the journal's last line had them, not as its server ended
        config_json = json.dumps({**config, "recovered": True}, sort_keys=True)
    config = config or {}
    stopped = bool(config.get("stopping"))  # told to stop (a signal): interrupted, not crashed
    reason = CRASHED_UNWRITTEN_REASON if _unwritable(config) else STOPPED_REASON if stopped else CRASHED_REASON
    unfinished = [dataclasses.replace(r, state="unfinished", reason=reason)
                  for rid, r in sorted(arrived.items()) if rid not in ended]
    accepted = len(ended | set(arrived))
    gpus = max([gpus, *(g + 1 for s in spans for g in s.gpus), *(p.gpu + 1 for p in placements)])
    samples: list[GpuSample] = derive_gpu_samples(spans, placements, {}, gpus, t_s, SAMPLE_S)
    final = dataclasses.replace(meta, status="interrupted" if stopped else "crashed", duration_s=t_s, wall_s=wall_s,
                                config_json=config_json,
                                rate_rps=accepted / t_s if accepted and t_s > 0 else meta.rate_rps)
    return {"kind": "end", "meta": _meta_dict(final), "recovered_unix_s": time.time(),
            "tables": {"requests": columns_of(unfinished, "requests"),
                       "gpu_samples": columns_of(samples, "gpu_samples")}}


def _config_of(config_json: str | None) -> dict | None:
    """A run's ``config_json`` as a dict (None where it is not a JSON object)."""
    try:
        config = json.loads(config_json or "{}")
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _unwritable(config: dict) -> bool:
    """Whether the run's counts say its journal could not be written for a while (requests refused 503
    ``records_unwritable``)."""
    try:
        return int((config.get("refused") or {}).get("records_unwritable") or 0) > 0
    except (TypeError, ValueError, AttributeError):
        return False
