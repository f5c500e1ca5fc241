"""Real stages on real devices against the profile: serve a mixed workload under two policies and
compare each measured stage time with the cost model's prediction.

    python benchmarks/gpu_check.py                       # arch:sd3-medium on cuda:0 (the GPU check)
    python benchmarks/gpu_check.py --devices cpu:1 --models tiny-sd3 --mix tiny-mixed.yaml \\
        --profile cpu --rate 2 --duration 20             # the same path on this machine's CPU

For each policy it starts ``trident serve`` (a child process, port 0, ``--db``), sends the mix's
requests open loop (each at its scheduled time, whether or not earlier ones returned) over
``--duration`` seconds, waits for the stragglers, stops the server (which writes its run) and reads
the stage spans back from the store.

Compared per stage: a span's measured time (``ended - started``: the worker's run, input and output
copies included) against ``predicted_s`` (the cost model's duration for that dispatch, the same
number the policy planned with). Only whole, uninterrupted dispatches that loaded no weights count
(a dispatch that first moved a stage's weights onto the GPU carries that copy; they are reported
apart). The check passes when the median relative error of each stage is within ``--tolerance``.

Also reported, not scored: the errors after each (stage, shape, batch, degree)'s first dispatch (warm-up
left out), and of the worker's own compute time (``compute_s``: copies left out). The prediction is the
policy's, which online calibration moves after a shape's first dispatch: read the raw spans too
(``spans_<policy>.csv`` beside ``--out``) to compare with the profile itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def schedule(mix: str, rate: float, duration_s: float, seed: int):
    from tridentcore.core.workload import generate_requests
    from tridentcore.formats.mixes import load_mix

    return generate_requests(load_mix(mix), "poisson", rate, duration_s, seed, lambda model, shape: 1e9)


async def drive(url: str, requests, grace_s: float) -> list[dict]:
    """Send each request at its time (open loop); collect status and timings."""
    import httpx

    out: list[dict] = []
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:
        async def one(spec):
            delay = t0 + spec.arrival_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            path = "/v1/videos/generations" if spec.shape.frames > 1 else "/v1/images/generations"
            body = {"model": spec.model, "prompt": spec.prompt or "a photo", "size": f"{spec.shape.width}x{spec.shape.height}",
                    "steps": spec.shape.steps, "seed": spec.seed}
            if spec.shape.frames > 1:
                body["frames"] = spec.shape.frames
            sent = time.monotonic()
            try:
                r = await client.post(path, json=body)
                out.append({"id": spec.id, "status": r.status_code, "latency_s": time.monotonic() - sent,
                            "body": r.json() if r.headers.get("content-type", "").startswith("application/json") else {}})
            except httpx.HTTPError as exc:
                out.append({"id": spec.id, "status": 0, "error": str(exc)})

        tasks = [asyncio.create_task(one(s)) for s in requests]
        horizon = (requests[-1].arrival_s if requests else 0.0) + grace_s
        done, pending = await asyncio.wait(tasks, timeout=max(1.0, t0 + horizon - time.monotonic()))
        for t in pending:
            t.cancel()
    return out


def compare(db: str, run_id: str, spans_csv: str | None = None) -> dict:
    from tridentcore.store import query_readonly

    spans = query_readonly(db, """
        SELECT s.stage, s.dispatch_id, s.degree, s.batch, s.started_s, s.ended_s, s.predicted_s, s.load_s,
               s.compute_s, s.start_step, s.end_step, r.width, r.height, r.frames, r.steps
        FROM stage_spans s JOIN requests r USING (run_id, request_id)
        WHERE s.run_id = ? AND s.outcome = 'done'""", [run_id])
    spans = spans.drop_duplicates("dispatch_id").sort_values("started_s")
    if spans_csv:
        spans.to_csv(spans_csv, index=False)
    rows: dict[str, list[float]] = {}
    later: dict[str, list[float]] = {}  # each (stage, shape, batch, degree) after its first dispatch
    compute: dict[str, list[float]] = {}  # the worker's own compute time, copies left out
    seen: set[tuple] = set()
    loaded: dict[str, list[float]] = {}
    by_shape: dict[tuple, list[float]] = {}
    for r in spans.itertuples():
        if r.predicted_s <= 0:
            continue
        if r.stage == "diffuse" and (r.start_step != 0 or r.end_step != r.steps):
            continue  # a piece of a preempted diffuse
        err = (r.ended_s - r.started_s - r.predicted_s) / r.predicted_s
        (loaded if r.load_s > 0 else rows).setdefault(r.stage, []).append(err)
        if r.load_s == 0:
            key = (r.stage, f"{r.width}x{r.height}" + (f"x{r.frames}" if r.frames > 1 else ""), int(r.batch), int(r.degree))
            if r.stage == "encode":
                key = (r.stage, "-", int(r.batch), int(r.degree))
            by_shape.setdefault(key, []).append(err)
            if key in seen:
                later.setdefault(r.stage, []).append(err)
            seen.add(key)
            if r.compute_s == r.compute_s and r.compute_s > 0:
                compute.setdefault(r.stage, []).append((r.compute_s - r.predicted_s) / r.predicted_s)
    return {
        "stages": {s: {"n": len(e), "median_err": statistics.median(e), "median_abs_err": statistics.median(map(abs, e))}
                   for s, e in sorted(rows.items())},
        "after_first_of_shape": {s: {"n": len(e), "median_err": statistics.median(e)} for s, e in sorted(later.items())},
        "compute_only": {s: {"n": len(e), "median_err": statistics.median(e)} for s, e in sorted(compute.items())},
        "with_weight_load": {s: {"n": len(e), "median_err": statistics.median(e)} for s, e in sorted(loaded.items())},
        "by_shape": [{"stage": k[0], "shape": k[1], "batch": k[2], "degree": k[3], "n": len(e),
                      "median_err": statistics.median(e)} for k, e in sorted(by_shape.items())],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="sd3-medium")
    ap.add_argument("--devices", default="cuda:0")
    ap.add_argument("--profile", default="h200")
    ap.add_argument("--mix", default="sd3-mixed")
    ap.add_argument("--rate", type=float, default=0.1, help="requests per second (open loop)")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals per policy")
    ap.add_argument("--grace", type=float, default=90.0, help="seconds to wait for the last requests")
    ap.add_argument("--policies", default="trident,pipeline-static:degree=1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)

    from tridentcore.bench.launch import start_server

    requests = schedule(args.mix, args.rate, args.duration, args.seed)
    print(f"{len(requests)} requests over {args.duration:.0f} s ({args.mix}, {args.rate}/s) on {args.devices}",
          flush=True)
    report = {"devices": args.devices, "models": args.models, "profile": args.profile, "mix": args.mix,
              "rate": args.rate, "duration_s": args.duration, "policies": {}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "gpu_check.duckdb")
        for policy in args.policies.split(","):
            run_id = f"gpu-check-{policy.replace(':', '_').replace('=', '')}-{int(time.time())}"
            t0 = time.monotonic()
            server = start_server(["--models", args.models, "--devices", args.devices, "--policy", policy,
                                   "--profile", args.profile, "--db", db, "--run-id", run_id,
                                   "--max-queued", "10000"], timeout_s=900)
            started = time.monotonic() - t0
            try:
                client_rows = asyncio.run(drive(server.url, requests, args.grace))
                cluster = None
                try:
                    import httpx

                    cluster = httpx.get(server.url + "/v1/cluster", timeout=10).json()
                except Exception:  # noqa: BLE001 - the report only
                    pass
            finally:
                code = server.stop(timeout_s=120)
            statuses: dict[int, int] = {}
            for r in client_rows:
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            res = compare(db, run_id, str(Path(args.out).parent / f"spans_{policy.split(':')[0]}.csv") if args.out else None)
            res.update({"server_start_s": round(started, 1), "exit_code": code, "http_statuses": statuses,
                        "answered": len(client_rows), "sent": len(requests),
                        "device_kinds": sorted({d["kind"] for d in (cluster or {}).get("devices", [])})})
            report["policies"][policy] = res
            print(f"\n== {policy}: server up in {started:.1f} s, {len(client_rows)}/{len(requests)} answered, "
                  f"HTTP {statuses}, exit {code}")
            for stage, s in res["stages"].items():
                flag = "ok" if abs(s["median_err"]) <= args.tolerance else "OUT OF TOLERANCE"
                ok &= abs(s["median_err"]) <= args.tolerance
                print(f"  {stage:8s} n={s['n']:3d} median error {100 * s['median_err']:+6.1f} % "
                      f"(median |error| {100 * s['median_abs_err']:.1f} %)  {flag}")
            for stage, s in res["after_first_of_shape"].items():
                print(f"  {stage:8s} after each shape's first dispatch: n={s['n']} median {100 * s['median_err']:+.1f} % (not scored)")
            for stage, s in res["compute_only"].items():
                print(f"  {stage:8s} the worker's compute alone: n={s['n']} median {100 * s['median_err']:+.1f} % (not scored)")
            for stage, s in res["with_weight_load"].items():
                print(f"  {stage:8s} with a weight load: n={s['n']} median {100 * s['median_err']:+.1f} % (not scored)")
            for row in res["by_shape"]:
                print(f"    {row['stage']:8s} {row['shape']:>11s} b{row['batch']} d{row['degree']} n={row['n']:2d} "
                      f"{100 * row['median_err']:+6.1f} %")
            if not res["stages"]:
                ok = False
                print("  no scored spans")
    report["pass"] = ok
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n{'PASS' if ok else 'FAIL'}: every stage's median error within {100 * args.tolerance:.0f} %")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
