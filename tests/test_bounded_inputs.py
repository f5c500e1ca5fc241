"""Hostile local files (issue 12): every limit on a trace, mix, cluster or run-spec file, through the CLI.

Each attack is a small file in ``tmp_path`` run by ``trident`` in a child process under a memory
limit (RLIMIT_AS) and a timeout, so a regression fails the test instead of eating the machine.
Each must end at once with exit status 2 and one line, ``error: ...``, naming the limit, and no
traceback. The README's "Hostile local files" table lists these tests.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tridentcore.core.defaults import (MAX_CLUSTER_GPUS, MAX_CONFIG_BYTES, MAX_FRAMES, MAX_GPU_SAMPLES,
                                       MAX_GPUS_PER_NODE, MAX_GUIDANCE, MAX_MIX_CLASSES, MAX_NESTING,
                                       MAX_PROMPT_CHARS, MAX_REQUESTS, MAX_SEED, MAX_SIDE_PX, MAX_STEPS,
                                       MAX_TRACE_BYTES, MAX_WORKLOAD_S)
from tridentcore.core.errors import brief

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT_BYTES = 3 << 30  # the CLI needs a few hundred MB; each attack, unbounded, needed many GB
PROMPT_S = 30.0  # loose: each refusal takes about a second

LINE = {"t": 0.5, "model": "sd3-medium", "height": 1024, "width": 1024, "steps": 28}
LAUGHS = "".join(  # the billion laughs: 9 levels of 9 aliases each, 9**9 strings when expanded (600 bytes)
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)]
)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def _trident(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tridentcore.cli", *args], capture_output=True, text=True,
                          timeout=120, preexec_fn=_limit_memory, env=env, cwd=ROOT)
    return proc, time.monotonic() - start


def _refused(*args: str) -> str:
    """Run ``trident ARGS``; require a prompt exit 2 with one ``error: ...`` line; return that line."""
    proc, elapsed = _trident(*args)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-3000:]
    assert proc.returncode == 2, output[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert len(lines[0]) < 4000, lines[0][:300]  # never an expanded document
    assert elapsed < PROMPT_S, f"{elapsed:.1f} s"
    return lines[0]


def _jsonl(tmp_path: Path, name: str, *lines: dict | str) -> str:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------ traces
def test_trace_with_a_billion_steps_is_refused_by_simulate_and_import(tmp_path):
    trace = _jsonl(tmp_path, "steps.jsonl", {**LINE, "steps": 1_000_000_000})
    for args in (["simulate", "--trace", trace], ["trace", "import", trace, "--out", str(tmp_path / "o.jsonl")],
                 ["trace", "stats", trace], ["bench", "--trace", trace, "--db", str(tmp_path / "r.duckdb")]):
        line = _refused(*args)
        assert f"line 1: steps: must be an integer in 1..{MAX_STEPS} (got 1000000000)" in line, line
    assert not (tmp_path / "o.jsonl").exists()


def test_trace_shape_bounds_are_the_http_apis(tmp_path):
    trace = _jsonl(tmp_path, "shape.jsonl", {**LINE, "height": MAX_SIDE_PX + 16},
                   {**LINE, "width": 1e300}, {**LINE, "frames": MAX_FRAMES + 1}, {**LINE, "seed": MAX_SEED + 1},
                   {**LINE, "guidance": 1e9}, {**LINE, "prompt": "x" * (MAX_PROMPT_CHARS + 1)},
                   {**LINE, "model": "m" * 10_000})
    line = _refused("simulate", "--trace", trace)
    for needle in (f"line 1: height: must be an integer in 1..{MAX_SIDE_PX}", "line 2: width: must be an integer",
                   "(got 1e+300)", f"line 3: frames: must be an integer in 1..{MAX_FRAMES}",
                   f"line 4: seed: must be an integer in 0..{MAX_SEED}", f"line 5: guidance: must be a finite number "
                   f"in [0, {MAX_GUIDANCE:g}]", f"line 6: prompt: {MAX_PROMPT_CHARS + 1} characters",
                   "line 7: model: must be a model name of 1..128 characters"):
        assert needle in line, (needle, line)


@pytest.mark.parametrize("value, shown", [("1e300", "1e+300"), ("NaN", "nan"), ("Infinity", "inf"),
                                          ("-Infinity", "-inf"), ("-1", "-1"), ("86400.5", "86400.5")])
def test_trace_times_must_be_finite_and_within_a_day(tmp_path, value, shown):
    trace = _jsonl(tmp_path, "t.jsonl", json.dumps(LINE), '{"t": %s, "model": "sd3-medium", "height": 1024, '
                                                          '"width": 1024, "steps": 28}' % value)
    line = _refused("simulate", "--trace", trace)
    assert f"line 2: t: must be a finite number of seconds in [0, {MAX_WORKLOAD_S:g}] (got {shown})" in line, line


def test_paper_trace_time_is_bounded_too(tmp_path):
    trace = _file(tmp_path, "paper.txt", "Request(request_id=0, timestamp=1e300, height=1024, width=1024, "
                                         "num_frames=1, prompt='a', num_inference_steps=28)\n")
    line = _refused("trace", "import", trace, "--model", "sd3-medium", "--out", str(tmp_path / "o.jsonl"))
    assert "line 1: timestamp: must be a finite number of seconds" in line and "1e+300" in line, line


@pytest.mark.parametrize("minus", [500, 100_000])
def test_paper_trace_deep_expression_is_one_line(tmp_path, minus):
    """``num_inference_steps=-----...4``: 500 signs made quoting the value (ast.unparse) recurse past
    Python's limit (a RecursionError traceback); 100,000 gave a reason that was empty."""
    trace = _file(tmp_path, "paper.txt", "Request(timestamp=0.0, height=64, width=64, prompt='a', "
                                         f"num_inference_steps={'-' * minus}4)\n")
    line = _refused("trace", "stats", trace, "--model", "tiny-sd3")
    said = "num_inference_steps: not a literal value (---" if minus == 500 else "cannot parse the Request(...) call: nested too deeply"
    assert said in line, line


