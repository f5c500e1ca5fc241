"""A server's journal is compacted as it serves (``serve --journal-mb``): it grew for as long as the
server ran (about 0.7 kB a request, gigabytes in weeks), and a recovery after a crash read it all.

On its own: a compacted journal recovered after its owner died stores exactly what the same journal
never compacted stores (requests, spans, placements, the crash's unfinished requests and GPU
samples); a recovery that opened the journal just before its owner compacted it does not take the
live run for a dead one. Then a real ``trident serve --db`` with a small ``--journal-mb``: the file
stays small while it serves, and after a ``kill -9`` every answered request is stored.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tridentcore.bench.launch import start_server
from tridentcore.core.records import PlacementRow, RequestRow, RunMeta, SpanRow
from tridentcore.store import ResultsStore, query_readonly
from tridentcore.store import journal as journal_mod
from tridentcore.store.journal import Ingester, Journal, journal_path, pending_journals, rows_lines, server_gone, start_line
from tridentcore.store.recovery import recover, recover_journal


def _meta(run_id: str) -> RunMeta:
    return RunMeta(run_id=run_id, backend="live", policy="trident", seed=0, profile="h200", cluster="2xH200",
                   mix="live", rate_rps=0.0, duration_s=0.0, slo_scale=3.0, config_json='{"n": 0}', status="running",
                   created_unix_s=1.0)


def _request(rid: int, state: str) -> RequestRow:
    return RequestRow(rid, "sd3-medium", 512, 512, 1, 4, 0.1 * rid, 10.0 + rid, state, "",
                      1.0 + rid if state == "done" else None)


def _batches(n: int):
    """``n`` rows lines of a run: request i arrives in line i and ends two lines later (the last two
    never end), with a span each and a placement every tenth."""
    for i in range(n):
        ended = [_request(i - 2, "done")] if i >= 2 else []
        spans = [SpanRow(i, i, "encode", (i % 2,), 1, 1, 0.1 * i, 0.2 * i, 0.2 * i + 0.5, 0.5)]
        placements = [PlacementRow(0.1 * i, i % 2, "sd3-medium", "encode", "place", 10.0)] if i % 10 == 0 else []
        tables = {"requests": ended, "stage_spans": spans, "placements": placements}
        lines = list(rows_lines({k: v for k, v in tables.items() if v}, [_request(i, "running")], 0.3 * i, 0.1 * i))
        lines[-1]["config_json"] = f'{{"n": {i}}}'
        yield lines


def _journaled(db, run_id: str, n: int, compact_every: int | None) -> tuple[Journal, Ingester, int]:
    """A run's journal of ``n`` lines, ingested after each; compacted every ``compact_every`` lines.
    Returns the journal (still held), its ingester and how many times it was compacted."""
    journal = Journal.reserve(db, run_id)
    ing = Ingester(ResultsStore(db), journal.path, run_id=run_id, track=True)
    ing.wrote(*journal.append([start_line(_meta(run_id), 2)]))
    ing.ingest(5.0)
    compactions = 0
    for i, lines in enumerate(_batches(n)):
        ing.wrote(*journal.append(lines))
        ing.ingest(5.0)
        if i % 14 == 13:  # a heartbeat, not ingested before the compaction: it goes along as it is
            ing.wrote(*journal.append([{"kind": "rows", "t_s": 0.3 * i, "wall_s": 0.1 * i, "tables": {}}]))
        if compact_every and i % compact_every == compact_every - 1:
            offset = journal.compact(ing.offset, ing.seq, ing.summary())
            assert offset is not None
            ing.compacted(offset)
            compactions += 1
    return journal, ing, compactions


def _tables(db, run_id: str) -> dict:
    out = {}
    for table, order in (("requests", "request_id"), ("stage_spans", "request_id"),
                         ("placements", "t_s, gpu"), ("gpu_samples", "t_s, gpu")):
        frame = query_readonly(db, f"SELECT * EXCLUDE (run_id) FROM {table} WHERE run_id = ? ORDER BY {order}", [run_id])
        out[table] = frame.astype(object).where(frame.notna(), None).to_dict("list")  # (NaN != NaN)
    out["runs"] = query_readonly(db, "SELECT status, duration_s, rate_rps, wall_s, config_json FROM runs "
                                     "WHERE run_id = ?", [run_id]).to_dict("records")
    return out


def test_a_compacted_journal_recovered_after_its_owner_died_stores_what_the_whole_journal_does(tmp_path):
    whole_db, small_db = tmp_path / "whole.duckdb", tmp_path / "small.duckdb"
    whole, _, _ = _journaled(whole_db, "r", 60, None)
    small, ing, compactions = _journaled(small_db, "r", 60, 7)
    assert compactions == 8
    assert small.size() < whole.size() / 3  # the 60 lines' worth now: 4 lines and a compact line
    assert set(ing.summary()["arrivals"]["request_id"]) == {58, 59}  # accepted, not ended
    whole.close()  # both owners die
    small.close()
    for db in (whole_db, small_db):
        (got,) = recover(db)
        assert (got.outcome, got.status) == ("ingested", "crashed"), got
        assert not pending_journals(db)
    whole_rows, small_rows = _tables(whole_db, "r"), _tables(small_db, "r")
    assert small_rows == whole_rows
    assert len(whole_rows["requests"]["request_id"]) == 60  # 58 done, 2 unfinished
    assert whole_rows["requests"]["state"].count("unfinished") == 2
    assert len(whole_rows["gpu_samples"]["t_s"]) > 0
    assert whole_rows["runs"][0]["config_json"] == '{"n": 59, "recovered": true}'  # (its last line's, and closed by a recovery)


def test_a_recovery_that_opened_the_journal_as_its_owner_compacted_it_leaves_the_live_run_alone(tmp_path, monkeypatch):
    """The owner renames the compacted file over the old one and then lets go of the old one: a
    recovery that opened the old one before the rename would get its lock and close a live run as
    crashed. Here the compaction happens between the recovery's open and its lock."""
    db = tmp_path / "live.duckdb"
    journal, ing, _ = _journaled(db, "live", 10, None)
    real_try_lock = journal_mod.try_lock
    raced = []

    def compact_first(fd: int) -> bool:
        if not raced:
            raced.append(True)
            ing.compacted(journal.compact(ing.offset, ing.seq, ing.summary()))
        return real_try_lock(fd)

    monkeypatch.setattr(journal_mod, "try_lock", compact_first)
    got = recover_journal(db, journal_path(db, "live"))
    assert raced and got.outcome == "live", got
    raced.clear()
    assert not server_gone(db, "live")
    assert raced
    monkeypatch.setattr(journal_mod, "try_lock", real_try_lock)
    assert query_readonly(db, "SELECT status FROM runs WHERE run_id = 'live'").status.tolist() == ["running"]
    ing.wrote(*journal.append(next(_batches(1))))  # the owner goes on in the compacted file
    ing.ingest(5.0)
    journal.close()
    assert server_gone(db, "live")
    (got,) = recover(db)
    assert (got.outcome, got.status) == ("ingested", "crashed")


