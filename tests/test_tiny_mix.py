"""The newcomer's path on a CPU: the shipped `tiny` mix, the `cpu` cluster kind (`2xcpu`), a mix
narrowed to some models (`tiny:models=tiny-sd3`), the mix a server's models call for, the profile
that prices a mix, and error messages that name the flags the command really has."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from tridentcore.bench.scenario import load_scenario, pricing_for, schedule_requests
from tridentcore.bench.spec import RunSpec, RunSpecError
from tridentcore.cli import app
from tridentcore.core.cluster import CPU_WORKER_MEM_GIB, ClusterError, cluster_from_dict, parse_cluster
from tridentcore.core.workload import WorkloadError
from tridentcore.formats.mixes import list_mixes, load_cluster, load_mix, mix_for_models
from tridentcore.profiles import load_profile
from workloads.schedule import build_schedule, served_mix

runner = CliRunner()


# ---------------------------------------------------------------------- the cpu cluster kind
@pytest.mark.parametrize("text, nodes, per_node", [("2xcpu", 1, 2), ("1x2xCPU", 1, 2), ("3x4xcpu", 3, 4)])
def test_cpu_cluster_shorthand(text, nodes, per_node):
    spec = parse_cluster(text)
    assert (spec.nodes, spec.gpus_per_node, spec.kind, spec.mem_gib) == (nodes, per_node, "cpu", CPU_WORKER_MEM_GIB)
    assert parse_cluster(spec.label) == spec == load_cluster(text)
    assert parse_cluster("2xcpu", {"cpu": 16}).mem_gib == 16  # an override still wins
    assert cluster_from_dict({"nodes": 1, "gpus_per_node": 2, "kind": "cpu"}) == parse_cluster("2xcpu")


def test_the_cpu_cluster_is_the_servers():
    """`trident serve --devices cpu:2` runs on a cluster labelled as `2xcpu` parses."""
    from tridentcore.runtime.devices import parse_devices

    (dev,) = parse_devices("cpu:2")
    assert dev.cluster.label == parse_cluster("2xcpu").label == "1x2xcpu"
    assert dev.default_profile == "cpu"


def test_unknown_kind_lists_cpu_and_names_no_python_argument():
    with pytest.raises(ClusterError) as err:
        parse_cluster("2xgpu")
    text = str(err.value)
    assert "cpu" in text and "H200" in text and "2xcpu" in text
    assert "memory_overrides" not in text  # a Python argument, not something a command line can give


# ---------------------------------------------------------------------- the tiny mix
def test_tiny_mix_is_shipped_and_priced_by_the_cpu_profile_at_measured_shapes():
    assert "tiny" in list_mixes()
    mix = load_mix("tiny")
    assert {c.model for c in mix.classes} == {"tiny-sd3", "tiny-wan"}
    assert len({(c.height, c.width) for c in mix.classes if c.model == "tiny-sd3"}) >= 3
    measured = {(r.model, r.stage, r.height, r.width, r.frames) for r in load_profile("cpu").rows}
    for c in mix.classes:
        for stage in ("diffuse", "decode"):
            assert (c.model, stage, c.height, c.width, c.frames) in measured, (c.label, stage)
    loaded = load_scenario(RunSpec(mix="tiny", profile="cpu", cluster="2xcpu", rate=2, duration_s=30))
    assert len(loaded.requests(2.0)) > 30


def test_a_mix_narrowed_to_some_models():
    mix = load_mix("tiny:models=tiny-sd3")
    assert mix.name == "tiny:models=tiny-sd3" and {c.model for c in mix.classes} == {"tiny-sd3"}
    assert mix.classes == tuple(c for c in load_mix("tiny").classes if c.model == "tiny-sd3")
    assert load_mix("tiny:models=tiny-wan+tiny-sd3").classes == load_mix("tiny").classes
    for bad, needle in (("tiny:models=flux-dev", "'flux-dev' not among the models of mix 'tiny'"), ("tiny:models=", "no models"),
                        ("nope:models=x", "unknown mix")):
        with pytest.raises(WorkloadError, match=needle):
            load_mix(bad)


@pytest.mark.parametrize("served, mix", [
    (["tiny-sd3", "tiny-wan"], "tiny"),
    (["tiny-sd3"], "tiny:models=tiny-sd3"),
    (["tiny-wan"], "tiny:models=tiny-wan"),
    (["sd3-medium", "wan2.1-1.3b"], "image-video"),
    (["sd3-medium", "wan2.1-1.3b", "tiny-sd3"], "image-video"),
    (["sd3-medium"], "sd3-mixed"),
    (["wan2.1-1.3b"], "video-wan"),
    (["flux-dev", "tiny-sd3"], "flux-uniform"),
    (["tiny-sd"], None),
    ([], None),
])  # fmt: skip
def test_the_mix_a_servers_models_call_for(served, mix):
    assert mix_for_models(served) == mix
    if mix is not None:
        assert {c.model for c in load_mix(mix).classes} <= set(served)


@pytest.mark.parametrize("mix, profile, cluster, expected", [
    ("tiny", None, None, ("cpu", "2xcpu")),
    ("tiny:models=tiny-wan", None, None, ("cpu", "2xcpu")),
    ("image-video", None, None, ("h200", "2x8xH200")),
    (None, None, None, ("h200", "2x8xH200")),
    ("no-such-mix", None, None, ("h200", "2x8xH200")),  # the run's own error says what is wrong
    ("tiny", "cpu", None, ("cpu", "2xcpu")),
    ("tiny", None, "4xcpu", ("cpu", "4xcpu")),
    ("tiny", "h200", None, ("h200", "2x8xH200")),  # given: kept (the error then suggests cpu)
    ("tiny", "h200", "8xH200", ("h200", "8xH200")),
])  # fmt: skip
def test_pricing_fills_in_what_is_not_given(mix, profile, cluster, expected):
    assert pricing_for(mix, profile, cluster) == expected


# ---------------------------------------------------------------------- errors name real flags
def test_an_unpriced_mix_names_the_profile_that_prices_it_with_the_callers_flag():
    with pytest.raises(ValueError) as err:
        load_scenario(RunSpec(mix="tiny"))
    text = str(err.value)
    assert "cannot cost mix 'tiny'" in text and text.endswith("it is priced by --profile cpu --cluster 2xcpu")
    assert text.count("no rows for model 'tiny-sd3'") == 1  # each problem once, with the classes it hits
    with pytest.raises(RunSpecError) as err:
        build_schedule(RunSpec(mix="tiny", backend="live"))  # the Locust file's schedule
    text = str(err.value)
    assert text.startswith("--mix/--cost-profile/--cluster:") and "--cost-profile cpu --cluster 2xcpu" in text
    assert "--profile " not in text.replace("--cost-profile ", "")
    with pytest.raises(RunSpecError, match="--mix/--profile/--cluster"):
        schedule_requests(RunSpec(mix="tiny"))


def test_a_cluster_the_profile_lacks_names_the_profile_that_has_it():
    with pytest.raises(ValueError, match=r"\(--cluster 2x8xH200\), or --profile cpu for cpu"):
        load_scenario(RunSpec(mix="tiny", cluster="2xcpu"))
    with pytest.raises(ValueError, match=r"\(--cluster 2xcpu\), or --profile h200 for H200"):
        load_scenario(RunSpec(mix="tiny", profile="cpu"))


def test_simulate_the_tiny_mix_from_the_command_line(tmp_path):
    """Neither --profile nor --cluster: the pair that prices the mix; a profile given that cannot: the
    error names the pair that can."""
    bad = runner.invoke(app, ["simulate", "--mix", "tiny", "--profile", "h200", "--duration", "30"])
    assert bad.exit_code == 2 and "--profile cpu --cluster 2xcpu" in bad.stderr
    rows = {}
    for extra in ([], ["--profile", "cpu", "--cluster", "2xcpu"]):
        good = runner.invoke(app, ["simulate", "--mix", "tiny", *extra, "--duration", "30", "--policies", "trident",
                                   "--json"])
        assert good.exit_code == 0, good.output
        rows[len(extra)] = {k: v for k, v in json.loads(good.stdout)[0].items() if k != "planner_p99_ms"}
    assert rows[0]["requests"] > 10 and rows[0] == rows[4]
    shown = runner.invoke(app, ["bench", "--mix", "tiny", "--duration", "30", "--policies", "trident",
                                "--db", str(tmp_path / "runs.duckdb")])
    assert shown.exit_code == 0 and "on 1x2xcpu (cpu)" in shown.stdout, shown.output


# ---------------------------------------------------------------------- what a server serves
class _Models(BaseHTTPRequestHandler):
    reply: tuple[int, bytes] = (200, b"{}")
    cluster: tuple[int, bytes] | None = None  # GET /v1/cluster's, where set

    def do_GET(self):  # noqa: N802 - http.server's name
        status, body = self.cluster if self.cluster is not None and self.path.endswith("/v1/cluster") else self.reply
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def models_server():
    """A stand-in for GET /v1/models on a free loopback port; set ``handler.reply``."""
    handler = type("Handler", (_Models,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _models(*names: str) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]}).encode()


def test_served_mix_reads_the_servers_time_scale_and_its_parts_where_they_differ(models_server):
    """Outside tests 125 and 129: Locust sent at time scale 1 to a server at 0.05; then, following the
    server, at 0.05 to the cpu part of `--devices cpu:1,emulated:1x2xH200 --time-scale 0.05` (wall clock)."""
    url, handler = models_server
    handler.reply = (200, _models("tiny-sd3"))
    handler.cluster = (200, json.dumps({"time_scale": 0.05}).encode())
    got = served_mix(url)
    assert (got.time_scale, got.time_scales) == (0.05, ())
    parts = [{"devices": "cpu:1", "time_scale": 1.0}, {"devices": "emulated:1x2xH200", "time_scale": 0.05}]
    handler.cluster = (200, json.dumps({"time_scale": 0.05, "parts": parts}).encode())
    assert served_mix(url).time_scales == (("cpu:1", 1.0), ("emulated:1x2xH200", 0.05))
    for bad in ((404, b"{}"), (200, b"not json"), (200, b'{"time_scale": -1}')):
        handler.cluster = bad
        got = served_mix(url)
        assert (got.time_scale, got.time_scales, got.mix) == (None, (), "tiny:models=tiny-sd3"), bad


def test_served_mix_follows_the_servers_models(models_server):
    url, handler = models_server
    handler.reply = (200, _models("tiny-sd3"))
    got = served_mix(url)
    assert (got.mix, got.models, got.problem) == ("tiny:models=tiny-sd3", ("tiny-sd3",), None)
    handler.reply = (200, _models("tiny-sd3", "tiny-wan"))
    assert served_mix(url + "/").mix == "tiny"
    handler.reply = (200, _models("tiny-sd"))
    got = served_mix(url)
    assert got.mix is None and "tiny-sd, in no shipped mix" in got.problem and "--mix FILE.yaml" in got.problem
    handler.reply = (401, b'{"error": {"code": "unauthorized"}}')
    assert "HTTP 401" in served_mix(url).problem and "TRIDENT_API_KEY" in served_mix(url).problem
    handler.reply = (200, b"not json")
    assert "give --mix" in served_mix(url).problem


def test_served_mix_of_a_server_that_is_not_there():
    got = served_mix("http://127.0.0.1:9")
    assert got.mix is None and "GET http://127.0.0.1:9/v1/models" in got.problem and "give --mix" in got.problem


def test_a_mix_file_of_tiny_models_is_priced_by_the_cpu_profile(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: mine\nclasses:\n  - {model: tiny-sd3, height: 64, width: 64, frames: 1, steps: 4}\n")
    assert pricing_for(str(path)) == ("cpu", "2xcpu")
    assert pricing_for(str(path), None, "1xcpu") == ("cpu", "1xcpu")
    assert len(build_schedule(RunSpec(mix=str(path), profile="cpu", cluster="1xcpu", rate=1, duration_s=20))) > 5


def test_a_models_advertised_default_size_is_one_its_profile_prices():
    """``/v1/models`` advertised tiny-flux-xl's default size as 128x128 on cpu devices, and a request
    without ``size`` then got 422: the cpu profile's smallest tiny-flux-xl shape is 256x256 (65,536
    pixels), 128x128 more than 2x below it (outside test). The default is now the smallest square on
    the pipeline's grid that the profile prices; a default it prices already is kept."""
    from tridentcore.profiles import load_profile
    from tridentcore.runtime.models import ModelEntry, check_request, priced

    cost = load_profile("cpu").cost_model()
    xl = priced(ModelEntry("tiny-flux-xl", "image", 32, 1024, 16, 8, 128, 128), cost, "cpu")
    assert (xl.default_width, xl.default_height) == (192, 192) and xl.pixels[0] <= 192 * 192
    assert check_request(xl, cost, "cpu", xl.default_width, xl.default_height, 1, 8, "x") == []
    assert check_request(xl, cost, "cpu", 128, 128, 1, 8, "x")  # (what it advertised before)
    sd3 = priced(ModelEntry("tiny-sd3", "image", 32, 1024, 16, 8, 128, 128), cost, "cpu")
    assert (sd3.default_width, sd3.default_height) == (128, 128)
