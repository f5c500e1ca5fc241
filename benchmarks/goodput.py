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

Every row of ``--out`` records the settings it was made with (:data:`RECORDED`): ``--from-json``
heads its tables with them (a row of an older file without them: "unknown"), and ``--reuse`` takes
a row only when they are the run's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tridentcore.core.defaults import (DEFAULT_CLUSTER, DEFAULT_PROFILE, DEFAULT_SWEEP_DURATION_S, MAX_SCALE,
                                       MAX_SEED)
from tridentcore.bench.script import run_script

__all__ = ["POLICIES", "RECORDED", "ceilings_for", "check_jobs", "check_seed", "check_writable", "made_with",
           "markdown", "numbers", "read_rows", "sweep", "write_text"]

POLICIES = ("pipeline-static:degree=1", "pipeline-static:degree=2", "pipeline-static:degree=4",
            "pipeline-static:degree=8", "pipeline-dynamic", "trident-paper", "trident", "trident:late=reject")


# The settings a row of --out records besides its figures: (its key in the row, the flag, the argument).
RECORDED = (("cluster", "--cluster", "cluster"), ("profile", "--profile", "profile"),
            ("duration_s", "--duration", "duration"), ("seed", "--seed", "seed"), ("target", "--target", "target"),
            ("noise_sigma", "--noise", "noise"))
_TEXT = ("mix", "policy", "cluster", "profile")  # a row's text keys (read_rows checks them; the rest are numbers)
_OPTIONAL = ("slo_aware_capacity_rps", *(key for key, _, _ in RECORDED))  # absent from older files


def ceilings_for(mix: str, scale: float, cluster: str = DEFAULT_CLUSTER, profile: str = DEFAULT_PROFILE) -> tuple[float, float]:
    """(capacity ceiling, SLO-aware ceiling) in req/s of ``mix`` at SLO ``scale``: the cost model
    alone, no simulation (rows of an older --out file lack the second)."""
    from tridentcore.bench.scenario import ceilings, load_scenario
    from tridentcore.bench.spec import RunSpec

    efficient, slo_aware = ceilings(load_scenario(RunSpec(profile=profile, cluster=cluster, mix=mix, slo_scale=scale)))
    return efficient.rps, slo_aware.rps


def _with_ceilings(rows: list[dict], args) -> list[dict]:
    """``rows`` with ``slo_aware_capacity_rps`` filled in where an older --out file lacks it (priced on the
    row's own cluster and profile, or, where it records none either, the command line's)."""
    def key(r: dict) -> tuple:
        return r["mix"], r["slo_scale"], r.get("cluster", args.cluster), r.get("profile", args.profile)

    missing = {key(r) for r in rows if "slo_aware_capacity_rps" not in r}
    found = {k: ceilings_for(*k)[1] for k in missing}
    return [r if "slo_aware_capacity_rps" in r else {**r, "slo_aware_capacity_rps": found[key(r)]} for r in rows]


def _fraction(goodput: float, ceiling: float) -> str:
    return f"{goodput / ceiling:.0%}" if ceiling > 0 else "-"


def numbers(ap, flag: str, text: str, *, most: float = math.inf, example: str) -> list[float]:
    """The comma-separated numbers of ``flag``, each > 0 and at most ``most``; else one ``error:`` line."""
    out = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not 0 < value < math.inf:
            ap.error(f"{flag}: {item!r} is not a number > 0 (comma-separated, e.g. {example})")
        if value > most:
            ap.error(f"{flag}: {item!r} is over {most:g}, the largest SLO scale (as trident simulate --slo-scale)")
        out.append(value)
    return out


def check_seed(ap, flag: str, seed: int) -> None:
    """Seeds are 0..MAX_SEED, as ``trident simulate --seed`` takes them (-1 ran seed 1's stream)."""
    if not 0 <= seed <= MAX_SEED:
        ap.error(f"{flag}: {seed} is not in 0..{MAX_SEED}")


def check_jobs(ap, jobs: int) -> None:
    if jobs < 1:
        ap.error(f"--jobs: {jobs} is not a number of worker processes (1 or more)")


def check_writable(ap, flag: str, where: str) -> None:
    """An ``error:`` line now, before any work, if ``where`` cannot be written (its folder is made)."""
    path = Path(where)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        ap.error(f"{flag} {where}: cannot write it ({exc.strerror or exc})")
    if path.is_dir():
        ap.error(f"{flag} {where}: cannot write it (a folder)")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        ap.error(f"{flag} {where}: cannot write it (permission denied)")


