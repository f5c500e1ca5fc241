"""DuckDB results store: schema, one-transaction writer, SQL views and read-only readers.

The simulator and the live engine both hand :meth:`ResultsStore.write_run` the same records
(``tridentcore.core.records``); this module turns them into the tables ``runs``, ``requests``,
``stage_spans``, ``placements`` and ``gpu_samples`` (every one keyed by ``run_id``) and keeps the
views ``run_summary``, ``stage_breakdown`` and ``attainment_by_shape`` over them. A load generator
(``workloads/mixed.py``, ``trident bench --backend live``) adds what the client saw, one row per
scheduled request, to ``client_requests`` (view ``client_summary``). Latencies and
attainment are SQL over the rows, never counters kept by a driver (DESIGN.md, "Results store").

Locking: a process holding a read-write DuckDB connection locks the file against every other
process, readers included. So the writer opens, writes one transaction and closes at once, and
every reader here opens ``read_only=True`` and closes when done. Opening retries for a few seconds
while another process holds a conflicting lock.

``import tridentcore`` never imports this module; duckdb, pyarrow and pandas are imported inside
the functions that need them.
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

from tridentcore.core.records import GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pandas
    import pyarrow

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "VIEWS",
    "RUN_STATUSES",
    "DuplicateRunError",
    "UnknownRunError",
    "SchemaVersionError",
    "ResultsStore",
    "new_run_id",
    "open_readonly",
    "query_readonly",
    "list_runs",
    "run_summary",
    "export_run",
    "CLIENT_TABLES",
    "CLIENT_STATES",
    "client_requests_table",
    "read_run_tables",
]

SCHEMA_VERSION = 1
TABLES = ("runs", "requests", "stage_spans", "placements", "gpu_samples")
VIEWS = ("run_summary", "stage_breakdown", "attainment_by_shape")
RUN_STATUSES = ("complete", "interrupted", "failed")
CLIENT_TABLES = ("client_requests",)
# how a scheduled request ended as the client saw it (exactly one per row):
CLIENT_STATES = ("done", "rejected", "failed", "cancelled", "refused", "error", "unfinished")
LOCK_WAIT_S = 10.0  # how long an open waits for another process's conflicting lock


class DuplicateRunError(ValueError):
    """``write_run`` was given a run_id the store already holds."""


class UnknownRunError(KeyError):
    """A run_id the store does not hold."""


class SchemaVersionError(RuntimeError):
    """The database was written with a different schema version than this code's."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