ARGS = ["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0.01"]
BODY = {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 4}


def test_a_server_keeps_its_journal_small_and_a_kill_9_after_compactions_loses_no_answered_request(tmp_path):
    db = tmp_path / "c.duckdb"
    server = start_server([*ARGS, "--db", str(db), "--run-id", "compacted", "--journal-mb", "0.02"])
    sizes = []
    try:
        path = journal_path(db, "compacted")
        with httpx.Client(base_url=server.url, timeout=60) as client:
            t0 = time.monotonic()
            for i in range(150):  # about 25 a second: 6 s, six ingests or more
                assert client.post("/v1/images/generations", json={**BODY, "seed": i}).status_code == 200
                time.sleep(max(0.0, t0 + 0.04 * (i + 1) - time.monotonic()))
                if i % 10 == 9:
                    sizes.append(path.stat().st_size)
        deadline = time.monotonic() + 20  # the next ingest, and its compaction (a second; more on a busy host)
        while path.stat().st_size >= 0.02 * (1 << 20) and time.monotonic() < deadline:
            time.sleep(0.2)
        sizes.append(path.stat().st_size)
    finally:
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        server.stop()
    # about 1.4 kB a request here (three spans each): 150 requests are over 200 kB uncompacted; the
    # file passes 20 KiB only by what arrives between two ingests (about a second's worth, 25 requests;
    # a loose bound for a busy host)
    assert max(sizes) < 0.02 * (1 << 20) + 80 * 1400, sizes
    assert sizes[-1] < 0.02 * (1 << 20), sizes
    (got,) = recover(db)
    assert (got.outcome, got.status) == ("ingested", "crashed"), got
    counts = query_readonly(db, "SELECT (SELECT count(*) FROM requests WHERE state = 'done') AS done, "
                                "(SELECT count(*) FROM requests) AS n, (SELECT count(*) FROM stage_spans) AS spans, "
                                "(SELECT count(*) FROM gpu_samples) AS samples").iloc[0].to_dict()
    assert counts["done"] == 150 and counts["n"] == 150 and counts["spans"] == 450, counts
    assert counts["samples"] > 0
    assert not pending_journals(db)


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_journal_mb_must_be_a_positive_size(bad):
    from typer.testing import CliRunner

    from tridentcore.cli import app

    out = CliRunner().invoke(app, ["serve", "--models", "sd3-medium", "--devices", "emulated:1xH200",
                                   "--journal-mb", bad])
    assert out.exit_code == 2 and "--journal-mb" in out.output


