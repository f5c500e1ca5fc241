"""Online calibration on real CPU workers under a background load (issue 11, point 1).

    python benchmarks/calibration.py [--spinners 2] [--float] [--per-class 40] [--after 20]

Serves tiny-sd3 on ``cpu:2`` (the engine in process, real worker processes) while ``--spinners``
busy processes compete for the cores, so stages run slower than the shipped ``cpu`` profile says.
The spinners are pinned round-robin to the cores (``taskset``): one per core is a steady load that
halves every stage's share of its core; ``--float`` lets the kernel move them, so the load a stage
meets jumps between none and a whole spinner from one run to the next (what no factor can follow;
the figure printed beside it, the spread of the measurements themselves, says how much). A first
pass with no spinners and calibration on gives the quiet factors, so the slowdown the load caused
is printed too.
Two request classes (``--sizes``: 128x128 and 256x256, 8 steps) are sent one at a time,
``--per-class`` each, alternating. For every whole dispatch the compute time is compared with the prediction it
was dispatched with (the calibrated one when calibration is on); the figure is the median
``|measured / predicted - 1|`` over the dispatches after the first ``--after`` requests of each
class, per stage, with calibration on and off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys

from tridentcore.core.reports import Completed
from tridentcore.core.types import Shape

SIZES = (128, 256)  # at 64 px a decode takes a few ms: a handful of the kernel's time slices under load


async def serve(calibrate: bool, per_class: int, classes: tuple[Shape, ...]):
    from tridentcore.runtime.build import build_runtime
    from tridentcore.runtime.engine import Submission

    rt = build_runtime("tiny-sd3", "cpu:2", "trident", calibrate=calibrate, log_reports=True)
    await rt.start()
    e = rt.engine
    order: dict[int, tuple[Shape, int]] = {}
    try:
        for i in range(per_class):
            for shape in classes:
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


def spinners(n: int, pin: bool) -> list[subprocess.Popen]:
    """``n`` busy processes, pinned round-robin to the cores unless ``pin`` is off."""
    cores = sorted(os.sched_getaffinity(0))
    out = []
    for i in range(n):
        p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        if pin:
            os.sched_setaffinity(p.pid, {cores[i % len(cores)]})
        out.append(p)
    return out


def factors(engine) -> dict[str, float]:
    return {r["stage"]: r["factor"] for r in (engine.core.calibration.snapshot() if engine.core.calibration else [])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spinners", type=int, default=2, help="busy processes competing for the cores")
    ap.add_argument("--float", action="store_true", help="do not pin the spinners to cores")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--after", type=int, default=20)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="the classes: square sides in px, each at 8 steps (default %(default)s)")
    args = ap.parse_args()
    classes = tuple(Shape(int(px), int(px), 1, 8) for px in args.sizes.split(","))
    engine, _ = asyncio.run(serve(True, args.per_class // 2, classes))
    quiet = factors(engine)
    print("quiet host, calibration on: factors " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(quiet.items())))
    load = f"{args.spinners} spinners, {'floating' if args.float else 'pinned'}"
    spin = spinners(args.spinners, not args.float)
    try:
        for calibrate in (False, True):
            engine, order = asyncio.run(serve(calibrate, args.per_class, classes))
            rows = dispatches(engine, order, args.after)
            for which, name in ((3, "worker-measured"), (4, "engine-clock")):
                errs, spread = errors(rows, which)
                print(f"calibration {'on ' if calibrate else 'off'} ({load}), {name} compute: "
                      f"median |measured/predicted - 1| after request {args.after} of each class: {_pct(errs)}"
                      f"; spread of the measurements themselves: {_pct(spread)}")
            if calibrate:
                loaded = factors(engine)
                print("  factors " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(loaded.items()))
                      + "; slowdown by the load (loaded / quiet factor): "
                      + ", ".join(f"{k} {v / quiet[k]:.2f}x" for k, v in sorted(loaded.items()) if quiet.get(k)))
    finally:
        for p in spin:  # only the processes started here
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
