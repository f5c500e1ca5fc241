"""The benchmark scripts that back README tables, run in their quick modes (issue 14)."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys

import pytest

from benchmark_scripts import ROOT, load_script as _script  # noqa: E402  (tests/, on sys.path under pytest)


def _row(policy: str, attainment: float, mean_s: float, p95_s: float, fraction: float = 0.5) -> dict:
    return {"mix": "m", "slo_scale": 3.0, "fraction": fraction, "rate": fraction * 2, "policy": policy,
            "capacity_rps": 2.5, "slo_aware_capacity_rps": 2.0, "attainment": attainment, "mean_s": mean_s,
            "p95_s": p95_s}


def test_latency_pareto_cells_compare_trident_with_the_best_others():
    lp = _script("latency_pareto")
    rows = [_row("trident", 0.97, 10.4, 30.0), _row("trident:late=reject", 1.0, 1.0, 1.0),
            _row("pipeline-dynamic", 0.95, 10.0, 40.0), _row("trident-paper", 0.91, 12.0, 25.0),
            _row("pipeline-static:degree=1", 0.80, 5.0, 6.0),  # fast but below 90 %: not a "best" latency
            _row("trident", 0.50, 99.0, 200.0, 1.0), _row("trident-paper", 0.60, 50.0, 100.0, 1.0)]
    half, full = lp.cells(rows)
    assert half["best_mean"]["policy"] == "pipeline-dynamic" and half["best_p95"]["policy"] == "trident-paper"
    assert half["mean_ratio"] == pytest.approx(1.04) and half["p95_ratio"] == pytest.approx(1.2)
    assert half["best_att"]["policy"] == "pipeline-dynamic"  # trident's own late=reject variant is not an other
    assert half["gap_points"] == pytest.approx(-2.0) and half["flags"] == ["p95"]
    assert full["best_mean"] is None and math.isnan(full["mean_ratio"])
    assert full["gap_points"] == pytest.approx(10.0) and full["flags"] == ["att"]


def test_latency_pareto_says_why_a_cell_analysed_by_hand_is_outside_only_in_the_table_analysed():
    """Issue 14: where trident falls short, the table says so and why: the hand analysis of a cell is
    printed while that cell is flagged, in a table made with the settings it was analysed in."""
    lp = _script("latency_pareto")
    args = argparse.Namespace(seed=0, duration=900.0, cluster="2x8xH200", profile="h200", trident="trident")
    cell = {"mix": "image-video", "slo_scale": 5.0, "fraction": 0.25, "flags": ["p95"]}
    (line,) = lp.why([cell, {**cell, "mix": "flux-uniform"}], args)
    assert line.startswith("Why image-video x5 at 25% is outside: the P95 of its 194 requests")
    assert lp.why([{**cell, "flags": []}], args) == []  # within: nothing to explain
    assert lp.why([cell], argparse.Namespace(**{**vars(args), "seed": 1})) == []  # another stream: not analysed


def test_latency_pareto_quick_writes_one_table(tmp_path):
    lp = _script("latency_pareto")
    md, raw = tmp_path / "pareto.md", tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency_pareto.py"), "--quick", "--jobs", "1",
                           "--markdown", str(md), "--json", str(raw)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads(raw.read_text())
    rows = saved["rows"]
    assert saved["settings"]["duration"] == 300 and saved["settings"]["mixes"] == "video-wan"
    assert {r["policy"] for r in rows} == {"trident", *lp.BASELINES} and len(lp.BASELINES) == 6
    assert sorted({r["fraction"] for r in rows}) == [0.5, 1.0] and len(rows) == 14
    for r in rows:
        assert r["mix"] == "video-wan" and r["slo_scale"] == 3.0
        assert r["rate"] == pytest.approx(r["fraction"] * r["slo_aware_capacity_rps"])
    text = md.read_text()
    assert text.count("\n## ") == 1 and "## video-wan, SLO scale 3 (SLO-aware ceiling 0.181 req/s" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[0] for line in table] == ["| 50%", "| 100%"]
    assert all(line.count("|") == lp.HEADER.count("|") for line in table)
    assert "of 2 cells" in text and "of 2 cells" in done.stdout
    # rendered again (outside test: it replaced the published table, headed with the command line's
    # 900 s): the file's settings head it, and without --markdown nothing is written
    def render(*args):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency_pareto.py"), "--from-json", str(raw),
                               *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)

    again = render("--duration", "900")
    assert again.returncode == 0 and "of 2 cells" in again.stdout, again.stderr
    assert "markdown in" not in again.stdout and not (tmp_path / "benchmarks").exists()
    assert render("--markdown", str(md)).returncode == 0
    assert md.read_text().startswith("# Latency Pareto on 2x8xH200, profile h200, 300 s of Poisson arrivals, seed 0\n")
    other = render("--trident", "trident:late=reject")
    assert other.returncode == 2 and "no rows of it in" in other.stderr and "it holds trident" in other.stderr
    # a hand-edited file (outside test: a bare key, or a traceback): the row or setting is named
    for edit, said in ((lambda d: d["rows"][0].pop("mean_s"), "row 0: mean_s missing or not a number"),
                       (lambda d: d["rows"].__setitem__(2, 5), "row 2: not an object"),
                       (lambda d: d["settings"].__setitem__("duration", "abc"), "settings.duration missing or not a number")):
        edited = json.loads(raw.read_text())
        edit(edited)
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency_pareto.py"), "--from-json",
                              str(tmp_path / "edited.json")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_goodput_hold_runs_each_earlier_cell_for_each_policy():
    """video-wan only (its runs are the quickest), 300 s: one line per earlier cell and policy, each
    column held to its own earlier figure, and a count per policy."""
    hold = _script("goodput_hold")
    assert hold.column_of("trident:wide=false") == "trident" and hold.column_of("trident:late=reject") == "trident:late=reject"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "goodput_hold.py"), "--mixes", "video-wan",
                           "--duration", "300", "--jobs", "1", "--policies", "trident;trident:late=reject"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    cells = [line for line in done.stdout.splitlines() if "req/s: lowest class" in line]
    assert len(cells) == 6 and all(line.endswith(("holds", "FAILS")) for line in cells)
    assert "at 0.135 req/s" in next(line for line in cells if line.startswith("trident:late=reject") and "x3 " in line)
    assert "at 0.138 req/s" in next(line for line in cells if line.startswith("trident ") and "x3 " in line)
    assert "trident: holds " in done.stdout and " of 3 earlier fair goodput figures" in done.stdout
    # --seeds: each cell on each seed, then the mean of the lowest class per cell and policy
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "goodput_hold.py"), "--mixes", "video-wan",
                           "--duration", "300", "--jobs", "1", "--policies", "trident;trident:wide=false",
                           "--seeds", "0,1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    per_seed = [line for line in done.stdout.splitlines() if "req/s seed " in line]
    assert len(per_seed) == 12 and {line.split(" seed ")[1][0] for line in per_seed} == {"0", "1"}
    means = done.stdout.split("mean over seeds 0, 1:")[1].splitlines()
    row = next(line for line in means if line.startswith("video-wan x3 "))
    lows = [float(line.split("lowest class ")[1].split(",")[0]) for line in per_seed
            if line.startswith("trident ") and " x3 " in line]
    assert float(row.split()[2]) == pytest.approx(sum(lows) / 2, abs=1e-3)
    assert " of 6 earlier fair goodput figures (cells x seeds)" in done.stdout


def test_overload_reports_in_slo_admitted_and_rejected_per_policy():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overload.py"), "--mixes", "flux-uniform",
                           "--duration", "150", "--jobs", "1", "--policies", "trident;trident:late=reject"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in done.stdout.splitlines()
            if line.startswith("  trident")}
    assert set(rows) == {"trident", "trident:late=reject"}
    met, admitted, rejected, waited, staged = rows["trident:late=reject"]
    assert rejected > 0 and waited == 0 and staged == 0 and admitted + rejected == rows["trident"][1]
    # goodput mode finishes about as many in SLO as serving everything with triage (which admits late
    # what goodput mode turns away, behind the rest): 255 against 260 here since 66aa95f (248 against
    # 228 before), 480 against 474 over 300 s; against the baselines: tests/test_late.py
    assert rows["trident"][2] == 0 and met >= 0.95 * rows["trident"][0] > 0


def test_overload_over_several_seeds_sums_each_figure_and_gives_each_streams_count():
    """``--seeds``: one stream's in-SLO count past the ceiling swings by tens with any change to a policy,
    so the figures are summed over streams, each stream's count beside them, equal to a lone run's."""
    def run(*extra):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overload.py"), "--mixes", "flux-uniform",
                               "--duration", "60", "--jobs", "1", "--policies", "trident:late=reject", *extra],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    both = run("--seeds", "3,4")
    row = next(line.split() for line in both.splitlines() if line.startswith("  trident"))
    met, admitted, rejected = int(row[1]), int(row[2]), int(row[3])
    per_stream = [int(x) for x in row[6:]]
    assert "2 streams (seeds 3, 4), figures summed" in both and len(per_stream) == 2 and sum(per_stream) == met
    alone = [next(line.split() for line in run("--seed", str(seed)).splitlines() if line.startswith("  trident"))
             for seed in (3, 4)]
    assert [int(r[1]) for r in alone] == per_stream
    assert sum(int(r[2]) for r in alone) == admitted and sum(int(r[3]) for r in alone) == rejected
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overload.py"), "--seeds", "1,x"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "--seeds takes comma-separated integers" in bad.stderr


def test_shrink_grown_shows_live_a_widened_diffuse_giving_gpus_back_to_a_newcomer():
    """The simulated scenario of ``test_trident_wide`` through ``trident serve`` (emulated H200s, time
    scale 1): a newcomer that arrives 7 steps after the growth misses its 4.5 s SLO with
    ``shrink_grown=false,shrink_urgent=false`` (it waits for the widened request's 8 GPUs; simulated
    5.33 s, live 5.47 s here) and meets it under the default, ``shrink_grown`` (2.64 s, live 2.46 s)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shrink_grown_live.py")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split(": ", 1)[0].split(", ", 1)[1]: line for line in done.stdout.splitlines()
             if line.startswith("newcomer 7 steps after the growth, ")}
    assert set(lines) == {"trident:shrink_grown=false,shrink_urgent=false", "trident"}, done.stdout
    assert lines["trident:shrink_grown=false,shrink_urgent=false"].endswith("newcomer MISSED its SLO"), done.stdout
    assert lines["trident"].endswith("newcomer met its SLO"), done.stdout


