"""What the goodput and latency Pareto scripts write, and which inputs they refuse, with their
simulations replaced by stand-ins (the argument handling is under test here, not the numbers)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmark_scripts import load_script as _script  # noqa: E402  (tests/, on sys.path under pytest)


def _main(module, monkeypatch, *args: str) -> int:
    """``module.main()`` with ``args`` as its command line: its exit status (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *args])
    try:
        module.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _pareto_rows(tasks: list[tuple], jobs: int) -> list[dict]:
    """latency_pareto.simulate's rows, made up: every policy at 95 % attainment."""
    return [{"mix": mix, "slo_scale": scale, "fraction": f, "rate": f, "policy": policy, "capacity_rps": 1.0,
             "slo_aware_capacity_rps": 1.0, "attainment": 0.95, "mean_s": 10.0, "p95_s": 20.0, "requests": 10}
            for mix, scale, policy, fractions, *_ in tasks for f in fractions]


def test_latency_pareto_replaces_the_committed_table_only_with_the_settings_it_is_made_with(tmp_path, monkeypatch,
                                                                                            capsys):
    """Outside test: `--jobs 2 --seed 1` (a command the README gives) and `--mixes video-wan --scales 5000
    --fractions 0.5` replaced the committed 60-cell seed-0 table."""
    lp = _script("latency_pareto")
    monkeypatch.setattr(lp, "simulate", _pareto_rows)
    monkeypatch.chdir(tmp_path)  # the committed table's path is relative: it would land under here
    committed = tmp_path / lp.DEFAULT_MARKDOWN
    for args, differs in ((["--jobs", "2", "--seed", "1"], "--seed 1"),
                          (["--mixes", "video-wan", "--scales", "5", "--fractions", "0.5"], "--mixes video-wan"),
                          (["--trident", "trident:late=reject"], "--trident trident:late=reject")):
        assert _main(lp, monkeypatch, *args) == 0
        said = capsys.readouterr().out
        assert not committed.exists() and not (tmp_path / "benchmarks").exists(), args
        assert f"markdown not written: {lp.DEFAULT_MARKDOWN} is made with the defaults" in said and differs in said
        assert "give --markdown FILE" in said
    assert _main(lp, monkeypatch, "--seed", "1", "--markdown", "mine.md") == 0
    assert "markdown in mine.md" in capsys.readouterr().out
    assert (tmp_path / "mine.md").read_text().startswith("# Latency Pareto on 2x8xH200, profile h200, 900 s of "
                                                         "Poisson arrivals, seed 1\n")
    # the defaults (--jobs aside, and the scales however written) make the committed table
    assert _main(lp, monkeypatch, "--jobs", "1", "--scales", "5,1.5,3.0") == 0
    assert f"markdown in {lp.DEFAULT_MARKDOWN}" in capsys.readouterr().out
    assert committed.read_text().startswith("# Latency Pareto on 2x8xH200, profile h200, 900 s of Poisson arrivals, "
                                            "seed 0\n")


@pytest.mark.parametrize("args, said", [
    (["--mixes", "video-wan", "--scales", "0.3", "--fractions", "0.5"],
     "--scales: video-wan x0.3: 4 of 4 classes meet their SLO at no degree or batch"),
    (["--mixes", "video-wan", "--scales", "3,0.5", "--fractions", "0.5"],
     "--scales: video-wan x0.5: 2 of 4 classes meet their SLO at no degree or batch (wan2.1-1.3b 832x480x81, "
     "wan2.1-1.3b 1280x720x81; every class can from scale 0.66): the SLO-aware ceiling is then that of the other "
     "classes alone"),
    (["--mixes", "video-wan", "--scales", "5000", "--fractions", "0.5"],
     "--scales: '5000' is over 1000, the largest SLO scale (as trident simulate --slo-scale)"),
    (["--jobs", "0"], "--jobs: 0 is not a number of worker processes"),
    (["--markdown", "{tmp}/file/x.md"], "--markdown {tmp}/file/x.md: cannot write it"),
])
def test_latency_pareto_refuses_a_scale_it_cannot_table_before_its_work(args, said, tmp_path, monkeypatch, capsys):
    """Outside test: at SLO scale 0.3 "a rate > 0 is needed with a mix"; at 0.5 every policy tabled at 0.000
    attainment at 3.5x the capacity ceiling (classes turned away cost the SLO-aware ceiling nothing); 5000
    taken where `trident simulate` stops at 1000; `--jobs 0` "max_workers must be greater than 0"."""
    lp = _script("latency_pareto")
    monkeypatch.setattr(lp, "simulate", lambda tasks, jobs: pytest.fail("simulated before refusing"))
    (tmp_path / "file").write_text("")
    monkeypatch.chdir(tmp_path)
    assert _main(lp, monkeypatch, *(a.format(tmp=tmp_path) for a in args)) == 2
    assert said.format(tmp=tmp_path) in capsys.readouterr().err.strip().splitlines()[-1]


def _goodput_row(task: tuple) -> dict:
    """goodput._one's row for ``task``, made up (it records no settings: the script adds them)."""
    mix, scale, policy, _cluster, _profile, _duration, _seed, _target, noise = task
    return {"mix": mix, "slo_scale": scale, "policy": policy, "noise_sigma": noise, "capacity_rps": 0.19,
            "slo_aware_capacity_rps": 0.181, "goodput_rps": 0.2, "fair_goodput_rps": 0.17, "sweep_s": 1.0,
            "curve": [{"rate": 0.17, "attainment": 0.95, "min_class": 0.9, "by_class": {"a": 0.9}}]}


