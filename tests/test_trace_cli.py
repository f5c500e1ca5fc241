"""`trident trace generate | import | stats` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tridentcore.cli import app
from tridentcore.formats.traces import read_trace

runner = CliRunner()

PAPER = (
    "# released trace, two requests\n"
    "Request(request_id=0, timestamp=0.0, height=1024, width=1024, num_frames=1, "
    "prompt='a cat, \"quoted\"', negative_prompt='', num_inference_steps=28)\n"
    "\n"
    "Request(request_id=1, timestamp=2.5, height=512, width=512, num_frames=1, "
    "prompt=\"it's a dog, (sitting)\", negative_prompt='blurry', num_inference_steps=28)\n"
)


def _error_line(result) -> str:
    """The one ``error: …`` line a failed command prints on stderr."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _generate(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    result = runner.invoke(app, ["trace", "generate", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_generate_writes_json_lines_deterministically(tmp_path):
    args = ("--mix", "image-video", "--arrival", "gamma:cv=2", "--rate", "2", "--duration", "60", "--seed", "3")
    a = _generate(tmp_path, "a.jsonl", *args)
    b = _generate(tmp_path, "sub/b.jsonl", *args)
    c = _generate(tmp_path, "c.jsonl", *args[:-1], "4")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    entries = read_trace(a)
    assert len(entries) == len(a.read_text().splitlines()) > 60
    assert all(0 <= e.t < 60 for e in entries) and [e.t for e in entries] == sorted(e.t for e in entries)
    assert {e.model for e in entries} == {"sd3-medium", "wan2.1-1.3b"}
    assert all(e.seed is not None and e.prompt for e in entries)
    # --out -: the trace on stdout (it wrote a file named "-"), what was written on stderr
    piped = runner.invoke(app, ["trace", "generate", "--out", "-", *args])  # (click 8.2+: stdout, stderr apart)
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == a.read_text() and "to standard output" in piped.stderr
    assert not (Path.cwd() / "-").exists()


def test_simulating_a_generated_trace_is_simulating_the_mix(tmp_path):
    trace = _generate(tmp_path, "t.jsonl", "--mix", "sd3-mixed", "--rate", "1.5", "--duration", "60", "--seed", "5")
    common = ["simulate", "--cluster", "1x8xH200", "--policies", "trident,pipeline-static:degree=2", "--json",
              "--seed", "5"]
    from_mix = runner.invoke(app, [*common, "--mix", "sd3-mixed", "--rate", "1.5", "--duration", "60"])
    from_trace = runner.invoke(app, [*common, "--trace", str(trace)])
    assert from_mix.exit_code == 0 and from_trace.exit_code == 0, from_mix.output + from_trace.output
    drop = lambda rows: [{k: v for k, v in r.items() if k != "planner_p99_ms"} for r in rows]  # noqa: E731 (wall clock)
    assert drop(json.loads(from_trace.output)) == drop(json.loads(from_mix.output))


