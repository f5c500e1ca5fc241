"""`trident bench --backend live`: every policy on a real `trident serve` (emulated GPUs, small time
scale) driven by Locust; the stored rows must be consistent, and Ctrl-C must leave no half run."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from children import default_sigint, wait_ended  # noqa: E402  (tests/, on sys.path under pytest)

from tridentcore.bench.live import UNMAPPED_ID_BASE
from tridentcore.store import query_readonly

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("pipeline-static:degree=1", "pipeline-dynamic", "trident-paper", "trident")
MIX = """name: live-test
classes:
  - {model: sd3-medium, height: 512, width: 512, frames: 1, steps: 28, weight: 3}
  - {model: sd3-medium, height: 1024, width: 1024, frames: 1, steps: 28, weight: 3}
  - {model: wan2.1-1.3b, height: 480, width: 832, frames: 17, steps: 50, weight: 1}
"""
ARGS = ["--rate", "4", "--duration", "12", "--seed", "2", "--time-scale", "0.05", "--devices", "emulated:8xH200"]


def _trident(*args: str, timeout: float = 240, cwd: Path | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "tridentcore.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    mix = tmp / "mix.yaml"
    mix.write_text(MIX)
    db = tmp / "live.duckdb"
    t0 = time.monotonic()
    # the mix and --keep named relative to the working directory: the server and Locust run elsewhere
    out = _trident("bench", "--backend", "live", "--policies", ",".join(POLICIES), "--mix", mix.name, *ARGS,
                   "--db", str(db), "--keep", "keep", "--json", "--no-progress", cwd=tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    wall_s = time.monotonic() - t0
    # the same schedule through the simulator, in the same store (README's live-vs-sim query)
    sim = _trident("bench", "--backend", "sim", "--policies", ",".join(POLICIES), "--mix", str(mix), *ARGS[:6],
                   "--cluster", "8xH200", "--db", str(db), "--no-progress")
    assert sim.returncode == 0, sim.stderr[-3000:]
    return db, tmp / "keep", json.loads(out.stdout), wall_s


def test_every_policy_stored_with_what_reproduces_it(bench, tmp_path):
    from tridentcore.bench.spec_schema import load_spec

    db, _, rows, wall_s = bench
    assert [r["policy"] for r in rows] == list(POLICIES)
    runs = query_readonly(db, "SELECT * FROM runs WHERE backend = 'live' ORDER BY created_unix_s")
    assert list(runs.policy) == list(POLICIES) and set(runs.backend) == {"live"} and set(runs.status) == {"complete"}
    for r in runs.itertuples():
        config = json.loads(r.config_json)
        assert config["devices"] == "emulated:8xH200" and config["time_scale"] == 0.05 and config["seed"] == 2
        assert config["policy"] == r.policy and config["server_run_id"]
        assert "locust" in json.loads(r.packages_json) and json.loads(r.hardware_json)["cpus"] >= 1
        assert r.git_sha and r.cluster == "1x8xH200"
        # a stored config is a spec file too: every key a live bench and its server store is accepted
        for name, part in (("run", config), ("server", config["server_config"])):
            (tmp_path / f"{name}.json").write_text(json.dumps(part))
            load_spec(tmp_path / f"{name}.json")
    assert wall_s < 200  # loose: four servers, four Locust runs


def test_every_request_has_exactly_one_terminal_state_on_both_sides(bench):
    db, _, rows, _ = bench
    for run in rows:
        rid = run["run_id"]
        client = query_readonly(db, "SELECT * FROM client_requests WHERE run_id = ? ORDER BY request_index", [rid])
        server = query_readonly(db, "SELECT * FROM requests WHERE run_id = ? ORDER BY request_id", [rid])
        n = len(client)
        assert n > 20 and list(client.request_index) == list(range(n))
        assert client.state.isin(["done", "rejected", "failed"]).all(), client.state.value_counts()
        assert server.request_id.is_unique and len(server) == n
        assert server.state.isin(["done", "rejected", "failed", "cancelled"]).all()
        assert (server.request_id < UNMAPPED_ID_BASE).all()  # every accepted request was matched to its arrival
        joined = client.merge(server, left_on="request_index", right_on="request_id", suffixes=("_c", "_s"))
        assert len(joined) == n
        assert (joined.state_c == joined.state_s).all()
        assert (joined.model_c == joined.model_s).all() and (joined.width_c == joined.width_s).all()
        assert (joined.frames_c == joined.frames_s).all()
        done = joined[joined.state_s == "done"]
        assert (abs(done.latency_ms - 1000 * done.latency_s) < 1e-6).all()
        assert (joined.slo_ms - 1000 * (joined.deadline_s - joined.arrival_s)).abs().max() < 1e-3


def test_stage_spans_do_not_overlap_and_fit_inside_the_latency(bench):
    db, _, rows, _ = bench
    bad = query_readonly(db, """
        WITH s AS (
            SELECT s.run_id, s.request_id, s.started_s, s.ended_s, q.arrival_s, q.finish_s, q.state,
                   lag(s.ended_s) OVER (PARTITION BY s.run_id, s.request_id ORDER BY s.started_s, s.ended_s) AS prev_end
            FROM stage_spans s JOIN requests q USING (run_id, request_id)
        )
        SELECT * FROM s
        WHERE started_s < prev_end - 1e-9 OR started_s < arrival_s - 1e-9 OR ended_s < started_s
           OR (state = 'done' AND ended_s > finish_s + 1e-9)
    """)
    assert bad.empty, bad.head()
    spans = query_readonly(db, "SELECT run_id, count(*) AS n FROM stage_spans JOIN runs USING (run_id) "
                               "WHERE backend = 'live' GROUP BY run_id")
    assert len(spans) == len(POLICIES) and (spans.n > 0).all()
    # a done request ran all three stages
    missing = query_readonly(db, """
        SELECT q.run_id, q.request_id FROM requests q
        WHERE q.state = 'done' AND (SELECT count(DISTINCT stage) FROM stage_spans s
                                    WHERE s.run_id = q.run_id AND s.request_id = q.request_id
                                      AND s.outcome = 'done') < 3""")
    assert missing.empty, missing.head()


def test_client_rows_match_locusts_own_counts(bench):
    db, keep, rows, _ = bench
    for run in rows:
        rid = run["run_id"]
        with open(keep / rid / "locust_stats.csv", newline="") as f:
            stats = {r["Name"]: r for r in csv.DictReader(f)}
        client = query_readonly(db, "SELECT request_class, state FROM client_requests WHERE run_id = ?", [rid])
        total = stats.pop("Aggregated")
        assert int(total["Request Count"]) == len(client)
        assert int(total["Failure Count"]) == int((client.state != "done").sum())
        assert {k: int(v["Request Count"]) for k, v in stats.items()} == client.groupby("request_class").size().to_dict()
        summary = query_readonly(db, "SELECT * FROM client_summary WHERE run_id = ?", [rid]).iloc[0]
        assert summary.lag_p99_ms < 250  # loose (a busy 2-core machine); benchmarks/locust_lag.py measures it


def test_results_readme_live_queries_run(bench):
    db, *_ = bench
    queries = re.findall(r"```sql live\n(.*?)```", (REPO / "results" / "README.md").read_text(), flags=re.S)
    assert queries
    for sql in queries:
        assert len(query_readonly(db, sql)) > 0, sql


def test_repeat_of_a_live_run_runs_it_live_again(bench, tmp_path):
    db, _, rows, _ = bench
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(db.read_bytes())
    old = rows[-1]["run_id"]
    out = _trident("bench", "--repeat", old, "--db", str(copy))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"repeat of {old}" in out.stdout and "attainment" in out.stdout
    new = query_readonly(copy, "SELECT run_id, policy, config_json FROM runs WHERE backend = 'live' "
                               "AND NOT list_contains(?, run_id)", [[r["run_id"] for r in rows]])
    assert len(new) == 1 and new.policy[0] == "trident" and json.loads(new.config_json[0])["repeat_of"] == old
    n = query_readonly(copy, "SELECT count(*) AS n FROM client_requests WHERE run_id = ?", [new.run_id[0]]).n[0]
    assert n == len(query_readonly(db, "SELECT 1 FROM client_requests WHERE run_id = ?", [old]))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_stores_the_run_in_progress_as_interrupted(tmp_path, sig):
    """Ctrl-C, or SIGTERM (``timeout``, a CI cancel), or SIGHUP (a closed terminal: it died with 129 and
    stored nothing until `runs recover`), to the bench alone: the server and Locust are stopped, the run
    in progress is stored as interrupted, nothing it started is left running."""
    db = tmp_path / "i.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "bench", "--backend", "live", "--policies",
                             "trident,pipeline-static:degree=1", "--mix", "image-video", "--rate", "2",
                             "--duration", "400", "--time-scale", "0.05", "--db", str(db), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ},
                            preexec_fn=default_sigint)  # the Ctrl-C below reaches it under `make test &` too
    # Ctrl-C once Locust has been sending for a while (the schedule runs 20 s): on a busy host the
    # server takes longer to start than any fixed sleep would allow
    import psutil

    def locust_running() -> bool:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "locust" in " ".join(child.cmdline()):
                    return True
            except psutil.Error:  # gone meanwhile
                pass
        return False

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not locust_running():
        time.sleep(0.2)
    time.sleep(4)
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]  # 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP
    assert not psutil.wait_procs(family, timeout=15)[1]  # the server, its workers, Locust: all stopped
    assert "interrupted: stopping the server (it drains its work, up to" in err  # said at once, even without a bar
    assert "interrupted during trident" in err
    runs = query_readonly(db, "SELECT run_id, status, policy FROM runs")
    assert len(runs) == 1 and runs.status[0] == "interrupted" and runs.policy[0] == "trident"
    rid = runs.run_id[0]
    client = query_readonly(db, "SELECT * FROM client_requests WHERE run_id = ?", [rid])
    server = query_readonly(db, "SELECT * FROM requests WHERE run_id = ?", [rid])
    assert len(client) > 0 and client.request_index.is_unique and server.request_id.is_unique
    assert len(server) <= len(client)  # the server saw only what was sent


def _long_bench_under_load(db: Path, env: dict | None = None, extra: list[str] | None = None, **popen):
    """A two-policy live bench of 400 s, 3 s into its first policy's load; returns it and a finder
    of its children by a word of their command line."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "bench", "--backend", "live", "--policies",
                             "trident,pipeline-static:degree=1", "--mix", "image-video", "--rate", "2",
                             "--duration", "400", "--time-scale", "0.05", "--db", str(db), "--no-progress",
                             *(extra or [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            **popen)

    def child(word: str):
        for c in psutil.Process(proc.pid).children(recursive=False):
            try:
                if word in " ".join(c.cmdline()):
                    return c
            except psutil.Error:
                pass
        return None

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and child("locust") is None:
        time.sleep(0.2)
    time.sleep(3)
    return proc, child


def test_a_ctrl_c_to_the_group_of_a_bench_that_ignores_it_ends_the_run_as_interrupted(tmp_path):
    """A bench started with SIGINT ignored (``cmd &`` in a script, nohup): a Ctrl-C to its process
    group stops the server (it drains, exit 130) and Locust. The run was stored as crashed ("trident
    serve died during the load") and the bench went on to fail; now it is an interrupted run, as if
    the bench had heard the Ctrl-C itself: stored as such, exit 130, nothing left running."""
    import signal as signals

    import psutil

    db = tmp_path / "g.duckdb"
    proc, _ = _long_bench_under_load(db, start_new_session=True,
                                     preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_IGN))
    assert proc.poll() is None
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signals.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted during trident" in err and "died" not in err, err[-3000:]
    assert not psutil.wait_procs(family, timeout=15)[1]
    runs = query_readonly(db, "SELECT status, policy FROM runs")
    assert list(runs.status) == ["interrupted"] and list(runs.policy) == ["trident"]  # the second never ran
    # Locust (in a session of its own) is stopped as soon as the server says it stops, not once it has
    # drained: it sent on at 40 requests a second, each refused 503 (386 refused rows in an outside test)
    states = query_readonly(db, "SELECT state, count(*) AS n FROM client_requests GROUP BY state")
    refused = int(states.n[states.state == "refused"].sum())
    assert refused <= 20, states  # what one 0.25 s poll lets through, with room


