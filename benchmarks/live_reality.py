"""Live reality: the four policies on real CPU workers under a background load (issue 11, point 6).

    python benchmarks/live_reality.py [--policies trident,trident-paper,pipeline-static:degree=1,pipeline-dynamic]
        [--loads 0.5,1.2] [--calibrate on,off] [--duration 60] [--spinners N] [--capacity R]
        [--slo-scale 3] [--seed 0] [--db results/live_reality.duckdb] [--out benchmarks/results/live_reality.md]
    python benchmarks/live_reality.py --quick   # smoke test: 2 policies, 6 s runs, a short capacity burst

The full command (every default; add ``--out benchmarks/results/live_reality.md`` to keep the table)
makes 16 live runs (4 policies x 2 loads x calibration on/off) of 60 s of arrivals each. Each run
also starts a server (15-30 s on a loaded 2-core host) and lasts until its backlog is served, which
under overload (120 %, or a policy slower than the capacity policy) takes tens of seconds more; with
the capacity burst, allow 30-40 minutes. ``--quick`` makes 8 runs (``trident`` and
``pipeline-static:degree=1``) of 6 s and took 8 minutes on a busy 2-core host.

1. **Background load.** ``--spinners`` busy Python processes (default: ``os.cpu_count()``), started
   by this script at its own niceness (0 unless the script itself is niced), run for the whole
   benchmark and are killed by their PIDs at the end, also on an error or Ctrl-C (SIGTERM is
   treated as Ctrl-C); each also ends by itself when this script's process is gone.
2. **Workload.** tiny-sd3 on ``cpu:2`` (two worker processes, one torch thread each), the mix
   ``benchmarks/tiny-cpu.yaml``: 64x64 at 4 steps (weight 2) and 128x128 at 8 steps (weight 1).
   SLO: ``--slo-scale`` x the shipped ``cpu`` profile's reference latency (``benchmarks/cpu-2.yaml``
   is the run spec's cluster), sent by the client as ``slo_ms``, so the deadlines are the same
   whatever the server calibrates; the profile was measured on a quiet host, so the background
   load makes every stage slower than the SLOs assume.
3. **Capacity** (skipped with ``--capacity R``): ``trident serve --devices cpu:2 --policy
   --capacity-policy`` (default ``pipeline-static:degree=1``: one worker per request, no batching),
   under the same background load, driven closed loop: ``--in-flight`` clients each send the next
   request as soon as their last one returned (classes drawn from the mix at its weights, seeded,
   generous ``slo_ms`` so nothing is late or turned away). After one warm-up request per client,
   capacity = ``--capacity-requests`` completions / the wall time they took.
4. **Runs.** For each load (``--loads``: fractions of the capacity), calibration (``trident serve
   --calibrate`` / ``--no-calibrate``, the live bench's ``LiveOptions.calibrate``) and policy: one
   live bench run (``tridentcore.bench.live.LiveBench``: ``trident serve`` + Locust as child
   processes, what ``trident bench --backend live`` runs) with Poisson arrivals at load x capacity
   for ``--duration`` seconds (time scale 1: real seconds), seed ``--seed`` (the same schedule for
   every policy and calibration at one load), each stored in ``--db``.

Reported per run, from the store's views (``run_summary``, ``client_summary``): attainment
(``run_summary``: SLO-met / requests the server accepted; with the live bench's queue bound of
100,000 nothing is refused, so that is every scheduled request), mean and P95 latency (engine
seconds, arrival to finish, done requests), served (done), rejected (the policy's rejections plus
the client's 429/503 refusals), and Locust's schedule lag p99. A markdown table is printed and,
with ``--out``, written to a file.

Run it on an otherwise idle host: the spinners are meant to be the only other load. (The ``--quick``
smoke on a host shared with other jobs saw the same stage take three times as long from one run to
the next.)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shlex
import signal
import subprocess
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tridentcore.core.defaults import DEFAULT_SLO_SCALE
from tridentcore.core.policy import split_specs

HERE = Path(__file__).resolve().parent
MIX = HERE / "tiny-cpu.yaml"  # (absolute: the live bench's children run in a folder of their own)
CLUSTER = HERE / "cpu-2.yaml"
DEVICES = "cpu:2"
POLICIES = "trident,trident-paper,pipeline-static:degree=1,pipeline-dynamic"
QUICK_POLICIES = "trident,pipeline-static:degree=1"
LONG_SLO_MS = 10_000_000
# a busy loop that ends by itself once the process that started it is gone
SPIN = "import os\np = os.getppid()\nwhile os.getppid() == p:\n    for _ in range(1_000_000): pass\n"


# ------------------------------------------------------------------------------ background load
def start_spinners(n: int) -> list[subprocess.Popen]:
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL))
    except BaseException:
        stop_spinners(procs)
        raise
    return procs


def stop_spinners(procs: list[subprocess.Popen]) -> None:
    """Kill the spinners this script started, by PID."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def _sigterm_as_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------ capacity
