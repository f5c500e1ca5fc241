"""Locust schedule lag at a high request rate against a zero-cost server.

    python benchmarks/locust_lag.py [--rate 50] [--duration 30] [--arrival poisson] [--seed 0]

Starts ``trident serve --devices emulated:2x8xH200 --time-scale 0`` (stages cost nothing: the
server answers as fast as it can) and runs ``workloads/mixed.py`` headless at ``--rate`` requests
per second (time scale 1: workload seconds are wall seconds). Lag = actual send - scheduled send,
per request, as the locustfile records it. Target: p99 <= 20 ms at 50 requests/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tridentcore.core.metrics import quantile
from tridentcore.bench.live_procs import locustfile
from tridentcore.bench.launch import start_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--arrival", default="poisson")
    ap.add_argument("--mix", default="sd3-mixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-ms", type=float, default=20.0)
    args = ap.parse_args()

    server = start_server(["--models", "sd3-medium,wan2.1-1.3b", "--devices", "emulated:2x8xH200",
                           "--time-scale", "0", "--max-queued", "100000"])
    try:
        with tempfile.TemporaryDirectory(prefix="locust-lag-") as tmp:
            rows_path = Path(tmp) / "rows.jsonl"
            t0 = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless",
                                  "--host", server.url, "-t", f"{int(args.duration + 60)}s", "--only-summary",
                                  "--loglevel", "WARNING", "--mix", args.mix, "--arrival", args.arrival,
                                  "--rate", str(args.rate), "--duration", str(args.duration),
                                  "--seed", str(args.seed), "--time-scale", "1", "--rows-out", str(rows_path)],
                                 capture_output=True, text=True, cwd=tmp, timeout=args.duration + 180)
            wall = time.monotonic() - t0
            if not rows_path.exists():
                sys.exit(f"Locust wrote no rows (exit {out.returncode}):\n{out.stderr[-3000:]}")
            rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    finally:
        server.stop()
    lags = [r["lag_ms"] for r in rows if r["lag_ms"] is not None]
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    client = [r["client_ms"] for r in rows if r["client_ms"] is not None]
    p99 = quantile(lags, 0.99)
    print(f"locust lag: {len(rows)} requests, {args.arrival} at {args.rate:g} req/s for {args.duration:g} s "
          f"({args.mix}, zero-cost server), wall {wall:.1f} s; states {states}")
    print(f"  schedule lag  p50 {quantile(lags, 0.5):6.2f} ms  p90 {quantile(lags, 0.9):6.2f} ms  "
          f"p99 {p99:6.2f} ms  max {max(lags):6.2f} ms")
    print(f"  response time p50 {quantile(client, 0.5):6.2f} ms  p99 {quantile(client, 0.99):6.2f} ms (wall)")
    verdict = "meets" if p99 <= args.target_ms else "MISSES"
    print(f"  p99 lag {p99:.2f} ms {verdict} the target of <= {args.target_ms:g} ms")


if __name__ == "__main__":
    main()
