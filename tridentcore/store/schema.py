"""The results store's schema: tables derived from the row types, SQL views, Arrow schemas.

Each table's columns come from its row type in :mod:`tridentcore.core.records` (field name, SQL
type from the field's metadata, NULL-ability), preceded by ``run_id`` (``runs``: the row's own
``run_id``, the primary key), plus a few **derived** columns computed at insert time from the
row's own columns (:data:`DERIVED`): ``runs.created_at``, ``requests.request_class``,
``requests.latency_s`` and ``requests.met_slo``. The derived SQL is generated from the core
definitions (:func:`~tridentcore.core.types.class_label`, :func:`~tridentcore.core.slo.met_slo`
and its tolerance) and ``tests/test_metrics.py`` checks it against them row by row.

The views (``dispatches``, ``run_summary``, ``stage_breakdown``, ``attainment_by_shape``,
``client_summary``) are the primary definition of the run metrics (``docs/metrics.md``).

``pyarrow`` is imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tridentcore.core.records import ROW_TYPES
from tridentcore.core.slo import DONE, SLO_TOLERANCE_S
from tridentcore.core.types import STAGES

from .errors import SchemaVersionError

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pyarrow

__all__ = [
    "CLIENT_STATES",
    "CLIENT_TABLES",
    "DERIVED",
    "RUN_STATUSES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STAGE_ORDER_SQL",
    "TABLES",
    "VIEWS",
    "Column",
    "SchemaVersionError",
    "arrow_schema",
    "check_version",
    "create_schema",
    "ddl",
    "insert_sql",
    "input_columns",
    "table_columns",
]

SCHEMA_VERSION = 4
# what brings a database of an older version to the next one (applied in order by a writer)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE stage_spans ADD COLUMN compute_s DOUBLE",),  # the worker's own compute time
    2: (),  # adds journal_ingests (created, if missing, with the other tables)
    3: ("ALTER TABLE requests ADD COLUMN job_id VARCHAR",),  # a live request's generation (the API's gen-...)
}
TABLES = ("runs", "requests", "stage_spans", "placements", "gpu_samples")
VIEWS = ("run_summary", "stage_breakdown", "attainment_by_shape")
# complete: written whole, in one transaction, after the run (simulator, live bench);
# a server's run (``trident serve --db``), written as it goes: running, then done (every request
# ended before the drain ran out), interrupted (the shutdown failed requests still running) or
# crashed (the process died; recovered from its journal); failed: the run itself failed
RUN_STATUSES = ("complete", "interrupted", "failed", "running", "done", "crashed")
CLIENT_TABLES = ("client_requests",)
# how a scheduled request ended as the client saw it (exactly one per row):
CLIENT_STATES = ("done", "rejected", "failed", "cancelled", "refused", "error", "unfinished")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a stored table. ``expr``: SQL over the input row's columns for a derived
    column (None: the input column of that name)."""

    name: str
    sql: str
    nullable: bool = False
    comment: str = ""
    expr: str | None = None
    after: str = ""  # derived columns: the column they follow in the table


# The SQL forms of the core definitions (checked against them in tests/test_metrics.py):
# class_label(model, shape): 'model WxH' or 'model WxHxF'
CLASS_LABEL_SQL = "model || ' ' || width || 'x' || height || CASE WHEN frames > 1 THEN 'x' || frames ELSE '' END"
# met_slo(state, finish_s, deadline_s): done, and finished by the deadline up to SLO_TOLERANCE_S
MET_SLO_SQL = f"coalesce(state = '{DONE}' AND finish_s <= deadline_s + {SLO_TOLERANCE_S!r}, false)"
LATENCY_SQL = f"CASE WHEN state = '{DONE}' THEN finish_s - arrival_s END"
# ORDER BY key putting a ``stage`` column in pipeline order (encode, diffuse, decode, then others)
STAGE_ORDER_SQL = ("CASE stage " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES, 1))
                   + f" ELSE {len(STAGES) + 1} END")

# table -> columns computed at insert time from the row's own columns
DERIVED: dict[str, tuple[Column, ...]] = {
    "runs": (
        Column("created_at", "TIMESTAMP", comment="UTC, from created_unix_s",
               expr="make_timestamp(CAST(round(created_unix_s * 1e6) AS BIGINT))", after="created_unix_s"),
    ),
    "requests": (
        Column("request_class", "VARCHAR", comment="class_label(): 'model WxH' or 'model WxHxF'",
               expr=CLASS_LABEL_SQL, after="steps"),
        Column("latency_s", "DOUBLE", nullable=True, comment="finish_s - arrival_s, only when state = 'done'",
               expr=LATENCY_SQL, after="finish_s"),
        Column("met_slo", "BOOLEAN", comment="core.slo.met_slo(state, finish_s, deadline_s)",
               expr=MET_SLO_SQL, after="latency_s"),
    ),
}

