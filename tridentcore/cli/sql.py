"""``trident sql``: read-only SQL on a results database, printed as an aligned table, CSV or JSON.

Library calls: the store's sandboxed read-only query (``query_readonly_rows``); this command bounds
its time and memory and formats the result.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from typing import IO

import typer

from .common import DB_HELP, DEFAULT_DB, db_message, fail, printable, store_errors

__all__ = ["sql"]

SQL_MAX_ROWS = 10_000  # rows `trident sql` prints unless told otherwise


def sql(
    query: str = typer.Argument(..., metavar="SQL", help="The query (the tables and views of results/README.md); "
                                                          "'-' reads it from standard input."),
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
    csv_out: bool = typer.Option(False, "--csv", help="Print comma-separated values with a header line."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list, one object per row (a STRUCT or "
                                  "MAP an object, a BLOB its hex digits, NaN and infinities null, a DECIMAL a string)."),
    max_rows: int = typer.Option(SQL_MAX_ROWS, min=1, help="Print at most this many rows (a note on stderr says "
                                                           "when the result had more)."),
) -> None:
    """Run read-only SQL on a results database and print a table.

    Output is an aligned table, or --csv / --json. The connection is read-only with file access off, and a query stops after 30 s or 3 GiB of memory:
    `trident sql "SELECT policy, attainment, p95_s FROM run_summary"`."""
    from ..store import query_readonly_rows, query_readonly_stream, statement_count

    if csv_out and json_out:
        fail("give --csv or --json, not both")
    text = sys.stdin.read() if query == "-" else query
    if not text.strip():
        fail("no SQL given")
    # an option quoted with its value (`"--max-rows 1"`) reads as a SQL comment (outside test 122: "the query
    # has no SQL statement")
    first = text.split(None, 1)[0] if query != "-" else ""
    if first.partition("=")[0] in _OPTIONS and "\n" not in text.strip():
        fail(f"{first}: an option inside the SQL argument (quoted with its value?): give it apart, "
             f"as `trident sql {first.partition('=')[0]} ... \"SELECT ...\"`")
    try:
        with _memory_bound(SQL_MAX_GROWTH):
            if csv_out or json_out:  # written as the rows come: a large export holds one chunk at a time
                with query_readonly_stream(db, text, max_rows=max_rows, timeout_s=SQL_TIMEOUT_S) as result, \
                        _spooled() as out:
                    (_print_csv if csv_out else _print_json)(result, out)
                    _copy_out(out)  # all or nothing: a query failing after some rows printed none of them
            else:
                result = query_readonly_rows(db, text, max_rows=max_rows, timeout_s=SQL_TIMEOUT_S)
    except MemoryError:
        fail(_OUT_OF_MEMORY)
    except (*store_errors(), ValueError) as exc:
        fail(_sql_error(exc, db))
    if not (csv_out or json_out) and result.columns:  # (CSV and JSON were written as they came)
        typer.echo(_sql_table(result.columns, result.rows))
        if any(len(_cell(v)) > TABLE_CELL_MAX for row in result.rows for v in row):
            typer.echo(f"(values over {TABLE_CELL_MAX} characters are cut in the table; --csv or --json prints them "
                       "whole)", err=True)
    if result.truncated:
        typer.echo(f"(the first {result.max_rows} rows: the result has more; --max-rows N prints more)", err=True)
    statements = statement_count(text)
    if statements > 1:
        typer.echo(f"({statements} statements: the result printed is the last one's; run one at a time to see "
                   "each)", err=True)


_OPTIONS = ("--db", "--csv", "--json", "--max-rows")  # this command's options, as a quoted SQL argument may hold them
SQL_TIMEOUT_S = 30.0  # a query of `trident sql` is interrupted after this long
# and may grow the process by this much: DuckDB's own limit (2 GB) does not cover everything it allocates
# for a result, nor the result made into Python objects (`SELECT list(range(300000000))` took 15 GB)
SQL_MAX_GROWTH = 3 * 1024**3
_OUT_OF_MEMORY = (f"the query needs more than {SQL_MAX_GROWTH / 1024**3:g} GiB of memory: narrow it, or run it with "
                  "`duckdb -readonly` on the file")


@contextlib.contextmanager
def _memory_bound(growth: int):
    """Within the block, this process's data segment (the heap and private mappings: Linux's
    RLIMIT_DATA) may grow by at most ``growth`` bytes: past it an allocation fails (MemoryError, or
    DuckDB's out-of-memory error) instead of the host running out. No bound where the process's size
    cannot be read (not Linux)."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            data = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    except (OSError, StopIteration, ValueError, AttributeError):
        yield
        return
    bound = data + growth
    if hard != resource.RLIM_INFINITY:
        bound = min(bound, hard)
    if soft != resource.RLIM_INFINITY and soft <= bound:  # already bounded as tightly
        yield
        return
    resource.setrlimit(resource.RLIMIT_DATA, (bound, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _sql_error(exc: BaseException, db: str) -> str:
    """DuckDB's message up to its ``LINE n:`` excerpt, on one line (the excerpt's caret needs its own line)."""
    import duckdb

    from ..store.errors import damage

    if not isinstance(exc, duckdb.Error) or damage(exc):  # no database there, not a DuckDB one, or damaged
        return db_message(exc, db)

    if isinstance(exc, duckdb.OutOfMemoryException):
        return _OUT_OF_MEMORY
    if isinstance(exc, duckdb.InterruptException):  # raised by the reader's deadline
        return (f"the query ran past {SQL_TIMEOUT_S:g} s in DuckDB (running it and handing over its rows; "
                "writing them out is not counted) and was interrupted: narrow it, or run it with "
                "`duckdb -readonly` on the file")
    lines = [line.strip() for line in str(exc).splitlines()]
    head = lines[: next((i for i, line in enumerate(lines) if line.startswith("LINE ")), len(lines))]
    return " ".join(line for line in head if line) or type(exc).__name__


def _cell(v) -> str:
    """A value as the table shows it: NULL, floats to 6 decimals (3 significant digits below 1e-4)."""
    if v is None:
        return "NULL"
    if isinstance(v, float) and v == v and abs(v) != float("inf"):
        return f"{v:.3g}" if v and abs(v) < 1e-4 else str(round(v, 6))
    return printable(str(v))  # (--csv and --json print values as they are, quoted by their format)


TABLE_CELL_MAX = 200  # characters of a value in the aligned table (--csv and --json print values whole)


def _shown(v) -> str:
    text = _cell(v)
    return text if len(text) <= TABLE_CELL_MAX else text[:TABLE_CELL_MAX - 1] + "…"


def _sql_table(columns, rows) -> str:
    """Aligned columns: numbers to the right, the rest to the left; NULL as ``NULL``; a value over
    TABLE_CELL_MAX characters cut to it (every row is padded to the widest value: one 10 MB string
    made 10,000 rows print 100 GB)."""
    cells = [[_shown(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(columns))]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(r, widths, numeric)).rstrip())
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines)


SPOOL_MEMORY_BYTES = 64 * 1024**2  # CSV or JSON held in memory before it is spooled to a temporary file


@contextlib.contextmanager
def _spooled() -> Iterator[IO[str]]:
    """Where ``--csv`` and ``--json`` write their rows until the query has ended: DuckDB can fail after
    it has given rows (an ``error()`` or a cast past the first chunks; a 30 s or memory bound), and
    what had reached stdout stayed there, a partial file or invalid JSON under the error (exit 1)."""
    import tempfile

    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, mode="w+", encoding="utf-8",
                                       newline="") as out:
        yield out


def _copy_out(out: IO[str]) -> None:
    out.seek(0)
    shutil.copyfileobj(out, sys.stdout, 1024**2)
    sys.stdout.flush()


def _print_csv(result, stream: IO[str]) -> None:
    import csv

    out = csv.writer(stream, lineterminator="\n")
    if result.columns:
        out.writerow(result.columns)
    for rows in result.chunks:
        out.writerows(["" if v is None else v for v in row] for row in rows)


def _print_json(result, out: IO[str]) -> None:
    import json
    import math

    def plain(v):  # JSON has no NaN or infinity: null; a STRUCT or MAP an object, a BLOB its hex digits
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v).hex()
        return str(v)

    first = True
    for rows in result.chunks:
        text = ",\n".join(json.dumps({c: plain(v) for c, v in zip(result.columns, row)}) for row in rows)
        out.write(("[\n" if first else ",\n") + text)
        first = False
    out.write("[]\n" if first else "\n]\n")