def test_planner_speed_against_a_commit_times_both_and_removes_its_worktree():
    """``--against REV``: REV's code (a git worktree) and this checkout in alternating fresh processes,
    their ratio, the ratio times REV's time as measured then; the worktree is gone afterwards."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    before = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=ROOT).stdout
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "planner_speed.py"), "--policies", "trident",
                           "--cluster", "4x8xH200", "--against", "HEAD", "--rounds", "1", "--runs", "1",
                           "--reference-s", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    round_line, summary = done.stdout.strip().splitlines()
    old, new = (float(x) for x in re.findall(r"([0-9.]+) s", round_line)[:2])
    ratio = float(re.search(r"median ratio ([0-9.]+)", summary).group(1))
    assert ratio == pytest.approx(new / old, rel=0.02)  # the times are printed to 0.01 s
    assert re.search(r"x 2 s \(HEAD as measured then\) = ([0-9.]+) s", summary).group(1) == f"{2 * ratio:.2f}"
    assert subprocess.run(["git", "worktree", "list"], capture_output=True, text=True, cwd=ROOT).stdout == before
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "planner_speed.py"), "--against", "no-such-commit"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 1 and "--against no-such-commit: no such commit" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_gpu_parallel_check_runs_the_kernel_path_on_cpu(tmp_path):
    """gpu_check.sh's first step, on the CPU (gloo): a world of one met as the workers meet theirs, and the
    diffuse through the sequence-parallel kernel equals the plain one."""
    pytest.importorskip("diffusers")
    out = tmp_path / "kernel.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_parallel_check.py"), "--device", "cpu",
                           "--models", "tiny-flux", "--size", "64", "--steps", "2", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and report["backend"] == "gloo" and report["models"][0]["max_abs_diff"] == 0.0


def test_class_alone_runs_each_class_of_the_mix_on_its_own():
    """One line per class, fraction, policy; the rate is the fraction of that class's own SLO-aware
    ceiling, and the request count is what that rate gives over the duration."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "class_alone.py"), "--mixes", "video-wan",
                           "--duration", "600", "--fractions", "0.5", "--policies", "trident", "--seeds", "0",
                           "--jobs", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("  video-wan")]
    assert len(lines) == 4 and {line.split()[2] for line in lines} == {"832x480x17", "832x480x33", "832x480x81",
                                                                       "1280x720x81"}
    for line in lines:
        rate = float(line.split("(")[1].split()[0])
        n = int(line.split("req/s, ")[1].split()[0])
        assert 0.5 * 600 * rate < n < 1.5 * 600 * rate
        assert 0.0 <= float(line.split()[-1]) <= 1.0
    small = next(line for line in lines if "832x480x17" in line)
    big = next(line for line in lines if "1280x720x81" in line)
    assert float(small.split("(")[1].split()[0]) > 10 * float(big.split("(")[1].split()[0])


