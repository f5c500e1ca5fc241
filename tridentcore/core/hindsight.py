"""The hindsight bound: the most SLO attainment any scheduler could reach on one request stream.

The capacity ceilings (:mod:`.capacity`) price a workload's classes and divide the cluster's
GPU-seconds by them: they know the mix but not when its requests arrive, so a burst that needs more
GPUs than the cluster has counts the same as a steady stream. This bound knows the stream. It is a
linear program over time slots of ``slot_s`` seconds that relaxes everything a real scheduler must
respect except the three things no scheduler can escape:

* a request's work happens after it arrives and, to meet its SLO, before its deadline;
* in any slot, the GPU-seconds used are at most ``num_gpus x slot_s``;
* each stage runs at a speed some (degree, batch) of the cost model gives it, one at a time.

Per request ``r`` the program has a completion ``z_r`` in [0, 1] and, per stage, option and slot, the
fraction ``y`` of that slot the stage runs at that option. An option is one (degree ``d``, batch
``b``) of the stage: the request progresses ``slot_s / T(d, b)`` of the stage per slot and holds
``d / b`` GPUs (its share of a batch). Every stage must progress ``z_r``; per slot a request runs at
most one option at a time (its ``y`` sum to 1 or less), and the GPUs held sum to ``num_gpus`` or
less. Maximise the lowest class's mean ``z`` (fair goodput's criterion: every class attains).

What it relaxes, so the optimum is an upper bound on every real schedule's lowest class attainment
(a real schedule is a feasible point with ``z`` 0 or 1): stage order within a request (each stage has
its own window: encode in [arrival, deadline - the fastest diffuse and decode], diffuse after the
fastest encode and before the deadline less the fastest decode, decode after the fastest encode and
diffuse), requests finished in part, degrees and batches changed at any instant and at no cost
(batch partners, node boundaries, weight loads, memory and transfers are ignored), slots rounded
outwards to whole slots, and perfect knowledge of the future. The options are every degree up to a
node's GPUs and every batch the cost model prices (:func:`stage_options`); those inside the convex
hull of the others (and of standing still) are dropped, since a mix of the hull's options does as
well in every slot, and long runs of batch sizes are replaced by corners under the hull
(:func:`_compress`). The bound holds for the cost model's stage times: a run whose stages are
faster than predicted (noise, a biased profile) can beat it.
Encode and decode, one GPU each, are priced by one option that is as fast as their fastest and as
cheap in GPU-seconds as their cheapest (a mix of it does at least as well as any real option), and
may overlap the request's diffuse within a slot; only the diffuse's options share the
one-at-a-time limit. Both keep the program small and only loosen the bound.

``integral`` makes it tighter: every ``z_r`` is 0 or 1 (a mixed integer program, HiGHS's branch
and bound), no request is finished in part. Still an upper bound on every schedule; past the time
limit the solver's proven bound is reported, which is still one. (Not offered: keeping a stage to
the options that alone would finish it in its window. ``trident`` does run a stage in part at such
an option: a diffuse paused and resumed late takes the fewest GPUs that still finish its remaining
steps in time, one GPU for the last steps of a 1280x720x81 video that one GPU alone could not finish
in its SLO.)

Pure: the program is built here; ``scipy.optimize.linprog`` solves it (HiGHS's interior point
method with crossover: on these programs several times faster than its simplex), ``milp`` the
integral one; both imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .slo import SLO_TOLERANCE_S
from .types import Shape, StageKind, class_label

if TYPE_CHECKING:
    from .costmodel import CostModel
    from .requests import RequestSpec

__all__ = ["MAX_BATCH", "MAX_VARIABLES", "HindsightBound", "StageOption", "hindsight_bound", "stage_options"]

STAGES = (StageKind.ENCODE, StageKind.DIFFUSE, StageKind.DECODE)
MAX_BATCH = 256  # batch sizes tried per stage (the cost model stops answering well before, past its levels)
MAX_VARIABLES = 4_000_000  # a larger program is refused before it is built (memory: about 1 GB per million)


@dataclass(frozen=True, slots=True)
class StageOption:
    """One way to run a stage of one request: ``duration_s`` for the whole stage holding ``share`` GPUs."""

    degree: int
    batch: int
    duration_s: float
    share: float  # GPUs held by this request: degree / batch

    @property
    def gpu_s(self) -> float:
        return self.duration_s * self.share


@dataclass(frozen=True, slots=True)
class HindsightBound:
    """The program's optimum: the lowest class's attainment (the bound), and per class (requests, its
    mean completion in the optimum found: one optimum's, not the most that class alone could have).
    An integral program stopped by its time limit reports the solver's proven bound as ``min_class``
    and the best schedule it found as ``found`` and ``by_class`` (solved: ``found`` is within the
    solver's gap of ``min_class``; a linear program: equal)."""

    min_class: float
    by_class: dict[str, tuple[int, float]]
    variables: int
    slot_s: float
    found: float = math.nan
    integral: bool = False


def _hull(points: list[StageOption]) -> list[StageOption]:
    """The options on the lower convex hull of (progress rate, GPUs held) with standing still at
    (0, 0): the ones no mix of the others beats; fastest last."""
    pts = sorted(points, key=lambda o: (1.0 / o.duration_s, o.share))
    kept: list[tuple[float, float, StageOption | None]] = [(0.0, 0.0, None)]
    for o in pts:
        x, y = 1.0 / o.duration_s, o.share
        if kept[-1][2] is not None and abs(kept[-1][0] - x) <= 1e-12 * x:
            continue  # same speed, more GPUs (sorted by share within a speed)
        while len(kept) >= 2:
            (x1, y1, _), (x2, y2, _) = kept[-2], kept[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) <= 0:  # the middle point is not below the chord
                kept.pop()
            else:
                break
        kept.append((x, y, o))
    return [o for _, _, o in kept if o is not None]


def _compress(hull: list[StageOption]) -> list[StageOption]:
    """Fewer options whose mixes do at least as well as every mix of ``hull``'s. Along a run of hull
    options at one degree (batch sizes, up to hundreds of them where the cost model extrapolates), only
    the run's ends are kept, and between them the corner where the run's first and last edges (lines
    through two neighbouring hull options) meet: both lines lie under every option, so the corner
    lies under the run. The corner is a made-up option (the degree of its run, the batch of the
    run's end). Only loosens the bound; keeps the program small."""
    pts = [(0.0, 0.0)] + [(1.0 / o.duration_s, o.share) for o in hull]  # pts[i + 1] is hull[i]
    n = len(hull)
    keep = [i for i in range(n) if i in (0, n - 1) or hull[i - 1].degree != hull[i].degree
            or hull[i + 1].degree != hull[i].degree]
    out: list[StageOption] = []
    for a, c in zip([None, *keep], keep):
        if a is not None and c > a + 1:  # options a+1 .. c-1 dropped: the corner of edges a->a+1 and c-1->c
            (x1, y1), (x2, y2) = pts[a + 1], pts[a + 2]
            (x3, y3), (x4, y4) = pts[c], pts[c + 1]
            s1, s2 = (y2 - y1) / (x2 - x1), (y4 - y3) / (x4 - x3)
            if s2 > s1 * (1 + 1e-12):
                x = (y3 - s2 * x3 - (y1 - s1 * x1)) / (s1 - s2)
                out.append(StageOption(hull[c].degree, hull[c].batch, 1.0 / x, y1 + s1 * (x - x1)))
        out.append(hull[c])
    return out


def stage_options(cost: "CostModel", gpu_kind: str | None, model: str, shape: Shape, max_degree: int
                  ) -> dict[StageKind, list[StageOption]]:
    """Per stage, the options of one request the program uses: the diffuse's (degree, batch) on the
    convex hull; encode and decode (one GPU) as one option, their fastest time at their cheapest
    GPU-seconds. Every degree from 1 to ``max_degree`` (a policy may run any group size a node
    holds, ``pipeline-static:degree=6`` on six GPUs) and every batch size the cost model answers for,
    extrapolated past the measured levels as far as it goes (policies batch up to that: ``trident``
    encodes 8 at a time), up to :data:`MAX_BATCH`; what it cannot answer is skipped."""
    out: dict[StageKind, list[StageOption]] = {}
    for stage in STAGES:
        degrees = range(1, max_degree + 1) if stage is StageKind.DIFFUSE else (1,)
        found: list[StageOption] = []
        for d in degrees:
            for b in range(1, MAX_BATCH + 1):
                try:
                    t = cost.latency_s(model, stage, shape if stage is not StageKind.ENCODE else None, b, d, gpu_kind)
                except LookupError:
                    if b == 1 and d == 1:
                        raise
                    break  # past what the cost model answers at this degree (a larger batch is further)
                if stage is StageKind.DIFFUSE:
                    t *= shape.steps
                if t > 0:
                    found.append(StageOption(d, b, t, d / b))
        if stage is StageKind.DIFFUSE:
            out[stage] = _compress(_hull(found))
        else:  # as fast as the fastest, as cheap as the cheapest: it beats every real option
            fastest = min(o.duration_s for o in found)
            out[stage] = [StageOption(1, 1, fastest, min(o.gpu_s for o in found) / fastest)]
    return out


def _windows(arrival: float, deadline: float, fastest: Sequence[float]) -> list[tuple[float, float]]:
    """Per stage (encode, diffuse, decode), the interval it can run in and still meet the deadline."""
    enc, dif, dec = fastest
    return [(arrival, deadline - dif - dec), (arrival + enc, deadline - dec), (arrival + enc + dif, deadline)]


def hindsight_bound(requests: Sequence["RequestSpec"], cost: "CostModel", gpu_kind: str | None, num_gpus: int,
                    max_degree: int, *, slot_s: float = 1.0, time_limit_s: float = 600.0,
                    integral: bool = False) -> HindsightBound:
    """The most lowest-class SLO attainment any scheduler could reach on ``requests`` (module doc;
    ``integral`` there)."""
    import numpy as np
    from scipy.sparse import coo_matrix

    if not requests:
        raise ValueError("the hindsight bound needs at least one request")
    if not (0 < slot_s < math.inf and num_gpus > 0):
        raise ValueError(f"slot_s and num_gpus must be finite and > 0 (got {slot_s}, {num_gpus})")
    options: dict[tuple[str, Shape], dict[StageKind, list[StageOption]]] = {}
    classes: dict[str, list[int]] = {}
    # columns: z_r per request, then m (the lowest class's attainment), then the y's
    n = len(requests)
    col_m = n
    next_col = n + 1
    cap_rows: list[np.ndarray] = []  # (slot, column, share) triples, built per request stage option
    prog_rows, prog_cols, prog_vals = [], [], []  # per (request, stage): sum y * slot/T - z >= 0
    busy_rows, busy_cols = [], []  # per (request, slot): sum y <= 1
    n_prog = n_busy = 0
    hopeless: list[int] = []
    for i, r in enumerate(requests):
        key = (r.model, r.shape)
        if key not in options:
            options[key] = stage_options(cost, gpu_kind, r.model, r.shape, max_degree)
        opts = options[key]
        classes.setdefault(class_label(r.model, r.shape), []).append(i)
        fastest = [min(o.duration_s for o in opts[s]) for s in STAGES]
        deadline = r.arrival_s + r.slo_s + SLO_TOLERANCE_S
        windows = _windows(r.arrival_s, deadline, fastest)
        if any(hi - lo < f - 1e-9 for (lo, hi), f in zip(windows, fastest, strict=True)):
            hopeless.append(i)  # no option meets the deadline: z_r is held at 0
            continue
        busy_of: dict[int, int] = {}
        for stage, (lo, hi) in zip(STAGES, windows, strict=True):
            first, last = math.floor(lo / slot_s), math.ceil(hi / slot_s)  # slots [first, last)
            if next_col + len(opts[stage]) * (last - first) > MAX_VARIABLES:  # checked before it is built
                raise ValueError(f"the hindsight program of {n} requests would have over {MAX_VARIABLES:,} "
                                 f"variables (slots of {slot_s:g} s): use longer slots or a shorter stream")
            slots = np.arange(first, last)
            for o in opts[stage]:
                cols = np.arange(next_col, next_col + len(slots))
                next_col += len(slots)
                cap_rows.append(np.stack([slots, cols, np.full(len(slots), o.share)]))
                prog_rows.append(np.full(len(slots), n_prog))
                prog_cols.append(cols)
                prog_vals.append(np.full(len(slots), slot_s / o.duration_s))
                if stage is not StageKind.DIFFUSE or len(opts[stage]) == 1:
                    continue  # one option: its bound of 1 is the one-at-a-time limit
                for s, c in zip(slots.tolist(), cols.tolist(), strict=True):
                    row = busy_of.get(s)
                    if row is None:
                        row = busy_of[s] = n_busy
                        n_busy += 1
                    busy_rows.append(row)
                    busy_cols.append(c)
            prog_rows.append(np.array([n_prog]))
            prog_cols.append(np.array([i]))
            prog_vals.append(np.array([-1.0]))
            n_prog += 1
    cap = np.concatenate(cap_rows, axis=1) if cap_rows else np.zeros((3, 0))
    first_slot = int(cap[0].min()) if cap.shape[1] else 0
    n_slots = int(cap[0].max()) - first_slot + 1 if cap.shape[1] else 0
    n_cols = next_col
    labels = sorted(classes)
    # rows: capacity per slot; busy per (request, slot); -progress per (request, stage); m - mean z per class
    blocks_r = [cap[0] - first_slot]
    blocks_c = [cap[1]]
    blocks_v = [cap[2]]
    off = n_slots
    blocks_r.append(np.array(busy_rows, dtype=float) + off)
    blocks_c.append(np.array(busy_cols, dtype=float))
    blocks_v.append(np.ones(len(busy_rows)))
    off += n_busy
    if prog_rows:
        blocks_r.append(np.concatenate(prog_rows).astype(float) + off)
        blocks_c.append(np.concatenate(prog_cols).astype(float))
        blocks_v.append(-np.concatenate(prog_vals))
    off += n_prog
    for k, label in enumerate(labels):
        members = classes[label]
        blocks_r.append(np.full(len(members) + 1, off + k, dtype=float))
        blocks_c.append(np.array([col_m, *members], dtype=float))
        blocks_v.append(np.array([1.0, *([-1.0 / len(members)] * len(members))]))
    n_rows = off + len(labels)
    a = coo_matrix((np.concatenate(blocks_v), (np.concatenate(blocks_r).astype(int), np.concatenate(blocks_c).astype(int))),
                   shape=(n_rows, n_cols)).tocsr()
    b = np.concatenate([np.full(n_slots, float(num_gpus)), np.ones(n_busy), np.zeros(n_prog + len(labels))])
    c = np.zeros(n_cols)
    c[col_m] = -1.0
    c[:n] = -1e-6 / n  # among the max-min optima, one that completes the most
    upper = np.ones(n_cols)
    upper[hopeless] = 0.0
    if integral:
        from scipy.optimize import Bounds, LinearConstraint, milp
        integrality = np.zeros(n_cols)
        integrality[:n] = 1
        res = milp(c, integrality=integrality, bounds=Bounds(np.zeros(n_cols), upper),
                   constraints=LinearConstraint(a, -np.inf, b), options={"time_limit": time_limit_s, "presolve": True})
        proven = getattr(res, "mip_dual_bound", None)
        if res.status not in (0, 1) or res.x is None or proven is None or not math.isfinite(proven):
            raise RuntimeError(f"the integral hindsight program did not solve: {res.message}")
        # the objective is -m less a tie-break below 1e-6: no schedule has m above -(proven bound)
        bound = -proven
    else:
        from scipy.optimize import linprog
        res = linprog(c, A_ub=a, b_ub=b, bounds=np.stack([np.zeros(n_cols), upper], axis=1), method="highs-ipm",
                      options={"time_limit": time_limit_s, "presolve": True})
        if res.status != 0 or res.x is None:
            raise RuntimeError(f"the hindsight program did not solve: {res.message}")
        bound = res.x[col_m]
    z = res.x[:n]
    by_class = {label: (len(classes[label]), _unit(z[classes[label]].mean())) for label in labels}
    found = min(a for _, a in by_class.values())
    return HindsightBound(_unit(bound), by_class, n_cols, slot_s, found, integral)


def _unit(x: float) -> float:
    """A solver's value clipped to [0, 1] (its tolerances give -1e-12 or 1 + 1e-9), and never -0.0."""
    return float(min(1.0, max(0.0, x))) + 0.0
