"""Results store: schema, one-transaction writes, the SQL views against hand-computed answers,
read-only readers (in other processes too), untrusted-SQL limits, Parquet export and speed."""

from __future__ import annotations

import json
from dataclasses import replace
import math
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

duckdb = pytest.importorskip("duckdb")
pq = pytest.importorskip("pyarrow.parquet")

from tridentcore.core.records import GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow  # noqa: E402
from tridentcore.store import (  # noqa: E402
    SCHEMA_VERSION,
    TABLES,
    DuplicateRunError,
    ResultsStore,
    SchemaVersionError,
    UnknownRunError,
    export_run,
    list_runs,
    new_run_id,
    next_run_number,
    open_readonly,
    query_readonly,
    query_readonly_capped,
    run_summary,
)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "results" / "README.md"


# ---------------------------------------------------------------------------------------------
# Factories: two small runs with answers worked out by hand (see the comments)
# ---------------------------------------------------------------------------------------------


def meta(run_id: str, policy: str, created: float, **kw) -> RunMeta:
    fields = dict(
        run_id=run_id, backend="sim", policy=policy, seed=7, profile="h200", cluster="1x8xH200",
        mix="mixed", rate_rps=2.0, duration_s=60.0, slo_scale=3.0, config_json='{"k": 1}',
        git_sha="abc123", created_unix_s=created, wall_s=1.5,
    )  # fmt: skip
    fields.update(kw)
    return RunMeta(**fields)


def req(i, model, h, w, f, arrival, deadline, state, finish, *, ooms=0, reason="", preemptions=0) -> RequestRow:
    return RequestRow(i, model, h, w, f, 28, arrival, deadline, state, reason, finish, ooms, preemptions)


def span(d, r, stage, gpus, batch, queued, started, ended, outcome="done") -> SpanRow:
    return SpanRow(d, r, stage, tuple(gpus), len(gpus), batch, queued, started, ended, ended - started,
                   outcome=outcome)  # fmt: skip


# Run A: done latencies 4, 6, 12, 20 (r2 late, r3 on time); r4 rejected, r5 failed before its deadline.
RUN_A_REQUESTS = [
    req(0, "flux", 1024, 1024, 1, 0.0, 10.0, "done", 4.0),  # 4, met
    req(1, "flux", 1024, 1024, 1, 1.0, 11.0, "done", 7.0),  # 6, met
    req(2, "flux", 1024, 1024, 1, 2.0, 12.0, "done", 14.0),  # 12, late
    req(3, "wan", 480, 832, 81, 3.0, 30.0, "done", 23.0, ooms=1, preemptions=1),  # 20, met
    req(4, "wan", 480, 832, 81, 4.0, 34.0, "rejected", 4.0, reason="no capacity"),
    req(5, "wan", 480, 832, 81, 5.0, 35.0, "failed", 9.0, ooms=1, reason="oom"),  # failed: never met
]
# Dispatch → GPU-seconds (duration × GPUs, once per dispatch): 1 + 4 + 16 + 1 + 20 + 36 = 78.
RUN_A_SPANS = [
    span(1, 0, "encode", [0], 3, 0.0, 2.0, 3.0),  # batch of 3: waits 2, 1, 0
    span(1, 1, "encode", [0], 3, 1.0, 2.0, 3.0),
    span(1, 2, "encode", [0], 3, 2.0, 2.0, 3.0),
    span(2, 0, "diffuse", [0, 1], 2, 3.0, 3.0, 5.0),  # batch of 2: 2 s × 2 GPUs
    span(2, 1, "diffuse", [0, 1], 2, 3.0, 3.0, 5.0),
    span(3, 2, "diffuse", [0, 1, 2, 3], 1, 3.0, 6.0, 10.0),  # 4 s × 4 GPUs, waited 3
    span(4, 0, "decode", [2], 1, 5.0, 5.0, 6.0),
    span(5, 3, "diffuse", [4, 5, 6, 7], 1, 4.0, 5.0, 10.0, outcome="preempted"),  # 5 s × 4, waited 1
    span(6, 3, "diffuse", [4, 5, 6, 7], 1, 10.0, 11.0, 20.0),  # 9 s × 4, waited 1
]
RUN_A_PLACEMENTS = [
    PlacementRow(0.0, 0, "flux", "encode", "place", 9.5, 2.0),
    PlacementRow(0.0, 0, "flux", "diffuse", "place", 22.0, 4.0),
    PlacementRow(30.0, 0, "flux", "encode", "evict", 9.5),
]
RUN_A_SAMPLES = [GpuSample(float(t), g, 0.5 + 0.1 * g, 30.0 + g) for t in range(3) for g in range(4)]

# Run B: four on-time requests, latencies 1..4; one batch-4 diffuse dispatch on 2 GPUs for 2 s.
RUN_B_REQUESTS = [req(i, "flux", 512, 512, 1, float(i), i + 10.0, "done", i + 1.0 + i) for i in range(4)]
RUN_B_SPANS = [span(9, i, "diffuse", [0, 1], 4, float(i), 4.0, 6.0) for i in range(4)]
RUN_B_PLACEMENTS = [PlacementRow(0.0, g, "flux", "diffuse", "place", 22.0, 4.0) for g in range(2)]
RUN_B_SAMPLES = [GpuSample(float(t), g, 0.9, 40.0) for t in range(2) for g in range(2)]