_ARROW = {  # SQL type -> pyarrow type factory name
    "VARCHAR": "string", "BIGINT": "int64", "INTEGER": "int32", "DOUBLE": "float64", "BOOLEAN": "bool_",
}  # fmt: skip


def input_columns(table: str) -> tuple[Column, ...]:
    """The columns a writer supplies for ``table``: its row type's fields, in order (no ``run_id``
    except in ``runs``, whose rows carry it)."""
    row_type = ROW_TYPES[table]
    return tuple(
        Column(f.name, f.metadata["sql"], f.metadata["nullable"], f.metadata["comment"])
        for f in dataclasses.fields(row_type)
    )


def table_columns(table: str) -> tuple[Column, ...]:
    """Every column of the stored table, in table order: ``run_id``, the input columns, and the
    derived columns each after the column it follows."""
    cols = list(input_columns(table))
    if table != "runs":
        cols.insert(0, Column("run_id", "VARCHAR"))
    for derived in DERIVED.get(table, ()):
        at = next(i for i, c in enumerate(cols) if c.name == derived.after)
        cols.insert(at + 1, derived)
    return tuple(cols)


def ddl(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for one table, from its columns."""
    lines = []
    for c in table_columns(table):
        constraint = " PRIMARY KEY" if (table == "runs" and c.name == "run_id") else ("" if c.nullable else " NOT NULL")
        comment = f"  -- {c.comment}" if c.comment else ""
        lines.append((f"    {c.name:<18}{c.sql}{constraint}", comment))
    out = []  # a comment goes after its line's comma
    for i, (text, comment) in enumerate(lines):
        out.append(text + ("," if i < len(lines) - 1 else "") + comment)
    body = "\n".join(out)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n{body}\n);"


def insert_sql(table: str, view: str, present: tuple[str, ...] | list[str]) -> str:
    """``INSERT`` of the rows registered as ``view`` (input columns ``present``) into ``table``,
    with ``$run_id`` for the key (not for ``runs``) and the derived columns computed."""
    names, values = [], []
    for c in table_columns(table):
        if c.expr is not None:
            names.append(c.name)
            values.append(c.expr)
        elif c.name == "run_id" and table != "runs":
            names.append("run_id")
            values.append("$run_id")
        elif c.name in present:
            names.append(c.name)
            values.append(c.name)
    return f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} FROM {view}"


def arrow_schema(table: str) -> pyarrow.Schema:
    """The Arrow schema of ``table``'s input columns (what writers hand the store)."""
    import pyarrow as pa

    fields = []
    for c in input_columns(table):
        if c.sql == "INTEGER[]":
            typ = pa.list_(pa.int32())
        else:
            typ = getattr(pa, _ARROW[c.sql])()
        fields.append(pa.field(c.name, typ))
    return pa.schema(fields)


_DDL_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version        INTEGER NOT NULL,
    applied_at     TIMESTAMP NOT NULL
);
"""

# A server's journal (``tridentcore.store.journal``) is ingested in transactions; each one also
# records the last journal line it holds, so a retried or recovered ingest never adds a row twice.
_DDL_JOURNAL = """
CREATE TABLE IF NOT EXISTS journal_ingests (
    run_id         VARCHAR NOT NULL,
    seq            BIGINT NOT NULL,     -- the last journal line this transaction ingested
    rows           BIGINT NOT NULL,     -- rows it inserted
    ingested_at    TIMESTAMP NOT NULL
);
"""

# A dispatch (one row per dispatch) is the unit of GPU occupancy: a batched dispatch writes one
# span row per request, all with the same dispatch_id, and must be counted once. Its duration is
# the span of its rows (max end - min start), its GPU count the size of its GPU group, its outcome
# that of its rows (core.recording.span_rows writes one outcome for all the rows of a dispatch).
# A dispatch of batch 1 (most of them) is its one row (span_rows writes a row per request of the
# batch): only batched ones are grouped. Grouping every row by dispatch ran out of the SQL
# console's 1 GB at 7.7 million span rows (outside test: 235 runs, 2.3 million requests).
_DDL_VIEWS = """
CREATE OR REPLACE VIEW dispatches AS
SELECT run_id, dispatch_id, stage,
       CAST(1 AS BIGINT)                       AS spans,
       ended_s - started_s                     AS duration_s,
       CAST(len(gpus) AS BIGINT)               AS n_gpus,
       degree, batch, predicted_s, load_s, transfer_s, outcome
FROM stage_spans
WHERE batch = 1
UNION ALL
SELECT run_id, dispatch_id,
       any_value(stage)                        AS stage,
       count(*)                                AS spans,
       max(ended_s) - min(started_s)           AS duration_s,
       max(len(gpus))                          AS n_gpus,
       max(degree)                             AS degree,
       max(batch)                              AS batch,
       max(predicted_s)                        AS predicted_s,
       max(load_s)                             AS load_s,
       max(transfer_s)                         AS transfer_s,
       any_value(outcome)                      AS outcome
