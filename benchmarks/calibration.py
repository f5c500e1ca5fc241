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

from tridentcore.core.reports import Completed
from tridentcore.core.types import Shape

CLASSES = (Shape(64, 64, 1, 4), Shape(128, 128, 1, 8))


async def serve(calibrate: bool, per_class: int):
    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission

    rt = build_runtime("tiny-sd3", "cpu:2", "trident", calibrate=calibrate, log_reports=True)
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


def dispatches(engine, order, after: int) -> list[tuple[str, Shape, float, float, float]]:
    """Whole dispatches after the first ``after`` requests of each class: (stage, shape, predicted
    compute, compute as the worker measured it, compute as the engine's clock saw it)."""
    worker = {rep.dispatch_id: rep.compute_s for _, rep in engine.core.log
              if isinstance(rep, Completed) and rep.compute_s is not None}
    out, seen = [], set()
    for s in engine.spans:
        overhead = s.load_s + s.transfer_s
        if s.dispatch_id in seen or s.outcome != "done" or s.predicted_s <= overhead or s.dispatch_id not in worker:
            continue
        seen.add(s.dispatch_id)
        shape, i = order[s.request_id]
        if i >= after:
            out.append((str(s.stage), shape, s.predicted_s - overhead, worker[s.dispatch_id],
                        s.ended_s - s.started_s - overhead))
    return out


def errors(rows, which: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per stage: |measured / predicted - 1| of each dispatch (``which``: 3 the worker's measurement, 4
    the engine's), and the spread of the measurements themselves (median |t / median(t) - 1| per stage
    and class: what no factor can remove)."""
    out: dict[str, list[float]] = {}
    times: dict[tuple[str, Shape], list[float]] = {}
    for row in rows:
        stage, shape, predicted, measured = row[0], row[1], row[2], row[which]
        out.setdefault(stage, []).append(abs(measured / predicted - 1.0))
        times.setdefault((stage, shape), []).append(measured)
    spread: dict[str, list[float]] = {}
    for (stage, _), ts in times.items():
        med = statistics.median(ts)
        spread.setdefault(stage, []).extend(abs(t / med - 1.0) for t in ts)
    return out, {stage: statistics.median(v) for stage, v in spread.items()}


def _pct(d: dict[str, list[float]] | dict[str, float]) -> str:
    return ", ".join(f"{stage} {100 * (statistics.median(v) if isinstance(v, list) else v):.1f} %"
                     for stage, v in sorted(d.items()))


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
            rows = dispatches(engine, order, args.after)
            cal = {(r["stage"]): round(r["factor"], 2) for r in (engine.core.calibration.snapshot()
                                                                 if engine.core.calibration else [])}
            for which, name in ((3, "worker-measured"), (4, "engine-clock")):
                errs, spread = errors(rows, which)
                print(f"calibration {'on ' if calibrate else 'off'} ({args.spinners} spinners), {name} compute: "
                      f"median |measured/predicted - 1| after request {args.after} of each class: {_pct(errs)}"
                      f"; spread of the measurements themselves: {_pct(spread)}")
            if cal:
                print(f"  factors {cal}")
    finally:
        for p in spin:  # only the processes started here
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
