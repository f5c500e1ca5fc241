"""Goodput and fair goodput per policy, per mix and SLO scale, on the simulator (issue: planner & simulator).

    python benchmarks/goodput.py [--mixes flux-uniform,sd3-mixed,video-wan,image-video]
        [--scales 1.5,3,5] [--cluster 2x8xH200] [--profile h200] [--duration 1800] [--jobs 2]
        [--noise SIGMA] [--out results/goodput.json] [--markdown FILE] [--reuse EARLIER.json]

For every (mix, SLO scale): the capacity ceiling, the SLO-aware ceiling (each class at the cheapest
degree and batch that meets its SLO without queueing: ``tridentcore.core.capacity``), and per
policy the goodput (highest rate with >= 90 % overall attainment) and fair goodput (every request
class >= 90 %), by bisection over rates with common random numbers. Prints one table per mix and
the ratios the issue asks for: trident over the best pipeline-static degree, trident over
trident-paper, and trident as a fraction of the SLO-aware ceiling (fair goodput).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tridentcore.core.defaults import DEFAULT_CLUSTER, DEFAULT_PROFILE, DEFAULT_SWEEP_DURATION_S
from tridentcore.bench.script import run_script

__all__ = ["POLICIES", "ceilings_for", "markdown"]

POLICIES = ("pipeline-static:degree=1", "pipeline-static:degree=2", "pipeline-static:degree=4",
            "pipeline-static:degree=8", "pipeline-dynamic", "trident-paper", "trident", "trident:late=reject")


def ceilings_for(mix: str, scale: float, cluster: str = DEFAULT_CLUSTER, profile: str = DEFAULT_PROFILE) -> tuple[float, float]:
    """(capacity ceiling, SLO-aware ceiling) in req/s of ``mix`` at SLO ``scale``: the cost model
    alone, no simulation (rows of an older --out file lack the second)."""
    from tridentcore.bench.scenario import ceilings, load_scenario
    from tridentcore.bench.spec import RunSpec

    efficient, slo_aware = ceilings(load_scenario(RunSpec(profile=profile, cluster=cluster, mix=mix, slo_scale=scale)))
    return efficient.rps, slo_aware.rps


def _one(args):
    mix, scale, policy, cluster, profile, duration, seed, target, noise = args
    from tridentcore.bench.scenario import ceilings, load_scenario, sweep_goodput
    from tridentcore.bench.spec import RunSpec

    loaded = load_scenario(RunSpec(profile=profile, cluster=cluster, mix=mix, duration_s=duration,
                                    slo_scale=scale, seed=seed, noise_sigma=noise))
    t0 = time.perf_counter()
    efficient, slo_aware = ceilings(loaded)
    cap = efficient.rps
    g = sweep_goodput(loaded, policy, target, rel_tol=0.01, cap=cap)
    curve = [{"rate": p.rate, "attainment": p.attainment, "min_class": p.min_class,
              "by_class": {k: a for k, (_, a) in p.by_class.items()}} for p in g.points]
    return {"mix": mix, "slo_scale": scale, "policy": policy, "noise_sigma": noise, "capacity_rps": cap,
            "slo_aware_capacity_rps": slo_aware.rps, "goodput_rps": g.goodput_rps,
            "fair_goodput_rps": g.fair_goodput_rps, "sweep_s": time.perf_counter() - t0, "curve": curve}


def _with_ceilings(rows: list[dict], args) -> list[dict]:
    """``rows`` with ``slo_aware_capacity_rps`` filled in where an older --out file lacks it."""
    missing = {(r["mix"], r["slo_scale"]) for r in rows if "slo_aware_capacity_rps" not in r}
    found = {k: ceilings_for(k[0], k[1], args.cluster, args.profile)[1] for k in missing}
    return [r if "slo_aware_capacity_rps" in r else {**r, "slo_aware_capacity_rps": found[(r["mix"], r["slo_scale"])]}
            for r in rows]


def _fraction(goodput: float, ceiling: float) -> str:
    return f"{goodput / ceiling:.0%}" if ceiling > 0 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", default="flux-uniform,sd3-mixed,video-wan,image-video")
    ap.add_argument("--scales", default="1.5,3,5")
    ap.add_argument("--policies", default=",".join(POLICIES).replace(",", ";"),
                    help="semicolon-separated policy specs")
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--duration", type=float, default=DEFAULT_SWEEP_DURATION_S)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--noise", type=float, default=0.0,
                    help="stage times = prediction x a mean-1 lognormal of this log-spread (the policies see predictions)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="results/goodput.json")
    ap.add_argument("--markdown", default=None, help="also write the tables and attainment-vs-rate curves here")
    ap.add_argument("--from-json", default=None, help="render an earlier --out file instead of running")
    ap.add_argument("--reuse", default=None,
                    help="an earlier --out file of the same settings: its rows for --reuse-policies are taken as "
                         "they are instead of re-running them (policies whose code did not change)")
    ap.add_argument("--reuse-policies", default="", help="semicolon-separated policy specs to take from --reuse")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(";") if p]
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
    else:
        tasks = [(m, float(s), p, args.cluster, args.profile, args.duration, args.seed, args.target, args.noise)
                 for m in args.mixes.split(",") for s in args.scales.split(",") for p in policies]
        reused = {}
        if args.reuse:
            keep = {p for p in args.reuse_policies.split(";") if p}
            reused = {(r["mix"], r["slo_scale"], r["policy"]): r for r in json.loads(Path(args.reuse).read_text())
                      if r["policy"] in keep and r.get("noise_sigma", 0.0) == args.noise}
        todo = [t for t in tasks if (t[0], t[1], t[2]) not in reused]
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            done = {(r["mix"], r["slo_scale"], r["policy"]): r for r in pool.map(_one, todo)}
        rows = [done.get((t[0], t[1], t[2])) or reused[(t[0], t[1], t[2])] for t in tasks]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
        print(f"{len(todo)} sweeps in {time.perf_counter() - t0:.0f} s ({len(rows) - len(todo)} reused); curves in {out}")
    rows = _with_ceilings(rows, args)
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, args))
        print(f"markdown in {args.markdown}")
    for mix in args.mixes.split(","):
        for scale in (float(s) for s in args.scales.split(",")):
            sel = [r for r in rows if r["mix"] == mix and r["slo_scale"] == scale]
            if not sel:
                continue
            slo_cap = sel[0]["slo_aware_capacity_rps"]
            print(f"\n{mix}  SLO scale {scale:g}  capacity ceiling {sel[0]['capacity_rps']:.3f} req/s, "
                  f"SLO-aware ceiling {slo_cap:.3f} req/s")
            w = max(26, *(len(r["policy"]) for r in sel))  # (long policy specs keep the columns)
            print(f"  {'policy':<{w}} {'goodput':>8} {'fair':>8} {'fair / SLO-aware':>17}")
            for r in sel:
                print(f"  {r['policy']:<{w}} {r['goodput_rps']:8.3f} {r['fair_goodput_rps']:8.3f} "
                      f"{_fraction(r['fair_goodput_rps'], slo_cap):>17}")
            by = {r["policy"]: r for r in sel}
            static = [r for r in sel if r["policy"].startswith("pipeline-static")]
            if "trident" in by and static:
                best = max(static, key=lambda r: r["fair_goodput_rps"])
                ratio = by["trident"]["fair_goodput_rps"] / best["fair_goodput_rps"] if best["fair_goodput_rps"] else float("inf")
                print(f"  fair goodput trident / best static ({best['policy']}): {ratio:.2f}x")
            if "trident" in by and "trident-paper" in by:
                paper = by["trident-paper"]["fair_goodput_rps"]
                ratio = by["trident"]["fair_goodput_rps"] / paper if paper else float("inf")
                print(f"  fair goodput trident / trident-paper: {ratio:.2f}x")


def markdown(rows: list[dict], args) -> str:
    """Tables per mix and scale, ratios, and every simulated rate's attainment per class."""
    rows = _with_ceilings(rows, args)
    noise = f", stage-time noise sigma {args.noise:g}" if getattr(args, "noise", 0.0) else ""
    out = [f"# Goodput on {args.cluster}, profile {args.profile}, {args.duration:g} s of Poisson arrivals, seed {args.seed}"
           + noise,
           "", "Made by `python benchmarks/goodput.py --markdown …` (numbers from the simulator). Goodput: highest rate",
           f"with >= {args.target:.0%} overall SLO attainment; fair goodput: every request class >= {args.target:.0%}.", ""]
    if getattr(args, "reuse", None) and getattr(args, "reuse_policies", ""):
        out += [f"The rows of {', '.join(p for p in args.reuse_policies.split(';') if p)} are taken from an earlier run "
                "of the same settings (`--reuse`): their code did not change.", ""]
    keys = sorted({(r["mix"], r["slo_scale"]) for r in rows}, key=lambda k: (k[0], k[1]))
    out += _ceiling_table(rows, keys)
    for mix, scale in keys:
        sel = [r for r in rows if r["mix"] == mix and r["slo_scale"] == scale]
        slo_cap = sel[0]["slo_aware_capacity_rps"]
        out += [f"## {mix}, SLO scale {scale:g} (capacity ceiling {sel[0]['capacity_rps']:.3f} req/s, "
                f"SLO-aware ceiling {slo_cap:.3f} req/s)", "",
                "| policy | goodput (req/s) | fair goodput (req/s) | fair / SLO-aware ceiling |",
                "| --- | ---: | ---: | ---: |"]
        out += [f"| {r['policy']} | {r['goodput_rps']:.3f} | {r['fair_goodput_rps']:.3f} | "
                f"{_fraction(r['fair_goodput_rps'], slo_cap)} |" for r in sel]
        by = {r["policy"]: r for r in sel}
        static = [r for r in sel if r["policy"].startswith("pipeline-static")]
        if "trident" in by and static:
            best = max(static, key=lambda r: r["fair_goodput_rps"])
            f = best["fair_goodput_rps"]
            line = (f"Fair goodput, trident / best static ({best['policy']}): "
                    + (f"{by['trident']['fair_goodput_rps'] / f:.2f}x" if f else "inf (static: 0)"))
            if "trident-paper" in by:
                p = by["trident-paper"]["fair_goodput_rps"]
                line += "; trident / trident-paper: " + (f"{by['trident']['fair_goodput_rps'] / p:.2f}x" if p else "inf")
            line += f"; trident / SLO-aware ceiling: {_fraction(by['trident']['fair_goodput_rps'], slo_cap)}"
            out += ["", line]
        out += ["", "<details><summary>attainment vs rate, per policy and class</summary>", ""]
        for r in sel:
            out.append(f"**{r['policy']}**")
            out.append("")
            classes = sorted({k for p in r["curve"] for k in p["by_class"]})
            out.append("| rate | overall | " + " | ".join(classes) + " |")
            out.append("| ---: | ---: | " + " | ".join("---:" for _ in classes) + " |")
            for p in r["curve"]:
                out.append(f"| {p['rate']:.3f} | {p['attainment']:.3f} | "
                           + " | ".join(f"{p['by_class'].get(c, float('nan')):.2f}" for c in classes) + " |")
            out.append("")
        out += ["</details>", ""]
    return "\n".join(out) + "\n"


