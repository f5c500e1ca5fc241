"""Parity: a live run replayed through the simulator, and the live run against the cost model.

    python benchmarks/parity.py [--mix image-video] [--rate 0.4] [--duration 120]
        [--policies trident,pipeline-static:degree=1] [--time-scale 0.05] [--seed 0]
    python benchmarks/parity.py --devices cpu:2 --profile cpu --mix benchmarks/tiny-cpu.yaml --rate 4 --duration 20

The live engine (``tridentcore.runtime``: the asyncio driver behind ``trident serve``) runs the
workload open loop: each request of the simulator's schedule is submitted at its scheduled wall
time, with the simulator's deadline and seed, on emulated GPUs (which sleep the cost model's
durations x ``time-scale``) or on real CPU worker processes. The engine keeps its report log.

1. **Replay parity** (the design's promise): the log is replayed through the simulator
   (``tridentcore.sim.replay``) with a fresh policy; the figure is the share of requests whose stage
   spans (dispatch, GPUs, batch, steps, outcome, times) and outcome are identical. Must be 100 %.
2. **Prediction**: the same schedule simulated with the cost model's durations, against the live
   run: requests with the same sequence of (stage, degree, batch, steps, outcome), and the relative
   latency difference of requests done in both (wall-clock jitter and, on real workers, the
   profile's error show here, not in 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_MIX, DEFAULT_PROFILE
from tridentcore.core.metrics import quantile
from tridentcore.bench.scenario import Scenario, load_scenario, run_one
from tridentcore.sim.replay import compare, replay


def shapes(spans) -> dict[int, tuple]:
    out: dict[int, list] = {}
    for sp in sorted(spans, key=lambda s: (s.request_id, s.started_s, s.stage)):
        out.setdefault(sp.request_id, []).append((sp.stage, sp.degree, sp.batch, sp.start_step, sp.end_step, sp.outcome))
    return {k: tuple(v) for k, v in out.items()}


async def live(loaded, policy: str, requests, devices: str, models, time_scale: float):
    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission

    emulated = devices.startswith("emulated")
    rt = build_runtime(list(models), devices, policy, profile=loaded.scenario.profile if emulated else None,
                       time_scale=time_scale if emulated else 1.0, max_queued=100_000,
                       slo_scale=loaded.scenario.slo_scale, strict=True, log_reports=True,
                       expected=loaded.expected())  # what the simulator plans for
    engine = rt.engine
    await engine.start()
    scale = time_scale if emulated else 1.0
    t0 = time.monotonic()
    waits = []
    for spec in requests:  # open loop: each request at its scheduled wall time
        delay = t0 + spec.arrival_s * scale - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        acc = engine.submit([Submission(spec.model, spec.prompt, spec.shape, spec.seed, spec.guidance,
                                        spec.negative_prompt, spec.slo_s)])
        waits.append(asyncio.ensure_future(engine.wait(acc.ids[0])))
    await asyncio.gather(*waits)
    await engine.shutdown(drain_timeout_s=5.0)
    return engine


def measure(loaded, policy: str, rate: float, devices: str, models, time_scale: float) -> dict:
    requests = loaded.requests(rate)
    engine = asyncio.run(live(loaded, policy, requests, devices, models, time_scale))
    rows, spans = engine.request_rows(), engine.spans
    parity = compare(rows, spans, engine.placements, replay(engine.core))
    sim = run_one(loaded, policy, rate)
    sim_dec, live_dec = shapes(sim.spans), shapes(spans)
    ids = [r.request_id for r in rows]
    same_shape = sum(1 for k, r in zip(ids, requests) if sim_dec.get(r.id) == live_dec.get(k))
    sim_rows = {r.request_id: r for r in sim.requests}
    errs = []
    for row, r in zip(rows, requests):  # rows in submission order, the schedule's order
        s = sim_rows[r.id]
        if row.state == "done" and s.state == "done":
            ls, ll = s.finish_s - s.arrival_s, row.finish_s - row.arrival_s
            errs.append(abs(ll - ls) / ls)
    return {"policy": policy, "requests": len(requests), "replay_identical": parity.identical,
            "replay_exact": parity.exact, "first_difference": parity.first_difference,
            "reports": len(engine.core.log or ()), "same_as_cost_model": same_shape,
            "latency_err_median": statistics.median(errs) if errs else float("nan"),
            "latency_err_p95": quantile(errs, 0.95) if errs else float("nan")}


def _device_cluster_file(devices: str) -> str:
    """The cluster of real devices (``cpu:2``: host memory split between the workers) as a YAML file,
    so the simulator prices the same cluster the engine runs."""
    import tempfile

    from tridentcore.runtime.devices import parse_devices

    (dev,) = parse_devices(devices)
    c = dev.cluster
    fd, path = tempfile.mkstemp(suffix=".yaml", prefix="parity-cluster-")
    with open(fd, "w") as f:
        f.write(f"nodes: {c.nodes}\ngpus_per_node: {c.gpus_per_node}\nkind: {c.kind}\nmem_gib: {c.mem_gib}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default=DEFAULT_MIX)
    ap.add_argument("--rate", type=float, default=0.4)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--devices", default=None, help="default: emulated:CLUSTER")
    ap.add_argument("--models", default=None, help="default: the mix's models")
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--policies", default="trident,pipeline-static:degree=1")
    ap.add_argument("--time-scale", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    devices = args.devices or f"emulated:{args.cluster}"
    cluster = args.cluster if devices.startswith("emulated") else _device_cluster_file(devices)
    loaded = load_scenario(Scenario(cluster=cluster, mix=args.mix, duration_s=args.duration, seed=args.seed,
                                    profile=args.profile))
    if cluster != args.cluster:
        os.unlink(cluster)  # read once by load_scenario
    models = args.models.split(",") if args.models else sorted({c.model for c in loaded.mix.classes})
    for policy in args.policies.split(","):
        r = measure(loaded, policy, args.rate, devices, models, args.time_scale)
        print(f"{policy} on {devices}: {r['requests']} requests, {r['reports']} reports; replay identical "
              f"{r['replay_identical']}/{r['requests']} ({100 * r['replay_identical'] / max(1, r['requests']):.1f} %)"
              f"{'' if r['replay_exact'] else ' FIRST DIFFERENCE: ' + r['first_difference']}; "
              f"vs the cost model: same stage sequence {r['same_as_cost_model']}/{r['requests']}, latency "
              f"|live - sim| / sim median {100 * r['latency_err_median']:.2f} %, p95 {100 * r['latency_err_p95']:.2f} %")


if __name__ == "__main__":
    main()
