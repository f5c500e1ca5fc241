"""The one run spec: its JSON (the stored config), older stored configs, validation at the edge,
the defaults declared once, and ``trident serve --spec``."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from pathlib import Path

import pytest

from tridentcore.bench.spec import RunSpec, RunSpecError, read_spec_file, write_spec_file
from tridentcore.bench.spec_schema import load_spec, validate_spec
from tridentcore.core import defaults


def test_json_round_trip():
    spec = RunSpec(mix="sd3-mixed", arrival="gamma:cv=2", rate=2.5, duration_s=90, seed=4, slo_scale=2.0,
                   policies=("trident", "pipeline-dynamic"), backend="live", devices="emulated:8xH200", time_scale=0.1)
    config = json.loads(spec.to_json(bench="b1"))
    assert config["bench"] == "b1" and config["policies"] == ["trident", "pipeline-dynamic"]
    assert RunSpec.from_config(config) == spec
    assert validate_spec(config) == spec


def test_one_policy_is_also_stored_as_policy():
    config = RunSpec(policies=("trident",)).config()
    assert config["policy"] == "trident" and config["arrival_spec"] == "poisson"


def test_configs_stored_before_the_spec_still_read():
    sim = {"profile": "h200", "cluster": "2x8xH200", "mix": "image-video", "trace": None, "trace_model": None,
           "arrival": "poisson", "duration_s": 60.0, "slo_scale": 3.0, "seed": 1, "rate": 0.5, "policy": "trident",
           "bench": "x"}
    spec = validate_spec(sim)
    assert spec.policies == ("trident",) and spec.rate == 0.5 and spec.backend == "sim"
    live = {**sim, "mix": None, "arrival_spec": "trace:t.jsonl", "backend": "live", "devices": "emulated:8xH200",
            "time_scale": 0.05, "rate": None, "max_queued": 100000}
    spec = RunSpec.from_config(live)
    assert spec.trace == "t.jsonl" and spec.mix is None and spec.devices == "emulated:8xH200"
    assert spec.arrival_spec == "trace:t.jsonl"


def test_validation_collects_every_problem():
    with pytest.raises(RunSpecError) as err:
        validate_spec({"rate": -1, "slo_scale": 0, "time_scale": 0, "backend": "gpu", "arrival": "weibull"})
    text = str(err.value)
    for needle in ("--rate", "--slo-scale", "--time-scale", "--backend", "--arrival"):
        assert needle in text, needle
    assert len(err.value.problems) == 5
    with pytest.raises(RunSpecError, match="--seed"):
        validate_spec({"seed": "not a number"})


def test_spec_files(tmp_path):
    path = write_spec_file(RunSpec(mix="video-wan", seed=3), tmp_path / "spec.json")
    assert read_spec_file(path) == load_spec(path) == RunSpec(mix="video-wan", seed=3)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(RunSpecError, match="JSON object"):
        read_spec_file(tmp_path / "bad.json")
    with pytest.raises(RunSpecError) as err:
        read_spec_file(tmp_path / "missing.json")
    assert str(err.value).endswith(f"--spec: {tmp_path / 'missing.json'}: cannot read: No such file or directory")


def test_a_spec_file_with_a_key_it_does_not_know_is_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"mix": "tiny", "time_scael": 0.1, "devcies": "cpu:2", "bogus_key": 1}))
    for read in (read_spec_file, load_spec):
        with pytest.raises(RunSpecError) as err:
            read(path)
        text = str(err.value)
        assert text.startswith(f"{path}: unknown key(s) time_scael (did you mean time_scale?), "
                               "devcies (did you mean devices?), bogus_key; valid keys: profile, cluster, mix,"), text
    path.write_text(json.dumps({"mix": "tiny", "time_scale": 0.1, "devices": "cpu:2"}))
    assert load_spec(path) == RunSpec(mix="tiny", time_scale=0.1, devices="cpu:2")


def test_a_spec_files_problems_name_the_file_and_the_key(tmp_path):
    from typer.testing import CliRunner

    from tridentcore.cli import app

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"rate": -2, "seed": "x", "noise_bias": {"decode": 0}, "time_scale": 0}))
    for read in (read_spec_file, load_spec):
        with pytest.raises(RunSpecError) as err:
            read(path)
        assert err.value.problems == (f"{path}: rate: must be a number > 0 (requests per second), got -2",
                                      f"{path}: time_scale: must be a number in (0, 1000] (wall seconds per workload second), got 0",
                                      f"{path}: seed: must be an integer in 0..2147483647, got 'x'",
                                      f"{path}: noise_bias: decode: the factor must be a number in (0, 1000], got 0")
    for seed in (-1, 2**31, 2**40):  # as --seed takes them: a run a spec file starts can be replayed
        path.write_text(json.dumps({"seed": seed}))
        with pytest.raises(RunSpecError, match=f"^{path}: seed: must be an integer in 0..2147483647, got {seed}$"):
            load_spec(path)
    path.write_text(json.dumps({"seed": 2**31 - 1}))
    assert load_spec(path).seed == 2**31 - 1
    path.write_text(json.dumps({"rate": -2}))
    result = CliRunner().invoke(app, ["serve", "--spec", str(path), "--port", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == f"error: {path}: rate: must be a number > 0 (requests per second), got -2"
    path.write_text(json.dumps({"noise_bias": [[1, 2, 3]]}))
    with pytest.raises(RunSpecError, match=f"^{path}: noise_bias: expected .stage, factor. pairs"):
        load_spec(path)
    with pytest.raises(RunSpecError, match="^--rate: must be"):  # an in-memory spec names the option
        validate_spec({"rate": -2})
    # a model its mix misspells: the server's refusal says where the model came from
    mix = tmp_path / "typo.yaml"
    mix.write_text("name: typo\nclasses:\n  - {model: sd3-mediun, height: 512, width: 512, frames: 1, steps: 28}\n")
    path.write_text(json.dumps({"mix": str(mix), "devices": "emulated:1x2xH200"}))
    result = CliRunner().invoke(app, ["serve", "--spec", str(path), "--port", "0"])
    assert result.exit_code == 2 and "'sd3-mediun'" in result.stderr
    assert result.stderr.strip().endswith(f"(the models of --spec {path}'s mix {mix})")


def test_a_spec_file_with_values_of_the_wrong_type_is_one_line_naming_the_key(tmp_path):
    """``policies: [1]`` (or ``[null]``, ``[["trident"]]``) passed the spec's checks and ended ``serve
    --spec`` in a traceback (``'int' object has no attribute 'strip'``); a number for a string key, a
    stage given twice in ``noise_bias`` (``--bias`` refuses it) and a UTF-8 BOM (traces and mixes
    take one) were not said either (outside test)."""
    from typer.testing import CliRunner

    from tridentcore.cli import app

    path = tmp_path / "run.json"
    cases = {
        '{"mix": "tiny", "policies": [1]}': "policies: each must be a policy spec (a string), got 1",
        '{"mix": "tiny", "policies": [null]}': "policies: each must be a policy spec (a string), got None",
        '{"mix": "tiny", "policies": [["trident"]]}': "policies: each must be a policy spec (a string), got ['trident']",
        '{"mix": "tiny", "cluster": 5}': "cluster: must be a string, got 5",
        '{"mix": 7}': "mix: must be a string, got 7",
        '{"mix": "tiny", "noise_bias": [["decode", 1.5], ["decode", 2]]}': "noise_bias: stage 'decode' given twice",
    }
    for text, said in cases.items():
        path.write_text(text)
        with pytest.raises(RunSpecError) as err:
            load_spec(path)
        assert err.value.problems == (f"{path}: {said}",), text
        result = CliRunner().invoke(app, ["serve", "--spec", str(path), "--port", "0"])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.stderr.strip() == f"error: {path}: {said}"
    path.write_bytes(b'\xef\xbb\xbf{"mix": "tiny", "seed": 3}')
    assert load_spec(path) == RunSpec(mix="tiny", seed=3)


def test_every_config_the_project_stores_loads_as_a_spec_file(tmp_path):
    """A stored run's config_json is a spec file too: the keys the writers add (a bench id, --repeat's,
    the workbench's, a live bench's options) are accepted; a live bench's own test covers the rest."""
    from typer.testing import CliRunner

    from tridentcore.bench.live import LiveBenchSpec, LiveOptions
    from tridentcore.bench.spec import CONFIG_KEYS
    from tridentcore.cli import app
    from tridentcore.store import query_readonly

    db = tmp_path / "r.duckdb"
    runner = CliRunner()
    out = runner.invoke(app, ["bench", "--mix", "tiny", "--rate", "1", "--duration", "10", "--policies", "trident",
                              "--db", str(db), "--no-progress"])
    assert out.exit_code == 0, out.output
    run_id = query_readonly(db, "SELECT run_id FROM runs").run_id[0]
    out = runner.invoke(app, ["bench", "--repeat", run_id, "--db", str(db)])
    assert out.exit_code == 0, out.output
    configs = [json.loads(c) for c in query_readonly(db, "SELECT config_json FROM runs").config_json]
    assert {"bench", "repeat_of"} <= {k for c in configs for k in c}
    configs.append(RunSpec(mix="tiny").config(source="workbench", default_comparison="k"))  # workbench/data.py
    live = LiveBenchSpec(RunSpec(policies=("trident",)), LiveOptions()).config(bench="b")
    assert set(live) - {f.name for f in dataclasses.fields(RunSpec)} <= set(CONFIG_KEYS)
    for k, config in enumerate([*configs, live]):
        path = tmp_path / f"{k}.json"
        path.write_text(json.dumps(config))
        assert load_spec(path) == read_spec_file(path) == validate_spec(config)