def test_paper_trace_keyword_twice_is_refused_and_minus_zero_is_zero(tmp_path):
    trace = _file(tmp_path, "paper.txt", "Request(timestamp=0.0, height=64, width=64, prompt='a', prompt='b', "
                                         "num_inference_steps=4)\n")
    assert "line 1: prompt: given twice" in _refused("trace", "stats", trace, "--model", "tiny-sd3")
    trace = _file(tmp_path, "zero.txt", "Request(timestamp=-0.0, height=64, width=64, num_inference_steps=4)\n")
    proc, _ = _trident("trace", "import", trace, "--model", "tiny-sd3", "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o.jsonl").read_text())["t"] == 0.0 and '"t": 0.0' in (tmp_path / "o.jsonl").read_text()


def test_trace_nested_200k_deep_is_one_line_not_a_recursion_error(tmp_path):
    trace = _jsonl(tmp_path, "deep.jsonl", '{"t": ' + "[" * 200_000 + "]" * 200_000 + "}")
    line = _refused("simulate", "--trace", trace)
    assert f"line 1: lists or mappings nested more than {MAX_NESTING} deep" in line, line
    shallow = _jsonl(tmp_path, "shallow.jsonl", '{"t": ' + "[" * 40 + "]" * 40 + "}")  # under Python's own limit
    assert f"nested more than {MAX_NESTING} deep" in _refused("simulate", "--trace", shallow)


def test_trace_integer_of_5000_digits_is_one_line(tmp_path):
    trace = _jsonl(tmp_path, "digits.jsonl", '{"t": ' + "9" * 5000 + ', "model": "m", "height": 8, "width": 8, '
                                                                     '"steps": 1}')
    assert "line 1: not valid JSON" in _refused("simulate", "--trace", trace)


def test_trace_with_more_requests_than_the_limit_is_refused_before_parsing(tmp_path):
    trace = tmp_path / "many.jsonl"
    trace.write_text((json.dumps(LINE) + "\n") * (MAX_REQUESTS + 1))
    line = _refused("simulate", "--trace", str(trace))
    assert f"{MAX_REQUESTS + 1} request lines; a trace has at most {MAX_REQUESTS}" in line, line


