"""Sequence-parallel (Ulysses) speed-up at degree 2 on CPU, measured, against the cost model's prediction.

    python benchmarks/parallel_speedup.py [--model tiny-flux-xl] [--sizes 256,512,768] [--steps 2]
                                          [--repeats 3] [--quick] [--json]

For each square size it times one denoising step (a diffuse of ``--steps`` steps, divided by them;
the median of ``--repeats`` timed calls after one warm-up) three ways, in this process (the lead):

* degree 1, one torch thread: what a CPU worker serves with;
* degree 2, one torch thread in each of 2 processes (``LocalGroup``, gloo on 127.0.0.1), timed on
  the lead as ``trident profile --degrees`` times it. The speed-up is this against the line above:
  every process computes on one core, so the figure is what splitting the sequence buys, not what a
  second core buys inside one process;
* degree 1 with two torch threads, for comparison: the other way to spend the second core.

Predicted speed-ups come from the shipped ``cpu`` profile twice: without the model's degree-2
rows (the cost model then falls back to the analytic scaling model, ``core/scaling.py``) and with
them (then it reads the rows, measured earlier by ``trident profile --degrees 1,2``: a check of
the profile against today's host, not an independent prediction).

Communication per step, two ways: (1) *in step*: on the lead, the functional collectives the
kernel calls (``all_to_all_single`` around each attention, ``all_gather_tensor`` at the output)
are wrapped in a timer for ``--repeats`` extra diffuse calls (the median of their sums); this includes the time the lead
waits for the slower member at each collective. (2) *no compute*: the same sequence of collectives
(same tensor sizes, even splits) replayed by two fresh processes with nothing between them: the
transfer and latency cost alone. The gap between (1) and (2) is waiting (load imbalance, the two
processes not reaching the collective together). The lead's call broadcast (once per diffuse, not
per step) is outside both. The load average is printed at the start and the end: on a shared 2-core
host, anything else running takes a core away from one of the members.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from datetime import timedelta

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _median_step_ms(fn, steps: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000 / steps


@contextlib.contextmanager
def timed_collectives(log: list):
    """Wrap torch's functional all-to-all and all-gather (what diffusers' Ulysses calls) in a timer.

    Each call waits for its result inside the timer and appends ``(kind, input numel, seconds)``.
    """
    import torch.distributed._functional_collectives as funcol

    a2a, gather = funcol.all_to_all_single, funcol.all_gather_tensor

    def _waited(x):
        return x.wait() if isinstance(x, funcol.AsyncCollectiveTensor) else x

    def timed_a2a(x, *args, **kwargs):
        t0 = time.perf_counter()
        out = _waited(a2a(x, *args, **kwargs))
        log.append(("a2a", x.numel(), time.perf_counter() - t0))
        return out

    def timed_gather(x, *args, **kwargs):
        t0 = time.perf_counter()
        out = _waited(gather(x, *args, **kwargs))
        log.append(("gather", x.numel(), time.perf_counter() - t0))
        return out

    funcol.all_to_all_single, funcol.all_gather_tensor = timed_a2a, timed_gather
    try:
        yield log
    finally:
        funcol.all_to_all_single, funcol.all_gather_tensor = a2a, gather


def _replay_steps(sequence, repeats: int) -> float:
    """Run ``sequence`` (one step's collectives) ``repeats`` times in the current world; median ms per step."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    buffers = [(kind, torch.randn(n), [torch.empty(n) for _ in range(world)] if kind == "gather" else torch.empty(n))
               for kind, n in sequence]
    times = []
    for _ in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        for kind, x, out in buffers:
            if kind == "a2a":
                dist.all_to_all_single(out, x)
            else:
                dist.all_gather(out, x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1000


def _replay_member(port: int, sequences, repeats: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=1, world_size=2, timeout=timedelta(seconds=120))
    try:
        for sequence in sequences:
            _replay_steps(sequence, repeats)
    finally:
        dist.destroy_process_group()


def replay(sequences: list, repeats: int) -> list[float]:
    """The no-compute replay of each step's collectives on two fresh processes; ms per step each."""
    import multiprocessing as mp

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, timeout=timedelta(seconds=120), wait_for_workers=False)
    proc = mp.get_context("spawn").Process(target=_replay_member, args=(store.port, sequences, repeats), daemon=True)
    proc.start()
    dist.init_process_group("gloo", store=store, rank=0, world_size=2, timeout=timedelta(seconds=120))
    try:
        return [_replay_steps(sequence, repeats) for sequence in sequences]
    finally:
        dist.destroy_process_group()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()  # the process this function started


