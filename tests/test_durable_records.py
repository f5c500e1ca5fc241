"""Durable records (issue 12): a server with ``--db`` stores its run as it goes.

The journal on its own (reserve, torn lines, idempotent ingest, recovery of a dead owner's journal,
a live owner's left alone), then real ``trident serve`` processes on emulated GPUs: ``kill -9``
after 20 requests (they are in DuckDB before the kill and the run is ``crashed`` after a
recovery), a reader holding the file through the whole shutdown (exit 1, journal kept, recovered
once the reader is gone), duplicate run ids (stored, or held by a running server) refused at
start, and readers in another process while the server serves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tridentcore.bench.launch import start_server
from tridentcore.core.records import PlacementRow, RequestRow, RunMeta, SpanRow
from tridentcore.store import DuplicateRunError, ResultsStore, open_readonly, query_readonly
from tridentcore.store.journal import Ingester, Journal, end_line, journal_path, pending_journals, rows_lines, start_line
from tridentcore.store.recovery import CRASHED_REASON, STOPPED_REASON, recover

pytestmark = pytest.mark.serial  # timing bounds that need the machine to itself: `make test` runs these alone

ARGS = ["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0.01"]
BODY = {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 4}


def _cli(*args: str):
    from tridentcore.cli import app

    return CliRunner().invoke(app, list(args))


def _one(db, sql: str, params=None):
    return query_readonly(db, sql, params).iloc[0].to_dict()


# ------------------------------------------------------------------------------ the journal on its own
def _meta(run_id: str, status: str = "running") -> RunMeta:
    return RunMeta(run_id=run_id, backend="live", policy="trident", seed=0, profile="h200", cluster="2xH200",
                   mix="live", rate_rps=0.0, duration_s=0.0, slo_scale=3.0, config_json="{}", status=status,
                   created_unix_s=1.0)


def _request(rid: int, state: str = "done") -> RequestRow:
    return RequestRow(rid, "sd3-medium", 512, 512, 1, 4, 0.1 * rid, 10.0 + rid, state, "",
                      1.0 + rid if state == "done" else None)


def _span(rid: int) -> SpanRow:
    return SpanRow(rid, rid, "encode", (rid % 2,), 1, 1, 0.1 * rid, 0.2 * rid, 0.2 * rid + 0.5, 0.5)


def _journal_of_three(db: Path, run_id: str = "j1") -> Journal:
    journal = Journal.reserve(db, run_id)
    journal.append([start_line(_meta(run_id), 2)])
    journal.append(rows_lines({"requests": [_request(0), _request(1)], "stage_spans": [_span(0), _span(1)],
                               "placements": [PlacementRow(0.0, 0, "sd3-medium", "encode", "place", 10.0)]},
                              [_request(2, "unfinished")], 2.0, 0.5))
    return journal


def test_reserving_a_run_id_is_exclusive_and_a_live_journal_is_left_alone(tmp_path):
    db = tmp_path / "r.duckdb"
    journal = _journal_of_three(db)
    with pytest.raises(DuplicateRunError, match="being served by another process"):
        Journal.reserve(db, "j1")
    assert [r.outcome for r in recover(db)] == ["live"]  # its owner (this process) holds it
    assert not db.exists()
    journal.close()  # as if its process died: the lock goes with it
    with pytest.raises(DuplicateRunError, match="awaits recovery"):
        Journal.reserve(db, "j1")


def test_a_dead_servers_journal_is_recovered_as_crashed(tmp_path):
    db = tmp_path / "r.duckdb"
    journal = _journal_of_three(db)
    with open(journal.path, "ab") as f:
        f.write(b'{"seq": 9, "kind": "rows", "tables": {"requests"')  # torn: died mid-write
    journal.close()
    (got,) = recover(db)
    assert (got.outcome, got.status, got.run_id) == ("ingested", "crashed", "j1")
    assert not pending_journals(db) and not journal.path.parent.exists()
    run = _one(db, "SELECT status, duration_s, wall_s, rate_rps FROM runs WHERE run_id = 'j1'")
    assert run["status"] == "crashed" and run["duration_s"] == pytest.approx(2.0) and run["wall_s"] == 0.5
    assert run["rate_rps"] == pytest.approx(3 / 2.0)  # three requests accepted in 2 s
    reqs = query_readonly(db, "SELECT request_id, state, reason FROM requests ORDER BY request_id")
    assert list(reqs.state) == ["done", "done", "unfinished"] and "crashed" in reqs.reason[2]
    counts = _one(db, "SELECT (SELECT count(*) FROM stage_spans) AS spans, (SELECT count(*) FROM placements) AS pl, "
                      "(SELECT count(*) FROM gpu_samples) AS samples, (SELECT max(busy) FROM gpu_samples) AS busy")
    assert counts["spans"] == 2 and counts["pl"] == 1 and counts["samples"] == 2 and counts["busy"] > 0


def test_a_journal_whose_tail_was_lost_behind_the_store_is_still_closed_as_crashed(tmp_path):
    """The machine went down: the store holds a line the journal lost (written, ingested, never on
    disk). The recovery's end line is numbered past what the store holds, so the run is closed as
    crashed, not left running for good with its journal gone."""
    db = tmp_path / "r.duckdb"
    journal = _journal_of_three(db)
    journal.append(rows_lines({"requests": [_request(3)]}, [], 3.0, 1.0))
    assert Ingester(ResultsStore(db), journal.path).ingest() == 1 + 2 + 2 + 1 + 1
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[:data.rstrip(b"\n").rfind(b"\n") + 1])  # the last line lost
    journal.close()
    (got,) = recover(db)
    assert (got.outcome, got.status) == ("ingested", "crashed")
    assert _one(db, "SELECT status FROM runs")["status"] == "crashed" and not pending_journals(db)
    # a journal that lost its end line after the store took it: the stored ending stands
    journal = _journal_of_three(db, "j2")
    journal.append([end_line(_meta("j2", "done"), {"gpu_samples": []})])
    Ingester(ResultsStore(db), journal.path).ingest()
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[:data.rstrip(b"\n").rfind(b"\n") + 1])
    journal.close()
    (got,) = recover(db)
    assert (got.outcome, got.status) == ("ingested", "done")
    assert _one(db, "SELECT status FROM runs WHERE run_id = 'j2'")["status"] == "done"


def test_ingest_is_idempotent_and_catches_up(tmp_path):
    db = tmp_path / "r.duckdb"
    journal = _journal_of_three(db)
    first = Ingester(ResultsStore(db), journal.path)
    assert first.ingest() == 1 + 2 + 2 + 1  # the runs row, requests, spans, the placement
    journal.append(rows_lines({"requests": [_request(3)]}, [], 3.0, 1.0))
    assert Ingester(ResultsStore(db), journal.path).ingest() == 1  # a fresh one (a recovery) adds only the new line
    assert first.ingest() == 0
    journal.append([end_line(_meta("j1", "done"), {"gpu_samples": []})])
    assert first.ingest() == 0 and not first.pending()
    journal.remove()
    assert _one(db, "SELECT status FROM runs")["status"] == "done"
    assert _one(db, "SELECT count(*) AS n FROM requests")["n"] == 3
    assert query_readonly(db, "SELECT seq FROM journal_ingests ORDER BY seq").seq.tolist() == [2, 3, 4]


def test_recover_names_a_run_left_running_without_a_journal(tmp_path):
    """A run stored as ``running`` whose journal is gone (a crashed server's, deleted before any
    recovery): ``runs recover`` read "no journals to recover" and nothing said why the run stayed
    ``running`` for good (outside test). It is named; its rows stand."""
    db = tmp_path / "r.duckdb"
    journal = _journal_of_three(db, "lost")
    Ingester(ResultsStore(db), journal.path).ingest()
    journal.remove()  # (as `rm` would: the run's row says running, and no journal is left)
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0 and out.stdout.startswith("no journals to recover"), out.output
    assert out.stderr.strip() == (f"note: stored as running with no journal beside {db}: lost (its server may still run, "
                                  "or its journal was deleted: nothing here can close it; its rows stored so far stand)")
    assert _one(db, "SELECT status FROM runs")["status"] == "running"


def test_a_database_given_through_a_link_is_journaled_beside_the_file_itself(tmp_path):
    """``--db link.duckdb`` (a symbolic link to ``real/r.duckdb``): the journal went beside the link,
    and ``runs recover --db real/r.duckdb`` said "no journals to recover" while ``runs list`` said
    nothing could close the run (outside test). The journal is beside the file, whichever name
    a command is given."""
    real = tmp_path / "real" / "r.duckdb"
    real.parent.mkdir()
    ResultsStore(real).write_run(_meta("other", "done"), [_request(9)], [])
    link = tmp_path / "link.duckdb"
    link.symlink_to(real)
    journal = _journal_of_three(link, "linked")
    journal.close()  # (a dead server's: its lock released)
    assert journal.path.parent == tmp_path / "real" / "r.duckdb.journal"
    assert [p.name for p in pending_journals(real)] == [p.name for p in pending_journals(link)] == ["linked.jsonl"]
    out = _cli("runs", "recover", "--db", str(real))
    assert out.exit_code == 0 and "recovered run linked" in out.output, out.output
    assert _one(real, "SELECT status FROM runs WHERE run_id = 'linked'")["status"] == "crashed"


def _damaged_journal(db: Path, run_id: str, damage) -> Path:
    """A dead server's journal of three lines plus one more request (``_request(3)``), then ``damage``
    (lines -> lines) applied to its text."""
    journal = _journal_of_three(db, run_id)
    journal.append(rows_lines({"requests": [_request(3)]}, [], 3.0, 1.0))
    journal.close()
    lines = journal.path.read_text().splitlines(keepends=True)
    journal.path.write_text("".join(damage(lines)))
    return journal.path


@pytest.mark.parametrize("damage, kept", [
    (lambda ls: [*ls, "[1,2]\n"], [0, 1, 3]),  # valid JSON, not a journal line: was a traceback
    (lambda ls: [*ls, "null\n"], [0, 1, 3]),
    (lambda ls: [*ls, "\0\xff garbage\n"], [0, 1, 3]),  # garbage at the end: the whole run was refused
    (lambda ls: [ls[0], ls[1], "X" + ls[2], ls[3]], [3]),  # a line in the middle broken: its rows only
    (lambda ls: [*ls, ls[-1]], [0, 1, 3]),  # the last line twice: its rows were stored twice
    (lambda ls: ["42\n", *ls[1:]], [0, 1, 3]),  # the open line gone: the start line names the run
    # a line whose seq is damaged (huge) before good ones: every line stored, the run still closed
    (lambda ls: [ls[0], ls[1], ls[2].replace('"seq":2,', '"seq":999999999,'), "X\n", ls[3]], [0, 1, 3]),
    # (a second outside test) a seq past int64 failed the whole transaction; so did one line whose table
    # lacked a column (ArrowInvalid); a line nested 100,000 deep was a RecursionError traceback
    (lambda ls: [*ls[:3], ls[3].replace('"seq":3,', '"seq":' + "9" * 30 + ","), ls[3]], [0, 1, 3]),
    (lambda ls: [*ls[:2], ls[2].replace('"model":', '"modelx":', 1), ls[3]], [3]),
    (lambda ls: [*ls, "[" * 100_000 + "]" * 100_000 + "\n"], [0, 1, 3]),
])
def test_a_damaged_journal_is_recovered_line_by_line_and_kept(tmp_path, damage, kept):
    """Outside test: a journal line that was JSON but not an object (``[1,2]``, ``null``, ``42``)
    crashed `runs recover` and `serve --db` with a traceback (AttributeError); any damaged line kept
    the whole run out of the store (it stayed ``running``); a line written twice stored its rows
    twice. Every good line is stored now, the damaged ones named, and the journal kept for a look."""
    db = tmp_path / "d.duckdb"
    path = _damaged_journal(db, "dmg", damage)
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0, out.output
    assert "recovered run dmg" in out.output and "status crashed" in out.output
    assert "damaged line" in out.output and "left out" in out.output and ".damaged" in out.output
    assert not pending_journals(db) and path.with_name(path.name + ".damaged").exists()
    assert _one(db, "SELECT status FROM runs WHERE run_id = 'dmg'")["status"] == "crashed"
    got = query_readonly(db, "SELECT request_id, state FROM requests WHERE state = 'done' ORDER BY request_id")
    assert got.request_id.tolist() == kept


def test_a_journal_that_lost_its_start_line_is_stored_when_the_store_has_the_run(tmp_path):
    """Outside test: a journal without its start line (cut, or damaged) was taken for a server that
    never served: deleted with its rows, the run left `running` for good. The store's row of the run
    stands in for it; without one the journal is kept, not deleted. A last line whole but for its
    newline was dropped as torn."""
    db = tmp_path / "s.duckdb"
    journal = _journal_of_three(db, "nostart")
    Ingester(ResultsStore(db), journal.path).ingest()  # the start is in the store (running)
    journal.append(rows_lines({"requests": [_request(3)]}, [], 3.0, 1.0))
    journal.close()
    lines = journal.path.read_text().splitlines(keepends=True)
    journal.path.write_text("".join([lines[0], "X\n", *lines[2:]]).rstrip("\n"))  # start gone, no last newline
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0 and "recovered run nostart" in out.output and "status crashed" in out.output, out.output
    got = query_readonly(db, "SELECT request_id FROM requests WHERE state = 'done' ORDER BY request_id")
    assert got.request_id.tolist() == [0, 1, 3]  # request 3's line had lost only its newline
    # two lines swapped: each stored (they were left out as damaged)
    path = _damaged_journal(tmp_path / "swap.duckdb", "swapped", lambda ls: [ls[0], ls[1], ls[3], ls[2]])
    out = _cli("runs", "recover", "--db", str(tmp_path / "swap.duckdb"))
    assert out.exit_code == 0 and "damaged" not in out.output and not path.exists(), out.output
    assert _one(tmp_path / "swap.duckdb", "SELECT count(*) FILTER (WHERE state = 'done') AS n FROM requests")["n"] == 3
    # an empty journal of a run the store holds: the run is closed too
    journal = _journal_of_three(db, "emptied")
    Ingester(ResultsStore(db), journal.path).ingest()
    journal.close()
    journal.path.write_text("")
    before = _one(db, "SELECT duration_s, rate_rps, wall_s FROM runs WHERE run_id = 'emptied'")
    assert before["duration_s"] == pytest.approx(2.0) and before["wall_s"] == pytest.approx(0.5)
    assert "recovered run emptied" in _cli("runs", "recover", "--db", str(db)).output
    # its duration, wall time and rate as the store had them (outside test 120: set to 0 s and 0 req/s)
    after = _one(db, "SELECT status, duration_s, rate_rps, wall_s FROM runs WHERE run_id = 'emptied'")
    assert after == {"status": "crashed", **before}, (after, before)
    # no start line and the store knows nothing of the run: kept, said, not deleted
    path = _damaged_journal(tmp_path / "other.duckdb", "lost", lambda ls: [ls[0], *ls[2:]])
    out = _cli("runs", "recover", "--db", str(tmp_path / "other.duckdb"))
    assert out.exit_code == 1 and "its start line is lost" in out.output and "cannot be stored" in out.output
    assert path.with_name(path.name + ".damaged").exists() and not pending_journals(tmp_path / "other.duckdb")


def test_a_journal_another_recovery_holds_is_not_said_to_be_served(tmp_path):
    """Outside test: of two `runs recover` at once, the one that lost the lock said `left run ...: its
    server is running (owned by pid N)`, N the dead server's."""
    from tridentcore.store.journal import try_lock

    db = tmp_path / "b.duckdb"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = _damaged_journal(db, "raced", lambda ls: [ls[0].replace(f'"pid": {os.getpid()}', f'"pid": {dead.pid}'),
                                                       *ls[1:]])
    assert f'"pid": {dead.pid}' in path.read_text()
    fd = os.open(path, os.O_RDWR)  # another recovery, under way
    try:
        assert try_lock(fd)
        out = _cli("runs", "recover", "--db", str(db))
    finally:
        os.close(fd)
    assert out.exit_code == 0 and "its server is running" not in out.output
    assert f"left run raced: another process is recovering it (its server, pid {dead.pid}" in out.output, out.output
    assert "recovered run raced" in _cli("runs", "recover", "--db", str(db)).output