def test_a_trace_of_tiny_models_is_priced_by_the_profile_that_has_them(tmp_path):
    """As the ``tiny`` mix is (``cpu`` on ``2xcpu``); a byte order mark first is read past; a file without a
    request line says so, naming it."""
    trace = _generate(tmp_path, "tiny.jsonl", "--mix", "tiny", "--rate", "1", "--duration", "20")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + trace.read_bytes())
    assert read_trace(bom) == read_trace(trace)
    result = runner.invoke(app, ["simulate", "--trace", str(bom), "--policies", "trident", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["requests"] == len(read_trace(trace))
    stats = runner.invoke(app, ["trace", "stats", str(trace), "--json"])  # priced as simulate prices it
    given = runner.invoke(app, ["trace", "stats", str(trace), "--profile", "cpu", "--cluster", "2xcpu", "--json"])
    assert stats.exit_code == given.exit_code == 0, stats.output + given.output
    assert json.loads(stats.stdout) == json.loads(given.stdout)
    assert json.loads(stats.stdout)["cluster"] == "1x2xcpu" and json.loads(stats.stdout)["requests"] == len(read_trace(trace))
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n\n# nothing here\n")):
        (tmp_path / name).write_text(text)
        line = _error_line(runner.invoke(app, ["simulate", "--trace", str(tmp_path / name)]))
        assert f"{tmp_path / name}: " in line and ("empty file" in line or "no request lines" in line)


def test_generate_then_stats_round_trip(tmp_path):
    trace = _generate(tmp_path, "t.jsonl", "--mix", "image-video", "--arrival", "constant", "--rate", "0.25",
                      "--duration", "120")
    result = runner.invoke(app, ["trace", "stats", str(trace), "--profile", "h200", "--cluster", "2x8xH200", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["requests"] == 30 and stats["rate_rps"] == pytest.approx(0.25)
    assert stats["duration_s"] == pytest.approx(29 / 0.25) and stats["gpus"] == 16
    assert sum(c["requests"] for c in stats["classes"]) == 30
    # the same arithmetic as the simulator's capacity ceiling: offered / GPUs = rate / ceiling
    from tridentcore.bench.scenario import capacity_rps, load_scenario
    from tridentcore.bench.spec import RunSpec

    loaded = load_scenario(RunSpec(mix=None, trace=str(trace)))
    assert stats["capacity_rps"] == pytest.approx(capacity_rps(loaded))
    assert stats["load_fraction"] == pytest.approx(0.25 / capacity_rps(loaded))
    assert stats["offered_gpu_s_per_s"] == pytest.approx(16 * stats["load_fraction"])
    assert not stats["overloaded"] and result.stderr == ""


def test_stats_table_and_overload_warning(tmp_path):
    trace = _generate(tmp_path, "t.jsonl", "--mix", "image-video", "--rate", "2", "--duration", "120")
    result = runner.invoke(app, ["trace", "stats", str(trace), "--profile", "h200", "--cluster", "2x8xH200"])
    assert result.exit_code == 0, result.output
    assert "259 requests" in result.stdout and "wan2.1-1.3b 1280x720x81" in result.stdout
    assert "offered load:" in result.stdout and "GPU-s/s" in result.stdout and "16 GPUs" in result.stdout
    warning = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: offered load") and "exceeds" in warning[0]
    # a bigger cluster takes the same trace without a warning
    result = runner.invoke(app, ["trace", "stats", str(trace), "--cluster", "8x8xH200"])
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_a_model_no_profile_row_prices_is_named_with_its_file_and_lines(tmp_path):
    """A typo in a trace's model: the file and the lines it is on, as the trace's other errors; in a
    mix file, the class (its entry in the file and its label)."""
    line = '{"t": %d, "model": "%s", "height": 1024, "width": 1024, "steps": 28}\n'
    typo = tmp_path / "typo.jsonl"
    typo.write_text("# one typo, twice\n" + line % (0, "sd3-mediun") + line % (1, "sd3-medium") + line % (2, "sd3-mediun"))
    for command in (["simulate", "--trace", str(typo), "--policies", "trident"], ["trace", "stats", str(typo)]):
        assert _error_line(runner.invoke(app, command)).startswith(
            f"error: {typo}: lines 2, 4: no rows for model 'sd3-mediun' on H200; models on H200: ")
    typo.write_text(line % (0, "sd3-mediun"))
    assert _error_line(runner.invoke(app, ["simulate", "--trace", str(typo)])).startswith(
        f"error: {typo}: line 1: no rows for model 'sd3-mediun'")
    mix = tmp_path / "typo.yaml"
    mix.write_text("name: typo\nclasses:\n  - {model: sd3-medium, height: 512, width: 512, steps: 28}\n"
                   "  - {model: sd3-mediun, height: 1024, width: 1024, steps: 28}\n")
    assert f"cannot cost mix '{mix}': classes[1] (sd3-mediun 1024x1024): no rows for model 'sd3-mediun'" in (
        _error_line(runner.invoke(app, ["simulate", "--mix", str(mix), "--policies", "trident", "--duration", "30"])))


def test_a_shape_the_http_api_refuses_is_refused_before_simulating(tmp_path):
    """Frames that are not k*4+1 for the video model, a side that is not a multiple of 16: the server
    (emulated devices, as the live bench runs the trace) refuses them with 422, so the simulator must
    not count them as served requests: the lines are named, one problem each; a valid trace runs."""
    line = '{"t": %d, "model": "wan2.1-1.3b", "height": 480, "width": %d, "frames": %d, "steps": 50}\n'
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line % (0, 832, 20) + line % (1, 830, 17) + line % (2, 832, 17) + line % (3, 832, 20))
    for command in (["simulate", "--trace", str(bad), "--policies", "trident"], ["trace", "stats", str(bad)]):
        got = _error_line(runner.invoke(app, command))
        assert got.startswith(f"error: {bad}: 2 problems: lines 1, 4: frames 20 must be k*4+1 in "), got
        assert "line 2: width 830 is not a multiple of 16 (the HTTP API refuses it)" in got
    bad.write_text(line % (0, 832, 17) + line % (1, 832, 81))
    assert runner.invoke(app, ["simulate", "--trace", str(bad), "--policies", "trident"]).exit_code == 0
    # the tiny models (cpu profile): what every pipeline refuses (they simulated, then failed live)
    tiny = '{"t": %d, "model": "%s", "height": %d, "width": 64, "frames": %d, "steps": 2}\n'
    bad.write_text(tiny % (0, "tiny-sd3", 63, 1) + tiny % (1, "tiny-sd3", 64, 9) + tiny % (2, "tiny-wan", 64, 10))
    got = _error_line(runner.invoke(app, ["simulate", "--trace", str(bad), "--policies", "trident"]))
    assert "line 1: height 63 is not a multiple of 16" in got and "line 2: frames must be 1 for the image model " \
        "tiny-sd3 (got 9)" in got and "line 3: frames 10 must be k*4+1" in got, got
    bad.write_text(tiny % (0, "tiny-sd3", 48, 1) + tiny % (1, "tiny-wan", 64, 9))
    assert runner.invoke(app, ["simulate", "--trace", str(bad), "--policies", "trident"]).exit_code == 0


def test_import_paper_trace(tmp_path):
    src = tmp_path / "paper.txt"
    src.write_text(PAPER)
    out = tmp_path / "out" / "p.jsonl"
    result = runner.invoke(app, ["trace", "import", str(src), "--model", "sd3-medium", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "imported 2 requests (paper Request(...) lines)" in result.stdout and "warning" not in result.stderr
    typo = runner.invoke(app, ["trace", "import", str(src), "--model", "sd3-mediun", "--out", str(tmp_path / "t.jsonl")])
    assert typo.exit_code == 0 and "no shipped profile has rows for sd3-mediun" in typo.stderr  # (said at once)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"t": 0.0, "model": "sd3-medium", "height": 1024, "width": 1024, "frames": 1, "steps": 28,
         "prompt": 'a cat, "quoted"'},
        {"t": 2.5, "model": "sd3-medium", "height": 512, "width": 512, "frames": 1, "steps": 28,
         "prompt": "it's a dog, (sitting)", "negative_prompt": "blurry"},
    ]
    # the imported file and the original give the same stats
    a = runner.invoke(app, ["trace", "stats", str(out), "--json"])
    b = runner.invoke(app, ["trace", "stats", str(src), "--model", "sd3-medium", "--json"])
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    drop = lambda d: {k: v for k, v in d.items() if k != "file"}  # noqa: E731
    assert drop(json.loads(a.stdout)) == drop(json.loads(b.stdout))
    assert json.loads(a.stdout)["rate_rps"] == pytest.approx(1 / 2.5)
    # JSON lines import too (normalised)
    again = tmp_path / "again.jsonl"
    result = runner.invoke(app, ["trace", "import", str(out), "--out", str(again)])
    assert result.exit_code == 0 and "(JSON lines)" in result.stdout and again.read_text() == out.read_text()
    # onto itself (outside test 121: the paper-format input replaced by its JSON lines, exit 0)
    line = _error_line(runner.invoke(app, ["trace", "import", str(src), "--model", "sd3-medium", "--out", str(src)]))
    assert line == f"error: --out {src} is the trace being imported: write the JSON lines to another file"
    assert src.read_text() == PAPER


def test_import_reads_standard_input_given_a_dash(tmp_path):
    """`trace import - --out -` (a filter in a pipe): "-: cannot read: No such file or directory" once."""
    import subprocess
    import sys

    src = tmp_path / "paper.txt"
    src.write_text(PAPER)
    out = tmp_path / "p.jsonl"
    assert runner.invoke(app, ["trace", "import", str(src), "--model", "sd3-medium", "--out", str(out)]).exit_code == 0
    proc = subprocess.run([sys.executable, "-m", "tridentcore.cli", "trace", "import", "-", "--model", "sd3-medium",
                           "--out", "-"], input=PAPER, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == out.read_text(), proc.stderr
    assert "imported 2 requests (paper Request(...) lines) from /dev/stdin" in proc.stderr
    stats = subprocess.run([sys.executable, "-m", "tridentcore.cli", "trace", "stats", "-", "--json"],
                           input=out.read_text(), capture_output=True, text=True, timeout=120)  # (outside test 109)
    assert stats.returncode == 0 and json.loads(stats.stdout)["requests"] == 2, stats.stderr


@pytest.mark.parametrize("args, needle", [
    (["trace", "import", "{paper}", "--out", "{tmp}/x.jsonl"], "--model"),
    (["trace", "stats", "{paper}"], "--model"),
    (["trace", "stats", "{tmp}/missing.jsonl"], "cannot read"),
    (["trace", "stats", "{bad}"], "3 problems: line 1: height"),
    (["trace", "stats", "{gz}"], "gzip-compressed, not text: give it uncompressed"),  # (was "not UTF-8 text (byte 1)")
    (["trace", "stats", "{paper}", "--model", "no-such-model"], "no-such-model"),
    (["trace", "stats", "{paper}", "--model", "sd3-medium", "--cluster", "banana"], "banana"),
    (["trace", "generate", "--mix", "no-such-mix", "--out", "{tmp}/x.jsonl"], "unknown mix"),
    (["trace", "generate", "--arrival", "gamma:cv=-1", "--rate", "-1", "--out", "{tmp}/x.jsonl"], "2 problems"),
    (["trace", "generate", "--rate", "0.001", "--duration", "1", "--seed", "1", "--out", "{tmp}/x.jsonl"], None),
    # the temporary file's errno line (`[Errno 21] Is a directory: '.d.11340.tmp' -> 'd'`; outside test)
    (["trace", "generate", "--out", "{tmp}"], "--out {tmp}: is a folder, not a file"),
    (["trace", "import", "{paper}", "--model", "sd3-medium", "--out", "{tmp}"], "--out {tmp}: is a folder, not a file"),
    (["trace", "generate", "--out", "/proc/x.jsonl"], "--out /proc/x.jsonl: cannot be written (No such file or"),
    # a folder's name made a file of that name; a results database was written over (outside test 131)
    (["trace", "generate", "--out", "{tmp}/od/"], "--out {tmp}/od/: ends in '/', a folder's name; give a file's path"),
    (["trace", "generate", "--out", "{tmp}/runs.duckdb"], "--out {tmp}/runs.duckdb: is a DuckDB database (a results "
                                                         "store?): not written over; give another file"),
    # ... or one whose header was damaged, or a new file of that name (outside test 132)
    (["trace", "generate", "--out", "{tmp}/new.DuckDB"], "--out {tmp}/new.DuckDB: a .duckdb name is a results "
                                                        "database's; this writes text: give another name"),
    (["trace", "generate", "--out", "{tmp}/" + "a" * 300 + ".jsonl"], "cannot be written (File name too long)"),
    # a trace of 0.5 s that simulate --mix refuses to draw (outside test 99)
    (["trace", "generate", "--mix", "tiny", "--duration", "0.5", "--out", "{tmp}/x.jsonl"],
     "Invalid value for '--duration': Input should be greater than or equal to 1"),
    # control characters in a name reached the terminal raw (outside test 99: ESC ] 0 ; ... BEL retitled it)
    (["trace", "import", "{esc}", "--out", "{tmp}/x.jsonl"],
     r"line 1: model: must be a model name of 1..128 characters, none of them control characters (got '\x1b]0;pwn\x07')"),
    (["trace", "import", "{paper}", "--model", "a\nb", "--out", "{tmp}/x.jsonl"], "none of them control characters"),
    (["trace", "generate", "--mix", "{escmix}", "--out", "{tmp}/x.jsonl"],
     r"name: must be a string of 1..128 characters, none of them control characters (got 'evil\x1b]0;pwned\x07')"),
])
def test_errors_are_one_line(tmp_path, args, needle):
    paper = tmp_path / "paper.txt"
    paper.write_text(PAPER)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0, "model": "m", "height": 0, "width": 8, "steps": 2}\n{"t": -1, "model": "m", "height": 8, '
                   '"width": 8, "steps": 2, "colour": 1}\n')
    import gzip

    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"t": 0, "model": "sd3-medium", "height": 512, "width": 512, "steps": 4}\n'))
    esc = tmp_path / "esc.jsonl"
    esc.write_text('{"t": 0, "model": "\\u001b]0;pwn\\u0007", "height": 64, "width": 64, "steps": 2}\n')
    escmix = tmp_path / "esc.yaml"
    escmix.write_text('name: "evil\\e]0;pwned\\a"\nclasses:\n  - {model: tiny-sd3, height: 64, width: 64, steps: 2}\n')
    import duckdb

    duckdb.connect(str(tmp_path / "runs.duckdb")).close()
    args = [a.format(paper=paper, tmp=tmp_path, bad=bad, gz=gz, esc=esc, escmix=escmix) for a in args]
    needle = needle if needle is None else needle.format(tmp=tmp_path)
    result = runner.invoke(app, args)
    if needle is None:  # a mix with at least the first arrival (t = 0) always yields a request
        assert result.exit_code == 0, result.output
        return
    assert needle in _error_line(result)
    assert (tmp_path / "runs.duckdb").read_bytes()[8:12] == b"DUCK" and not (tmp_path / "od").exists()


def test_a_paper_lines_problems_are_in_its_own_words(tmp_path):
    """A ``Request(...)`` line's problems name its keywords (``timestamp``, ``num_inference_steps``), not
    the JSON-lines keys (``missing t``); an integer of 5000 digits is said so, not with Python's advice
    on ``sys.set_int_max_str_digits()``; an endless device is said to be one; one request is one
    (outside test)."""
    paper = tmp_path / "paper.txt"
    paper.write_text("Request(request_id=1, height=512, width=512, num_inference_steps=0)\n")
    line = _error_line(runner.invoke(app, ["trace", "stats", str(paper), "--model", "sd3-medium"]))
    assert line == (f"error: {paper}: 2 problems: line 1: missing timestamp; "
                    "line 1: num_inference_steps: must be an integer in 1..200 (got 0)"), line
    paper.write_text(f"Request(request_id=1, timestamp={'9' * 5000}, height=512, width=512, num_inference_steps=4)\n")
    line = _error_line(runner.invoke(app, ["trace", "stats", str(paper), "--model", "sd3-medium"]))
    assert line == f"error: {paper}: line 1: cannot parse the Request(...) call: an integer of more than 4300 digits"
    # a keyword the reader takes, misspelt: it imported a video as one frame (outside test 131); others are ignored
    paper.write_text("Request(request_id=0, timestamp=0.0, height=480, width=832, num_frame=81, prompt='a boat', "
                     "num_inference_steps=50, guidance_scale=7.5)\n")
    line = _error_line(runner.invoke(app, ["trace", "stats", str(paper), "--model", "wan2.1-1.3b"]))
    assert line == (f"error: {paper}: line 1: num_frame: not a keyword this reader takes: did you mean "
                    "num_frames?"), line
    line = _error_line(runner.invoke(app, ["trace", "stats", "/dev/zero"]))
    assert line.startswith("error: /dev/zero: not a regular file, and more than the limit of "), line
    one = tmp_path / "one.jsonl"
    one.write_text('{"t": 0, "model": "sd3-medium", "height": 512, "width": 512, "steps": 4}\n')
    result = runner.invoke(app, ["trace", "stats", str(one)])
    assert result.exit_code == 0 and result.output.startswith(f"{one}: 1 request over 0.0 s"), result.output


@pytest.mark.parametrize("text", [
    '{"t": 0, "model": "sd3-medium", "height": 512, "width": 512, "steps": 4, "prompt": "a \\ud800 b"}\n',
    "Request(request_id=0, timestamp=0.0, height=512, width=512, num_frames=1, prompt='a \\ud800 b', "
    "negative_prompt='', num_inference_steps=4)\n",
], ids=["json", "paper"])
def test_a_prompt_that_is_not_unicode_is_refused_and_an_import_leaves_its_out_file(tmp_path, text):
    """A lone surrogate (JSON's "\\ud800" escape) was read, simulated, then broke `trace import`, whose
    --out was emptied first, and was refused by the HTTP API in a live bench stored complete."""
    src = tmp_path / "uni.trace"
    src.write_text(text)
    out = tmp_path / "keep.jsonl"
    out.write_text('{"t": 1}\n')
    got = _error_line(runner.invoke(app, ["trace", "import", str(src), "--model", "sd3-medium", "--out", str(out)]))
    assert "line 1: prompt: holds a lone surrogate (\\ud800 at character 2), which is not Unicode text" in got, got
    assert out.read_text() == '{"t": 1}\n'
    assert "lone surrogate" in _error_line(runner.invoke(app, ["simulate", "--trace", str(src), "--model", "sd3-medium"]))


def test_a_failed_write_leaves_the_out_file_as_it_was(tmp_path, monkeypatch):
    from tridentcore.formats import traces

    out = tmp_path / "keep.jsonl"
    out.write_text('{"t": 1}\n')
    src = _generate(tmp_path, "g.jsonl", "--duration", "5")
    monkeypatch.setattr(traces, "format_trace", lambda entries: "".join(["x\n", "\ud800"]))  # cannot be encoded
    result = runner.invoke(app, ["trace", "import", str(src), "--out", str(out)])
    assert result.exit_code == 2 and out.read_text() == '{"t": 1}\n' and list(tmp_path.glob(".keep*")) == []


def _fifo(folder: Path, text: str | None = None) -> Path:
    """A FIFO in ``folder`` (made) that one writer (a thread) fills once with ``text``: it can be read
    once, as a pipe (None: nobody writes it)."""
    import os
    import threading

    folder.mkdir()
    path = folder / "trace.fifo"
    os.mkfifo(path)
    if text is None:
        return path

    def write():
        with open(path, "w") as f:
            f.write(text)

    threading.Thread(target=write, daemon=True).start()
    return path


def test_a_trace_from_a_pipe_is_read_once_and_used_everywhere(tmp_path):
    """`<(gunzip -c t.jsonl.gz)`: stats said "empty file", a bench "empty file", a FIFO hung (each
    command opened its trace more than once)."""
    src = _generate(tmp_path, "g.jsonl", "--mix", "sd3-mixed", "--rate", "3", "--duration", "20")
    want = runner.invoke(app, ["trace", "stats", str(src), "--json"])
    got = runner.invoke(app, ["trace", "stats", str(_fifo(tmp_path / "a", src.read_text())), "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["requests"] == json.loads(want.stdout)["requests"] == 67
    db = tmp_path / "p.duckdb"
    bench = runner.invoke(app, ["bench", "--trace", str(_fifo(tmp_path / "b", src.read_text())), "--policies", "trident",
                                "--db", str(db), "--no-progress"])
    assert bench.exit_code == 0, bench.output
    imported = runner.invoke(app, ["trace", "import", str(_fifo(tmp_path / "c", src.read_text())),
                                   "--out", str(tmp_path / "i.jsonl")])
    assert imported.exit_code == 0 and "(JSON lines)" in imported.stdout, imported.output
    # a live bench hands the file to Locust, which would read it again: refused before anything starts
    got = _error_line(runner.invoke(app, ["bench", "--backend", "live", "--trace", str(_fifo(tmp_path / "d")),
                                          "--db", str(db)]))
    assert "is not a regular file (a pipe?)" in got, got


def test_a_stored_trace_run_says_the_traces_rate_and_span(tmp_path):
    """They were the unused mix options' defaults (0.5 req/s for 600 s)."""
    from tridentcore.store import run_summary

    src = _generate(tmp_path, "g.jsonl", "--mix", "sd3-mixed", "--rate", "3", "--duration", "20")
    stats = json.loads(runner.invoke(app, ["trace", "stats", str(src), "--json"]).stdout)
    db = tmp_path / "p.duckdb"
    assert runner.invoke(app, ["bench", "--trace", str(src), "--policies", "trident", "--db", str(db),
                               "--no-progress"]).exit_code == 0
    row = run_summary(db).iloc[0]
    assert row.rate_rps == pytest.approx(stats["rate_rps"]) and row.rate_rps == pytest.approx(3.307, abs=1e-3)
    show = runner.invoke(app, ["runs", "show", row.run_id, "--db", str(db)]).stdout
    assert "at 3.30717 req/s for 19.9567 s" in show, show


def test_a_stored_run_names_its_files_whole_and_a_repeat_refuses_one_that_changed(tmp_path, monkeypatch):
    """A trace (or mix) named relative to the folder the bench ran in could not be found by a repeat
    from elsewhere, and one edited since was repeated as if the code had changed ("different:
    requests, ..."). The config now holds each file's absolute path and SHA-256."""
    from tridentcore.store import query_readonly

    work = tmp_path / "work"
    work.mkdir()
    src = _generate(work, "g.jsonl", "--mix", "sd3-mixed", "--rate", "3", "--duration", "10")
    db = tmp_path / "p.duckdb"
    monkeypatch.chdir(work)
    assert runner.invoke(app, ["bench", "--trace", "g.jsonl", "--policies", "trident", "--db", str(db),
                               "--no-progress"]).exit_code == 0
    (run_id, config), = query_readonly(db, "SELECT run_id, config_json FROM runs").itertuples(index=False)
    config = json.loads(config)
    assert config["trace"] == str(src) and config["inputs"]["trace"]["path"] == str(src)
    monkeypatch.chdir(tmp_path)  # elsewhere
    again = runner.invoke(app, ["bench", "--repeat", run_id, "--db", str(db)])
    assert again.exit_code == 0 and "identical" in again.stdout, again.output
    with open(src, "a") as f:
        f.write('{"t": 11, "model": "sd3-medium", "height": 512, "width": 512, "steps": 4}\n')
    got = _error_line(runner.invoke(app, ["bench", "--repeat", run_id, "--db", str(db)]))
    assert f"cannot be repeated as it ran: its trace {src} has changed since it was stored (sha256 " in got, got


def test_a_key_given_twice_in_a_json_line_is_refused(tmp_path):
    """The last value won without a word (the paper's format already refused a keyword given twice)."""
    src = tmp_path / "dup.jsonl"
    src.write_text('{"t": 0, "model": "sd3-medium", "height": 512, "width": 512, "steps": 4, "steps": 8}\n')
    for args in (["trace", "stats", str(src)], ["simulate", "--trace", str(src)]):
        assert 'line 1: the key "steps" is given twice in one object' in _error_line(runner.invoke(app, args))


def test_an_out_that_is_a_pipe_is_refused_at_once(tmp_path):
    """`--out FIFO` waited for a reader for ever (the check opened it for writing; outside test)."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (["trace", "generate", "--duration", "60", "--out", str(fifo)],
                 ["profile", "--model", "tiny-sd3", "--out", str(fifo)]):
        proc = subprocess.run([sys.executable, "-m", "tridentcore.cli", *args], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(f"error: --out {fifo}: not a regular file"), \
            proc.stderr
    assert "or - for standard output" in subprocess.run(
        [sys.executable, "-m", "tridentcore.cli", "trace", "generate", "--out", str(fifo)], capture_output=True,
        text=True, timeout=60).stderr


def test_an_out_through_a_symlink_writes_its_target_and_a_device_is_never_replaced(tmp_path):
    """The trace was written beside the target and moved over it: a symlink was replaced by a file,
    and, as root, `--out /dev/null` made the machine's /dev/null a regular file (outside test)."""
    import os

    from tridentcore.formats.traces import read_trace, write_trace

    target = tmp_path / "t.jsonl"
    target.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    result = runner.invoke(app, ["trace", "generate", "--duration", "30", "--out", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and len(read_trace(str(target))) == 17
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):  # (the library refuses it too, without opening it)
        write_trace(read_trace(str(target)), fifo)
    assert fifo.exists() and not fifo.is_file() and not list(tmp_path.glob(".*.tmp"))


def test_import_warns_of_what_simulate_and_stats_will_refuse(tmp_path):
    """Outside test 99: `trace import` said "imported 1 requests" of lines that `simulate --trace` and
    `trace stats` then refused (frames on an image model, a side not a multiple of 16 or under 32, a
    video's frames not 4k+1). The trace is still written (a profile of one's own may take it), with a
    warning that quotes the refusal."""
    cases = [({"model": "tiny-sd3", "height": 64, "width": 64, "frames": 5}, "frames must be 1 for the image model tiny-sd3"),
             ({"model": "tiny-sd3", "height": 72, "width": 64}, "height 72 is not a multiple of 16"),
             ({"model": "tiny-wan", "height": 64, "width": 64, "frames": 6}, "frames")]
    for fields, needle in cases:
        src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text(json.dumps({"t": 0, "steps": 4, **fields}) + "\n")
        result = runner.invoke(app, ["trace", "import", str(src), "--out", str(out)])
        assert result.exit_code == 0 and "imported 1 request (JSON lines)" in result.stdout, result.output
        assert "warning: simulate, bench and trace stats will refuse it as they price it by default: " in result.stderr
        assert needle in result.stderr and out.exists(), result.stderr
        refused = runner.invoke(app, ["trace", "stats", str(out)])
        assert refused.exit_code == 2 and needle in refused.output, refused.output
    src.write_text(json.dumps({"t": 0, "steps": 4, "model": "tiny-sd3", "height": 64, "width": 64}) + "\n")
    result = runner.invoke(app, ["trace", "import", str(src), "--out", str(out)])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output
