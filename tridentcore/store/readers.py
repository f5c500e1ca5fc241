"""Read-only access to a results database: listing, summaries, export, sandboxed SQL.

Every reader opens ``read_only=True`` and closes when done (see
:mod:`tridentcore.store.connection` for why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tridentcore.core.errors import brief
from tridentcore.core.records import RunMeta

from .connection import LOCK_WAIT_S, connect, fetch_arrow
from .errors import NotADatabaseError, UnknownRunError
from .schema import CLIENT_TABLES, TABLES, VIEWS, ForeignSchemaError, arrow_schema, foreign_tables

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pandas
    import pyarrow

__all__ = ["CappedResult", "QueryRows", "RowStream", "export_run", "list_runs", "open_readonly", "query_readonly",
           "query_readonly_capped", "query_readonly_rows", "query_readonly_stream", "read_run_tables", "run_summary",
           "statement_count"]


def open_readonly(path: str | os.PathLike[str], *, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a results database (the caller closes it); another program's
    database with tables named as ours is :class:`NotADatabaseError` (not a query's binder error)."""
    con = connect(path, read_only=True, wait_s=wait_s)
    try:
        foreign = foreign_tables(con)
    except BaseException:
        con.close()
        raise
    if foreign:
        con.close()
        raise NotADatabaseError(os.fspath(path), str(ForeignSchemaError(foreign)))
    return con


@dataclasses.dataclass(frozen=True)
class CappedResult:
    """The first rows of a query's result: ``frame`` holds at most ``max_rows`` rows;
    ``truncated`` says whether the query had more."""

    frame: pandas.DataFrame
    truncated: bool
    max_rows: int