@dataclass(frozen=True)
class Capacity:
    rps: float
    requests: int
    wall_s: float
    mean_s: float  # closed-loop latency at the client
    policy: str
    in_flight: int
    host_factor: float = 1.0  # one request alone on this loaded host / the cpu profile's reference latency


async def _solo(url: str, n: int) -> list[tuple[dict, float]]:
    """Each class of the mix ``n`` times, one request at a time: (class body, latency s)."""
    import httpx

    from tridentcore.formats.mixes import load_mix

    out = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for i in range(n):
            for c in load_mix(MIX).classes:
                body = {"model": c.model, "prompt": "a red cube", "size": f"{c.width}x{c.height}", "steps": c.steps,
                        "seed": 2_000_000 + i, "slo_ms": LONG_SLO_MS}
                t = time.perf_counter()
                r = await client.post("/v1/images/generations", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"solo request failed: HTTP {r.status_code} {r.text[:300]}")
                out.append((body, time.perf_counter() - t))
    return out


def host_factor(solo: list[tuple[dict, float]]) -> float:
    """The median over the mix's classes of (median latency of one request alone) / (the cpu profile's
    reference latency of its class): how much slower than the profile this loaded host serves."""
    from tridentcore.core.types import Shape, parse_size
    from tridentcore.core.workload import make_slo_fn
    from tridentcore.formats.mixes import load_cluster
    from tridentcore.profiles import load_profile

    cost = load_profile("cpu").cost_model()
    ref = make_slo_fn(cost, 1.0, load_cluster(CLUSTER).gpus_per_node, "cpu")
    by_class: dict[tuple, list[float]] = {}
    for body, lat in solo:
        w, h = parse_size(body["size"])
        by_class.setdefault((body["model"], Shape(h, w, 1, body["steps"])), []).append(lat)
    return statistics.median(statistics.median(v) / ref(m, shape) for (m, shape), v in by_class.items())


def _bodies(n: int, seed: int) -> list[dict]:
    """``n`` request bodies, classes drawn from the mix at its weights (seeded)."""
    from tridentcore.formats.mixes import load_mix

    classes = load_mix(MIX).classes
    rng = random.Random(seed)
    picks = rng.choices(classes, weights=[c.weight for c in classes], k=n)
    return [{"model": c.model, "prompt": "a red cube", "size": f"{c.width}x{c.height}", "steps": c.steps,
             "seed": i, "slo_ms": LONG_SLO_MS} for i, c in enumerate(picks)]


async def _closed_loop(url: str, bodies: list[dict], in_flight: int) -> tuple[float, list[float]]:
    """Send ``bodies`` closed loop after one warm-up request per client: (wall s, latencies s)."""
    import httpx

    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def post(body: dict) -> float:
            t = time.perf_counter()
            r = await client.post("/v1/images/generations", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"capacity request failed: HTTP {r.status_code} {r.text[:300]}")
            return time.perf_counter() - t

        await asyncio.gather(*(post({**b, "seed": 1_000_000 + b["seed"]}) for b in bodies[:in_flight]))
        queue = list(reversed(bodies))
        lat: list[float] = []

        async def client_loop() -> None:
            while queue:
                lat.append(await post(queue.pop()))

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(in_flight)))
        return time.perf_counter() - t0, lat


def measure_capacity(policy: str, requests: int, in_flight: int, seed: int) -> Capacity:
    from tridentcore.bench.launch import start_server

    server = start_server(["--models", "tiny-sd3", "--devices", DEVICES, "--policy", policy], timeout_s=300)
    try:
        wall_s, lat = asyncio.run(_closed_loop(server.url, _bodies(requests, seed), in_flight))
        factor = host_factor(asyncio.run(_solo(server.url, 5)))
    finally:
        server.stop()  # SIGTERM to this child's PID, wait; SIGKILL only past the timeout
    return Capacity(len(lat) / wall_s, len(lat), wall_s, sum(lat) / len(lat), policy, in_flight, factor)


