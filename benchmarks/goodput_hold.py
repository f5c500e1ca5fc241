"""Does a policy still hold the fair goodput of an earlier table? (issue 14: "fair goodput must not drop")

    python benchmarks/goodput_hold.py [--policies "trident;trident:late=reject"] [--jobs 2]
        [--cluster 2x8xH200] [--profile h200] [--duration 1800] [--seed 0 | --seeds 0,1,2,3]

Fair goodput is found by bisection on one seed, and attainment is not monotone in the rate near the
edge: the unchanged policy can fail a rate a little below the one its own bisection reported (the
reported figures are rounded to 3 decimals), and any change of decisions moves the bisection's answer
by about 1 %. This asks the question directly instead: at each cell's fair goodput in the README's
table before issue 14 (``EARLIER``: commit 7b1c5e8^), run the policy for ``--duration`` seconds of
Poisson arrivals (the same requests as the bisection's, common random numbers) and report the lowest
per-class attainment; it holds the cell if that is >= 90 %. Run it for the policy as it was too
(``trident:wide=false`` makes today's ``trident`` decide as it did before issue 14) to see which
cells the earlier figure itself fails. ``--seeds`` repeats it on other request streams: near a cell's
edge one seed's answer turns on a few requests (an early decision changes every later one), so the
mean of the lowest class over seeds says more about a policy than any one seed does.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_PROFILE, DEFAULT_SWEEP_DURATION_S
from tridentcore.bench.script import run_script

# (mix, SLO scale) -> fair goodput (req/s) of `trident` and of `trident:late=reject` in the README
# table before issue 14 (git show 7b1c5e8^:README.md)
EARLIER = {
    "trident": {
        ("flux-uniform", 1.5): 1.178, ("flux-uniform", 3.0): 1.592, ("flux-uniform", 5.0): 1.741,
        ("sd3-mixed", 1.5): 3.250, ("sd3-mixed", 3.0): 4.289, ("sd3-mixed", 5.0): 4.679,
        ("video-wan", 1.5): 0.048, ("video-wan", 3.0): 0.138, ("video-wan", 5.0): 0.167,
        ("image-video", 1.5): 0.424, ("image-video", 3.0): 0.755, ("image-video", 5.0): 0.898,
    },
    "trident:late=reject": {
        ("flux-uniform", 1.5): 1.188, ("flux-uniform", 3.0): 1.592, ("flux-uniform", 5.0): 1.741,
        ("sd3-mixed", 1.5): 3.250, ("sd3-mixed", 3.0): 4.289, ("sd3-mixed", 5.0): 4.679,
        ("video-wan", 1.5): 0.048, ("video-wan", 3.0): 0.135, ("video-wan", 5.0): 0.167,
        ("image-video", 1.5): 0.413, ("image-video", 3.0): 0.769, ("image-video", 5.0): 0.891,
    },
}
TARGET = 0.9


def column_of(policy: str) -> str:
    """Which earlier column a policy spec is held to: the goodput mode's or the default's."""
    return "trident:late=reject" if "late=reject" in policy else "trident"


def _one(args):
    policy, mix, scale, rate, cluster, profile, duration, seed = args
    from tridentcore.bench.scenario import evaluate, load_scenario
    from tridentcore.bench.spec import RunSpec

    loaded = load_scenario(RunSpec(profile=profile, cluster=cluster, mix=mix, duration_s=duration,
                                   slo_scale=scale, seed=seed))
    point = evaluate(loaded, policy, rate)
    return args, point.min_class, point.attainment


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers separated by commas, not {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed given twice: {text!r}")
    return seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="trident;trident:late=reject", help="semicolon-separated policy specs")
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--duration", type=float, default=DEFAULT_SWEEP_DURATION_S)
    ap.add_argument("--seed", type=int, default=0, help="the seed (the bisection's own is 0)")
    ap.add_argument("--seeds", default=None, type=_seed_list,
                    help="comma-separated seeds instead of --seed: each cell run on each, and per cell the mean of "
                         "its lowest class over them (the same requests for every policy at a seed)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--mixes", default=None, help="only these mixes (comma-separated)")
    args = ap.parse_args()
    mixes = set(args.mixes.split(",")) if args.mixes else None
    known = {mix for table in EARLIER.values() for mix, _ in table}
    if mixes is not None and mixes - known:
        ap.error(f"--mixes: no earlier figures for {', '.join(sorted(mixes - known))} (the table has {', '.join(sorted(known))})")
    seeds = args.seeds or [args.seed]
    policies = [q for q in args.policies.split(";") if q]
    tasks = [(p, mix, scale, rate, args.cluster, args.profile, args.duration, seed)
             for seed in seeds for p in policies
             for (mix, scale), rate in EARLIER[column_of(p)].items() if mixes is None or mix in mixes]
    t0 = time.perf_counter()
    held: dict[str, int] = {}
    lows: dict[tuple[str, str, float], list[float]] = {}  # (policy, mix, scale) -> lowest class per seed
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for (policy, mix, scale, rate, *_, seed), low, overall in pool.map(_one, tasks):
            ok = low >= TARGET
            held[policy] = held.get(policy, 0) + ok
            lows.setdefault((policy, mix, scale), []).append(low)
            at_seed = f" seed {seed}" if len(seeds) > 1 else ""
            print(f"{policy:<28} {mix:<13} x{scale:<4g} at {rate:.3f} req/s{at_seed}: lowest class {low:.3f}, "
                  f"overall {overall:.3f}  {'holds' if ok else 'FAILS'}", flush=True)
    if len(seeds) > 1:
        print(f"\nlowest class, mean over seeds {', '.join(map(str, seeds))}:")
        cells = list(dict.fromkeys((mix, scale) for _, mix, scale in lows))
        print(f"{'cell':<20}" + "".join(f"{p:>30}" for p in policies))
        for mix, scale in cells:
            print(f"{mix + ' x' + format(scale, 'g'):<20}"
                  + "".join(f"{sum(v) / len(v):>30.3f}" for p in policies for v in (lows[(p, mix, scale)],)))
    for policy, n in held.items():
        total = sum(1 for t in tasks if t[0] == policy)
        print(f"{policy}: holds {n} of {total} earlier fair goodput figures"
              + (" (cells x seeds)" if len(seeds) > 1 else ""))
    print(f"{len(tasks)} runs in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    run_script(main)