def write_both(path: Path) -> ResultsStore:
    store = ResultsStore(path)
    store.write_run(meta("run-a", "pipeline-static:degree=2", 1000.0), RUN_A_REQUESTS, RUN_A_SPANS,
                    RUN_A_PLACEMENTS, RUN_A_SAMPLES)  # fmt: skip
    store.write_run(meta("run-b", "trident", 2000.0, seed=8), RUN_B_REQUESTS, RUN_B_SPANS, RUN_B_PLACEMENTS,
                    RUN_B_SAMPLES)  # fmt: skip
    return store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "results.duckdb"
    write_both(path)
    return path


def counts(path: Path, run_id: str) -> dict[str, int]:
    con = open_readonly(path)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0] for t in TABLES}
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# Schema and views
# ---------------------------------------------------------------------------------------------


def test_constructor_has_no_side_effects(tmp_path: Path):
    ResultsStore(tmp_path / "sub" / "r.duckdb")
    assert not (tmp_path / "sub").exists()


def test_tables_hold_every_row_and_computed_columns(db: Path):
    assert counts(db, "run-a") == {"runs": 1, "requests": 6, "stage_spans": 9, "placements": 3, "gpu_samples": 12}
    con = open_readonly(db)
    try:
        rows = con.execute(
            "SELECT request_id, request_class, latency_s, met_slo FROM requests WHERE run_id = 'run-a' ORDER BY 1"
        ).fetchall()
        gpus = con.execute("SELECT gpus FROM stage_spans WHERE run_id = 'run-a' AND dispatch_id = 3").fetchone()[0]
        created, version = con.execute(
            "SELECT created_at, (SELECT max(version) FROM schema_version) FROM runs WHERE run_id = 'run-a'"
        ).fetchone()
        types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'stage_spans'").fetchall())
    finally:
        con.close()
    assert [r[1] for r in rows] == [r.request_class for r in RUN_A_REQUESTS]
    assert [r[1] for r in rows][3] == "wan 832x480x81"
    assert [r[2] for r in rows] == [4.0, 6.0, 12.0, 20.0, None, None]
    assert [r[3] for r in rows] == [True, True, False, True, False, False]
    assert gpus == [0, 1, 2, 3] and types["gpus"] == "INTEGER[]"
    assert created.year == 1970 and created.second == 1000 % 60  # 1000 s after the epoch, UTC
    assert version == SCHEMA_VERSION


def test_run_summary_known_answers(db: Path):
    df = run_summary(db).set_index("run_id")
    assert list(df.index) == ["run-a", "run-b"]  # oldest first
    a = df.loc["run-a"]
    assert (a.policy, a.backend) == ("pipeline-static:degree=2", "sim")
    assert (a.requests, a.done, a.rejected, a.failed, a.met, a.ooms) == (6, 4, 1, 1, 3, 2)
    assert a.attainment == pytest.approx(0.5)
    assert a.mean_s == pytest.approx(10.5)
    assert a.p50_s == pytest.approx(9.0)  # between 6 and 12
    assert a.p95_s == pytest.approx(12 + 0.85 * 8)  # quantile_cont over [4, 6, 12, 20]
    assert a.p99_s == pytest.approx(12 + 0.97 * 8)
    assert a.dispatches == 6
    assert a.gpu_s == pytest.approx(78.0)  # batched dispatches counted once (per-row sum would be 84)
    assert a.gpu_s_per_met == pytest.approx(26.0)

    b = df.loc["run-b"]
    assert (b.requests, b.met, b.attainment, b.ooms) == (4, 4, 1.0, 0)
    assert b.p50_s == pytest.approx(2.5)
    assert b.gpu_s == pytest.approx(4.0)  # one batch-4 dispatch: 2 s × 2 GPUs, not × 4 rows
    assert b.gpu_s_per_met == pytest.approx(1.0)

    only_b = run_summary(db, ["run-b"])
    assert list(only_b.run_id) == ["run-b"]
    assert run_summary(db, []).empty


def test_stage_breakdown_known_answers(db: Path):
    df = query_readonly(db, "SELECT * FROM stage_breakdown WHERE run_id = 'run-a'").set_index("stage")
    enc, dif, dec = df.loc["encode"], df.loc["diffuse"], df.loc["decode"]
    assert (enc.spans, enc.dispatches, enc.mean_batch, enc.mean_degree) == (3, 1, 3.0, 1.0)
    assert enc.mean_queue_s == pytest.approx(1.0)  # waits 2, 1, 0
    assert enc.mean_s == pytest.approx(1.0) and enc.gpu_s == pytest.approx(1.0)
    assert (dif.spans, dif.dispatches, dif.preempted) == (5, 4, 1)
    assert dif.mean_s == pytest.approx(5.0)  # dispatch durations 2, 4, 5, 9
    assert dif.p95_s == pytest.approx(5 + 0.85 * 4)
    assert dif.mean_queue_s == pytest.approx(1.0)  # per span: 0, 0, 3, 1, 1
    assert dif.mean_batch == pytest.approx(1.25)  # per dispatch: 2, 1, 1, 1
    assert dif.mean_degree == pytest.approx(3.5)  # 2, 4, 4, 4
    assert dif.gpu_s == pytest.approx(76.0)
    assert (dec.spans, dec.dispatches, dec.mean_queue_s, dec.preempted) == (1, 1, 0.0, 0)
    assert df.gpu_s.sum() == pytest.approx(78.0)