# ------------------------------------------------------------------------------ the runs
def one_run(policy: str, load: float, rate: float, calibrate: bool, args, db: str, extra: dict) -> dict:
    from tridentcore.bench.live import LiveBench, LiveBenchSpec, LiveOptions
    from tridentcore.bench.runs import summaries
    from tridentcore.bench.spec import RunSpec
    from tridentcore.store import new_run_id, query_readonly

    run = RunSpec(profile="cpu", cluster=str(CLUSTER), mix=str(MIX), arrival="poisson", rate=rate,
                  duration_s=args.duration, seed=args.seed, slo_scale=args.effective_slo_scale, backend="live",
                  devices=DEVICES, time_scale=1.0)
    spec = LiveBenchSpec(run, LiveOptions(calibrate=calibrate))
    result = LiveBench(spec, policy, new_run_id(policy, args.seed), db,
                       extra_config={**extra, "load": load}).run()
    (summary,) = summaries(db, [result.run_id])
    client = query_readonly(db, "SELECT * FROM client_summary WHERE run_id = ?", [result.run_id])
    refused = int(client.refused.iloc[0]) if len(client) else 0
    unanswered = (int(client.errors.iloc[0]) + int(client.unfinished.iloc[0])) if len(client) else 0
    return {"load": load, "rate": rate, "calibrate": calibrate, "policy": policy, "scheduled": result.scheduled,
            "served": summary["done"], "rejected": summary["rejected"] + refused, "refused": refused,
            "failed": summary["failed"] + unanswered, "attainment": summary["attainment"],
            "mean_s": summary["mean_s"], "p95_s": summary["p95_s"], "lag_p99_ms": result.lag_p99_ms,
            "wall_s": result.wall_s, "run_id": result.run_id}