@contextlib.contextmanager
def _sandboxed(
    path: str | os.PathLike[str],
    *,
    memory_limit: str,
    temp_directory: str | os.PathLike[str] | None,
    max_temp_directory_size: str | None,
    wait_s: float,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection for untrusted SQL: no file system, no extensions, locked settings;
    closed after. DuckDB spills into ``temp_directory``, or else a private temporary folder removed
    after: never its default, ``FILE.tmp/`` beside the database, the one folder such a query may
    write (outside test: ``COPY ... TO 'FILE.tmp/x.csv'`` from ``trident sql`` wrote 6.9 MB there)."""
    import tempfile

    import duckdb

    with contextlib.ExitStack() as stack:
        if temp_directory is None:
            temp_directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="trident-sql-"))
        config: dict[str, Any] = {
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": memory_limit,
            "temp_directory": str(temp_directory),
        }
        if max_temp_directory_size is not None:
            config["max_temp_directory_size"] = max_temp_directory_size
        config["lock_configuration"] = True  # last: nothing after it may change
        con = connect(path, read_only=True, config=config, wait_s=wait_s)
        try:
            yield con
        except duckdb.Error as exc:
            better = _console_error(con, path, exc)
            if better is None:
                raise
            raise better from None
        finally:
            con.close()


_SET_ADVICE = re.compile(r'\s*Use "SET [^"]*"[^.]*\.')


def _console_error(con: duckdb.DuckDBPyConnection, path: str | os.PathLike[str], exc: Exception) -> Exception | None:
    """DuckDB's error for untrusted SQL said as the console means it (None: as it is). A catalog error on
    a database with no ``runs`` table: not a results database (DuckDB's "Did you mean duckdb_schemas?"
    pointed elsewhere); DuckDB's advice to ``SET`` a setting, which the locked configuration refuses
    (outside test 127: "Use SET max_expression_depth TO x", then "the configuration has been locked")."""
    import duckdb

    missing = re.search(r"Table with name (\w+) does not exist", str(exc))
    store = {*TABLES, *CLIENT_TABLES, *VIEWS, "dispatches", "client_summary"}
    if isinstance(exc, duckdb.CatalogException) and missing and missing.group(1).lower() in store:
        # (only a table or view of the store's: a function, a type or the file's own table misspelt is
        # DuckDB's error, whatever the file holds; outside test 129)
        try:
            ours = con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'runs'").fetchall()
        except duckdb.Error:
            return None
        if not ours:
            return NotADatabaseError(os.fspath(path), "not a results database (no runs table)")
    text = str(exc)
    advice = _SET_ADVICE.search(text)
    if advice is None:
        return None
    return type(exc)(text[:advice.start()] + text[advice.end():] + " (settings cannot be changed here: the "
                     "console's are locked)")


def statement_count(text: str) -> int:
    """How many SQL statements ``text`` holds (1 where it does not parse: its error comes from running it).
    A console shows the last one's result: with more than one, it says so."""
    import duckdb

    try:
        return len(duckdb.extract_statements(text))
    except duckdb.Error:
        return 1


def _ran(res: duckdb.DuckDBPyConnection | None) -> duckdb.DuckDBPyConnection:
    """The result of ``execute``; text with no statement in it (``;``, a comment) has none."""
    if res is None:
        raise ValueError("the query has no SQL statement (only ';' or comments)")
    return res


class _Deadline:
    """Interrupts ``con``'s running query after ``timeout_s`` (None or 0: never)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float | None) -> None:
        import threading

        self._timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None

    def __enter__(self) -> None:
        if self._timer:
            self._timer.start()

    def __exit__(self, *exc: object) -> None:
        if self._timer:
            self._timer.cancel()


def query_readonly(
    path: str | os.PathLike[str],
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    timeout_s: float | None = 30.0,
    memory_limit: str = "2GB",
    temp_directory: str | os.PathLike[str] | None = None,
    max_temp_directory_size: str | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> pandas.DataFrame:
    """Run untrusted SQL against a results database and return the last statement's result.

    The connection is read-only, file system access is off (no ``COPY … TO``, ``read_csv``,
    ``ATTACH``, extension installs) and the configuration is locked so the SQL cannot turn it back
    on. The query is interrupted after ``timeout_s``. ``temp_directory`` and
    ``max_temp_directory_size`` say where DuckDB may spill and how much (default: a private temporary
    folder, removed after, bounded by the free disk). The whole result is returned: for a
    bounded one, :func:`query_readonly_capped`.
    """
    with _sandboxed(path, memory_limit=memory_limit, temp_directory=temp_directory,
                    max_temp_directory_size=max_temp_directory_size, wait_s=wait_s) as con, _Deadline(con, timeout_s):
        return _ran(con.execute(sql, params)).df()


def query_readonly_capped(
    path: str | os.PathLike[str],
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    max_rows: int,
    timeout_s: float | None = 30.0,
    memory_limit: str = "2GB",
    temp_directory: str | os.PathLike[str] | None = None,
    max_temp_directory_size: str | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> CappedResult:
    """:func:`query_readonly`, keeping at most ``max_rows`` rows of the result.

    The result is streamed and only its first ``max_rows`` (and one more, to tell whether there are
    more) leave DuckDB: a query whose result has millions of rows costs what DuckDB needs to produce
    the first ones, not a DataFrame of millions of rows.
    """
    import pandas as pd

    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    vectors = -(-(max_rows + 1) // 2048)  # DuckDB hands rows over in vectors of 2048
    with _sandboxed(path, memory_limit=memory_limit, temp_directory=temp_directory,
                    max_temp_directory_size=max_temp_directory_size, wait_s=wait_s) as con, _Deadline(con, timeout_s):
        res = _ran(con.execute(sql, params))
        chunks = [res.fetch_df_chunk(vectors)]
        rows = len(chunks[0])
        while rows <= max_rows:
            more = res.fetch_df_chunk(vectors)
            if more.empty:
                break
            chunks.append(more)
            rows += len(more)
    frame = chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)
    truncated = len(frame) > max_rows
    return CappedResult(frame.head(max_rows) if truncated else frame, truncated, max_rows)


@dataclasses.dataclass(frozen=True)
class QueryRows:
    """The first rows of a query's result as Python values (DuckDB's own: ``None`` for NULL, ints
    stay ints): ``columns`` (empty for a statement without a result), at most ``max_rows`` ``rows``,
    and whether the query had more (``truncated``)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    truncated: bool
    max_rows: int