def test_attainment_by_shape_known_answers(db: Path):
    df = query_readonly(db, "SELECT * FROM attainment_by_shape WHERE run_id = 'run-a'").set_index("request_class")
    flux, wan = df.loc["flux 1024x1024"], df.loc["wan 832x480x81"]
    assert (flux.requests, flux.met, flux.rejected) == (3, 2, 0)
    assert flux.attainment == pytest.approx(2 / 3)
    assert flux.p50_s == pytest.approx(6.0) and flux.p95_s == pytest.approx(6 + 0.9 * 6)
    assert (wan.requests, wan.met, wan.rejected, wan.failed, wan.frames) == (3, 1, 1, 1, 81)
    assert wan.attainment == pytest.approx(1 / 3)
    assert wan.p50_s == pytest.approx(20.0)  # only one done request


def test_dispatches_view_one_row_per_dispatch_with_its_outcome(db: Path):
    """The columns in their order (outcome last), and run A's six dispatches: the preempted diffuse
    (dispatch 5) is the one whose outcome is not done, so a query can leave it out."""
    df = query_readonly(db, "SELECT * FROM dispatches WHERE run_id = 'run-a' ORDER BY dispatch_id")
    assert list(df.columns) == ["run_id", "dispatch_id", "stage", "spans", "duration_s", "n_gpus", "degree", "batch",
                                "predicted_s", "load_s", "transfer_s", "outcome"]
    assert list(df.dispatch_id) == [1, 2, 3, 4, 5, 6]
    assert list(df.spans) == [3, 2, 1, 1, 1, 1]
    assert list(df.outcome) == ["done", "done", "done", "done", "preempted", "done"]


def test_run_summary_of_a_million_dispatches_fits_a_small_memory_limit(tmp_path: Path):
    """The views group span rows by dispatch only where a dispatch is batched (one row per request):
    grouping every row ran out of the SQL console's 1 GB at 7.7 million span rows, so the workbench's
    SQL page failed on the query it opens with (outside test: 235 runs, 2.3 million requests). Here
    a million batch-1 dispatches under 64 MB and 16 MB of spill (the old view: out of memory)."""
    import numpy as np
    import pyarrow as pa
    from tridentcore.store.schema import arrow_schema

    n = 1_000_000
    ids = np.arange(n, dtype=np.int64)
    cols = {"dispatch_id": ids, "request_id": ids // 3, "stage": pa.array(["diffuse"] * n),
            "gpus": pa.array([[0, 1]] * n, type=pa.list_(pa.int32())), "degree": np.full(n, 2, np.int32),
            "batch": np.ones(n, np.int32), "queued_s": ids * 0.1, "started_s": ids * 0.1, "ended_s": ids * 0.1 + 1.0,
            "predicted_s": np.ones(n), "start_step": np.zeros(n, np.int32), "end_step": np.full(n, 28, np.int32),
            "outcome": pa.array(["done"] * n), "load_s": np.zeros(n), "transfer_s": np.zeros(n),
            "compute_s": pa.nulls(n, pa.float64())}
    schema = arrow_schema("stage_spans")
    spans = pa.table([pa.array(cols[f.name], type=f.type) for f in schema], schema=schema)
    path = tmp_path / "big.duckdb"
    store = ResultsStore(path)
    store.write_run_tables(meta("big", "trident", 1.0), {"stage_spans": spans})
    store.write_run(meta("run-b", "trident", 2000.0, seed=8), RUN_B_REQUESTS, RUN_B_SPANS)  # a batched dispatch too
    spill = tmp_path / "spill"
    spill.mkdir()
    got = query_readonly_capped(path, "SELECT run_id, dispatches, gpu_s FROM run_summary ORDER BY run_id", max_rows=10,
                                memory_limit="64MB", temp_directory=spill, max_temp_directory_size="16MB").frame
    assert got.values.tolist() == [["big", n, 2.0 * n], ["run-b", 1, 4.0]]
    stages = query_readonly_capped(path, "SELECT run_id, dispatches, spans FROM stage_breakdown ORDER BY run_id",
                                   max_rows=10, memory_limit="64MB", temp_directory=spill,
                                   max_temp_directory_size="16MB").frame
    assert stages.values.tolist() == [["big", n, n], ["run-b", 1, 4]]


