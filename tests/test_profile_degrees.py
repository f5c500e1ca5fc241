"""`trident profile --degrees`: diffuse rows measured at degree K, and the cost model preferring them.

The profile runs the real command in a fresh process (it spawns its members and joins their gloo
group as rank 0, as `trident generate --degree K` does). The cost-model checks read a small CSV.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tridentcore.core.scaling import ScalingModel
from tridentcore.core.types import Shape
from tridentcore.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]

HEADER = "gpu,model,stage,height,width,frames,batch,degree,latency_ms,peak_gib,act_gib,weights_gib,source\n"
# "dit" has degree-2 rows at 256 and 512 (not at 1024); "other" has none
SMALL_CSV = HEADER + "".join(
    f"cpu,{model},diffuse,{s},{s},1,1,{d},{ms},0.01,0.005,0.005,measured\n"
    for model, d, s, ms in (
        ("dit", 1, 256, 100.0), ("dit", 1, 512, 300.0), ("dit", 1, 1024, 1000.0), ("dit", 1, 2048, 4000.0),
        ("dit", 2, 256, 80.0), ("dit", 2, 512, 180.0),
        ("other", 1, 256, 100.0), ("other", 1, 512, 300.0),
    )
) + "cpu,dit,encode,,,,1,1,5.0,0.01,0.001,0.009,measured\n"


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text(SMALL_CSV)
    return load_profile(str(path)).cost_model()


def test_measured_degree_rows_are_used_where_they_exist(small):
    # measured at degree 2: the row itself, not a model
    assert small.latency_s("dit", "diffuse", Shape(512, 512), degree=2) == pytest.approx(0.180)
    assert small.latency_s("dit", "diffuse", Shape(256, 256), degree=2) == pytest.approx(0.080)
    assert small.speedup("dit", "diffuse", Shape(512, 512), 2) == pytest.approx(300 / 180)
    assert small.degrees("dit", "diffuse") == (1, 2)
    # encode does not split: degree 2 costs degree 1
    assert small.latency_s("dit", "encode", None, degree=2) == pytest.approx(0.005)


def test_the_scaling_model_answers_where_no_degree_rows_exist(small):
    scaling = ScalingModel()
    # a model without degree rows
    assert small.latency_s("other", "diffuse", Shape(512, 512), degree=2) == pytest.approx(
        0.300 / scaling.speedup(2, 512 * 512))
    # a shape the degree-2 rows do not reach (2048^2 is 16x the tokens of 512^2, past the 2x bound)
    assert small.latency_s("dit", "diffuse", Shape(2048, 2048), degree=2) == pytest.approx(
        4.0 / scaling.speedup(2, 2048 * 2048))


def test_an_unmeasured_degree_takes_the_serial_fraction_of_the_measured_one(small):
    f = (2 / (300 / 180) - 1) / (2 - 1)  # Amdahl at 512^2 from the degree-2 row
    assert small.latency_s("dit", "diffuse", Shape(512, 512), degree=4) == pytest.approx(0.300 * (1 + 3 * f) / 4)


def test_the_shipped_cpu_profile_answers_tiny_flux_xl_at_degree_2_from_its_rows():
    rows = load_profile("cpu").rows
    measured = [r for r in rows if r.model == "tiny-flux-xl" and r.degree == 2]
    assert measured and {r.stage for r in measured} == {"diffuse"}
    costs = load_profile("cpu").cost_model()
    for r in measured:
        shape = Shape(r.height, r.width, r.frames)
        assert costs.latency_s("tiny-flux-xl", "diffuse", shape, r.batch, 2) == pytest.approx(r.latency_ms / 1000)
    # the other tiny models have no degree rows: the scaling model answers for them
    assert costs.degrees("tiny-sd3", "diffuse") == (1,)


def test_degrees_beyond_1_need_a_group_factory():
    from tridentcore.pipelines.profiling import ProfileSpec, run_profile

    with pytest.raises(ValueError, match="group factory"):
        run_profile(ProfileSpec(model="tiny-flux", degrees=(1, 2)), progress=False)


def test_profile_degrees_1_2_writes_degree_2_diffuse_rows_and_skips_what_cannot_split(tmp_path):
    out = tmp_path / "p.csv"
    # tiny-flux 64x64: 16 image tokens; 48x48: 9, which 2 does not divide; tiny-sd: a UNet
    done = subprocess.run(
        [sys.executable, "-m", "tridentcore.cli", "profile", "--model", "tiny-flux,tiny-sd", "--sizes", "64,48",
         "--batches", "1", "--steps", "1", "--repeats", "1", "--warmup", "0", "--degrees", "1,2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    rows = load_profile(str(out)).rows
    at2 = [(r.model, r.stage, r.height, r.width, r.batch) for r in rows if r.degree == 2]
    assert at2 == [("tiny-flux", "diffuse", 64, 64, 1)]
    assert all(r.latency_ms > 0 for r in rows)
    # degree 1 has every stage and shape of both models
    assert len([r for r in rows if r.degree == 1]) == 2 * (1 + 2 + 2)
    assert "tiny-flux diffuse at degree 2 skipped (48x48 b1): 9 image tokens" in done.stdout
    assert "tiny-sd diffuse at degree 2 skipped (64x64 b1, 48x48 b1): a UNet" in done.stdout
    assert f"wrote {len(rows)} rows" in done.stdout


def test_tiny_flux_xl_is_small_to_build_and_splits_two_and_four_ways():
    pytest.importorskip("torch")
    import time

    from tridentcore.pipelines import MODELS, load_pipeline
    from tridentcore.pipelines.parallel import degree_problems

    load_pipeline("tiny-flux")  # the libraries imported; what is timed is the build
    t0 = time.perf_counter()
    pipe = load_pipeline("tiny-flux-xl")
    assert time.perf_counter() - t0 < 2.0
    assert "tiny-flux-xl" in MODELS
    config = pipe.pipe.transformer.config
    assert (config.num_attention_heads, config.attention_head_dim) == (4, 64)
    assert pipe.image_tokens(256, 256) == 256
    assert degree_problems(pipe, 256, 256, 1, 2, 512) == degree_problems(pipe, 256, 256, 1, 4, 512) == []


def test_the_speedup_benchmark_runs_in_quick_mode():
    import json

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parallel_speedup.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    (row,) = out["rows"]
    assert row["size"] == 256 and row["collectives_per_step"] > 0
    assert row["d1_ms"] > 0 and row["d2_ms"] > 0 and row["no_compute_comm_ms"] > 0
    # the shipped profile predicts this shape both ways: the scaling model, and the degree-2 rows
    assert row["predicted_scaling"] == pytest.approx(1.03, abs=0.01)
    assert row["predicted_rows"] == pytest.approx(106.144 / 91.573, abs=0.01)
    assert out["loadavg_start"] and out["loadavg_end"]