def write_text(ap, flag: str, where: str, text: str) -> None:
    try:
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        Path(where).write_text(text)
    except OSError as exc:
        ap.error(f"{flag} {where}: cannot write it ({exc.strerror or exc})")


def _problem(row: object) -> str | None:
    """What is wrong with one row of an --out file, or None."""
    if not isinstance(row, dict):
        return "not an object"
    for k in ("mix", "policy", "slo_scale", "capacity_rps", "goodput_rps", "fair_goodput_rps", "curve", *_OPTIONAL):
        if k not in row:
            if k in _OPTIONAL:
                continue
            return f"{k} missing"
        v = row[k]
        kind = (str if k in _TEXT else int if k == "seed" else list if k == "curve" else (int, float))
        if not isinstance(v, kind) or isinstance(v, bool):
            return f"{k} not " + {str: "text", int: "an integer", list: "a list"}.get(kind, "a number")
    for j, point in enumerate(row["curve"]):
        if not (isinstance(point, dict) and all(isinstance(point.get(k), (int, float)) for k in ("rate", "attainment"))
                and isinstance(point.get("by_class"), dict)):
            return f"curve point {j}: not a rate, an attainment and by_class"
    return None


def read_rows(ap, flag: str, path: str) -> list[dict]:
    """The rows of an earlier ``--out`` file, or one ``error:`` line naming ``flag`` and what is wrong."""
    where = f"{flag} {path}"
    try:
        got = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        ap.error(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})")
    except ValueError as exc:
        ap.error(f"{where}: not JSON ({exc})")
    if isinstance(got, dict) and "settings" in got and "rows" in got:
        ap.error(f"{where}: a latency_pareto.py --json file, not rows this script wrote with --out")
    if not isinstance(got, list):
        ap.error(f"{where}: not a file this script wrote with --out (a list of rows)")
    if not got:
        ap.error(f"{where}: holds no rows")
    for i, row in enumerate(got):
        problem = _problem(row)
        if problem:
            ap.error(f"{where}: row {i}: {problem}")
    return got


def made_with(args) -> dict:
    """The settings a row of this run records (:data:`RECORDED`)."""
    return {key: getattr(args, attr) for key, _, attr in RECORDED}


def _reusable(ap, path: str, rows: list[dict], args) -> None:
    """An ``error:`` line for the first row to be reused whose recorded settings are not this run's."""
    mine = made_with(args)

    def said(flag: str, value: object) -> str:
        return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"

    for r in rows:
        label = f"row {r['mix']} x{r['slo_scale']:g} {r['policy']}"
        other = [(flag, r[key], mine[key]) for key, flag, _ in RECORDED if key in r and r[key] != mine[key]]
        if other:
            ap.error(f"--reuse {path}: {label} was made with {', '.join(said(f, theirs) for f, theirs, _ in other)}; "
                     f"this run has {', '.join(said(f, ours) for f, _, ours in other)}")
        unknown = [flag for key, flag, _ in RECORDED if key not in r]
        if unknown:
            ap.error(f"--reuse {path}: {label} does not record {', '.join(unknown)} (written before rows kept "
                     "their settings): run it again instead")


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


