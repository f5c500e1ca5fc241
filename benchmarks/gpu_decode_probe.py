"""Why a served decode is slower than the profile's: time the SD3 VAE decoder on one device with
cuDNN's algorithm search off (PyTorch's default) and on, bare and as the worker runs it (uint8
conversion and the copy to the host included).

    python benchmarks/gpu_decode_probe.py --device cuda:0          # the arch:sd3-medium VAE, bfloat16
    python benchmarks/gpu_decode_probe.py --device cpu --tiny      # the same path on a CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def timed(fn, sync, n: int) -> float:
    out = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000


def main(argv=None) -> int:
    import torch

    from tridentcore.pipelines.builders import _building, _vae_kl
    from tridentcore.pipelines.staged_base import _decode_shifted

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    with _building(args.device, dtype):
        vae = (_vae_kl((8, 16, 16, 16), 4, 8, 1, 1.5305, 0.0609) if args.tiny
               else _vae_kl((128, 256, 512, 512), 16, 32, 2, 1.5305, 0.0609))
    sync = (lambda: torch.cuda.synchronize(args.device)) if cuda else (lambda: None)
    latent_ch = vae.config.latent_channels
    rows = []
    with torch.inference_mode():
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for px in (int(s) for s in args.sizes.split(",")):
                z = torch.randn(1, latent_ch, px // 8, px // 8, device=args.device, dtype=dtype)
                first = timed(lambda: vae.decode(z, return_dict=False), sync, 1)
                bare = timed(lambda: vae.decode(z, return_dict=False), sync, 3)
                served = timed(lambda: _decode_shifted(vae, z), sync, 3)
                row = {"cudnn_benchmark": bench, "px": px, "first_ms": round(first, 1), "bare_ms": round(bare, 1),
                       "served_ms": round(served, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": args.device, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
