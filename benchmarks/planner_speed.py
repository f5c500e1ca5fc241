"""Planner decision time with 128 GPUs and >= 256 queued requests, and simulator wall time.

    python benchmarks/planner_speed.py [--policies trident,trident-paper] [--cluster 16x8xH200] [--runs 5]

(1) Simulator speed: flux-uniform at 1.5 req/s for 1800 s (~2,700 requests) on 16x8xH200, run
    ``--runs`` times in one process: the best wall time (the least disturbed by other work on the
    host), the median, and the host's load average (the first run also imports the placement
    solver, scipy).
    The host's own speed is printed beside it (a fixed pure-Python loop, best of 3), since the same
    host answers at very different speeds from one hour to the next.
(2) Decision time: bursts of 512 requests at once (arrival ``bursts:size=512``) on 16x8xH200, so the
    policy decides with >= 256 requests waiting; each call to ``on_event`` is timed, and the p50 /
    p99 over the calls made while >= 256 requests were waiting is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from tridentcore.core.metrics import quantile, summarize
from tridentcore.core.policy import make_policy
from tridentcore.bench.scenario import load_scenario
from tridentcore.bench.spec import RunSpec
from tridentcore.sim.engine import simulate


class Timed:
    """Wraps a policy: times each decision and notes how many requests were waiting."""

    def __init__(self, inner):
        self.inner = inner
        self.spec = inner.spec
        self.tick_s = inner.tick_s
        self.samples: list[tuple[int, float]] = []
        self.waiting = 0

    def start(self, view, models, now, expected=None):
        return self.inner.start(view, models, now, expected)

    def on_event(self, view, event, now):
        from tridentcore.core.events import RequestArrived

        if isinstance(event, RequestArrived):
            self.waiting += 1
        t0 = time.perf_counter()
        actions = self.inner.on_event(view, event, now)
        dt = (time.perf_counter() - t0) * 1000
        self.samples.append((self.waiting, dt))
        # requests leave "waiting to start" when their encode is dispatched or they are turned away
        for a in actions:
            name = type(a).__name__
            if name == "Dispatch" and a.stage == "encode":
                self.waiting -= len(a.request_ids)
            elif name in ("Reject", "Fail") and view.request(a.request_id).state.value == "queued":
                self.waiting -= 1
        return actions


def host_loop_s(n: int = 2_000_000) -> float:
    """Best of 3 timings of an ``n``-iteration pure-Python loop: how fast this host runs Python now."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="trident,trident-paper")
    ap.add_argument("--cluster", default="16x8xH200")
    ap.add_argument("--runs", type=int, default=5, help="simulator runs per policy (best and median reported)")
    args = ap.parse_args()
    for spec in args.policies.split(","):
        loaded = load_scenario(RunSpec(cluster=args.cluster, mix="flux-uniform", duration_s=1800))
        reqs = loaded.requests(1.5)
        walls = []
        for _ in range(max(1, args.runs)):
            t0 = time.perf_counter()
            res = simulate(loaded.cluster, loaded.cost, make_policy(spec), reqs, gpu_kind=loaded.gpu_kind)
            walls.append(time.perf_counter() - t0)
        s = summarize(spec, res.requests, res.spans, res.decision_ms)
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{spec}: {len(reqs)} requests, flux-uniform 1.5/s 1800 s on {args.cluster}: "
              f"sim wall best {min(walls):.2f} s, median {statistics.median(walls):.2f} s "
              f"(runs {', '.join(f'{w:.2f}' for w in walls)}; load average {load}), "
              f"attainment {s['attainment']:.3f}; host: a 2M-iteration Python loop {host_loop_s():.3f} s")
        loaded = load_scenario(RunSpec(cluster=args.cluster, mix="flux-uniform", arrival="bursts:size=512",
                                        duration_s=600))
        reqs = loaded.requests(8.0)
        timed = Timed(make_policy(spec))
        simulate(loaded.cluster, loaded.cost, timed, reqs, gpu_kind=loaded.gpu_kind)
        busy = [dt for n, dt in timed.samples if n >= 256]
        every = [dt for _, dt in timed.samples]
        print(f"{spec}: decisions with >= 256 waiting: {len(busy)}; p50 {quantile(busy, 0.5):.2f} ms, "
              f"p99 {quantile(busy, 0.99):.2f} ms, max {max(busy):.2f} ms | all {len(every)} decisions: "
              f"p99 {quantile(every, 0.99):.2f} ms (load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
