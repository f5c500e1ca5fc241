"""DuckDB results store: schema, one-transaction writer, SQL views and read-only readers.

The simulator and the live engine both hand :meth:`ResultsStore.write_run` the same records
(``tridentcore.core.records``); the store turns them into the tables ``runs``, ``requests``,
``stage_spans``, ``placements`` and ``gpu_samples`` (every one keyed by ``run_id``) and keeps the
views ``run_summary``, ``stage_breakdown`` and ``attainment_by_shape`` over them. A load generator
(``workloads/mixed.py``, ``trident bench --backend live``) adds what the client saw, one row per
scheduled request, to ``client_requests`` (view ``client_summary``). Latencies and attainment
are SQL over the rows, never counters kept by a driver (docs/design.md, "Results store").

* :mod:`~tridentcore.store.schema`: tables derived from the row types, views, Arrow schemas;
* :mod:`~tridentcore.store.writer`: :class:`ResultsStore` (one transaction per write), run ids;
* :mod:`~tridentcore.store.readers`: read-only queries, listing, summaries, export;
* :mod:`~tridentcore.store.journal`: a server's run journal, its ingest into the store, recovery;
* :mod:`~tridentcore.store.connection`: opening with lock retries;
* :mod:`~tridentcore.store.errors`: the store's errors.

``import tridentcore`` never imports this package; duckdb, pyarrow and pandas are imported inside
the functions that need them.
"""

from __future__ import annotations

from .connection import LOCK_WAIT_S
from .errors import DuplicateRunError, NotADatabaseError, RowsError, SchemaVersionError, StoreError, UnknownRunError
from .readers import (CappedResult, QueryRows, export_run, list_runs, open_readonly, query_readonly,
                      query_readonly_capped, query_readonly_rows, query_readonly_stream, read_run_tables, run_summary,
                      statement_count)
from .schema import CLIENT_STATES, CLIENT_TABLES, RUN_STATUSES, SCHEMA_VERSION, TABLES, VIEWS, arrow_schema, check_version
from .writer import RUN_NUMBER, ResultsStore, client_requests_table, new_run_id, next_run_number, rows_to_arrow

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "VIEWS",
    "RUN_STATUSES",
    "LOCK_WAIT_S",
    "DuplicateRunError",
    "NotADatabaseError",
    "UnknownRunError",
    "SchemaVersionError",
    "StoreError",
    "RowsError",
    "ResultsStore",
    "new_run_id",
    "next_run_number",
    "RUN_NUMBER",
    "open_readonly",
    "query_readonly",
    "query_readonly_capped",
    "query_readonly_rows",
    "query_readonly_stream",
    "statement_count",
    "CappedResult",
    "QueryRows",
    "list_runs",
    "run_summary",
    "export_run",
    "CLIENT_TABLES",
    "CLIENT_STATES",
    "arrow_schema",
    "check_version",
    "client_requests_table",
    "read_run_tables",
    "rows_to_arrow",
]
