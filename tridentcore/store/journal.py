"""A server's run journal: its rows on disk as they appear, then ingested into the results store.

A server with ``--db FILE`` never holds the DuckDB lock while it serves. It appends its rows to a
journal, ``FILE.journal/<run id>.jsonl`` (one per run), flushed and fsynced every half second and
before a request is answered (``RunRecords.written``), and
ingests what the journal holds into DuckDB in short transactions (open, insert, close). The
journal is the durable copy: a transaction that cannot get the lock (a reader holds the file) is
simply tried again later, and whatever a crash leaves in the journal is ingested by the next
``trident serve --db FILE`` or by ``trident runs recover --db FILE`` (:mod:`tridentcore.store.recovery`).

The file: JSON lines, each with a sequence number ``seq`` (0, 1, 2, ...) and a ``kind``:

* ``open``: the journal's owner (process id, host) and the run id, written when the id is reserved;
* ``start``: the run's ``runs`` row (status ``running``) and how many devices it has;
* ``rows``: rows that appeared since the previous line, column-wise per table (``requests`` of
  requests that ended, ``stage_spans``, ``placements``), ``arrivals`` (requests accepted and not
  yet ended, as they stood: a crashed run stores those it never ended as ``unfinished``), the
  run's clock (``t_s``, ``wall_s``) and its ``config_json`` as it stands (refusals, restarts: a
  crashed run keeps the last);
* ``end``: the final ``runs`` row (done, interrupted, or crashed when a recovery closed the
  journal of a dead process), the rows only the end knows (``gpu_samples``, requests never ended);
* ``compact``: what the lines it replaced still say that the store does not hold (the arrivals of
  requests not yet ended, the run's clock and ``config_json``); its ``seq`` is the last line it
  replaced.

**Compaction.** A server's journal would grow for as long as it serves (about 0.7 kB a request).
Once what it holds is in the store and it is past a size (``trident serve --journal-mb``), its
owner writes it again (:meth:`Journal.compact`): its ``open`` and ``start`` lines, one ``compact``
line for every line the store holds, and the lines appended since, as they were. The new file is
locked before it takes the name (an atomic rename), so the journal is never unowned; a process that
opened the old file and gets its lock once the owner lets go of it sees that the name is no longer
that file and looks again (:func:`_lock_current`). A recovery of a compacted journal takes the spans,
placements and ended requests of the lines replaced from the store (the crashed run's GPU samples
and unfinished requests are derived from the whole run).

A line is at most :data:`MAX_LINE_ROWS` rows; a torn last line (the process died mid-write) is
ignored. Each ingest transaction also inserts a ``journal_ingests`` row with the last ``seq`` it
holds, so an ingest retried after a failure, or repeated by a recovery, never inserts a row twice.
A recovery stores every good line of a damaged journal (a line that is not a journal line, or
repeats a ``seq``, is left out and named) and keeps the file as ``<run id>.jsonl.damaged``.

**Ownership.** The owner holds an exclusive ``flock`` on its journal for as long as it lives; the
kernel drops it when the process dies (``kill -9`` included). The journal appears under its final
name already locked (written as a temporary file, locked, then hard-linked into place, which fails
if the name exists), so reserving a run id is atomic and a live server's journal is never taken
for a dead one. A recovery takes the same lock before it touches a journal. (``flock`` needs a local
file system: on NFS a live server's lock may not be seen by another host.) A journal deleted while
its owner holds it (``rm``, its folder removed) is written again at its name from the copy the
owner holds open, before its next line (:meth:`Journal.append`).

One module of about 820 lines: the writer and the ingester share the line format, the lock and the
ingest bookkeeping, and each is needed to read the other (the recovery, which uses both, is
:mod:`tridentcore.store.recovery`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tridentcore.core.records import ROW_TYPES, RequestRow, RunMeta

from .errors import DatabaseReplacedError, DuplicateRunError, StoreError
from .schema import arrow_schema

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pyarrow

    from .writer import ResultsStore

__all__ = ["FORMAT", "JOURNAL_TABLES", "MAX_LINE_ROWS", "Ingester", "Journal", "JournalError", "compact_line",
           "journal_dir", "journal_path", "pending_journal", "pending_journals", "server_gone", "try_lock"]

logger = logging.getLogger(__name__)

FORMAT = 1
MAX_LINE_ROWS = 5_000  # rows per journal line
MAX_TRANSACTION_ROWS = 50_000  # rows per ingest transaction (a journal far behind is ingested in several)
MAX_CACHED_ROWS = 200_000  # rows an owner's ingester keeps in memory (past it: read back from the file)
JOURNAL_TABLES = ("requests", "stage_spans", "placements", "gpu_samples")


class JournalError(StoreError):
    """A journal that cannot be written or read as one."""


def journal_dir(db: str | os.PathLike[str]) -> Path:
    """The folder of ``db``'s journals: ``<db>.journal``, beside the file itself where ``db`` is a
    symbolic link (outside test: a server given a link journaled beside the link, and a recovery
    given the file's own path found nothing to recover)."""
    path = os.fspath(db)
    if os.path.islink(path):
        path = os.path.realpath(path)
    return Path(f"{path}.journal")


def journal_path(db: str | os.PathLike[str], run_id: str) -> Path:
    return journal_dir(db) / f"{urllib.parse.quote(run_id, safe='')}.jsonl"


def pending_journal(db: str | os.PathLike[str], run_id: str) -> Path | None:
    """``run_id``'s journal beside ``db`` if there is one (a run id too long to name a file has none:
    outside test 114, ``runs show`` of a 300-character id raised "File name too long")."""
    path = journal_path(db, run_id)
    try:
        return path if path.exists() else None
    except OSError:
        return None


def named_run_id(path: Path) -> str:
    """The run id a journal's file name says (the inverse of :func:`journal_path`)."""
    return urllib.parse.unquote(path.name.removesuffix(".jsonl"))


def pending_journals(db: str | os.PathLike[str]) -> list[Path]:
    """The journals of ``db`` (of live servers and of dead ones not yet recovered), by name."""
    folder = journal_dir(db)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


# ----------------------------------------------------------------------------------- rows as columns
def columns_of(rows: Sequence[Any], table: str) -> dict[str, list]:
    """Rows of ``table``'s row type as ``{column: [values]}`` (``gpus`` tuples become lists in JSON)."""
    return {f.name: list(map(attrgetter(f.name), rows)) for f in dataclasses.fields(ROW_TYPES[table])}


def rows_of(cols: Mapping[str, list], table: str) -> list:
    """The inverse of :func:`columns_of` (missing columns take the field's default)."""
    row_type = ROW_TYPES[table]
    names = [f.name for f in dataclasses.fields(row_type) if f.name in cols]
    out = []
    for values in zip(*(cols[n] for n in names)):
        kw = dict(zip(names, values))
        if "gpus" in kw:
            kw["gpus"] = tuple(kw["gpus"])
        out.append(row_type(**kw))
    return out


def _count(cols: Mapping[str, list] | None) -> int:
    return len(next(iter(cols.values()), ())) if cols else 0


def _meta_dict(meta: RunMeta) -> dict:
    return dataclasses.asdict(meta)


def _meta_of(d: Mapping[str, Any]) -> RunMeta:
    return RunMeta(**{f.name: d[f.name] for f in dataclasses.fields(RunMeta) if f.name in d})


# ----------------------------------------------------------------------------------- the writer
def _write_all(fd: int, data: bytes) -> None:
    """``data`` written whole to ``fd`` (``os.write`` may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def try_lock(fd: int) -> bool:
    """An exclusive ``flock`` on ``fd`` if nobody holds one (False: held elsewhere); other errors raise."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _lock_current(path: Path, flags: int) -> tuple[int | None, bool]:
    """Open ``path`` and try its lock: (fd, whether locked), or (None, False) when it cannot be
    opened (OSError other than a missing file raises). Locked means the file still at ``path``: its
    owner compacts it into a new file, renamed over it, and lets go of the old one only then; a lock
    got on the old one (opened before the rename) is dropped and the name opened again."""
    for _ in range(10):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None, False
        try:
            if not try_lock(fd):
                return fd, False
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                return fd, True  # (gone: the caller says so)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return fd, True
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the old file of a compaction: its owner holds the new one
    try:  # replaced at every look: its owner lives (and compacts)
        return os.open(path, flags), False
    except FileNotFoundError:
        return None, False


def server_gone(db: str | os.PathLike[str], run_id: str) -> bool:
    """Whether ``run_id`` has a journal beside ``db`` that no process holds: its server died (``kill
    -9``, a crash) and a recovery would close the run (the lock is taken and let go at once)."""
    try:
        fd, locked = _lock_current(journal_path(db, run_id), os.O_RDONLY)
    except OSError:
        return False
    if fd is not None:
        os.close(fd)
    return locked


def _writer_of(path: Path) -> tuple[object, object]:
    """(pid, host) of the process that opened the journal, as its ``open`` line says (None: unknown)."""
    try:
        with open(path, "rb") as f:
            first = _parsed(f.readline())
    except OSError:
        return None, None
    return (first.get("pid"), first.get("host")) if first is not None else (None, None)


def _owner_of(path: Path) -> str:
    """What the journal's ``open`` line says about its owner, for messages."""
    pid, host = _writer_of(path)
    return f"pid {pid} on {host}" if pid is not None else "an unknown process"


def _writer_gone(path: Path) -> bool:
    """Whether the process that opened the journal ran on this host and is gone (its lock is then held
    by someone else: a recovery)."""
    pid, host = _writer_of(path)
    if host != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Journal:
    """The journal of one run, held (locked) by the process that reserved it: lines are appended,
    flushed and fsynced. Not thread-safe: one writer at a time."""

    def __init__(self, db: str | os.PathLike[str], run_id: str, path: Path, fd: int, seq: int) -> None:
        self.db = Path(db)
        self.run_id = run_id
        self.path = path
        self._fd: int | None = fd
        self._seq = seq  # the next line's seq

    @classmethod
    def reserve(cls, db: str | os.PathLike[str], run_id: str) -> Journal:
        """Create and lock ``run_id``'s journal, atomically: :class:`DuplicateRunError` if a journal of
        that id exists (another server's, or a dead one's that awaits recovery)."""
        path = journal_path(db, run_id)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        for attempt in range(3):  # the folder goes when its last journal does: make it again if need be
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
            except OSError:  # (a full disk): the folder made for it goes again, when empty
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
                raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            line = {"seq": 0, "kind": "open", "format": FORMAT, "run_id": run_id, "pid": os.getpid(),
                    "host": socket.gethostname(), "opened_unix_s": time.time()}
            os.write(fd, (json.dumps(line) + "\n").encode())
            os.fsync(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise DuplicateRunError(_taken_message(db, run_id, path)) from None
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with contextlib.suppress(OSError):  # (a full disk): the folder made for it goes again, when empty
                path.parent.rmdir()
            raise
        os.unlink(tmp)
        _fsync_dir(path.parent)
        return cls(db, run_id, path, fd, 1)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, lines: Iterable[dict]) -> tuple[list[dict], int, int]:
        """Append ``lines`` (each gets its ``seq``) and fsync; all or none (a failed write is cut off
        again). Returns the lines as written (with their ``seq``) and the file offsets where they
        start and end."""
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        lines = list(lines)
        st = os.fstat(self._fd)
        if st.st_nlink == 0:  # deleted while held (rm, its folder removed): written again first (same size)
            self._restore(st.st_size)
        size = st.st_size
        if not lines:
            return [], size, size
        seq = self._seq
        written = []
        for line in lines:
            written.append({"seq": seq, **line})
            seq += 1
        data = ("\n".join(json.dumps(line, separators=(",", ":")) for line in written) + "\n").encode()
        try:
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise
        self._seq = seq
        return written, size, size + len(data)

    def _restore(self, size: int) -> None:
        """The journal was deleted while this process held it: its lines went on into a file no name
        reaches, so the store's ingest (which reads the path) and a recovery after a crash saw none of
        them (outside test: a run left ``running`` for good, its requests in no file). Write it again at
        its path from the copy held open (the same bytes at the same offsets: the ingest goes on where
        it was), locked, and hold that one. OSError if it cannot be (the caller refuses new requests)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rewrite(b"", 0, size, replace=False)
        logger.warning("the journal %s was deleted while the server ran; written again from the copy it held "
                       "(%d bytes)", self.path, size)

    def _rewrite(self, prefix: bytes, start: int, size: int, *, replace: bool) -> None:
        """Hold a new file at the journal's path: ``prefix``, then the bytes ``start`` to ``size`` of the
        file held now, written as a temporary file, locked and fsynced, then put in place: renamed over
        the old one (``replace``) or linked where no file is (FileExistsError: another took the name
        meanwhile; it is not ours). Then the old one is let go."""
        path, old = self.path, self._fd
        if old is None:
            raise JournalError(f"journal {path} is closed")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, prefix)
            offset = start
            while offset < size:
                chunk = os.pread(old, min(1 << 20, size - offset), offset)
                if not chunk:
                    raise OSError(errno.EIO, f"the journal {path} could not be read back")
                _write_all(fd, chunk)
                offset += len(chunk)
            os.fsync(fd)
            (os.rename if replace else os.link)(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if not replace:
            os.unlink(tmp)
        _fsync_dir(path.parent)
        os.close(old)
        self._fd = fd

    def size(self) -> int:
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        return os.fstat(self._fd).st_size

    def compact(self, upto: int, seq: int, summary: dict) -> int | None:
        """Write the journal again without its lines before byte ``upto`` (the store holds them; the
        last has ``seq``) but its ``open`` and ``start`` lines: a ``compact`` line in their place
        (``summary``: :func:`compact_line`, given ``seq``), then the lines from ``upto`` on as they
        are. The new file is locked before it is renamed over the old one, then the old one is let
        go (module docstring). Returns the new offset of byte ``upto``; None when there is nothing
        to drop (the store holds no line past ``start``). An OSError (a full disk) leaves the
        journal as it was."""
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        old = self._fd
        size = os.fstat(old).st_size
        first = b""
        while first.count(b"\n") < 2 and len(first) < min(size, upto):
            chunk = os.pread(old, 1 << 16, len(first))
            if not chunk:
                break
            first += chunk
        head, head_seq = b"", -1
        for raw in first.split(b"\n")[:2]:  # the open line and the start line (seq 0 and 1)
            line = _parsed(raw)
            if line is None or line["kind"] not in ("open", "start") or len(head) + len(raw) >= len(first):
                break
            head, head_seq = head + raw + b"\n", line["seq"]
        if not head.endswith(b"\n") or head_seq < 1 or seq <= head_seq or upto <= len(head):
            return None
        middle = (json.dumps({"seq": seq, **summary}, separators=(",", ":")) + "\n").encode()
        self._rewrite(head + middle, upto, size, replace=True)  # (the lines appended since the ingest, as they are)
        return len(head) + len(middle)

    def close(self) -> None:
        """Release the lock (the file stays: a later recovery ingests what it holds)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the journal (everything in it is in the store) and release it (released also where
        it cannot be deleted: an immutable or append-only file, a read-only disk; ``OSError`` then)."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            _fsync_dir(self.path.parent)
        finally:
            self.close()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only when empty


def _taken_message(db, run_id: str, path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return f"run {run_id!r} was being stored by another process just now; choose another --run-id"
    try:
        free = try_lock(fd)
    finally:
        os.close(fd)
    if free:
        return (f"run {run_id!r}: the journal of an earlier server with this id ({path}) awaits recovery; "
                f"run `trident runs recover --db {db}`, or choose another --run-id")
    return f"run {run_id!r} is being served by another process ({_owner_of(path)}, journal {path}); choose another --run-id"


# ----------------------------------------------------------------------------------- reading
def _parsed(raw: bytes) -> dict | None:
    """A journal line as written (a JSON object with a ``seq`` in 0..2**63-1 and a text ``kind``), or None."""
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):  # (a line nested past Python's depth)
        return None
    if not isinstance(line, dict) or not isinstance(line.get("kind"), str):
        return None
    seq = line.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        return None
    return line


def _well_formed(line: dict) -> bool:
    """Whether a line's contents can be stored as they are: its ``meta`` a ``runs`` row, its tables
    known, their columns the row type's, of one length and of their types (a recovery's check: a
    line that fails it would fail the whole transaction)."""
    from .writer import rows_to_arrow

    kind = line["kind"]
    try:
        if kind in ("start", "end"):
            rows_to_arrow([_meta_of(line["meta"])], "runs")
        groups = list((line.get("tables") or {}).items())
        if line.get("arrivals") is not None:
            groups.append(("requests", line["arrivals"]))
        for table, cols in groups:
            if table not in JOURNAL_TABLES or not isinstance(cols, dict):
                return False
            fields = dataclasses.fields(ROW_TYPES[table])
            needed = {f.name for f in fields
                      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            if not needed <= set(cols) <= {f.name for f in fields} or len({len(v) for v in cols.values()}) > 1:
                return False
            _arrow(cols, table)
    except Exception:  # noqa: BLE001 - any way it fails is a damaged line
        return False
    return True


def read_lines(path: Path, offset: int = 0, skipped: list[int] | None = None) -> tuple[list[dict], int]:
    """The complete lines of a journal from byte ``offset``, and the offset after the last of them.
    A torn last line (no newline: its writer died mid-write) is left out. A damaged line before the
    end (not a journal line, or a ``seq`` not above the one before) is a :class:`JournalError`; with
    ``skipped`` given (a recovery, which keeps every good line), a line that is not a journal line
    or repeats a ``seq`` already read (written twice) is left out, its byte offset appended there,
    and the rest are put in ``seq`` order."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    out: list[dict] = []
    seen: set[int] = set()
    pos = 0
    for raw in data[:end].split(b"\n")[:-1]:
        line = _parsed(raw)
        if skipped is None:
            if line is None or (out and line["seq"] <= out[-1]["seq"]):
                raise JournalError(f"{path}: damaged line at byte {offset + pos}")
            out.append(line)
        elif line is None or line["seq"] in seen or not _well_formed(line):
            skipped.append(offset + pos)
        else:
            seen.add(line["seq"])
            out.append(line)
        pos += len(raw) + 1
    if skipped is not None:
        out.sort(key=lambda line: line["seq"])
    return out, offset + end


# ----------------------------------------------------------------------------------- ingesting
@dataclass
class Ingester:
    """Ingests one journal into the store, from where it left off (its ``offset`` into the file and
    the last ``seq`` the store holds). The owner keeps one for its run's whole life; a recovery
    makes a fresh one (the store says what is already in)."""

    store: ResultsStore
    path: Path
    offset: int = 0
    seq: int = -1  # the last line the store holds (-1: unknown until the first transaction)
    run_id: str | None = None
    schema_ok: bool = False  # this process has made sure the schema is there
    ingested_rows: int = 0  # rows this ingester inserted
    skipped: list[int] | None = None  # a recovery's: damaged lines are left out, their offsets noted here
    # the journal's writer hands over what it appended (:meth:`wrote`), so its own lines need not be
    # read back and parsed again; dropped (and the file read instead) past MAX_CACHED_ROWS
    _cache: list[dict] = dataclasses.field(default_factory=list)
    _cache_from: int = -1  # file offset where the cached lines start
    _cache_end: int = -1
    _cache_rows: int = 0
    _db_file: tuple[int, int] | None = None  # (device, inode) of the database this ingester first wrote
    # the owner writes (``wrote``) while an ingest runs in another thread: the cache is touched under it
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)
    # the owner's (``track``): what a ``compact`` line must say of the lines ingested (:meth:`summary`)
    track: bool = False
    _open: dict = dataclasses.field(default_factory=dict, repr=False)  # request id -> its arrival's columns
    _clock: tuple = (0.0, 0.0, None)  # t_s, wall_s, config_json of the last line that had them
    compactions: int = 0  # times the journal was compacted under this ingester


    def wrote(self, lines: list[dict], start: int, end: int) -> None:
        """The writer appended ``lines`` (as :meth:`Journal.append` returned them) at file offsets
        ``start`` to ``end``."""
        if not lines:
            return
        rows = sum(_line_rows(line) for line in lines)
        with self._lock:
            contiguous = start == (self._cache_end if self._cache else self.offset)
            if not contiguous or self._cache_rows + rows > MAX_CACHED_ROWS:
                self._drop_cache()
                return
            if not self._cache:
                self._cache_from = start
            self._cache = [*self._cache, *lines]
            self._cache_end = end
            self._cache_rows += rows

    def _drop_cache(self) -> None:
        self._cache, self._cache_from, self._cache_end, self._cache_rows = [], -1, -1, 0

    def pending(self) -> bool:
        """Whether the file holds lines past what this ingester has ingested."""
        try:
            return self.path.stat().st_size > self.offset
        except FileNotFoundError:
            return False

    def ingest(self, wait_s: float | None = None) -> int:
        """Insert every complete line not yet in the store, in transactions of at most
        :data:`MAX_TRANSACTION_ROWS` rows; returns the rows inserted. Raises when the store cannot be
        written (locked past ``wait_s``, disk, schema): nothing of the failed transaction is kept
        and the next call starts there again."""
        with self._lock:
            if self._cache and self._cache_from == self.offset:
                lines, end = list(self._cache), self._cache_end
            else:
                self._drop_cache()
                lines = None
        if lines is None:  # (lines appended meanwhile are read if whole, else the next ingest reads them)
            lines, end = read_lines(self.path, self.offset, self.skipped)
        read = lines
        inserted = 0
        while lines:
            batch, rows = [], 0
            for line in lines:
                n = _line_rows(line)
                if batch and rows + n > MAX_TRANSACTION_ROWS:
                    break
                batch.append(line)
                rows += n
            n = self._transaction(batch, wait_s)
            inserted += n
            self.ingested_rows += n
            lines = lines[len(batch):]
        if self.track:
            self._note(read)
        with self._lock:
            self.offset = end
            self._drop_cache()  # (what was appended meanwhile is read back from the file next time)
        return inserted

    def _note(self, lines: list[dict]) -> None:
        """Keep what :meth:`summary` says of ``lines`` (now in the store)."""
        t_s, wall_s, config_json = self._clock
        for line in lines:
            arrivals = line.get("arrivals") or {}
            for i, rid in enumerate(arrivals.get("request_id", ())):
                self._open[rid] = {name: values[i] for name, values in arrivals.items()}
            for rid in ((line.get("tables") or {}).get("requests") or {}).get("request_id", ()):
                self._open.pop(rid, None)
            t_s = max(t_s, float(line.get("t_s") or 0.0))
            wall_s = max(wall_s, float(line.get("wall_s") or 0.0))
            if isinstance(line.get("config_json"), str):
                config_json = line["config_json"]
        self._clock = (t_s, wall_s, config_json)

    def summary(self) -> dict:
        """The ``compact`` line (without its ``seq``) for every line this ingester has ingested (``track``)."""
        if not self.track:
            raise JournalError("this ingester keeps no summary (track=False)")
        rows = list(self._open.values())
        t_s, wall_s, config_json = self._clock
        arrivals = {name: [row[name] for row in rows] for name in rows[0]} if rows else None
        return compact_line(arrivals, t_s, wall_s, config_json)

    def compacted(self, offset: int) -> None:
        """The journal was written again (:meth:`Journal.compact`): what is not ingested starts at ``offset``."""
        with self._lock:
            self.offset = offset
            self.compactions += 1
            self._drop_cache()

    def _same_database(self) -> None:
        """Raise :class:`DatabaseReplacedError` when the file at the store's path is no longer the one
        this ingester wrote (outside test: a database moved away while its server ran got a new file
        at its path holding the rest of the run without its ``runs`` row; neither could be closed)."""
        if self._db_file is None:
            return
        try:
            st = os.stat(self.store.path)
            now = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            now = None
        if now != self._db_file:
            held = (f"the journal {self.path} holds every row" if not self.compactions else
                    f"the journal {self.path} holds every row since it was last compacted (--journal-mb), the "
                    f"file moved away the rows before")
            raise DatabaseReplacedError(
                f"{self.store.path} was {'deleted' if now is None else 'replaced'} after this run's rows were first "
                f"stored there (moved away, removed, or another file put in its place): nothing more is written "
                f"there, so that the run is not split between two files; {held}. "
                f"Put the file back to go on, or store the {'rest' if self.compactions else 'whole'} of the run in "
                f"whatever file is at that path: "
                f"trident runs recover --db {self.store.path}")

    def _transaction(self, lines: list[dict], wait_s: float | None) -> int:
        if self.run_id is None:
            self.run_id = _run_id_of(self.path)
        run_id = self.run_id
        self._same_database()
        try:
            with self.store._transaction(ensure_schema=not self.schema_ok, wait_s=wait_s) as con:
                self.schema_ok = True
                if self._db_file is None:
                    st = os.stat(self.store.path)
                    self._db_file = (st.st_dev, st.st_ino)
                done = con.execute("SELECT max(seq) FROM journal_ingests WHERE run_id = ?", [run_id]).fetchall()[0][0]
                done = -1 if done is None else int(done)
                todo = [line for line in lines if line["seq"] > done]
                if not todo:
                    self.seq = max(done, lines[-1]["seq"])
                    return 0
                n = _apply(con, run_id, todo)
                con.execute("INSERT INTO journal_ingests VALUES (?, ?, ?, now()::TIMESTAMP)",
                            [run_id, todo[-1]["seq"], n])
        except BaseException:
            self.schema_ok = False
            raise
        self.seq = todo[-1]["seq"]
        return n


def _run_id_of(path: Path) -> str:
    lines, _ = read_lines(path)
    if not lines or lines[0].get("kind") != "open":
        raise JournalError(f"{path}: not a journal (no open line)")
    return lines[0]["run_id"]


def _line_rows(line: Mapping[str, Any]) -> int:
    return sum(_count(c) for c in (line.get("tables") or {}).values()) + 1


def _arrow(cols: Mapping[str, list], table: str) -> pyarrow.Table:
    import pyarrow as pa

    schema = arrow_schema(table)
    n = _count(cols)
    arrays = [pa.array(cols[f.name], type=f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _apply(con: duckdb.DuckDBPyConnection, run_id: str, lines: list[dict]) -> int:
    """Insert what ``lines`` hold (in order; the tables of consecutive lines gathered into one insert
    per table); returns the rows inserted."""
    from .writer import insert_rows, rows_to_arrow

    gathered: dict[str, dict[str, list]] = {}
    inserted = 0
    clock: dict[str, Any] = {}  # a running run's duration, wall time, rate and counts, as its last rows line says

    def flush() -> None:
        nonlocal inserted
        for table, cols in gathered.items():
            if _count(cols):
                insert_rows(con, table, _arrow(cols, table), run_id)
                inserted += _count(cols)
        gathered.clear()

    for line in lines:
        kind = line.get("kind")
        if kind == "start":
            flush()
            meta = _meta_of(line["meta"])
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
                raise DuplicateRunError(f"run {run_id!r} is already in the store (written by something else)")
            insert_rows(con, "runs", rows_to_arrow([meta], "runs"), run_id)
            inserted += 1
        elif kind in ("rows", "end"):
            if kind == "rows":
                clock.update({k: line[k] for k in ("t_s", "wall_s", "rate_rps", "config_json") if line.get(k) is not None})
            for table, cols in (line.get("tables") or {}).items():
                if table not in JOURNAL_TABLES:
                    raise JournalError(f"unknown table {table!r} in a journal line")
                into = gathered.setdefault(table, {})
                for name, values in cols.items():
                    into.setdefault(name, []).extend(values)
            if kind == "end":
                flush()
                meta = _meta_of(line["meta"])
                found = con.execute(
                    "UPDATE runs SET status = ?, duration_s = ?, rate_rps = ?, wall_s = ?, config_json = ? "
                    "WHERE run_id = ? RETURNING run_id",
                    [meta.status, meta.duration_s, meta.rate_rps, meta.wall_s, meta.config_json, run_id]).fetchall()
                if not found:
                    raise JournalError(f"run {run_id!r}: the journal ends a run it never started")
        elif kind not in ("open", "compact"):  # (a compact line's seq is one the store holds already)
            raise JournalError(f"unknown journal line kind {kind!r}")
    flush()
    if clock:  # (a run still serving: its row said the start's 0.5 s, 0 req/s and no refusals until its end)
        con.execute("UPDATE runs SET duration_s = greatest(duration_s, ?), wall_s = greatest(wall_s, ?), "
                    "rate_rps = coalesce(?, rate_rps), config_json = coalesce(?, config_json) "
                    "WHERE run_id = ? AND status = 'running'",
                    [clock.get("t_s", 0.0), clock.get("wall_s", 0.0), clock.get("rate_rps"), clock.get("config_json"),
                     run_id])
    return inserted


def compact_line(arrivals: Mapping[str, list] | None, t_s: float, wall_s: float, config_json: str | None) -> dict:
    """The ``compact`` line that stands for the lines a compaction drops (``arrivals``: the requests
    they accepted that had not ended, as columns)."""
    line = {"kind": "compact", "compacted_unix_s": time.time(), "t_s": t_s, "wall_s": wall_s}
    if config_json is not None:
        line["config_json"] = config_json
    if arrivals:
        line["arrivals"] = dict(arrivals)
    return line


def start_line(meta: RunMeta, gpus: int) -> dict:
    """The ``start`` line of a run."""
    return {"kind": "start", "meta": _meta_dict(meta), "gpus": gpus}


def rows_lines(tables: Mapping[str, Sequence[Any]], arrivals: Sequence[RequestRow], t_s: float,
               wall_s: float) -> Iterator[dict]:
    """``rows`` lines of at most :data:`MAX_LINE_ROWS` rows holding ``tables`` (rows by table name)
    and ``arrivals``; with no rows at all, one line with only the run's clock (a heartbeat)."""
    chunks: list[tuple[str, Sequence[Any]]] = []
    for table, rows in tables.items():
        for i in range(0, len(rows), MAX_LINE_ROWS):
            chunks.append((table, rows[i:i + MAX_LINE_ROWS]))
    for i in range(0, len(arrivals), MAX_LINE_ROWS):
        chunks.append(("arrivals", arrivals[i:i + MAX_LINE_ROWS]))
    line: dict = {"kind": "rows", "t_s": t_s, "wall_s": wall_s, "tables": {}}
    size = 0
    for name, rows in chunks:
        if size and size + len(rows) > MAX_LINE_ROWS:
            yield line
            line, size = {"kind": "rows", "t_s": t_s, "wall_s": wall_s, "tables": {}}, 0
        if name == "arrivals":
            line["arrivals"] = columns_of(rows, "requests")
        else:
            line["tables"][name] = columns_of(rows, name)
        size += len(rows)
    yield line


def end_line(meta: RunMeta, tables: Mapping[str, Sequence[Any]]) -> dict:
    """The ``end`` line of a run that closed cleanly (``meta``: its final ``runs`` row)."""
    return {"kind": "end", "meta": _meta_dict(meta),
            "tables": {name: columns_of(rows, name) for name, rows in tables.items()}}
