"""The results store for the workbench: reads keyed by the file's signature (path, size, modification
time), a run as a zip, untrusted read-only SQL within limits, and the SQL examples of results/README.md.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import io
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tridentcore.core.errors import TridentError
from tridentcore.store.readers import CappedResult
from tridentcore.store.schema import STAGE_ORDER_SQL

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["SQL_MAX_ROWS", "DbSignature", "SqlLimitError", "class_attainment_frame", "db_signature", "latencies",
           "SqlResults", "run_sql", "run_zip", "servers_gone", "zip_folder", "runs_frame", "sql_examples", "sql_spill_dir", "sql_waiting", "stage_breakdown_frame",
           "summaries_frame"]


@dataclass(frozen=True)
class DbSignature:
    """What identifies a results file's contents for caching: path, size and modification time."""

    path: str
    size: int
    mtime_ns: int


def db_signature(path: str | os.PathLike[str]) -> DbSignature:
    """The file's signature; FileNotFoundError with a hint when there is no file."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not a results database file; choose another file")
    if not p.is_file():
        raise FileNotFoundError(
            f"no results database at {p} (write one with `trident simulate --db {p}` or choose another file)")
    st = p.stat()
    return DbSignature(str(p.resolve()), st.st_size, st.st_mtime_ns)


def runs_frame(sig: DbSignature) -> pd.DataFrame:
    from tridentcore.store import list_runs

    return list_runs(sig.path)


def summaries_frame(sig: DbSignature, run_ids: Sequence[str]) -> pd.DataFrame:
    from tridentcore.store import run_summary

    return run_summary(sig.path, list(run_ids))


def _read(sig: DbSignature, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    from tridentcore.store import open_readonly

    con = open_readonly(sig.path)
    try:
        return con.execute(sql, list(params)).df()
    finally:
        con.close()


def class_attainment_frame(sig: DbSignature, run_ids: Sequence[str]) -> pd.DataFrame:
    return _read(sig, "SELECT run_id, request_class, requests, met, attainment, p50_s, p95_s, rejected, failed "
                      "FROM attainment_by_shape WHERE list_contains(?, run_id) ORDER BY request_class, run_id",
                 [list(run_ids)])


def stage_breakdown_frame(sig: DbSignature, run_ids: Sequence[str]) -> pd.DataFrame:
    return _read(sig, "SELECT * FROM stage_breakdown WHERE list_contains(?, run_id) "
                      f"ORDER BY run_id, {STAGE_ORDER_SQL}",
                 [list(run_ids)])


def latencies(sig: DbSignature, run_id: str) -> pd.Series:
    """Latencies of a run's finished requests (seconds)."""
    df = _read(sig, "SELECT latency_s FROM requests WHERE run_id = ? AND latency_s IS NOT NULL", [run_id])
    return df["latency_s"]


def zip_folder(run_id: str) -> str:
    """The folder of a run's files in its zip: the run id with every character that could leave
    the folder, or is not portable, %-escaped (as its journal's file name), never ``.`` or ``..``;
    a run id such as ``../x`` or ``/abs`` named entries outside the folder the zip is extracted to."""
    name = urllib.parse.quote(run_id, safe="")
    return (name.replace(".", "%2E") or "run") if name.strip(".") == "" else name


def servers_gone(path: str | os.PathLike[str], run_ids: Iterable[str]) -> list[str]:
    """Those of ``run_ids`` (stored as ``running``) whose server is gone: their journal beside ``path``
    is held by no process (``trident runs list`` says the same of them)."""
    from tridentcore.store.journal import server_gone

    return [r for r in run_ids if server_gone(path, r)]


def run_zip(sig: DbSignature, run_id: str) -> bytes:
    """One run as a zip of Parquet files (one per table), via ``store.export_run``."""
    from tridentcore.store import export_run

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="trident-export-") as tmp:
        written = export_run(sig.path, run_id, tmp)
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, path in written.items():
                zf.write(path, arcname=f"{zip_folder(run_id)}/{name}.parquet")
    return buf.getvalue()


