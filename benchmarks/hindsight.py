"""How far a policy is from the hindsight bound on the very stream it served (``tridentcore/core/hindsight.py``).

    python benchmarks/hindsight.py [--mix video-wan] [--scale 3] [--seed 0] [--duration 1800]
        [--fractions 0.8,0.9,1] [--rates R1,R2] [--policies "trident;trident:late=reject"]
        [--goodput] [--slot 1] [--time-limit 600] [--integral] [--cluster 2x8xH200] [--profile h200]

The capacity ceilings price a mix and ignore when its requests come; the goodput table's streams
have bursts. The hindsight bound is the most lowest-class SLO attainment any scheduler could reach
on one stream, knowing its future, with free preemption and degree changes (a linear program, solved
with HiGHS). For each rate (``--fractions`` of the SLO-aware ceiling, or ``--rates`` in req/s) this
prints the rate as a fraction of the stream's own SLO-aware ceiling (its classes priced as often as
the stream has them, not at the mix's weights), the bound's lowest class and each policy's simulated
one on the same requests. With
``--goodput`` it also bisects the hindsight fair goodput: the highest rate at which the bound still
lets every class reach 90 %, an upper bound on every policy's fair goodput on these streams.

Solve times on the 2-core reference machine, another job on the second core: video-wan at 0.16
req/s (311 requests) 100-150 s a program, the ``--goodput`` bisection 10 programs (28 min);
image-video at 0.78 req/s (1,436 requests) 78 s; flux-uniform at 1.7 req/s (3,074 requests) and
sd3-mixed at 4.6 req/s (8,172 requests) did not solve in the default 10 minutes. ``--slot 2``
makes a program about half the size (video-wan, 7200 s: 40 s to 10 min).

``--integral`` finishes a request whole or not at all (a mixed integer program; past the time limit
the solver's proven bound is printed, with the best schedule it found after a slash): video-wan at
90 % of the ceiling (0.1629 req/s) with ``--slot 2``, 100,000 variables, minutes a program.
"""

from __future__ import annotations

import argparse
import math
import time

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_PROFILE, DEFAULT_TARGET


def _numbers(ap: argparse.ArgumentParser, flag: str, text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ap.error(f"{flag} takes comma-separated numbers (got {text!r})")
    if not values or not all(0 < v < math.inf for v in values):
        ap.error(f"{flag} takes one or more finite numbers > 0 (got {text!r})")
    return values


def _share(x: float, of: float) -> str:
    return f"{x / of:.0%}" if of > 0 else "-"


def _bound(b) -> str:
    """The bound; where an integral program stopped short of proving its optimum, / the best schedule found."""
    return f"{b.min_class:.3f}" + (f"/{b.found:.3f}" if b.integral and b.found < b.min_class - 5e-4 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default="video-wan")
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=1800.0)
    ap.add_argument("--fractions", default="0.8,0.9,1", help="rates as fractions of the SLO-aware ceiling")
    ap.add_argument("--rates", default=None, help="rates in req/s (instead of --fractions)")
    ap.add_argument("--policies", default="trident", help="semicolon-separated policy specs ('' for none)")
    ap.add_argument("--goodput", action="store_true", help="also bisect the hindsight fair goodput")
    ap.add_argument("--slot", type=float, default=1.0, help="slot length, seconds (longer: a smaller, looser program)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds HiGHS may take per program")
    ap.add_argument("--integral", action="store_true", help="requests finished whole or not at all (slower)")
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    args = ap.parse_args()
    rates = _numbers(ap, "--rates", args.rates) if args.rates is not None else None
    fractions = _numbers(ap, "--fractions", args.fractions) if rates is None else []
    for flag, v in (("--slot", args.slot), ("--time-limit", args.time_limit), ("--duration", args.duration),
                    ("--scale", args.scale)):
        if not 0 < v < math.inf:
            ap.error(f"{flag} must be a finite number > 0 (got {v})")

    from tridentcore.bench.scenario import (ceilings, evaluate, goodput_range, hindsight_at, hindsight_goodput,
                                            load_scenario, stream_ceiling)
    from tridentcore.bench.spec import RunSpec, RunSpecError

    policies = [p for p in args.policies.split(";") if p.strip()]
    try:
        loaded = load_scenario(RunSpec(profile=args.profile, cluster=args.cluster, mix=args.mix,
                                       duration_s=args.duration, slo_scale=args.scale, seed=args.seed))
        efficient, slo_aware = (c.rps for c in ceilings(loaded))
        if rates is None:
            if slo_aware <= 0:
                raise ValueError(f"the SLO-aware ceiling is 0 at SLO scale {args.scale:g} (no class meets its SLO at "
                                 "any degree and batch): give --rates")
            rates = [f * slo_aware for f in fractions]
        loaded.check_rates(rates)
        for rate in rates:
            loaded.requests(rate)
    except (RunSpecError, ValueError, LookupError) as e:
        raise SystemExit(f"hindsight.py: {e}") from None
    kind = "integral" if args.integral else "linear"
    print(f"{args.mix} on {args.cluster}, SLO scale {args.scale:g}, seed {args.seed}, {args.duration:g} s; "
          f"SLO-aware ceiling {slo_aware:.3f} req/s. Lowest class's SLO attainment ({kind} bound):")
    print(f"{'rate':>8} {'of ceiling':>10} {'of stream':>9} {'requests':>8} {'bound':>13} {'solve s':>7}"
          + "".join(f" {p:>22}" for p in policies), flush=True)
    hint = "(a larger --time-limit or --slot, or a shorter --duration)"
    for rate in rates:
        try:
            got = [evaluate(loaded, p, rate).min_class for p in policies]  # first: a bad policy fails in seconds
            t0 = time.perf_counter()
            bound = hindsight_at(loaded, rate, slot_s=args.slot, time_limit_s=args.time_limit,
                                 integral=args.integral)
        except (ValueError, LookupError) as e:
            raise SystemExit(f"hindsight.py: at {rate:.4f} req/s: {e}") from None
        except RuntimeError as e:
            raise SystemExit(f"hindsight.py: at {rate:.4f} req/s {e} {hint}") from None
        solve = time.perf_counter() - t0
        print(f"{rate:8.4f} {_share(rate, slo_aware):>10} {_share(rate, stream_ceiling(loaded, rate).rps):>9} "
              f"{len(loaded.requests(rate)):8d} {_bound(bound):>13} {solve:7.1f}"
              + "".join(f" {g:22.3f}" for g in got), flush=True)
    if args.goodput:
        t0 = time.perf_counter()
        lo, hi = goodput_range(efficient)
        try:
            loaded.check_rates([hi])
            best, seen = hindsight_goodput(loaded, lo, hi, DEFAULT_TARGET, slot_s=args.slot, integral=args.integral,
                                           time_limit_s=args.time_limit)
        except (ValueError, LookupError) as e:
            raise SystemExit(f"hindsight.py: {e}") from None
        except RuntimeError as e:
            raise SystemExit(f"hindsight.py: {e} {hint}") from None
        bound = "at least " if best >= hi else ""  # the top of the range still passed
        print(f"hindsight fair goodput (every class >= {DEFAULT_TARGET:.0%} in the bound): {bound}{best:.4f} req/s, "
              f"{_share(best, slo_aware)} of the SLO-aware ceiling ({len(seen)} programs, "
              f"{time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
