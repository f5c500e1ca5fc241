"""What compacting a server's journal costs its answers (``trident serve --db --journal-mb``).

    python benchmarks/journal_compaction.py [--seconds 10] [--clients 8] [--mb 0.5,64] [--spin] [--json]

For each ``--journal-mb`` value: starts ``trident serve --models sd3-medium --devices
emulated:1x8xH200 --time-scale 0 --db FILE --journal-mb MB`` (a new temporary file; zero-cost
emulated GPUs, so the answers' latency is the server's own: the API, the policy and the journal
written before each answer), drives ``--clients`` threads of one sync image request after another
for ``--seconds``, samples the journal's size every 0.1 s, stops the server (SIGTERM) and checks that
the store holds every answered request. Prints, per value: answers, p50 / p99 / max latency, the
journal's largest size, and the compactions the server logged (with their times). ``--spin``: a
busy process per core throughout (a loaded host).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from live_reality import start_spinners, stop_spinners  # (benchmarks/: this script's folder)

BODY = {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 4}


def one_run(mb: float, seconds: float, clients: int) -> dict:
    from tridentcore.store import query_readonly
    from tridentcore.store.journal import journal_path

    with tempfile.TemporaryDirectory(prefix="trident-compact-") as tmp:
        db, port_file, log = Path(tmp) / "c.duckdb", Path(tmp) / "port", Path(tmp) / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "serve", "--models", "sd3-medium",
                                     "--devices", "emulated:1x8xH200", "--time-scale", "0", "--db", str(db),
                                     "--run-id", "c", "--journal-mb", str(mb), "--max-queued", "100000",
                                     "--port", "0", "--port-file", str(port_file), "--verbose"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port_file.read_text().strip()}"
            path = journal_path(db, "c")
            stop = time.monotonic() + seconds
            sizes: list[int] = []

            def sample() -> None:
                while time.monotonic() < stop:
                    try:
                        sizes.append(path.stat().st_size)
                    except FileNotFoundError:
                        pass
                    time.sleep(0.1)

            def client(i: int) -> list[float]:
                took = []
                with httpx.Client(base_url=url, timeout=60) as c:
                    while time.monotonic() < stop:
                        t0 = time.monotonic()
                        r = c.post("/v1/images/generations", json={**BODY, "seed": i})
                        if r.status_code != 200:
                            raise SystemExit(f"request failed: {r.status_code} {r.text[:300]}")
                        took.append(time.monotonic() - t0)
                return took

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with cf.ThreadPoolExecutor(clients) as pool:
                lat = sorted(x for got in pool.map(client, range(clients)) for x in got)
            sampler.join()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        text = log.read_text(errors="replace")
        stored = int(query_readonly(db, "SELECT count(*) AS n FROM requests WHERE state = 'done'").n[0])
    took_ms = [float(m) for m in re.findall(r"compacted: \d+ bytes to \d+ in ([0-9.]+) ms", text)]
    return {"journal_mb": mb, "answers": len(lat), "stored_done": stored, "exit": rc,
            "p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))],
            "max_ms": 1e3 * lat[-1], "journal_max_bytes": max(sizes, default=0), "compactions": len(took_ms),
            "compaction_ms_max": max(took_ms, default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--mb", default="0.5,64", help="comma list of --journal-mb values")
    ap.add_argument("--spin", action="store_true", help="a busy process per core throughout")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spinners = start_spinners(os.cpu_count() or 1) if args.spin else []
    try:
        rows = [one_run(float(mb), args.seconds, args.clients) for mb in args.mb.split(",")]
    finally:
        stop_spinners(spinners)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'--journal-mb':>12} {'answers':>8} {'stored':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'journal max':>12} {'compactions':>11} {'slowest':>8}")
    for r in rows:
        print(f"{r['journal_mb']:>12g} {r['answers']:>8} {r['stored_done']:>7} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['max_ms']:>7.1f} {r['journal_max_bytes']:>12,} {r['compactions']:>11} "
              f"{r['compaction_ms_max']:>6.1f}ms")
        if r["stored_done"] != r["answers"] or r["exit"] != 0:
            print(f"  !! {r['answers']} answered, {r['stored_done']} stored done, exit {r['exit']}")


if __name__ == "__main__":
    main()
