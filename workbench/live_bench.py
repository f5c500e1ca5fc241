"""Compare's live mode: the policies run live, one after the other, as ``trident bench --backend live``
runs them (``tridentcore.live_bench.run_policy``: a ``trident serve`` and Locust as child processes
on loopback, the simulator's schedule for the same seed), each stored as a run in the results file.

No Streamlit here: the page passes a progress callback and gets the stored run ids back, then reads
the runs from the store like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tridentcore.sim.bench import Scenario

__all__ = ["DEFAULT_TIME_SCALE", "LivePlan", "default_devices", "plan_live", "run_live"]

DEFAULT_TIME_SCALE = 0.05  # as `trident bench --backend live`: 20x faster than the cost model's time

# (policy index from 1, policy, phase, finished requests, scheduled requests)
Progress = Callable[[int, str, str, int, int], None]


def default_devices(cluster: str) -> str:
    """``trident serve --devices`` for a simulated cluster: the same GPUs, emulated."""
    return f"emulated:{cluster}"


@dataclass(frozen=True)
class LivePlan:
    """A validated live comparison: what :func:`run_live` will run."""

    spec: object  # tridentcore.live_bench.LiveBenchSpec
    requests: int  # per policy
    send_wall_s: float  # wall seconds of sends per policy (schedule span x time scale)


def plan_live(scenario: Scenario, rate: float | None, devices: str, time_scale: float) -> LivePlan:
    """Check a live comparison's inputs (every problem in one ValueError) and build its spec."""
    from tridentcore.live_bench import LiveBenchSpec, cluster_of_devices
    from workloads.schedule import ScheduleError, ScheduleSpec, build_schedule

    problems: list[str] = []
    devices = devices.strip()
    if not devices:
        problems.append("give the devices to serve on, e.g. emulated:2x8xH200 or cpu:2")
    emulated = cluster_of_devices(devices) if devices else None
    if emulated is not None and emulated != scenario.cluster:
        problems.append(f"the emulated devices ({emulated}) differ from the cluster ({scenario.cluster}): "
                        "SLOs would be computed for another cluster")
    if not time_scale > 0:
        problems.append("the time scale must be > 0 (the schedule is sent at t × time scale)")
    if problems:
        raise ValueError("; ".join(problems))
    schedule = ScheduleSpec(mix=scenario.mix or "image-video",
                            arrival=f"trace:{scenario.trace}" if scenario.trace else scenario.arrival,
                            rate=rate if rate is not None else 1.0, duration_s=scenario.duration_s, seed=scenario.seed,
                            slo_scale=scenario.slo_scale, profile=scenario.profile, cluster=scenario.cluster,
                            time_scale=time_scale, trace_model=scenario.trace_model)
    try:
        arrivals = build_schedule(schedule)
    except ScheduleError as exc:
        raise ValueError("; ".join(exc.problems)) from None
    if not arrivals:
        raise ValueError("the workload has no requests (raise the rate or the duration)")
    return LivePlan(LiveBenchSpec(schedule, devices), len(arrivals), float(arrivals[-1].send_s))


def run_live(plan: LivePlan, policies: Sequence[str], db: str, progress: Progress | None = None,
             extra_config: dict | None = None) -> list[str]:
    """Run each policy live and store it in ``db``; returns the stored run ids, in policy order.

    Raises ``tridentcore.live_bench.LiveBenchError`` (a child process failed; runs stored before it
    stay stored). Stopping the page stops the children: ``run_policy`` stops what it started.
    """
    from pathlib import Path

    from tridentcore.live_bench import run_policy
    from tridentcore.store import new_run_id

    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    seed = plan.spec.schedule.seed
    bench_id = new_run_id("bench-live", seed)
    stored: list[str] = []
    for k, policy in enumerate(policies, start=1):
        def report(phase: str, done: int, total: int, k=k, policy=policy) -> None:
            if progress is not None:
                progress(k, policy, phase, done, total)

        result = run_policy(plan.spec, policy, new_run_id(policy, seed), db,
                            extra_config={"bench": bench_id, "source": "workbench", **(extra_config or {})},
                            progress=report)
        stored.append(result.run_id)
    return stored