def test_trace_file_past_the_size_limit_is_not_read(tmp_path):
    trace = tmp_path / "big.jsonl"
    with open(trace, "wb") as f:
        f.truncate(MAX_TRACE_BYTES + 1)  # sparse: costs no disk
    line = _refused("simulate", "--trace", str(trace))
    assert f"larger than the limit of {MAX_TRACE_BYTES} bytes" in line, line


# ---------------------------------------------------------------------------------- YAML: mixes, clusters
@pytest.mark.parametrize("kind", ["cluster", "mix"])
def test_billion_laughs_yaml_is_refused_at_the_first_alias(tmp_path, kind):
    body = "nodes: *l8\ngpus_per_node: 8\nkind: H200\n" if kind == "cluster" else "name: *l8\nclasses: *l8\n"
    path = _file(tmp_path, f"laughs-{kind}.yaml", LAUGHS + body)
    assert len(Path(path).read_bytes()) < 1000
    line = _refused("simulate", f"--{kind}", path, "--policies", "trident")
    assert "line 2: YAML aliases (*l0) are not accepted" in line, line


def test_yaml_merge_keys_are_aliases_too(tmp_path):
    path = _file(tmp_path, "merge.yaml", "base: &b {nodes: 1, gpus_per_node: 8, kind: H200}\ncluster:\n  <<: *b\n")
    assert "YAML aliases (*b) are not accepted" in _refused("simulate", "--cluster", path)