def test_recovery_names_what_is_not_a_journal_and_goes_on_with_the_rest(tmp_path):
    """Outside test: a folder named like a journal stopped the whole recovery with a bare
    `[Errno 21] Is a directory` (the real journal after it was left `running`); a dangling link was
    reported as `recovered run zz: 0 rows (0 requests), status `."""
    db = tmp_path / "n.duckdb"
    _damaged_journal(db, "real", lambda ls: ls)
    folder = db.with_name(db.name + ".journal")
    (folder / "00.jsonl").mkdir()
    (folder / "zz.jsonl").symlink_to(tmp_path / "nowhere")
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 1  # two could not be recovered (they stay)
    assert "could not recover run 00" in out.output and "a folder, not a journal" in out.output
    assert "could not recover run zz" in out.output and "which does not exist" in out.output
    assert "recovered run real: 10 rows (4 requests), status crashed" in out.output, out.output
    assert _one(db, "SELECT status FROM runs WHERE run_id = 'real'")["status"] == "crashed"


# ------------------------------------------------------------------------------ real servers
def _serve(n: int, url: str) -> list[float]:
    """``n`` requests, one after another; the monotonic time each answer came back."""
    done = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n):
            assert client.post("/v1/images/generations", json={**BODY, "seed": i}).status_code == 200
            done.append(time.monotonic())
    return done


