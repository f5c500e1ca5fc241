"""How far behind a server's stored run is when the server is killed (issue 12, durable records).

    python benchmarks/durable_lag.py [--seconds 10] [--interval 0.05] [--repeat 3] [--json]

Starts ``trident serve --models sd3-medium --devices emulated:1x2xH200 --time-scale 0.01 --db FILE``
(a new temporary file), sends one small image request after another for ``--seconds`` (one client,
``--interval`` wall seconds between an answer and the next request), and ``kill -9``s the server
the moment the last answer arrives. Then it reads, per completed request, whether its row was

* already in DuckDB at the kill (the ingester's transactions, about every second), and
* in the store after ``trident runs recover`` (the journal: fsynced every 0.5 s and before each answer),

and prints the lag of each: the age (seconds between its answer and the kill) of the youngest
request before which every request is stored. Request ids are the send order (one client, one
engine), so a client's i-th answer is the engine's request i.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

BODY = {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 4}


def _lag(ages: list[float], stored: set[int]) -> float:
    """The smallest L such that every request answered more than L seconds before the kill is stored."""
    missing = [age for i, age in enumerate(ages) if i not in stored]
    return max(missing, default=0.0)


def one_run(seconds: float, interval: float) -> dict:
    from typer.testing import CliRunner

    from tridentcore.bench.launch import start_server
    from tridentcore.cli import app
    from tridentcore.store import query_readonly

    with tempfile.TemporaryDirectory(prefix="trident-lag-") as tmp:
        db = Path(tmp) / "lag.duckdb"
        server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0.01",
                               "--db", str(db), "--run-id", "lag"])
        answered: list[float] = []
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                stop = time.monotonic() + seconds
                while time.monotonic() < stop:
                    resp = client.post("/v1/images/generations", json={**BODY, "seed": len(answered)})
                    if resp.status_code != 200:
                        raise SystemExit(f"request failed: {resp.status_code} {resp.text[:300]}")
                    answered.append(time.monotonic())
                    time.sleep(interval)
            killed_at = time.monotonic()
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
        finally:
            server.stop()
        ages = [killed_at - t for t in answered]
        sql = "SELECT request_id FROM requests WHERE run_id = 'lag' AND state = 'done'"
        in_db = set(query_readonly(db, sql).request_id.tolist()) if db.exists() else set()
        out = CliRunner().invoke(app, ["runs", "recover", "--db", str(db)])
        if out.exit_code != 0:
            raise SystemExit(f"recover failed: {out.output}")
        recovered = set(query_readonly(db, sql).request_id.tolist())
        status = query_readonly(db, "SELECT status FROM runs WHERE run_id = 'lag'").status[0]
    return {"requests": len(answered), "in_duckdb_at_kill": len(in_db), "after_recover": len(recovered),
            "duckdb_lag_s": _lag(ages, in_db), "journal_lag_s": _lag(ages, recovered), "status": status}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="wall seconds of requests before the kill")
    ap.add_argument("--interval", type=float, default=0.05, help="wall seconds between an answer and the next send")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = [one_run(args.seconds, args.interval) for _ in range(max(1, args.repeat))]
    if args.json:
        print(json.dumps({"seconds": args.seconds, "interval": args.interval, "cpus": os.cpu_count(), "runs": runs},
                         indent=2))
        return
    print(f"kill -9 after {args.seconds:g} s of requests ({os.cpu_count()} CPUs; emulated 1x2xH200, time scale 0.01)")
    print(f"{'requests':>8} {'in DuckDB':>9} {'recovered':>9} {'DuckDB lag s':>12} {'journal lag s':>13} status")
    for r in runs:
        print(f"{r['requests']:>8} {r['in_duckdb_at_kill']:>9} {r['after_recover']:>9} {r['duckdb_lag_s']:>12.2f} "
              f"{r['journal_lag_s']:>13.2f} {r['status']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
