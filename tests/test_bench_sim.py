"""`trident bench --backend sim`: stored runs with what reproduces them, the comparison table,
--repeat (identical numbers), Ctrl-C (nothing half-written) and the live backend's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tridentcore.cli import app
from tridentcore.store import TABLES, query_readonly, run_summary

runner = CliRunner()
WORKLOAD = ["--mix", "image-video", "--rate", "0.5", "--duration", "60", "--seed", "1"]
POLICIES = "trident,trident-paper,pipeline-static:degree=1"


def _bench(db: Path, *args: str):
    return runner.invoke(app, ["bench", "--backend", "sim", *WORKLOAD, "--db", str(db), *args])


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _counts(db: Path) -> dict[str, int]:
    return {t: int(query_readonly(db, f"SELECT count(*) AS n FROM {t}")["n"][0]) for t in TABLES}


def test_bench_stores_every_run_with_what_reproduces_it(tmp_path):
    db = tmp_path / "b.duckdb"
    result = _bench(db, "--policies", POLICIES)
    assert result.exit_code == 0, result.output
    summary = run_summary(db)
    assert list(summary.policy) == POLICIES.split(",")
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("policy "))
    for col in ("attainment", "mean_s", "p95_s", "p99_s", "ooms", "rejected", "run_id"):
        assert col in lines[header]
    for row in summary.itertuples():  # the table's rows are the store's view, with the run ids
        line = next(x for x in lines[header + 1:] if x.startswith(row.policy + " "))
        assert line.split()[-1] == row.run_id and f"{row.attainment:.3f}" in line
    runs = query_readonly(db, "SELECT * FROM runs ORDER BY created_unix_s")
    configs = [json.loads(c) for c in runs.config_json]
    assert len({c["bench"] for c in configs}) == 1
    for c, policy in zip(configs, POLICIES.split(",")):
        assert c["policy"] == policy and c["rate"] == 0.5 and c["seed"] == 1 and c["mix"] == "image-video"
        assert c["profile"] == "h200" and c["cluster"] == "2x8xH200" and c["duration_s"] == 60
    assert set(runs.backend) == {"sim"} and set(runs.status) == {"complete"}
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert all(len(sha) == 40 for sha in runs.git_sha)
    assert "duckdb" in json.loads(runs.packages_json[0]) and json.loads(runs.hardware_json[0])["cpus"] >= 1


def test_bench_matches_simulate(tmp_path):
    db = tmp_path / "b.duckdb"
    bench = _bench(db, "--policies", "trident,pipeline-dynamic", "--json", "--no-progress")
    sim = runner.invoke(app, ["simulate", *WORKLOAD, "--policies", "trident,pipeline-dynamic", "--json"])
    assert bench.exit_code == 0 and sim.exit_code == 0, bench.output + sim.output
    rows, expected = json.loads(bench.stdout), json.loads(sim.stdout)
    for got, want in zip(rows, expected, strict=True):
        assert got["policy"] == want["policy"] and got["requests"] == want["requests"]
        for key in ("attainment", "mean_s", "p95_s", "p99_s", "gpu_s_per_met"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
        assert got["ooms"] == want["ooms"] and got["rejected"] == want["rejected"]


def test_bench_goodput_column(tmp_path):
    db = tmp_path / "g.duckdb"
    result = runner.invoke(app, ["bench", "--mix", "sd3-mixed", "--cluster", "1x4xH200", "--duration", "60",
                                 "--rate", "1", "--policies", "trident", "--goodput", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert 0 < row["fair_goodput_rps"] <= row["goodput_rps"]


def test_repeat_gives_identical_numbers(tmp_path):
    db = tmp_path / "r.duckdb"
    assert _bench(db, "--policies", "trident-paper,trident").exit_code == 0
    old = run_summary(db).set_index("policy").run_id["trident"]
    result = runner.invoke(app, ["bench", "--repeat", old[:-2], "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert f"repeat of {old}" in result.stdout and "identical" in result.stdout
    summary = run_summary(db)
    assert len(summary) == 3
    new = summary.run_id.iloc[-1]
    assert new in result.stdout and new != old
    config = json.loads(query_readonly(db, "SELECT config_json FROM runs WHERE run_id = ?", [new]).config_json[0])
    assert config["repeat_of"] == old
    a, b = (summary.set_index("run_id").loc[i] for i in (old, new))
    for key in ("requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected", "preemptions"):
        assert a[key] == b[key], key
    assert a.gpu_s == pytest.approx(b.gpu_s, rel=1e-12)
    rows = [query_readonly(db, "SELECT * EXCLUDE (run_id) FROM requests WHERE run_id = ? ORDER BY request_id", [i])
            for i in (old, new)]
    assert rows[0].equals(rows[1])


def test_repeat_refuses_other_options_live_runs_and_unknown_runs(tmp_path):
    from tridentcore.core.records import RunMeta
    from tridentcore.store import ResultsStore

    db = tmp_path / "r.duckdb"
    ResultsStore(db).write_run(RunMeta("live-1", "live", "trident", 0, "h200", "8xH200", "m", 1.0, 1.0, 3.0, "{}"), [], [])
    assert "--rate" in _error_line(runner.invoke(app, ["bench", "--repeat", "live-1", "--rate", "2", "--db", str(db)]))
    assert "only sim runs" in _error_line(runner.invoke(app, ["bench", "--repeat", "live-1", "--db", str(db)]))
    assert "not in" in _error_line(runner.invoke(app, ["bench", "--repeat", "nope", "--db", str(db)]))
    assert "no results database" in _error_line(runner.invoke(app, ["bench", "--repeat", "x", "--db", str(tmp_path / "n")]))
    ResultsStore(db).write_run(RunMeta("sim-1", "sim", "trident", 0, "h200", "8xH200", "m", 1.0, 1.0, 3.0, "{}"), [], [])
    assert "cannot be run again" in _error_line(runner.invoke(app, ["bench", "--repeat", "sim-1", "--db", str(db)]))


def test_live_backend_validates_before_starting_anything(tmp_path):
    # (the live backend itself: tests/test_bench_live.py)
    for args, needle in ((["--cluster", "8xH200"], "differs from the emulated devices"),
                         (["--time-scale", "0"], "--time-scale"), (["--goodput"], "--goodput"),
                         # (an outside test: taken, mean latency 57,579 s; each host ms read as 1e6 workload s)
                         (["--time-scale", "1e-9"], "--time-scale must be at least 0.001 for a live bench"),
                         # outside test 121: stored as the cluster given (1x1xcpu on two workers); a time scale
                         # refused only by the server once started
                         (["--devices", "cpu:2", "--cluster", "1xcpu"], "--cluster 1xcpu differs from the cpu devices 2xcpu"),
                         (["--devices", "cpu:2", "--cluster", "2x8xH200"], "differs from the cpu devices"),
                         (["--devices", "cpu:2", "--time-scale", "0.5"], "it applies to emulated devices only")):
        line = _error_line(runner.invoke(app, ["bench", "--backend", "live", *args, "--db", str(tmp_path / "x.duckdb")]))
        assert needle in line
    assert not (tmp_path / "x.duckdb").exists()
    # --keep a file (outside test 96: the first run failed with "[Errno 20] Not a directory" after its server
    # started), or under one
    (tmp_path / "afile").write_text("")
    for keep in ("afile", "afile/sub"):
        result = runner.invoke(app, ["bench", "--backend", "live", "--mix", "image-video", "--rate", "1", "--duration", "5",
                                     "--keep", str(tmp_path / keep), "--db", str(tmp_path / "x.duckdb")])
        assert result.exit_code == 2 and f"--keep {tmp_path / keep}: " in _error_line(result), result.output
    assert not (tmp_path / "x.duckdb").exists()


@pytest.mark.parametrize("args, needle", [
    (["--backend", "gpu"], "unknown backend"),
    (["--policies", "trident,nope"], "valid policies"),
    (["--policies", "trident,trident"], "given twice"),
    (["--policies", "trident,trident:late=serve"], "trident = trident:late=serve"),  # the same policy written twice
    (["--policies", "pipeline-static:degree=2,degree=4"], "option degree given twice"),
    (["--mix", "no-such-mix"], "unknown mix"),
    (["--trace", "t.jsonl", "--goodput"], "--goodput"),
    (["--trace", "t.jsonl", "--rate", "3"], "--rate does not apply to --trace"),  # (it was ignored)
    # live-only options with the simulator (they were ignored without a word)
    (["--devices", "cpu:2", "--keep", "k"], "--devices, --keep: apply to --backend live only; drop them"),
    (["--time-scale", "0.5"], "--time-scale: applies to --backend live only; drop it or add --backend live"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, args, needle):
    db = tmp_path / "x.duckdb"
    short = [] if "--trace" in args else ["--duration", "30"]  # (a trace refuses --duration: its times rule)
    assert needle in _error_line(runner.invoke(app, ["bench", *args, *short, "--db", str(db)]))
    assert not db.exists()


@pytest.mark.parametrize("kind, text", [("folder", ""), ("x.duckdb", "not a database"), ("x.json", '{"a": 1}\n'),
                                        ("x.csv", "a,b\n1,2\n"), ("x.parquet", "")])
def test_a_db_that_cannot_take_a_run_is_refused_before_any_runs(tmp_path, kind, text):
    # DuckDB opens a .json or .csv file as data, read-only: a run "stored" there was lost without a word
    db = tmp_path / ("x.duckdb" if kind == "folder" else kind)
    if kind == "folder":
        db.mkdir()
    else:
        db.write_text(text)
    for command in (["bench", "--backend", "sim", "--no-progress"], ["simulate"]):
        line = _error_line(runner.invoke(app, [*command, "--policies", "trident", "--duration", "30", "--db", str(db)]))
        assert f"--db {db}: cannot store runs there" in line
        assert kind == "folder" or line.endswith("not a DuckDB database (" + (
            "an empty file)" if not text else "no DuckDB file header)")), line
    assert db.is_dir() if kind == "folder" else db.read_text() == text


def test_ctrl_c_between_runs_keeps_the_stored_ones(tmp_path, monkeypatch):
    import tridentcore.bench.runs as runs

    real, calls = runs.run_one, []

    def interrupted_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "run_one", interrupted_second)
    db = tmp_path / "c.duckdb"
    result = _bench(db, "--policies", POLICIES)
    assert result.exit_code == 130, result.output
    assert "interrupted while simulating trident-paper" in result.stderr and "nothing half-written" in result.stderr
    summary = run_summary(db)
    assert list(summary.policy) == ["trident"] and summary.run_id[0] in result.stderr
    assert "1 of 3 runs stored" in result.stderr
    only = _counts(db)
    assert only["runs"] == 1 and only["requests"] == summary.requests[0]


def test_ctrl_c_inside_the_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    import tridentcore.store.writer as writer

    real, calls = writer.create_schema, []

    def interrupt_second_write(con):  # inside the transaction: after BEGIN, before any row of the run
        real(con)
        calls.append(1)
        if len(calls) == 3:  # (the first: --db checked before any run)
            con.execute("INSERT INTO runs SELECT * REPLACE ('half-' || run_id AS run_id) FROM runs LIMIT 1")
            raise KeyboardInterrupt

    monkeypatch.setattr(writer, "create_schema", interrupt_second_write)
    db = tmp_path / "c.duckdb"
    result = _bench(db, "--policies", POLICIES)
    assert result.exit_code == 130, result.output
    assert "1 of 3 runs stored" in result.stderr
    summary = run_summary(db)
    assert list(summary.policy) == ["trident"]
    assert _counts(db)["runs"] == 1  # the row written inside the interrupted transaction was rolled back
    monkeypatch.undo()
    assert runner.invoke(app, ["runs", "list", "--db", str(db)]).exit_code == 0


def test_bench_a_trace_and_repeat_it(tmp_path):
    trace, db = tmp_path / "t.jsonl", tmp_path / "t.duckdb"
    assert runner.invoke(app, ["trace", "generate", "--mix", "sd3-mixed", "--rate", "1", "--duration", "40",
                               "--out", str(trace)]).exit_code == 0
    result = runner.invoke(app, ["bench", "--trace", str(trace), "--cluster", "1x8xH200", "--policies", "trident",
                                 "--db", str(db), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"trace:{trace.name} on 1x8xH200") and "req/s" not in result.stdout.splitlines()[0]
    (run_id,) = run_summary(db).run_id
    again = runner.invoke(app, ["bench", "--repeat", run_id, "--db", str(db)])
    assert again.exit_code == 0 and "identical" in again.stdout, again.output


def test_a_policy_written_with_an_empty_option_list_is_stored_under_its_name(tmp_path):
    """`trident:` was stored as policy `trident:`, a group of its own beside `trident` (outside test)."""
    db = tmp_path / "c.duckdb"
    result = runner.invoke(app, ["bench", "--policies", "trident:", "--duration", "30", "--db", str(db), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert list(query_readonly(db, "SELECT policy FROM runs").policy) == ["trident"]


def test_a_live_bench_on_emulated_devices_says_when_the_server_saw_more_load_than_scheduled(tmp_path):
    """Outside test 121: at time scale 0.05 the server's clock saw sd3-mixed at 2 req/s as 2.2-2.4 req/s (the
    host's own work counts at real speed there, the devices' time compressed), unsaid. The bench says it,
    from the stored rows: server arrival times against the schedule's."""
    from types import SimpleNamespace

    from tridentcore.cli.bench import _seen_rate
    from tridentcore.core.records import RequestRow, RunMeta
    from tridentcore.store import ResultsStore

    db = tmp_path / "r.duckdb"
    store = ResultsStore(db)
    for run_id, squeeze in (("squeezed", 0.8), ("faithful", 0.99)):
        rows = [RequestRow(i, "sd3-medium", 512, 512, 1, 28, squeeze * 0.5 * i, squeeze * 0.5 * i + 10, "done", "",
                           squeeze * 0.5 * i + 1) for i in range(40)]
        store.write_run(RunMeta(run_id, "live", "trident", 0, "h200", "1x8xH200", "sd3-mixed", 2.0, 20.0, 3.0, "{}"),
                        rows, [])
        store.write_client_requests(run_id, [
            {"request_index": i, "server_request_id": 7000 + 39 - i, "model": "sd3-medium", "height": 512, "width": 512,
             "frames": 1, "steps": 28, "request_class": "sd3-medium 512x512", "workload_t_s": 0.5 * i,
             "scheduled_s": 0.025 * i, "state": "done", "http_status": 200, "reason": "", "stages_json": "[]"}
            for i in range(40)])
    # (a stored live run's requests.request_id is the schedule's index; the engine's own ids are others: the
    # rows are paired on the index, outside test 125)
    run = SimpleNamespace(time_scale=0.05, trace=None, rate=2.0)
    said = _seen_rate(str(db), "squeezed", run)
    # (39 gaps of 0.5 s scheduled, of 0.4 s seen)
    assert said.startswith("its arrivals came 1.25 times as fast on the server's clock as scheduled, so it served "
                           "about 2.5 req/s, not 2 (--rate 2)"), said
    assert _seen_rate(str(db), "faithful", run) == ""
    assert _seen_rate(str(db), "squeezed", SimpleNamespace(time_scale=1.0, trace=None, rate=2.0)) == ""