def _kill9(server) -> None:
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    server.stop()  # only cleans up: the process is gone


def test_kill_9_loses_nothing_that_completed_a_second_before(tmp_path):
    db = tmp_path / "k.duckdb"
    server = start_server([*ARGS, "--db", str(db), "--run-id", "killed"])
    try:
        _serve(20, server.url)
        time.sleep(1.5)
        # already in DuckDB while it serves (the ingester runs every second), and readable meanwhile
        before = _one(db, "SELECT (SELECT status FROM runs WHERE run_id = 'killed') AS status, "
                          "(SELECT count(*) FROM requests WHERE run_id = 'killed' AND state = 'done') AS done, "
                          "(SELECT count(*) FROM stage_spans WHERE run_id = 'killed') AS spans")
    finally:
        _kill9(server)
    assert before == {"status": "running", "done": 20, "spans": 60}
    assert [p.name for p in pending_journals(db)] == ["killed.jsonl"]
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0 and "recovered run killed" in out.output and "status crashed" in out.output
    assert not pending_journals(db)
    after = _one(db, "SELECT status, duration_s FROM runs WHERE run_id = 'killed'")
    assert after["status"] == "crashed" and after["duration_s"] > 0
    got = _one(db, "SELECT count(*) FILTER (WHERE state = 'done') AS done, count(*) AS n, "
                   "count(DISTINCT job_id) FILTER (WHERE job_id LIKE 'gen-%') AS jobs FROM requests")
    assert got == {"done": 20, "n": 20, "jobs": 20}  # each row names its generation, after a crash too
    assert _one(db, "SELECT count(*) AS n FROM stage_spans")["n"] == 60
    assert _one(db, "SELECT count(*) AS n FROM gpu_samples")["n"] > 0
    assert _cli("runs", "recover", "--db", str(db)).output.startswith("no journals")


