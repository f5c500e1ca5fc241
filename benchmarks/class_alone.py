"""How much of its own SLO-aware ceiling one request class reaches when it runs alone (issue 14, point 3).

    python benchmarks/class_alone.py [--mixes video-wan] [--scale 3] [--fractions 0.8,0.9]
        [--policies "trident;trident:late=reject;pipeline-static:degree=2"] [--seeds 0,1]
        [--duration 7200] [--cluster 2x8xH200] [--profile h200] [--jobs 2]

The SLO-aware ceiling (``tridentcore/core/capacity.py``) prices every request at the cheapest degree
that meets its SLO *without queueing*, so it is reached only if no request ever waits. A class whose
requests are long, run on several GPUs and have little slack left at that degree (video-wan's
1280x720x81 at SLO scale 3: 128 s on 2 GPUs against a 212 s SLO) must queue at high utilisation,
whatever the policy. This runs each class of a mix on its own (Poisson arrivals at ``fraction`` x that
class's own SLO-aware ceiling, ``--duration`` seconds, each seed) and prints the attainment per policy:
a class that misses 90 % alone at 90 % of its ceiling puts the mix's 90 % aim out of reach too.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_PROFILE
from tridentcore.bench.script import run_script


def _alone(mix: str, label: str, scale: float, duration: float, seed: int, cluster: str, profile: str):
    """The scenario of ``mix`` with only the class ``label`` in it."""
    from tridentcore.bench.scenario import load_scenario
    from tridentcore.bench.spec import RunSpec
    from tridentcore.core.mix import Mix

    loaded = load_scenario(RunSpec(profile=profile, cluster=cluster, mix=mix, duration_s=duration, slo_scale=scale,
                                   seed=seed))
    one = next(c for c in loaded.mix.classes if c.label == label)
    return dataclasses.replace(loaded, mix=Mix(f"{mix}: {label} alone", (one,)), _cache={})


def _one(args):
    mix, label, fraction, policy, scale, duration, seed, cluster, profile = args
    from tridentcore.bench.scenario import ceilings, evaluate

    loaded = _alone(mix, label, scale, duration, seed, cluster, profile)
    rate = fraction * ceilings(loaded)[1].rps
    point = evaluate(loaded, policy, rate)
    return args, rate, point.attainment, len(loaded.requests(rate))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", default="video-wan")
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--fractions", default="0.8,0.9")
    ap.add_argument("--policies", default="trident;trident:late=reject;pipeline-static:degree=2")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--duration", type=float, default=7200.0)
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    from tridentcore.bench.scenario import load_scenario
    from tridentcore.bench.spec import RunSpec

    policies = [p for p in args.policies.split(";") if p]
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = []
    for mix in args.mixes.split(","):
        loaded = load_scenario(RunSpec(profile=args.profile, cluster=args.cluster, mix=mix, slo_scale=args.scale))
        tasks += [(mix, c.label, f, p, args.scale, args.duration, s, args.cluster, args.profile)
                  for c in loaded.mix.classes for f in fractions for p in policies for s in seeds]
    t0 = time.perf_counter()
    got: dict[tuple, list[tuple[float, float, int]]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for (mix, label, f, policy, *_), rate, attainment, n in pool.map(_one, tasks):
            got.setdefault((mix, label, f, policy), []).append((rate, attainment, n))
    print(f"Each class alone, SLO scale {args.scale:g}, {args.duration:g} s per seed (seeds {args.seeds}); "
          f"attainment per seed at a fraction of the class's own SLO-aware ceiling:")
    for (mix, label, f, policy), runs in got.items():
        rates = ", ".join(f"{a:.3f}" for _, a, _ in runs)
        print(f"  {mix:<12} {label:<28} {f:>4.0%} ({runs[0][0]:.4f} req/s, {runs[0][2]} requests) "
              f"{policy:<28} {rates}")
    print(f"{len(tasks)} runs in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    run_script(main)