def _num(x, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown(rows: list[dict], head: list[str]) -> str:
    out = [*head, "",
           "| load | rate (req/s) | calibration | policy | requests | served | rejected | attainment | mean (s) "
           "| P95 (s) | lag p99 (ms) | run |",
           "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        out.append(f"| {r['load']:.0%} | {r['rate']:.2f} | {'on' if r['calibrate'] else 'off'} | {r['policy']} "
                   f"| {r['scheduled']} | {r['served']} | {r['rejected']} | {_num(r['attainment'], '.3f')} "
                   f"| {_num(r['mean_s'], '.3f')} | {_num(r['p95_s'], '.3f')} | {_num(r['lag_p99_ms'], '.1f')} "
                   f"| `{r['run_id']}` |")
    notes = [f"{r['policy']} at {r['load']:.0%}, calibration {'on' if r['calibrate'] else 'off'}: "
             + ", ".join(x for x in (f"{r['refused']} refused (429/503) by the server's queue" if r["refused"] else "",
                                     f"{r['failed']} failed, unanswered or unfinished" if r["failed"] else "") if x)
             for r in rows if r["refused"] or r["failed"]]
    if notes:
        out += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default=None, help=f"comma list (default: {POLICIES}; --quick: {QUICK_POLICIES})")
    ap.add_argument("--loads", default="0.5,1.2", help="Poisson rates as fractions of the measured capacity")
    ap.add_argument("--calibrate", default="on,off", help="on, off or both: trident serve --calibrate/--no-calibrate")
    ap.add_argument("--duration", type=float, default=None, help="seconds of arrivals per run (default 60; --quick: 6)")
    ap.add_argument("--spinners", type=int, default=os.cpu_count() or 1, help="busy background processes")
    ap.add_argument("--capacity", type=float, default=None, help="req/s: skip the capacity measurement")
    ap.add_argument("--host-factor", type=float, default=1.0, help="with --capacity: one request's latency on "
                    "this loaded host over the cpu profile's reference (measured when capacity is)")
    ap.add_argument("--capacity-policy", default="pipeline-static:degree=1")
    ap.add_argument("--capacity-requests", type=int, default=None, help="measured closed-loop requests "
                    "(default 200; --quick: 24)")
    ap.add_argument("--in-flight", type=int, default=4, help="capacity: closed-loop clients")
    ap.add_argument("--slo-scale", type=float, default=DEFAULT_SLO_SCALE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default=None, help="DuckDB results file (default results/live_reality.duckdb; "
                    "--quick: results/live_reality_quick.duckdb)")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 policies, 6 s runs, 24 capacity requests")
    args = ap.parse_args()
    policies = split_specs(args.policies or (QUICK_POLICIES if args.quick else POLICIES))
    loads = [float(x) for x in args.loads.split(",") if x]
    cal_words = {"on": True, "off": False}
    try:
        calibrations = [cal_words[w.strip()] for w in args.calibrate.split(",") if w.strip()]
    except KeyError:
        ap.error(f"--calibrate: on, off or on,off (got {args.calibrate!r})")
    if args.duration is None:
        args.duration = 6.0 if args.quick else 60.0
    n_cap = args.capacity_requests or (24 if args.quick else 200)
    db = args.db or f"results/live_reality{'_quick' if args.quick else ''}.duckdb"
    Path(db).parent.mkdir(parents=True, exist_ok=True)

    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    t0 = time.monotonic()
    rows: list[dict] = []
    spinners = start_spinners(args.spinners)
    try:
        print(f"{len(spinners)} spinners running (PIDs {', '.join(str(p.pid) for p in spinners)}) on "
              f"{os.cpu_count()} CPUs", flush=True)
        if args.capacity is not None:
            cap = Capacity(args.capacity, 0, 0.0, math.nan, "given", 0, args.host_factor)
            how = f"capacity {cap.rps:.2f} req/s (given with --capacity)"
        else:
            cap = measure_capacity(args.capacity_policy, n_cap, args.in_flight, args.seed)
            how = (f"capacity {cap.rps:.2f} req/s: {cap.requests} requests closed loop ({cap.in_flight} in flight) "
                   f"through `trident serve --devices {DEVICES} --policy {cap.policy}` in {cap.wall_s:.1f} s, "
                   f"mean latency {cap.mean_s * 1000:.0f} ms, under the same background load")
        # deadlines the loaded host can meet: --slo-scale x what one request alone takes here (the
        # profile was measured on a quiet host); the servers still start from the shipped profile
        args.effective_slo_scale = args.slo_scale * cap.host_factor
        how += (f"; one request alone takes {cap.host_factor:.2f}x the `cpu` profile's reference latency here, "
                f"so the SLO is {args.slo_scale:g} x {cap.host_factor:.2f} = {args.effective_slo_scale:.2f} x that "
                "reference")
        print(how, flush=True)
        extra = {"benchmark": "live_reality", "capacity_rps": cap.rps, "host_factor": cap.host_factor, "spinners": len(spinners),
                 "quick": args.quick}
        for load in loads:
            for calibrate in calibrations:
                for policy in policies:
                    row = one_run(policy, load, load * cap.rps, calibrate, args, db, extra)
                    rows.append(row)
                    print(f"  {policy} at {load:.0%} ({row['rate']:.2f} req/s), calibration "
                          f"{'on' if calibrate else 'off'}: attainment {_num(row['attainment'], '.3f')}, "
                          f"{row['served']}/{row['scheduled']} served, {row['wall_s']:.0f} s wall", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted after {len(rows)} runs (stored in {db}; a run in progress is stored as interrupted)",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        stop_spinners(spinners)
    wall = time.monotonic() - t0
    head = [f"# Live reality: policies on `{DEVICES}` (tiny-sd3) under {len(spinners)} spinning processes",
            "",
            f"Made by `{shlex.join(['python', 'benchmarks/live_reality.py', *sys.argv[1:]])}` on a host with "
            f"{os.cpu_count()} CPUs in {wall / 60:.1f} min. Workload `benchmarks/tiny-cpu.yaml` (64x64 at 4 steps, "
            f"weight 2; 128x128 at 8 steps, weight 1), Poisson arrivals for {args.duration:g} s per run, seed "
            f"{args.seed}. {how[0].upper() + how[1:]}. "
            f"Runs stored in `{Path(db).name if Path(db).is_absolute() else db}`; attainment, mean and P95 from `run_summary`, rejected = the policy's "
            "rejections + 429/503 refusals (`client_summary`)."]
    text = markdown(rows, head)
    print()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
