"""Parity: the same requests through the simulator and through the live engine on emulated GPUs.

    python benchmarks/parity.py [--mix image-video] [--rate 0.4] [--duration 120]
        [--policies trident,pipeline-static:degree=1] [--time-scale 0.05] [--seed 0]

The simulator runs the workload on its virtual clock. The live engine (``tridentcore.runtime``:
the asyncio driver behind ``trident serve``) runs the *same policy objects* on emulated
2x8xH200 GPUs that sleep the cost model's durations x ``time-scale``; each request is submitted at
its scheduled wall time with the simulator's deadline and seed. Compared per request:

* dispatch decisions: the sequence of (stage, degree, batch size, step range, outcome) of its
  stage spans (GPU ids may differ: equal choices between idle GPUs can fall either way);
* latency (finish - arrival, in engine seconds) of requests done in both runs.

The live clock is the wall clock, so event-loop jitter (about a millisecond of wall time, i.e.
1 ms / time-scale of engine time) can reorder events that the simulator sees at nearly the same
instant; the script reports how many requests got identical decisions rather than assuming all.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from tridentcore.core.metrics import quantile
from tridentcore.sim.bench import Scenario, load_scenario, run_one


def decisions(spans) -> dict[int, tuple]:
    out: dict[int, list] = {}
    for sp in sorted(spans, key=lambda s: (s.request_id, s.started_s, s.stage)):
        out.setdefault(sp.request_id, []).append((sp.stage, sp.degree, sp.batch, sp.start_step, sp.end_step, sp.outcome))
    return {k: tuple(v) for k, v in out.items()}


async def live(loaded, policy: str, requests, time_scale: float):
    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission

    models = sorted({r.model for r in requests})
    rt = build_runtime(models, f"emulated:{loaded.cluster.label}", policy, profile=loaded.scenario.profile,
                       time_scale=time_scale, max_queued=10_000, slo_scale=loaded.scenario.slo_scale, strict=True)
    engine = rt.engine
    await engine.start()
    t0 = time.monotonic()
    ids = []
    for spec in requests:  # open loop: each request at its scheduled wall time
        delay = t0 + spec.arrival_s * time_scale - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        acc = engine.submit([Submission(spec.model, spec.prompt, spec.shape, spec.seed, spec.guidance,
                                        spec.negative_prompt, spec.slo_s)])
        ids.append(acc.ids[0])
    for rid in ids:
        await engine.wait(rid)
    await engine.shutdown(drain_timeout_s=5.0)
    return engine.request_rows(), engine.spans


def compare(loaded, policy: str, rate: float, time_scale: float) -> dict:
    requests = loaded.requests(rate)
    sim = run_one(loaded, policy, rate)
    rows, spans = asyncio.run(live(loaded, policy, requests, time_scale))
    sim_dec, live_dec = decisions(sim.spans), decisions(spans)
    same = sum(1 for r in requests if sim_dec.get(r.id) == live_dec.get(r.id))
    sim_rows = {r.request_id: r for r in sim.requests}
    errs = []
    for r in rows:
        s = sim_rows[r.request_id]
        if r.state == "done" and s.state == "done":
            ls, ll = s.finish_s - s.arrival_s, r.finish_s - r.arrival_s
            errs.append(abs(ll - ls) / ls)
    states_same = sum(1 for r in rows if sim_rows[r.request_id].state == r.state)
    return {"policy": policy, "requests": len(requests), "same_decisions": same, "same_state": states_same,
            "compared_latencies": len(errs), "latency_err_median": statistics.median(errs) if errs else float("nan"),
            "latency_err_p95": quantile(errs, 0.95) if errs else float("nan"), "latency_err_max": max(errs, default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default="image-video")
    ap.add_argument("--rate", type=float, default=0.4)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--cluster", default="2x8xH200")
    ap.add_argument("--policies", default="trident,pipeline-static:degree=1")
    ap.add_argument("--time-scale", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    loaded = load_scenario(Scenario(cluster=args.cluster, mix=args.mix, duration_s=args.duration, seed=args.seed))
    for policy in args.policies.split(","):
        r = compare(loaded, policy, args.rate, args.time_scale)
        print(f"{policy}: {r['requests']} requests; identical dispatch decisions {r['same_decisions']}/{r['requests']}; "
              f"same terminal state {r['same_state']}/{r['requests']}; latency |live - sim| / sim over "
              f"{r['compared_latencies']} done in both: median {100 * r['latency_err_median']:.2f} %, "
              f"p95 {100 * r['latency_err_p95']:.2f} %, max {100 * r['latency_err_max']:.2f} %")


if __name__ == "__main__":
    main()