# The SQL console's limits. Its SQL is untrusted (whoever can open the page types it): DuckDB may use
# SQL_MEMORY_LIMIT of memory and spill at most SQL_MAX_SPILL to a private temporary folder (never
# next to the database), a query is interrupted after SQL_TIMEOUT_S, at most SQL_MAX_ROWS rows of a
# result leave DuckDB, and a result over SQL_MAX_BYTES in memory is refused (the page caches results).
# It runs in a child process that is ended past SQL_MAX_GROWTH of memory or SQL_KILL_AFTER_S.
SQL_MEMORY_LIMIT = "1GB"
SQL_MAX_SPILL = "256MB"
SQL_TIMEOUT_S = 30.0
SQL_MAX_ROWS = 10_000
SQL_MAX_BYTES = 32 * 1024**2
SQL_CONCURRENT = 2  # queries at once in this process (each may use the memory limit); others wait
SQL_QUEUE_WAIT_S = 30.0
# the query's child process (``run_sql``): ended past this much memory above the process it was forked
# from (DuckDB's limit, the result made into Python objects, slack), or this long after it began
SQL_MAX_GROWTH = 2 * 1024**3
SQL_KILL_AFTER_S = SQL_TIMEOUT_S + 5.0
SQL_TICK_S = 0.5  # how often a running query's page hears from it (sql_waiting)

_sql_slots = threading.BoundedSemaphore(SQL_CONCURRENT)
_waiting = threading.local()  # .fn: called about twice a second while this thread's query runs (sql_waiting)
_spill: dict[str, str] = {}
_spill_lock = threading.Lock()


class SqlLimitError(TridentError):
    """A console query hit one of the SQL console's limits; ``str()`` is the page's message."""


def sql_spill_dir() -> str:
    """This process's private folder for DuckDB's spill files (mode 0700, removed at exit)."""
    with _spill_lock:
        if "dir" not in _spill:
            _spill["dir"] = tempfile.mkdtemp(prefix="trident-workbench-sql-")
            atexit.register(shutil.rmtree, _spill["dir"], True)
        return _spill["dir"]


@contextlib.contextmanager
def sql_waiting(fn: Callable[[float], None]):
    """While in this block, :func:`run_sql` calls ``fn(seconds)`` about twice a second as its query
    runs (in this thread): a page's placeholder update there is where Streamlit's Stop, a reload or a
    closed tab ends the page, and with it the query's child (it ran on to its 30 s limit: outside test)."""
    _waiting.fn = fn
    try:
        yield
    finally:
        _waiting.fn = None


class SqlResults:
    """The console's cache of results: at most ``max_entries`` (the least recently used go first),
    each for ``ttl_s``, shared by every page of this process; a failed query is not kept.

    Not ``st.cache_data``: that records the Streamlit elements called inside the cached function
    and replays them on a hit, and :func:`run_sql`'s progress line (``sql_waiting``) updates a
    placeholder made outside it, so every later hit of a query that ran 0.5 s or more failed with
    Streamlit's CacheReplayClosureError (outside test: the page's default query, for an hour)."""

    def __init__(self, max_entries: int, ttl_s: float, run: Callable[[DbSignature, str], CappedResult] | None = None):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._run = run  # None: run_sql
        self._kept: collections.OrderedDict[tuple[DbSignature, str], tuple[float, CappedResult]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, sig: DbSignature, sql: str) -> CappedResult:
        key, now = (sig, sql), time.monotonic()
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None and now - hit[0] < self.ttl_s:
                self._kept.move_to_end(key)
                return _copied(hit[1])
            self._kept.pop(key, None)
        result = (self._run or run_sql)(sig, sql)  # outside the lock: another page's query need not wait for this one
        with self._lock:
            self._kept[key] = (time.monotonic(), result)
            self._kept.move_to_end(key)
            while len(self._kept) > self.max_entries:
                self._kept.popitem(last=False)
        return _copied(result)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


def _copied(result: CappedResult) -> CappedResult:
    """A page's own copy (as st.cache_data gave): what one page does to its frame is not another's."""
    return dataclasses.replace(result, frame=result.frame.copy())