def test_defaults_are_declared_once():
    spec = RunSpec()
    assert (spec.profile, spec.cluster, spec.mix, spec.slo_scale) == (
        defaults.DEFAULT_PROFILE, defaults.DEFAULT_CLUSTER, defaults.DEFAULT_MIX, defaults.DEFAULT_SLO_SCALE)
    assert defaults.DEFAULT_SLO_SCALE == 3.0 and defaults.DEFAULT_CLUSTER == "2x8xH200"
    assert defaults.DEFAULT_MIX == "image-video"


# parameter or field name -> the default it must take from core/defaults.py, never write out
_NAMED_DEFAULTS = {"slo_scale": "DEFAULT_SLO_SCALE", "max_queued": "DEFAULT_MAX_QUEUED",
                   "keep_ended": "DEFAULT_KEEP_ENDED", "time_scale": "DEFAULT_TIME_SCALE",
                   "cluster": "DEFAULT_CLUSTER", "mix": "DEFAULT_MIX", "profile": "DEFAULT_PROFILE",
                   "drain_timeout_s": "DEFAULT_DRAIN_TIMEOUT_S", "max_body_bytes": "DEFAULT_MAX_BODY_BYTES",
                   "policy": "DEFAULT_POLICY", "devices": "DEFAULT_SERVE_DEVICES", "db": "DEFAULT_DB"}
