"""The `trident` command: help, models, generate and profile, through the real CLI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from tridentcore.cli import app

runner = CliRunner()


def test_help_lists_every_command_with_a_line():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("models", "generate", "profile", "cost"):
        assert command in result.output


@pytest.mark.parametrize("args, said", [
    (["simulate", "--duration", "-1"], "Invalid value for '--duration': "),
    (["serve", "--max-queued", "0"], "Invalid value for '--max-queued': "),
    (["sweep", "--target", "1.5"], "Invalid value for '--target': "),
    (["trace", "generate", "--out", "x.jsonl", "--seed", "-1"], "Invalid value for '--seed': "),
    (["simulate", "--no-such-option"], "No such option: --no-such-option"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["simulate", "--duration"], "Option '--duration' requires an argument."),  # (it pointed at `trident --help`)
])
def test_an_option_out_of_range_or_unknown_is_one_error_line(args, said):
    """They printed Click's usage block (four lines, the error last) where every other refusal is one
    `error:` line (outside test)."""
    result = subprocess.run([sys.executable, "-m", "tridentcore.cli", *args], capture_output=True, text=True,
                            timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    command = " ".join(["tridentcore.cli"] + [a for a in args[:2] if a in ("trace", "generate", "simulate", "serve",
                                                                          "sweep")])  # (run as python -m here)
    assert lines[0].startswith("error: ") and said in lines[0] and lines[0].endswith(f"{command} --help`)"), lines


def test_models_lists_the_builtin_pipelines():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("tiny-sd3", "tiny-sd", "tiny-wan", "arch:sd3-medium", "arch:flux-dev", "arch:sdxl", "arch:wan2.1-1.3b"):
        assert name in result.output


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generate_png_is_deterministic_per_seed(tmp_path):
    """Each in a process of its own, as a user runs it (in this test process, whose state depends on
    the test files run before it, one run once gave other bytes on its first call: see README, Tests)."""
    pytest.importorskip("torch")
    from PIL import Image

    outs = [tmp_path / f"cube{i}.png" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "generate", "--model", "tiny-sd3", "--prompt",
                               "a red cube", "--size", "160x128", "--steps", "2", "--seed", str(seed), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for out, seed in zip(outs, (1, 1, 2))]
    for proc in procs:
        output = proc.communicate(timeout=180)[0]
        assert proc.returncode == 0, output
    assert Image.open(outs[0]).size == (160, 128)  # WIDTHxHEIGHT
    assert _sha(outs[0]) == _sha(outs[1])
    assert _sha(outs[0]) != _sha(outs[2])


@pytest.mark.parametrize("suffix", [".webp", ".gif"])
def test_generate_video_writes_an_animation(tmp_path, suffix):
    pytest.importorskip("torch")
    from PIL import Image

    out = tmp_path / f"boat{suffix}"
    result = runner.invoke(app, ["generate", "--model", "tiny-wan", "--prompt", "a boat", "--size", "64x32",
                                 "--frames", "9", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.size == (64, 32)
    assert image.n_frames == 9


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "100x100"], "multiple of 16"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--model", "tiny-nope"], "unknown model"),
        (["--frames", "9"], "frames must be 1"),
        (["--out", "x.txt"], "unknown output format '.txt'"),
        (["--out", "x"], "unknown output format '(no suffix)'"),
        (["--out", "."], "is a folder: give a file name"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "2147483648"], "--seed"),
        # no model takes these: said before the model loads (a hub id, never looked up here, would be)
        (["--size", "63x63", "--model", "org/no-such-model"], "--size 63x63: height 63 is not a multiple of 16"),
        (["--size", "16x16", "--model", "org/no-such-model"], "height 16 is outside [32, 4096]"),
        # a typo of a built-in name: said before torch is imported (it took 5 s; outside test)
        (["--model", "sd3medium"], "unknown model 'sd3medium': not a built-in model"),
        # outside test: inf made a black image, nan and -5 no guidance, 1e308 a traceback (tiny-flux)
        (["--guidance", "nan"], "--guidance: nan is not a finite number; give a number"),
        (["--guidance", "inf"], "--guidance: inf is not a finite number; give a number"),
        (["--guidance", "-5"], "--guidance must be a finite number in [0, 100] (got -5)"),
        # the API's prompt bounds (outside test: both were drawn here and refused by the API)
        (["--prompt", ""], "--prompt must not be empty"),
        (["--prompt", "  "], "--prompt must not be empty"),
        (["--prompt", "x" * 2001], "--prompt has 2,001 characters; at most 2,000"),
        (["--negative-prompt", "x" * 5000], "--negative-prompt has 5,000 characters; at most 2,000"),
        # said before generating, not after
        (["--out", "/proc/x.png"], "/proc/x.png: cannot be written"),
        (["--model", "tiny-wan", "--frames", "9"], "9 frames need an animation format: .webp, .gif"),
        # a GIF counts its delays in 1/100 s (outside test 110: --fps 1000 wrote delays of 0)
        (["--model", "tiny-wan", "--frames", "9", "--out", "v.gif", "--fps", "51"], "Invalid value for '--fps': Input should be less than or equal to 50"),
    ],
)
def test_generate_bad_input_is_a_clear_error(tmp_path, args, message):
    pytest.importorskip("torch")
    base = {"--model": "tiny-sd3", "--prompt": "x", "--size": "64x64", "--steps": "1", "--out": str(tmp_path / "o.png")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value if flag != "--out" else str(tmp_path / value)
    result = runner.invoke(app, ["generate", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["generate", "profile"])
@pytest.mark.parametrize("device, gpus, message", [
    ("cuda", 0, "--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)"),
    ("cuda:0", 0, "--device cuda:0: no CUDA device is visible (torch.cuda.is_available() is False)"),
    ("cuda:1", 1, "--device cuda:1: cuda:1 is not visible; 1 CUDA device visible (cuda:0)"),
    ("tpu", 0, "--device tpu: unknown device; valid: cpu, cuda, cuda:I"),
])
def test_a_device_that_is_not_there_is_one_line_before_any_model_loads(tmp_path, monkeypatch, command, device, gpus,
                                                                       message):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)  # the same answer with or without a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    what = ["--prompt", "x", "--size", "64x64"] if command == "generate" else ["--model", "tiny-sd3"]
    result = runner.invoke(app, [command, *what, "--device", device, "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == f"error: {message}"
    assert not list(tmp_path.iterdir())


def test_an_unknown_model_names_itself_and_the_known_ones(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")

    def offline(*args, **kwargs):  # what huggingface_hub raises without a network (no stack trace shown)
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as exc:
            raise OSError("Cannot load model nope-model: the model is not fully cached locally. Please check out "
                          "the root cause in the stacktrace above.") from exc

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", offline)
    result = runner.invoke(app, ["generate", "--model", "nope-model", "--prompt", "x", "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.stderr.strip()
    assert line.startswith("error: unknown model 'nope-model': not a built-in model (tiny-sd3, tiny-sd, ") and (
        "arch:wan2.1-1.3b; `trident models`)" in line) and line.endswith("not a hub id (ORG/NAME)"), line
    # a hub id that cannot be reached: the root cause, not huggingface_hub's pointer to a stack trace
    result = runner.invoke(app, ["generate", "--model", "org/nope-model", "--prompt", "x", "--out",
                                 str(tmp_path / "o.png")])
    line = result.stderr.strip()
    assert result.exit_code == 2 and "stacktrace" not in line and line.startswith("error: cannot load pipeline "
                                                                                  "'org/nope-model': "), line
    assert line.endswith("ConnectionError: [Errno -2] Name or service not known"), line


def test_profile_writes_a_valid_csv(tmp_path):
    pytest.importorskip("torch")
    from tridentcore.profiles import load_profile

    out = tmp_path / "p.csv"
    # a point named twice is measured once (it was written twice: a profile its own reader refused)
    result = runner.invoke(app, ["profile", "--model", "tiny-sd3,tiny-sd3", "--sizes", "64,128,64x64", "--batches",
                                 "1,2,2", "--stages", "encode,diffuse,decode,diffuse", "--steps", "1", "--repeats", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    prof = load_profile(out)
    stages = {(r.stage.value, r.height, r.batch) for r in prof.rows}
    assert stages == {("encode", None, 1), ("encode", None, 2)} | {
        (s, h, b) for s in ("diffuse", "decode") for h in (64, 128) for b in (1, 2)}
    assert all(r.gpu == "cpu" and r.model == "tiny-sd3" and r.latency_ms > 0 for r in prof.rows)
    # each row says the dtype it ran in (outside test 133: a bfloat16 profile read as any other)
    assert all(r.source.startswith("measured (dtype float32") for r in prof.rows), {r.source for r in prof.rows}
    # the profile feeds the cost model directly
    from tridentcore.core.types import Shape

    cm = prof.cost_model()
    assert cm.latency_s("tiny-sd3", "diffuse", Shape(96, 96, 1, 4)) > 0
    # --append replaces the same points and keeps the others
    result = runner.invoke(app, ["profile", "--model", "tiny-sd", "--sizes", "64", "--batches", "1",
                                 "--steps", "1", "--repeats", "1", "--out", str(out), "--append"])
    assert result.exit_code == 0, result.output
    models = {r.model for r in load_profile(out).rows}
    assert models == {"tiny-sd3", "tiny-sd"}
    # appended in another dtype: said before the file mixes them (outside test 135: unsaid)
    result = runner.invoke(app, ["profile", "--model", "tiny-sd", "--sizes", "128", "--batches", "1", "--steps", "1",
                                 "--repeats", "1", "--stages", "decode", "--dtype", "bf16", "--out", str(out), "--append"])
    assert result.exit_code == 0, result.output
    assert (f"note: --append: {out} holds rows measured in another dtype (tiny-sd in float32); these are measured "
            "in bfloat16") in " ".join(result.output.split()), result.output
    assert {r.source for r in load_profile(out).rows if r.model == "tiny-sd"} == {
        "measured (dtype float32)", "measured (dtype bfloat16)"}


def test_profile_rejects_bad_points(tmp_path):
    result = runner.invoke(app, ["profile", "--model", "tiny-sd3", "--sizes", "65", "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    assert "multiple of 16" in result.output
    # lists that are wrong as typed: said at once, before any model is built (an empty item was dropped)
    for args, said in ((["--sizes", "64,,128"], "sizes: an empty item in '64,,128'"),
                       (["--sizes", "0"], "sizes must be positive"),
                       (["--sizes", "\u0666\u0664"], "size must be WIDTHxHEIGHT"),  # Arabic-Indic 64: measured 64x64 (outside test 133)
                       (["--batches", "1,,2"], "batches: an empty item"),
                       (["--stages", ","], "--stages: none given"), (["--stages", ""], "--stages: an empty value"),
                       # unbounded, they took the host's memory (10 GB) or crashed it (outside test)
                       (["--batches", "1,100000"], "batches must be integers in 1..1024 (got '1,100000')"),
                       (["--degrees", "129"], "degrees must be integers in 1..128"),
                       (["--frames", "130"], "frames must be integers in 1..129"),
                       (["--threads", "1000000"], "--threads': Input should be less than or equal to 1024"),
                       (["--model", ","], "--model ',': no pipeline named")):
        t0 = time.perf_counter()
        model = [] if "--model" in args else ["--model", "tiny-sd3"]
        result = runner.invoke(app, ["profile", *model, *args, "--out", str(tmp_path / "p.csv")])
        assert result.exit_code == 2 and said in " ".join(result.output.replace("│", " ").split()), (args, result.output)
        assert time.perf_counter() - t0 < 2.0, args
    assert not (tmp_path / "p.csv").exists()


def test_a_full_size_architecture_that_cannot_fit_in_host_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """``arch:*`` on the CPU builds the real model (random weights): sd3-medium in float32 took a 23 GiB
    host to 22 GiB before it was stopped (outside test). With 8 GiB available it is refused at once,
    with its size; a tiny model and a GPU device are not checked."""
    import tridentcore.cli.models as models_cli

    monkeypatch.setattr(models_cli, "_available_gib", lambda: 8.0)
    for args in (["profile", "--model", "tiny-sd3,arch:sd3-medium", "--out", str(tmp_path / "p.csv")],
                 ["generate", "--model", "arch:sd3-medium", "--prompt", "a cat", "--out", str(tmp_path / "a.png")]):
        t0 = time.perf_counter()
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "arch:sd3-medium in float32 on the CPU needs about 28.7 GiB" in text and "8.0 GiB is available" in text, text
        assert "--dtype bfloat16" in text
        assert time.perf_counter() - t0 < 5.0
    for half in ("bfloat16", "bf16", "fp16", "float16"):  # (only "bfloat16" was halved: outside test)
        text = models_cli._host_memory_problem(["arch:sd3-medium"], "cpu", half)  # 14.3 GiB > 8 GiB
        assert f"arch:sd3-medium in {half} on the CPU needs about 14.3 GiB" in text and "--dtype" not in text
    for bad in ("bogus", "BFLOAT16"):  # the dtype's own error, not a size guessed from it
        result = runner.invoke(app, ["profile", "--model", "arch:sd3-medium", "--dtype", bad, "--out",
                                     str(tmp_path / "p.csv")])
        assert result.exit_code == 2 and f"--dtype: unknown dtype '{bad}'; valid: bf16, bfloat16" in result.output
    assert models_cli._host_memory_problem(["arch:sd3-medium"], "cuda:0", "float32") is None
    assert models_cli._host_memory_problem(["tiny-sd3"], "cpu", "float32") is None
    monkeypatch.setattr(models_cli, "_available_gib", lambda: 64.0)
    assert models_cli._host_memory_problem(["arch:sd3-medium"], "cpu", "float32") is None
    assert "x 4 processes" in models_cli._host_memory_problem(["arch:sd3-medium"], "cpu", "float32", 4)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "a.png").exists()


def test_console_script_runs_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "tridentcore.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "generate" in out.stdout


def _command_paths():
    """Every command and group of the app, as argument lists (``[]``, ``["simulate"]``, ``["runs", "show"]``)."""
    import typer.main

    def walk(command, path):
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "trident")
def test_help_reads_at_80_columns(path):
    """`--help` at 80 columns: nothing cut off with an ellipsis, flags as flags, every default in full."""
    import re

    import typer.main

    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, prog_name="trident")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "…" not in out and "<bool>" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    listed = out.split("Commands:", 1)[1].splitlines() if "Commands:" in out else []
    assert not [line for line in listed if line.rstrip().endswith("...")], out  # short help cut by click
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    flat = re.sub(r"\s+", " ", re.sub(r"-\n\s+", "-", out))  # undo the wrapping (click breaks at hyphens)
    for param in command.params:
        if getattr(param, "show_default", False) and param.default is not None and not getattr(param, "is_flag", False):
            assert f"[default: {param.default}" in flat, (param.name, out)


def test_profile_append_reads_its_out_file_before_measuring(tmp_path):
    """`--append` onto a file that is not a profile measured every point first, then failed (nothing saved:
    hours on a GPU)."""
    out = tmp_path / "notprof.csv"
    out.write_text("name: not a profile\n")
    result = runner.invoke(app, ["profile", "--model", "tiny-sd3", "--sizes", "64,128,256", "--batches", "1,2,4",
                                 "--out", str(out), "--append"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: --append: {out}: ") and "measuring" not in result.output
    assert "row" not in result.stdout.lower(), result.stdout  # nothing was measured


def test_policies_lists_each_policy_and_a_policys_options_with_default_and_meaning():
    """Outside test: no command showed what a policy option does (only the names, after a bad one)."""
    listed = runner.invoke(app, ["policies"])
    assert listed.exit_code == 0 and {line.split()[0] for line in listed.stdout.splitlines()[:4]} == {
        "pipeline-dynamic", "pipeline-static", "trident", "trident-paper"}, listed.output
    opts = runner.invoke(app, ["policies", "trident"])
    assert opts.exit_code == 0, opts.output
    assert "  urgent_load=0.5 (number >= 0): shrink_urgent: only while the work arriving" in opts.stdout
    assert "  shrink_urgent=true (bool): " in opts.stdout and "  late=serve (late mode" in opts.stdout
    assert "  degree=1 (integer >= 1): " in runner.invoke(app, ["policies", "pipeline-static"]).stdout
    bad = runner.invoke(app, ["policies", "nope"])
    assert bad.exit_code == 2 and "unknown policy 'nope'; valid policies: pipeline-dynamic" in bad.output



@pytest.mark.parametrize("module", ["tridentcore.cli", "tridentcore.cli.launch"])
def test_the_command_runs_as_a_module(module):
    # outside tests 119 and 120: `python -m tridentcore.cli.launch` (the script's entry point) did nothing, exit 0
    out = subprocess.run([sys.executable, "-m", module, "policies"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "trident" in out.stdout, out
    bad = subprocess.run([sys.executable, "-m", module, "cost", "--model", "nope"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad
