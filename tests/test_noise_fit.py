"""Stage-time noise fitted to measurements (issue 11, point 4): the fit recovers the simulator's own
noise model, ``--noise-from RUN`` fits a stored live run's dispatches, and the online spread a
policy keeps."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tridentcore.profiles
from tridentcore.bench.fold import fit_run_noise
from tridentcore.cli import app
from tridentcore.core.noise import Spread, fit_noise, robust_sigma
from tridentcore.core.records import RequestRow, RunMeta, SpanRow
from tridentcore.core.types import Shape
from tridentcore.profiles import load_profile
from tridentcore.sim.engine import StageNoise
from tridentcore.store import ResultsStore

BIAS = (("decode", 0.8), ("diffuse", 1.3), ("encode", 2.0))


def _drawn(noise: StageNoise, n: int, rng: random.Random) -> list[tuple[str, float, float]]:
    """``n`` dispatches per stage, predictions spread over two decades, actual = prediction x the
    noise's own factor (request ids as the simulator passes them)."""
    draw = noise.factors()
    out = []
    for rid in range(n):
        for stage in ("encode", "diffuse", "decode"):
            predicted = 10 ** rng.uniform(-2, 0)
            out.append((stage, predicted, predicted * draw(stage, rid, 0)))
    return out


@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_the_fit_recovers_the_simulators_noise(sigma):
    fit = fit_noise(_drawn(StageNoise(sigma, BIAS, seed=7), 2000, random.Random(1)))
    assert fit.sigma == pytest.approx(sigma, rel=0.06)
    for (stage, got), (want_stage, want) in zip(fit.bias, BIAS):
        assert stage == want_stage and got == pytest.approx(want, rel=0.03)
    # the median ratio is the mean factor x exp(-sigma^2 / 2): a mean-1 lognormal's median
    for (_, med), (_, bias) in zip(fit.median, fit.bias):
        assert med == pytest.approx(bias * math.exp(-fit.sigma ** 2 / 2))
    assert dict(fit.samples) == {"decode": 2000, "diffuse": 2000, "encode": 2000}


def test_without_noise_the_fit_is_exact_and_skips_what_it_cannot_use():
    samples = [("encode", 0.1, 0.25), ("encode", 0.2, 0.5), ("encode", 0.4, 1.0), ("decode", 0.1, 0.1),
               ("decode", 0.0, 0.3), ("decode", 0.2, -1.0)]  # decode: one usable sample, too few
    fit = fit_noise(samples)
    assert fit.sigma == 0.0 and fit.bias == (("encode", pytest.approx(2.5)),) and fit.samples == (("encode", 3),)
    assert "encode bias 2.500" in fit.describe()
    with pytest.raises(ValueError, match="no stage has 3"):
        fit_noise(samples[3:])


def test_robust_sigma_ignores_a_stray_slow_run():
    rng = random.Random(2)
    xs = [rng.gauss(0, 0.2) for _ in range(4000)]
    assert robust_sigma(xs + [50.0] * 20) == pytest.approx(0.2, rel=0.05)
    assert robust_sigma([1.0]) == 0.0


def test_the_online_spread_leaves_bias_to_calibration():
    spread = Spread(window=512, min_samples=16, every=8)
    for _ in range(100):  # exactly as predicted, rounding aside
        spread.observe("diffuse", 0.1 + 0.2, 0.3)
    assert spread.sigma == 0.0 and spread.factor(2.0) == 1.0
    rng = random.Random(3)
    for stage, predicted, measured in _drawn(StageNoise(0.25, BIAS, seed=1), 400, rng):
        spread.observe(stage, predicted, measured)
    assert spread.sigma == pytest.approx(0.25, rel=0.15)  # the biases (0.8 to 2) are not spread
    assert spread.factor(2.0) == pytest.approx(math.exp(2 * spread.sigma))


