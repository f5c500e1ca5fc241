"""`trident runs list | show | diff | export` over a results database (read-only), and `runs delete`."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tridentcore.cli import app
from tridentcore.store import list_runs, run_summary

runner = CliRunner()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "r.duckdb"
    result = runner.invoke(app, ["bench", "--mix", "image-video", "--rate", "0.5", "--duration", "90", "--seed", "2",
                                 "--policies", "trident,pipeline-static:degree=1", "--db", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    return path


def _ids(db: Path) -> dict[str, str]:
    return {row.policy: row.run_id for row in run_summary(db).itertuples()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_list(db):
    before = _digest(db)
    result = runner.invoke(app, ["runs", "list", "--db", str(db)])
    assert result.exit_code == 0, result.output
    for run_id in _ids(db).values():
        assert run_id in result.stdout
    assert "pipeline-static:degree=1" in result.stdout and "image-video" in result.stdout
    assert _digest(db) == before  # opened read-only


def test_show_summary_classes_and_stages(db):
    run_id = _ids(db)["trident"]
    before = _digest(db)
    result = runner.invoke(app, ["runs", "show", run_id[:-3], "--db", str(db)])  # a unique prefix will do
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"run {run_id}" in out and "sim trident" in out and "seed 2" in out
    row = run_summary(db, [run_id]).iloc[0]
    summary = {line.split()[0]: line.split()[1] for line in out.split("summary\n")[1].split("attainment by")[0].splitlines()}
    assert summary["requests"] == str(row.requests) and summary["attainment"] == f"{row.attainment:.3f}"
    assert summary["p95_s"] == f"{row.p95_s:.2f}" and summary["ooms"] == str(row.ooms)
    assert "attainment by request class" in out and "wan2.1-1.3b 1280x720x81" in out
    stages = out.split("stage breakdown\n")[1].splitlines()
    assert [line.split()[0] for line in stages[1:]] == ["encode", "diffuse", "decode"]
    assert _digest(db) == before


def test_diff_shows_both_runs_and_class_deltas(db):
    ids = _ids(db)
    a, b = ids["pipeline-static:degree=1"], ids["trident"]
    result = runner.invoke(app, ["runs", "diff", a, b, "--db", str(db)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert a in out and b in out
    rows = run_summary(db, [a, b]).set_index("run_id")
    line = next(x for x in out.splitlines() if x.startswith("attainment "))
    delta = rows.attainment[b] - rows.attainment[a]
    assert line.split() == ["attainment", f"{rows.attainment[a]:.3f}", f"{rows.attainment[b]:.3f}",
                            ("+" if delta >= 0 else "") + f"{delta:.3f}"]
    for metric in ("mean_s", "p95_s", "p99_s", "ooms", "rejected", "gpu_s_per_met"):
        assert any(x.startswith(metric + " ") for x in out.splitlines()), metric
    assert "attainment by request class" in out and "sd3-medium 512x512" in out
    assert "note:" not in out  # the same workload


def test_diff_says_when_the_runs_served_different_workloads(db, tmp_path):
    import shutil

    other = tmp_path / "other.duckdb"
    shutil.copy(db, other)
    result = runner.invoke(app, ["bench", "--mix", "image-video", "--rate", "0.3", "--duration", "60", "--seed", "3",
                                 "--policies", "trident", "--db", str(other), "--no-progress"])
    assert result.exit_code == 0, result.output
    a = _ids(db)["trident"]
    b = next(r.run_id for r in run_summary(other).itertuples() if r.run_id not in _ids(db).values())
    out = runner.invoke(app, ["runs", "diff", a, b, "--db", str(other)]).stdout
    assert ("note: A and B did not serve the same workload (rate 0.5 / 0.3; seed 2 / 3): B - A compares more than "
            "the policies") in out, out


def test_show_and_diff_name_noise_bias_and_a_cluster_file(tmp_path):
    """Outside test: runs with --noise 0.3 --bias decode=2, or on a cluster YAML of 30 GiB GPUs, read
    exactly as runs without (the label 1x2xH200 hides the memory), and diff said nothing."""
    db = tmp_path / "r.duckdb"
    (tmp_path / "c.yaml").write_text("nodes: 1\ngpus_per_node: 2\nkind: H200\nmem_gib: 30\n")
    for extra in (["--noise", "0.3", "--bias", "decode=2"], [], ["--cluster", str(tmp_path / "c.yaml")],
                  ["--cluster", "1x2xH200"]):
        result = runner.invoke(app, ["simulate", "--mix", "sd3-mixed", "--duration", "60", "--policies", "trident",
                                     "--db", str(db), *extra])
        assert result.exit_code == 0, result.output
    noisy, plain, filed, labelled = list(run_summary(db).run_id)
    shown = runner.invoke(app, ["runs", "show", noisy, "--db", str(db)]).stdout
    assert "  stage times drawn with noise sigma 0.3, bias decode x2\n" in shown, shown
    shown = runner.invoke(app, ["runs", "show", filed, "--db", str(db)]).stdout
    assert f"  cluster from {tmp_path / 'c.yaml'}, sha256 " in shown, shown
    out = runner.invoke(app, ["runs", "diff", noisy, plain, "--db", str(db)]).stdout
    assert "(stage times noise sigma 0.3, bias decode x2 / -)" in out, out
    out = runner.invoke(app, ["runs", "diff", filed, labelled, "--db", str(db)]).stdout
    assert f"(cluster file {tmp_path / 'c.yaml'}, sha256 " in out and " / -): B - A compares more" in out, out
    assert "note:" not in runner.invoke(app, ["runs", "diff", plain, plain, "--db", str(db)]).stdout


def test_export_writes_parquet_per_table(db, tmp_path):
    import pyarrow.parquet as pq

    run_id = _ids(db)["trident"]
    result = runner.invoke(app, ["runs", "export", run_id, "--parquet", str(tmp_path / "out"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    files = {p.stem: p for p in (tmp_path / "out").glob("*.parquet")}
    assert set(files) == {"runs", "requests", "stage_spans", "placements", "gpu_samples"}
    assert pq.read_table(files["requests"]).num_rows == run_summary(db, [run_id]).requests[0]
    assert set(pq.read_table(files["stage_spans"]).column("run_id").to_pylist()) == {run_id}
    (tmp_path / "a-file").write_text("x")
    taken = runner.invoke(app, ["runs", "export", run_id, "--parquet", str(tmp_path / "a-file"), "--db", str(db)])
    assert taken.exit_code == 2 and "is a file: give a folder" in taken.output
    # a table's name taken by a folder: nothing written (runs.parquet and requests.parquet were left)
    (tmp_path / "busy" / "stage_spans.parquet").mkdir(parents=True)
    busy = runner.invoke(app, ["runs", "export", run_id, "--parquet", str(tmp_path / "busy"), "--db", str(db)])
    assert busy.exit_code == 2 and "stage_spans.parquet: not a file (nothing written)" in busy.output, busy.output
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["stage_spans.parquet"]
    # again into the same folder: said what it replaced, and what else is there
    (tmp_path / "out" / "client_requests.parquet").write_bytes(b"")
    again = runner.invoke(app, ["runs", "export", run_id, "--parquet", str(tmp_path / "out"), "--db", str(db)])
    assert again.exit_code == 0 and "(replaced: runs.parquet, requests.parquet" in again.output, again.output
    assert "also holds client_requests.parquet, not of this export" in again.output
    proc = runner.invoke(app, ["runs", "export", run_id, "--parquet", "/proc/pq", "--db", str(db)])  # ([Errno 2] ...)
    assert proc.exit_code == 2 and "--parquet /proc/pq: cannot be written (No such file or directory)" in proc.output
    empty = runner.invoke(app, ["runs", "export", run_id, "--parquet", "", "--db", str(db)])
    assert empty.exit_code == 2 and "--parquet: an empty value" in empty.output
    folder = runner.invoke(app, ["runs", "recover", "--db", str(tmp_path)])
    assert folder.exit_code == 2 and "is a folder" in folder.output


@pytest.mark.parametrize("args, needle", [
    (["runs", "show", "nope"], "run 'nope' is not in"),
    (["runs", "show", "2"], "is ambiguous"),
    (["runs", "diff", "nope", "{trident}"], "run 'nope' is not in"),
    (["runs", "export", "nope", "--parquet", "{tmp}/x"], "run 'nope' is not in"),
    # "" began every id: shown or exported the one run a database held
    (["runs", "show", ""], "give a run id, or the start of one"),
    (["runs", "export", " ", "--parquet", "{tmp}/x"], "give a run id, or the start of one"),
])
def test_unknown_run_is_a_clear_error(db, tmp_path, args, needle):
    args = [a.format(trident=_ids(db)["trident"], tmp=tmp_path) for a in args] + ["--db", str(db)]
    assert needle in _error_line(runner.invoke(app, args))


@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["diff", "x", "y"], ["export", "x", "--parquet", "o"]])
def test_missing_database_is_a_clear_error(tmp_path, command):
    missing = tmp_path / "none.duckdb"
    line = _error_line(runner.invoke(app, ["runs", *command, "--db", str(missing)]))
    assert "no results database" in line and str(missing) in line
    assert not missing.exists()


def test_a_file_that_is_not_a_results_database(tmp_path):
    import duckdb

    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    assert "not a results database" in _error_line(runner.invoke(app, ["runs", "list", "--db", str(other)]))
    folder = tmp_path / "adir.duckdb"  # was DuckDB's "IO Error: Could not read from file ...: Is a directory"
    folder.mkdir()
    for command in (["runs", "list"], ["sql", "SELECT 1"]):
        line = _error_line(runner.invoke(app, [*command, "--db", str(folder)]))
        assert line == f"error: {folder} is a folder, not a results database file", line


@pytest.mark.parametrize("name, text", [("r.json", '{"run_id": "x"}\n'), ("r.csv", "run_id\nx\n"), ("r.txt", "x")])
def test_a_file_that_is_not_a_duckdb_database(tmp_path, name, text):
    other = tmp_path / name  # DuckDB would open the .json and .csv as data (a misleading catalog error)
    other.write_text(text)
    for command in (["list"], ["show", "x"], ["diff", "x", "y"]):
        line = _error_line(runner.invoke(app, ["runs", *command, "--db", str(other)]))
        assert line == f"error: --db {other}: not a DuckDB database (no DuckDB file header)"
    assert other.read_text() == text


def test_a_named_pipe_or_a_device_is_refused_not_waited_on(tmp_path):
    """Outside test 114: a named pipe given as ``--db`` hung `sql`, `runs` and `serve` for ever (DuckDB's
    open waited for a writer)."""
    import os
    import threading

    fifo = tmp_path / "fifo.duckdb"
    os.mkfifo(fifo)
    for command in (["runs", "list"], ["runs", "show", "x"], ["sql", "SELECT 1"], ["simulate", "--duration", "30"]):
        got = []
        t = threading.Thread(target=lambda: got.append(runner.invoke(app, [*command, "--db", str(fifo)])), daemon=True)
        t.start()
        t.join(30)
        if t.is_alive():  # (unblock the open so that the test process can end: open the pipe's other side)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        assert got, f"{command} waited on the named pipe"
        line = _error_line(got[0])
        assert f"--db {fifo}: " in line and line.endswith(": not a results database file (a named pipe)"), line
    for command in (["runs", "list"], ["runs", "delete", "x"], ["runs", "recover"]):  # (118: delete, recover)
        assert _error_line(runner.invoke(app, [*command, "--db", "/dev/null"])) == \
            "error: --db /dev/null: not a results database file (a device)", command
        assert _error_line(runner.invoke(app, [*command, "--db", str(fifo)])) == \
            f"error: --db {fifo}: not a results database file (a named pipe)", command


def test_show_a_run_without_rows(tmp_path):
    from tridentcore.core.records import RunMeta
    from tridentcore.store import ResultsStore

    path = tmp_path / "e.duckdb"
    ResultsStore(path).write_run(RunMeta("only", "sim", "trident", 0, "h200", "8xH200", "m", 1.0, 1.0, 3.0, "{}"), [], [])
    result = runner.invoke(app, ["runs", "show", "only", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("(none)") == 2  # no classes, no stages


def test_delete_removes_every_row_of_a_run_and_refuses_what_it_should_not_delete(tmp_path):
    """Outside test: a stored run could not be deleted but by another tool. Every row of the run goes,
    the other run stays whole; a prefix, an unknown id, a run still `running` and one whose journal is
    not stored yet are refused, each named, and the exit status is 1."""
    import shutil

    import duckdb

    from tridentcore.store import ResultsStore
    from tridentcore.store.journal import journal_path

    db = tmp_path / "d.duckdb"
    result = runner.invoke(app, ["simulate", "--mix", "tiny", "--profile", "cpu", "--cluster", "2xcpu", "--rate", "2",
                                 "--duration", "20", "--policies", "trident,pipeline-static:degree=1,pipeline-dynamic",
                                 "--db", str(db)])
    assert result.exit_code == 0, result.output
    ids = _ids(db)
    gone, kept, running = ids["trident"], ids["pipeline-static:degree=1"], ids["pipeline-dynamic"]

    def counts(run_id: str) -> dict[str, int]:
        con = duckdb.connect(str(db), read_only=True)
        try:
            return {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0]
                    for t in ("runs", "requests", "stage_spans", "placements")}
        finally:
            con.close()

    before = counts(gone)
    assert before["runs"] == 1 and before["requests"] > 0 and before["stage_spans"] > 0
    kept_before = counts(kept)
    ResultsStore(db).mark_status(running, "running")
    shared = os.path.commonprefix([gone, kept, running])  # (a prefix of several: it said "not in", outside test 103)
    assert shared
    refused = runner.invoke(app, ["runs", "delete", gone[:-2], "nope", running, shared, "--db", str(db)])
    assert refused.exit_code == 1, refused.output
    assert f"run {gone[:-2]!r} is not a whole run id (it begins {gone}): give the whole id" in refused.stderr
    assert f"run {shared!r} is not a whole run id (it begins " in refused.stderr and "give the whole id" in refused.stderr
    assert "run 'nope' is not in" in refused.stderr
    assert f"run {running!r} is running" in refused.stderr
    journal = journal_path(db, kept)
    journal.parent.mkdir()
    journal.write_text("")
    refused = runner.invoke(app, ["runs", "delete", kept, "--db", str(db)])
    assert refused.exit_code == 1 and "is not stored yet" in refused.stderr, refused.output
    for n in (300, 5000):  # (outside test 114: "OSError: File name too long" tracebacks while a journal folder was there)
        line = _error_line(runner.invoke(app, ["runs", "show", "a" * n, "--db", str(db)]))
        assert re.match(r"error: run 'a+\.\.\.a+' is not in ", line) and len(line) < 300, line
        assert line.endswith("(3 runs stored; see `trident runs list`)"), line  # (118: it said the id in full)
        refused = runner.invoke(app, ["runs", "delete", "a" * n, "--db", str(db)])
        assert refused.exit_code == 1 and re.search(r"run 'a+\.\.\.a+' is not in", refused.stderr), refused.output
    shutil.rmtree(journal.parent)
    assert counts(gone) == before and counts(kept) == kept_before
    deleted = runner.invoke(app, ["runs", "delete", gone, "--db", str(db)])
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.startswith(f"deleted run {gone}: {before['requests']} requests, {before['stage_spans']} "
                                     f"stage_spans, {before['placements']} placements"), deleted.stdout
    assert counts(gone) == {"runs": 0, "requests": 0, "stage_spans": 0, "placements": 0}
    assert counts(kept) == kept_before
    again = runner.invoke(app, ["runs", "delete", gone, "--db", str(db)])
    assert again.exit_code == 1 and f"run {gone!r} is not in" in again.stderr
    other = tmp_path / "other.duckdb"
    other.write_text("not a database")
    assert "not a DuckDB database" in _error_line(runner.invoke(app, ["runs", "delete", "x", "--db", str(other)]))


def test_show_counts_the_requests_a_crash_left_unfinished(db, tmp_path):
    """Outside test 92: a run recovered after a ``kill -9`` of its server showed ``requests 88``, ``done 2``,
    ``cancelled 11`` and nothing else: the 75 stored ``unfinished`` (accepted, never ended) were in no
    line of ``runs show`` (``run_summary`` had no such column)."""
    import shutil

    import duckdb

    copy = tmp_path / "crashed.duckdb"
    shutil.copy(db, copy)
    run_id = _ids(db)["trident"]
    con = duckdb.connect(str(copy))
    try:
        con.execute("UPDATE requests SET state = 'unfinished', met_slo = false WHERE run_id = ? AND request_id % 3 = 0",
                    [run_id])
        unfinished = con.execute("SELECT count(*) FROM requests WHERE run_id = ? AND state = 'unfinished'",
                                 [run_id]).fetchall()[0][0]
    finally:
        con.close()
    assert unfinished > 0
    result = runner.invoke(app, ["runs", "show", run_id, "--db", str(copy)])
    assert result.exit_code == 0, result.output
    summary = {line.split()[0]: line.split()[1]
               for line in result.stdout.split("summary\n")[1].split("attainment by")[0].splitlines()}
    assert summary["unfinished"] == str(unfinished)
    ended = sum(int(summary[k]) for k in ("done", "rejected", "failed", "cancelled", "unfinished"))
    assert ended == int(summary["requests"]), summary


def test_control_characters_in_stored_values_are_printed_escaped(tmp_path):
    """Outside test: a mix file whose path held `ESC ] 0 ; PWN BEL` was echoed raw by `runs list` (a
    shared results file could retitle or drive the reader's terminal); so was a SQL result's text."""
    import shutil

    import tridentcore

    folder = tmp_path / "m\x1b]0;PWN\x07"
    folder.mkdir()
    mix = folder / "mix.yaml"
    shutil.copy(Path(tridentcore.__file__).parent / "formats" / "data" / "mixes" / "sd3-mixed.yaml", mix)
    db = tmp_path / "r.duckdb"
    result = runner.invoke(app, ["simulate", "--mix", str(mix), "--duration", "30", "--policies", "trident",
                                 "--db", str(db)])
    assert result.exit_code == 0, result.output
    (run,) = list(run_summary(db).run_id)
    for args in (["runs", "list"], ["runs", "show", run], ["runs", "diff", run, run],
                 ["sql", "SELECT mix, 'a' || chr(27) || ']0;T' || chr(7) || 'b' AS t FROM runs"]):
        out = runner.invoke(app, [*args, "--db", str(db)]).stdout
        assert "\x1b" not in out and "\x07" not in out, (args, out)
        assert "\\x1b]0;PWN\\x07" in out, (args, out)


def test_a_database_of_client_rows_alone_names_them(db, tmp_path):
    """Outside test: a standalone Locust run's --db holds its client rows alone; `runs list` said
    "no runs in FILE" and `runs show` "not in FILE (0 runs stored)", the rows reachable only by SQL."""
    import json

    from tridentcore.bench.client_rows import insert_client_rows
    from tridentcore.bench.spec import RunSpec
    from workloads.rows import base_row
    from workloads.schedule import build_schedule

    rows = [base_row(a) for a in build_schedule(RunSpec(mix="image-video", rate=1, duration_s=10, seed=1))]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    only = tmp_path / "client.duckdb"
    assert insert_client_rows(str(only), "l1", str(tmp_path / "rows.jsonl")) == len(rows)
    listed = runner.invoke(app, ["runs", "list", "--db", str(only)])
    assert listed.exit_code == 0 and f"no runs in {only}" in listed.stdout, listed.output
    assert f"client rows only (a standalone Locust run's --db, no server records): l1 ({len(rows)} requests)" in listed.stdout
    line = _error_line(runner.invoke(app, ["runs", "show", "l1", "--db", str(only)]))
    assert f"run 'l1' has only client rows in {only} ({len(rows)} requests" in line and "client_requests" in line
    assert "client rows only" not in runner.invoke(app, ["runs", "list", "--db", str(db)]).stdout  # (a bench's: its run)


def test_list_limit_shows_the_newest_runs_and_says_how_many_are_stored(db):
    ids = list(list_runs(db).run_id)  # oldest first
    assert len(ids) == 2
    newest = runner.invoke(app, ["runs", "list", "--db", str(db), "--limit", "1"])
    assert newest.exit_code == 0, newest.output
    assert ids[1] in newest.stdout and ids[0] not in newest.stdout
    assert "the newest 1 of 2 runs (--limit)" in newest.stderr and "--limit" not in newest.stdout
    every = runner.invoke(app, ["runs", "list", "--db", str(db), "--limit", "5"])
    assert every.exit_code == 0 and all(i in every.stdout for i in ids) and "--limit" not in every.stdout
    assert every.stdout == runner.invoke(app, ["runs", "list", "--db", str(db)]).stdout
    assert "--limit" in _error_line(runner.invoke(app, ["runs", "list", "--db", str(db), "--limit", "0"]))
    huge = runner.invoke(app, ["runs", "list", "--db", str(db), "--limit", "99999999999999999999"])
    assert huge.exit_code == 0 and huge.stdout == every.stdout, huge.output  # (was DuckDB's INT64 error)


def test_an_export_or_a_diff_of_a_run_still_stored_as_running_says_so(tmp_path):
    """Outside test 114: `runs export` right after a burst wrote 82 of the 100 answered requests, and the
    export or diff of a crashed run not yet recovered compared part of it, exit 0 without a word."""
    from tridentcore.store import ResultsStore
    from tridentcore.store.journal import journal_path

    db = tmp_path / "d.duckdb"
    result = runner.invoke(app, ["simulate", "--mix", "tiny", "--profile", "cpu", "--cluster", "2xcpu", "--rate", "2",
                                 "--duration", "20", "--policies", "trident,pipeline-static:degree=1", "--db", str(db)])
    assert result.exit_code == 0, result.output
    ids = _ids(db)
    whole, part = ids["trident"], ids["pipeline-static:degree=1"]
    exported = runner.invoke(app, ["runs", "export", whole, "--parquet", str(tmp_path / "p0"), "--db", str(db)])
    assert exported.exit_code == 0 and "note" not in exported.stderr, exported.output
    ResultsStore(db).mark_status(part, "running")
    exported = runner.invoke(app, ["runs", "export", part, "--parquet", str(tmp_path / "p1"), "--db", str(db)])
    assert exported.exit_code == 0, exported.output
    assert f"note: run {part} is stored as running: exported as far as it is stored (no journal of it" in \
        exported.stderr, exported.stderr
    journal = journal_path(db, part)  # a journal no process holds: its server died
    journal.parent.mkdir()
    journal.write_text("")
    diffed = runner.invoke(app, ["runs", "diff", whole, part, "--db", str(db)])
    assert diffed.exit_code == 0, diffed.output
    assert diffed.stderr.count("note: run") == 1 and f"note: run {part} is stored as running: compared as far as it " \
        f"is stored (its server is gone: `trident runs recover --db {db}` stores the rest its journal holds)" in \
        diffed.stderr, diffed.stderr


def test_a_damaged_database_is_said_to_be_damaged_and_a_folders_name_is_refused(tmp_path):
    """A database whose blocks fail their checksums, or cut short (a disk error, a copy that stopped): DuckDB's
    own words ("Corrupt database file: computed checksum ...") named no file and said nothing of what to
    do; a ``--db`` ending in '/' made a file of that name (outside test 131)."""
    path = tmp_path / "r.duckdb"
    made = runner.invoke(app, ["simulate", "--mix", "flux-uniform", "--rate", "1.5", "--duration", "1800",
                               "--policies", "trident", "--db", str(path)])
    assert made.exit_code == 0, made.output
    data = path.read_bytes()
    cut = tmp_path / "cut.duckdb"
    cut.write_bytes(data[:len(data) // 4])
    line = _error_line(runner.invoke(app, ["runs", "list", "--db", str(cut)]))
    assert line.startswith(f"error: --db {cut}: the database file is damaged (the file ends before its last block: "
                           "cut short; DuckDB: "), line
    assert "restore the file from a copy" in line
    # a run stored into it: DuckDB's aborted transaction hid the read that failed ("Current transaction is aborted")
    line = _error_line(runner.invoke(app, ["simulate", "--mix", "tiny", "--rate", "1", "--duration", "5", "--policies",
                                           "trident", "--db", str(cut)]))
    # ... before any run: the file is shorter than the blocks its header counts (outside test 132: a live bench
    # ran whole, then could not store its run: "could not store run R in F: IO Error ...")
    assert line == (f"error: --db {cut}: the database file is damaged (the file ends before its last block: cut "
                    "short): restore the file from a copy, and store new runs in another"), line
    # its headers' block changed: refused at once, said so by every command (bench and sql said DuckDB's words)
    head = tmp_path / "head.duckdb"
    head.write_bytes(data[:4196] + bytes(b ^ 0xFF for b in data[4196:4260]) + data[4260:])
    for command in (["bench", "--mix", "tiny", "--rate", "1", "--duration", "5", "--policies", "trident",
                     "--no-progress"], ["sql", "SELECT 1"], ["runs", "list"]):
        line = _error_line(runner.invoke(app, [*command, "--db", str(head)]))
        assert line.startswith(f"error: --db {head}: the database file is damaged (a block's checksum does not "
                               "match"), (command, line)
        assert line.endswith("restore the file from a copy, and store new runs in another"), line
    said = set()  # a byte changed in each 256 KiB block in turn: those `runs list` reads fail their checksums
    for at in range(4096 * 3, len(data), 1 << 18):
        flipped = tmp_path / f"f{at}.duckdb"
        flipped.write_bytes(data[:at] + bytes(b ^ 0xFF for b in data[at:at + 8]) + data[at + 8:])
        result = runner.invoke(app, ["runs", "list", "--db", str(flipped)])
        if result.exit_code:
            said.add(_error_line(result).split(" (")[0] + " (" + _error_line(result).split(" (")[1].split(";")[0])
    assert said, "no block read by runs list was found"
    assert said <= {f"error: --db {tmp_path}/f{at}.duckdb: the database file is damaged (a block's checksum does "
                    "not match" for at in range(4096 * 3, len(data), 1 << 18)}, said
    for command in (["simulate", "--mix", "tiny", "--rate", "1", "--duration", "5", "--policies", "trident"],
                    ["bench", "--mix", "tiny", "--rate", "1", "--duration", "5", "--policies", "trident",
                     "--no-progress"]):
        line = _error_line(runner.invoke(app, [*command, "--db", f"{tmp_path}/nd/"]))
        assert line == f"error: --db {tmp_path}/nd/: cannot store runs there: {tmp_path}/nd/ ends in '/', a folder's " \
                       "name: give the results database file's path", line
        assert not (tmp_path / "nd").exists()