_DDL_TABLES = """
CREATE TABLE IF NOT EXISTS schema_version (
    version        INTEGER NOT NULL,
    applied_at     TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id          VARCHAR PRIMARY KEY,
    backend         VARCHAR NOT NULL,
    policy          VARCHAR NOT NULL,
    seed            BIGINT NOT NULL,
    profile         VARCHAR NOT NULL,
    cluster         VARCHAR NOT NULL,
    mix             VARCHAR NOT NULL,
    rate_rps        DOUBLE NOT NULL,
    duration_s      DOUBLE NOT NULL,
    slo_scale       DOUBLE NOT NULL,
    config_json     VARCHAR NOT NULL,
    git_sha         VARCHAR NOT NULL,
    packages_json   VARCHAR NOT NULL,
    hardware_json   VARCHAR NOT NULL,
    status          VARCHAR NOT NULL,
    created_unix_s  DOUBLE NOT NULL,
    created_at      TIMESTAMP NOT NULL,   -- UTC, from created_unix_s
    wall_s          DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    run_id          VARCHAR NOT NULL,
    request_id      BIGINT NOT NULL,
    model           VARCHAR NOT NULL,
    height          INTEGER NOT NULL,
    width           INTEGER NOT NULL,
    frames          INTEGER NOT NULL,
    steps           INTEGER NOT NULL,
    request_class   VARCHAR NOT NULL,     -- RequestRow.request_class: 'model WxH' or 'model WxHxF'
    arrival_s       DOUBLE NOT NULL,
    deadline_s      DOUBLE NOT NULL,
    state           VARCHAR NOT NULL,     -- done | failed | rejected | cancelled
    reason          VARCHAR NOT NULL,
    finish_s        DOUBLE,
    latency_s       DOUBLE,               -- finish_s - arrival_s, only when state = 'done'
    met_slo         BOOLEAN NOT NULL,     -- state = 'done' AND finish_s <= deadline_s
    ooms            INTEGER NOT NULL,
    preemptions     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_spans (
    run_id          VARCHAR NOT NULL,
    dispatch_id     BIGINT NOT NULL,      -- a batched dispatch has one row per request
    request_id      BIGINT NOT NULL,
    stage           VARCHAR NOT NULL,     -- encode | diffuse | decode
    gpus            INTEGER[] NOT NULL,
    degree          INTEGER NOT NULL,
    batch           INTEGER NOT NULL,
    queued_s        DOUBLE NOT NULL,
    started_s       DOUBLE NOT NULL,
    ended_s         DOUBLE NOT NULL,
    predicted_s     DOUBLE NOT NULL,
    start_step      INTEGER NOT NULL,
    end_step        INTEGER NOT NULL,
    outcome         VARCHAR NOT NULL,     -- done | preempted | failed | oom
    load_s          DOUBLE NOT NULL,
    transfer_s      DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS placements (
    run_id          VARCHAR NOT NULL,
    t_s             DOUBLE NOT NULL,
    gpu             INTEGER NOT NULL,
    model           VARCHAR NOT NULL,
    stage           VARCHAR NOT NULL,
    action          VARCHAR NOT NULL,     -- place | evict
    weights_gib     DOUBLE NOT NULL,
    load_s          DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS client_requests (
    run_id            VARCHAR NOT NULL,
    request_index     BIGINT NOT NULL,      -- position in the schedule (= the simulator's request_id)
    server_request_id BIGINT,               -- the engine's request id (NULL: not accepted, or unknown)
    server_job_id     VARCHAR,              -- the API's id (gen-N)
    model             VARCHAR NOT NULL,
    height            INTEGER NOT NULL,
    width             INTEGER NOT NULL,
    frames            INTEGER NOT NULL,
    steps             INTEGER NOT NULL,
    request_class     VARCHAR NOT NULL,     -- 'model WxH' or 'model WxHxF', as requests.request_class
    workload_t_s      DOUBLE NOT NULL,      -- scheduled arrival, workload seconds (the simulator's arrival_s)
    scheduled_s       DOUBLE NOT NULL,      -- scheduled send, wall seconds from the run's start
    sent_s            DOUBLE,               -- actual send (NULL: never sent)
    finished_s        DOUBLE,               -- response received (NULL: none)
    lag_ms            DOUBLE,               -- (sent_s - scheduled_s) x 1000
    state             VARCHAR NOT NULL,     -- done | rejected | failed | cancelled | refused | error | unfinished
    http_status       INTEGER NOT NULL,     -- 0: no HTTP response
    reason            VARCHAR NOT NULL,
    slo_ms            DOUBLE,               -- the objective sent (engine ms)
    latency_ms        DOUBLE,               -- the server's latency (engine ms), done requests
    deadline_ms       DOUBLE,
    met_slo           BOOLEAN,
    client_ms         DOUBLE,               -- (finished_s - sent_s) x 1000, wall
    queued_ms         DOUBLE,               -- the server's per-stage timings, summed over the stage's spans
    encode_ms         DOUBLE,
    diffuse_ms        DOUBLE,
    decode_ms         DOUBLE,
    stages_json       VARCHAR NOT NULL      -- the server's per-stage timings as it returned them
);
CREATE TABLE IF NOT EXISTS gpu_samples (
    run_id          VARCHAR NOT NULL,
    t_s             DOUBLE NOT NULL,
    gpu             INTEGER NOT NULL,
    busy            DOUBLE NOT NULL,
    mem_gib         DOUBLE NOT NULL
);
"""