def _answered_then_killed(db, run_id: str, ask) -> dict:
    """Serve, ``ask(client)`` (the requests, each answered), ``kill -9`` the moment the last answer
    arrives, recover: the run's requests, done and all (a request accepted and not ended is stored
    ``unfinished``)."""
    server = start_server([*ARGS, "--db", str(db), "--run-id", run_id])
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            ask(client)
            _kill9(server)
    finally:
        if server.proc.poll() is None:
            _kill9(server)
    assert f"recovered run {run_id}" in _cli("runs", "recover", "--db", str(db)).output
    return _one(db, "SELECT count(*) FILTER (WHERE state = 'done') AS done, count(*) AS n FROM requests "
                    "WHERE run_id = ?", [run_id])


def test_a_request_answered_is_in_the_journal_before_its_answer_so_a_kill_9_right_after_loses_none(tmp_path):
    """Outside test: a request answered in the half second before a ``kill -9`` was stored
    ``unfinished`` (the journal was written every half second, the answer sent before). The answer now
    waits for the request's row to reach the journal: killed the moment the last answer arrives, every
    answered request is stored done. Every way of asking: the call that waits, a submitted request
    whose result is fetched, one whose status is polled until done (an outside test found the status
    answered before the row), submissions answered 202 (each stored, unfinished), and the list of
    requests polled until it says they are done."""
    def waiting(client):
        for i in range(6):
            assert client.post("/v1/images/generations", json={**BODY, "seed": i}).status_code == 200

    def polled(client):
        for i in range(6):
            job = client.post("/v1/requests", json={**BODY, "seed": i}).json()["id"]
            deadline = time.monotonic() + 30
            while (got := client.get(f"/v1/requests/{job}/result")).status_code == 409:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            assert got.status_code == 200, got.text

    def status(client):
        for i in range(6):
            job = client.post("/v1/requests", json={**BODY, "seed": i}).json()["id"]
            deadline = time.monotonic() + 30
            while client.get(f"/v1/requests/{job}").json()["state"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.005)

    def submitted(client):
        for i in range(6):
            assert client.post("/v1/requests", json={**BODY, "seed": i, "steps": 100}).status_code == 202

    def listed(client):  # submitted, then the list polled until it says all six are done
        for i in range(6):
            assert client.post("/v1/requests", json={**BODY, "seed": i}).status_code == 202
        deadline = time.monotonic() + 30
        while [j["state"] for j in client.get("/v1/requests").json()["data"]] != ["done"] * 6:
            assert time.monotonic() < deadline
            time.sleep(0.005)

    db = tmp_path / "right.duckdb"
    assert _answered_then_killed(db, "waiting", waiting) == {"done": 6, "n": 6}
    assert _answered_then_killed(db, "polled", polled) == {"done": 6, "n": 6}
    assert _answered_then_killed(db, "status", status) == {"done": 6, "n": 6}
    assert _answered_then_killed(db, "submitted", submitted)["n"] == 6  # (done or unfinished)
    assert _answered_then_killed(db, "listed", listed) == {"done": 6, "n": 6}  # (the list waited for none)


def test_a_journal_deleted_while_it_serves_is_written_again_and_a_kill_9_loses_nothing(tmp_path):
    """The journal folder removed while the server ran (``rm -rf FILE.journal``): the server went on
    writing into the deleted file, nothing more reached DuckDB, and after a ``kill -9`` no journal was
    left to recover: the run stayed ``running`` for good and the requests answered since were in no
    file (outside test). The journal is written again at its name before its next line."""
    import shutil

    db = tmp_path / "d.duckdb"
    server = start_server([*ARGS, "--db", str(db), "--run-id", "deleted"])
    try:
        _serve(5, server.url)
        time.sleep(1.5)
        shutil.rmtree(f"{db}.journal")
        _serve(5, server.url)
        time.sleep(2.0)
        assert [p.name for p in pending_journals(db)] == ["deleted.jsonl"]  # back at its name
        before = _one(db, "SELECT count(*) AS done FROM requests WHERE run_id = 'deleted' AND state = 'done'")
    finally:
        _kill9(server)
    assert before == {"done": 10}  # the store went on being written
    # a dead server's run read as live (`running`, no word of a recovery; outside test): now said
    gone = (f"note: stored as running, but its server is gone (its journal is held by no process): deleted; "
            f"`trident runs recover --db {db}` stores what the journal holds and closes it (as crashed, unless its "
            "journal says how it ended)")
    for args in (("list",), ("list", "--limit", "1"), ("show", "deleted")):
        listed = _cli("runs", *args, "--db", str(db))
        assert listed.exit_code == 0 and listed.stderr.strip() == gone, (args, listed.output)
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0 and "recovered run deleted" in out.output, out.output
    got = _one(db, "SELECT (SELECT status FROM runs) AS status, count(*) FILTER (WHERE state = 'done') AS done, "
                   "count(*) AS n FROM requests")
    assert got == {"status": "crashed", "done": 10, "n": 10}


def test_a_database_moved_away_while_it_serves_is_not_split_and_the_run_is_recovered_whole(tmp_path):
    """The database moved away while the server ran (a weekly rotation): the server made a new file
    at the path and put the rest of the run's rows there without its ``runs`` row; at the stop "the
    journal ends a run it never started", and ``runs recover`` failed so for ever (outside test).
    Now nothing more is written at the path (no new file); the stop says why and keeps the journal,
    which stores the whole run wherever the operator points a recovery."""
    db = tmp_path / "r.duckdb"
    moved = tmp_path / "week1.duckdb"
    server = start_server([*ARGS, "--db", str(db), "--run-id", "rotated"])
    try:
        _serve(5, server.url)
        time.sleep(1.5)
        assert _one(db, "SELECT count(*) AS n FROM requests")["n"] == 5
        os.rename(db, moved)
        _serve(5, server.url)
        time.sleep(2.0)
        assert not db.exists()  # no second file with half a run
        os.kill(server.pid, signal.SIGTERM)
        server.proc.wait(60)
        log = server.log()
    finally:
        code = server.stop()
    assert code == 1
    assert "was deleted after this run's rows were first stored there" in log, log[-2000:]
    assert _one(moved, "SELECT count(*) AS n FROM requests")["n"] == 5  # the rotated file: as it was
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0 and "recovered run rotated" in out.output, out.output
    got = _one(db, "SELECT (SELECT status FROM runs) AS status, count(*) FILTER (WHERE state = 'done') AS done "
                   "FROM requests")
    assert got == {"status": "done", "done": 10}