@pytest.mark.parametrize("victim", ["server", "locust"])
def test_a_child_killed_during_the_load_ends_the_run_as_crashed(tmp_path, victim):
    """kill -9 of the server mid-load: the bench stops Locust at once, stores what both wrote with
    status crashed, says the server died and exits non-zero (it was stored complete, exit 0).
    kill -9 of Locust: the server is stopped as usual and what it served is stored, as crashed, with
    no client rows (the bench failed with "wrote no rows" and stored nothing)."""
    import psutil

    db = tmp_path / "k.duckdb"
    proc, child = _long_bench_under_load(db)
    target = child(" serve " if victim == "server" else "locust")
    assert target is not None and proc.poll() is None
    family = psutil.Process(proc.pid).children(recursive=True)
    killed_at = time.monotonic()
    target.kill()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]  # the CLI's exit status for a failed run
    assert time.monotonic() - killed_at < 60  # not the rest of the 20 s schedule plus its answer wait
    assert not psutil.wait_procs(family, timeout=15)[1]  # Locust and the server's workers: all stopped
    runs = query_readonly(db, "SELECT run_id, status, policy, config_json FROM runs")
    assert len(runs) == 1 and runs.status[0] == "crashed" and runs.policy[0] == "trident"  # the second never ran
    assert json.loads(runs.config_json[0])["crashed"] == victim
    rid = runs.run_id[0]
    client = query_readonly(db, "SELECT state FROM client_requests WHERE run_id = ?", [rid])
    served = query_readonly(db, "SELECT state FROM requests WHERE run_id = ?", [rid])
    if victim == "server":
        assert "trident serve died during the load (killed by SIGKILL)" in err and "stored as crashed" in err
        assert len(client) > 0 and set(client.state) != {"done"}  # the ones cut short are not counted as answered
    else:
        assert "Locust ended during the load (killed by SIGKILL) without writing its rows" in err, err[-3000:]
        assert f"run {rid} stored as crashed with the server's rows" in err
        assert len(client) == 0 and (served.state == "done").sum() > 0  # what was served before the kill