def test_client_summary_counts_every_client_state(db: Path):
    """One count per state a client row can end in, ``cancelled`` included (the last column)."""
    from tridentcore.store.schema import CLIENT_STATES

    def row(i: int, state: str) -> dict:
        return {"request_index": i, "state": state, "model": "flux", "height": 512, "width": 512, "frames": 1,
                "steps": 28, "request_class": "flux 512x512", "workload_t_s": float(i), "scheduled_s": float(i),
                "http_status": 200 if state == "done" else 0, "reason": "", "stages_json": "{}"}

    states = ["done", "done", "cancelled", "cancelled", "cancelled", "refused", "error", "unfinished", "rejected",
              "failed"]
    ResultsStore(db).write_client_requests("run-b", [row(i, s) for i, s in enumerate(states)])
    df = query_readonly(db, "SELECT * FROM client_summary WHERE run_id = 'run-b'")
    assert df.columns[-1] == "cancelled"
    got = df.iloc[0]
    column = {"error": "errors"}  # the one count not named as its state
    assert {s: int(got[column.get(s, s)]) for s in CLIENT_STATES} == {s: states.count(s) for s in CLIENT_STATES}
    assert int(got.requests) == len(states)


def test_list_runs(db: Path):
    df = list_runs(db)
    assert list(df.run_id) == ["run-a", "run-b"]
    assert list(df.requests) == [6, 4]
    assert list(df.policy) == ["pipeline-static:degree=2", "trident"]


# ---------------------------------------------------------------------------------------------
# Writes: duplicates, atomicity, status
# ---------------------------------------------------------------------------------------------


def test_duplicate_run_id_refused_and_nothing_half_written(db: Path):
    before = counts(db, "run-a")
    extra = RUN_A_REQUESTS + [req(99, "flux", 512, 512, 1, 0.0, 1.0, "done", 0.5)]
    with pytest.raises(DuplicateRunError, match="run-a"):
        ResultsStore(db).write_run(meta("run-a", "other", 3000.0), extra, RUN_A_SPANS)
    assert counts(db, "run-a") == before
    assert list(list_runs(db).policy) == ["pipeline-static:degree=2", "trident"]


def test_failure_inside_the_transaction_leaves_nothing(db: Path):
    bad_spans = [RUN_B_SPANS[0], SpanRow(1, 0, None, (0,), 1, 1, 0.0, 0.0, 1.0, 1.0)]  # stage NOT NULL
    with pytest.raises(duckdb.Error):
        ResultsStore(db).write_run(meta("run-c", "trident", 3000.0), RUN_B_REQUESTS, bad_spans, RUN_B_PLACEMENTS)
    assert counts(db, "run-c") == dict.fromkeys(TABLES, 0)
    assert len(list_runs(db)) == 2
    # the same run id can then be written properly
    ResultsStore(db).write_run(meta("run-c", "trident", 3000.0), RUN_B_REQUESTS, RUN_B_SPANS)
    assert counts(db, "run-c")["requests"] == 4


def test_first_write_failing_leaves_no_schema_behind(tmp_path: Path):
    path = tmp_path / "fresh.duckdb"
    with pytest.raises(duckdb.Error):
        ResultsStore(path).write_run(meta("x", "p", 1.0), [req(0, None, 1, 1, 1, 0.0, 1.0, "done", 0.5)], [])
    con = open_readonly(path)
    try:
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'runs'").fetchone()[0] == 0
    finally:
        con.close()


def test_generators_and_empty_tables_are_accepted(tmp_path: Path):
    path = tmp_path / "r.duckdb"
    ResultsStore(path).write_run(meta("gen", "p", 0.0), (r for r in RUN_B_REQUESTS), iter(()))
    df = run_summary(path)
    assert (df.requests[0], df.dispatches[0], df.gpu_s[0]) == (4, 0, 0.0)
    assert math.isclose(df.gpu_s_per_met[0], 0.0)
    assert df.created_at[0].year >= 2024  # created_unix_s 0 means "not set": stamped at write time


def test_mark_status(db: Path):
    store = ResultsStore(db)
    store.mark_status("run-b", "interrupted")
    assert list(list_runs(db).status) == ["complete", "interrupted"]
    with pytest.raises(UnknownRunError):
        store.mark_status("nope", "failed")
    with pytest.raises(ValueError, match="complete, interrupted, failed"):
        store.mark_status("run-b", "sideways")


def test_other_schema_version_refused(db: Path):
    con = duckdb.connect(str(db))
    con.execute("UPDATE schema_version SET version = 999")
    con.close()
    with pytest.raises(SchemaVersionError, match="999"):
        ResultsStore(db).write_run(meta("run-z", "p", 1.0), RUN_B_REQUESTS, RUN_B_SPANS)
    assert counts(db, "run-z")["runs"] == 0