def _ceiling_table(rows: list[dict], keys: list[tuple[str, float]]) -> list[str]:
    """Markdown lines: per mix and scale both ceilings and trident's fair goodput as a fraction of each."""
    out = ["The capacity ceiling prices every request at its most GPU-efficient degree (batch 1, SLO aside); the",
           "SLO-aware ceiling prices each class at the cheapest degree and batch (a batch the profile measured) whose",
           "no-queue latency meets its SLO (`tridentcore/core/capacity.py`). With batching the SLO-aware ceiling can",
           "be above the other one.", "",
           "| mix | SLO scale | capacity ceiling (req/s) | SLO-aware ceiling (req/s) | trident fair goodput (req/s) "
           "| trident / ceiling | trident / SLO-aware ceiling |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mix, scale in keys:
        sel = {r["policy"]: r for r in rows if r["mix"] == mix and r["slo_scale"] == scale}
        first = next(iter(sel.values()))
        cap, slo_cap = first["capacity_rps"], first["slo_aware_capacity_rps"]
        fair = sel["trident"]["fair_goodput_rps"] if "trident" in sel else None
        cells = ["-", "-", "-"] if fair is None else [f"{fair:.3f}", _fraction(fair, cap), _fraction(fair, slo_cap)]
        out.append(f"| {mix} | {scale:g} | {cap:.3f} | {slo_cap:.3f} | " + " | ".join(cells) + " |")
    return out + [""]


if __name__ == "__main__":
    run_script(main)