def test_the_run_of_a_killed_bench_is_stored_by_the_next_recover(tmp_path):
    """kill -9 of the bench mid-load: its server and Locust end by themselves and leave their rows in
    the work folder (they were left there, unread, with the server's log folder); `trident runs
    recover` (as the next live bench on the database) stores the run as interrupted and removes both."""
    import psutil

    db, tmp = tmp_path / "o.duckdb", tmp_path / "tmp"
    tmp.mkdir()
    proc, child = _long_bench_under_load(db, {"TMPDIR": str(tmp)})
    family = psutil.Process(proc.pid).children(recursive=True)
    assert child(" serve ") is not None and child("locust") is not None
    proc.kill()
    proc.communicate(timeout=30)
    assert not psutil.wait_procs(family, timeout=90)[1]  # they noticed their starter gone and ended
    left = [p.name.split("-")[1] for p in tmp.iterdir()]
    assert left == ["live"], left  # the server's log in it too: nothing of the run elsewhere
    env = {"TMPDIR": str(tmp)}
    out = _trident("runs", "recover", "--db", str(db), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "of a killed live bench as interrupted" in out.stdout and "scheduled requests answered" in out.stdout
    assert list(tmp.iterdir()) == []
    runs = query_readonly(db, "SELECT run_id, status, policy, config_json FROM runs")
    assert list(runs.status) == ["interrupted"] and list(runs.policy) == ["trident"]
    assert "bench was killed" in json.loads(runs.config_json[0])["recovered"]
    rid = runs.run_id[0]
    client = query_readonly(db, "SELECT state, server_request_id FROM client_requests WHERE run_id = ?", [rid])
    served = query_readonly(db, "SELECT request_id, state FROM requests WHERE run_id = ?", [rid])
    assert (client.state == "done").sum() > 0 and (served.state == "done").sum() >= (client.state == "done").sum()
    assert (served.request_id < UNMAPPED_ID_BASE).sum() >= (client.state == "done").sum()  # joined on the schedule
    again = _trident("runs", "recover", "--db", str(db), cwd=tmp_path, env=env)
    assert again.returncode == 0 and "no journals to recover" in again.stdout, again.stdout + again.stderr


def test_a_kept_folder_of_a_killed_bench_is_stored_by_recover_folder_and_stays(tmp_path):
    """--keep: the run folder stays the user's; `runs recover --folder` stores its run and drops only the claim."""
    import psutil

    db, tmp, keep = tmp_path / "k.duckdb", tmp_path / "tmp", tmp_path / "keep"
    tmp.mkdir()
    proc, child = _long_bench_under_load(db, {"TMPDIR": str(tmp)}, ["--keep", str(keep)])
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.communicate(timeout=30)
    assert not psutil.wait_procs(family, timeout=90)[1]
    assert list(tmp.iterdir()) == []  # nothing of the run outside its kept folder
    env = {"TMPDIR": str(tmp)}
    out = _trident("runs", "recover", "--db", str(db), cwd=tmp_path, env=env)
    assert "no journals to recover" in out.stdout  # a kept folder is looked in only when named
    out = _trident("runs", "recover", "--db", str(db), "--folder", str(keep), cwd=tmp_path, env=env)
    assert out.returncode == 0 and "as interrupted" in out.stdout and "kept" in out.stdout, out.stdout + out.stderr
    (run,) = keep.iterdir()
    assert (run / "server.log").is_file() and (run / "rows.jsonl").is_file() and not (run / "owner.json").exists()
    runs = query_readonly(db, "SELECT run_id, status FROM runs")
    assert list(runs.run_id) == [run.name] and list(runs.status) == ["interrupted"]


def test_a_run_whose_store_failed_is_stored_later_with_the_status_it_reached(tmp_path):
    """A folder whose bench got past the load (its owner.json says complete) but could not store:
    recover stores it as complete, saying why it was left (it was stored as interrupted)."""
    from tridentcore.bench.live import spec_from_config
    from tridentcore.bench.orphans import OWNER, Owner, info_of, recover_orphans

    db, keep = tmp_path / "s.duckdb", tmp_path / "keep"
    out = _trident("bench", "--backend", "live", "--policies", "trident", "--mix", "image-video", "--rate", "2",
                   "--duration", "3", "--time-scale", "0.05", "--db", str(tmp_path / "first.duckdb"),
                   "--keep", str(keep), "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = keep.iterdir()
    config = json.loads(query_readonly(tmp_path / "first.duckdb", "SELECT config_json FROM runs").config_json[0])
    assert not (run / OWNER).exists()  # stored: the kept folder holds no claim
    # the claim as a bench whose store into s.duckdb failed after the load would have left it
    spec, policy = spec_from_config(config)
    owner = Owner(run, info_of(db, "s1", policy, spec.config(), {}, config["scheduled"],
                               tuple(config["served_models"]), time.time(), kept=True))
    owner.update(status="complete", crashed=None, store_failed="IOException: Conflicting lock")
    assert [r.outcome for r in recover_orphans(db, tmp_path / "none", [keep])] == ["busy"]  # this process holds it
    owner.close()
    # the next bench on s.duckdb with the same --keep folder stores it before its own run
    (tmp_path / "none").mkdir()
    out = _trident("bench", "--backend", "live", "--policies", "trident", "--mix", "image-video", "--rate", "2",
                   "--duration", "3", "--time-scale", "0.05", "--db", str(db), "--keep", str(keep), "--no-progress",
                   cwd=tmp_path, env={"TMPDIR": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "whose store failed as complete" in out.stderr, out.stderr[-3000:]
    runs = query_readonly(db, "SELECT run_id, status, config_json FROM runs ORDER BY created_at")
    assert list(runs.run_id)[0] == "s1" and list(runs.status) == ["complete", "complete"]
    assert "store failed (IOException" in json.loads(runs.config_json[0])["recovered"]
    assert "recovered" not in json.loads(runs.config_json[1])
    assert not any((p / OWNER).exists() for p in keep.iterdir())  # both kept folders stay, unclaimed


def test_a_claimed_work_folder_is_left_while_its_lock_is_held_and_only_for_its_own_database(tmp_path):
    from tridentcore.bench.orphans import Owner, recover_orphans

    work = tmp_path / "trident-live-x"
    work.mkdir()
    owner = Owner(work, {"db": str(tmp_path / "a.duckdb"), "run_id": "r", "config": {}})
    assert [r.outcome for r in recover_orphans(tmp_path / "a.duckdb", tmp_path)] == ["busy"]  # its bench runs
    owner.close()
    assert recover_orphans(tmp_path / "b.duckdb", tmp_path) == []  # another database's
    got = recover_orphans(tmp_path / "a.duckdb", tmp_path)
    assert [g.outcome for g in got] == ["failed"] and "config_json lacks" in got[0].message
    junk = tmp_path / "trident-live-junk"
    junk.mkdir()
    (junk / "owner.json").write_text('{"db": 1')  # not ours: said, never a failure of this database's recover
    assert [g.outcome for g in recover_orphans(tmp_path / "b.duckdb", tmp_path)] == ["unreadable"]
    assert work.is_dir() and not (tmp_path / "a.duckdb").exists()  # kept for a later try, nothing written


def test_live_options_turn_the_servers_calibration_off_and_a_stored_config_keeps_it():
    import typer.main

    from tridentcore.bench.live import LiveBenchSpec, LiveOptions, spec_from_config
    from tridentcore.bench.spec import RunSpec
    from tridentcore.cli.main import app

    serve = typer.main.get_command(app).commands["serve"]
    for calibrate in (True, False):
        opts = LiveOptions(max_queued=7, calibrate=calibrate)
        args = opts.serve_args()
        assert ("--no-calibrate" in args) is not calibrate
        parsed = serve.make_context("serve", ["--models", "tiny-sd3", *args]).params  # the server's own parser
        assert parsed["calibrate"] is calibrate and parsed["max_queued"] == 7
        spec = LiveBenchSpec(RunSpec(policies=("trident",)), opts)
        back, policy = spec_from_config(json.loads(json.dumps(spec.config())))
        assert policy == "trident" and back.options == opts
    old = LiveBenchSpec(RunSpec(policies=("trident",))).config()
    del old["calibrate"]  # a run stored before the option existed calibrated (the live default)
    assert spec_from_config(old)[0].options.calibrate is True


def test_a_ctrl_c_that_reaches_the_server_as_locust_ends_is_an_interrupted_run(tmp_path):
    """A Ctrl-C to the process group of a bench that ignores it, arriving just as Locust ends (its
    schedule done) and before the bench stops the server: the server drains and exits 130. That
    was read as a crash ("trident serve died") or, when the bench's own stop came before the exit,
    as a complete run after which the next policy ran, the Ctrl-C lost. Here the SIGINT goes to the
    server the moment Locust is gone; whichever comes first, the run's status agrees with how the
    server ended: interrupted (exit 130, the bench exits 130, no second policy) or, if the bench's
    SIGTERM won, complete with exit 0."""
    import psutil

    db = tmp_path / "e.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "bench", "--backend", "live", "--policies",
                             "trident,pipeline-static:degree=1", "--mix", "image-video", "--rate", "2",
                             "--duration", "8", "--seed", "3", "--time-scale", "0.05", "--db", str(db), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    server = locust = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        for c in psutil.Process(proc.pid).children(recursive=False):
            try:
                line = " ".join(c.cmdline())
            except psutil.Error:
                continue
            server = c if " serve " in line and server is None else server
            locust = c if "locust" in line and locust is None else locust
        if locust is not None:
            break
        time.sleep(0.005)
    assert server is not None and locust is not None, proc.communicate(timeout=120)[1][-3000:]
    while time.monotonic() < deadline:  # Locust ended (gone, or a zombie not yet reaped)
        try:
            if locust.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.002)
    try:
        server.send_signal(signal.SIGINT)
    except psutil.NoSuchProcess:
        pytest.fail("the bench stopped its server before the test's Ctrl-C could reach it")
    out, err = proc.communicate(timeout=180)
    assert "died" not in err, err[-3000:]
    runs = query_readonly(db, "SELECT status, policy, config_json FROM runs")
    first = json.loads(runs.config_json[0])
    assert runs.policy[0] == "trident"
    if runs.status[0] == "interrupted":
        assert first["server_exit"] == 130 and proc.returncode == 130 and len(runs) == 1, err[-3000:]
    else:  # the bench's stop reached the server first
        assert runs.status[0] == "complete" and first["server_exit"] == 0, err[-3000:]
        assert proc.returncode == 0 and list(runs.status) == ["complete", "complete"], err[-3000:]


def test_a_stop_while_a_server_starts_stops_the_server_too(tmp_path):
    """Outside test 108: a live comparison stopped (SIGINT) while its next policy's server started left
    that server starting and then serving on its own: the bench's clean-up removed the work folder
    under it, the server wrote its store there afterwards, and nothing ever recovered the folder.
    ``start_server`` interrupted now stops the child before the interrupt goes on."""
    import psutil

    script = tmp_path / "start.py"
    script.write_text("import sys, time\nfrom pathlib import Path\nfrom tridentcore.bench.launch import start_server\n"
                      "try:\n"
                      "    start_server(['--models', 'sd3-medium', '--devices', 'emulated:1xH200'], folder=Path(sys.argv[1]))\n"
                      "    print('served', flush=True)\n"
                      "except KeyboardInterrupt:\n"
                      "    print('interrupted', flush=True)\n"
                      "time.sleep(60)  # (alive, as a bench storing its other runs: the server stops with it otherwise)\n")
    folder = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    children: list = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not (
                children and "tridentcore.cli" in " ".join(children[0].cmdline())):  # (exec'd: Popen has returned)
            children = psutil.Process(proc.pid).children()
            time.sleep(0.01)
        time.sleep(0.2)
        assert children and not (folder / "port").exists(), "the server started before the stop"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "interrupted"
        assert all(wait_ended(c.pid, 15) for c in children), "the server started on after its starter stopped"
        assert proc.poll() is None  # (its starter lives on)
    finally:
        for p in [proc, *children]:  # only the processes this test started
            if p.poll() is None if isinstance(p, subprocess.Popen) else p.is_running():
                p.kill()
