"""Planner decision time with 128 GPUs and >= 256 queued requests, and simulator wall time.

    python benchmarks/planner_speed.py [--policies trident,trident-paper] [--cluster 16x8xH200] [--runs 5]
        [--against REV [--rounds 4] [--reference-s S]]

(1) Simulator speed: flux-uniform at 1.5 req/s for 1800 s (~2,700 requests) on 16x8xH200, run
    ``--runs`` times in one process: the best wall time (the least disturbed by other work on the
    host), the median, and the host's load average (the first run also imports the placement
    solver, scipy).
    The host's own speed is printed beside it (a fixed pure-Python loop, best of 3), since the same
    host answers at very different speeds from one hour to the next.
(2) Decision time: bursts of 512 requests at once (arrival ``bursts:size=512``) on 16x8xH200, so the
    policy decides with >= 256 requests waiting; each call to ``on_event`` is timed, and the p50 /
    p99 over the calls made while >= 256 requests were waiting is reported.
(3) ``--against REV``: the simulator's wall time relative to another commit's code (a git worktree of
    REV in a temporary folder), in alternating rounds of fresh processes (REV, then this checkout,
    ``--rounds`` times), so that both see the host in the same minutes: the best of each round's runs,
    their ratio per round and its median. With ``--reference-s S`` (REV's time when it was measured,
    e.g. ``--against 7961960 --reference-s 1.07``, the code and time issue 14 started from) the median
    ratio times S: this checkout's time on the host as it was then.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tridentcore.core.metrics import quantile, summarize
from tridentcore.core.policy import PolicyError, make_policy
from tridentcore.bench.scenario import load_scenario
from tridentcore.bench.spec import RunSpec
from tridentcore.sim.engine import simulate


class Timed:
    """Wraps a policy: times each decision and notes how many requests were waiting."""

    def __init__(self, inner):
        self.inner = inner
        self.spec = inner.spec
        self.tick_s = inner.tick_s
        self.samples: list[tuple[int, float]] = []
        self.waiting = 0

    def start(self, view, models, now, expected=None):
        return self.inner.start(view, models, now, expected)

    def on_event(self, view, event, now):
        from tridentcore.core.events import RequestArrived

        if isinstance(event, RequestArrived):
            self.waiting += 1
        t0 = time.perf_counter()
        actions = self.inner.on_event(view, event, now)
        dt = (time.perf_counter() - t0) * 1000
        self.samples.append((self.waiting, dt))
        # requests leave "waiting to start" when their encode is dispatched or they are turned away
        for a in actions:
            name = type(a).__name__
            if name == "Dispatch" and a.stage == "encode":
                self.waiting -= len(a.request_ids)
            elif name in ("Reject", "Fail") and view.request(a.request_id).state.value == "queued":
                self.waiting -= 1
        return actions


def host_loop_s(n: int = 2_000_000) -> float:
    """Best of 3 timings of an ``n``-iteration pure-Python loop: how fast this host runs Python now."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best


_TIME_SIM = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tridentcore.core.policy import make_policy
from tridentcore.bench.scenario import load_scenario
from tridentcore.bench.spec import RunSpec
from tridentcore.sim.engine import simulate
loaded = load_scenario(RunSpec(cluster=sys.argv[3], mix="flux-uniform", duration_s=1800))
reqs = loaded.requests(1.5)
walls = []
for _ in range(int(sys.argv[4]) + 1):  # the first run also imports the placement solver: not counted
    t0 = time.perf_counter()
    simulate(loaded.cluster, loaded.cost, make_policy(sys.argv[2]), reqs, gpu_kind=loaded.gpu_kind)
    walls.append(time.perf_counter() - t0)
print(min(walls[1:]))
"""


def _best_wall(code: Path, label: str, policy: str, cluster: str, runs: int) -> float:
    """The best of ``runs`` simulator runs of the code under ``code``, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _TIME_SIM, str(code), policy, cluster, str(runs)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"timing {label}'s code failed (exit {out.returncode}):\n{out.stderr.strip()[-2000:]}")
    return float(out.stdout.split()[-1])


def _git(here: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True)


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # so that the worktree is removed on the way out (finally)


