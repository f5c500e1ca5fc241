"""Writing runs: :class:`ResultsStore` (one transaction per call), rows to Arrow, run ids (new and numbered).

The simulator and the live engine both hand :meth:`ResultsStore.write_run` the same records
(``tridentcore.core.records``); every table is inserted from an Arrow table whose schema is
derived from its row type (:func:`tridentcore.store.schema.arrow_schema`), the derived columns
computed by the insert. A load generator adds what the client saw to ``client_requests``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tridentcore.core.errors import brief
from tridentcore.core.records import GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow

from .connection import LOCK_WAIT_S, connect
from .errors import DamagedDatabaseError, DuplicateRunError, NotADatabaseError, RowsError, StoreError, UnknownRunError
from .schema import (
    CLIENT_STATES,
    CLIENT_TABLES,
    RUN_STATUSES,
    TABLES,
    ForeignSchemaError,
    arrow_schema,
    create_schema,
    input_columns,
    insert_sql,
)

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pyarrow

__all__ = ["ResultsStore", "client_requests_table", "new_run_id", "rows_to_arrow"]


def rows_to_arrow(rows: Sequence[Any] | Iterable[Any], table: str) -> pyarrow.Table:
    """Records of ``table``'s row type as an Arrow table of its input columns, built column-wise
    (``map(attrgetter)`` per column: no per-row dicts or tuples)."""
    import pyarrow as pa

    rows = rows if isinstance(rows, (list, tuple)) else list(rows)
    schema = arrow_schema(table)
    arrays = [pa.array(list(map(attrgetter(f.name), rows)), type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def client_requests_table(rows: Any) -> pyarrow.Table:
    """Client rows (a list of dicts, a pandas DataFrame or an Arrow table; no ``run_id``) as an
    Arrow table of the ``client_requests`` columns, checked: every request index once, every state
    one of :data:`CLIENT_STATES`, no NULL in a NOT NULL column. Missing nullable columns are NULL."""
    import pyarrow as pa

    schema = arrow_schema("client_requests")
    if isinstance(rows, pa.Table):
        table = rows
    elif hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a DataFrame
        table = pa.Table.from_pandas(rows, preserve_index=False)
    else:
        table = pa.Table.from_pylist(list(rows), schema=schema)
    if "run_id" in table.column_names:
        table = table.drop(["run_id"])
    unknown = sorted(set(table.column_names) - set(schema.names))
    if unknown:
        raise RowsError(f"client rows: unknown column(s) {', '.join(unknown)}; valid: {', '.join(schema.names)}")
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    table = pa.Table.from_arrays(columns, schema=schema)
    problems = []
    for col in input_columns("client_requests"):
        if not col.nullable and table.column(col.name).null_count:
            problems.append(f"{col.name}: {table.column(col.name).null_count} NULL value(s)")
    index = table.column("request_index").to_pylist()
    if len(set(index)) != len(index):
        problems.append("request_index: the same request appears more than once")
    states = set(table.column("state").to_pylist()) - set(CLIENT_STATES) - {None}
    if states:
        problems.append(f"state: unknown {', '.join(sorted(map(str, states)))}; valid: {', '.join(CLIENT_STATES)}")
    if problems:
        raise RowsError("client rows: " + "; ".join(problems))
    return table


class ResultsStore:
    """Writes runs to one DuckDB file. Each call opens a read-write connection and closes it."""

    def __init__(self, path: str | os.PathLike[str], *, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.path = Path(path)
        self.lock_wait_s = lock_wait_s
        # a path written as a folder's (``nd/``): Path drops the slash, and a file named nd was made (outside test 131)
        self._folder_named = isinstance(path, str) and path.endswith(("/", os.sep))

    def write_run(
        self,
        meta: RunMeta,
        requests: Sequence[RequestRow] | Iterable[RequestRow],
        spans: Sequence[SpanRow] | Iterable[SpanRow],
        placements: Sequence[PlacementRow] | Iterable[PlacementRow] = (),
        gpu_samples: Sequence[GpuSample] | Iterable[GpuSample] = (),
    ) -> str:
        """Write one run and all its rows in one transaction; return its run_id.

        Refuses (``DuplicateRunError``) a run_id already stored; on any error nothing of the run
        is left behind. A ``created_unix_s`` of 0 is taken as "not set" and stamped with the
        write time.
        """
        tables = {
            "requests": rows_to_arrow(requests, "requests"),
            "stage_spans": rows_to_arrow(spans, "stage_spans"),
            "placements": rows_to_arrow(placements, "placements"),
            "gpu_samples": rows_to_arrow(gpu_samples, "gpu_samples"),
        }
        return self.write_run_tables(meta, tables)

    def write_run_tables(self, meta: RunMeta, tables: dict[str, pyarrow.Table]) -> str:
        """Write one run from Arrow tables, in one transaction; return its run_id.

        ``tables`` maps ``requests``, ``stage_spans``, ``placements``, ``gpu_samples`` and
        optionally ``client_requests`` to Arrow tables with that table's columns minus ``run_id``
        (``requests``: the input columns of :meth:`write_run`, without the derived
        ``request_class``, ``latency_s`` and ``met_slo``); a missing table means no rows. This is
        how a live bench stores the server's rows and the client's rows of one run together.
        """
        _check_status(meta.status)
        unknown = sorted(set(tables) - set(TABLES[1:]) - set(CLIENT_TABLES))
        if unknown:
            raise RowsError(f"unknown table(s) {', '.join(unknown)}; valid: {', '.join(TABLES[1:] + CLIENT_TABLES)}")
        tables = dict(tables)
        if "client_requests" in tables:
            tables["client_requests"] = client_requests_table(tables["client_requests"])
        if not meta.created_unix_s:
            meta = dataclasses.replace(meta, created_unix_s=time.time())

        with self._transaction() as con:
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [meta.run_id]).fetchall():
                raise DuplicateRunError(f"run {meta.run_id!r} is already in {self.path}")
            insert_rows(con, "runs", rows_to_arrow([meta], "runs"), meta.run_id)
            for name, table in tables.items():
                insert_rows(con, name, table, meta.run_id)
        return meta.run_id

    @contextlib.contextmanager
    def _transaction(self, *, ensure_schema: bool = True,
                     wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection held only for one transaction (schema ensured unless the caller
        knows it is there): committed when the block ends, rolled back (and the connection closed)
        when it raises. ``wait_s``: how long to wait for another process's lock (default: the store's)."""
        if self._folder_named:
            raise IsADirectoryError(f"{self.path}/ ends in '/', a folder's name: give the results database file's path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wal = self.path.with_name(self.path.name + ".wal")
        new = not self.path.exists() and not wal.exists()
        try:
            con = connect(self.path, read_only=False, wait_s=self.lock_wait_s if wait_s is None else wait_s)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    if ensure_schema:
                        try:
                            create_schema(con)
                        except ForeignSchemaError as exc:  # another program's database: never written into
                            raise NotADatabaseError(str(self.path), str(exc)) from None
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    try:
                        con.execute("ROLLBACK")
                    except Exception:  # the original error is the one worth seeing
                        pass
                    raise
            finally:
                con.close()
        except BaseException as exc:
            if new:
                self._forget_empty(wal)
            if _interrupted(exc):  # a Ctrl-C that reached DuckDB mid-query (its BEGIN too: CI) is said as one
                raise KeyboardInterrupt from exc
            raise

    def _forget_empty(self, wal: Path) -> None:
        """Remove the database file a failed first transaction created, where it holds nothing (a full
        disk: outside test 100, a 0-byte file was left, and every later run refused it as "not a
        DuckDB database (an empty file)"), and its write-ahead log with it."""
        with contextlib.suppress(OSError):
            if self.path.is_file() and self.path.stat().st_size == 0:
                self.path.unlink()
                wal.unlink(missing_ok=True)

    def check(self) -> None:
        """Open the database for writing once, creating it (and its tables) if new, and close it: a
        path that cannot take a run (a folder, another kind of file, a read-only place, a lock held
        past the wait) raises here, before a run is spent on it."""
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder, not a results database file")
        with self._transaction() as con:
            _check_whole(con, self.path)

    def write_client_requests(self, run_id: str, rows: Any) -> int:
        """Add a run's client rows (``client_requests``; a list of dicts, a DataFrame or an Arrow
        table) in one short transaction; return how many. The run need not be in ``runs`` (a
        stand-alone Locust run writes only what the client saw); refuses (``DuplicateRunError``)
        a run_id that already has client rows."""
        table = client_requests_table(rows)
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM client_requests WHERE run_id = ? LIMIT 1", [run_id]).fetchall():
                raise DuplicateRunError(f"run {run_id!r} already has client rows in {self.path}")
            insert_rows(con, "client_requests", table, run_id)
        return table.num_rows

    def delete_run(self, run_id: str) -> dict[str, int]:
        """Delete every row of one run (``runs`` and each table keyed by its id, client rows and the
        journal's ingest marks included) in one transaction; the rows deleted per table. Refuses a run
        it does not hold (``UnknownRunError``) and one whose status is ``running`` (``StoreError``: its
        server writes it, or died and its journal is still to be recovered)."""
        if not self.path.is_file():
            raise UnknownRunError(f"run {run_id!r}: no results database at {self.path}")
        tables = ("runs", *(t for t in TABLES if t != "runs"), *CLIENT_TABLES, "journal_ingests")
        with self._transaction() as con:
            status = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
            if status and status[0][0] == "running":
                raise StoreError(f"run {run_id!r} is running: its server still writes it (or died: `trident runs "
                                 "recover` closes it first)")
            counts = {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0]
                      for t in tables}
            if not any(counts.values()):
                raise UnknownRunError(f"run {brief(run_id)} is not in {self.path}")
            for t in tables:
                if counts[t]:
                    con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])
        return counts

    def mark_status(self, run_id: str, status: str) -> None:
        """Set a stored run's status (one of ``RUN_STATUSES``)."""
        _check_status(status)
        if not self.path.exists():
            raise UnknownRunError(f"run {run_id!r}: no results database at {self.path}")
        con = connect(self.path, read_only=False, wait_s=self.lock_wait_s)
        try:
            found = con.execute(
                "UPDATE runs SET status = ? WHERE run_id = ? RETURNING run_id", [status, run_id]
            ).fetchall()
        finally:
            con.close()
        if not found:
            raise UnknownRunError(f"run {brief(run_id)} is not in {self.path}")


