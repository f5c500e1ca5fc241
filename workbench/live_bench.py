"""Compare's live mode: the policies run live, one after the other, as ``trident bench --backend live``
runs them (``tridentcore.bench.live.LiveBench``: a ``trident serve`` and Locust as child processes
on loopback, the simulator's schedule for the same seed), each stored as a run in the results file.

No Streamlit here. :func:`run_live` runs in a job process of its own (``workbench.live_jobs``), which
reports its progress to the page; the page reads the stored runs from the store like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tridentcore.bench.spec import RunSpec
from tridentcore.core.defaults import DEFAULT_LIVE_TIME_SCALE

__all__ = ["DEFAULT_TIME_SCALE", "DatabaseUnavailable", "LivePlan", "default_devices", "live_warnings", "plan_live",
           "run_live"]

DEFAULT_TIME_SCALE = DEFAULT_LIVE_TIME_SCALE  # as `trident bench --backend live`

# (policy index from 1, policy, phase, finished requests, scheduled requests)
Progress = Callable[[int, str, str, int, int], None]


def default_devices(cluster: str) -> str:
    """``trident serve --devices`` for a simulated cluster: the same GPUs, emulated."""
    return f"emulated:{cluster}"


class DatabaseUnavailable(RuntimeError):
    """The results database cannot take a run (locked by another process, not a database): no policy ran."""


@dataclass(frozen=True)
class LivePlan:
    """A validated live comparison: what :func:`run_live` will run."""

    spec: object  # tridentcore.bench.live.LiveBenchSpec
    requests: int  # per policy
    send_wall_s: float  # wall seconds of sends per policy (schedule span x time scale)


def plan_live(scenario: RunSpec, rate: float | None, devices: str, time_scale: float) -> LivePlan:
    """Check a live comparison's inputs (every problem in one ValueError) and build its spec."""
    from tridentcore.bench.live import LiveBenchSpec, cluster_of_devices
    from tridentcore.bench.scenario import schedule_requests
    from tridentcore.bench.spec import RunSpecError
    from tridentcore.runtime.devices import SetupError, parse_devices

    problems: list[str] = []
    devices = devices.strip()
    if not devices:
        problems.append("give the devices to serve on, e.g. emulated:2x8xH200 or cpu:2")
    else:  # what `trident serve --devices` would refuse, refused here (not by a job that fails)
        try:
            kinds = {d.kind for d in parse_devices(devices)}
        except SetupError as exc:
            problems += exc.problems
        else:
            if "emulated" not in kinds and time_scale != 1.0:
                problems.append(f"{devices} runs at wall time: set the time scale to 1 (it stretches emulated "
                                "devices only)")
    emulated = cluster_of_devices(devices) if devices and not problems else None
    if emulated is not None and emulated != scenario.cluster:
        problems.append(f"the emulated devices ({emulated}) differ from the cluster ({scenario.cluster}): "
                        "SLOs would be computed for another cluster")
    if not time_scale > 0:
        problems.append("the time scale must be > 0 (the schedule is sent at t × time scale)")
    if problems:
        raise ValueError("; ".join(problems))
    run = scenario.replace(rate=rate if rate is not None else scenario.rate, backend="live", devices=devices,
                           time_scale=time_scale)
    try:
        requests = schedule_requests(run)
    except RunSpecError as exc:
        raise ValueError("; ".join(exc.problems)) from None
    if not requests:
        raise ValueError("the workload has no requests (raise the rate or the duration)")
    return LivePlan(LiveBenchSpec(run), len(requests), float(requests[-1].arrival_s * time_scale))


# below this time scale an emulated stage's wall time (a 50 ms encode: 0.5 ms) is no longer large against the
# server's own time per stage (about a millisecond, benchmarks/serve_overhead.py): attainment then measures
# the harness (an outside test: trident from 100 % at 0.05 to 25 % at 0.001)
MIN_FAITHFUL_TIME_SCALE = 0.01
LONG_JOB_S = 3600.0  # a comparison past this much wall time is said before it starts


def live_warnings(plan: LivePlan, policies: int) -> list[str]:
    """What to tell before a live comparison starts that is allowed but likely not meant: a time scale
    so small that the server's overhead dominates, a comparison that takes hours."""
    run = plan.spec.run
    out = []
    if "emulated" in (run.devices or "") and run.time_scale < MIN_FAITHFUL_TIME_SCALE:
        out.append(f"time scale {run.time_scale:g} is below {MIN_FAITHFUL_TIME_SCALE:g}: emulated stages then take "
                   "less wall time than the server's own work per stage (about a millisecond), and attainment "
                   "measures the harness more than the policy")
    total_s = policies * plan.send_wall_s
    if total_s >= LONG_JOB_S:
        out.append(f"the sends alone take {total_s / 3600:.1f} h of wall time ({policies} × {plan.send_wall_s:.0f} s; "
                   "lower the time scale or the duration for a shorter comparison)")
    return out


def run_live(plan: LivePlan, policies: Sequence[str], db: str, progress: Progress | None = None,
             extra_config: dict | None = None, stored: list[str] | None = None,
             db_wait_s: float | None = None) -> list[str]:
    """Run each policy live and store it in ``db``; returns the stored run ids, in policy order.

    ``stored``: a list the ids are appended to as each run is stored, the run of a policy that ended
    early included (interrupted, or its server or Locust died): what a caller still has when this raises.
    Raises ``tridentcore.bench.live.LiveBenchError`` (a child process failed; runs stored before it
    stay stored) and ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM inside ``sigterm_interrupts``: the
    run in progress stored, as interrupted if the stop cut its load short). Its children are stopped either way (``LiveBench``
    stops what it started). The workbench runs this in a job process of its own (``live_jobs``).
    A database that cannot take a run (another process's lock held past ``db_wait_s``, default
    ``DEFAULT_DB_WAIT_S``; another kind of file) raises ``DatabaseUnavailable`` before any policy runs.
    """
    from pathlib import Path

    import duckdb

    from tridentcore.bench.live import LiveBench, LiveRunCrashed
    from tridentcore.bench.orphans import recover_orphans
    from tridentcore.core.defaults import DEFAULT_DB_WAIT_S
    from tridentcore.store import ResultsStore, new_run_id

    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    wait_s = DEFAULT_DB_WAIT_S if db_wait_s is None else db_wait_s
    recover_orphans(db, wait_s=wait_s)  # runs of killed live benches on this database: stored, shown on the Runs page
    try:  # before a minute per policy is spent: it used to fail only when the first run was stored
        ResultsStore(db, lock_wait_s=wait_s).check()
    except (duckdb.Error, OSError) as exc:
        raise DatabaseUnavailable(f"the results database {db} cannot take runs: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    seed = plan.spec.run.seed
    bench_id = new_run_id("bench-live", seed)
    stored = [] if stored is None else stored
    for k, policy in enumerate(policies, start=1):
        def report(phase: str, done: int, total: int, k=k, policy=policy) -> None:
            if progress is not None:
                progress(k, policy, phase, done, total)

        try:
            result = LiveBench(plan.spec, policy, new_run_id(policy, seed), db,
                               extra_config={"bench": bench_id, "source": "workbench", **(extra_config or {})},
                               progress=report).run()
        except (KeyboardInterrupt, LiveRunCrashed) as exc:  # (LiveBenchInterrupted: a KeyboardInterrupt)
            partial = getattr(exc, "partial", None)
            if partial is not None:
                stored.append(partial.run_id)
            raise
        stored.append(result.run_id)
    return stored
