"""End-to-end latency of a tiny pipeline on this machine (issue: tiny-sd3 256x256, 4 steps <= 1 s).

    python benchmarks/tiny_latency.py [--model tiny-sd3] [--size 256x256] [--steps 4] [--runs 10] [--threads N]

Times encode -> diffuse -> decode in-process after one warm-up (pipeline construction excluded,
reported separately) and prints per-stage and total medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-sd3")
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from tridentcore.core.defaults import MAX_FRAMES, MAX_STEPS
    from tridentcore.core.types import parse_size

    # refused before the imports and the build (a traceback 10-20 s later, or steps 0 timed as 28: outside test)
    for flag, value, low, high in (("--steps", args.steps, 1, MAX_STEPS), ("--runs", args.runs, 1, 10_000),
                                   ("--frames", args.frames, 1, MAX_FRAMES), ("--threads", args.threads, 0, 1024)):
        if not low <= value <= high:
            ap.error(f"{flag} must be from {low} to {high}, got {value}")
    try:
        width, height = parse_size(args.size)
    except ValueError as exc:
        ap.error(f"--size: {exc}")

    import torch

    from tridentcore.pipelines import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import diffusers  # noqa: F401  (library import, timed apart from building the model)
    import transformers  # noqa: F401

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        pipe = load_pipeline(args.model)
        first_build_s = time.perf_counter() - t0  # includes diffusers' lazy imports of the model modules
        t0 = time.perf_counter()
        pipe = load_pipeline(args.model)
        build_s = time.perf_counter() - t0
        shape = (height, width, args.frames)
        pipe.generate("warm-up", shape, seed=0, steps=args.steps)
    except (ValueError, OSError) as exc:  # an unknown model, a size the pipeline cannot take: one line
        ap.error(f"{args.model} at {args.size}x{args.frames}: {exc}")
    enc, dif, dec, tot = [], [], [], []
    for i in range(args.runs):
        a = time.perf_counter()
        emb = pipe.encode([f"a red cube number {i}"])
        b = time.perf_counter()
        lat = pipe.diffuse(emb, shape, seed=i, steps=args.steps)
        c = time.perf_counter()
        pipe.decode(lat)
        d = time.perf_counter()
        enc.append(b - a), dif.append(c - b), dec.append(d - c), tot.append(d - a)
    result = {
        "model": args.model, "size": args.size, "frames": args.frames, "steps": args.steps,
        "threads": torch.get_num_threads(), "runs": args.runs,
        "import_s": round(import_s, 2), "first_build_s": round(first_build_s, 3),
        "build_s": round(build_s, 3),
        "encode_ms": round(1000 * statistics.median(enc), 1), "diffuse_ms": round(1000 * statistics.median(dif), 1),
        "decode_ms": round(1000 * statistics.median(dec), 1), "total_median_ms": round(1000 * statistics.median(tot), 1),
        "total_max_ms": round(1000 * max(tot), 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