def test_ceiling_fraction_bisects_each_seed_and_reports_mean_and_lowest():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ceiling_fraction.py"), "--mixes", "video-wan",
                           "--duration", "600", "--seeds", "0,1", "--policies", "trident", "--jobs", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("  video-wan")]
    ceiling = float(line.split()[2])
    assert ceiling == pytest.approx(0.181, abs=0.001)  # the SLO-aware ceiling at SLO scale 3 (README)
    per_seed = line.split(f"{line.split()[2]}  ")[1].split("   ")[0].split(", ")
    assert [p.split(":")[0] for p in per_seed] == ["0", "1"]
    fractions = [float(p.split()[2].rstrip("%")) / 100 for p in per_seed]
    for p, f in zip(per_seed, fractions):
        assert float(p.split()[1]) / ceiling == pytest.approx(f, abs=0.006)
        own = float(p.split()[3].strip("()%")) / 100  # against the stream's own class counts
        assert 0.6 * f < own < 1.6 * f
    mean, lowest = (float(x.rstrip("%")) / 100 for x in line.split()[-2:])
    assert mean == pytest.approx(sum(fractions) / 2, abs=0.01) and lowest == pytest.approx(min(fractions), abs=0.006)


def test_crunch_accounts_for_every_gpu_second_of_its_window():
    """benchmarks/crunch.py: the window's busy GPU-seconds by class, stage and degree add up to what it
    says was busy, busy and idle to the cluster's GPUs times the window, and the classes to the stream."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crunch.py"), "--duration", "600",
                           "--window", "100,500", "--fraction", "1.2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    sent = [int(line.split(" of ")[1].split()[0]) for line in lines if " met " in line]
    assert len(sent) == 4 and 0.6 * 600 * 1.2 * 0.181 < sum(sent) < 1.4 * 600 * 1.2 * 0.181
    (head,) = [line for line in lines if line.startswith("window 100-500 s:")]
    busy, total = (float(x) for x in head.split(": ")[1].split(" GPU-seconds")[0].split(" of "))
    assert total == 16 * 400
    parts = [float(line.split("degree ")[1].split()[1]) for line in lines if "degree " in line and line.startswith("  ")]
    assert sum(parts) == pytest.approx(busy, abs=len(parts) + 1)  # each printed to the GPU-second
    (tail,) = [line for line in lines if line.startswith("idle: ")]
    idle = float(tail.split()[1])
    assert idle + busy == pytest.approx(total, abs=2) and 0 <= idle < total


@pytest.mark.parametrize("args, said", [(["tiny_latency.py", "--steps", "0"], "--steps must be from 1 to 200, got 0"),
                                        (["tiny_latency.py", "--runs", "0"], "--runs must be from 1"),
                                        (["tiny_latency.py", "--size", "65"], "--size: size must be WIDTHxHEIGHT"),
                                        (["latency_pareto.py", "--fractions", "0"], "--fractions: '0' is not a number > 0"),
                                        (["latency_pareto.py", "--scales", "3,,5"], "--scales: '' is not a number > 0"),
                                        (["latency_pareto.py", "--quick", "--mixes", "nope"], "--quick sets --mixes itself"),
                                        (["latency_pareto.py", "--from-json", "/nonexistent"], "cannot read it"),
                                        (["latency_pareto.py", "--seed", "-1"], "--seed: -1 is not in"),
                                        (["latency_pareto.py", "--jobs", "0"], "--jobs: 0 is not a number of worker"),
                                        (["latency_pareto.py", "--mixes", "video-wan", "--scales", "0.5"],
                                         "every class can from scale 0.66"),
                                        (["latency_pareto.py", "--scales", "5000"], "--scales: '5000' is over 1000"),
                                        (["overload.py", "--policies", ";"], "--policies: no policy given"),
                                        (["overload.py", "--seed", "-1"], "--seed: -1 is not in 0..2147483647"),
                                        (["overload.py", "--seeds", "0,-1"], "--seeds: -1 is not in 0..2147483647"),
                                        (["goodput.py", "--seed", "-1"], "--seed: -1 is not in 0..2147483647"),
                                        (["goodput.py", "--scales", "x"], "--scales: 'x' is not a number > 0"),
                                        (["goodput.py", "--from-json", "/nonexistent"], "cannot read it"),
                                        (["crunch.py", "--window", "1800,1000"], "--window: '1800,1000' needs 0"),
                                        (["crunch.py", "--window", "x"], "--window: 'x' is not START,END"),
                                        (["crunch.py", "--fraction", "0"], "--fraction: 0 is not a number > 0")])
def test_a_bad_flag_of_a_benchmark_is_named_before_its_work(args, said):
    """Outside test: tiny_latency.py timed `--steps 0` as the default 28 steps and ended a bad size or
    `--runs 0` in a traceback; latency_pareto.py's `--fractions 0` said "a rate > 0 is needed";
    overload.py's `--policies ";"` said "list index out of range"; overload.py and goodput.py ran
    `--seed -1` as seed 1's stream; goodput.py's `--from-json /nonexistent` was a traceback (the rest
    of goodput.py's: tests/test_benchmark_inputs.py)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert said in done.stderr.strip().splitlines()[-1], done.stderr


@pytest.mark.parametrize("args", [["overload.py", "--mixes", "nosuch"], ["latency_pareto.py", "--mixes", "nosuch"],
                                  ["overload.py", "--policies", "trident:grow=maybe"]])
def test_a_bad_input_to_a_pooled_benchmark_ends_in_one_line(args):
    """Their runs go to worker processes: the error comes back whole and is printed as one line."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:], "--jobs", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith(args[0] + ": ") and len(done.stderr.strip().splitlines()) == 1
    assert ("unknown mix 'nosuch'" if "nosuch" in args else "grow='maybe'") in done.stderr


def test_hindsight_sets_the_bound_beside_a_policy_on_the_same_stream():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hindsight.py"), "--mix", "video-wan",
                           "--duration", "300", "--fractions", "0.5,1.4", "--policies", "trident;pipeline-static:degree=1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2
    for rate, of_ceiling, of_stream, n, bound, _solve, trident, static in rows:
        assert float(bound) >= max(float(trident), float(static)) - 1e-6  # nothing beats hindsight
        assert 0.6 * float(of_ceiling.rstrip("%")) < float(of_stream.rstrip("%")) < 1.6 * float(of_ceiling.rstrip("%"))
        assert 0.5 * 300 * float(rate) < int(n) < 1.5 * 300 * float(rate)
    assert float(rows[0][4]) > float(rows[1][4])  # 1.4x the ceiling binds
    tight = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hindsight.py"), "--mix", "video-wan",
                            "--duration", "300", "--fractions", "0.5,1.4", "--policies", "trident", "--integral",
                            "--slot", "5", "--time-limit", "5"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert tight.returncode == 0 and "(integral bound)" in tight.stdout, tight.stdout + tight.stderr
    tight_rows = [line.split() for line in tight.stdout.splitlines() if line.strip()[:1].isdigit()]
    for row, (*_, bound, _solve, trident, _static) in zip(tight_rows, rows, strict=True):
        # stopped by its time limit: the proven bound / the best schedule found (5 s slots: a little looser)
        proven, found = (float(x) for x in (row[4] + "/" + row[4]).split("/")[:2])
        assert float(trident) - 1e-6 <= proven <= float(bound) + 0.02 and found <= proven + 1e-6
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hindsight.py"), "--fractions", "0.5,x"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "comma-separated numbers" in bad.stderr
    short = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hindsight.py"), "--duration", "600",
                            "--fractions", "1", "--policies", "", "--time-limit", "0.001"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert short.returncode == 1 and "did not solve" in short.stderr and "--time-limit" in short.stderr
    assert "Traceback" not in short.stderr