def test_a_newer_schema_is_refused_before_the_work_not_after(db: Path, tmp_path: Path):
    """Outside test: ``simulate --db`` and ``bench --db`` on a newer schema ended in a traceback, and
    ``serve --db`` served the whole run before its final write found it. Now the CLI says it in one
    line (exit 2) and a server's run id is not reserved there (no journal left)."""
    from typer.testing import CliRunner

    from tridentcore.cli import app
    from tridentcore.runtime.stored import open_journal

    con = duckdb.connect(str(db))
    con.execute("UPDATE schema_version SET version = 99")
    con.close()
    for cmd in (["simulate"], ["bench", "--no-progress"]):
        out = CliRunner().invoke(app, cmd + ["--duration", "10", "--policies", "trident", "--db", str(db)])
        assert out.exit_code == 2, out.output
        assert out.output.strip().endswith(f"error: --db {db}: cannot store runs there: database schema version 99, "
                                           f"this code writes version {SCHEMA_VERSION}; write to a new file or migrate the old one")
    with pytest.raises(SchemaVersionError, match="version 99"):
        open_journal(str(db), "run-new")
    assert not any(Path(f"{db}.journal").glob("*.jsonl"))


def test_an_older_database_is_migrated_by_a_writer(db: Path):
    """A version-1 file (stage spans without the worker's ``compute_s``) takes new runs: the writer
    adds the column (old rows NULL) and records the new version; readers see both runs."""
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE stage_spans DROP COLUMN compute_s")
    con.execute("ALTER TABLE requests DROP COLUMN job_id")  # version 4
    con.execute("DROP TABLE journal_ingests")  # version 3
    con.execute("DELETE FROM schema_version")
    con.execute("INSERT INTO schema_version VALUES (1, now()::TIMESTAMP)")
    con.close()
    measured = [replace(s, compute_s=0.5) for s in RUN_B_SPANS]
    ResultsStore(db).write_run(meta("run-new", "trident", 3000.0), RUN_B_REQUESTS, measured)
    got = query_readonly(db, "SELECT run_id, count(compute_s) AS n, count(*) AS rows FROM stage_spans "
                             "GROUP BY run_id ORDER BY run_id").values.tolist()
    assert got == [["run-a", 0, len(RUN_A_SPANS)], ["run-b", 0, len(RUN_B_SPANS)],
                   ["run-new", len(RUN_B_SPANS), len(RUN_B_SPANS)]]
    assert query_readonly(db, "SELECT max(version) AS v FROM schema_version").v[0] == SCHEMA_VERSION == 4
    assert query_readonly(db, "SELECT count(*) AS n FROM journal_ingests").n[0] == 0  # version 3's table
    assert query_readonly(db, "SELECT count(*) AS n FROM requests WHERE job_id IS NOT NULL").n[0] == 0  # version 4's
    assert run_summary(db).run_id.tolist() == ["run-a", "run-b", "run-new"]


def test_new_run_id_is_readable_and_unique():
    a = new_run_id("pipeline-static:degree=2", 7, now_unix_s=1_700_000_000.0, salt="x")
    assert a == new_run_id("pipeline-static:degree=2", 7, now_unix_s=1_700_000_000.0, salt="x")
    assert re.fullmatch(r"20231114-221320-pipeline-static-degree-2-s7-[0-9a-f]{6}", a), a
    assert len({new_run_id("trident", 1) for _ in range(200)}) == 200


def test_a_numbered_run_id_goes_above_the_highest_taken_number_of_its_pattern():
    assert next_run_number("prod-{n}", []) == 1
    assert next_run_number("prod-{n}", ["prod-1", "prod-7", "prod-3", "prod-x", "prod-", "prod-2-b", "dev-9"]) == 8
    assert next_run_number("{n}.night", ["3.night", "12.night", "4.day", "night"]) == 13
    assert next_run_number("r{n}", ["r١٢"]) == 1  # digits other than 0-9 are not a number of its
    assert next_run_number("r{n}", ["r" + "9" * 5000, "r3"]) == 4  # nor 19 digits or more (Python's int limit)


# ---------------------------------------------------------------------------------------------
# Readers in other processes, untrusted SQL, export
# ---------------------------------------------------------------------------------------------


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def test_reader_in_a_subprocess_opens_read_only(db: Path):
    out = _python(f"""
        import json
        from tridentcore.store import open_readonly, run_summary
        con = open_readonly({str(db)!r})
        n = con.execute("SELECT count(*) FROM requests").fetchone()[0]
        try:
            con.execute("DELETE FROM requests")
            wrote = True
        except Exception:
            wrote = False
        con.close()
        df = run_summary({str(db)!r})
        print(json.dumps([n, wrote, df.gpu_s.tolist()]))
    """)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [10, False, [78.0, 4.0]]