@pytest.mark.parametrize("kind", ["cluster", "mix"])
def test_deeply_nested_yaml_is_one_line(tmp_path, kind):
    path = _file(tmp_path, f"deep-{kind}.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert f"nested more than {MAX_NESTING} deep" in _refused("simulate", f"--{kind}", path)


def test_yaml_file_past_the_size_limit_is_not_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    assert f"larger than the limit of {MAX_CONFIG_BYTES} bytes" in _refused("simulate", "--mix", str(path))


def test_mix_bounds(tmp_path):
    big = _file(tmp_path, "classes.yaml", "name: x\nclasses:\n" + "".join(
        f"  - {{model: sd3-medium, height: {16 * (i + 1)}, width: 512, steps: 28}}\n"
        for i in range(MAX_MIX_CLASSES + 1)))
    line = _refused("simulate", "--mix", big)
    assert f"classes: {MAX_MIX_CLASSES + 1} classes; a mix has at most {MAX_MIX_CLASSES}" in line, line
    steps = _file(tmp_path, "steps.yaml", "name: x\nclasses:\n  - {model: sd3-medium, height: 1024, width: 1024, "
                                          "steps: 1000000000, weight: 1e999}\n")
    line = _refused("simulate", "--mix", steps)
    assert f"classes[0].steps: must be an integer in 1..{MAX_STEPS}" in line and "classes[0].weight" in line, line
    # two weights of 1e308 added up to inf: every request was drawn from the last class
    heavy = _file(tmp_path, "heavy.yaml", "name: x\nclasses:\n"
                  "  - {model: sd3-medium, height: 512, width: 512, steps: 28, weight: 1.0e+308}\n"
                  "  - {model: sd3-medium, height: 1024, width: 1024, steps: 28, weight: 1.0e+308}\n")
    line = _refused("trace", "generate", "--mix", heavy, "--out", str(tmp_path / "g.jsonl"))
    assert "classes[0].weight: must be a number in (0, 1e+09] (got 1e+308)" in line, line


@pytest.mark.parametrize("cluster, needle", [
    ("100000x1000xH200", f"the node count must be in 1..{MAX_CLUSTER_GPUS} (got 100000)"),
    ("64x128xH200", f"64 nodes x 128 GPUs = 8192 GPUs; a cluster has at most {MAX_CLUSTER_GPUS}"),
    ("1x1000xH200", f"the GPU count per node must be in 1..{MAX_GPUS_PER_NODE} (got 1000)"),
    ("9" * 5000 + "xH200", "5005 characters"),
    ("\uff11x8xH200", "expected "),  # a full-width digit (outside test: it was read as 1)
])
def test_cluster_text_bounds(cluster, needle):
    line = _refused("simulate", "--cluster", cluster)
    assert needle in line, line
    assert len(line) < 500


def test_cluster_yaml_bounds(tmp_path):
    path = _file(tmp_path, "c.yaml", "nodes: 100000\ngpus_per_node: 1000\nkind: H200\n")
    line = _refused("trace", "stats", _jsonl(tmp_path, "t.jsonl", LINE), "--cluster", path)
    assert (f"nodes must be an integer in 1..{MAX_CLUSTER_GPUS} (got 100000); gpus_per_node must be an integer in "
            f"1..{MAX_GPUS_PER_NODE} (got 1000)") in line, line
    path = _file(tmp_path, "inf.yaml", "nodes: 1\ngpus_per_node: 8\nkind: H200\nmem_gib: 1.0e+999\n")
    assert "mem_gib must be a positive finite number (got inf)" in _refused("simulate", "--cluster", path)
    # links of 1e-12 GB/s: trident's transfers took 10^10 simulated seconds, the simulation hours
    path = _file(tmp_path, "slow.yaml", "nodes: 1\ngpus_per_node: 8\nkind: H200\nintra_link_gbps: 1.0e-12\n")
    assert "intra_link_gbps must be at least 0.01 GB/s (got 1e-12)" in _refused("simulate", "--cluster", path,
                                                                               "--policies", "trident")
    # numbers with an exponent are numbers, as YAML 1.2 reads them (PyYAML read 1e3 and 1.0e3 as text, and
    # the message's advice, 1.0e3, was refused too); text is still refused, a key given twice too
    for text in ("1e3", "1.0e3"):
        path = _file(tmp_path, "num.yaml", f"nodes: 1\ngpus_per_node: 8\nkind: H200\nmem_gib: {text}\n")
        proc, _ = _trident("simulate", "--cluster", path, "--duration", "30")
        assert proc.returncode == 0, proc.stderr[-2000:]
    path = _file(tmp_path, "text.yaml", "nodes: 1\ngpus_per_node: 8\nkind: H200\nmem_gib: '1e3'\n")
    assert "mem_gib must be a positive finite number (got '1e3')" in _refused("simulate", "--cluster", path)
    path = _file(tmp_path, "twice.yaml", "nodes: 1\nnodes: 2\ngpus_per_node: 8\nkind: H200\n")
    assert "line 2: the key 'nodes' is given twice in one mapping" in _refused("simulate", "--cluster", path)


# ---------------------------------------------------------------------------------- drawn workloads
@pytest.mark.parametrize("args, needle", [
    (["simulate", "--duration", "1e9"], f"--duration: 1e+09 s is over the limit of {MAX_WORKLOAD_S:g} s"),
    # (outside test 99: "86400 s is over the limit of 86400 s")
    (["simulate", "--duration", "86400.0001"], f"--duration: 86400.0001 s is over the limit of {MAX_WORKLOAD_S:g} s"),
    (["simulate", "--rate", "1e9", "--duration", "60"], f"a workload has at most {MAX_REQUESTS}"),
    (["simulate", "--arrival", "bursts:size=100000000", "--rate", "0.001"], f"size must be an integer in 1..{MAX_REQUESTS}"),
    (["trace", "generate", "--rate", "1e9", "--out", "{tmp}/g.jsonl"], f"a workload has at most {MAX_REQUESTS}"),
    (["sweep", "--rates", "1,1e9", "--duration", "60"], f"a workload has at most {MAX_REQUESTS}"),
    (["sweep", "--goodput", "--cluster", "512x8xH200"], f"a workload has at most {MAX_REQUESTS}"),
])
def test_drawn_workload_bounds(tmp_path, args, needle):
    line = _refused(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert needle in line, line


# ---------------------------------------------------------------------------------- run-spec files (serve)
@pytest.mark.parametrize("text, needle", [
    ('{"cluster": ' + "[" * 200_000 + "]" * 200_000 + "}", f"nested more than {MAX_NESTING} deep"),
    ('{"rate": ' + "9" * 4000 + "}", "spec.json: rate: must be a number > 0"),
    ('{"rate": 1e9, "duration_s": 600}', f"a workload has at most {MAX_REQUESTS}"),
    ('{"noise_bias": [[1, 2, 3]]}', "too many values to unpack"),
    ('{"devices": "emulated:100000x1000xH200", "policies": ["trident"]}', "the node count must be in 1..4096"),
])
def test_serve_spec_file_bounds(tmp_path, text, needle):
    line = _refused("serve", "--spec", _file(tmp_path, "spec.json", text), "--port", "0")
    assert needle in line, line


def test_serve_cpu_worker_count_is_bounded():
    line = _refused("serve", "--devices", "cpu:100000", "--models", "sd3-medium", "--port", "0")
    assert f"cpu:N needs a worker count N in 1..{MAX_GPUS_PER_NODE}" in line, line
    # ASCII digits only, as a cluster's (outside test: `cpu:\u0662`, Arabic-Indic, started 2 workers)
    from tridentcore.runtime.devices import SetupError, parse_devices

    for text in ("cpu:\u0662", "cpu:\uff11"):
        with pytest.raises(SetupError, match="cpu:N needs a worker count"):
            parse_devices(text)
    with pytest.raises(SetupError, match="; separate kinds with ','"):  # (it named only the count)
        parse_devices("cpu:1;emulated:8xH200")


@pytest.mark.parametrize("option, value", [("--slo-scale", "inf"), ("--slo-scale", "1e308"), ("--slowdown", "1e308"),
                                           ("--time-scale", "1e308"), ("--seed", "9223372036854775808"), ("--seed", "-1")])
def test_scales_and_seeds_are_bounded_before_any_work(tmp_path, option, value):
    """``serve --slo-scale inf`` or ``1e308`` started and answered every generation with a 500 (an
    infinite deadline, then an answer JSON could not hold); ``--slowdown 1e308`` likewise; a seed
    past 2^63 ran the whole simulation, then failed to store it (a traceback)."""
    if option == "--seed":
        args = ["simulate", "--mix", "tiny", "--duration", "10", "--seed", value, "--db", str(tmp_path / "r.duckdb")]
    else:
        args = ["serve", "--models", "sd3-medium" if option == "--time-scale" else "tiny-sd3",
                "--devices", "emulated:1x2xH200" if option == "--time-scale" else "cpu:1", option, value, "--port", "0"]
    proc, elapsed = _trident(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    said = f"{option}: inf is not a finite number" if value == "inf" else f"Invalid value for '{option}'"
    assert said in proc.stderr and elapsed < PROMPT_S, proc.stderr
    assert not (tmp_path / "r.duckdb").exists()
    if option == "--slo-scale":  # a run spec's scales are bounded too
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"slo_scale": float(value)}) if value != "inf" else '{"slo_scale": 1e999}')
        assert "slo_scale: must be a number in (0, 1000]" in _refused("serve", "--spec", str(spec), "--port", "0")


