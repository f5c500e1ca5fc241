"""Where a window's GPU-seconds went on one simulated stream, and what a perfect packing of them could
have paid for (issue 14, point 3: why video-wan's fair goodput stays near 80 % of the SLO-aware ceiling
on the goodput table's stream).

    python benchmarks/crunch.py [--mix video-wan] [--scale 3] [--fraction 0.9] [--window 1000,1800]
        [--policy trident] [--seed 0] [--duration 1800] [--cluster 2x8xH200] [--profile h200] [--target 0.9]

Runs ``--policy`` on the stream the goodput table bisects (``--seed``, ``--duration``) at ``--fraction``
of the mix's SLO-aware ceiling and prints, per class, the requests that met their SLO; the window's
GPU-seconds by class, stage and degree (those of requests that then missed apart); the GPU-seconds left
idle; and the GPU-seconds the window's diffuses spent beyond what each would have cost at degree 1.
Then the price of the misses that keep each class under ``--target`` (each as the SLO-aware ceiling
prices it: its cheapest degree and batch that meet its SLO alone) against those two: what a schedule with no idle GPU and every diffuse at its
cheapest degree could have freed, an upper bound that ignores deadlines (a 720p video at degree 1
alone misses its own).
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from pathlib import Path

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_PROFILE
from tridentcore.bench.script import run_script

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goodput import check_seed  # noqa: E402  (the sibling script's)


def _window(ap, text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        ap.error(f"--window: {text!r} is not START,END in seconds (e.g. 1000,1800)")
    if not (0 <= lo < hi < math.inf):
        ap.error(f"--window: {text!r} needs 0 <= START < END")
    return lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default="video-wan")
    ap.add_argument("--scale", type=float, default=3.0, help="SLO scale")
    ap.add_argument("--fraction", type=float, default=0.9, help="the rate, as a fraction of the SLO-aware ceiling")
    ap.add_argument("--window", default="1000,1800", help="START,END of the window looked at, in seconds")
    ap.add_argument("--policy", default="trident")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=1800.0)
    ap.add_argument("--target", type=float, default=0.9, help="the attainment every class must reach")
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    args = ap.parse_args()
    lo, hi = _window(ap, args.window)
    check_seed(ap, "--seed", args.seed)
    for flag, value, most in (("--scale", args.scale, 1000), ("--fraction", args.fraction, 100),
                              ("--duration", args.duration, 86400), ("--target", args.target, 1)):
        if not 0 < value <= most:
            ap.error(f"{flag}: {value:g} is not a number > 0 and at most {most:g}")

    from tridentcore.bench.scenario import ceilings, load_scenario, run_one
    from tridentcore.bench.spec import RunSpec
    from tridentcore.core.types import StageKind

    loaded = load_scenario(RunSpec(profile=args.profile, cluster=args.cluster, mix=args.mix,
                                   duration_s=args.duration, slo_scale=args.scale, seed=args.seed))
    slo_aware = ceilings(loaded)[1]
    ceiling = slo_aware.rps
    rate = args.fraction * ceiling
    specs = {q.id: q for q in loaded.requests(rate)}
    result = run_one(loaded, args.policy, rate)
    gpus = loaded.cluster.num_gpus
    label = {r.request_id: r.request_class for r in result.requests}
    missed = {r.request_id for r in result.requests if not (r.state == "done" and r.finish_s <= r.deadline_s + 1e-9)}

    print(f"{args.mix} at SLO scale {args.scale:g}, seed {args.seed}, {args.duration:g} s, {args.cluster}: "
          f"{rate:.4f} req/s ({args.fraction:.0%} of the SLO-aware ceiling {ceiling:.3f}); policy {args.policy}")
    classes: dict[str, list] = collections.defaultdict(list)
    for r in result.requests:
        classes[r.request_class].append(r)
    short: dict[str, int] = {}
    for name, rows in sorted(classes.items()):
        met = sum(1 for r in rows if r.request_id not in missed)
        short[name] = max(0, math.ceil(args.target * len(rows) - 1e-9) - met)
        print(f"  {name:<28} met {met:4d} of {len(rows):4d} ({met / len(rows):.3f})"
              + (f"; {short[name]} more needed for {args.target:g}" if short[name] else ""))

    spent: collections.Counter = collections.Counter()
    above_d1 = 0.0
    for s in result.spans:
        start, end = max(lo, s.started_s), min(hi, s.ended_s)
        if end <= start:
            continue
        gpu_s = (end - start) * len(s.gpus)
        spent[(label[s.request_id], s.stage, s.degree, s.request_id in missed)] += gpu_s / s.batch
        if s.stage == StageKind.DIFFUSE.value and s.degree > 1:
            spec = specs[s.request_id]
            at = loaded.cost.latency_s(spec.model, StageKind.DIFFUSE, spec.shape, s.batch, s.degree, loaded.gpu_kind)
            one = loaded.cost.latency_s(spec.model, StageKind.DIFFUSE, spec.shape, s.batch, 1, loaded.gpu_kind)
            above_d1 += gpu_s / s.batch * (1 - one / (at * s.degree))  # (a batch has a row per request)
    busy = sum(spent.values())
    idle = gpus * (hi - lo) - busy
    print(f"window {lo:g}-{hi:g} s: {busy:.0f} of {gpus * (hi - lo):.0f} GPU-seconds busy ({busy / gpus / (hi - lo):.0%}),"
          f" by class, stage and degree:")
    for (name, stage, degree, late), gpu_s in sorted(spent.items(), key=lambda kv: -kv[1]):
        if gpu_s >= 1:
            print(f"  {name:<28} {stage:<8} degree {degree}  {gpu_s:7.0f}" + ("  (requests that missed)" if late else ""))

    price = {c.label: c.gpu_s_each for c in slo_aware.classes}  # (the ceiling's: cheapest degree meeting the SLO)
    need = sum(n * price[name] for name, n in short.items())
    print(f"idle: {idle:.0f} GPU-seconds; diffuses beyond their cost at degree 1: {above_d1:.0f}; together "
          f"{idle + above_d1:.0f}")
    if need:
        print(f"the misses over {args.target:g} per class, each at its cheapest degree that meets its SLO alone: "
              f"{need:.0f} GPU-seconds ({(idle + above_d1) / need:.2f} of them could be paid by a perfect packing "
              f"of the window)")
    else:
        print(f"every class reaches {args.target:g}")


if __name__ == "__main__":
    run_script(main)