def test_writer_waits_for_a_reader_in_another_process(db: Path):
    # A read-only connection in another process blocks a read-write open; the writer retries.
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from tridentcore.store import open_readonly
            con = open_readonly({str(db)!r})
            print("open", flush=True)
            time.sleep(1.0)
            con.close()
        """)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        t0 = time.perf_counter()
        ResultsStore(db, lock_wait_s=30).write_run(meta("run-w", "p", 5000.0), RUN_B_REQUESTS, RUN_B_SPANS)
        waited = time.perf_counter() - t0
    finally:
        holder.wait(timeout=30)
    assert counts(db, "run-w")["requests"] == 4
    print(f"writer waited {waited:.2f} s for the reader")


def _held_open_error(db: Path, *args: str) -> tuple[str, int]:
    """The error of a reader kept out for 0.5 s by another process (``python -c SCRIPT DB ARGS``) that
    holds ``db`` read-write, and that process's PID."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, duckdb\ncon = duckdb.connect(sys.argv[1])\n"
         "print('open', flush=True)\ntime.sleep(30)", str(db), *args],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(duckdb.IOException) as err:
            open_readonly(db, wait_s=0.5)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    return str(err.value), holder.pid


def test_a_lock_held_past_the_wait_names_its_holder_and_the_wait(db: Path):
    """A reader kept out by another process's read-write connection said DuckDB's "IO Error: Could
    not set lock on file ..." after 10 s, without saying it had waited (outside test)."""
    text, pid = _held_open_error(db)
    assert text.startswith(f"{db} is held by another process (PID {pid}, python")
    assert "whose connection to it conflicts with this one, past a wait of 0.5 s" in text
    assert "\n" not in text  # its command line (a -c script of several lines here) on one line


def test_a_lock_held_by_a_tridentserve_process_says_so_not_another_program(db: Path):
    """Two servers on one file: each was told the other was "likely another program (a DuckDB shell, a
    notebook)" (outside test). A holder whose command line is TridentServe's is named as such."""
    text, pid = _held_open_error(db, "trident", "serve")
    assert text.startswith(f"{db} is held by another TridentServe process (PID {pid}: python"), text
    assert "), past a wait of 0.5 s" in text and "take turns" in text and "another program" not in text