def sweep(tasks: list[tuple], jobs: int) -> list[dict]:
    """One row per task (:func:`_one`), in ``jobs`` worker processes."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_one, tasks))


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
    ap.add_argument("--from-json", default=None, help="render an earlier --out file instead of running (headed "
                    "with the settings its rows record)")
    ap.add_argument("--reuse", default=None,
                    help="an earlier --out file of the same settings (its rows record them; another's is refused): "
                         "its rows for --reuse-policies are taken as they are instead of re-running them (policies "
                         "whose code did not change)")
    ap.add_argument("--reuse-policies", default="", help="semicolon-separated policy specs to take from --reuse")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(";") if p.strip()]
    mixes = [m for m in args.mixes.split(",") if m.strip()]
    if not policies:  # (outside test: --policies ";" wrote [] over the --out file)
        ap.error("--policies: no policy given (semicolon-separated specs, e.g. trident;trident-paper)")
    if not mixes:
        ap.error("--mixes: no mix given (comma-separated, e.g. video-wan,image-video)")
    scales = numbers(ap, "--scales", args.scales, most=MAX_SCALE, example=ap.get_default("scales"))
    if not 0 < args.duration < math.inf:
        ap.error(f"--duration: {args.duration:g} is not a number of seconds > 0")
    if not 0 < args.target <= 1:
        ap.error(f"--target: {args.target:g} is not an attainment in (0, 1]")
    if not 0 <= args.noise <= 2:  # (as trident simulate --noise)
        ap.error(f"--noise: {args.noise:g} is not a log-spread within [0, 2]")
    check_seed(ap, "--seed", args.seed)
    check_jobs(ap, args.jobs)
    tasks = [(m, s, p, args.cluster, args.profile, args.duration, args.seed, args.target, args.noise)
             for m in mixes for s in scales for p in policies]
    reused = {}
    if args.from_json:
        rows = read_rows(ap, "--from-json", args.from_json)
    elif args.reuse:
        keep = {p for p in args.reuse_policies.split(";") if p}
        wanted = {(t[0], t[1], t[2]) for t in tasks}
        reused = {(r["mix"], r["slo_scale"], r["policy"]): r for r in read_rows(ap, "--reuse", args.reuse)
                  if r["policy"] in keep and (r["mix"], r["slo_scale"], r["policy"]) in wanted}
        _reusable(ap, args.reuse, list(reused.values()), args)
    if args.markdown:  # (outside test: an unwritable one was found after every sweep had run)
        check_writable(ap, "--markdown", args.markdown)
    if not args.from_json:
        check_writable(ap, "--out", args.out)
        todo = [t for t in tasks if (t[0], t[1], t[2]) not in reused]
        t0 = time.perf_counter()
        done = {(r["mix"], r["slo_scale"], r["policy"]): r for r in sweep(todo, args.jobs)}
        rows = [{**(done.get((t[0], t[1], t[2])) or reused[(t[0], t[1], t[2])]), **made_with(args)} for t in tasks]
        write_text(ap, "--out", args.out, json.dumps(rows, indent=1))
        print(f"{len(todo)} sweeps in {time.perf_counter() - t0:.0f} s ({len(rows) - len(todo)} reused); "
              f"curves in {args.out}")
    rows = _with_ceilings(rows, args)
    if args.markdown:
        write_text(ap, "--markdown", args.markdown, markdown(rows, args))
        print(f"markdown in {args.markdown}")
    for mix, scale in dict.fromkeys((r["mix"], r["slo_scale"]) for r in rows):
        sel = [r for r in rows if r["mix"] == mix and r["slo_scale"] == scale]
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


def _recorded(rows: list[dict]) -> dict[str, object]:
    """Each setting of :data:`RECORDED` as the rows record it; None where a row does not (unknown),
    a tuple where rows differ."""
    out: dict[str, object] = {}
    for key, _, _ in RECORDED:
        values = list(dict.fromkeys(r.get(key) for r in rows))
        out[key] = None if None in values else values[0] if len(values) == 1 else tuple(values)
    return out


def _said(value: object, fmt: str = "{}") -> str:
    if value is None:
        return "unknown"
    if isinstance(value, tuple):
        return "mixed (" + ", ".join(fmt.format(v) for v in value) + ")"
    return fmt.format(value)


def markdown(rows: list[dict], args) -> str:
    """Tables per mix and scale, ratios, and every simulated rate's attainment per class, headed with the
    settings the rows record."""
    rows = _with_ceilings(rows, args)
    made = _recorded(rows)
    noise = made["noise_sigma"]
    noise = "" if noise == 0 else f", stage-time noise sigma {_said(noise, '{:g}')}"
    target = made["target"]
    target = f"{target:.0%}" if isinstance(target, float | int) else f"the target ({_said(target, '{:.0%}')})"
    cluster = "an unknown cluster" if made["cluster"] is None else _said(made["cluster"])
    duration = ("an unknown duration" if made["duration_s"] is None else _said(made["duration_s"], "{:g}") + " s")
    out = [f"# Goodput on {cluster}, profile {_said(made['profile'])}, {duration} of Poisson arrivals, "
           f"seed {_said(made['seed'])}" + noise, ""]
    unknown = [flag for key, flag, _ in RECORDED if made[key] is None]
    if unknown:  # (outside test: an older file's rows were headed with the command line's defaults)
        out += [f"The rows do not record {', '.join(unknown)} (an --out file written before rows kept the settings "
                "they were made with): unknown above.", ""]
    out += ["Made by `python benchmarks/goodput.py --markdown …` (numbers from the simulator). Goodput: highest rate",
            f"with >= {target} overall SLO attainment; fair goodput: every request class >= {target}.", ""]
    if getattr(args, "reuse", None) and getattr(args, "reuse_policies", "") and not getattr(args, "from_json", None):
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