_HEADER_BYTES = 3 * 4096  # a DuckDB file's main header and its two database headers, before the first block


def _check_whole(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Raise :class:`DamagedDatabaseError` if the file is shorter than the blocks its header says are in
    use: cut short (outside test 132: a bench into a file cut in half ran its whole live run, then could
    not store it, and ``runs recover`` failed the same way for ever; only a write reads the missing
    blocks). Used blocks, not all: DuckDB truncates free blocks off a file's end, and the header still
    counts them. A file cut within its free blocks, or by less than the free ones, passes."""
    cur = con.execute("PRAGMA database_size")
    row = dict(zip((d[0] for d in cur.description), cur.fetchone()))
    need = _HEADER_BYTES + int(row["used_blocks"]) * int(row["block_size"])
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size < need:
        raise DamagedDatabaseError(os.fspath(path), "the file ends before its last block: cut short")


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise RowsError(f"unknown run status {status!r}; valid: {', '.join(RUN_STATUSES)}")


def insert_rows(con: duckdb.DuckDBPyConnection, name: str, table: pyarrow.Table, run_id: str) -> None:
    """Insert an Arrow table of ``name``'s input columns for ``run_id`` (derived columns computed)."""
    view = f"_in_{name}"
    con.register(view, table)
    try:
        con.execute(insert_sql(name, view, table.column_names), None if name == "runs" else {"run_id": run_id})
    except BaseException:
        # the insert's own error, not the unregister's in the transaction it aborted (outside test 131: a
        # database cut short read "Current transaction is aborted (please ROLLBACK)", its IO error hidden)
        with contextlib.suppress(Exception):
            con.unregister(view)
        raise
    con.unregister(view)


def new_run_id(policy: str, seed: int, *, now_unix_s: float | None = None, salt: str | None = None) -> str:
    """A readable, unique run id: ``20250101-120000-pipeline-static-degree-2-s7-3fa9c2``.

    The tail is a short hash of the time, policy, seed, process id and ``salt`` (random when not
    given); pass ``now_unix_s`` and ``salt`` for a reproducible id.
    """
    now = time.time() if now_unix_s is None else now_unix_s
    salt = os.urandom(8).hex() if salt is None else salt
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", policy.lower()).strip("-")[:40].strip("-") or "run"
    digest = hashlib.sha1(f"{now!r}|{policy}|{seed}|{os.getpid()}|{salt}".encode()).hexdigest()[:6]
    return f"{stamp}-{slug}-s{seed}-{digest}"


RUN_NUMBER = "{n}"  # in a run id: numbered afresh at each start (``serve --run-id 'prod-{n}'``)


def next_run_number(template: str, taken: Iterable[str]) -> int:
    """The number for ``template``'s :data:`RUN_NUMBER`: one above the highest of the ``taken`` ids
    that match it (``prod-{n}`` with ``prod-1``, ``prod-7`` taken: 8), 1 when none does; more than 18
    digits are not a number of its (outside test: 4,301 digits ended in Python's int limit)."""
    head, _, tail = template.partition(RUN_NUMBER)
    used = [int(middle) for i in taken if len(i) > len(head) + len(tail) and i.startswith(head) and i.endswith(tail)
            and (middle := i[len(head):len(i) - len(tail)]).isascii() and middle.isdigit() and len(middle) <= 18]
    return max(used, default=0) + 1


def _interrupted(exc: BaseException) -> bool:
    """A query DuckDB stopped because a signal (Ctrl-C) came while it ran: ``InterruptException``, or
    ``RuntimeError: Query interrupted`` as some statements raise it (the writer never interrupts its
    own queries). A command's Ctrl-C handling then sees it, not a traceback."""
    import duckdb

    return isinstance(exc, duckdb.InterruptException) or (
        isinstance(exc, RuntimeError) and str(exc).strip().lower() == "query interrupted")