def test_the_next_start_recovers_a_crash_and_readers_can_open_the_file_while_it_serves(tmp_path):
    db = tmp_path / "n.duckdb"
    first = start_server([*ARGS, "--db", str(db), "--run-id", "first"])
    try:
        _serve(5, first.url)
        time.sleep(0.2)  # completed, but maybe not yet even journaled: the next start keeps what the journal has
    finally:
        _kill9(first)
    second = start_server([*ARGS, "--db", str(db), "--run-id", "second"])
    try:
        assert not any(p.name == "first.jsonl" for p in pending_journals(db))
        assert _one(db, "SELECT status FROM runs WHERE run_id = 'first'")["status"] == "crashed"
        # another process opens the file read-only over and over while this server serves and ingests
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER, str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        try:
            _serve(20, second.url)
        finally:
            out, _ = reader.communicate(timeout=60)
        opened = json.loads(out.strip().splitlines()[-1])
        assert opened["failed"] == 0 and opened["opened"] >= 10, out
        assert max(opened["requests_seen"]) > 0  # rows of this run appeared while it served
        listed = _cli("runs", "list", "--db", str(db))  # a live server's run: no "server is gone" note
        assert listed.exit_code == 0 and "second" in listed.stdout and "gone" not in listed.stderr, listed.output
    finally:
        assert second.stop() == 0
    runs = query_readonly(db, "SELECT run_id, status FROM runs ORDER BY run_id")
    assert dict(zip(runs.run_id, runs.status)) == {"first": "crashed", "second": "done"}
    assert _one(db, "SELECT count(*) AS n FROM requests WHERE run_id = 'second'")["n"] == 20
    assert not pending_journals(db)


# opens the database read-only 20 times, 0.25 s apart (2 s lock wait each): how many opened
_READER = """
import json, sys, time
from tridentcore.store import open_readonly
opened = failed = 0
seen = []
for _ in range(20):
    try:
        con = open_readonly(sys.argv[1], wait_s=2.0)
        seen.append(con.execute("SELECT count(*) FROM requests WHERE run_id = 'second'").fetchone()[0])
        con.close()
        opened += 1
    except Exception as exc:
        print(type(exc).__name__, exc)
        failed += 1
    time.sleep(0.25)
print(json.dumps({"opened": opened, "failed": failed, "requests_seen": seen}))
"""


def test_a_reader_through_shutdown_exits_nonzero_and_keeps_the_journal(tmp_path):
    db = tmp_path / "h.duckdb"
    server = start_server([*ARGS, "--db", str(db), "--run-id", "held", "--db-wait", "1"])
    try:
        _serve(10, server.url)
        time.sleep(1.5)
        con = open_readonly(db)  # held through the whole shutdown
        try:
            code = server.proc.send_signal(signal.SIGTERM) or server.proc.wait(60)
            log = server.log()
        finally:
            con.close()
    finally:
        server.stop()
    assert code == 1, log
    assert "could not write run held" in log and "trident runs recover" in log
    # the lock's message whole (outside test 96: cut at 300 characters, mid-word, in the error and the warning)
    whys = re.findall(r"could not write run held to \S+ \((.*?)\); its rows are in", log)
    assert whys and all("let go:" in why and why.endswith(("with it open", "makes the other wait")) for why in whys), log
    assert [p.name for p in pending_journals(db)] == ["held.jsonl"]
    assert _one(db, "SELECT status FROM runs")["status"] == "running"  # the end never reached DuckDB
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0 and "status done" in out.output, out.output
    run = _one(db, "SELECT status, (SELECT count(*) FROM requests) AS n, (SELECT count(*) FROM gpu_samples) AS g "
                   "FROM runs")
    assert run["status"] == "done" and run["n"] == 10 and run["g"] > 0
    assert not pending_journals(db)


def test_a_duplicate_run_id_is_refused_at_start(tmp_path):
    import tempfile

    db = tmp_path / "d.duckdb"
    before = tempfile.gettempdir()
    server = start_server([*ARGS, "--db", str(db), "--run-id", "dup"])
    try:
        _serve(2, server.url)
        held = _cli("serve", *ARGS, "--db", str(db), "--run-id", "dup")
        assert held.exit_code == 2 and "being served by another process" in held.output, held.output
        assert journal_path(db, "dup").exists()  # the refused one did not take the live server's journal
    finally:
        assert server.stop() == 0
    stored = _cli("serve", *ARGS, "--db", str(db), "--run-id", "dup")
    assert stored.exit_code == 2 and "already in" in stored.output, stored.output
    # run inside this process, the command left its temporary directory as it was (it kept its own
    # folder there: a later test's temporary files went into it, too deep for a socket's path; CI)
    assert tempfile.gettempdir() == before
    assert not pending_journals(db)
    assert _one(db, "SELECT count(*) AS n FROM runs")["n"] == 1


def test_a_numbered_run_id_takes_the_next_number_so_a_restart_after_a_crash_is_not_refused(tmp_path):
    """A supervisor restarts a crashed server with the same command line: with ``--run-id prod`` the
    restart was refused (the crashed run is stored) and crash-looped; ``prod-{n}`` numbers each start."""
    db = tmp_path / "p.duckdb"
    numbered = [*ARGS, "--db", str(db), "--run-id", "prod-{n}"]
    first = start_server(numbered)
    try:
        _serve(3, first.url)
    finally:
        _kill9(first)
    again = start_server(numbered)  # recovers prod-1 (crashed), serves as prod-2
    try:
        beside = start_server(numbered)  # prod-2's journal is held: prod-3
        try:
            _serve(2, again.url)
            _serve(1, beside.url)
        finally:
            assert beside.stop() == 0
    finally:
        assert again.stop() == 0
    runs = query_readonly(db, "SELECT run_id, status, (SELECT count(*) FROM requests q WHERE q.run_id = r.run_id) AS n "
                              "FROM runs r ORDER BY run_id")
    assert list(zip(runs.run_id, runs.status, runs.n)) == [("prod-1", "crashed", 3), ("prod-2", "done", 2),
                                                            ("prod-3", "done", 1)]
    assert not pending_journals(db)
    twice = _cli("serve", *ARGS, "--db", str(db), "--run-id", "a-{n}-{n}")
    assert twice.exit_code == 2 and "at most one {n}" in twice.output, twice.output
    # ids the journal cannot be named after (outside test: a raw ENAMETOOLONG), or that split a line
    for bad, said in (("運行" * 14 + "-{n}", "bytes once %-encoded"), ("x" * 230, "bytes once %-encoded"),
                      ("line1\n{n}", "control characters"),
                      ("prod-{N}", "'{N}' is not a placeholder"), ("prod-{ n }", "'{ n }' is not a placeholder"),
                      ("prod-{n}-{seq}", "'{seq}' is not a placeholder")):
        refused = _cli("serve", *ARGS, "--db", str(db), "--run-id", bad)
        assert refused.exit_code == 2 and said in refused.output and "Errno" not in refused.output, refused.output
    assert not pending_journals(db)


