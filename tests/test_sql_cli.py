"""`trident sql`: read-only SQL on a results database; every example query of results/README.md runs
through it against a database written by a real run (a short `trident simulate --db`; the live
queries against a short live bench of the tiny mix on CPU workers, marked slow)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tridentcore.cli import app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "results" / "README.md"
runner = CliRunner()


def readme_queries(live: bool = False) -> list[str]:
    """The ```sql blocks of results/README.md (and, with ``live``, the ```sql live ones too)."""
    pattern = r"```sql(?: live)?\n(.*?)```" if live else r"```sql\n(.*?)```"
    return re.findall(pattern, README.read_text(), flags=re.S)


def _sql(*args: str):
    return runner.invoke(app, ["sql", *args])


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """Two policies of a short simulated run of the tiny mix, stored by `trident simulate --db`."""
    path = tmp_path_factory.mktemp("sql") / "t.duckdb"
    result = runner.invoke(app, ["simulate", "--mix", "tiny", "--profile", "cpu", "--cluster", "2xcpu", "--rate", "2",
                                 "--duration", "30", "--policies", "trident,pipeline-static:degree=1",
                                 "--db", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_readme_has_queries_and_names_no_duckdb_cli():
    text = README.read_text()
    assert len(readme_queries()) >= 5 and len(readme_queries(live=True)) > len(readme_queries())
    assert "trident sql" in text
    assert "duckdb -readonly" not in text  # the duckdb command-line tool is installed by nothing here


@pytest.mark.parametrize("index", range(len(readme_queries())))
def test_readme_query_runs_through_trident_sql(db: Path, index: int):
    sql = readme_queries()[index]
    result = _sql("--db", str(db), "--json", sql)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and isinstance(rows[0], dict), sql


def test_table_csv_and_json_show_the_same_rows(db: Path):
    sql = "SELECT policy, requests, round(attainment, 3) AS attainment, NULL AS nothing FROM run_summary ORDER BY policy"
    table = _sql("--db", str(db), sql)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["policy", "requests", "attainment", "nothing"]
    assert set(lines[1]) <= {"-", " "} and len(lines) == 4
    assert lines[2].split()[0] == "pipeline-static:degree=1" and lines[2].split()[-1] == "NULL"
    rows = list(csv.DictReader(io.StringIO(_sql("--db", str(db), "--csv", sql).stdout)))
    objects = json.loads(_sql("--db", str(db), "--json", sql).stdout)
    assert [r["policy"] for r in rows] == [o["policy"] for o in objects] == ["pipeline-static:degree=1", "trident"]
    assert [int(r["requests"]) for r in rows] == [o["requests"] for o in objects]  # integers stay integers
    assert rows[0]["nothing"] == "" and objects[0]["nothing"] is None
    # nested values are JSON, not Python's repr (a STRUCT was the string "{'k': 1}", a BLOB "b'abc'")
    nested = json.loads(_sql("--db", str(db), "--json", "SELECT [1, 2] AS l, {'k': 1, 'n': {'b': 'ab'::BLOB}} AS s, "
                                                       "'abc'::BLOB AS b, map([1], ['a']) AS m").stdout)
    assert nested == [{"l": [1, 2], "s": {"k": 1, "n": {"b": "6162"}}, "b": "616263", "m": {"1": "a"}}]


def test_empty_results_and_the_row_cap(db: Path):
    empty = _sql("--db", str(db), "SELECT run_id FROM runs WHERE false")
    assert empty.exit_code == 0 and "(no rows)" in empty.stdout
    assert json.loads(_sql("--db", str(db), "--json", "SELECT run_id FROM runs WHERE false").stdout) == []
    capped = _sql("--db", str(db), "--json", "--max-rows", "5", "SELECT * FROM range(100)")
    assert capped.exit_code == 0 and len(json.loads(capped.stdout)) == 5
    assert "--max-rows" in capped.stderr


def test_sql_from_standard_input(db: Path):
    result = runner.invoke(app, ["sql", "--db", str(db), "--json", "-"], input="SELECT count(*) AS n FROM runs\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 2}]


def test_several_statements_say_that_only_the_last_result_is_printed(db: Path):
    result = runner.invoke(app, ["sql", "--db", str(db), "--json", "SELECT 1 AS a; SELECT 2 AS b"])
    assert result.exit_code == 0 and json.loads(result.stdout) == [{"b": 2}], result.output
    assert "2 statements: the result printed is the last one's" in result.stderr
    one = runner.invoke(app, ["sql", "--db", str(db), "SELECT 1 AS a;"])
    assert one.exit_code == 0 and "statements" not in one.stderr


@pytest.mark.parametrize("sql, needle", [
    ("SELEC 1", "Parser Error"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("DELETE FROM runs", "read-only"),
    ("CREATE TABLE t (x INT)", "read-only"),
    ("SELECT * FROM read_csv('/etc/hostname')", "disabled"),
    ("ATTACH '{dir}/other.duckdb' AS other", "disabled"),
    (";", "no SQL statement"),
    ("/* a comment */ ;", "no SQL statement"),
    # DuckDB's advice to SET a setting, which the locked console refuses, is not given (outside test 127)
    ("SELECT " + "+".join(["1"] * 1500), "Max expression depth limit of 1000 exceeded. (settings cannot be changed "
                                         "here: the console's are locked)"),
])  # fmt: skip
def test_bad_or_writing_sql_is_one_line_and_exit_2(db: Path, sql: str, needle: str):
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    line = _error_line(_sql("--db", str(db), sql.format(dir=db.parent)))
    assert not (db.parent / "other.duckdb").exists()
    assert needle in line, line
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # the file is untouched


def test_a_database_with_no_runs_table_is_said_so_and_a_missing_table_of_a_results_database_is_duckdbs(
        tmp_path: Path, db: Path):
    """Outside test 127: an empty DuckDB file said "Catalog Error: Table with name run_summary does not exist!
    Did you mean "duckdb_schemas"?", pointing elsewhere; the Runs page said it is not a results database."""
    import duckdb

    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    line = _error_line(_sql("--db", str(empty), "SELECT * FROM run_summary"))
    assert line.endswith("empty.duckdb: not a results database (no runs table)"), line
    assert "SET" not in line
    line = _error_line(_sql("--db", str(db), "SELECT * FROM run_summry"))
    assert "Catalog Error: Table with name run_summry does not exist" in line, line
    # a function, a type, or the file's own table misspelt: DuckDB's words, whatever the file (outside test 129)
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE foo (x INT)")
    con.close()
    for sql, said in (("SELECT nosuchfunc(1)", "nosuchfunc does not exist"), ("SELECT * FROM fooo", "fooo does not exist"),
                      ("SELECT 1::nosuchtype", "nosuchtype")):
        line = _error_line(_sql("--db", str(other), sql))
        assert said in line and "not a results database" not in line, (sql, line)