# ---------------------------------------------------------------------------------- in process
def test_brief_never_expands_a_shared_structure():
    laughs: list = ["lol"] * 9
    for _ in range(9):
        laughs = [laughs] * 9  # 9**10 strings if written out
    start = time.monotonic()
    text = brief(laughs)
    assert len(text) <= 80 and time.monotonic() - start < 1.0
    assert brief(10**5000).startswith("<int")  # past Python's 4300-digit str() limit


def test_gpu_samples_are_bounded_for_a_long_run():
    from tridentcore.core.records import SpanRow
    from tridentcore.core.recording import gpu_samples

    span = SpanRow(dispatch_id=0, request_id=0, stage="diffuse", gpus=(0, 4095), degree=2, batch=1, queued_s=0.0,
                   started_s=0.0, ended_s=MAX_WORKLOAD_S, predicted_s=MAX_WORKLOAD_S, start_step=0, end_step=1,
                   outcome="done")
    rows = gpu_samples([span], [], {}, num_gpus=4096, end_s=MAX_WORKLOAD_S)  # 35 million at 10 s
    assert 0 < len(rows) <= MAX_GPU_SAMPLES + 4096
    interval = rows[1].t_s - rows[0].t_s
    assert interval % 10.0 == 0 and interval > 10.0
    assert {r.busy for r in rows if r.gpu == 0} == {1.0}
    assert gpu_samples([span], [], {}, num_gpus=1, end_s=float("inf")) == []


