"""Opening a results database: read-write for one transaction, read-only for readers.

Locking: a process holding a read-write DuckDB connection locks the file against every other
process, readers included. So the writer opens, writes one transaction and closes at once, and
every reader opens ``read_only=True`` and closes when done. Opening retries for a few seconds
while another process holds a conflicting lock.

An existing file must be a DuckDB database (its header says so): DuckDB opens a JSON or CSV file as
data in a read-only in-memory database, so a writer would store nothing and a reader would fail
with a misleading catalog error.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NotADatabaseError

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pyarrow

__all__ = ["DUCKDB_MAGIC", "LOCK_WAIT_S", "check_header", "connect", "fetch_arrow"]

LOCK_WAIT_S = 10.0  # how long an open waits for another process's conflicting lock
DUCKDB_MAGIC = b"DUCK"  # a DuckDB file's magic bytes, after its 8-byte checksum
_MAGIC_OFFSET = 8


def special_file(path: str | os.PathLike[str]) -> str | None:
    """``a named pipe``, ``a socket`` or ``a device`` if ``path`` is one (None: a file, a folder, or
    nothing there): no results database, and a named pipe's open waits for a writer."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def check_header(path: str | os.PathLike[str]) -> None:
    """Raise :class:`NotADatabaseError` if ``path`` is an existing regular file that is not a DuckDB
    database (an empty file too: DuckDB refuses it as well), or a named pipe, socket or device (outside
    test 114: DuckDB's open of a named pipe waited for a writer for ever). A missing path, a folder or
    a file we may not read is left to the caller and to DuckDB."""
    path = Path(path)
    kind = special_file(path)
    if kind:
        raise NotADatabaseError(os.fspath(path), f"not a results database file ({kind})")
    try:
        if not path.is_file():
            return
        with path.open("rb") as f:
            head = f.read(_MAGIC_OFFSET + len(DUCKDB_MAGIC))
    except OSError:
        return
    if head[_MAGIC_OFFSET:] != DUCKDB_MAGIC:
        raise NotADatabaseError(os.fspath(path), "not a DuckDB database (" + (
            "an empty file" if not head else "no DuckDB file header") + ")")


_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>\S+) \(PID (?P<pid>\d+)\)")


def _command_of(pid: str) -> str:
    """A process's command line on one line ("" where it cannot be read: another OS, gone, not ours)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    words = [w.rsplit("/", 1)[-1] if i < 2 else w for i, w in enumerate(words)]  # program names without folders
    return " ".join(" ".join(words).split())


def _short(command: str) -> str:
    return command if len(command) <= 120 else command[:117] + "..."


def _locked(path: Path, exc: Exception, wait_s: float) -> str:
    """A lock conflict that outlasted the wait, said plainly (DuckDB's own text names the holder's
    PID and program inside a long "Could not set lock on file" sentence and a link), with the
    holder's command line where it can be read: a TridentServe process (another server or a bench
    storing into the same file; outside test: two servers on one file were each told to look for
    "another program") holds it only for its transactions, and they take turns."""
    holder = _HOLDER.search(str(exc))
    command = _command_of(holder["pid"]) if holder else ""
    if holder and ("trident" in command or ("streamlit" in command and "app.py" in command)):
        return (f"{path} is held by another TridentServe process (PID {holder['pid']}: {_short(command)}), past a wait of "
                f"{wait_s:g} s for it to let go: it holds the file for its own transactions (a server's ingest, "
                "a bench's write, a read), so the two take turns; a long one (a large run written, a heavy "
                "query) makes the other wait")
    who = (f"another process (PID {holder['pid']}, {_short(command) or holder['exe'].rsplit('/', 1)[-1]})" if holder
           else "another process")
    return (f"{path} is held by {who} whose connection to it conflicts with this one, past a wait of "
            f"{wait_s:g} s for it to let go: TridentServe's own readers and writers hold it for moments, so "
            "this is likely another program (a DuckDB shell, a notebook) with it open")


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def connect(
    path: str | os.PathLike[str],
    *,
    read_only: bool,
    config: dict[str, Any] | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> duckdb.DuckDBPyConnection:
    """Open ``path``; while another process holds a conflicting lock, retry for up to ``wait_s``. An
    existing file that is not a DuckDB database raises :class:`NotADatabaseError` (an ``OSError``)."""
    import duckdb

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a results database file")
    if read_only and not path.exists():
        raise FileNotFoundError(f"no results database at {path}")
    check_header(path)
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc):
                raise
            if time.monotonic() >= deadline:
                err = duckdb.IOException(_locked(path, exc, wait_s))
                err.locked = True  # (a page adds what to do: close it, then reload)
                raise err from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pyarrow.Table:
    """A query's result as an Arrow table (``to_arrow_table`` in duckdb 2, ``arrow`` before)."""
    rel = con.sql(sql, params=params)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()