def test_goodput_rows_record_their_settings_and_are_rendered_and_reused_with_them(tmp_path, monkeypatch, capsys):
    """Outside test: `--from-json y.json` and `--reuse y.json` of a 300 s run headed the tables "1800 s of
    Poisson arrivals" (the command line's default), and --reuse took rows of other settings unchecked."""
    gp = _script("goodput")
    swept: list[list[tuple]] = []
    monkeypatch.setattr(gp, "sweep", lambda tasks, jobs: swept.append(tasks) or [_goodput_row(t) for t in tasks])
    monkeypatch.chdir(tmp_path)
    run = ["--mixes", "video-wan", "--scales", "3", "--policies", "trident"]
    assert _main(gp, monkeypatch, *run, "--duration", "300", "--out", "y.json") == 0
    (row,) = json.loads((tmp_path / "y.json").read_text())
    assert {k: row[k] for k, _, _ in gp.RECORDED} == {"cluster": "2x8xH200", "profile": "h200", "duration_s": 300.0,
                                                       "seed": 0, "target": 0.9, "noise_sigma": 0.0}
    head = "# Goodput on 2x8xH200, profile h200, 300 s of Poisson arrivals, seed 0\n"
    assert _main(gp, monkeypatch, "--from-json", "y.json", "--markdown", "y.md") == 0
    assert (tmp_path / "y.md").read_text().startswith(head)
    capsys.readouterr()
    # --reuse takes a row only of the run's own settings
    assert _main(gp, monkeypatch, *run, "--reuse", "y.json", "--reuse-policies", "trident", "--markdown", "z.md") == 2
    assert ("--reuse y.json: row video-wan x3 trident was made with --duration 300; this run has --duration 1800"
            in capsys.readouterr().err)
    assert len(swept) == 1 and not (tmp_path / "z.md").exists()
    assert _main(gp, monkeypatch, *run, "--duration", "300", "--reuse", "y.json", "--reuse-policies", "trident",
                 "--markdown", "z.md", "--out", "z.json") == 0
    assert swept[-1] == [] and (tmp_path / "z.md").read_text().startswith(head)
    assert json.loads((tmp_path / "z.json").read_text()) == [row]
    # an older file's rows record none of it: "unknown", not the command line's defaults; not reused
    old = {k: v for k, v in row.items() if k not in ("cluster", "profile", "duration_s", "seed", "target")}
    (tmp_path / "old.json").write_text(json.dumps([old]))
    assert _main(gp, monkeypatch, "--from-json", "old.json", "--markdown", "old.md") == 0
    text = (tmp_path / "old.md").read_text()
    assert text.startswith("# Goodput on an unknown cluster, profile unknown, an unknown duration of Poisson "
                           "arrivals, seed unknown\n")
    assert "The rows do not record --cluster, --profile, --duration, --seed, --target" in text and "1800" not in text
    capsys.readouterr()
    assert _main(gp, monkeypatch, *run, "--duration", "300", "--reuse", "old.json", "--reuse-policies", "trident") == 2
    assert "row video-wan x3 trident does not record --cluster" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["--from-json", "/nonexistent"], "--from-json /nonexistent: cannot read it (No such file or directory)"),
    (["--from-json", "lp.json"], "--from-json lp.json: a latency_pareto.py --json file, not rows this script wrote"),
    (["--reuse", "lp.json", "--reuse-policies", "trident"], "--reuse lp.json: a latency_pareto.py --json file"),
    (["--from-json", "empty.json"], "--from-json empty.json: not a file this script wrote with --out (a list of rows)"),
    (["--from-json", "none.json"], "--from-json none.json: holds no rows"),
    (["--from-json", "bad.json"], "--from-json bad.json: row 0: curve missing"),
    (["--out", "file/x.json"], "--out file/x.json: cannot write it"),
    (["--markdown", "file/x.md"], "--markdown file/x.md: cannot write it"),
    (["--policies", ";"], "--policies: no policy given"),
    (["--scales", "x"], "--scales: 'x' is not a number > 0 (comma-separated, e.g. 1.5,3,5)"),
    (["--scales", "5000"], "--scales: '5000' is over 1000"),
    (["--jobs", "0"], "--jobs: 0 is not a number of worker processes"),
    (["--seed", "-1"], "--seed: -1 is not in 0..2147483647"),
])
def test_goodput_names_a_bad_input_in_one_line_before_any_sweep(args, said, tmp_path, monkeypatch, capsys):
    """Outside test: tracebacks (a missing or foreign file, an unwritable --out; --markdown's only after
    every sweep had run), `{}` rendered as nothing, `--policies ";"` wrote `[]` over the --out file,
    and `--scales x`, `--jobs 0` failed without naming the flag."""
    gp = _script("goodput")
    monkeypatch.setattr(gp, "sweep", lambda tasks, jobs: pytest.fail("swept before refusing"))
    (tmp_path / "lp.json").write_text(json.dumps({"settings": {"seed": 0}, "rows": [{"mix": "video-wan"}]}))
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "none.json").write_text("[]")
    (tmp_path / "bad.json").write_text(json.dumps([{"mix": "m", "policy": "p", "slo_scale": 3, "capacity_rps": 1,
                                                    "goodput_rps": 1, "fair_goodput_rps": 1}]))
    (tmp_path / "file").write_text("")
    monkeypatch.chdir(tmp_path)
    assert _main(gp, monkeypatch, *args) == 2
    assert said in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "results").exists()  # the default --out untouched