def test_a_servers_gpu_usage_stays_bounded_and_doubles_its_interval(monkeypatch):
    """A server keeps only its GPU usage (``GpuUsage``, streaming): past the bound on its values the
    interval doubles as it goes, giving what the whole run's spans give at that interval."""
    import random

    from tridentcore.core import recording
    from tridentcore.core.records import PlacementRow, SpanRow

    rng = random.Random(3)
    spans, t = [], 0.0
    for did in range(300):  # back to back on 4 GPUs, over about 1,000 s
        start = t + rng.uniform(0, 2)
        t = start + rng.uniform(0.5, 5)
        gpus = tuple(rng.sample(range(4), rng.choice((1, 2))))
        spans += [SpanRow(did, did * 2 + i, "diffuse", gpus, len(gpus), 2, start, start, t, 1.0, 0, 1, "done")
                  for i in range(2)]
    act = {s.dispatch_id: rng.choice((0.0, 1.5, 3.25)) for s in spans}
    placed = [PlacementRow(0.0, g, "m", "diffuse", "place", 4.0) for g in range(4)]
    placed.append(PlacementRow(333.0, 2, "m", "diffuse", "evict", 4.0))
    end = t + 1.0
    want = recording.gpu_samples(spans, placed, act, 4, end, sample_s=80.0)  # 10 s doubled three times

    monkeypatch.setattr(recording, "MAX_GPU_SAMPLES", 64)  # 100 intervals of 10 s x 4 GPUs would be 400
    usage = recording.GpuUsage(4, 10.0)
    for row in placed:
        usage.placement(row)
    for i in range(0, len(spans), 2):
        usage.add(spans[i:i + 2], {spans[i].dispatch_id: act[spans[i].dispatch_id]})
        assert len(usage.busy[0]) * 4 <= 64
    got = usage.samples(end)
    assert usage.sample_s == 80.0 and len(got) == len(want) <= 64
    assert [(r.t_s, r.gpu) for r in got] == [(r.t_s, r.gpu) for r in want]
    assert all(abs(a.busy - b.busy) < 1e-9 and abs(a.mem_gib - b.mem_gib) < 1e-9 for a, b in zip(got, want))
    assert recording.GpuUsage(4, 10.0).samples(end) == []  # no dispatch ran


def test_http_api_bounds_are_the_same_names():
    from tridentcore.runtime import models
    from tridentcore.server.schemas import VideoGenerationRequest

    limits = {type(m).__name__: m for m in VideoGenerationRequest.model_fields["frames"].metadata}
    assert limits["Le"].le == MAX_FRAMES
    steps = {type(m).__name__: m for m in VideoGenerationRequest.model_fields["steps"].metadata}
    assert steps["Le"].le == MAX_STEPS == models.MAX_STEPS
    assert models.MAX_PROMPT_CHARS == MAX_PROMPT_CHARS


def test_yaml_keys_given_twice_are_refused_and_exponents_are_numbers():
    """PyYAML kept the last of two keys (a mix's second `classes:` list dropped the first, a class's
    second `height` won) and read 1e9 as text (a mix weight at its stated bound, 1e+09, was refused)."""
    from tridentcore.formats.bounded import InputRefused, load_yaml

    with pytest.raises(InputRefused, match=r"line 3: the key 'classes' is given twice in one mapping"):
        load_yaml("name: m\nclasses: []\nclasses: [{model: sd3-medium}]\n")
    with pytest.raises(InputRefused, match=r"the key 'height' is given twice"):
        load_yaml("classes:\n  - {model: sd3-medium, height: 512, height: 1024}\n")
    assert load_yaml("a: 1e9\nb: 1.0e3\nc: -2E-4\nd: 1.0e+3\ne: 12\nf: '1e9'\ng: e5\n") == {
        "a": 1e9, "b": 1000.0, "c": -2e-4, "d": 1000.0, "e": 12, "f": "1e9", "g": "e5"}
    import yaml

    assert yaml.safe_load("a: 1e9") == {"a": "1e9"}  # PyYAML's own loader is left as it was
    # YAML 1.1's other integers, which PyYAML reads, are refused (outside test: `nodes: 1_0` made 10 nodes;
    # `010` is 8, `1:0` 60)
    for text in ("1_0", "010", "1:0", "0b11", "-0_7"):
        with pytest.raises(InputRefused, match=rf"line 1: '{re.escape(text)}' is an integer only in YAML 1.1"):
            load_yaml(f"nodes: {text}\n")
    assert load_yaml("a: 10\nb: -3\nc: 0\nd: 0x10\ne: '010'\n") == {"a": 10, "b": -3, "c": 0, "d": 16, "e": "010"}


