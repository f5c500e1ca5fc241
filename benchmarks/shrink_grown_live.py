"""Live check of ``shrink_grown``: a widened diffuse gives its GPUs back to new work after one step.

    python benchmarks/shrink_grown_live.py [--policies "trident:shrink_grown=false,shrink_urgent=false;trident"]
        [--after 7] [--newcomer-slo-ms 4500] [--spin]

The scenario of ``tests/test_trident_wide.py::test_with_shrink_grown_...``, through ``trident serve``
on ``emulated:1x8xH200`` at time scale 1 (emulated devices take the h200 profile's times): a 2048²
and a 1024² flux-dev request at once (SLO scale 3); when the 1024² one ends (about 2.6 s in) the
2048² diffuse is grown from 4 to 8 GPUs; a 1024² request with a 4.5 s SLO (``--newcomer-slo-ms``)
arrives ``--after`` of its steps (0.233 s each) later. Per policy and arrival: each request's state,
latency and SLO. ``--spin``: one spinning process per core meanwhile (a busy host). The simulator
says, for 7 steps: the newcomer misses with ``shrink_grown=false,shrink_urgent=false`` (5.33 s: it
waits for the 8 GPUs) and meets its SLO under the default, ``shrink_grown`` (2.64 s; ``shrink_urgent``
alone, ``shrink_grown=false``, meets it too: it would miss by waiting).
"""

from __future__ import annotations

import argparse
import os
import time

import httpx
from live_reality import start_spinners, stop_spinners  # (benchmarks/: this script's folder)

from tridentcore.bench.launch import start_server
from tridentcore.bench.script import run_script
from tridentcore.core.types import Shape
from tridentcore.core.workload import make_slo_fn
from tridentcore.profiles import load_profile

BIG, SMALL = Shape(2048, 2048, 1, 28), Shape(1024, 1024, 1, 28)
STEP_S = 0.233  # a 1024² flux-dev step at degree 8 on the h200 profile (as in the test)
ENDED = ("done", "failed", "cancelled", "rejected")


def _body(shape: Shape, slo_ms: float, seed: int) -> dict:
    return {"model": "flux-dev", "prompt": "p", "size": f"{shape.width}x{shape.height}", "steps": shape.steps,
            "slo_ms": slo_ms, "seed": seed}


def scenario(policy: str, after_steps: float, newcomer_slo_ms: float = 4500.0) -> list[dict]:
    """The three requests' items as the server ended them."""
    slo = make_slo_fn(load_profile("h200").cost_model(), 3.0, 8)
    srv = start_server(["--models", "flux-dev", "--devices", "emulated:1x8xH200", "--time-scale", "1",
                        "--policy", policy])
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            t0 = time.monotonic()
            ids = [c.post("/v1/requests", json=_body(BIG, 1000 * slo("flux-dev", BIG), 0)).json()["id"],
                   c.post("/v1/requests", json=_body(SMALL, 1000 * slo("flux-dev", SMALL), 1)).json()["id"]]
            time.sleep(max(0.0, t0 + 2.6 + after_steps * STEP_S - time.monotonic()))
            ids.append(c.post("/v1/requests", json=_body(SMALL, newcomer_slo_ms, 2)).json()["id"])
            deadline = time.monotonic() + 120
            while True:
                items = [c.get(f"/v1/requests/{i}").json()["items"][0] for i in ids]
                if all(it["state"] in ENDED for it in items):
                    return items
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the requests did not end within 120 s: {[it['state'] for it in items]}")
                time.sleep(0.2)
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="trident:shrink_grown=false,shrink_urgent=false;trident", help="semicolon-separated policy specs")
    ap.add_argument("--after", default="7", help="the newcomer's arrival, in steps after the growth")
    ap.add_argument("--newcomer-slo-ms", type=float, default=4500.0)
    ap.add_argument("--spin", action="store_true", help="one spinning process per core meanwhile")
    args = ap.parse_args()
    try:
        afters = [float(x) for x in args.after.split(",")]
    except ValueError:
        ap.error(f"--after takes comma-separated numbers (got {args.after!r})")
    spinners = start_spinners(os.cpu_count() or 1) if args.spin else []  # (they end with this process, killed too)
    try:
        for after in afters:
            for policy in (p for p in args.policies.split(";") if p):
                items = scenario(policy, after, args.newcomer_slo_ms)
                said = ", ".join(f"{it['state']} in {it['finish_s'] - it['arrival_s']:.2f} s of "
                                 f"{it['deadline_s'] - it['arrival_s']:.2f}" for it in items)
                met = items[-1]["state"] == "done" and items[-1]["finish_s"] <= items[-1]["deadline_s"]
                print(f"newcomer {after:g} steps after the growth, {policy}: {said}; "
                      f"newcomer {'met' if met else 'MISSED'} its SLO", flush=True)
    finally:
        stop_spinners(spinners)


if __name__ == "__main__":
    run_script(main)
