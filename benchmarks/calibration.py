"""Online calibration on real CPU workers under a background load (issue 11, point 1).

    python benchmarks/calibration.py [--spinners 2] [--per-class 40] [--after 20]

Serves tiny-sd3 on ``cpu:2`` (the engine in process, real worker processes) while ``--spinners``
busy processes compete for the cores, so stages run slower than the shipped ``cpu`` profile says.
Two request classes (64x64 at 4 steps, 128x128 at 8 steps) are sent one at a time, ``--per-class``
each, alternating. For every whole dispatch the compute time is compared with the prediction it
was dispatched with (the calibrated one when calibration is on); the figure is the median
``|measured / predicted - 1|`` over the dispatches after the first ``--after`` requests of each
class, per stage, with calibration on and off.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys

from tridentcore.core.types import Shape

CLASSES = (Shape(64, 64, 1, 4), Shape(128, 128, 1, 8))


async def serve(calibrate: bool, per_class: int):
    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission

    rt = build_runtime("tiny-sd3", "cpu:2", "trident", calibrate=calibrate)
    await rt.start()
    e = rt.engine
    order: dict[int, tuple[Shape, int]] = {}
    try:
        for i in range(per_class):
            for shape in CLASSES:
                got = e.submit([Submission("tiny-sd3", "a red cube", shape, seed=i, slo_s=1e6)])
                order[got.ids[0]] = (shape, i)
                await e.wait(got.ids[0])
    finally:
        await e.shutdown(5)
    return e, order


def errors(engine, order, after: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per stage: |measured / predicted - 1| of each late dispatch, and the spread of the measurements
    themselves (median |t / median(t) - 1| per stage and class: what no factor can remove)."""
    out: dict[str, list[float]] = {}
    times: dict[tuple[str, Shape], list[float]] = {}
    seen = set()
    for s in engine.spans:
        overhead = s.load_s + s.transfer_s
        if s.dispatch_id in seen or s.outcome != "done" or s.predicted_s <= overhead:
            continue
        seen.add(s.dispatch_id)
        if order[s.request_id][1] < after:
            continue
        measured = s.ended_s - s.started_s - overhead
        out.setdefault(str(s.stage), []).append(abs(measured / (s.predicted_s - overhead) - 1.0))
        times.setdefault((str(s.stage), order[s.request_id][0]), []).append(measured)
    spread: dict[str, list[float]] = {}
    for (stage, _), ts in times.items():
        med = statistics.median(ts)
        spread.setdefault(stage, []).extend(abs(t / med - 1.0) for t in ts)
    return out, {stage: statistics.median(v) for stage, v in spread.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spinners", type=int, default=2, help="busy processes competing for the cores")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--after", type=int, default=20)
    args = ap.parse_args()
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.spinners)]
    try:
        for calibrate in (False, True):
            engine, order = asyncio.run(serve(calibrate, args.per_class))
            errs, spread = errors(engine, order, args.after)
            cal = {(r["stage"]): round(r["factor"], 2) for r in (engine.core.calibration.snapshot()
                                                                 if engine.core.calibration else [])}
            print(f"calibration {'on ' if calibrate else 'off'} ({args.spinners} spinners): median |measured/predicted - 1| "
                  "after request " + str(args.after) + " of each class: "
                  + ", ".join(f"{stage} {100 * statistics.median(v):.1f} % ({len(v)})" for stage, v in sorted(errs.items()))
                  + (f"; factors {cal}" if cal else "")
                  + "; spread of the measurements themselves: "
                  + ", ".join(f"{stage} {100 * v:.1f} %" for stage, v in sorted(spread.items())))
    finally:
        for p in spin:  # only the processes started here
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
