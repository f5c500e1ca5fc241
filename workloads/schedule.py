"""Open-loop schedules for a load generator: the simulator's requests, as timed HTTP sends.

A :class:`ScheduleSpec` names a workload the way ``trident bench`` and ``trident simulate`` do
(mix or trace, arrival process, rate, duration, seed, SLO scale, the profile and cluster the SLOs
are computed for). :func:`build_schedule` draws the requests with the *same* function the
simulator uses (``tridentcore.sim.bench.load_scenario(...).requests(rate)``), so for the same
arguments a live run and a simulated run see the same requests at the same (workload) times, with
the same seeds and deadlines.

Times: ``rate`` and ``duration_s`` are in workload seconds, like the simulator's; an arrival at
workload time ``t`` is sent ``t x time_scale`` wall seconds after the run starts. Against
``trident serve --time-scale S`` (emulated GPUs that sleep S x the cost model's durations) pass
the same S, and the server's engine clock and the schedule agree; against real devices use 1.

Light on purpose (Locust imports it): the standard library, ``yaml`` and ``tridentcore`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tridentcore.core.workload import ARRIVAL_FORMS, RequestSpec, parse_arrival

__all__ = ["Arrival", "ScheduleError", "ScheduleSpec", "build_schedule", "check_spec", "request_body"]

TRACE_PREFIX = "trace:"


class ScheduleError(ValueError):
    """A schedule that cannot be built; ``problems`` lists every problem (``--option: message``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class ScheduleSpec:
    mix: str = "sd3-mixed"
    arrival: str = "poisson"  # poisson | gamma:cv=K | constant | bursts:size=N | trace:FILE
    rate: float = 1.0  # requests per workload second (ignored by a trace)
    duration_s: float = 60.0  # workload seconds of arrivals (ignored by a trace)
    seed: int = 0
    slo_scale: float = 3.0
    profile: str = "h200"
    cluster: str = "2x8xH200"
    time_scale: float = 1.0  # wall seconds per workload second
    trace_model: str | None = None  # model of a paper-format trace's requests

    @property
    def trace(self) -> str | None:
        return self.arrival[len(TRACE_PREFIX):] if self.arrival.startswith(TRACE_PREFIX) else None

    def scenario(self):
        """The simulator's :class:`~tridentcore.sim.bench.Scenario` of this schedule."""
        from tridentcore.sim.bench import Scenario

        trace = self.trace
        return Scenario(profile=self.profile, cluster=self.cluster, mix=None if trace else self.mix, trace=trace,
                        trace_model=self.trace_model, arrival="poisson" if trace else self.arrival,
                        duration_s=self.duration_s, slo_scale=self.slo_scale, seed=self.seed)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scheduled request: when to send it and what to send."""

    index: int  # position in the schedule (the simulator's request id)
    t_s: float  # workload seconds
    send_s: float  # wall seconds after the run's start
    spec: RequestSpec
    name: str  # "sd3-medium 1024x1024" (model and shape: Locust's request name)
    path: str  # /v1/images/generations or /v1/videos/generations
    body: dict = field(hash=False, compare=False)


def _finite_positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_spec(spec: ScheduleSpec) -> list[str]:
    """Problems with the numbers and the arrival form (files are checked by :func:`build_schedule`)."""
    problems = []
    if spec.trace is None:
        if not _finite_positive(spec.rate):
            problems.append(f"--rate: must be a number > 0 (requests per second), got {spec.rate!r}")
        if not _finite_positive(spec.duration_s):
            problems.append(f"--duration: must be a number of seconds > 0, got {spec.duration_s!r}")
        try:
            parse_arrival(spec.arrival)
        except ValueError as exc:
            problems.append(f"--arrival: {exc} (forms: {ARRIVAL_FORMS}, trace:FILE)")
    elif not spec.trace:
        problems.append("--arrival: trace:FILE needs a file name")
    if not _finite_positive(spec.time_scale):
        problems.append(f"--time-scale: must be a number > 0 (wall seconds per workload second), got {spec.time_scale!r}")
    if not _finite_positive(spec.slo_scale):
        problems.append(f"--slo-scale: must be a number > 0, got {spec.slo_scale!r}")
    if not isinstance(spec.seed, int) or isinstance(spec.seed, bool):
        problems.append(f"--seed: must be an integer, got {spec.seed!r}")
    return problems


def request_body(spec: RequestSpec) -> tuple[str, dict]:
    """The endpoint and JSON body of one request (video when it has more than one frame)."""
    shape = spec.shape
    body = {"model": spec.model, "prompt": spec.prompt, "size": f"{shape.width}x{shape.height}", "n": 1,
            "steps": shape.steps, "seed": spec.seed, "slo_ms": 1000.0 * spec.slo_s, "response_format": "b64_json"}
    if spec.guidance is not None:
        body["guidance"] = spec.guidance
    if spec.negative_prompt:
        body["negative_prompt"] = spec.negative_prompt
    if shape.frames > 1:
        body["frames"] = shape.frames
        return "/v1/videos/generations", body
    return "/v1/images/generations", body


def build_schedule(spec: ScheduleSpec) -> list[Arrival]:
    """The requests of ``spec`` in send order; :class:`ScheduleError` lists every problem."""
    problems = check_spec(spec)
    if problems:
        raise ScheduleError(problems)
    from tridentcore.sim.bench import load_scenario

    try:
        loaded = load_scenario(spec.scenario())
        requests = loaded.requests(None if spec.trace else spec.rate)
    except (ValueError, LookupError, OSError) as exc:
        option = "--arrival" if spec.trace else "--mix/--profile/--cluster"
        raise ScheduleError([f"{option}: {' '.join(str(exc).split())}"]) from None
    out = []
    for r in requests:
        path, body = request_body(r)
        out.append(Arrival(r.id, r.arrival_s, r.arrival_s * spec.time_scale, r, f"{r.model} {r.shape.label()}", path,
                           body))
    return out