def test_a_shutdown_that_cuts_requests_short_is_interrupted(tmp_path):
    db = tmp_path / "i.duckdb"
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "1",
                           "--drain-timeout", "0", "--db", str(db), "--run-id", "cut"])
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post("/v1/requests", json={**BODY, "size": "1024x1024", "steps": 28}).status_code == 202
            time.sleep(0.3)
    finally:
        assert server.stop() == 0
    run = _one(db, "SELECT status, (SELECT list(state) FROM requests) AS states FROM runs")
    assert run["status"] == "interrupted" and list(run["states"]) == ["failed"], run
    assert not pending_journals(db)


def _mount_tmpfs(where: Path, mib: int) -> None:
    where.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if got.returncode != 0:
        pytest.skip(f"a full disk needs a small file system; cannot mount a tmpfs here: {got.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(MIB)``: a tmpfs of that size at ``tmp_path / "small"``, unmounted (lazily: a file
    still open in this process does not keep it) when the test ends."""
    mounted = []

    def mount(mib: int) -> Path:
        where = tmp_path / "small"
        _mount_tmpfs(where, mib)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> Path:
    """A file that takes every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        with pytest.raises(OSError, match="No space left"):
            while True:
                f.write(b"\0" * 65536)
    with open(filler, "ab", buffering=0) as f:  # the last partial chunk's room too
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


def test_a_full_disk_refuses_new_work_and_loses_no_accepted_request(tmp_path):
    """Outside test: with the journal's disk full the server answered 202 to 300 more requests, ran
    them, said `/healthz` ok, and its SIGTERM exit lost their rows (1,500 acknowledged, 1,200 stored),
    no count given. Now: while the journal cannot be written new requests are refused (503
    records_unwritable, /healthz 503 saying why), accepted again once it can; a stop on a full disk
    waits up to --db-wait for room. Every request answered 200 is stored, once."""
    small = tmp_path / "small"
    _mount_tmpfs(small, 24)
    db = small / "f.duckdb"
    server = None
    try:
        server = start_server([*ARGS, "--db", str(db), "--run-id", "full", "--db-wait", "20"])
        ok = 0
        with httpx.Client(base_url=server.url, timeout=60) as client:
            def generate(i: int) -> httpx.Response:
                return client.post("/v1/images/generations", json={**BODY, "seed": i, "response_format": "url"})

            for i in range(5):
                assert generate(i).status_code == 200
                ok += 1
            time.sleep(1.5)  # in DuckDB (its file has its size before the disk fills)
            filler = _fill(small)
            refused = None
            for i in range(5, 400):  # accepted until the journal's last page is full, then refused
                got = generate(i)
                if got.status_code == 200:
                    ok += 1
                    continue
                refused = got
                break
            assert refused is not None and refused.status_code == 503, server.log()[-3000:]
            body = refused.json()["error"]
            assert body["code"] == "records_unwritable" and "No space left on device" in body["message"]
            assert refused.headers["Retry-After"] == "5"
            health = client.get("/healthz")
            assert health.status_code == 503 and "cannot be written" in health.json()["records"]
            time.sleep(2.5)  # five flushes fail meanwhile
            filler.unlink()  # room again: accepted again at the next flush
            deadline = time.monotonic() + 15
            while generate(1000).status_code != 200:
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.3)
            ok += 1
            assert client.get("/healthz").status_code == 200
            for i in range(3):
                assert generate(2000 + i).status_code == 200
                ok += 1
            filler = _fill(small)  # full again as it stops: the stop waits for room
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        assert server.proc.poll() is None, server.log()[-3000:]  # waiting for room (--db-wait 20)
        filler.unlink()
        code = server.proc.wait(60)
        log = server.log()
        assert code == 0, log[-3000:]
        assert "trying again" in log and "written again after" in log
        # logged once while it lasts, not at every flush (twice a second: 7,200 lines an hour)
        assert log.count("could not write the journal") == 1, log[-3000:]
        server.stop()
        run = _one(db, "SELECT status, config_json FROM runs WHERE run_id = 'full'")
        assert run["status"] == "done"
        assert json.loads(run["config_json"])["refused"]["records_unwritable"] >= 1
        got = _one(db, "SELECT count(*) AS n, count(DISTINCT request_id) AS ids, count(*) FILTER (WHERE state = 'done') "
                       "AS done FROM requests")
        assert got == {"n": ok, "ids": ok, "done": ok}, (got, ok)
        assert not pending_journals(db)
        # a server started on the full disk: one line, and no empty journal folder left behind
        filler = _fill(small)
        other = small / "g.duckdb"
        started = subprocess.run([sys.executable, "-m", "tridentcore.cli", "serve", *ARGS, "--db", str(other),
                                  "--port", "0"], capture_output=True, text=True, timeout=120)
        assert started.returncode == 2 and "No space left on device" in started.stderr, started.stderr[-2000:]
        assert not other.with_name(other.name + ".journal").exists()
        filler.unlink()
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)  # (-l: a file still open here does not keep it)