_WRITTEN_OUT = {defaults.DEFAULT_CLUSTER, defaults.DEFAULT_MIX, defaults.DEFAULT_DB, defaults.DEFAULT_SERVE_DEVICES,
                defaults.DEFAULT_LIVE_DEVICES}


def test_no_module_writes_out_a_declared_default():
    """A scan of tridentcore, workloads and workbench: no parameter or dataclass field repeats the
    value of its default (it names it instead), and the default cluster, mix, database and device
    strings appear only in core/defaults.py."""
    import ast

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for base in ("tridentcore", "workloads", "workbench"):
        for path in sorted((root / base).rglob("*.py")):
            if path.name == "defaults.py":
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            where = f"{path.relative_to(root)}"
            for node in ast.walk(tree):
                pairs = []
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    pos = node.args.args[len(node.args.args) - len(node.args.defaults):]
                    pairs = list(zip(pos, node.args.defaults)) + list(zip(node.args.kwonlyargs, node.args.kw_defaults))
                    pairs = [(a.arg, d) for a, d in pairs]
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                    pairs = [(node.target.id, node.value)]
                for name, value in pairs:
                    declared = _NAMED_DEFAULTS.get(name)
                    if (declared and isinstance(value, ast.Constant) and value.value is not None
                            and value.value == getattr(defaults, declared)):
                        offenders.append(f"{where}:{node.lineno} {name}={value.value!r} (use {declared})")
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in _WRITTEN_OUT:
                    offenders.append(f"{where}:{node.lineno} {node.value!r}")
    assert offenders == []


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def test_serve_reads_a_spec_file_and_flags_win(tmp_path):
    from tridentcore.bench.launch import start_server

    spec = RunSpec(mix="image-video", policies=("pipeline-dynamic",), backend="live", devices="emulated:8xH200",
                   time_scale=0.05, slo_scale=2.0)
    path = write_spec_file(spec, tmp_path / "spec.json")
    server = start_server(["--spec", str(path)])
    try:
        cluster = _get(f"{server.url}/v1/cluster")
        assert cluster["policy"] == "pipeline-dynamic" and cluster["time_scale"] == 0.05
        assert cluster["profile"] == spec.profile
        models = {m["id"] for m in _get(f"{server.url}/v1/models")["data"]}
        assert models == {"sd3-medium", "wan2.1-1.3b"}  # the mix's models
    finally:
        server.stop()
    server = start_server(["--spec", str(path), "--policy", "trident", "--models", "sd3-medium"])
    try:
        assert _get(f"{server.url}/v1/cluster")["policy"] == "trident"
        assert {m["id"] for m in _get(f"{server.url}/v1/models")["data"]} == {"sd3-medium"}
    finally:
        server.stop()


def test_serve_spec_of_a_live_bench_on_cpu_and_emulated_devices_serves_what_the_bench_served(tmp_path):
    """The README's live bench runs on cpu:1,emulated:2x8xH200, serving tiny-sd3 on the cpu part besides
    the mix's models (a server refuses a device kind that serves no model); its stored config_json as
    --spec failed with "devices 'cpu:1' serve none of the models" (an outside test). A spec without
    served_models is served as the bench would; one with it (a stored run), with those models."""
    from tridentcore.bench.launch import start_server

    spec = RunSpec(mix="image-video", policies=("trident",), backend="live", devices="cpu:1,emulated:1x2xH200",
                   time_scale=0.05)
    path = write_spec_file(spec, tmp_path / "spec.json")
    for stored in (False, True):
        if stored:
            text = json.loads(path.read_text())
            text["served_models"] = ["sd3-medium", "tiny-sd3", "tiny-wan", "wan2.1-1.3b"]
            path.write_text(json.dumps(text))
        server = start_server(["--spec", str(path)], timeout_s=300)
        try:
            models = {m["id"] for m in _get(f"{server.url}/v1/models")["data"]}
            assert models == {"sd3-medium", "wan2.1-1.3b", "tiny-sd3"} | ({"tiny-wan"} if stored else set())
        finally:
            server.stop()