def run_sql(sig: DbSignature, sql: str) -> CappedResult:
    """Untrusted SQL over the results file (``store.query_readonly_capped``): read-only, no file
    access, within the SQL console's limits (above); the first SQL_MAX_ROWS rows of the result.

    It runs in a child process (:mod:`workbench.child`): DuckDB's memory limit does not cover what
    leaves it, and ``SELECT list(range(300000000))`` grew the workbench to 15 GB while its result was
    made into Python objects, past the timeout, which cannot interrupt that. The child is ended when
    it grows SQL_MAX_GROWTH past the process it was forked from, or runs SQL_KILL_AFTER_S."""
    from workbench import child

    if not _sql_slots.acquire(timeout=SQL_QUEUE_WAIT_S):
        raise SqlLimitError(f"the SQL console is busy ({SQL_CONCURRENT} queries running); try again")
    spill = tempfile.mkdtemp(dir=sql_spill_dir())  # its own: a child ended at a limit leaves its spill files
    try:
        with child.ChildCall(_capped_query, sig.path, sql, spill) as call:
            t0, start = time.monotonic(), _rss_bytes(_parent_pid(call.pid))
            said = t0
            while not call.ready(0.05):
                tick = getattr(_waiting, "fn", None)
                if tick is not None and time.monotonic() - said >= SQL_TICK_S:
                    said = time.monotonic()
                    tick(said - t0)  # (an exception here, the page stopping, ends the child: ChildCall.__exit__)
                grown = _rss_bytes(call.pid) - start
                if grown > SQL_MAX_GROWTH:
                    call.stop()
                    raise SqlLimitError(f"the query used more than {SQL_MAX_GROWTH / 1024**3:g} GiB of memory and "
                                        "was stopped (a result is made into Python objects past DuckDB's own "
                                        "limit): select fewer or narrower rows or columns, or run it with "
                                        "`duckdb -readonly` on the file")
                if time.monotonic() - t0 > SQL_KILL_AFTER_S:
                    call.stop()
                    raise SqlLimitError(f"the query ran past the SQL console's {SQL_TIMEOUT_S:g} s and was stopped")
            return call.result()
    finally:
        shutil.rmtree(spill, ignore_errors=True)
        _sql_slots.release()


def _capped_query(path: str, sql: str, spill_dir: str) -> CappedResult:
    """In the child (:func:`run_sql`): the query within DuckDB's limits, its result's size checked
    before it is sent back."""
    import duckdb

    from tridentcore.store import query_readonly_capped

    try:
        result = query_readonly_capped(path, sql, max_rows=SQL_MAX_ROWS, timeout_s=SQL_TIMEOUT_S,
                                       memory_limit=SQL_MEMORY_LIMIT, temp_directory=spill_dir,
                                       max_temp_directory_size=SQL_MAX_SPILL)
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise SqlLimitError(f"the query needs more than the SQL console allows ({SQL_MEMORY_LIMIT} of memory "
                                f"and {SQL_MAX_SPILL} of temporary files): narrow it, or run it with "
                                "`duckdb -readonly` on the file") from None
        if isinstance(exc, duckdb.InterruptException):
            raise SqlLimitError(f"the query ran past the SQL console's {SQL_TIMEOUT_S:g} s and was "
                                "interrupted") from None
        raise
    size = int(result.frame.memory_usage(index=True, deep=True).sum())
    if size > SQL_MAX_BYTES:
        raise SqlLimitError(f"the result's first {len(result.frame)} rows take {size / 1024**2:.0f} MiB, more than the "
                            f"SQL console keeps ({SQL_MAX_BYTES / 1024**2:.0f} MiB): select fewer or narrower columns")
    return result


def _parent_pid(pid: int | None) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _rss_bytes(pid: int | None) -> int:
    """A process's resident memory (0 when it cannot be read: gone, or not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


_SQL_BLOCK = re.compile(r"```sql\s*\n(.*?)```", re.S)


def sql_examples(readme: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """``(title, sql)`` for each ```sql block of results/README.md; the title is the paragraph
    just before the block. Empty when the README is not there (an installed package)."""
    path = Path(readme) if readme is not None else REPO_ROOT / "results" / "README.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _SQL_BLOCK.finditer(text):
        before = text[pos:m.start()].strip().split("\n\n")[-1].strip()
        title = " ".join(before.split()).rstrip(":") or f"example {len(out) + 1}"
        out.append((title, m.group(1).strip()))
        pos = m.end()
    return out