# A dispatch (one row per dispatch) is the unit of GPU occupancy: a batched dispatch writes one
# span row per request, all with the same dispatch_id, and must be counted once. Its duration is
# the span of its rows (max end - min start), its GPU count the size of its GPU group.
_DDL_VIEWS = """
CREATE OR REPLACE VIEW dispatches AS
SELECT run_id, dispatch_id,
       any_value(stage)                        AS stage,
       count(*)                                AS spans,
       max(ended_s) - min(started_s)           AS duration_s,
       max(len(gpus))                          AS n_gpus,
       max(degree)                             AS degree,
       max(batch)                              AS batch,
       max(predicted_s)                        AS predicted_s,
       max(load_s)                             AS load_s,
       max(transfer_s)                         AS transfer_s
FROM stage_spans
GROUP BY run_id, dispatch_id;

CREATE OR REPLACE VIEW run_summary AS
WITH req AS (
    SELECT run_id,
           count(*)                                            AS requests,
           count(*) FILTER (WHERE state = 'done')              AS done,
           count(*) FILTER (WHERE state = 'rejected')          AS rejected,
           count(*) FILTER (WHERE state = 'failed')            AS failed,
           count(*) FILTER (WHERE state = 'cancelled')         AS cancelled,
           count(*) FILTER (WHERE met_slo)                     AS met,
           avg(latency_s)                                      AS mean_s,
           quantile_cont(latency_s, 0.50)                      AS p50_s,
           quantile_cont(latency_s, 0.95)                      AS p95_s,
           quantile_cont(latency_s, 0.99)                      AS p99_s,
           CAST(sum(ooms) AS BIGINT)                           AS ooms,
           CAST(sum(preemptions) AS BIGINT)                    AS preemptions
    FROM requests
    GROUP BY run_id
), gpu AS (
    SELECT run_id, count(*) AS dispatches, sum(duration_s * n_gpus) AS gpu_s
    FROM dispatches
    GROUP BY run_id
)
SELECT r.run_id, r.policy, r.backend, r.seed, r.mix, r.cluster, r.rate_rps, r.slo_scale,
       r.status, r.created_at,
       coalesce(q.requests, 0)                     AS requests,
       coalesce(q.done, 0)                         AS done,
       coalesce(q.rejected, 0)                     AS rejected,
       coalesce(q.failed, 0)                       AS failed,
       coalesce(q.cancelled, 0)                    AS cancelled,
       coalesce(q.met, 0)                          AS met,
       q.met / nullif(q.requests, 0)               AS attainment,
       q.mean_s, q.p50_s, q.p95_s, q.p99_s,
       coalesce(q.ooms, 0)                         AS ooms,
       coalesce(q.preemptions, 0)                  AS preemptions,
       coalesce(g.dispatches, 0)                   AS dispatches,
       coalesce(g.gpu_s, 0.0)                      AS gpu_s,
       coalesce(g.gpu_s, 0.0) / nullif(q.met, 0)   AS gpu_s_per_met
FROM runs r
LEFT JOIN req q USING (run_id)
LEFT JOIN gpu g USING (run_id);

CREATE OR REPLACE VIEW stage_breakdown AS
WITH s AS (
    SELECT run_id, stage,
           count(*)                                            AS spans,
           avg(started_s - queued_s)                           AS mean_queue_s,
           quantile_cont(started_s - queued_s, 0.95)           AS p95_queue_s,
           count(*) FILTER (WHERE outcome = 'preempted')       AS preempted,
           count(*) FILTER (WHERE outcome = 'failed')          AS failed,
           count(*) FILTER (WHERE outcome = 'oom')             AS oom
    FROM stage_spans
    GROUP BY run_id, stage
), d AS (
    SELECT run_id, stage,
           count(*)                                            AS dispatches,
           avg(duration_s)                                     AS mean_s,
           quantile_cont(duration_s, 0.95)                     AS p95_s,
           avg(batch)                                          AS mean_batch,
           avg(degree)                                         AS mean_degree,
           avg(predicted_s)                                    AS mean_predicted_s,
           sum(duration_s * n_gpus)                            AS gpu_s,
           sum(load_s)                                         AS load_s,
           sum(transfer_s)                                     AS transfer_s
    FROM dispatches
    GROUP BY run_id, stage
)
SELECT s.run_id, s.stage, s.spans, d.dispatches, d.mean_s, d.p95_s, s.mean_queue_s, s.p95_queue_s,
       d.mean_batch, d.mean_degree, d.mean_predicted_s, d.gpu_s, d.load_s, d.transfer_s,
       s.preempted, s.failed, s.oom
FROM s JOIN d USING (run_id, stage);

CREATE OR REPLACE VIEW attainment_by_shape AS
SELECT run_id, request_class,
       any_value(model)                                    AS model,
       any_value(height)                                   AS height,
       any_value(width)                                    AS width,
       any_value(frames)                                   AS frames,
       count(*)                                            AS requests,
       count(*) FILTER (WHERE met_slo)                     AS met,
       count(*) FILTER (WHERE met_slo) / count(*)          AS attainment,
       quantile_cont(latency_s, 0.50)                      AS p50_s,
       quantile_cont(latency_s, 0.95)                      AS p95_s,
       count(*) FILTER (WHERE state = 'rejected')          AS rejected,
       count(*) FILTER (WHERE state = 'failed')            AS failed
FROM requests
GROUP BY run_id, request_class;

CREATE OR REPLACE VIEW client_summary AS
SELECT run_id,
       count(*)                                            AS requests,
       count(*) FILTER (WHERE state = 'done')              AS done,
       count(*) FILTER (WHERE state = 'rejected')          AS rejected,
       count(*) FILTER (WHERE state = 'failed')            AS failed,
       count(*) FILTER (WHERE state = 'refused')           AS refused,
       count(*) FILTER (WHERE state = 'error')             AS errors,
       count(*) FILTER (WHERE state = 'unfinished')        AS unfinished,
       count(*) FILTER (WHERE met_slo)                     AS met,
       quantile_cont(lag_ms, 0.50)                         AS lag_p50_ms,
       quantile_cont(lag_ms, 0.99)                         AS lag_p99_ms,
       max(lag_ms)                                         AS lag_max_ms,
       avg(latency_ms) / 1000                              AS mean_s,
       quantile_cont(latency_ms, 0.99) / 1000              AS p99_s
FROM client_requests
GROUP BY run_id;
"""