FROM stage_spans
WHERE batch IS DISTINCT FROM 1
GROUP BY run_id, dispatch_id;

CREATE OR REPLACE VIEW run_summary AS
WITH req AS (
    SELECT run_id,
           count(*)                                            AS requests,
           count(*) FILTER (WHERE state = 'done')              AS done,
           count(*) FILTER (WHERE state = 'rejected')          AS rejected,
           count(*) FILTER (WHERE state = 'failed')            AS failed,
           count(*) FILTER (WHERE state = 'cancelled')         AS cancelled,
           count(*) FILTER (WHERE state = 'unfinished')        AS unfinished,
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
       coalesce(q.unfinished, 0)                   AS unfinished,
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
LEFT JOIN gpu g USING (run_id)
ORDER BY r.created_unix_s, r.run_id;

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
       quantile_cont(latency_ms, 0.99) / 1000              AS p99_s,
       count(*) FILTER (WHERE state = 'cancelled')         AS cancelled
FROM client_requests
GROUP BY run_id;
"""

# table creation order as in the original hand-written DDL (client_requests before gpu_samples)
_CREATE_ORDER = ("runs", "requests", "stage_spans", "placements", "client_requests", "gpu_samples")


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create tables and views if missing; bring an older database up to this version (its
    :data:`MIGRATIONS`); refuse a newer one, and a database whose tables are another program's."""
    foreign = foreign_tables(con)
    if foreign:
        raise ForeignSchemaError(foreign)
    others = _tables_without_version(con)
    if others:  # outside test: `--db` naming an analytics database got our 8 tables beside its own
        raise ForeignSchemaError(others, ours=False)
    con.execute(_DDL_VERSION)
    found = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    if found is not None and _migrates(found):
        for v in range(found, SCHEMA_VERSION):
            for sql in MIGRATIONS[v]:
                con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)", [SCHEMA_VERSION])
        found = SCHEMA_VERSION
    con.execute("\n".join(ddl(t) for t in _CREATE_ORDER))
    con.execute(_DDL_JOURNAL)
    if found is None:
        con.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)", [SCHEMA_VERSION])
    elif found != SCHEMA_VERSION:
        raise _version_error(found)
    con.execute(_DDL_VIEWS)


def check_version(con: duckdb.DuckDBPyConnection) -> None:
    """``SchemaVersionError`` where a writer of this code would refuse the database (a newer schema, or
    an older one with no migration), ``ForeignSchemaError`` for another program's, asked read-only: a
    server asks before it serves, not at its end."""
    if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'schema_version'").fetchall():
        others = _tables_without_version(con)
        if others:  # another program's database: a writer refuses it (ForeignSchemaError)
            raise ForeignSchemaError(others, ours=False)
        return
    found = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    if found is None or found == SCHEMA_VERSION:
        return
    if not _migrates(found):
        raise _version_error(found)


def _migrates(found: int) -> bool:
    """Whether :data:`MIGRATIONS` bring a database of version ``found`` (older) up to this code's."""
    return found < SCHEMA_VERSION and all(v in MIGRATIONS for v in range(found, SCHEMA_VERSION))


def _version_error(found: int) -> SchemaVersionError:
    return SchemaVersionError(f"database schema version {found}, this code writes version {SCHEMA_VERSION}; "
                              "write to a new file or migrate the old one")


class ForeignSchemaError(ValueError):
    """A DuckDB database with tables named as ours but no ``schema_version``: another program's,
    never written into (the message says which tables); for a writer, any table at all."""

    def __init__(self, tables: list[str], ours: bool = True) -> None:
        self.tables = tables
        listed = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
        if ours:
            super().__init__(f"not a TridentServe results database: it has a table named {listed} but no "
                             "schema_version table (another program's database?)")
        else:
            super().__init__(f"not a TridentServe results database: it holds {listed} and no schema_version table "
                             "(another program's database?); not written into: give a new file or an empty one")


def foreign_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Our table names that ``con``'s database holds without our ``schema_version`` (empty: ours, or empty)."""
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                       "WHERE table_schema = 'main'").fetchall()}
    if "schema_version" in names:
        return []
    return sorted(names & {*TABLES, *CLIENT_TABLES, "run_summary"})


def _tables_without_version(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every table and view of ``con``'s database (any schema) when it has no ``schema_version`` (empty:
    ours, or empty)."""
    names = sorted(f"{r[1]}" if r[0] == "main" else f"{r[0]}.{r[1]}" for r in con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_catalog = current_database()").fetchall())
    return [] if "schema_version" in names else names


def views_sql() -> str:
    """The views' SQL (for documentation and tests)."""
    return _DDL_VIEWS
