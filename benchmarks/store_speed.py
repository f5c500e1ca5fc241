"""Results-store speed (issue: 100,000 request rows ingest in <= 1 s; run_summary in <= 100 ms).

    python benchmarks/store_speed.py [--requests 100000] [--repeats 5] [--json]

Builds synthetic rows (one request row and one span row per request; spans batched in pairs, so
half as many dispatches), then times ``ResultsStore.write_run`` into a fresh file (records ->
Arrow -> one DuckDB transaction, connection open and close included) and ``run_summary(path)``
(read-only open, the view over every row, DataFrame out, close). Row construction is not timed.
Prints medians over ``--repeats``; ingest also splits out the Arrow conversion.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from tridentcore.core.records import GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow
from tridentcore.store import ResultsStore, rows_to_arrow, run_summary

SHAPES = [("flux", 1024, 1024, 1), ("flux", 512, 512, 1), ("wan", 832, 480, 81), ("sd3", 768, 768, 1)]
STATES = ["done"] * 17 + ["rejected", "failed", "cancelled"]


def synthetic_rows(n: int, seed: int = 0) -> tuple[list[RequestRow], list[SpanRow], list[PlacementRow], list[GpuSample]]:
    rng = random.Random(seed)
    requests, spans = [], []
    for i in range(n):
        model, h, w, f = SHAPES[i % len(SHAPES)]
        arrival = i * 0.01
        state = STATES[rng.randrange(len(STATES))]
        finish = arrival + rng.uniform(1.0, 20.0) if state in ("done", "failed") else arrival
        requests.append(RequestRow(i, model, h, w, f, 28, arrival, arrival + 12.0, state, finish_s=finish))
        d = i // 2
        gpus = (d % 8, (d + 1) % 8)
        spans.append(SpanRow(d, i, "diffuse", gpus, 2, 2, arrival, arrival + 0.5, arrival + 3.0, 2.5, 0, 28))
    placements = [PlacementRow(0.0, g, "flux", "diffuse", "place", 22.0, 3.0) for g in range(8)]
    samples = [GpuSample(t * 1.0, g, 0.8, 40.0) for t in range(n // 100) for g in range(8)]
    return requests, spans, placements, samples


def meta(run_id: str) -> RunMeta:
    return RunMeta(
        run_id=run_id, backend="sim", policy="trident", seed=0, profile="h200", cluster="8xH200",
        mix="bench", rate_rps=100.0, duration_s=1000.0, slo_scale=3.0, config_json="{}",
        created_unix_s=1_700_000_000.0,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    requests, spans, placements, samples = synthetic_rows(args.requests)
    ingest, convert, summary = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            t0 = time.perf_counter()
            rows_to_arrow(requests, "requests")
            rows_to_arrow(spans, "stage_spans")
            convert.append(time.perf_counter() - t0)

            path = Path(tmp) / f"bench{k}.duckdb"
            t0 = time.perf_counter()
            ResultsStore(path).write_run(meta(f"bench-{k}"), requests, spans, placements, samples)
            ingest.append(time.perf_counter() - t0)
        path = Path(tmp) / "bench0.duckdb"
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            df = run_summary(path)
            summary.append(time.perf_counter() - t0)
        assert int(df["requests"].iloc[0]) == args.requests

    result = {
        "requests": args.requests,
        "spans": len(spans),
        "gpu_samples": len(samples),
        "ingest_s_median": statistics.median(ingest),
        "ingest_s_all": [round(x, 4) for x in ingest],
        "arrow_convert_s_median": statistics.median(convert),
        "run_summary_ms_median": 1000 * statistics.median(summary),
        "run_summary_ms_all": [round(1000 * x, 1) for x in summary],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"rows: {args.requests:,} requests + {len(spans):,} spans + {len(samples):,} gpu samples")
    print(f"ingest (write_run, fresh file): median {result['ingest_s_median']:.3f} s  {result['ingest_s_all']}")
    print(f"  of which records -> Arrow:    median {result['arrow_convert_s_median']:.3f} s")
    print(f"run_summary(path):              median {result['run_summary_ms_median']:.1f} ms  {result['run_summary_ms_all']}")


if __name__ == "__main__":
    main()
