"""Opening a results database: read-write for one transaction, read-only for readers.

Locking: a process holding a read-write DuckDB connection locks the file against every other
process, readers included. So the writer opens, writes one transaction and closes at once, and
every reader opens ``read_only=True`` and closes when done. Opening retries for a few seconds
while another process holds a conflicting lock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pyarrow

__all__ = ["LOCK_WAIT_S", "connect", "fetch_arrow"]

LOCK_WAIT_S = 10.0  # how long an open waits for another process's conflicting lock


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
    """Open ``path``; while another process holds a conflicting lock, retry for up to ``wait_s``."""
    import duckdb

    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no results database at {path}")
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            if not _is_lock_conflict(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pyarrow.Table:
    """A query's result as an Arrow table (``to_arrow_table`` in duckdb 2, ``arrow`` before)."""
    rel = con.sql(sql, params=params)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()