def against(rev: str, policies: list[str], cluster: str, rounds: int, runs: int, reference_s: float | None) -> None:
    """Alternate rounds of ``rev``'s code and this checkout's (the module docstring, (3))."""
    here = Path(__file__).resolve().parents[1]
    if _git(here, "rev-parse", "--is-inside-work-tree").returncode != 0:
        raise SystemExit(f"--against needs a git checkout: {here} is not one")
    if _git(here, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise SystemExit(f"--against {rev}: no such commit in {here}")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="planner-speed-"))
    tree = tmp / "tree"
    try:
        added = _git(here, "worktree", "add", "--detach", "--quiet", str(tree), rev)
        if added.returncode != 0:
            raise SystemExit(f"git worktree add {rev} failed: {added.stderr.strip()}")
        for policy in policies:  # one worktree for every policy
            ratios = []
            for k in range(rounds):
                old = _best_wall(tree, rev, policy, cluster, runs)
                new = _best_wall(here, "this checkout", policy, cluster, runs)
                ratios.append(new / old)
                print(f"round {k + 1}: {rev} {old:.2f} s, this checkout {new:.2f} s, ratio {new / old:.3f} "
                      f"(load average {os.getloadavg()[0]:.2f})", flush=True)
            ratio = statistics.median(ratios)
            line = f"{policy}: this checkout / {rev}: median ratio {ratio:.3f} over {rounds} rounds"
            if reference_s is not None:
                line += f"; x {reference_s:g} s ({rev} as measured then) = {ratio * reference_s:.2f} s"
            print(line)
    finally:
        if tree.exists():
            _git(here, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="trident,trident-paper")
    ap.add_argument("--cluster", default="16x8xH200")
    ap.add_argument("--runs", type=int, default=5, help="simulator runs per policy (best and median reported)")
    ap.add_argument("--against", metavar="REV", help="instead: the simulator's time against this commit's code (3)")
    ap.add_argument("--rounds", type=int, default=4, help="--against: alternating rounds")
    ap.add_argument("--reference-s", type=float, help="--against: REV's simulator time when it was measured")
    args = ap.parse_args()
    if args.runs < 1 or args.rounds < 1:
        ap.error("--runs and --rounds must be at least 1")
    if args.reference_s is not None and not args.reference_s > 0:
        ap.error("--reference-s must be a time in seconds above 0")
    if not args.against and (args.reference_s is not None or args.rounds != ap.get_default("rounds")):
        ap.error("--rounds and --reference-s go with --against")
    policies = args.policies.split(",")
    for spec in policies:
        try:
            make_policy(spec)
        except PolicyError as e:
            ap.error(str(e))
    if args.against:
        against(args.against, policies, args.cluster, args.rounds, args.runs, args.reference_s)
        return
    for spec in policies:
        loaded = load_scenario(RunSpec(cluster=args.cluster, mix="flux-uniform", duration_s=1800))
        reqs = loaded.requests(1.5)
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            res = simulate(loaded.cluster, loaded.cost, make_policy(spec), reqs, gpu_kind=loaded.gpu_kind)
            walls.append(time.perf_counter() - t0)
        s = summarize(spec, res.requests, res.spans, res.decision_ms)
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{spec}: {len(reqs)} requests, flux-uniform 1.5/s 1800 s on {args.cluster}: "
              f"sim wall best {min(walls):.2f} s, median {statistics.median(walls):.2f} s "
              f"(runs {', '.join(f'{w:.2f}' for w in walls)}; load average {load}), "
              f"attainment {s['attainment']:.3f}; host: a 2M-iteration Python loop {host_loop_s():.3f} s")
        loaded = load_scenario(RunSpec(cluster=args.cluster, mix="flux-uniform", arrival="bursts:size=512",
                                        duration_s=600))
        reqs = loaded.requests(8.0)
        timed = Timed(make_policy(spec))
        simulate(loaded.cluster, loaded.cost, timed, reqs, gpu_kind=loaded.gpu_kind)
        busy = [dt for n, dt in timed.samples if n >= 256]
        every = [dt for _, dt in timed.samples]
        print(f"{spec}: decisions with >= 256 waiting: {len(busy)}; p50 {quantile(busy, 0.5):.2f} ms, "
              f"p99 {quantile(busy, 0.99):.2f} ms, max {max(busy):.2f} ms | all {len(every)} decisions: "
              f"p99 {quantile(every, 0.99):.2f} ms (load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