def test_missing_database_and_conflicting_options(tmp_path: Path, db: Path):
    line = _error_line(_sql("--db", str(tmp_path / "none.duckdb"), "SELECT 1"))
    assert "no results database at" in line and "trident simulate --db" in line
    assert not (tmp_path / "none.duckdb").exists()
    assert "not both" in _error_line(_sql("--db", str(db), "--csv", "--json", "SELECT 1"))
    assert "no SQL" in _error_line(_sql("--db", str(db), "  "))


@pytest.mark.parametrize("name, text", [("n.json", '{"a": 1}\n'), ("n.csv", "a,b\n1,2\n"), ("n.duckdb", "")])
def test_a_file_that_is_not_a_duckdb_database(tmp_path: Path, name: str, text: str):
    other = tmp_path / name  # DuckDB opens a .json or .csv as data: "Cannot launch in-memory database ..."
    other.write_text(text)
    line = _error_line(_sql("--db", str(other), "SELECT 1"))
    assert line.startswith(f"error: --db {other}: not a DuckDB database ("), line
    assert other.read_text() == text


def test_a_bad_query_from_the_shell_prints_no_traceback(db: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "tridentcore.cli", "sql", "--db", str(db), "SELECT * FROM nope"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: Catalog Error") and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_every_readme_query_runs_on_a_live_run_of_the_tiny_mix(tmp_path: Path):
    """A live bench of the tiny mix on two CPU workers (no --profile, --cluster or --time-scale: the cpu
    profile on 2xcpu at time scale 1 follow from --devices cpu:2) and the same schedule simulated: every
    query of results/README.md, the live ones included, returns rows through `trident sql`."""
    path = tmp_path / "live.duckdb"
    args = ["--mix", "tiny", "--policies", "trident", "--rate", "2", "--duration", "6", "--seed", "1", "--db", str(path),
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    live = subprocess.run([sys.executable, "-m", "tridentcore.cli", "bench", "--backend", "live", "--devices", "cpu:2",
                           *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert live.returncode == 0, live.stdout[-2000:] + live.stderr[-2000:]
    sim = runner.invoke(app, ["bench", "--backend", "sim", "--profile", "cpu", "--cluster", "2xcpu", *args])
    assert sim.exit_code == 0, sim.output
    for sql in readme_queries(live=True):
        result = _sql("--db", str(path), "--json", sql)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout), sql


def test_a_query_whose_result_outgrows_memory_is_stopped_in_seconds(db: Path):
    """Outside test: `SELECT list(range(300000000))` grew `trident sql` to 15 GB for 37 s (DuckDB's
    memory limit does not cover all it allocates for a result, nor the Python objects made of it);
    now the process may grow by SQL_MAX_GROWTH and the query fails with one line saying so."""
    import resource

    # a second bound on the child, should the process's own fail: this test must not take the host down
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (8 * 1024**3, resource.RLIM_INFINITY))

    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tridentcore.cli", "sql", "--db", str(db),
                           "SELECT list(range(300000000)) AS l"], capture_output=True, text=True, timeout=120,
                          preexec_fn=cap)
    took = time.monotonic() - t0
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == ("error: the query needs more than 3 GiB of memory: narrow it, or "
                                                    "run it with `duckdb -readonly` on the file"), done.stderr[-2000:]
    assert took < 25, took  # (loose: the bound is reached in under a second here)


