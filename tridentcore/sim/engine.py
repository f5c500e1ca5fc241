"""The discrete-event driver: runs a policy on a virtual clock with durations from the cost model.

A heap of timed reports (arrivals, completions, ticks). Each popped report goes to the driver core
(:class:`~tridentcore.core.driver.DriverCore`: absorb, decide, apply, the same code the live engine
runs); the simulator only turns the core's effects into future heap entries (a started dispatch
completes at the cost model's end; a paused diffuse at the step boundary) and keeps the policy's
timer. The same seed gives the same run: no wall clock enters any decision (wall time is only
measured around the policy, to report its decision time).

**Noise** (``noise``: :class:`StageNoise`). A policy plans with the cost model's predictions, but a
real stage takes prediction x error (another GPU, library, co-location, a busy host). With noise on,
each dispatch's compute takes its prediction x ``bias[stage]`` x a lognormal factor of mean 1 and
log-spread ``sigma``; the policy plans with the predictions (it learns the actual times only as
dispatches complete), and a diffuse it pauses stops at the first step boundary it actually
reaches. The factor is a common random number: drawn from the noise's seed, the dispatch's lead
request, its stage and its first step, so a request's stage is as lucky under every policy and at
every rate (a comparison is not decided by who drew the slow runs), and a batch takes its lead
request's draw. Without noise (or ``sigma`` 0 and no bias) durations equal the predictions
exactly, as before.

**Replay.** ``replay`` is a live run's report log (``DriverCore.log``: every arrival, completion,
tick, worker fault and cancellation at the engine time it was handled). The simulator then takes
its reports from the log instead of the cost model and its own timer, so the policy sees exactly
what it saw live; the parity check asserts that it decides exactly as it did live.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
import random
from dataclasses import dataclass, field

from ..core.cluster import ClusterSpec
from ..core.costmodel import CostModel
from ..core.defaults import DEFAULT_SIM_CALIBRATE
from ..core.driver import Completed, DriverCore, Effects, PolicyBug, Report, expected_mix
from ..core.events import RequestArrived, Tick
from ..core.policy import Policy
from ..core.records import GpuSample, PlacementRow, RequestRow, SpanRow
from ..core.recording import request_rows
from ..core.types import STAGES, Shape, StageKind
from ..core.workload import RequestSpec

__all__ = ["PolicyBug", "SimResult", "Simulator", "StageNoise", "simulate"]

logger = logging.getLogger(__name__)

_ARRIVAL, _FINISH, _TICK, _REPORT = 0, 1, 2, 3
STALLED_TICKS = 100  # policy ticks in a row that change nothing while requests wait on an idle cluster: a bug


@dataclass(frozen=True, slots=True)
class StageNoise:
    """How far actual stage times stray from the cost model's predictions (see the module docstring)."""

    sigma: float = 0.0  # log-spread of the lognormal factor (0: none)
    bias: tuple[tuple[str, float], ...] = ()  # (stage, mean factor) pairs; a stage not named: 1
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.sigma) and 0.0 <= self.sigma <= 2.0):
            problems.append(f"sigma must be within [0, 2] (got {self.sigma!r})")
        for stage, factor in self.bias:
            if stage not in STAGES:
                problems.append(f"bias: unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
            if not (math.isfinite(factor) and factor > 0):
                problems.append(f"bias {stage}: the factor must be > 0 (got {factor!r})")
        if problems:
            raise ValueError("stage noise: " + "; ".join(problems))

    @property
    def off(self) -> bool:
        return self.sigma == 0.0 and all(f == 1.0 for _, f in self.bias)

    def factors(self) -> Callable[[str, int, int], float]:
        """One dispatch's factor (prediction x factor = actual) for ``(stage, lead request id, first
        step)``: the same arguments give the same factor in every run of this noise."""
        bias = dict(self.bias)
        mu = -0.5 * self.sigma * self.sigma  # a lognormal of mean 1

        def draw(stage: str, request_id: int, start_step: int) -> float:
            f = bias.get(stage, 1.0)
            if self.sigma <= 0:
                return f
            # a str seed is hashed with SHA-512: stable across processes (unlike hash())
            rng = random.Random(f"{self.seed}:{request_id}:{stage}:{start_step}")
            return f * rng.lognormvariate(mu, self.sigma)

        return draw


@dataclass
class SimResult:
    policy: str
    requests: list[RequestRow]
    spans: list[SpanRow]
    placements: list[PlacementRow]
    gpu_samples: list[GpuSample] = field(default_factory=list)
    decision_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    events: int = 0
    end_s: float = 0.0


class Simulator:
    """One run of one policy over one request sequence (or one replayed live run).

    ``expected``: the workload the policy plans its initial placement for (``core.driver.expected_mix``);
    None: the requests themselves.
    """

    def __init__(
        self,
        cluster: ClusterSpec,
        cost: CostModel,
        policy: Policy,
        requests: Sequence[RequestSpec] = (),
        *,
        gpu_kind: str | None = None,
        sample_s: float = 10.0,
        record: bool = True,
        time_limit_s: float | None = None,
        expected: Mapping[tuple[str, Shape], float] | None = None,
        models: Sequence[str] | None = None,
        replay: Sequence[tuple[float, Report]] | None = None,
        noise: StageNoise | None = None,
        calibrate: bool = DEFAULT_SIM_CALIBRATE,
    ) -> None:
        tick = policy.tick_s
        if tick is not None and not (isinstance(tick, (int, float)) and 1e-3 <= tick < math.inf):
            raise ValueError(f"{policy.spec}: tick_s must be None or a number of seconds >= 0.001 (got {tick!r}): "
                             "the run would never end")
        self.core = DriverCore(cluster, cost, policy, gpu_kind=gpu_kind, record=record, strict=True,
                               timer=time.perf_counter, calibrate=calibrate)
        self.state = self.core.state
        self.policy = policy
        self.replay = replay
        if replay is not None:
            requests = [r.request for _, r in replay if isinstance(r, RequestArrived)]
        self.requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
        self.models = tuple(models) if models is not None else tuple(sorted({r.model for r in self.requests}))
        self.expected = dict(expected) if expected is not None else expected_mix(
            (r.model, r.shape, 1.0) for r in self.requests)
        self.sample_s = sample_s
        self.record = record
        self.time_limit_s = time_limit_s
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self.now = 0.0
        self._tick_pending = False
        self._draw = noise.factors() if noise is not None and not noise.off and replay is None else None
        self._factor: dict[int, float] = {}  # dispatch id -> its actual / predicted compute time
        self._due: dict[int, float] = {}  # dispatch id -> when it completes (a pause moves it)

    # ---------------------------------------------------------------------------------- loop
    def _push(self, t: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        core, state, policy = self.core, self.state, self.policy
        self._effects(core.start(self.models, self.expected, 0.0))
        if self.replay is not None:
            for t, report in self.replay:
                self._push(t, _REPORT, report)
            arrivals = iter(())
            nxt = None
        else:
            arrivals = iter(self.requests)
            nxt = next(arrivals, None)
            if nxt is not None:
                self._push(nxt.arrival_s, _ARRIVAL, nxt)
        heap = self._heap
        idle_ticks = 0
        while heap:
            t, _, kind, payload = heapq.heappop(heap)
            if self.time_limit_s is not None and t > self.time_limit_s:
                break
            if kind == _TICK and nxt is None and not state.requests.live and not state.running:
                # the work is over: a timer set while it ran would stretch the run (and its GPU
                # samples, all idle) to the next tick (replan_s=1e9: 31 years of samples)
                self._tick_pending = False
                continue
            if kind == _FINISH and self._due.get(payload[0]) != t:  # type: ignore[index]
                continue  # superseded (paused: a new end was scheduled); its old time is no event
            self.now = t
            if kind == _ARRIVAL:
                report: Report = RequestArrived(payload)  # type: ignore[arg-type]
                nxt = next(arrivals, None)
                if nxt is not None:
                    self._push(nxt.arrival_s, _ARRIVAL, nxt)
            elif kind == _FINISH:
                did, end_step = payload  # type: ignore[misc]
                if did not in state.running:
                    continue  # (a superseded end was passed over above)
                del self._due[did]
                self._factor.pop(did, None)
                report = Completed(did, end_step)
            elif kind == _TICK:
                self._tick_pending = False
                report = Tick()
            else:
                report = payload  # type: ignore[assignment]
            effects = core.step(report, t)
            self._effects(effects)
            if kind != _TICK or effects.started or effects.ended or state.running or nxt is not None:
                idle_ticks = 0
            else:  # nothing runs, nothing will arrive, and the policy's timer changed nothing
                idle_ticks += 1
                if idle_ticks >= STALLED_TICKS:
                    raise PolicyBug(f"{policy.spec}: stalled at t={t:.1f} s: {state.requests.live} requests wait, "
                                    f"nothing runs and nothing will arrive ({idle_ticks} ticks changed nothing)")
            if (self.replay is None and policy.tick_s and not self._tick_pending
                    and (state.requests.live or nxt is not None)):
                self._tick_pending = True
                self._push(math.floor(t / policy.tick_s + 1e-9) * policy.tick_s + policy.tick_s, _TICK, None)
        # anything still live at a time limit is reported as it stands: not done
        rec = core.recorder
        return SimResult(
            policy=policy.spec, requests=request_rows(state.requests), spans=rec.spans, placements=rec.placements,
            gpu_samples=rec.gpu_samples(len(state.gpus), self.now, self.sample_s) if self.record else [],
            decision_ms=list(core.decision_ms), wall_s=time.perf_counter() - wall0, events=core.events,
            end_s=self.now,
        )

    def _effects(self, effects: Effects) -> None:
        """A started dispatch completes at its predicted end (x its noise factor), a paused one at the
        step boundary it reaches (replay: completions come from the log instead).

        The truth is the profile's prediction x the noise: a calibrated prediction (``run.factor``
        != 1) is the policy's belief, not the time the stage takes."""
        if self.replay is not None:
            return
        for s in effects.started:
            run = s.run
            if self._draw is None and run.factor == 1.0:
                self._finish_at(run.id, run.predicted_end_s, None)
                continue
            a = run.action
            f = self._factor[run.id] = (self._draw(a.stage, a.request_ids[0], a.start_step)
                                        if self._draw is not None else 1.0) / run.factor
            # the end step is explicit: a pause asked for later may fall after the actual end
            end = run.action.end_step if run.action.stage == StageKind.DIFFUSE else None
            self._finish_at(run.id, run.compute_start_s + (run.predicted_end_s - run.compute_start_s) * f, end)
        for p in effects.paused:
            f = self._factor.get(p.run.id)
            if f is None:
                self._finish_at(p.run.id, p.at_s, None)
                continue
            run, step_s = p.run, p.run.step_s * f  # the step time it actually runs at
            done = 0 if step_s <= 0 or self.now <= run.compute_start_s else math.ceil(
                (self.now - run.compute_start_s) / step_s - 1e-9)
            stop = max(p.step, run.action.start_step + done)
            if stop < run.action.end_step:  # else it ends at its own (noisy) end, already scheduled
                self._finish_at(run.id, max(self.now, run.compute_start_s + (stop - run.action.start_step) * step_s),
                                stop)

    def _finish_at(self, did: int, t: float, end_step: int | None) -> None:
        self._due[did] = t
        self._push(t, _FINISH, (did, end_step))


def simulate(cluster: ClusterSpec, cost: CostModel, policy: Policy, requests: Sequence[RequestSpec], **kw) -> SimResult:
    return Simulator(cluster, cost, policy, requests, **kw).run()
