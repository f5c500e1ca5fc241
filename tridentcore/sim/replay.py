"""Replaying a live run through the simulator, and comparing the decisions (the parity check).

A live engine that keeps its report log (``EngineConfig.log_reports``) has, in ``engine.core``,
everything that happened to it and when: arrivals, each dispatch's measured completion (or failure),
ticks, lost and restored workers, cancellations, forgotten requests, the shutdown. The simulator
runs that log through a fresh policy of the same spec on the same cluster and cost model: it takes
its durations from the log instead of the cost model, and everything else (the state changes, the
policy's decisions, the records) is the same code. Parity holds when the replay's stage spans,
placement changes and request outcomes are *identical* to the live run's: same dispatch ids, GPUs,
batches, step ranges, outcomes and times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.driver import DriverCore
from ..core.policy import Policy, make_policy
from ..core.records import PlacementRow, RequestRow, SpanRow
from .engine import SimResult, Simulator


def replay(core: DriverCore, policy: Policy | None = None, *, sample_s: float = 10.0) -> SimResult:
    """Run a driver core's report log through the simulator (``policy``: a fresh instance of the live
    policy; by default made from its spec)."""
    if core.log is None or core.started_with is None:
        raise ValueError("this run kept no report log (EngineConfig.log_reports) or never started")
    models, expected = core.started_with
    state = core.state
    base = getattr(state.cost, "base", state.cost)  # the profile's model; the replay calibrates it anew
    sim = Simulator(state.cluster, base, policy if policy is not None else make_policy(core.policy.spec),
                    gpu_kind=state.gpu_kind, models=models, expected=expected, replay=core.log, sample_s=sample_s,
                    calibrate=core.calibration is not None)
    return sim.run()


def decisions(spans: Sequence[SpanRow]) -> dict[int, tuple]:
    """Per request, its stage spans in order: dispatch, stage, GPUs, batch, steps, outcome and times."""
    out: dict[int, list] = {}
    for sp in sorted(spans, key=lambda s: (s.request_id, s.started_s, s.dispatch_id)):
        out.setdefault(sp.request_id, []).append(
            (sp.dispatch_id, sp.stage, sp.gpus, sp.batch, sp.start_step, sp.end_step, sp.outcome, sp.queued_s,
             sp.started_s, sp.ended_s, sp.predicted_s))
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class Parity:
    requests: int  # requests of the live run
    identical: int  # requests whose spans and outcome are identical in the replay
    placements_identical: bool
    first_difference: str  # empty when everything is identical

    @property
    def fraction(self) -> float:
        return self.identical / self.requests if self.requests else 1.0

    @property
    def exact(self) -> bool:
        return self.identical == self.requests and self.placements_identical


def compare(live_rows: Sequence[RequestRow], live_spans: Sequence[SpanRow], live_placements: Sequence[PlacementRow],
            sim: SimResult) -> Parity:
    """How many of the live run's requests got exactly the same decisions and outcome in the replay.

    Requests the live engine forgot (``keep_ended``) are forgotten by the replay too: their outcome
    is compared where both still have a row, their spans always."""
    live_dec, sim_dec = decisions(live_spans), decisions(sim.spans)
    sim_rows = {r.request_id: r for r in sim.requests}
    first = ""
    same = 0
    for row in sorted(live_rows, key=lambda r: r.request_id):
        rid = row.request_id
        other = sim_rows.get(rid)
        ok = live_dec.get(rid) == sim_dec.get(rid) and (other is None or other == row)
        same += ok
        if not ok and not first:
            first = (f"request {rid}: live {row.state} {live_dec.get(rid)} vs replay "
                     f"{other.state if other else '(forgotten)'} {sim_dec.get(rid)}")
    placements_same = list(live_placements) == list(sim.placements)
    if placements_same is False and not first:
        first = "placement changes differ"
    return Parity(len(live_rows), same, placements_same, first)