def query_readonly_rows(
    path: str | os.PathLike[str],
    sql: str,
    *,
    max_rows: int,
    timeout_s: float | None = 30.0,
    memory_limit: str = "2GB",
    wait_s: float = LOCK_WAIT_S,
) -> QueryRows:
    """:func:`query_readonly_capped` without pandas: the rows as DuckDB hands them to Python (no
    NULL integer turned into a float), for printing (``trident sql``)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    with _sandboxed(path, memory_limit=memory_limit, temp_directory=None, max_temp_directory_size=None,
                    wait_s=wait_s) as con, _Deadline(con, timeout_s):
        res = _ran(con.execute(sql))
        columns = tuple(d[0] for d in res.description or ())
        rows = res.fetchmany(max_rows + 1) if columns else []
    return QueryRows(columns, tuple(rows[:max_rows]), len(rows) > max_rows, max_rows)


class _Budget:
    """Seconds a connection may spend in DuckDB over several calls (the query, then each fetch), not
    counting the time between them (the caller writing rows out); past it the call running is
    interrupted. None or 0: no bound."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float | None) -> None:
        self.con, self.left = con, timeout_s

    def run(self, call):
        import threading

        if not self.left:
            return call()
        timer = threading.Timer(max(self.left, 1e-3), self.con.interrupt)
        t0 = time.monotonic()
        timer.start()
        try:
            return call()
        finally:
            timer.cancel()
            self.left = max(self.left - (time.monotonic() - t0), 1e-3)


@dataclasses.dataclass
class RowStream:
    """A query's result in chunks of rows as DuckDB hands them over (:func:`query_readonly_stream`):
    ``columns`` (empty for a statement without a result), ``chunks`` (at most ``max_rows`` rows in
    all), and, once ``chunks`` is exhausted, whether the query had more (``truncated``)."""

    columns: tuple[str, ...]
    chunks: Iterator[list[tuple[Any, ...]]]
    max_rows: int
    truncated: bool = False


STREAM_CHUNK_ROWS = 10_000


