"""``--devices cuda:…``: what can be checked without a GPU (device parsing, the kind a device name
maps to, which weights a GPU worker moves), and a real serve on ``cuda:0`` that runs where one is
visible (``benchmarks/gpu_check.sh`` is the longer check)."""

from __future__ import annotations

import base64

import httpx
import pytest

from tridentcore.runtime.build import SetupError, gpu_kind_of, parse_devices, pipeline_for
from tridentcore.runtime.workers import residency_moves

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("name, kind", [("NVIDIA H200", "H200"), ("NVIDIA H100 80GB HBM3", "H100"),
                                        ("NVIDIA H20", "H20"), ("NVIDIA A100-SXM4-80GB", "A100"),
                                        ("NVIDIA L40S", "L40"), ("Tesla V100-SXM2-32GB", "V100-SXM2-32GB")])
def test_gpu_kind_from_the_device_name(name, kind):
    assert gpu_kind_of(name) == kind


@pytest.mark.skipif(HAS_CUDA, reason="checks the message when no GPU is visible")
def test_cuda_devices_without_a_gpu_are_refused_with_the_reason():
    with pytest.raises(SetupError, match="no CUDA device is visible"):
        parse_devices("cuda:all")
    # a bare index continues the cuda entry; the next kind still parses (and is reported with it)
    with pytest.raises(SetupError) as err:
        parse_devices("cuda:0,1,tpu:2")
    assert "'cuda:0,1'" in str(err.value) and "unknown device kind 'tpu'" in str(err.value)


def test_profile_models_run_their_arch_build_on_gpus_only():
    assert pipeline_for("sd3-medium", "cuda") == "arch:sd3-medium"
    assert pipeline_for("sd3-medium", "cpu") is None
    assert pipeline_for("tiny-sd3", "cuda") == "tiny-sd3"


def test_a_gpu_worker_evicts_what_the_plan_dropped_and_loads_what_it_runs():
    on = {("sd3", "encode"), ("sd3", "decode"), ("wan", "diffuse")}
    # the plan now holds sd3 encode and diffuse there; the task runs sd3 diffuse
    evict, load = residency_moves(on, [("sd3", "encode"), ("sd3", "diffuse")], ("sd3", "diffuse"))
    assert evict == [("sd3", "decode"), ("wan", "diffuse")] and load == [("sd3", "diffuse")]
    # already there: nothing to load; a lazily placed stage is never evicted by its own dispatch
    evict, load = residency_moves({("sd3", "diffuse")}, [], ("sd3", "diffuse"))
    assert evict == [] and load == []


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_serve_tiny_sd3_on_cuda0(tmp_path):
    """The tiny model on the GPU, priced by the CPU measurements relabelled as this GPU's kind (a
    profile only steers the policy; the stage runs for real on ``cuda:0``)."""
    import csv
    from importlib import resources

    from tridentcore.bench.launch import start_server

    kind = gpu_kind_of(torch.cuda.get_device_name(0))
    src = resources.files("tridentcore.profiles") / "data" / "cpu.csv"
    rows = list(csv.DictReader(src.open()))
    profile = tmp_path / "tiny-on-gpu.csv"
    with profile.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "gpu": kind} for r in rows)
    server = start_server(["--models", "tiny-sd3", "--devices", "cuda:0", "--profile", str(profile)])
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            r = client.post("/v1/images/generations", json={"prompt": "a cube", "model": "tiny-sd3",
                                                            "size": "128x128", "steps": 2})
            assert r.status_code == 200, r.text
            assert base64.b64decode(r.json()["data"][0]["b64_json"])[:4] == b"\x89PNG"
            snap = client.get("/v1/cluster").json()
            assert snap["devices"][0]["worker"] == "cuda" and snap["devices"][0]["kind"] == kind
    finally:
        assert server.stop() == 0
