"""``trident profile --from-run RUN``: a stored live run's measured stage times folded into a profile
(issue 11, point 1). Real tiny-sd3 on a CPU worker, stored, folded, and the refusals."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from tridentcore.cli import app
from tridentcore.core.types import Shape
from tridentcore.profiles import load_profile
from tridentcore.runtime.build import build_runtime
from tridentcore.runtime.engine import Submission


def _live_run(devices: str, model: str, shape: Shape, n: int, db, run_id: str) -> None:
    async def main():
        rt = build_runtime(model, devices, "pipeline-static:degree=1", strict=True,
                           time_scale=0.001 if devices.startswith("emulated") else 1.0)
        await rt.start()
        e = rt.engine
        try:
            for i in range(n):  # one at a time: batch 1, as the profile rows measure
                rid = e.submit([Submission(model, "a red cube", shape, seed=i, slo_s=1e6)]).ids[0]
                await e.wait(rid)
        finally:
            await e.shutdown(5)
        e.write_store(str(db), run_id)

    asyncio.run(asyncio.wait_for(main(), 180))


def test_a_cpu_run_folds_into_the_cpu_profile(tmp_path):
    db, out = tmp_path / "runs.duckdb", tmp_path / "folded.csv"
    _live_run("cpu:1", "tiny-sd3", Shape(64, 64, 1, 2), 5, db, "cpu-run")
    # a unique prefix, as `runs show` takes (outside test 103: "no run 'cpu-'")
    result = CliRunner().invoke(app, ["profile", "--from-run", "cpu-", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    base, folded = load_profile("cpu").rows, load_profile(str(out)).rows
    assert len(folded) == len(base)
    changed = [(b, f) for b, f in zip(base, folded) if b != f]
    assert {(f.model, str(f.stage)) for _, f in changed} == {("tiny-sd3", s) for s in ("encode", "diffuse", "decode")}
    for b, f in changed:
        assert f.batch == 1 and f.source.startswith("run cpu-run: median of ") and f.latency_ms > 0
        assert (f.peak_gib, f.act_gib, f.weights_gib) == (b.peak_gib, b.act_gib, b.weights_gib)
        assert f.stage == "encode" or (f.height, f.width) == (64, 64)
    assert "3 from run cpu-run" in result.output
    assert "tiny-sd3 diffuse 64x64 batch 1:" in result.output and "None" not in result.output
    # against a profile of another device kind nothing matches: an error, and no unchanged copy written
    other = tmp_path / "h200.csv"
    result = CliRunner().invoke(app, ["profile", "--from-run", "cpu-run", "--db", str(db), "--base", "h200",
                                      "--out", str(other)])
    assert result.exit_code == 2 and "nothing written" in result.output and not other.exists()
    assert "tiny-sd3 encode batch 1 degree 1" in result.output  # no shape printed for an encode


def test_runs_without_measurements_are_refused(tmp_path):
    db, out = tmp_path / "runs.duckdb", tmp_path / "folded.csv"
    _live_run("emulated:1xH200", "sd3-medium", Shape(512, 512, 1, 4), 2, db, "emu-run")
    result = CliRunner().invoke(app, ["profile", "--from-run", "emu-run", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and "emulated devices" in result.output
    result = CliRunner().invoke(app, ["profile", "--from-run", "nope", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and "run 'nope' is not in" in result.output
    assert not out.exists()
    result = CliRunner().invoke(app, ["profile", "--out", str(out)])
    assert result.exit_code == 2 and "--from-run" in result.output


@pytest.mark.parametrize("min_samples", [3])
def test_points_measured_too_rarely_keep_the_profile(tmp_path, min_samples):
    from tridentcore.bench.fold import fold_run

    db = tmp_path / "runs.duckdb"
    _live_run("cpu:1", "tiny-sd3", Shape(64, 64, 1, 2), min_samples - 1, db, "short-run")
    folded = fold_run(db, "short-run", "cpu", min_samples=min_samples)
    assert folded.updated == () and folded.rows == load_profile("cpu").rows
    # the cpu profile has these points: too few measurements, not "not in cpu" (outside test 103)
    assert folded.unmatched == () and len(folded.rare) == 3
    assert all(f"measured {min_samples - 1} times, at least {min_samples} needed" in text for text in folded.rare)
    out = tmp_path / "folded.csv"
    result = CliRunner().invoke(app, ["profile", "--from-run", "short-run", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and "nothing written" in result.output and not out.exists()
    assert "too rarely: tiny-sd3 " in result.output and "not in cpu" not in result.output


def test_a_served_runs_profile_file_is_stored_whole_and_a_fold_refuses_it_once_changed(tmp_path):
    """``serve --profile FILE --db``: the run names the file by its absolute path with its SHA-256, so a
    fold from another folder finds it, and one after the file was edited is refused (outside test 103:
    stored as given, relative; the fold failed elsewhere, and folded into an edited file silently)."""
    import json
    import os
    import shutil

    import httpx

    from tridentcore.bench.launch import start_server
    from tridentcore.profiles.format import _data_dir
    from tridentcore.store import query_readonly

    mine, db = tmp_path / "prof" / "mine.csv", tmp_path / "runs.duckdb"
    mine.parent.mkdir()
    shutil.copyfile(_data_dir() / "cpu.csv", mine)
    relative = os.path.relpath(mine)  # (the server runs in this process's folder)
    srv = start_server(["--models", "tiny-sd3", "--devices", "cpu:1", "--profile", relative, "--db", str(db),
                        "--run-id", "served", "--policy", "pipeline-static:degree=1"])
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as client:
            for seed in range(3):
                r = client.post("/v1/images/generations", json={"model": "tiny-sd3", "prompt": "a red cube",
                                                                "size": "64x64", "steps": 2, "seed": seed})
                assert r.status_code == 200, r.text
    finally:
        srv.stop()
    row = query_readonly(db, "SELECT profile, config_json FROM runs WHERE run_id = 'served'").iloc[0]
    assert row.profile == str(mine.resolve())
    assert json.loads(row.config_json)["inputs"]["profile"]["path"] == str(mine.resolve())
    out = tmp_path / "folded.csv"
    result = CliRunner().invoke(app, ["profile", "--from-run", "served", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0 and "3 from run served" in result.output, result.output
    with open(mine, "a") as f:  # edited since the run
        f.write("\n")
    out.unlink()
    result = CliRunner().invoke(app, ["profile", "--from-run", "served", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 2 and "has changed since it was stored" in result.output and not out.exists()
    result = CliRunner().invoke(app, ["profile", "--from-run", "served", "--db", str(db), "--base", str(mine),
                                      "--out", str(out)])
    assert result.exit_code == 0 and out.exists(), result.output


def test_the_other_modes_options_are_refused_and_a_run_still_stored_as_running_is_said(tmp_path):
    """Outside test 120: `--model` with `--from-run` was ignored (every model of the run folded), `--base`
    without it ignored (a fresh profile measured); a run stored as running was folded without a word."""
    import duckdb

    db, out = tmp_path / "runs.duckdb", tmp_path / "folded.csv"
    for args, needle in ((["--from-run", "r", "--model", "tiny-sd3", "--steps", "3"],
                          "error: --model, --steps: measuring options, and --from-run measures nothing"),
                         (["--from-run", "r", "--no-append"], "error: --no-append: a measuring option"),
                         (["--model", "tiny-sd3", "--base", "cpu"], "error: --base: an option of --from-run"),
                         (["--model", "tiny-sd3", "--db", str(db)], "error: --db: an option of --from-run")):
        result = CliRunner().invoke(app, ["profile", *args, "--out", str(out)])
        assert result.exit_code == 2 and result.stderr.startswith(needle), (args, result.output)
    assert not out.exists()
    _live_run("cpu:1", "tiny-sd3", Shape(64, 64, 1, 2), 3, db, "cpu-run")
    with duckdb.connect(str(db)) as con:  # as a server still serving it stores it
        con.execute("UPDATE runs SET status = 'running' WHERE run_id = 'cpu-run'")
    result = CliRunner().invoke(app, ["profile", "--from-run", "cpu-run", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0 and out.exists(), result.output
    assert "note: run cpu-run is stored as running: folded as far as it is stored" in result.stderr
