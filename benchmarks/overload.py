"""Overload: what each policy finishes within its SLO at twice the capacity ceiling (issue 14, point 5).

    python benchmarks/overload.py [--mixes flux-uniform,image-video] [--factor 2] [--duration 300]
        [--scale 3] [--cluster 2x8xH200] [--profile h200] [--seed 0 | --seeds 0,1,2,3] [--jobs 2]
        [--policies "trident;trident:late=reject;trident-paper;pipeline-dynamic;pipeline-static:degree=1;..."]

Per mix and policy: requests, how many finished within their SLO, admitted (not turned away), rejected,
rejected after waiting (a rejection decided later than the request's arrival) and how many stages ran
for rejected requests (should be 0). ``trident`` serves every request (late ones after the others);
``trident:late=reject`` decides on arrival (``core/policies/trident_admission.py``).

``--seeds``: the same over several streams, each figure summed, and the in-SLO count per stream beside
it. Past the ceiling one early decision changes everything after it (the queue carries it), so one
stream's count moves by tens of requests with any change to a policy; compare policies on the sum.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_PROFILE
from tridentcore.bench.script import run_script

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goodput import check_seed  # noqa: E402  (the sibling script's)

POLICIES = ("trident", "trident:late=reject", "trident-paper", "pipeline-dynamic", "pipeline-static:degree=1",
            "pipeline-static:degree=2")


def _one(args):
    mix, policy, factor, duration, scale, cluster, profile, seed = args
    from tridentcore.bench.scenario import capacity_rps, load_scenario, run_one
    from tridentcore.bench.spec import RunSpec

    loaded = load_scenario(RunSpec(profile=profile, cluster=cluster, mix=mix, duration_s=duration, slo_scale=scale,
                                   seed=seed))
    rate = factor * capacity_rps(loaded)
    res = run_one(loaded, policy, rate)
    ran = {s.request_id for s in res.spans}
    rejected = [r for r in res.requests if r.state == "rejected"]
    return {"mix": mix, "policy": policy, "seed": seed, "rate": rate, "requests": len(res.requests),
            "met": sum(1 for r in res.requests if r.state == "done" and r.finish_s <= r.deadline_s + 1e-9),
            "admitted": len(res.requests) - len(rejected), "rejected": len(rejected),
            "rejected_after_waiting": sum(1 for r in rejected if r.finish_s > r.arrival_s),
            "rejected_after_a_stage": sum(1 for r in rejected if r.request_id in ran)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", default="flux-uniform,image-video")
    ap.add_argument("--policies", default=";".join(POLICIES), help="semicolon-separated policy specs")
    ap.add_argument("--factor", type=float, default=2.0, help="the rate, as a multiple of the capacity ceiling")
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--scale", type=float, default=3.0, help="SLO scale")
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2,3 (instead of --seed): sums")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    for flag, v in (("--factor", args.factor), ("--duration", args.duration), ("--scale", args.scale), ("--jobs", args.jobs)):
        if not 0 < v < float("inf"):
            ap.error(f"{flag} must be a finite number > 0 (got {v:g})")
    if args.seeds is None:
        seeds = [args.seed]
    else:
        try:
            seeds = [int(x) for x in args.seeds.split(",")]
        except ValueError:
            ap.error(f"--seeds takes comma-separated integers, e.g. 0,1,2,3 (got {args.seeds!r})")
        if len(set(seeds)) != len(seeds):
            ap.error(f"--seeds names a seed twice ({args.seeds})")
    for seed in seeds:  # (outside test: -1 ran seed 1's stream, labelled seed -1)
        check_seed(ap, "--seed" if args.seeds is None else "--seeds", seed)
    mixes = [m for m in args.mixes.split(",") if m.strip()]
    policies = [p for p in args.policies.split(";") if p.strip()]
    if not mixes:
        ap.error("--mixes: no mix given (comma-separated, e.g. flux-uniform,image-video)")
    if not policies:  # (outside test: --policies ";" ended in "list index out of range")
        ap.error("--policies: no policy given (semicolon-separated specs, e.g. trident;trident-paper)")
    tasks = [(m, p, args.factor, args.duration, args.scale, args.cluster, args.profile, seed)
             for m in mixes for p in policies for seed in seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(_one, tasks))
    keys = ("met", "admitted", "rejected", "rejected_after_waiting", "rejected_after_a_stage")
    for mix in dict.fromkeys(mixes):
        sel = [r for r in rows if r["mix"] == mix]
        streams = (f"seed {seeds[0]}" if len(seeds) == 1 else
                   f"{len(seeds)} streams (seeds {', '.join(map(str, seeds))}), figures summed")
        print(f"\n{mix}, {args.factor:g}x the capacity ceiling ({sel[0]['rate']:.3f} req/s), SLO scale {args.scale:g}, "
              f"{args.duration:g} s, {streams}: {sum(r['requests'] for r in sel if r['policy'] == sel[0]['policy'])} "
              "requests")
        width = max(26, *(len(r["policy"]) for r in sel))
        print(f"  {'policy':<{width}} {'in SLO':>7} {'admitted':>9} {'rejected':>9} {'after waiting':>14} "
              f"{'after a stage':>14}" + ("  in SLO per stream" if len(seeds) > 1 else ""))
        for policy in dict.fromkeys(r["policy"] for r in sel):
            mine = [r for r in sel if r["policy"] == policy]
            tot = {k: sum(r[k] for r in mine) for k in keys}
            print(f"  {policy:<{width}} {tot['met']:>7} {tot['admitted']:>9} {tot['rejected']:>9} "
                  f"{tot['rejected_after_waiting']:>14} {tot['rejected_after_a_stage']:>14}"
                  + ("  " + " ".join(str(r["met"]) for r in mine) if len(seeds) > 1 else ""))
    print(f"\n{len(tasks)} runs in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    run_script(main)
