"""Per-request overhead of the live path: HTTP -> encode -> diffuse -> decode -> response.

    python benchmarks/serve_overhead.py [--devices emulated:2x8xH200] [--policy trident]
                                        [--concurrency 1,8,32] [--seconds 5] [--db FILE] [--json]

Starts ``trident serve --devices emulated:2x8xH200 --time-scale 0 --policy trident`` (zero-cost
stages) as a child process on a free 127.0.0.1 port, then drives ``POST /v1/images/generations``
from this process with C concurrent keep-alive connections for a bounded time per level
(loopback only). Since every stage costs 0, a request's client latency *is* the overhead of the
path (HTTP parsing, validation, the engine's events and policy decisions, three dispatches,
bookkeeping, the JSON response). Prints requests/s and latency p50 / p99 per concurrency level,
and the server's CPU seconds per request (from /proc). The server is stopped by its PID at the end.

The client is a minimal asyncio HTTP/1.1 client (one request at a time per connection, bodies
read by Content-Length) so that client CPU, which shares this machine's cores with the server,
stays small against what is measured; ``--client httpx`` uses httpx instead.

``--db FILE`` runs the server with a results store (a new file): the run's rows journaled and
ingested as it serves (issue 12), to measure what durable records cost per request.

Issue targets (issue 4): >= 300 requests/s, overhead p50 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

from tridentcore.core.defaults import DEFAULT_LIVE_DEVICES

BODY = {"prompt": "a red cube", "model": "sd3-medium", "size": "512x512", "steps": 20, "slo_ms": 10_000_000}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its (reaped) children, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / tick


class RawClient:
    """One keep-alive HTTP/1.1 connection; ``post`` returns (status, body bytes)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        self.writer.write(head + payload)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


class HttpxClient:
    def __init__(self, host: str, port: int) -> None:
        import httpx

        self.client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60)

    async def connect(self) -> None:
        pass

    async def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        r = await self.client.post(path, content=payload, headers={"content-type": "application/json"})
        return r.status_code, r.content

    async def close(self) -> None:
        await self.client.aclose()


async def drive(host: str, port: int, concurrency: int, seconds: float, max_requests: int, kind: str,
                server_pid: int) -> dict:
    """``concurrency`` closed-loop clients for ``seconds`` (or ``max_requests`` in all)."""
    payload = json.dumps(BODY).encode()
    clients = [(RawClient if kind == "raw" else HttpxClient)(host, port) for _ in range(concurrency)]
    for c in clients:
        await c.connect()
    for c in clients:  # warm-up: one request per connection (not measured)
        status, body = await c.post("/v1/images/generations", payload)
        if status != 200:
            raise SystemExit(f"warm-up request failed: {status} {body[:300]!r}")
    latencies: list[float] = []
    errors: dict[int, int] = {}
    started = 0
    stop_at = time.perf_counter() + seconds

    async def one(c) -> None:
        nonlocal started
        while time.perf_counter() < stop_at and started < max_requests:
            started += 1
            t0 = time.perf_counter()
            status, _ = await c.post("/v1/images/generations", payload)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1

    cpu0 = _cpu_s(server_pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in clients))
    wall = time.perf_counter() - t0
    cpu = _cpu_s(server_pid) - cpu0
    for c in clients:
        await c.close()
    lat = sorted(latencies)
    n = len(lat)
    return {"concurrency": concurrency, "requests": n, "errors": errors, "wall_s": wall,
            "rps": n / wall if wall else 0.0,
            "p50_ms": 1000 * lat[n // 2] if n else float("nan"),
            "p99_ms": 1000 * lat[min(n - 1, int(0.99 * n))] if n else float("nan"),
            "mean_ms": 1000 * statistics.fmean(lat) if n else float("nan"),
            "server_cpu_ms_per_request": 1000 * cpu / n if n else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default=DEFAULT_LIVE_DEVICES)
    ap.add_argument("--policy", default="trident")
    ap.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent clients (each level in turn)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured time per level (bounded)")
    ap.add_argument("--max-requests", type=int, default=20_000, help="at most this many requests per level")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--db", default=None, help="serve with --db FILE (a new file: durable records on)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    if args.db and os.path.exists(args.db):
        raise SystemExit(f"--db {args.db} exists: give a new file")
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1 or max(levels) > 256:
        raise SystemExit("--concurrency: 1..256 clients per level")
    seconds = min(max(args.seconds, 0.5), 60.0)

    from tridentcore.bench.launch import start_server

    server = start_server(["--models", "sd3-medium", "--devices", args.devices, "--time-scale", "0",
                           "--policy", args.policy, "--max-queued", "4096", *(["--db", args.db] if args.db else [])])
    rows = []
    try:
        for c in levels:
            rows.append(asyncio.run(drive(server.host, server.port, c, seconds, args.max_requests, args.client,
                                          server.pid)))
    finally:
        code = server.stop()  # SIGTERM to the child's PID, then wait (SIGKILL only past the timeout)
    out = {"devices": args.devices, "policy": args.policy, "client": args.client, "cpus": os.cpu_count(), "db": args.db,
           "targets": {"rps": 300, "p50_ms": 5.0}, "levels": rows, "server_exit": code}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"trident serve --devices {args.devices} --time-scale 0 --policy {args.policy}"
          f"{' --db ' + args.db if args.db else ''} ({os.cpu_count()} CPUs shared by server and client; "
          f"{args.client} client)")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7} "
          f"{'srv cpu ms/req':>14} errors")
    for r in rows:
        print(f"{r['concurrency']:>7} {r['requests']:>8} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{r['mean_ms']:>7.2f} {r['server_cpu_ms_per_request']:>14.2f} {r['errors'] or '-'}")
    print("targets: >= 300 req/s, p50 overhead <= 5 ms (one client at a time)")
    if code != 0:
        print(f"server exited with code {code}", file=sys.stderr)


if __name__ == "__main__":
    main()