def test_a_crashed_run_keeps_its_refusal_counts(tmp_path):
    """Outside test: a run recovered after `kill -9` kept the `config_json` of its start: the 503s and
    429s it had answered were gone (`refused` {}), its clock read 0.4 s of a 9.6 s run."""
    db = tmp_path / "c.duckdb"
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "1",
                           "--max-queued", "1", "--db", str(db), "--run-id", "refusing"])
    try:
        time.sleep(1.2)  # the refusals a second into the run: the clock the journal keeps with them is past 1 s
        with httpx.Client(base_url=server.url, timeout=60) as client:
            codes = [client.post("/v1/requests", json={**BODY, "size": "1024x1024", "steps": 28, "seed": i}).status_code
                     for i in range(6)]
        time.sleep(1.5)  # journaled (a change of the counts is a line)
    finally:
        _kill9(server)
    assert codes.count(429) >= 3 and set(codes) <= {202, 429}, codes
    out = _cli("runs", "recover", "--db", str(db))
    assert out.exit_code == 0 and "status crashed" in out.output, out.output
    config = json.loads(_one(db, "SELECT config_json FROM runs WHERE run_id = 'refusing'")["config_json"])
    assert config["refused"] == {"queue_full": codes.count(429)}
    assert config["clock"]["wall_s"] > 1.0


def test_a_running_runs_row_follows_its_clock_rate_and_refusals(tmp_path):
    """Outside test 98: `runs show` of a run still serving read its start's row: "0 req/s for 0.52 s",
    wall 0.52 s and no refusals, though the server had answered 53 429s, 40 s in."""
    db = tmp_path / "r.duckdb"
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "1",
                           "--max-queued", "1", "--db", str(db), "--run-id", "serving"])
    try:
        time.sleep(1.2)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            codes = [client.post("/v1/requests", json={**BODY, "size": "1024x1024", "steps": 28, "seed": i}).status_code
                     for i in range(6)]
        time.sleep(2.0)  # journaled and ingested (about every second)
        run = _one(db, "SELECT status, duration_s, wall_s, rate_rps, config_json FROM runs WHERE run_id = 'serving'")
        shown = _cli("runs", "show", "serving", "--db", str(db))
    finally:
        assert server.stop() == 0
    assert codes.count(429) >= 3 and set(codes) <= {202, 429}, codes
    assert run["status"] == "running" and run["duration_s"] > 2.0 and run["wall_s"] > 2.0, run
    assert run["rate_rps"] == pytest.approx(codes.count(202) / run["duration_s"], rel=0.2), run
    assert json.loads(run["config_json"])["refused"] == {"queue_full": codes.count(429)}
    assert shown.exit_code == 0 and "status running" in shown.output and " 0 req/s" not in shown.output, shown.output
    final = _one(db, "SELECT status, duration_s FROM runs WHERE run_id = 'serving'")
    assert final["status"] == "done" and final["duration_s"] >= run["duration_s"]


def test_a_stored_run_whose_journal_cannot_be_deleted_is_said_stored_and_recovered_once(tmp_path):
    """Outside test 100: a journal that could not be deleted at a clean stop (``chattr +a``, a read-only
    disk) gave a traceback and "run was not stored ... (a third signal)", exit 1, though the run was
    stored; ``runs recover`` then said only "error: [Errno 1] Operation not permitted". Now the stop
    says the run is stored and the journal stays, and a recovery stores nothing twice and says why
    the journal is still there."""
    db = tmp_path / "a.duckdb"
    server = start_server([*ARGS, "--db", str(db), "--run-id", "kept"], folder=tmp_path / "server")  # (its log kept)
    journal = journal_path(db, "kept")
    locked = False
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(3):
                assert client.post("/v1/images/generations", json=BODY).status_code == 200
        got = subprocess.run(["chattr", "+a", str(journal)], capture_output=True, text=True)
        if got.returncode != 0:
            pytest.skip(f"an undeletable journal needs chattr on this file system: {got.stderr.strip()}")
        locked = True
        assert server.stop() == 0
        log = server.log()
        assert "Traceback" not in log and "not stored" not in log, log[-2000:]
        assert re.search(r"stored run kept in \S+ \(done\), but its journal \S+kept\.jsonl could not be deleted "
                         r"\(Operation not permitted\)", log), log[-2000:]
        run = _one(db, "SELECT status, (SELECT count(*) FROM requests) AS n FROM runs")
        assert run == {"status": "done", "n": 3}, run
        again = _cli("runs", "recover", "--db", str(db))
        assert again.exit_code == 1 and "Traceback" not in again.output, again.output
        assert re.search(r"recovered run kept: 0 rows \(3 requests\), status done; its journal \S+ could not be "
                         r"deleted \(Operation not permitted\)", again.output), again.output
    finally:
        if locked:
            subprocess.run(["chattr", "-a", str(journal)], check=True)
        server.stop()
    last = _cli("runs", "recover", "--db", str(db))
    assert last.exit_code == 0 and "recovered run kept: 0 rows" in last.output, last.output
    assert not pending_journals(db)
    assert _one(db, "SELECT count(*) AS n FROM requests") == {"n": 3}


def test_a_disk_that_fills_under_bench_and_simulate_is_one_line_and_leaves_no_empty_database(small_disk):
    """Outside test 100, on a small file system: full at the start, `bench --db` and `simulate --db` left a
    0-byte database that every later run refused ("not a DuckDB database (an empty file)"); full after
    the first of two runs, a DuckDB traceback, with no word of which run was stored."""
    small = small_disk(3)
    filler = _fill(small)
    for command in ("bench", "simulate"):
        db = small / f"{command}.duckdb"
        got = _cli(command, "--policies", "trident,pipeline-dynamic", "--rate", "0.5", "--duration", "60",
                   "--db", str(db), *(["--no-progress"] if command == "bench" else []))
        assert got.exit_code == 2 and f"--db {db}: cannot store runs there" in got.output, got.output
        assert "Traceback" not in got.output and not list(small.glob(f"{command}.duckdb*")), got.output
    filler.unlink()
    with open(filler, "wb") as f:  # room for the first run's database, not for the second run
        f.write(b"\0" * (1200 << 10))
    for command in ("bench", "simulate"):
        db = small / f"{command}.duckdb"
        got = _cli(command, "--policies", "trident,pipeline-dynamic", "--rate", "0.5", "--duration", "60",
                   "--db", str(db), *(["--no-progress"] if command == "bench" else []))
        line = re.search(rf"could not store run \S+-pipeline-dynamic-\S+ in {re.escape(str(db))}: .*No space left "
                         r"on device; 1 run of 2 stored: (\S+-trident-\S+)$", got.output.strip())
        assert got.exit_code == 2 and line and "Traceback" not in got.output, got.output
        assert list(query_readonly(db, "SELECT run_id FROM runs").run_id) == [line.group(1)]  # as it said
        db.unlink()  # (the next command's room)
        db.with_name(db.name + ".wal").unlink(missing_ok=True)
    filler.unlink()
    db = small / "again.duckdb"
    got = _cli("simulate", "--policies", "trident,pipeline-dynamic", "--rate", "0.5", "--duration", "60",
               "--db", str(db))
    assert got.exit_code == 0, got.output
    assert len(query_readonly(db, "SELECT run_id FROM runs")) == 2


