"""Live bench against the simulator on the same schedule: same policy ranking? how close per request?

    python benchmarks/live_vs_sim.py [--devices cpu:1,emulated:2x8xH200] [--time-scale 0.1]
        [--policies trident,trident-paper,pipeline-static:degree=1] [--mix image-video] [--rate 2]
        [--duration 120] [--seed 0] [--db results/live_vs_sim.duckdb]

For each policy: a live run (``trident serve`` + Locust, ``tridentcore.bench.live.LiveBench``:
what ``trident bench --backend live`` does) and a simulated run of the same schedule (same mix,
arrival process, rate, duration, seed and SLOs), both stored in ``--db``. Live request ids are
the schedule's positions, so requests pair up by id. Reported per policy: attainment, mean and
p95 latency both ways, and the relative latency difference |live - sim| / sim of every request
done in both (median and p90). Then the policy rankings by attainment (ties: mean latency) side
by side. Target: same ranking, median relative difference <= 10 %.

``--rate`` and ``--duration`` are workload seconds; the live sends run ``--time-scale`` times
faster (emulated GPUs sleep the cost model's durations x time scale). A larger time scale makes
the live clock's fixed costs (event loop, HTTP, a busy 2-core host) smaller in engine seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tridentcore.core.policy import split_specs
from tridentcore.bench.live import LiveBench, LiveBenchSpec
from tridentcore.bench.runs import run_and_store, summaries
from tridentcore.bench.scenario import load_scenario
from tridentcore.bench.spec import RunSpec
from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_LIVE_DEVICES, DEFAULT_MIX, DEFAULT_SLO_SCALE
from tridentcore.store import new_run_id, query_readonly


def rank(rows: dict[str, dict]) -> list[str]:
    return sorted(rows, key=lambda p: (-(rows[p]["attainment"] or 0.0), rows[p]["mean_s"] or float("inf")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default=DEFAULT_LIVE_DEVICES)
    ap.add_argument("--time-scale", type=float, default=0.1)
    ap.add_argument("--policies", default="trident,trident-paper,pipeline-static:degree=1")
    ap.add_argument("--mix", default=DEFAULT_MIX)
    ap.add_argument("--arrival", default="poisson")
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-scale", type=float, default=DEFAULT_SLO_SCALE)
    ap.add_argument("--db", default="results/live_vs_sim.duckdb")
    args = ap.parse_args()

    from tridentcore.bench.live import cluster_of_devices

    cluster = cluster_of_devices(args.devices) or DEFAULT_CLUSTER
    run_spec = RunSpec(mix=args.mix, arrival=args.arrival, rate=args.rate, duration_s=args.duration, seed=args.seed,
                       slo_scale=args.slo_scale, cluster=cluster, backend="live", devices=args.devices,
                       time_scale=args.time_scale)
    spec = LiveBenchSpec(run_spec)
    loaded = load_scenario(run_spec)
    policies = split_specs(args.policies)
    live_ids, sim_ids, lags = {}, {}, {}
    t0 = time.monotonic()
    for policy in policies:
        run = LiveBench(spec, policy, new_run_id(policy, args.seed), args.db,
                        extra_config={"benchmark": "live_vs_sim"}).run()
        live_ids[policy], lags[policy] = run.run_id, run.lag_p99_ms
        print(f"  live {policy}: {run.states} in {run.wall_s:.1f} s wall, lag p99 {run.lag_p99_ms:.1f} ms", flush=True)
        sim_ids[policy] = run_and_store(loaded, policy, args.rate, args.db, extra_config={"benchmark": "live_vs_sim"})
    wall = time.monotonic() - t0
    live = {p: r for p, r in zip(policies, summaries(args.db, [live_ids[p] for p in policies]), strict=True)}
    sim = {p: r for p, r in zip(policies, summaries(args.db, [sim_ids[p] for p in policies]), strict=True)}

    n_req = len(loaded.requests(args.rate))
    print(f"\nlive vs sim: {args.mix} {args.arrival} at {args.rate:g} req/s for {args.duration:g} s, seed {args.seed} "
          f"({n_req} requests); live on {args.devices} at time scale {args.time_scale:g}; {wall:.0f} s wall")
    header = (f"{'policy':<26}{'att live':>9}{'att sim':>9}{'mean live':>10}{'mean sim':>10}{'p95 live':>10}"
              f"{'p95 sim':>10}{'rej l/s':>9}{'paired':>8}{'med rel':>9}{'p90 rel':>9}{'lag p99':>9}")
    print(header)
    all_rel = []
    for p in policies:
        pairs = query_readonly(args.db, """
            SELECT l.latency_s AS live_s, s.latency_s AS sim_s
            FROM requests l JOIN requests s USING (request_id)
            WHERE l.run_id = ? AND s.run_id = ? AND l.state = 'done' AND s.state = 'done'""",
                               [live_ids[p], sim_ids[p]])
        rel = [abs(a - b) / b for a, b in zip(pairs.live_s, pairs.sim_s, strict=True) if b > 0]
        all_rel += rel
        med = statistics.median(rel) if rel else float("nan")
        p90 = statistics.quantiles(rel, n=10)[-1] if len(rel) > 1 else float("nan")
        lv, sm = live[p], sim[p]
        print(f"{p:<26}{lv['attainment']:>9.3f}{sm['attainment']:>9.3f}{lv['mean_s']:>10.2f}{sm['mean_s']:>10.2f}"
              f"{lv['p95_s']:>10.2f}{sm['p95_s']:>10.2f}{lv['rejected']:>5}/{sm['rejected']:<3}{len(rel):>8}"
              f"{100 * med:>8.1f}%{100 * p90:>8.1f}%{lags[p]:>7.1f}ms")
    rl, rs = rank(live), rank(sim)
    print(f"ranking live: {' > '.join(rl)}")
    print(f"ranking sim:  {' > '.join(rs)}")
    print(f"same ranking: {'yes' if rl == rs else 'NO'}")
    overall = statistics.median(all_rel) if all_rel else float("nan")
    verdict = "meets" if overall <= 0.10 else "MISSES"
    print(f"median per-request relative latency difference, all policies: {100 * overall:.1f}% "
          f"({verdict} the <= 10% target); runs stored in {args.db}")


if __name__ == "__main__":
    main()
