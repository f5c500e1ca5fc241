"""Fair goodput as a fraction of the SLO-aware ceiling, over several request streams (issue 14, point 3).

    python benchmarks/ceiling_fraction.py [--mixes flux-uniform,sd3-mixed,video-wan,image-video]
        [--scale 3] [--policies "trident;trident:late=reject"] [--seeds 0,1,2] [--duration 7200]
        [--cluster 2x8xH200] [--profile h200] [--jobs 2]

The goodput table (``benchmarks/goodput.py``) bisects one 1800 s stream (seed 0) per cell. For a mix
of long requests that is a few hundred requests: video-wan at 0.15 req/s is 270 in 1800 s, about 70
per class, and one burst of arrivals decides the answer (seed 0 has one near its end). Here each
(mix, policy) is bisected the same way (``sweep_goodput``, 1 % tolerance) on each seed's stream of
``--duration`` seconds, and the fair goodput is printed per seed as a fraction of the SLO-aware
ceiling (``tridentcore/core/capacity.py``), with the mean and the lowest. A fraction above 100 % says
the run ended before a backlog at that rate made a class miss 10 % of its deadlines. In brackets:
the fraction of the stream's own SLO-aware ceiling (its classes priced as often as that stream has
them at that rate, not at the mix's weights: ``stream_ceiling``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_PROFILE
from tridentcore.bench.script import run_script


def _one(args):
    mix, scale, policy, seed, duration, cluster, profile = args
    from tridentcore.bench.scenario import ceilings, load_scenario, stream_ceiling, sweep_goodput
    from tridentcore.bench.spec import RunSpec

    loaded = load_scenario(RunSpec(profile=profile, cluster=cluster, mix=mix, duration_s=duration, slo_scale=scale,
                                   seed=seed))
    efficient, slo_aware = ceilings(loaded)
    got = sweep_goodput(loaded, policy, rel_tol=0.01, cap=efficient.rps)
    fair = got.fair_goodput_rps
    own = stream_ceiling(loaded, fair).rps if fair > 0 else 0.0
    return args, fair, slo_aware.rps, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", default="flux-uniform,sd3-mixed,video-wan,image-video")
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--policies", default="trident;trident:late=reject", help="semicolon-separated policy specs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--duration", type=float, default=7200.0)
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    policies = [p for p in args.policies.split(";") if p]
    seeds = [int(s) for s in args.seeds.split(",")]
    mixes = args.mixes.split(",")
    tasks = [(m, args.scale, p, s, args.duration, args.cluster, args.profile) for m in mixes for p in policies
             for s in seeds]
    t0 = time.perf_counter()
    got: dict[tuple[str, str], list[tuple[int, float, float, float]]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for (mix, _, policy, seed, *_), fair, ceiling, own in pool.map(_one, tasks):
            got.setdefault((mix, policy), []).append((seed, fair, ceiling, own))
    print(f"Fair goodput / SLO-aware ceiling at SLO scale {args.scale:g}, {args.duration:g} s per seed; per mix and "
          f"policy: the ceiling (req/s), then per seed its fair goodput (req/s) and fraction (of the stream's own "
          f"ceiling), then the mean and the lowest fraction:")
    for (mix, policy), runs in got.items():
        ceiling = runs[0][2]
        fractions = [fair / ceiling for _, fair, _, _ in runs] if ceiling > 0 else [0.0]
        each = ", ".join((f"{seed}: {fair:.3f} {fair / ceiling:.0%}" if ceiling > 0 else f"{seed}: {fair:.3f}")
                         + (f" ({fair / own:.0%})" if own > 0 else "") for seed, fair, _, own in runs)
        print(f"  {mix:<13} {policy:<26} {ceiling:8.3f}  {each}   {statistics.mean(fractions):.0%}   "
              f"{min(fractions):.0%}")
    print(f"{len(tasks)} bisections in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    run_script(main)