# request_class must equal RequestRow.request_class (a test checks it).
_INSERT_REQUESTS = """
INSERT INTO requests
SELECT $run_id, request_id, model, height, width, frames, steps,
       model || ' ' || width || 'x' || height || CASE WHEN frames > 1 THEN 'x' || frames ELSE '' END,
       arrival_s, deadline_s, state, reason, finish_s,
       CASE WHEN state = 'done' THEN finish_s - arrival_s END,
       coalesce(state = 'done' AND finish_s <= deadline_s, false),
       ooms, preemptions
FROM _in_requests
"""

_INSERT_RUN = """
INSERT INTO runs VALUES (
    $run_id, $backend, $policy, $seed, $profile, $cluster, $mix, $rate_rps, $duration_s,
    $slo_scale, $config_json, $git_sha, $packages_json, $hardware_json, $status,
    $created_unix_s, make_timestamp(CAST(round($created_unix_s * 1e6) AS BIGINT)), $wall_s
)
"""


def _create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create tables and views if missing; refuse a database of another schema version."""
    con.execute(_DDL_TABLES)
    found = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    if found is None:
        con.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)", [SCHEMA_VERSION])
    elif found != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema version {found}, this code writes version {SCHEMA_VERSION}; "
            "write to a new file or migrate the old one"
        )
    con.execute(_DDL_VIEWS)


# --------------------------------------------------------------------------------------------
# Records -> Arrow, column-wise
# --------------------------------------------------------------------------------------------


def _columns(rows: Sequence[Any], fields: Sequence[str]) -> list[list[Any]]:
    """One list per field (``map(attrgetter)`` per column: no per-row dicts or tuples)."""
    return [list(map(attrgetter(name), rows)) for name in fields]


def _to_arrow(rows: Sequence[Any], schema: list[tuple[str, Any]]) -> pyarrow.Table:
    import pyarrow as pa

    names = [name for name, _ in schema]
    cols = _columns(rows, names)
    arrays = [pa.array(col, type=typ) for col, (_, typ) in zip(cols, schema, strict=True)]
    return pa.Table.from_arrays(arrays, names=names)


def _arrow_schemas() -> dict[str, list[tuple[str, Any]]]:
    import pyarrow as pa

    i32, i64, f64, s = pa.int32(), pa.int64(), pa.float64(), pa.string()
    return {
        "requests": [
            ("request_id", i64), ("model", s), ("height", i32), ("width", i32), ("frames", i32),
            ("steps", i32), ("arrival_s", f64), ("deadline_s", f64), ("state", s), ("reason", s),
            ("finish_s", f64), ("ooms", i32), ("preemptions", i32),
        ],
        "stage_spans": [
            ("dispatch_id", i64), ("request_id", i64), ("stage", s), ("gpus", pa.list_(i32)),
            ("degree", i32), ("batch", i32), ("queued_s", f64), ("started_s", f64),
            ("ended_s", f64), ("predicted_s", f64), ("start_step", i32), ("end_step", i32),
            ("outcome", s), ("load_s", f64), ("transfer_s", f64),
        ],
        "placements": [
            ("t_s", f64), ("gpu", i32), ("model", s), ("stage", s), ("action", s),
            ("weights_gib", f64), ("load_s", f64),
        ],
        "gpu_samples": [("t_s", f64), ("gpu", i32), ("busy", f64), ("mem_gib", f64)],
        "client_requests": [
            ("request_index", i64), ("server_request_id", i64), ("server_job_id", s), ("model", s),
            ("height", i32), ("width", i32), ("frames", i32), ("steps", i32), ("request_class", s),
            ("workload_t_s", f64), ("scheduled_s", f64), ("sent_s", f64), ("finished_s", f64), ("lag_ms", f64),
            ("state", s), ("http_status", i32), ("reason", s), ("slo_ms", f64), ("latency_ms", f64),
            ("deadline_ms", f64), ("met_slo", pa.bool_()), ("client_ms", f64), ("queued_ms", f64),
            ("encode_ms", f64), ("diffuse_ms", f64), ("decode_ms", f64), ("stages_json", s),
        ],
    }  # fmt: skip


def client_requests_table(rows: Any) -> pyarrow.Table:
    """Client rows (a list of dicts, a pandas DataFrame or an Arrow table; no ``run_id``) as an
    Arrow table of the ``client_requests`` columns, checked: every request index once, every state
    one of :data:`CLIENT_STATES`. Missing optional columns are NULL."""
    import pyarrow as pa

    schema = pa.schema(_arrow_schemas()["client_requests"])
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
        raise ValueError(f"client rows: unknown column(s) {', '.join(unknown)}; valid: {', '.join(schema.names)}")
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    table = pa.Table.from_arrays(columns, schema=schema)
    problems = []
    for name in ("request_index", "model", "height", "width", "frames", "steps", "request_class",
                 "workload_t_s", "scheduled_s", "state", "http_status", "reason", "stages_json"):
        if table.column(name).null_count:
            problems.append(f"{name}: {table.column(name).null_count} NULL value(s)")
    index = table.column("request_index").to_pylist()
    if len(set(index)) != len(index):
        problems.append("request_index: the same request appears more than once")
    states = set(table.column("state").to_pylist()) - set(CLIENT_STATES) - {None}
    if states:
        problems.append(f"state: unknown {', '.join(sorted(map(str, states)))}; valid: {', '.join(CLIENT_STATES)}")
    if problems:
        raise ValueError("client rows: " + "; ".join(problems))
    return table


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------


def _is_lock_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def _connect(
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


def _fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pyarrow.Table:
    """A query's result as an Arrow table (``to_arrow_table`` in duckdb 2, ``arrow`` before)."""
    rel = con.sql(sql, params=params)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