def test_a_recovery_sweeps_only_temporary_files_old_enough_that_no_live_owner_can_be_about_to_lock_them(tmp_path):
    """A reservation, compaction or restore creates its temporary file and then locks it: an outside
    test's recovery in a loop took the lock in between and removed a compaction's file (its rename
    then failed). A temporary file younger than a minute is left, an older unlocked one removed."""
    db = tmp_path / "s.duckdb"
    journal, _, _ = _journaled(db, "s", 3, None)
    folder = journal.path.parent
    fresh, stale = folder / ".s.jsonl.1.aa.tmp", folder / ".s.jsonl.2.bb.tmp"
    fresh.write_text("")
    stale.write_text("")
    os.utime(stale, (time.time() - 120, time.time() - 120))
    (got,) = recover(db)
    assert got.outcome == "live"
    assert fresh.exists() and not stale.exists()
    journal.close()


def test_a_failed_compaction_is_tried_again_after_the_next_ingest_not_a_minute_later(tmp_path, monkeypatch):
    """An outside test's disk, full during a compaction and freed seconds later, was filled again by the
    journal itself while the next compaction waited a minute."""
    import asyncio
    import threading

    from tridentcore.runtime.stored import RunRecords

    db = tmp_path / "f.duckdb"
    journal, ing, _ = _journaled(db, "f", 20, None)
    records = object.__new__(RunRecords)  # (only what a compaction touches: it runs after an ingest)
    records.journal, records.ingester, records.compact_bytes, records.compactions = journal, ing, 1000, 0
    records._journal_lock, records._stop, records._compact_said = threading.Lock(), asyncio.Event(), -60.0
    real, calls = Journal.compact, []

    def full_once(self, *args):
        calls.append(args)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(Journal, "compact", full_once)
    size = journal.size()
    records._compact()
    assert records.compactions == 0 and journal.size() == size
    records._compact()  # the next ingest's
    assert records.compactions == 1 and journal.size() < size / 3
    journal.close()


def test_a_crashed_run_whose_journal_could_not_be_written_for_a_while_does_not_say_its_clients_were_told_nothing(tmp_path):
    """Requests answered while the journal could not be written (a full disk) may end with no row; a
    recovery stored them unfinished, "its client was told no result" (outside test: 20 answered done)."""
    from tridentcore.store.recovery import CRASHED_REASON, CRASHED_UNWRITTEN_REASON

    for refused, reason in ((0, CRASHED_REASON), (5, CRASHED_UNWRITTEN_REASON)):
        db = tmp_path / f"u{refused}.duckdb"
        journal = Journal.reserve(db, "u")
        journal.append([start_line(_meta("u"), 2)])
        lines = list(rows_lines({}, [_request(7, "running")], 1.0, 1.0))
        lines[-1]["config_json"] = '{"refused": {"records_unwritable": %d}}' % refused
        journal.append(lines)
        journal.close()
        (got,) = recover(db)
        assert got.status == "crashed"
        rows = query_readonly(db, "SELECT state, reason FROM requests")
        assert list(zip(rows.state, rows.reason)) == [("unfinished", reason)]