def test_a_requests_stage_draws_the_same_factor_in_every_run():
    a, b = StageNoise(0.3, seed=4).factors(), StageNoise(0.3, seed=4).factors()
    first = [a("diffuse", rid, 0) for rid in range(50)]
    assert [b("diffuse", rid, 0) for rid in reversed(range(50))] == first[::-1]  # order does not matter
    assert a("diffuse", 3, 14) != first[3] and StageNoise(0.3, seed=5).factors()("diffuse", 3, 0) != first[3]


# ------------------------------------------------------------------------------ stored live runs
def _store_run(db, run_id: str, *, backend: str = "live", devices: str = "cpu:1", n: int = 120,
               noise: StageNoise = StageNoise(0.2, BIAS, seed=3)) -> None:
    """A stored run of tiny-sd3 on one CPU worker whose stage times are the cpu profile's x noise."""
    cost = load_profile("cpu").cost_model()
    draw = noise.factors()
    requests, spans, t = [], [], 0.0
    for rid in range(n):
        shape = Shape(64, 64, 1, 4) if rid % 2 else Shape(128, 128, 1, 8)
        arrival = t
        for did, (stage, steps) in enumerate((("encode", 1), ("diffuse", shape.steps), ("decode", 1))):
            per_call = cost.latency_s("tiny-sd3", stage, None if stage == "encode" else shape, 1, 1, "cpu")
            took = per_call * steps * draw(stage, rid, 0)
            spans.append(SpanRow(dispatch_id=3 * rid + did, request_id=rid, stage=stage, gpus=(0,), degree=1, batch=1,
                                 queued_s=t, started_s=t, ended_s=t + took, predicted_s=per_call * steps,
                                 start_step=0, end_step=steps if stage == "diffuse" else 0))
            t += took
        requests.append(RequestRow(request_id=rid, model="tiny-sd3", height=shape.height, width=shape.width,
                                   frames=1, steps=shape.steps, arrival_s=arrival, deadline_s=arrival + 10.0,
                                   state="done", finish_s=t))
    meta = RunMeta(run_id=run_id, backend=backend, policy="trident", seed=0, profile="cpu", cluster="1x1xcpu",
                   mix="tiny", rate_rps=0.0, duration_s=t, slo_scale=3.0,
                   config_json=json.dumps({"devices": devices}))
    ResultsStore(str(db)).write_run(meta, requests, spans)


def test_a_stored_live_run_fits_to_its_noise(tmp_path):
    db = tmp_path / "runs.duckdb"
    _store_run(db, "cpu-run", n=600)
    fit = fit_run_noise(db, "cpu-run")
    assert fit.sigma == pytest.approx(0.2, rel=0.1)
    assert dict(fit.bias) == {s: pytest.approx(b, rel=0.05) for s, b in BIAS}


def test_simulate_and_sweep_take_their_noise_from_a_stored_run(tmp_path):
    db = tmp_path / "runs.duckdb"
    _store_run(db, "cpu-run")
    fit = fit_run_noise(db, "cpu-run")
    common = ["--mix", "sd3-mixed", "--duration", "20", "--policies", "trident", "--noise-from", "cpu-run",
              "--noise-db", str(db)]
    result = CliRunner().invoke(app, ["simulate", *common, "--rate", "0.5"])
    assert result.exit_code == 0, result.output
    line = result.output.splitlines()[0]
    # h200 (the mix's profile) prices no cpu dispatch: fitted against the run's own profile, and said
    assert line.startswith("stage-time noise fitted to run cpu-run (360 dispatches) against profile cpu (profile "
                           "h200 does not price the run's dispatches): sigma "), line
    assert f"sigma {fit.sigma:.3f}" in line and "encode bias" in line
    result = CliRunner().invoke(app, ["sweep", *common, "--rates", "0.5"])
    assert result.exit_code == 0 and "stage-time noise fitted to run cpu-run" in result.output
    # a unique prefix, as the runs commands take (outside test: only a whole id was)
    prefix = [x if x != "cpu-run" else "cpu-r" for x in common]
    result = CliRunner().invoke(app, ["simulate", *prefix, "--rate", "0.5"])
    assert result.exit_code == 0 and result.output.startswith("stage-time noise fitted to run cpu-run ("), result.output
    # the fitted values are the run spec's, so a stored simulated run records them
    sim_db = tmp_path / "sim.duckdb"
    result = CliRunner().invoke(app, ["simulate", *common, "--rate", "0.5", "--db", str(sim_db)])
    assert result.exit_code == 0, result.output
    from tridentcore.store import query_readonly

    config = json.loads(query_readonly(sim_db, "SELECT config_json FROM runs").iloc[0].config_json)
    assert config["noise_sigma"] == round(fit.sigma, 4)
    assert {s: b for s, b in config["noise_bias"]} == {s: round(b, 4) for s, b in fit.bias}