class ResultsStore:
    """Writes runs to one DuckDB file. Each call opens a read-write connection and closes it."""

    def __init__(self, path: str | os.PathLike[str], *, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.path = Path(path)
        self.lock_wait_s = lock_wait_s

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
        schemas = _arrow_schemas()
        tables = {
            "requests": _to_arrow(_as_sequence(requests), schemas["requests"]),
            "stage_spans": _to_arrow(_as_sequence(spans), schemas["stage_spans"]),
            "placements": _to_arrow(_as_sequence(placements), schemas["placements"]),
            "gpu_samples": _to_arrow(_as_sequence(gpu_samples), schemas["gpu_samples"]),
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
        if meta.status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {meta.status!r}; valid: {', '.join(RUN_STATUSES)}")
        unknown = sorted(set(tables) - set(TABLES[1:]) - set(CLIENT_TABLES))
        if unknown:
            raise ValueError(f"unknown table(s) {', '.join(unknown)}; valid: {', '.join(TABLES[1:] + CLIENT_TABLES)}")
        tables = dict(tables)
        if "client_requests" in tables:
            tables["client_requests"] = client_requests_table(tables["client_requests"])
        run_params = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)}
        if not run_params["created_unix_s"]:
            run_params["created_unix_s"] = time.time()

        with self._transaction() as con:
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [meta.run_id]).fetchall():
                raise DuplicateRunError(f"run {meta.run_id!r} is already in {self.path}")
            con.execute(_INSERT_RUN, run_params)
            for name, table in tables.items():
                _insert_rows(con, name, table, meta.run_id)
        return meta.run_id

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection held only for one transaction (schema ensured): committed when the
        block ends, rolled back (and the connection closed) when it raises."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = _connect(self.path, read_only=False, wait_s=self.lock_wait_s)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                _create_schema(con)
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

    def write_client_requests(self, run_id: str, rows: Any) -> int:
        """Add a run's client rows (``client_requests``; a list of dicts, a DataFrame or an Arrow
        table) in one short transaction; return how many. The run need not be in ``runs`` (a
        stand-alone Locust run writes only what the client saw); refuses (``DuplicateRunError``)
        a run_id that already has client rows."""
        table = client_requests_table(rows)
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM client_requests WHERE run_id = ? LIMIT 1", [run_id]).fetchall():
                raise DuplicateRunError(f"run {run_id!r} already has client rows in {self.path}")
            _insert_rows(con, "client_requests", table, run_id)
        return table.num_rows

    def mark_status(self, run_id: str, status: str) -> None:
        """Set a stored run's status (complete | interrupted | failed)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; valid: {', '.join(RUN_STATUSES)}")
        if not self.path.exists():
            raise UnknownRunError(f"run {run_id!r}: no results database at {self.path}")
        con = _connect(self.path, read_only=False, wait_s=self.lock_wait_s)
        try:
            found = con.execute(
                "UPDATE runs SET status = ? WHERE run_id = ? RETURNING run_id", [status, run_id]
            ).fetchall()
        finally:
            con.close()
        if not found:
            raise UnknownRunError(f"run {run_id!r} is not in {self.path}")


def _insert_rows(con: duckdb.DuckDBPyConnection, name: str, table: pyarrow.Table, run_id: str) -> None:
    view = f"_in_{name}"
    con.register(view, table)
    try:
        if name == "requests":
            con.execute(_INSERT_REQUESTS, {"run_id": run_id})
        else:
            cols = ", ".join(table.column_names)
            con.execute(f"INSERT INTO {name} (run_id, {cols}) SELECT $run_id, {cols} FROM {view}", {"run_id": run_id})
    finally:
        con.unregister(view)


def _as_sequence(rows: Sequence[Any] | Iterable[Any]) -> Sequence[Any]:
    return rows if isinstance(rows, (list, tuple)) else list(rows)


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


# --------------------------------------------------------------------------------------------
# Readers (read-only connections)
# --------------------------------------------------------------------------------------------


def open_readonly(path: str | os.PathLike[str], *, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a results database (the caller closes it)."""
    return _connect(path, read_only=True, wait_s=wait_s)


