"""The sequence-parallel path on one device (issue 13, point 7): a world of one process met the way the
serving workers meet theirs (``runtime/parallel_worlds.meet`` over a TCPStore on 127.0.0.1; NCCL on
``cuda``, gloo on ``cpu``), then the diffuse through ``pipelines.parallel.diffuse_parallel`` against the
plain ``pipe.diffuse`` of the same call: the largest difference in the latents and both times.

    python benchmarks/gpu_parallel_check.py [--device cuda:0] [--models tiny-flux,tiny-sd3] [--size 256]
        [--steps 8] [--repeats 3] [--out FILE]

One device cannot run a degree above 1: this checks the backend switch (NCCL initialised, the kernel's
entry point, the group's collectives) where a multi-GPU machine would run it; the split itself is
tested on CPU processes (``tests/test_parallel_diffuse.py``). ``gpu_check.sh`` runs it first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _timed(fn, repeats: int, sync) -> tuple[object, float]:
    out, times = None, []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--models", default="tiny-flux,tiny-sd3")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist

    from tridentcore.pipelines import load_pipeline
    from tridentcore.pipelines.parallel import DiffuseCall, backend_for, diffuse_parallel
    from tridentcore.runtime.parallel_worlds import meet, store_server

    cuda = args.device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            print(f"error: {args.device} asked for, but torch sees no CUDA device", file=sys.stderr)
            return 2
        torch.cuda.set_device(args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    backend = backend_for(args.device)
    t0 = time.perf_counter()
    store = store_server(60.0, 1)
    group = meet(backend, store, 0, 1, 60.0)
    meet_s = time.perf_counter() - t0
    report = {"device": args.device, "backend": backend, "meet_s": round(meet_s, 3),
              "device_name": torch.cuda.get_device_name() if cuda else "cpu", "models": []}
    print(f"world of one on {args.device}: {backend} met in {meet_s:.2f} s")
    try:
        for model in [m for m in args.models.split(",") if m]:
            pipe = load_pipeline(model, device=args.device, dtype="bfloat16" if cuda else "float32")
            emb = pipe.encode(["a red cube on a blue table"], [""])
            frames = 5 if pipe.limits.video else 1
            call = DiffuseCall(args.size, args.size, frames, seed=3, steps=args.steps)
            shape = (args.size, args.size, frames)
            plain, plain_s = _timed(lambda: pipe.diffuse(emb, shape, seed=3, steps=args.steps), args.repeats, sync)
            kernel, kernel_s = _timed(lambda: diffuse_parallel(pipe, group, call, emb), args.repeats, sync)
            diff = float((plain.float() - kernel.float()).abs().max())
            row = {"model": model, "shape": list(shape), "steps": args.steps, "plain_s": round(plain_s, 4),
                   "kernel_s": round(kernel_s, 4), "max_abs_diff": diff, "finite": bool(torch.isfinite(kernel).all())}
            report["models"].append(row)
            print(f"  {model:10s} {args.size}x{args.size}x{frames}, {args.steps} steps: plain {plain_s * 1000:.1f} ms, "
                  f"through the kernel {kernel_s * 1000:.1f} ms, max |difference| {diff:.2e}")
    finally:
        dist.destroy_process_group()
    ok = all(r["finite"] and r["max_abs_diff"] == 0.0 for r in report["models"])
    report["ok"] = ok
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print("ok" if ok else "FAILED: the kernel's degree-1 latents differ from the plain diffuse's")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
