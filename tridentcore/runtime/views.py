"""Read-only views of a live engine for the HTTP API: one request's progress, the cluster snapshot.

Plain dicts in engine seconds (but a rejection's ``retry_after_s``: wall seconds, for the
Retry-After header); device ids are global (``engine.device_offset`` added), so the views
of the engines of a mixed run can be merged as they are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..core.lifecycle import WAITING_FOR, RequestState
from ..core.records import SpanRow
from ..core.slo import met_slo
from ..core.types import STAGES, StageKind

if TYPE_CHECKING:
    from .engine import Engine

def describe(engine: Engine, request_id: int) -> dict | None:
    """State, the stage it is in or waits for, progress and per-stage timings."""
    rec = engine.state.requests.get(request_id)
    if rec is None:
        return None
    run = engine.view.running_of(request_id)
    state = rec.state
    stage = run.action.stage if run is not None else WAITING_FOR.get(state)
    encoding = engine.encoding(request_id)
    if encoding:  # its decode ended; its media (PNG, WebP) is being encoded: not yet done for its client
        state, stage = RequestState.DECODING, StageKind.DECODE
    spec = rec.spec
    steps_done = rec.steps_done  # as of its last diffuse piece; the one running now, as its worker says
    if run is not None and run.action.stage == StageKind.DIFFUSE:
        reached = engine.workers[run.action.gpus[0]].progress(run.id)
        if reached is not None:
            steps_done = max(steps_done, reached)
    return {
        "id": request_id, "state": state.value, "stage": stage, "model": spec.model,
        "reason": rec.reason if state.terminal else "", "steps_done": steps_done, "steps": spec.shape.steps,
        # a rejection's estimate of how much later the same request could be admitted; never (no wait
        # makes it: it can never fit, or no degree meets its SLO even alone): ``retry_useless``
        "retry_after_s": rec.retry_s * engine.clock.scale
        if state is RequestState.REJECTED and 0 < rec.retry_s < math.inf else None,
        "retry_useless": state is RequestState.REJECTED and rec.retry_s == math.inf,
        "arrival_s": spec.arrival_s, "deadline_s": spec.deadline_s, "finish_s": rec.finish_s,
        "met_slo": met_slo(state, rec.finish_s, spec.deadline_s),
        "ooms": rec.ooms, "preemptions": rec.preemptions,
        "stages": [span_dict(engine, sp) for sp in engine.spans_of(request_id)],
        # wall ms its media took to encode, after the decode's span (None: not yet, or none made)
        "media_ms": None if encoding or request_id not in engine.media_s else 1000 * engine.media_s[request_id],
    }


def span_dict(engine: Engine, sp: SpanRow) -> dict:
    out = {"stage": sp.stage, "devices": [g + engine.device_offset for g in sp.gpus], "degree": sp.degree,
           "batch": sp.batch,
           "outcome": sp.outcome, "queued_ms": 1000 * (sp.started_s - sp.queued_s),
           "run_ms": 1000 * (sp.ended_s - sp.started_s), "predicted_ms": 1000 * sp.predicted_s,
           "load_ms": 1000 * sp.load_s, "transfer_ms": 1000 * sp.transfer_s, "start_step": sp.start_step,
           "end_step": sp.end_step}
    if sp.stage == StageKind.DECODE:
        out["tiled"] = engine.ran_tiled(sp.dispatch_id)
    return out


def snapshot(engine: Engine) -> dict:
    """Devices, resident stage instances (the live placement), queues and memory."""
    state, off = engine.state, engine.device_offset
    devices = []
    instances: dict[tuple[str, str], list[int]] = {}
    for g, spec in enumerate(state.gpus):
        for key in state.resident[g]:
            instances.setdefault(key, []).append(g + off)
        did = state.busy[g]
        run = state.running.get(did) if did is not None else None
        worker = engine.workers[g]
        devices.append({
            "id": g + off, "node": spec.node, "kind": spec.kind, "worker": worker.kind,
            "alive": bool(state.alive[g]), "busy": did is not None,
            "running": None if run is None else {"dispatch": run.id, "stage": run.action.stage,
                                                 "requests": list(run.action.request_ids)},
            "mem_gib": spec.mem_gib, "weights_gib": state.weights_gib[g], "activations_gib": state.act_gib[g],
            "free_gib": state.free_gib(g),
            "resident": [f"{m}/{s}" for m, s in sorted(state.resident[g])],
            "pid": getattr(worker, "pid", None) if state.alive[g] else None,  # (a dead one kept its last: outside test 133)
            "slowdown": slowdown_of(worker),
        })
    queues = {str(s): 0 for s in STAGES}
    running = {str(s): 0 for s in STAGES}
    live = engine.live_ids()
    for rid in live:
        stage = WAITING_FOR.get(state.requests[rid].state)
        if stage is not None:
            queues[stage] += 1
    for run in state.running.values():
        running[run.action.stage] += len(run.action.request_ids)
    return {
        "devices": devices,
        "instances": [{"model": m, "stage": s, "devices": gs} for (m, s), gs in sorted(instances.items())],
        "queues": queues, "running": running, "live_requests": len(live),
        "policy": engine.policy.spec, "cluster": engine.cluster.label, "profile": engine.profile,
        "time_scale": engine.config.time_scale, "now_s": engine.now() if engine.started else 0.0,
        "clock": clock(engine), "calibration": calibration(engine),
    }


def clock(engine: Engine) -> dict:
    """How the engine clock relates to the wall clock (``runtime/clock.py``): wall seconds since the
    start, how many of them the server's loop was busy (counted at real speed, not scaled), and
    whether it could tell them apart."""
    c = engine.clock
    started = engine.started
    return {"time_scale": engine.config.time_scale, "separates_overhead": c.separates,
            "wall_s": c.wall_s() if started else 0.0, "busy_wall_s": c.busy_s() if started else 0.0}


def slowdown_of(worker) -> float:
    """A worker's ``--slowdown`` (a testing aid; 1: the device as it is)."""
    return float(getattr(worker, "slowdown", 1.0))


def slowdown(engine: Engine) -> float:
    """The engine's workers' ``--slowdown`` (the largest; 1: none)."""
    return max((slowdown_of(engine.workers[g]) for g in range(len(engine.workers))), default=1.0)


def workers(engine: Engine) -> dict:
    """What ran the stages: the worker kinds (``cpu``, ``cuda``, ``emulated``, ``ray-cpu`` ...), the
    restarts of lost workers, and a Ray cluster's address (None: a private instance) where Ray ran them."""
    pool = engine.workers
    kinds = sorted({str(getattr(pool[g], "kind", "")) for g in range(len(pool))})
    out: dict = {"kinds": kinds, "restarts": sum(int(getattr(pool[g], "restarts", 0)) for g in range(len(pool)))}
    if any(k.startswith("ray") for k in kinds):
        out["ray_address"] = getattr(pool, "address", None)
    return out


def calibration(engine: Engine) -> list[dict]:
    """Per model and stage: the measured / predicted factor the policy and new deadlines use."""
    cal = engine.core.calibration
    return [] if cal is None else [{**row, "kind": engine.state.gpu_kind} for row in cal.snapshot()]