def query_readonly(
    path: str | os.PathLike[str],
    sql: str,
    params: Sequence[Any] | dict[str, Any] | None = None,
    *,
    timeout_s: float | None = 30.0,
    memory_limit: str = "2GB",
    wait_s: float = LOCK_WAIT_S,
) -> pandas.DataFrame:
    """Run untrusted SQL against a results database and return the last statement's result.

    The connection is read-only, file system access is off (no ``COPY … TO``, ``read_csv``,
    ``ATTACH``, extension installs) and the configuration is locked so the SQL cannot turn it back
    on. The query is interrupted after ``timeout_s``.
    """
    import threading

    config = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "memory_limit": memory_limit,
        "lock_configuration": True,
    }
    con = _connect(path, read_only=True, config=config, wait_s=wait_s)
    timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
    try:
        if timer:
            timer.start()
        return con.execute(sql, params).df()
    finally:
        if timer:
            timer.cancel()
        con.close()


def list_runs(path: str | os.PathLike[str]) -> pandas.DataFrame:
    """Stored runs, oldest first, with their request counts."""
    con = open_readonly(path)
    try:
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
    """Write one run's rows to ``out_dir/<table>.parquet`` (one file per table); return the paths.

    Reads through a read-only connection and writes with pyarrow, so it works where the SQL
    engine's own file access is switched off.
    """
    import pyarrow.parquet as pq

    out = Path(out_dir)
    con = open_readonly(path)
    try:
        if not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
            raise UnknownRunError(f"run {run_id!r} is not in {path}")
        tables = {
            name: _fetch_arrow(con, f"SELECT * FROM {name} WHERE run_id = ?", [run_id])
            for name in TABLES
        }
    finally:
        con.close()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, table in tables.items():
        target = out / f"{name}.parquet"
        pq.write_table(table, target)
        written[name] = target
    return written


def read_run_tables(path: str | os.PathLike[str], run_id: str) -> tuple[RunMeta, dict[str, pyarrow.Table]]:
    """One run's ``runs`` row and its rows, in the input form of :meth:`ResultsStore.write_run_tables`
    (no ``run_id`` columns; ``requests`` without its derived columns). Read-only."""
    import pyarrow as pa

    schemas = _arrow_schemas()
    con = open_readonly(path)
    try:
        found = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).fetchall()
        if not found:
            raise UnknownRunError(f"run {run_id!r} is not in {path}")
        names = [d[0] for d in con.description]
        row = dict(zip(names, found[0], strict=True))
        meta = RunMeta(**{f.name: row[f.name] for f in dataclasses.fields(RunMeta)})
        has_client = bool(con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'client_requests'").fetchall())
        tables = {}
        for name in (*TABLES[1:], *(CLIENT_TABLES if has_client else ())):
            cols = ", ".join(n for n, _ in schemas[name])
            table = _fetch_arrow(con, f"SELECT {cols} FROM {name} WHERE run_id = ?", [run_id])
            tables[name] = table.cast(pa.schema(schemas[name]))
    finally:
        con.close()
    return meta, tables