def test_a_stop_on_a_full_disk_counts_the_refusals_it_could_not_journal(small_disk):
    """Outside test 100: a server stopped while its journal's disk was still full said how many request
    rows were lost, not that the 503s it had answered meanwhile (records_unwritable) were not in the
    journal either: recovered, the run read as if it had turned nobody away."""
    small = small_disk(24)
    db = small / "f.duckdb"
    server = start_server([*ARGS, "--db", str(db), "--run-id", "stopfull", "--db-wait", "1"])
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post("/v1/images/generations", json=BODY).status_code == 200
            time.sleep(1.5)
            filler = _fill(small)
            codes = []
            while codes[-5:] != [503] * 5:  # accepted until the journal's last page is full, then refused
                codes.append(client.post("/v1/images/generations", json={**BODY, "seed": len(codes)}).status_code)
                assert len(codes) < 400, codes
        time.sleep(1.0)  # the flushes fail meanwhile
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)
        log = server.log()
        refused = codes.count(503)
        assert code == 1 and re.search(rf"are lost, and {refused} refusals \(records_unwritable: {refused}\) not "
                                       r"counted in it; what the journal holds is recoverable", log), (refused, log[-3000:])
        filler.unlink()
        out = _cli("runs", "recover", "--db", str(db))
        assert out.exit_code == 0 and "status crashed" in out.output, out.output
    finally:
        server.stop()


def test_runs_delete_and_export_on_a_full_disk_name_the_run_and_leave_nothing(small_disk):
    """Outside test 100: on a full disk `runs delete A B` printed the same "not deleted: TransactionContext
    Error: ..." line for each run, naming neither; `runs export --parquet DIR` failed cleanly but left
    the empty DIR it had made."""
    small = small_disk(8)
    db = small / "d.duckdb"
    made = _cli("simulate", "--policies", "trident,pipeline-dynamic", "--rate", "0.5", "--duration", "60",
                "--db", str(db))
    assert made.exit_code == 0, made.output
    runs = list(query_readonly(db, "SELECT run_id FROM runs ORDER BY run_id").run_id)
    _fill(small)
    gone = _cli("runs", "delete", *runs, "--db", str(db))
    assert gone.exit_code == 1 and "Traceback" not in gone.output, gone.output
    lines = [line for line in gone.output.splitlines() if line.startswith("not deleted:")]
    assert [line.split("'")[1] for line in lines] == runs, gone.output
    out = small / "pq"
    export = _cli("runs", "export", runs[0], "--parquet", str(out), "--db", str(db))
    assert export.exit_code == 2 and f"--parquet {out}: cannot be written" in export.output, export.output
    assert not out.exists()


def test_a_journal_whose_run_has_no_row_is_named_by_runs_list_and_show(tmp_path):
    """Outside test 100: a server whose start's row could not be written (a nearly full disk), then
    `kill -9`: `runs list` showed no such run and no note, `runs show` said only that it is not in the
    file, though its journal held 3 requests a recovery then stored."""
    db = tmp_path / "j.duckdb"
    ResultsStore(db).check()
    journal = _journal_of_three(db, "rowless")
    listed = _cli("runs", "list", "--db", str(db))
    assert listed.exit_code == 0 and "a journal but no row in" in listed.output and "rowless" in listed.output
    assert "its server runs (or starts)" in listed.output, listed.output  # (held: this process is its server)
    journal.close()
    listed = _cli("runs", "list", "--db", str(db))
    assert f"rowless; its server is gone: `trident runs recover --db {db}` stores it" in listed.output, listed.output
    shown = _cli("runs", "show", "rowless", "--db", str(db))
    assert shown.exit_code == 2 and f"its journal {journal_path(db, 'rowless')} is not stored yet" in shown.output
    assert _cli("runs", "recover", "--db", str(db)).exit_code == 0
    listed = _cli("runs", "list", "--db", str(db))
    assert "rowless" in listed.output and "a journal but no row" not in listed.output, listed.output


@pytest.mark.parametrize("stopping", [False, True])
def test_a_recovered_run_says_its_counts_are_its_journals_and_whether_it_was_stopped(tmp_path, stopping):
    """Outside test 119: after a `kill -9` `runs show` gave the refusals of the journal's last line (691
    where clients had 728) as the run's count, and workers restarted three times read as a quiet run;
    a server stopped by three Ctrl-Cs was stored ``crashed``. The counts are said to be a lower bound,
    the restarts are said, and a run whose last line says it was told to stop is ``interrupted``."""
    import json

    db = tmp_path / "r.duckdb"
    journal = _journal_of_three(db, "k9")
    line = list(rows_lines({"requests": [_request(3)]}, [], 3.0, 1.0))[-1]
    line["config_json"] = json.dumps({"refused": {"queue_full": 691}, "workers": {"kinds": ["cpu"], "restarts": 3},
                                      "hung": 1, **({"stopping": True} if stopping else {})})
    journal.append([line])
    Ingester(ResultsStore(db), journal.path).ingest()  # stored as running, as a server's ingest does
    shown = _cli("runs", "show", "k9", "--db", str(db))  # (outside test 122: said as if exact before a recovery)
    assert "refused before admission (not in its rows as last stored: at least): 691 queue_full" in shown.output
    journal.close()  # as if its process died
    out = _cli("runs", "recover", "--db", str(db))
    status = "interrupted" if stopping else "crashed"
    assert out.exit_code == 0 and f"status {status}" in out.output, out.output
    reasons = set(query_readonly(db, "SELECT reason FROM requests WHERE state = 'unfinished'").reason)
    assert reasons == {STOPPED_REASON if stopping else CRASHED_REASON}, reasons
    shown = _cli("runs", "show", "k9", "--db", str(db))
    assert shown.exit_code == 0, shown.output
    assert f"status {status}" in shown.output
    assert ("refused before admission (not in its rows as its journal last counted them, up to 0.5 s before its "
            "server ended: at least): 691 queue_full") in shown.output, shown.output
    assert "workers restarted 3 times (a worker lost: killed, crashed or hung); 1 stage taken as hung" in shown.output