def test_a_long_value_is_cut_in_the_table_and_whole_in_csv(db: Path):
    """Outside test: every row of the aligned table is padded to the widest value, so one 10 MB string
    made 10,000 rows print 100 GB. The table cuts a value at TABLE_CELL_MAX characters (and says so);
    --csv prints it whole."""
    sql = "SELECT CASE WHEN i = 0 THEN repeat('x', 100000) ELSE 'a' END AS s, i FROM range(50) t(i)"
    table = _sql("--db", str(db), sql)
    assert table.exit_code == 0, table.output
    assert max(map(len, table.stdout.splitlines())) < 250 and len(table.stdout) < 15_000
    assert "x" * 199 + "…" in table.stdout
    assert "values over 200 characters are cut in the table; --csv or --json prints them whole" in table.stderr
    whole = _sql("--db", str(db), "--csv", sql)
    assert whole.exit_code == 0 and "x" * 100000 in whole.stdout and "cut" not in whole.stderr


def test_a_large_csv_export_is_written_as_it_comes_in_bounded_memory(db):
    """``--csv`` of a million rows in a process that may grow by 350 MB: the rows were all made into
    Python objects first (about 870 bytes a row; outside test: 3 million rows needed 2 GB and
    failed), and the time spent writing them out was blamed on the query ("ran past 30 s"). Now
    written a chunk at a time; the deadline counts only DuckDB's time."""
    import resource

    def bounded():  # (the child's own data segment; `trident sql` keeps a tighter bound it finds)
        resource.setrlimit(resource.RLIMIT_DATA, (350 * 1024**2, resource.RLIM_INFINITY))

    out = subprocess.run([sys.executable, "-m", "tridentcore.cli", "sql", "--db", str(db), "--csv", "--max-rows",
                          "1000000", "SELECT range AS i, range * 1.5 AS x, 'abc' AS s FROM range(1000000)"],
                         capture_output=True, text=True, preexec_fn=bounded, timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    lines = out.stdout.splitlines()
    assert len(lines) == 1_000_001 and lines[0] == "i,x,s" and lines[-1] == "999999,1499998.5,abc"
    assert not out.stderr.strip()  # exactly max-rows: not cut
    cut = _sql("--db", str(db), "--json", "--max-rows", "3", "SELECT range AS i FROM range(5)")
    assert json.loads(cut.stdout) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert "the first 3 rows: the result has more" in cut.stderr


@pytest.mark.parametrize("fmt", ["--csv", "--json"])
def test_a_query_failing_after_its_first_rows_prints_none_of_them(db: Path, fmt: str):
    """DuckDB can fail after it has handed over rows (here ``error()`` past the first chunks): the rows
    written so far stayed on stdout above the error, a cut CSV file or JSON that does not parse.
    Now ``--csv`` and ``--json`` print once the query has ended, or nothing."""
    sql = ("SELECT i, CASE WHEN i < 150000 THEN 'ok' ELSE error('row ' || i || ' is bad') END AS v "
           "FROM range(200000) t(i)")
    out = subprocess.run([sys.executable, "-m", "tridentcore.cli", "sql", "--db", str(db), fmt, "--max-rows",
                          "1000000", sql], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == "", (out.returncode, out.stdout[:200])
    assert "row 150000 is bad" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_sql_that_opens_with_a_comment_is_sql_not_an_option(db: Path):
    # Click read the argument as an option: "No such option: -- runs\nSELECT ..." (exit 2)
    text = "-- how many runs\nSELECT count(*) AS n FROM runs"
    for args in (["--db", str(db), "--json", text], [text, "--json", "--db", str(db)],
                 ["--db", str(db), "--json", "--", text]):
        result = _sql(*args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [{"n": 2}]
    assert "No such option: --nope" in _error_line(_sql("--db", str(db), "--nope"))
    # an option quoted with its value is not SQL (outside test 122: "the query has no SQL statement")
    assert _error_line(_sql("--db", str(db), "--max-rows 1")).startswith(
        "error: --max-rows: an option inside the SQL argument (quoted with its value?)")