def test_runs_without_measurements_are_refused(tmp_path):
    db = tmp_path / "runs.duckdb"
    _store_run(db, "sim-run", backend="sim", n=10)
    _store_run(db, "emu-run", devices="emulated:1xH200", n=10)
    _store_run(db, "mixed-run", devices="cpu:1,emulated:2x8xH200", n=10)  # a live bench's label: 2x8xH200
    base = ["simulate", "--mix", "sd3-mixed", "--duration", "20", "--noise-db", str(db), "--noise-from"]
    for run_id, why in (("sim-run", "is simulated"), ("emu-run", "emulated devices"), ("nope", "run 'nope' is not in"),
                        ("mixed-run", "mixes device kinds")):
        result = CliRunner().invoke(app, [*base, run_id])
        assert result.exit_code == 2 and why in result.output, result.output
    result = CliRunner().invoke(app, [*base, "sim-run", "--noise", "0.1"])
    assert result.exit_code == 2 and "not both" in result.output


def test_the_measured_preset_is_a_valid_noise():
    from tridentcore.bench.spec import RunSpec
    from tridentcore.core.defaults import MEASURED_NOISE_BIAS, MEASURED_NOISE_SIGMA

    assert not StageNoise(MEASURED_NOISE_SIGMA, MEASURED_NOISE_BIAS).off
    assert RunSpec(noise_sigma=MEASURED_NOISE_SIGMA, noise_bias=MEASURED_NOISE_BIAS).problems() == []


def test_noise_from_a_run_is_fitted_against_the_profile_the_simulation_prices_with(tmp_path):
    """Outside test 120: the biases were fitted against the run's own profile (``cpu``) and multiplied
    onto ``--profile``, a profile folded from that run: its measured times counted twice (attainment
    0.50 against the run's 0.78). Against a profile whose times are twice ``cpu``'s the fitted biases
    are half those against ``cpu``."""
    import csv

    db = tmp_path / "runs.duckdb"
    _store_run(db, "cpu-run")
    rows = list(csv.DictReader(open(Path(tridentcore.profiles.__file__).parent / "data" / "cpu.csv")))
    for r in rows:
        r["latency_ms"] = str(2 * float(r["latency_ms"]))
    slow = tmp_path / "slow.csv"
    with open(slow, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)

    def biases(profile: str) -> dict[str, float]:
        result = CliRunner().invoke(app, ["simulate", "--mix", "tiny", "--profile", profile, "--cluster", "2xcpu",
                                          "--rate", "1", "--duration", "10", "--policies", "trident",
                                          "--noise-from", "cpu-run", "--noise-db", str(db)])
        assert result.exit_code == 0, result.output
        line = result.output.splitlines()[0]
        assert f"against profile {profile}: sigma" in line, line
        return {m[0]: float(m[1]) for m in re.findall(r"(\w+) bias ([0-9.]+)", line)}

    base, doubled = biases("cpu"), biases(str(slow))
    # a profile that cannot be read is the error (it was fitted against the run's own, then refused)
    missing = CliRunner().invoke(app, ["simulate", "--mix", "tiny", "--profile", str(tmp_path / "no.csv"), "--cluster",
                                       "2xcpu", "--noise-from", "cpu-run", "--noise-db", str(db)])
    assert missing.exit_code == 2 and "stage-time noise" not in missing.output and "no such file" in missing.output
    assert set(base) == {"encode", "diffuse", "decode"}
    assert {s: doubled[s] / base[s] for s in base} == {s: pytest.approx(0.5, rel=0.01) for s in base}