def predicted(model: str, size: int) -> tuple[float | None, float | None]:
    """Speed-up at degree 2 from the shipped cpu profile: (scaling model, with the degree-2 rows)."""
    from tridentcore.core.costmodel import CostModel, CostModelError
    from tridentcore.core.types import Shape
    from tridentcore.profiles import load_profile

    rows = load_profile("cpu").rows
    shape = Shape(size, size)
    out = []
    for table in ([r for r in rows if not (r.model == model and r.degree > 1)], rows):
        try:
            out.append(CostModel(table).speedup(model, "diffuse", shape, 2))
        except CostModelError:
            out.append(None)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-flux-xl")
    ap.add_argument("--sizes", default="256,512,768", help="square sizes (pixels)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one size (256), one step, one repeat: a smoke test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.steps, args.repeats = "256", 1, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    load_start = _loadavg()

    import torch

    from tridentcore.pipelines import load_pipeline
    from tridentcore.pipelines.parallel import DiffuseCall
    from tridentcore.runtime.local_group import LocalGroup

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model)
    build_s = time.perf_counter() - t0
    emb = pipe.encode(["a photo of a cat"])
    steps, reps = args.steps, args.repeats
    res = {s: {"size": s, "image_tokens": pipe.image_tokens(s, s, 1)} for s in sizes}

    def alone(s):
        return lambda: pipe.diffuse(emb, (s, s, 1), seed=0, steps=steps)

    for s in sizes:
        res[s]["d1_ms"] = _median_step_ms(alone(s), steps, reps)
    torch.set_num_threads(2)
    for s in sizes:
        res[s]["d1_2threads_ms"] = _median_step_ms(alone(s), steps, reps)
    torch.set_num_threads(1)
    sequences = []
    with LocalGroup(args.model, "cpu", "float32", 2, cores=2) as group:
        for s in sizes:
            call = DiffuseCall(s, s, 1, seed=0, steps=steps)
            res[s]["d2_ms"] = _median_step_ms(lambda: group.diffuse(pipe, call, emb), steps, reps)
            spent = []
            for _ in range(reps):  # instrumented calls, apart from the timed ones: the median of their sums
                log: list = []
                with timed_collectives(log):
                    group.diffuse(pipe, call, emb)
                spent.append(sum(x[2] for x in log) * 1000 / steps)
            per_step = len(log) // steps
            res[s]["collectives_per_step"] = per_step
            res[s]["in_step_comm_ms"] = statistics.median(spent)
            res[s]["bytes_per_step"] = sum(x[1] for x in log[:per_step]) * 4
            sequences.append([(kind, n) for kind, n, _ in log[:per_step]])
    for s, ms in zip(sizes, replay(sequences, max(reps, 3))):
        res[s]["no_compute_comm_ms"] = ms
    for s in sizes:
        r = res[s]
        r["speedup"] = r["d1_ms"] / r["d2_ms"]
        r["speedup_2threads"] = r["d1_ms"] / r["d1_2threads_ms"]
        r["predicted_scaling"], r["predicted_rows"] = predicted(args.model, s)
    load_end = _loadavg()
    if args.json:
        print(json.dumps({"model": args.model, "steps": steps, "repeats": reps, "build_s": build_s,
                          "loadavg_start": load_start, "loadavg_end": load_end, "rows": list(res.values())}))
        return
    _print(args.model, steps, reps, build_s, [res[s] for s in sizes], load_start, load_end)


def _print(model, steps, reps, build_s, rows, load_start, load_end) -> None:
    def f(x):
        return "n/a" if x is None else f"{x:.2f}x"

    print(f"{model} (built in {build_s:.2f} s), one denoising step: median of {reps} diffuse calls of {steps} steps; "
          f"load average {load_start} at start, {load_end} at end")
    print("| size | image tokens | degree 1, 1 thread | degree 1, 2 threads | degree 2, 1 thread each | speed-up "
          "| 2 threads' speed-up | predicted: scaling model | predicted: degree-2 rows | collectives / step "
          "| comm in step (lead) | comm, no compute |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['size']}² | {r['image_tokens']} | {r['d1_ms']:.1f} ms | {r['d1_2threads_ms']:.1f} ms "
              f"| {r['d2_ms']:.1f} ms | **{r['speedup']:.2f}x** | {r['speedup_2threads']:.2f}x "
              f"| {f(r['predicted_scaling'])} | {f(r['predicted_rows'])} | {r['collectives_per_step']} "
              f"({r['bytes_per_step'] / 2**20:.1f} MiB) | {r['in_step_comm_ms']:.1f} ms | {r['no_compute_comm_ms']:.1f} ms |")
    cells = "; ".join(
        f"{r['size']}²: {r['speedup']:.2f}x (2 threads {r['speedup_2threads']:.2f}x; predicted "
        f"{f(r['predicted_scaling'])} by the scaling model, {f(r['predicted_rows'])} from the degree-2 rows), "
        f"comm {r['in_step_comm_ms']:.0f} ms/step in step, {r['no_compute_comm_ms']:.0f} ms with no compute, "
        f"of {r['d2_ms']:.0f} ms" for r in rows)
    print()
    print(f"README: | sequence-parallel speed-up at degree 2 on CPU ({model}, {steps}-step diffuse; degree 1 with 1 thread vs "
          f"2 processes with 1 thread each) and the cost model's prediction | `python benchmarks/parallel_speedup.py` "
          f"| {cells}; load average {load_start} -> {load_end} |")


if __name__ == "__main__":
    main()