@contextlib.contextmanager
def query_readonly_stream(
    path: str | os.PathLike[str],
    sql: str,
    *,
    max_rows: int,
    timeout_s: float | None = 30.0,
    memory_limit: str = "2GB",
    wait_s: float = LOCK_WAIT_S,
    chunk_rows: int = STREAM_CHUNK_ROWS,
) -> Iterator[RowStream]:
    """:func:`query_readonly_rows` a chunk at a time, for writing a large result out as it comes
    (``trident sql --csv``): memory holds one chunk, not the result made into Python objects
    (outside test: 870 bytes a row, so a 3-million-row export ran out of the 3 GiB bound), and
    ``timeout_s`` bounds the time spent in DuckDB, not the writing (it was blamed on the query:
    "ran past 30 s" for a query that took under a second)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    with _sandboxed(path, memory_limit=memory_limit, temp_directory=None, max_temp_directory_size=None,
                    wait_s=wait_s) as con:
        budget = _Budget(con, timeout_s)
        res = budget.run(lambda: _ran(con.execute(sql)))
        columns = tuple(d[0] for d in res.description or ())

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            left = max_rows
            while columns and left > 0:
                rows = budget.run(lambda: res.fetchmany(min(chunk_rows, left)))
                if not rows:
                    return
                left -= len(rows)
                yield rows
            if columns:
                stream.truncated = bool(budget.run(lambda: res.fetchmany(1)))

        stream = RowStream(columns, chunks(), max_rows)
        yield stream


def list_runs(path: str | os.PathLike[str]) -> pandas.DataFrame:
    """Stored runs, oldest first, with their request counts; :class:`NotADatabaseError` for a DuckDB
    file with no ``runs`` table (an empty database, another program's)."""
    con = open_readonly(path)
    try:
        if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'runs'").fetchall():
            raise NotADatabaseError(os.fspath(path), "not a results database (no runs table)")
        return con.execute(
            """
            SELECT r.run_id, r.created_at, r.backend, r.policy, r.seed, r.profile, r.cluster, r.mix,
                   r.rate_rps, r.duration_s, r.slo_scale, r.status, r.git_sha, r.wall_s,
                   (SELECT count(*) FROM requests q WHERE q.run_id = r.run_id) AS requests
            FROM runs r
            ORDER BY r.created_at, r.run_id
            """
        ).df()
    finally:
        con.close()


def run_summary(path: str | os.PathLike[str], run_ids: Sequence[str] | None = None) -> pandas.DataFrame:
    """The ``run_summary`` view, for every run or for ``run_ids`` (oldest first)."""
    con = open_readonly(path)
    try:
        if run_ids is None:
            return con.execute("SELECT * FROM run_summary ORDER BY created_at, run_id").df()
        return con.execute(
            "SELECT * FROM run_summary WHERE list_contains(?, run_id) ORDER BY created_at, run_id",
            [list(run_ids)],
        ).df()
    finally:
        con.close()


def export_run(
    path: str | os.PathLike[str], run_id: str, out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write one run's rows to ``out_dir/<table>.parquet`` (one file per table; a live run's client
    rows too, ``client_requests``, where it has them); return the paths.

    Reads through a read-only connection and writes with pyarrow, so it works where the SQL
    engine's own file access is switched off.
    """
    import pyarrow.parquet as pq

    out = Path(out_dir)
    con = open_readonly(path)
    try:
        if not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
            raise UnknownRunError(f"run {brief(run_id)} is not in {path}")
        tables = {
            name: fetch_arrow(con, f"SELECT * FROM {name} WHERE run_id = ?", [run_id])
            for name in TABLES
        }
        if _has_client_rows(con):
            client = fetch_arrow(con, "SELECT * FROM client_requests WHERE run_id = ?", [run_id])
            if client.num_rows:
                tables["client_requests"] = client
    finally:
        con.close()
    targets = {name: out / f"{name}.parquet" for name in tables}
    blocked = [str(t) for t in targets.values() if t.exists() and not t.is_file()]
    if blocked:
        raise IsADirectoryError(f"{', '.join(blocked)}: not a file (nothing written)")
    out.mkdir(parents=True, exist_ok=True)
    # every table to a file of its own first, then each moved into place: a write that fails leaves
    # nothing half-exported
    parts = {name: target.with_name(f".{target.name}.{os.getpid()}.part") for name, target in targets.items()}
    try:
        for name, table in tables.items():
            pq.write_table(table, parts[name])
        for name, part in parts.items():
            os.replace(part, targets[name])
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    return targets


def _has_client_rows(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the database has the ``client_requests`` table (made with a live run's first client rows)."""
    return bool(con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'client_requests'").fetchall())


def read_run_tables(path: str | os.PathLike[str], run_id: str) -> tuple[RunMeta, dict[str, pyarrow.Table]]:
    """One run's ``runs`` row and its rows, in the input form of
    :meth:`~tridentcore.store.ResultsStore.write_run_tables` (no ``run_id`` columns; ``requests``
    without its derived columns). Read-only."""
    con = open_readonly(path)
    try:
        found = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).fetchall()
        if not found:
            raise UnknownRunError(f"run {brief(run_id)} is not in {path}")
        names = [d[0] for d in con.description]
        row = dict(zip(names, found[0], strict=True))
        meta = RunMeta(**{f.name: row[f.name] for f in dataclasses.fields(RunMeta)})
        tables = {}
        for name in (*TABLES[1:], *(CLIENT_TABLES if _has_client_rows(con) else ())):
            schema = arrow_schema(name)
            table = fetch_arrow(con, f"SELECT {', '.join(schema.names)} FROM {name} WHERE run_id = ?", [run_id])
            tables[name] = table.cast(schema)
    finally:
        con.close()
    return meta, tables