def test_a_missing_recover_folder_a_binary_profile_and_a_zero_target_are_said(tmp_path):
    """Outside test: `runs recover --folder /nonexist` read "no journals to recover", exit 0; a binary
    profile CSV gave Python's codec error; `sweep --goodput --target 0` was taken (every rate passes)."""
    line = _refused("runs", "recover", "--db", str(tmp_path / "r.duckdb"), "--folder", str(tmp_path / "nonexist"))
    assert line == f"error: --folder {tmp_path / 'nonexist'}: no such folder (a live bench's --keep folder)"
    (tmp_path / "p.csv").write_bytes(b"gpu,model,stage\n\xd0\xff\xfe\n")
    line = _refused("simulate", "--profile", str(tmp_path / "p.csv"), "--duration", "10")
    assert line.endswith("p.csv: not UTF-8 text (byte 16)"), line
    line = _refused("sweep", "--goodput", "--target", "0", "--duration", "10", "--policies", "trident")
    assert line == "error: --target 0: an attainment above 0 (at most 1); at 0 every rate would pass"
    line = _refused("bench", "--goodput", "--target", "0", "--duration", "10", "--policies", "trident",
                    "--db", str(tmp_path / "b.duckdb"), "--no-progress")
    assert line == "error: --target 0: an attainment above 0 (at most 1); at 0 every rate would pass"


def test_a_long_policy_spec_is_not_echoed_whole():
    """Outside tests: a 5,000-character policy name, option or value was echoed whole in its error
    (the CLI's line, the workbench's page); each is cut to 80 characters."""
    long = "x" * 5000
    for spec in (long, f"trident:{long}=1", f"trident:wide={long}", f"trident:{long}", f"trident:late={long}"):
        line = _refused("simulate", "--duration", "10", "--policies", spec)
        assert len(line) < 600 and "x" * 100 not in line, line[:300]


def test_a_cluster_key_that_is_not_a_mapping_and_a_size_too_large_are_named_as_such(tmp_path):
    """Outside test: `cluster:` holding a list (two GPU kinds) read as "unknown key(s) cluster ... missing
    key(s) nodes ..."; a size such as 12345678x1 as "must be WIDTHxHEIGHT", the form it has."""
    from tridentcore.core.cluster import ClusterError
    from tridentcore.core.types import parse_size
    from tridentcore.formats.mixes import load_cluster

    listed = _file(tmp_path, "two.yaml", "cluster:\n  - {nodes: 1, gpus_per_node: 8, kind: H200}\n"
                                         "  - {nodes: 1, gpus_per_node: 8, kind: A100}\n")
    with pytest.raises(ClusterError, match="cluster: expected one mapping .* got a list: a cluster is of one GPU kind"):
        load_cluster(listed)
    with pytest.raises(ClusterError, match="cluster: expected one mapping .* got int"):
        load_cluster(_file(tmp_path, "five.yaml", "cluster: 5\n"))
    assert load_cluster(_file(tmp_path, "ok.yaml", "cluster: {nodes: 1, gpus_per_node: 8, kind: H200}\n")).num_gpus == 8
    # a key beside cluster: read as "unknown key(s) cluster, extra ... missing key(s) nodes ..." (outside test)
    with pytest.raises(ClusterError, match=r"^\S+beside.yaml: unknown key\(s\) beside cluster: extra \(a file that holds"):
        load_cluster(_file(tmp_path, "beside.yaml", "cluster: {nodes: 1, gpus_per_node: 8, kind: H200}\nextra: 1\n"))
    with pytest.raises(ClusterError, match=r"\(got an empty file\)$"):  # (it said "got NoneType")
        load_cluster(_file(tmp_path, "empty.yaml", ""))
    with pytest.raises(ValueError, match="size '12345678x1' is too large: at most 99999 pixels a side"):
        parse_size("12345678x1")
    with pytest.raises(ValueError, match="size must be WIDTHxHEIGHT"):
        parse_size("12x34x56")