def test_import_tridentcore_does_not_import_duckdb():
    out = _python("""
        import sys, tridentcore, tridentcore.core.records
        print([m for m in ("duckdb", "pyarrow", "pandas", "tridentcore.store") if m in sys.modules])
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "sql",
    [
        "COPY requests TO '{tmp}/leak.csv'",
        "SELECT * FROM read_csv('{tmp}/secret.csv')",
        "ATTACH '{tmp}/other.duckdb' AS other",
        "EXPORT DATABASE '{tmp}/dump'",
        "SET enable_external_access = true",
        "INSERT INTO runs SELECT * FROM runs",
        "DELETE FROM requests",
        "DROP VIEW run_summary",
        "CREATE TABLE evil AS SELECT 1",
        "SELECT 1; DELETE FROM requests",
    ],
)
def test_query_readonly_refuses_files_and_writes(db: Path, tmp_path: Path, sql: str):
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    with pytest.raises(duckdb.Error):
        query_readonly(db, sql.format(tmp=tmp_path))
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "dump").exists()
    assert counts(db, "run-a")["requests"] == 6


def test_sandboxed_sql_cannot_write_beside_the_database(db: Path):
    """Outside test: DuckDB's default spill folder, ``FILE.tmp/`` beside the database, was the one
    folder a sandboxed query could write (``trident sql``: ``COPY ... TO 'FILE.tmp/x.csv'``, 6.9 MB).
    Each sandboxed connection now spills into a private folder of its own, removed after."""
    from tridentcore.store import query_readonly_capped, query_readonly_rows

    beside = Path(f"{db}.tmp")
    beside.mkdir()
    copy = f"COPY (SELECT * FROM range(1000)) TO '{beside / 'x.csv'}'"
    for ask in (lambda: query_readonly(db, copy), lambda: query_readonly_capped(db, copy, max_rows=5),
                lambda: query_readonly_rows(db, copy, max_rows=5)):
        with pytest.raises(duckdb.Error, match="file system operations are disabled"):
            ask()
    assert list(beside.iterdir()) == []
    assert query_readonly_rows(db, "SELECT count(*) FROM runs", max_rows=5).rows == ((2,),)


def test_query_readonly_answers_and_takes_parameters(db: Path):
    df = query_readonly(db, "SELECT run_id, attainment FROM run_summary WHERE run_id = ?", ["run-b"])
    assert df.to_dict("records") == [{"run_id": "run-b", "attainment": 1.0}]


def test_query_readonly_times_out(db: Path):
    with pytest.raises(duckdb.Error):
        query_readonly(db, "SELECT count(*) FROM range(100000000000) a", timeout_s=0.3)


def test_query_readonly_capped_keeps_the_first_rows_and_says_whether_there_were_more(db: Path):
    capped = query_readonly_capped(db, "SELECT range AS i FROM range(5000)", max_rows=1000)
    assert capped.truncated and capped.max_rows == 1000 and list(capped.frame["i"]) == list(range(1000))
    whole = query_readonly_capped(db, "SELECT range AS i FROM range(1000)", max_rows=1000)
    assert not whole.truncated and len(whole.frame) == 1000
    empty = query_readonly_capped(db, "SELECT run_id FROM runs WHERE false", max_rows=10)
    assert not empty.truncated and list(empty.frame.columns) == ["run_id"] and empty.frame.empty
    t0 = time.perf_counter()  # streamed: the first rows of an enormous result, not the result
    huge = query_readonly_capped(db, "SELECT range AS i FROM range(100000000000)", max_rows=10)
    assert huge.truncated and len(huge.frame) == 10 and time.perf_counter() - t0 < 10
    last = query_readonly_capped(db, "SELECT 1 AS a; SELECT run_id FROM runs ORDER BY run_id", max_rows=10)
    assert list(last.frame["run_id"]) == ["run-a", "run-b"]
    with pytest.raises(duckdb.Error):
        query_readonly_capped(db, "SELECT * FROM read_csv('/etc/hostname')", max_rows=10)


def test_query_readonly_spills_only_where_and_as_much_as_it_is_told(db: Path, tmp_path: Path):
    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(duckdb.OutOfMemoryException, match="max_temp_directory_size"):
        query_readonly_capped(db, "SELECT DISTINCT range FROM range(20000000)", max_rows=10, memory_limit="64MB",
                              temp_directory=spill, max_temp_directory_size="16MB")
    assert {p.name for p in db.parent.iterdir()} == {db.name, "spill"}  # no results.duckdb.tmp/ beside it
    assert not list(spill.iterdir())  # DuckDB removed its spill files with the connection
    with pytest.raises(duckdb.Error):  # the limits are locked like the rest
        query_readonly(db, "SET max_temp_directory_size = '100GB'", temp_directory=spill,
                       max_temp_directory_size="16MB")


def test_export_run_round_trips(db: Path, tmp_path: Path):
    written = export_run(db, "run-a", tmp_path / "out")
    assert set(written) == set(TABLES)
    got = {t: pq.read_table(p).num_rows for t, p in written.items()}
    assert got == counts(db, "run-a")
    spans = pq.read_table(written["stage_spans"]).to_pylist()
    assert sorted(spans, key=lambda s: (s["dispatch_id"], s["request_id"]))[5]["gpus"] == [0, 1, 2, 3]
    with pytest.raises(UnknownRunError):
        export_run(db, "nope", tmp_path / "out2")
    # a live run's client rows go with it
    ResultsStore(db).write_client_requests("run-a", [{
        "request_index": 0, "state": "done", "model": "sd3-medium", "height": 512, "width": 512, "frames": 1,
        "steps": 28, "request_class": "sd3-medium 512x512", "workload_t_s": 0.0, "scheduled_s": 0.0,
        "http_status": 200, "reason": "", "stages_json": "{}"}])
    live = export_run(db, "run-a", tmp_path / "out3")
    assert set(live) == {*TABLES, "client_requests"} and pq.read_table(live["client_requests"]).num_rows == 1


# ---------------------------------------------------------------------------------------------
# results/README.md: every ```sql block runs against a populated store and returns rows
# ---------------------------------------------------------------------------------------------


def readme_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_at_least_five_queries():
    assert len(readme_queries()) >= 5


@pytest.mark.parametrize("index", range(len(readme_queries()) if README.exists() else 0))
def test_readme_query_runs(db: Path, index: int):
    sql = readme_queries()[index]
    df = query_readonly(db, sql)
    assert len(df) > 0, sql


# ---------------------------------------------------------------------------------------------
# Speed: 100,000 request rows + 100,000 span rows in <= 1 s (asserted loosely), summary <= 100 ms
# ---------------------------------------------------------------------------------------------


def test_ingest_and_summary_speed(tmp_path: Path):
    n = 100_000
    requests = [req(i, "flux", 1024, 1024, 1 + (i % 2) * 80, i * 0.01, i * 0.01 + 12.0,
                    "done" if i % 10 else "rejected", i * 0.01 + 1 + (i % 17)) for i in range(n)]  # fmt: skip
    spans = [span(i // 4, i, "diffuse", [i % 8, (i + 1) % 8], 4, i * 0.01, (i // 4) * 0.04 + 0.5, (i // 4) * 0.04 + 3.0)
             for i in range(n)]  # batches of 4, each 2.5 s on 2 GPUs  # fmt: skip
    path = tmp_path / "speed.duckdb"
    t0 = time.perf_counter()
    ResultsStore(path).write_run(meta("speed", "trident", 1.0), requests, spans)
    ingest_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        df = run_summary(path)
        times.append(time.perf_counter() - t0)
    summary_s = sorted(times)[1]
    print(f"ingest {n:,} requests + {n:,} spans: {ingest_s:.3f} s; run_summary median of 3: {1000 * summary_s:.1f} ms")
    assert int(df.requests[0]) == n and df.gpu_s[0] == pytest.approx(n / 4 * 2.5 * 2)
    assert ingest_s <= 3.0
    assert summary_s <= 0.5


def test_tables_and_arrow_schemas_come_from_the_row_types(db: Path):
    """Each row type is declared once (core.records); the DDL and Arrow schemas follow from it."""
    from tridentcore.core.records import ROW_TYPES, column_names
    from tridentcore.store import arrow_schema
    from tridentcore.store.schema import DERIVED, table_columns

    con = open_readonly(db)
    try:
        for table, row_type in ROW_TYPES.items():
            stored = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table]).fetchall()]
            assert stored == [c.name for c in table_columns(table)], table
            key = () if table == "runs" else ("run_id",)
            derived = {c.name for c in DERIVED.get(table, ())}
            assert tuple(n for n in stored if n not in derived) == key + column_names(row_type), table
            assert tuple(arrow_schema(table).names) == column_names(row_type), table
    finally:
        con.close()


def test_another_programs_database_with_a_runs_table_is_named_as_such_and_never_written(tmp_path):
    """A DuckDB file with its own ``runs`` table: readers and writers say it is not ours (they gave
    binder errors about run_summary and run_id), and its table is left as it was."""
    from tridentcore.store import NotADatabaseError

    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE runs (x INTEGER)")
    con.execute("INSERT INTO runs VALUES (7)")
    con.close()
    for read in (lambda: open_readonly(path), lambda: list_runs(path)):
        with pytest.raises(NotADatabaseError, match="not a TridentServe results database.*runs"):
            read()
    with pytest.raises(NotADatabaseError, match="no schema_version"):
        ResultsStore(path).check()
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT * FROM runs").fetchall() == [(7,)]
    assert {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()} == {"runs"}
    con.close()


def test_another_programs_database_of_other_tables_is_never_written_and_a_server_refuses_it(tmp_path):
    """A DuckDB file of unrelated tables (a typo in ``--db`` naming an analytics database): ``serve``
    started, served and put our 8 tables and 6 views beside ``customers`` (outside test). Writers now
    refuse any database with tables and no ``schema_version``, and ``serve --db`` says so before it
    serves (exit 2, no journal left); an empty DuckDB file is taken."""
    from tridentcore.store import NotADatabaseError

    path = tmp_path / "analytics.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.execute("CREATE SCHEMA sales")
    con.execute("CREATE TABLE sales.orders (id INTEGER)")
    con.close()
    with pytest.raises(NotADatabaseError, match=r"it holds customers, sales\.orders and no schema_version"):
        write_both(path)
    out = subprocess.run([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "sd3-medium", "--devices",
                          "emulated:1xH200", "--port", "0", "--db", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "not a TridentServe results database: it holds customers" in out.stderr, out.stderr
    con = duckdb.connect(str(path), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()) == [
        "customers", "orders"]
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analytics.duckdb"]  # no journal folder
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    write_both(empty)
    assert [r.run_id for r in list_runs(empty).itertuples()] == ["run-a", "run-b"]


def test_a_ctrl_c_that_reaches_duckdb_mid_query_is_a_keyboard_interrupt(tmp_path, monkeypatch):
    """DuckDB turns a Ctrl-C during a query into ``RuntimeError: Query interrupted``: a CI run of
    `simulate --db NEW` interrupted while the database was being made printed that traceback (exit 1)
    instead of "interrupted before any policy ran" (exit 130)."""
    from tridentcore.store import writer

    def interrupted(con):
        raise RuntimeError("Query interrupted")

    monkeypatch.setattr(writer, "create_schema", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ResultsStore(tmp_path / "new.duckdb").check()
    monkeypatch.setattr(writer, "create_schema", lambda con: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        ResultsStore(tmp_path / "new.duckdb").check()
    # ... and at the transaction's BEGIN, before the schema (a later CI run: the same traceback)
    monkeypatch.undo()
    real = writer.connect

    class Begins:  # a connection whose BEGIN the Ctrl-C interrupts; the rest is DuckDB's own
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if sql == "BEGIN TRANSACTION":
                raise RuntimeError("Query interrupted")
            return self.con.execute(sql, *args)

        def close(self):
            self.con.close()

    monkeypatch.setattr(writer, "connect", lambda *a, **k: Begins(real(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        ResultsStore(tmp_path / "begin.duckdb").check()


def test_an_insert_into_a_damaged_database_raises_its_own_error_not_the_aborted_transactions(tmp_path: Path):
    """An insert whose read of a damaged file fails: unregistering its rows in the transaction that
    failure aborted raised DuckDB's "Current transaction is aborted (please ROLLBACK)" over it, and a
    server's journal said only that of a database cut short (outside test 131)."""
    import duckdb

    from tridentcore.store.errors import damage
    from tridentcore.store.writer import insert_rows, rows_to_arrow

    db = tmp_path / "r.duckdb"
    store = ResultsStore(db)
    rows = [req(i, "flux", 1024, 1024, 1, float(i), i + 10.0, "done", i + 4.0) for i in range(20_000)]
    store.write_run(meta("big", "trident", 1.0), rows, [])
    cut = tmp_path / "cut.duckdb"
    cut.write_bytes(db.read_bytes()[:db.stat().st_size // 3])
    con = duckdb.connect(str(cut))
    try:
        con.execute("BEGIN TRANSACTION")
        with pytest.raises(duckdb.Error) as got:
            insert_rows(con, "runs", rows_to_arrow([meta("next", "trident", 2.0)], "runs"), "next")
    finally:
        con.close()
    assert damage(got.value) == "the file ends before its last block: cut short", got.value
