"""The workbench's live comparisons as jobs (``workbench.live_jobs``): a process of their own that
outlives the page, one at a time, stopped by the page with the run in progress stored as
interrupted, and a killed job reported as such. Real children throughout: the job process, a
``trident serve`` on emulated GPUs and Locust."""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import psutil
import pytest
from children import wait_ended  # noqa: E402  (tests/, on sys.path under pytest)

from tridentcore.bench.spec import RunSpec
from workbench import live_bench, live_jobs

pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")


def _plan(duration_s: float):
    scenario = RunSpec(profile="h200", cluster="2x8xH200", mix="flux-uniform", duration_s=duration_s, seed=0)
    return live_bench.plan_live(scenario, 1.0, "emulated:2x8xH200", 0.05)


def _wait(job, until, timeout_s: float = 180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = live_jobs.read(job.dir)
        if until(now):
            return now
        time.sleep(0.3)
    raise AssertionError(f"job never got there: {live_jobs.read(job.dir)}")


def test_a_job_runs_in_its_own_session_one_at_a_time_and_stops_with_its_run_stored_as_interrupted(tmp_path):
    from tridentcore.store import list_runs

    db, jobs = str(tmp_path / "live.duckdb"), tmp_path / "jobs"
    job = live_jobs.start(_plan(600.0), ["trident", "pipeline-dynamic"], db, jobs_dir=jobs)
    try:
        assert os.getsid(job.pid) != os.getsid(0)  # detached: a page (or workbench) that goes does not take it along
        with pytest.raises(live_jobs.JobBusy, match="already running"):
            live_jobs.start(_plan(10.0), ["trident"], db, jobs_dir=jobs)
        busy = _wait(job, lambda j: j.k == 1 and j.phase == "load" and j.done >= 3)
        assert live_jobs.current(jobs).id == job.id and 0 < busy.fraction < 0.5
        assert live_jobs.stop(busy)
        ended = _wait(job, lambda j: not j.active)
    finally:
        if live_jobs.read(job.dir).active:
            os.kill(job.pid, signal.SIGKILL)
    assert ended.state == "stopped", ended
    assert len(ended.run_ids) == 1  # the first policy's, as far as it got; the second never began
    runs = list_runs(db)
    assert list(runs["run_id"]) == ended.run_ids and list(runs["status"]) == ["interrupted"]
    assert 3 <= int(runs["requests"].iloc[0]) < busy.total
    assert live_jobs.current(jobs) is None and live_jobs.latest(db, jobs).id == job.id
    assert not live_jobs.stop(ended)  # nothing left to stop
    # the next one may start now, and a finished job's folder is what the page reads
    again = live_jobs.start(_plan(4.0), ["trident"], db, jobs_dir=jobs)
    done = _wait(again, lambda j: not j.active)
    assert done.state == "done" and len(done.run_ids) == 1 and done.error is None
    assert [j.id for j in live_jobs.jobs(jobs)] == [again.id, job.id]
    deadline = time.monotonic() + 10  # an ended job is reaped by the next listing: no zombie stays behind
    while psutil.pid_exists(again.pid) and time.monotonic() < deadline:
        live_jobs.jobs(jobs)
        time.sleep(0.2)
    assert not psutil.pid_exists(again.pid), "the ended job stayed a zombie"


def test_a_killed_job_reads_as_vanished_and_its_children_stop_by_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the job's work folder: left by the kill, read back below
    db, jobs = str(tmp_path / "live.duckdb"), tmp_path / "jobs"
    job = live_jobs.start(_plan(120.0), ["trident"], db, jobs_dir=jobs)
    _wait(job, lambda j: j.phase == "load" and j.done >= 2)
    children = psutil.Process(job.pid).children()
    server = [p.pid for p in children if "serve" in p.cmdline()]
    locust = [p.pid for p in children if "locust" in p.cmdline()]
    assert len(server) == 1 and len(locust) == 1
    os.kill(job.pid, signal.SIGKILL)
    gone = _wait(job, lambda j: not j.active, timeout_s=10)
    assert gone.state == "vanished" and "without a word" in gone.error
    assert live_jobs.current(jobs) is None  # the next may start
    assert wait_ended(server[0], 60), "trident serve kept running after its job was killed"
    assert wait_ended(locust[0], 60), "Locust kept sending after its job was killed"
    # what the killed job's server and Locust had written is stored by the next job on the database
    from tridentcore.store import list_runs

    done = _wait(live_jobs.start(_plan(4.0), ["trident"], db, jobs_dir=jobs), lambda j: not j.active)
    assert done.state == "done" and len(done.run_ids) == 1
    runs = list_runs(db).set_index("run_id")
    assert len(runs) == 2 and runs.loc[done.run_ids[0], "status"] == "complete", runs
    killed = runs.drop(index=done.run_ids[0])
    assert list(killed["status"]) == ["interrupted"] and int(killed["requests"].iloc[0]) >= 2
    assert not list(tmp_path.glob("trident-live-*")) and not list(tmp_path.glob("trident-serve-*"))


def test_a_stop_before_the_job_runs_and_one_while_a_run_is_stored_are_both_kept(tmp_path):
    """A Stop pressed as the job starts (before its SIGTERM handler is in place: the signal would
    have killed it) ends it ``stopped``; one pressed after a policy's load, while its server is
    stopped and its run stored (signals held then, and before this, thrown away: the job ran every
    other policy; or, stopping the server, the run was lost) keeps that run as complete and runs no
    further policy."""
    from tridentcore.store import list_runs

    db, jobs = str(tmp_path / "live.duckdb"), tmp_path / "jobs"
    early = live_jobs.start(_plan(10.0), ["trident"], db, jobs_dir=jobs)
    assert live_jobs.stop(early)
    ended = _wait(early, lambda j: not j.active, timeout_s=60)
    assert ended.state == "stopped" and ended.run_ids == [] and ended.error is None, ended

    job = live_jobs.start(_plan(10.0), ["trident", "pipeline-dynamic"], db, jobs_dir=jobs)
    late = _wait(job, lambda j: j.k == 1 and j.phase in ("collecting", "stopping server", "storing"), timeout_s=120)
    assert live_jobs.stop(late)
    ended = _wait(job, lambda j: not j.active)
    assert ended.state == "stopped" and len(ended.run_ids) == 1, ended
    runs = list_runs(db)
    assert list(runs["run_id"]) == ended.run_ids and list(runs["status"]) == ["complete"]


def test_a_locked_database_is_refused_before_any_policy_runs(tmp_path):
    """Another process holds the database for writing: the comparison fails at once, saying so. It
    used to run a whole policy (a minute) and fail only when storing it (outside test)."""
    import subprocess
    import sys

    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        stored: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(live_bench.DatabaseUnavailable, match="cannot take runs.*lock") as info:
            live_bench.run_live(_plan(600.0), ["trident", "pipeline-dynamic"], str(db), stored=stored, db_wait_s=1.0)
        assert time.monotonic() - t0 < 20, "it waited on the lock, not on a policy"
        assert stored == [] and "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_time_scale_that_measures_the_harness_or_a_job_of_hours_is_said_before_it_starts():
    """Outside test: time scale 0.001 (the input's least) was taken without a word, and trident's
    attainment fell from 100 % to 25 % (the server's overhead against 0.05 ms stages); time scale 10
    planned 6.7 hours for four policies, without a word either."""
    scenario = RunSpec(profile="h200", cluster="2x8xH200", mix="flux-uniform", duration_s=600.0, seed=0)
    assert live_bench.live_warnings(live_bench.plan_live(scenario, 1.0, "emulated:2x8xH200", 0.05), 4) == []
    small = live_bench.live_warnings(live_bench.plan_live(scenario, 1.0, "emulated:2x8xH200", 0.001), 4)
    assert len(small) == 1 and "time scale 0.001 is below 0.01" in small[0]
    long = live_bench.live_warnings(live_bench.plan_live(scenario, 1.0, "emulated:2x8xH200", 10.0), 4)
    assert len(long) == 1 and long[0].startswith("the sends alone take 6.") and "4 ×" in long[0], long
