"""``trident``: stage-level placement and dispatch, ours.

**Objective**, in this order: SLO attainment (fairly across request classes), then mean and tail
latency, then GPU-seconds.

Every event (arrival, a stage finishing, a failure) runs one scheduling pass over the waiting work;
there is no timer in the dispatch path, so a GPU never idles waiting for a planning round.

* **Work items** are stages, not pipelines: a request waits for ``encode``, then ``diffuse`` (maybe
  in pieces), then ``decode``, and each is dispatched on its own to whichever GPUs suit it. Encode
  and decode take one GPU; diffuse takes a group of 1, 2, 4 or 8 GPUs on one node.
* **Order**: least slack first. A request's key is its latest start time (deadline minus the
  remaining work at its efficient degree), taken on arrival and kept (``order=admission``, the
  default: admitted requests then finish one by one, not all together at their deadline, which a
  slower-than-predicted stage would make them all miss); ``order=stage`` re-ranks after each stage
  by the work still left.
* **Degree**: per request and per dispatch. Among the degrees that still meet the deadline (with a
  safety ``margin`` of the SLO), the efficient degree (largest with parallel efficiency >= 0.8) is
  used while the cluster has spare GPUs (busy fraction below ``spread``); under load, the smallest
  feasible degree, which spends the fewest GPU-seconds.
* **Noise**: stage times stray from their predictions. The policy keeps the robust log-spread
  ``sigma`` of measured over predicted compute time of the dispatches that completed
  (:class:`~tridentcore.core.noise.Spread`: around each stage's median, so a bias is left to
  calibration). While GPUs are spare, a degree must meet the deadline with the remaining work
  stretched by ``exp(noise_z x sigma)`` (``noise_z`` 2: about the 98th percentile of a lognormal),
  so a request is given the GPUs that make a slow run still meet its SLO; if none does, the fastest
  degree. Under load the plain predictions decide which degrees are feasible (stretched plans would
  spend GPU-seconds the queue needs), and the smallest of them that also meets the stretched
  deadline is taken only if it costs at most ``noise_cost`` (1.1) times the GPU-seconds of the
  smallest feasible one (a long video at 2 GPUs instead of 1, not a small image at 4). With stage
  times exactly as predicted (``sigma`` 0) nothing changes.
* **Committed work**: a diffuse that cannot start now reserves the GPUs that free soonest on one
  node (their ``busy_until``: work already committed); later, less urgent work may use those GPUs
  only if it ends before the reservation (backfilling), so large requests are not starved by a
  stream of small ones.
* **Step-level preemption**: when a reservation would come too late, a running diffuse with enough
  slack is paused at its next step boundary (``Preempt``) and resumed later, on the same or other
  GPUs, paying the transfer of its latents.
* **Work-conserving** (``wide``): GPUs that no waiting work needs speed up the work there is. A
  diffuse takes, beyond its degree, the idle GPUs that the rest of the waiting work leaves, up to the
  fastest degree still worth them (each doubling cuts the step time by ``gain``); when new work then
  waits, a widened diffuse is shrunk at its next step boundary (it resumes at once on part of its
  GPUs, its latents moving at their transfer cost) if the waiting work gains more than it loses and
  it still meets its own deadline; when GPUs go idle that no waiting work can take, the running diffuse that
  gains most is grown at its next boundary. A paused diffuse is not paused again for 10 of its steps
  (no cycles without progress), except one widened by that pause (``shrink_grown``): it gives the
  GPUs it took idle back to new work after one step while the running work holds at most
  ``grown_below`` (0.3) of the GPUs (simulated: the latency table's cells within 5 % from 35 to 38
  of 40, 118 to 121 of 132 over three streams; fair goodput equal or up), and (``shrink_urgent``)
  however many GPUs the running work holds for a waiting request that would miss its deadline by
  waiting, while the work arriving is below ``urgent_load`` (0.5) of the GPUs (39 of 40 cells, 122
  of 132; without that bound fair goodput at SLO 1.5 fell: image-video 0.434 to 0.425 req/s).
  Widening only while the running work would hold less than ``wide_below`` (0.5) of the GPUs at
  its unwidened degrees: near saturation every GPU-second counts, and widening would spend them. A
  request whose SLO is at least ``loose`` (2) times its no-queue latency is widened up to
  ``wide_loose`` (0.7): its deadline leaves room, and its latency is what is at stake (simulated,
  2x8xH200: the latency table's cells within 5 % of the best baseline from 30 to 34 of 40, fair
  goodput within the bisection's noise; with 0.7 for every request the tight SLOs of scale 1.5 lose
  attainment).
* **Head starts** (``grow``, opt-in): a diffuse that must wait for a group whose GPUs free one by
  one starts at once on the ones already idle, at a smaller degree (they would idle until the group
  is whole otherwise), holds the rest from when they free, and is paused at a step boundary and
  resumed on the whole group when they do (not if it now finishes in time where it is). Simulated,
  video-wan at SLO 3, 7200 s streams of seeds 0-7: fair goodput / SLO-aware ceiling mean 95 % (lowest
  89 %) against 93 % (87 %) without; images within noise. Off by default until every table is run
  with it.
* **Batching** per stage where the profile shows it pays (per-request cost falls by >= 15 %):
  waiting requests of one model (and shape, for diffuse and decode) whose deadlines all hold.
* **Memory admission**: a dispatch goes only where weights (lazily loaded if missing, load time
  charged) plus the stage's activations fit; a request that can never fit is rejected at arrival.
* **Placement**: a plan from the expected mix (``core/placement.py``: denoisers and decoders where
  memory allows, encoders where the encode demand needs them; when memory is short, an integer
  program solved with HiGHS packs the instances, with a greedy fallback), re-planned from the
  observed mix when it drifts from the planned one (total variation >= ``drift``, checked every
  ``replan_s``). Dispatch prefers GPUs that hold the weights; elsewhere they
  load lazily (load time charged), and instances the plan does not want are evicted to make room.
* **Late requests** (``late``): one that can no longer meet its deadline even at its fastest degree
  is served after every request that still can (in the same pass, on GPUs the others left idle; a
  diffuse of late requests is the first paused for one that can still make it), and counts as an
  SLO miss (``late=serve``, the default). ``late=reject`` (goodput mode) decides at admission
  instead (:mod:`.trident_admission`): an arriving request that could not meet its deadline behind
  the admitted work ranked ahead of it (a list schedule of that work, the predicted wait stretched by
  ``admit_wait`` for arrivals that will overtake it) is turned away at once; an admitted one is
  served, late if it comes to that. No GPU time is spent on a request that is then dropped, and
  nobody waits to be told no. ``late=serve`` runs the same test (``triage``, on by default): a
  request it would turn away is admitted late at once, so it runs only on GPUs the requests that can
  still make it leave idle, instead of taking its turn by deadline and making them late too (without
  triage, overload cascades: each request served in deadline order is itself about to miss).
  A request it admits late that can still make it takes a degree that does, on GPUs left idle.
  Simulated, SLO scale 3, fair goodput / SLO-aware ceiling with triage (without): flux-uniform 94 %
  (89 %), sd3-mixed 93 % (88 %); at twice the capacity ceiling flux-uniform finishes 484 of 1,078
  within their SLO (286), goodput mode 488 by turning 467 away.

Stages never share a GPU at the same time (exclusive dispatch).

Per-class cost answers live in :mod:`.trident_classes`, widening, shrinking and growing diffuses (and
head starts) in :mod:`.trident_elastic` and the admission test of ``late=reject`` in :mod:`.trident_admission`
(mixins); the rest stays one module (about 940 lines) because it is one policy class whose methods
all share the ready queue, reservations and plan.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

from ..defaults import DEFAULT_LATE
from ..events import (Action, Dispatch, Evict, Place, Preempt, Reject, RequestArrived, RequestEnded, StageFailed,
                      StageFinished, Tick)
from ..lifecycle import TERMINAL, WAITING_FOR, RequestRecord
from ..noise import Spread
from ..placement import plan_placement
from ..policy import Policy, PolicyError, register
from ..state import ClusterView
from ..types import Shape, StageKind
from ..workload import RequestSpec
from .common import check_stages_fit, degrees_for
from .options import choice, number, parse_bool, parse_late
from .trident_admission import Admission
from .trident_classes import ClassInfo, class_info, mix_drift
from .trident_elastic import Elastic

__all__ = ["Trident"]

_MAX_SCAN = 256  # waiting items looked at per pass (the most urgent first)
_MAX_BLOCKED = 8  # blocked diffuses per pass that may reserve GPUs or preempt


@register
class Trident(Elastic, Admission, Policy):
    name = "trident"
    summary = "stage-level placement + dispatch: per-request degrees, least slack first, reservations, preemption, batching"
    options = {
        "margin": (number(0, 1), 0.0, "fraction of each SLO kept as a safety margin"),
        "noise_z": (number(0), 2.0, "while GPUs are spare, pick diffuse degrees that meet the deadline with the "
                                "prediction x exp(this x the log-spread of measured / predicted stage times seen "
                                "so far) (0: as predicted)"),
        "noise_cost": (number(1), 1.1, "under load, the smallest degree that meets the deadline with the noise margin "
                                   "if it spends at most this many times the GPU-seconds of the smallest feasible one"),
        "spread": (number(0, 1), 0.5, "use the faster efficient degree while fewer than this fraction of GPUs are busy"),
        "preempt": (parse_bool, True, "pause long diffuses between steps for urgent requests"),
        "wide": (parse_bool, True, "work-conserving: a diffuse takes the GPUs no other waiting work needs, up to the "
                                   "fastest degree worth them, and is shrunk at a step boundary when new work "
                                   "needs them"),
        "gain": (number(0, 1), 0.05, "wide: doubling the degree is worth it while it cuts the step time by this fraction"),
        "wide_below": (number(0, 1), 0.5, "wide: only while the running work would hold fewer than this fraction of the "
                                   "GPUs at its unwidened degrees: near saturation every GPU-second counts"),
        "wide_loose": (number(0, 1), 0.7, "wide: the same bound for a request whose SLO is at least `loose` times its "
                                   "no-queue latency (its latency, not its deadline, is then what is at stake); "
                                   "never below wide_below"),
        "loose": (number(1), 2.0, "wide: the SLO, as a multiple of a request's no-queue latency, from which "
                                  "wide_loose bounds its widening instead of wide_below"),
        "shrink_tail": (parse_bool, True, "wide: shrink a widened diffuse for waiting work only if its latency stays "
                                          "below the waiting request's had it waited, unless that one would miss "
                                          "its deadline"),
        "late_wide": (parse_bool, True, "wide: while only requests that can no longer meet their deadlines run or "
                                        "wait, they too take the idle GPUs, up to the fastest degree worth them (their "
                                        "latency is then what is at stake), and are shrunk when new work needs them; "
                                        "false: they run at the cheapest degree"),
        "shrink_grown": (parse_bool, True, "wide: a diffuse paused to be widened may be shrunk or paused again for waiting "
                                           "work after one step at its new degree while the running work holds at most "
                                           "grown_below of the GPUs unwidened (other pauses, and false: after 10 steps)"),
        "grown_below": (number(0, 1), 0.3, "shrink_grown: the bound on the GPUs the running work holds unwidened (0.5 "
                                           "lost fair goodput on image-video at SLO 1.5 and 3)"),
        "shrink_urgent": (parse_bool, True, "wide: a diffuse paused to be widened may be shrunk after one step at its "
                                            "new degree, however many GPUs the running work holds, for a waiting "
                                            "request that would miss its deadline by waiting and could meet it at "
                                            "its fastest degree worth the GPUs once the shrink frees them, while the "
                                            "work arriving is below urgent_load"),
        "urgent_load": (number(0), 0.5, "shrink_urgent: only while the work arriving (GPU-seconds per second at each "
                                        "request's cheapest degree that meets its SLO, over the last minute or 64 "
                                        "arrivals) is below this fraction of the GPUs (near saturation, at any "
                                        "fraction, it cost fair goodput at SLO 1.5)"),
        "grow": (parse_bool, False, "a diffuse waiting for GPUs that free one by one starts on those already idle "
                                    "and is grown at a step boundary when the rest free"),
        "batch": (parse_bool, True, "batch same-shape requests per stage where the profile shows it pays"),
        "late": (parse_late, DEFAULT_LATE, "serve: a request that can no longer meet its deadline runs after the "
                                           "others (an SLO miss); reject: turn a request away on arrival if it "
                                           "could not meet its deadline behind the admitted work (admit_wait)"),
        "admit_wait": (number(0), 3.0, "late=reject: admit a request only if it meets its deadline with its predicted "
                                   "wait behind the admitted work stretched by this factor while the work arriving "
                                   "exceeds the GPUs (overload: later arrivals overtake it)"),
        "admit_running": (parse_bool, False, "the admission test (late=reject, and triage) also counts the stages "
                                             "left of the requests ahead whose encode (or a diffuse not to be "
                                             "paused) is running (fewer admitted requests miss; lower fair goodput "
                                             "at tight SLOs: trident_admission's docstring)"),
        "triage": (parse_bool, True, "late=serve: an arriving request that late=reject would turn away is admitted "
                                     "late at once: served behind every request that can still make it"),
        "drop": (parse_bool, None, "deprecated: drop=true is late=reject, drop=false is late=serve"),
        "order": (choice("admission", "stage"), "admission", "admission: a request keeps the priority it had when it arrived (its latest start "
                                    "for the whole request), so admitted requests finish one by one; stage: "
                                    "re-ranked by the slack of what is left after each stage"),
        "replan_s": (number(1, or_zero=True), 60.0, "check the observed mix against the planned one every N seconds, "
                                                       "at least 1 (0: never)"),
        "drift": (number(0, 1), 0.2, "re-plan when the observed mix differs from the planned one by this total variation"),
    }

    def __init__(self, **opts) -> None:
        super().__init__(**opts)
        self.tick_s = self.opts["replan_s"] or None
        if self.opts["drop"] is not None:  # runs stored before the late option read the same
            late = "reject" if self.opts["drop"] else "serve"
            if "late" in opts and self.opts["late"] != late:
                raise PolicyError(f"{self.name}: drop={str(self.opts['drop']).lower()} (deprecated) means late={late}, "
                                  f"but late={self.opts['late']} is given too")
            self.opts["late"] = late

    # ------------------------------------------------------------------------------ setup
    def start(self, view: ClusterView, models: Sequence[str], now: float, expected=None) -> list[Action]:
        check_stages_fit(view, models, self.spec)
        self.degrees = degrees_for(view)
        self._node_of = tuple(view.node_of(g) for g in range(view.num_gpus))  # GPU -> node, for the GPU search
        self.info: dict[tuple[str, Shape], ClassInfo] = {}
        self.encode_batch: dict[str, int] = {}
        self.ready: list[tuple[float, int, int]] = []  # (latest start, seq, request id), sorted
        self.entry: dict[int, tuple[float, int, int]] = {}
        self.first_key: dict[int, tuple[float, int, int]] = {}  # order=admission: request id -> its entry on arrival
        self._seq = 0
        self.observed: dict[tuple[str, Shape], int] = {}
        self.last_plan_s = now
        self.safer: dict[int, int] = {}  # request id -> OOM retries
        self.paused_at: dict[int, float] = {}  # request id -> when it was last preempted
        self.grown: set[int] = set()  # requests whose last pause widened them (a shrink need not wait 10 steps)
        self.base: dict[int, int] = {}  # request id -> the degree its running diffuse would have had unwidened
        self.cap: dict[int, int] = {}  # request id -> the most GPUs its next diffuse may take (it was shrunk)
        self._tops: dict[tuple[str, Shape], int] = {}  # class -> the fastest degree worth its GPUs (wide)
        self.narrow: set[int] = set()  # wide: requests whose running diffuse is narrower than that
        self.growing: dict[int, int] = {}  # grow: request id -> the degree its head start grows to
        self._frees = self._widened_now = None  # a pass's caches (_soonest, _widened), cleared by each pass
        # requests found late (they stay late: deadlines do not move) -> their rank among the late, kept
        # through their stages (first found late, first served: a fresh rank per stage sent each one that
        # had finished its diffuse behind every other late request's, so none finished until all had
        # diffused: a 60-request burst on one GPU ended at a mean of 189 s against pipeline-dynamic's 107 s)
        self.hopeless: dict[int, int] = {}
        self.demoted: set[int] = set()  # triage: admitted late on arrival (they stay behind)
        self.arrived: deque[tuple[float, float]] = deque()  # late=reject: (arrival, GPU-seconds) of recent arrivals
        self.arrived_gpu_s = 0.0  # their sum
        self.refused: dict[tuple[str, Shape], deque[bool]] = {}  # late=reject: per class, its last admission answers
        self.refused_all: deque[bool] = deque(maxlen=400)  # and those of every class
        self._arrived_at, self._arrived_with = -math.inf, set()  # the requests that arrived at that instant
        self.arrived_from = now  # when the arrivals counted begin: the last one dropped, or the start
        self.noise = Spread()  # how far completed dispatches strayed from their predictions
        self.stretch = 1.0  # exp(noise_z x the observed log-spread): 1 while stage times are as predicted
        expected = dict(expected or {})
        if not expected:
            expected = {(m, None): 1.0 for m in models}
        self.planned_mix = {k: float(v) for k, v in expected.items()}
        self.replans = 0
        self._planned_for: dict | None = None  # the plan _planned_on's cache answers for
        self._planned: dict[tuple[str, str], frozenset[int]] = {}
        self._both: dict[tuple[int, int], tuple[frozenset[int], frozenset[int], frozenset[int]]] = {}  # _held_planned
        self.plan = self._plan(view, expected)
        return [Place(m, s, g) for g, inst in self.plan.items() for (m, s) in sorted(inst)]

    def _plan(self, view: ClusterView, expected: dict) -> dict:
        kind, cost = view.gpu_kind, view.cost
        demand: dict[str, dict[str, float]] = {}
        reserve: dict[str, float] = {}
        total = sum(expected.values()) or 1.0
        for (model, shape), share in expected.items():
            d = demand.setdefault(model, {StageKind.ENCODE: 0.0, StageKind.DIFFUSE: 0.0, StageKind.DECODE: 0.0})
            d[StageKind.ENCODE] += share / total * cost.latency_s(model, StageKind.ENCODE, None, 1, 1, kind)
            if shape is None:
                d[StageKind.DIFFUSE] += share / total
                continue
            info = self._info_for(view, model, shape)
            d[StageKind.DIFFUSE] += share / total * shape.steps * info.step_s[1]
            d[StageKind.DECODE] += share / total * info.dec_s
            act = max(cost.activation_gib(model, StageKind.DECODE, shape, 1, 1, kind),
                      cost.activation_gib(model, StageKind.DIFFUSE, shape, 1, 1, kind))
            reserve[model] = max(reserve.get(model, 0.0), act)
        return plan_placement(view.cluster, cost, kind, demand, reserve)

    def _info_for(self, view: ClusterView, model: str, shape: Shape) -> ClassInfo:
        key = (model, shape)
        info = self.info.get(key)
        if info is not None:
            return info
        info = class_info(view, self.degrees, model, shape)
        self.info[key] = info
        return info

    # ------------------------------------------------------------------------------ queue
    def _remaining(self, rec: RequestRecord, info: ClassInfo, degree: int, stage: StageKind) -> float:
        left = rec.spec.shape.steps - rec.steps_done
        if stage == StageKind.ENCODE:
            return info.enc_s + left * info.step_s[degree] + info.dec_s
        if stage == StageKind.DIFFUSE:
            return left * info.step_s[degree] + info.dec_s
        return info.dec_s

    def _enqueue(self, view: ClusterView, rec: RequestRecord) -> None:
        stage = WAITING_FOR.get(rec.state)
        if stage is None:
            return
        spec = rec.spec
        rid = spec.id
        admission = self.opts["order"] == "admission"  # the rank it got on arrival (ties: in arrival order)
        entry = self.first_key.get(rid) if admission else None
        if rid in self.demoted:
            self._dequeue(rid)
            self._late(rid)
            return
        if entry is None:
            info = self._info_for(view, spec.model, spec.shape)
            self._seq += 1  # (only the order of the sequence numbers matters: they break ties)
            entry = (spec.deadline_s - self._remaining(rec, info, info.eff_d, stage), self._seq, rid)
            if admission:
                self.first_key[rid] = entry
        self._dequeue(rid)
        bisect.insort(self.ready, entry)
        self.entry[rid] = entry

    def _late(self, rid: int) -> None:
        seq = self.hopeless.get(rid)
        if seq is None:
            self._seq += 1
            seq = self.hopeless[rid] = self._seq
        entry = (math.inf, seq, rid)
        bisect.insort(self.ready, entry)
        self.entry[rid] = entry

    def _forget_ended(self, view: ClusterView) -> None:
        """Drop what is kept per request for requests that ended without a stage telling (rejected,
        cancelled, forgotten): arrival ranks, the hopeless set, unwidened degrees, caps and pauses."""
        def ended(rid: int) -> bool:
            try:
                return view.request(rid).state.terminal
            except KeyError:
                return True

        for rid in [r for r in self.first_key if ended(r)]:
            del self.first_key[rid]
        self.hopeless = {r: seq for r, seq in self.hopeless.items() if not ended(r)}
        self.demoted = {r for r in self.demoted if not ended(r)}
        for kept in (self.base, self.cap, self.paused_at):
            for rid in [r for r in kept if ended(r)]:
                del kept[rid]
        self.grown = {r for r in self.grown if not ended(r)}

    def _ended(self, rid: int) -> None:
        """Forget what is kept per request for ``rid``, which ended (the queue entry aside)."""
        self.first_key.pop(rid, None)
        self.hopeless.pop(rid, None)
        self.demoted.discard(rid)
        self.base.pop(rid, None)
        self.cap.pop(rid, None)
        self.paused_at.pop(rid, None)
        self.grown.discard(rid)
        self.safer.pop(rid, None)

    def _dequeue(self, rid: int) -> None:
        entry = self.entry.pop(rid, None)
        if entry is not None:
            i = bisect.bisect_left(self.ready, entry)
            if i < len(self.ready) and self.ready[i] == entry:
                del self.ready[i]

    # ------------------------------------------------------------------------------ events
    def on_event(self, view: ClusterView, event, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.cost_moved(view):  # calibrated stage times: per-class answers are recomputed on demand
            self.info.clear()
            self._tops.clear()
        if isinstance(event, RequestArrived):
            spec: RequestSpec = event.request
            info = self._info_for(view, spec.model, spec.shape)
            if info.never_fits:
                return [Reject(spec.id, f"can never fit: {info.never_fits}", math.inf)]
            key = (spec.model, spec.shape)
            self.observed[key] = self.observed.get(key, 0) + 1
            if now != self._arrived_at:
                self._arrived_at, self._arrived_with = now, set()
            self._arrived_with.add(spec.id)
            rec = view.request(spec.id)
            self._enqueue(view, rec)
            self._note_arrival(spec, info, now)  # the offered load (the admission test, urgent_load)
            if self.opts["late"] == "reject" or self.opts["triage"]:  # the admission test: on arrival only
                refusal = self._admission_refusal(view, rec, info, now)
                if refusal is not None:
                    self._dequeue(spec.id)
                    if self.opts["late"] == "reject":
                        self.first_key.pop(spec.id, None)
                        return [Reject(spec.id, *refusal)]
                    self.demoted.add(spec.id)
                    self._late(spec.id)
        elif isinstance(event, (StageFinished, StageFailed)):
            if isinstance(event, StageFinished) and event.predicted_s > 0 and self.opts["noise_z"]:
                self.noise.observe(event.stage, event.predicted_s, event.measured_s)
                self.stretch = self.noise.factor(self.opts["noise_z"])
            for rid in event.request_ids:
                rec = view.request(rid)
                if event.stage == StageKind.DIFFUSE:
                    self.narrow.discard(rid)  # it ended or paused: a new dispatch decides again
                    self.growing.pop(rid, None)
                if isinstance(event, StageFailed) and event.oom:
                    self.safer[rid] = self.safer.get(rid, 0) + 1
                if rec.state not in TERMINAL:
                    self._enqueue(view, rec)
                else:
                    self._ended(rid)
        elif isinstance(event, RequestEnded):  # out of the queue now: its record may be forgotten next
            self._dequeue(event.request_id)
            self._ended(event.request_id)
        elif isinstance(event, Tick):
            self._forget_ended(view)
            if self.opts["replan_s"] and now - self.last_plan_s >= self.opts["replan_s"] and self.observed:
                self.last_plan_s = now
                if mix_drift(self.planned_mix, self.observed) >= self.opts["drift"]:
                    self.planned_mix = {k: float(v) for k, v in self.observed.items()}
                    self.plan = self._plan(view, self.planned_mix)
                    self.replans += 1
                self.observed = {}
        if self.ready or self.narrow or self.growing:  # idle GPUs may grow a running diffuse
            actions += self._schedule(view, now)
        return actions

    # ------------------------------------------------------------------------------ the pass
    def _schedule(self, view: ClusterView, now: float) -> list[Action]:
        actions: list[Action] = []
        self._frees = self._widened_now = None  # the pass's caches (_soonest, _widened)
        idle = list(view.idle_on_nodes())  # per node, its idle GPUs (a tuple, replaced as GPUs are taken)
        idle_total = sum(map(len, idle))
        n_gpus = view.num_gpus
        busy_frac = 1.0 - idle_total / n_gpus
        base_busy = None  # GPUs the running work holds unwidened (_base_busy): asked at most once a pass, when it matters
        reserved: dict[int, float] = {}  # gpu -> time an urgent diffuse needs it
        margin_frac = self.opts["margin"]
        taken: set[int] = set()
        preempted_now = False
        blocked_degree = math.inf  # smallest degree that found no room in this pass
        blocked = 0  # diffuses that found no room (each reserves GPUs or tries a preemption)
        preempt_tries = 0
        late_only = None  # only late work runs and waits (late_wide): asked at most once a pass, when it matters
        ontime = False  # a request that can still make its deadline was looked at in this pass
        if self.growing:  # head starts hold the GPUs they grow onto
            self._hold_growth(view, reserved, now, actions)
        scan = self.ready[:_MAX_SCAN]
        i = 0
        while i < len(scan):  # a request found late on the way is looked at again at the end
            entry = scan[i]
            i += 1
            if idle_total == 0 and (not self.opts["preempt"] or preempted_now or blocked >= _MAX_BLOCKED):
                break
            rid = entry[2]
            if rid in taken:
                continue
            rec = view.request(rid)
            stage = WAITING_FOR.get(rec.state)
            if stage is None:
                self._dequeue(rid)
                if rec.state in TERMINAL:
                    self.hopeless.pop(rid, None)
                continue
            spec = rec.spec
            info = self._info_for(view, spec.model, spec.shape)
            if entry[0] != math.inf and now + self._remaining(rec, info, info.fast_d, stage) > spec.deadline_s + 1e-9:
                # late: keep it (admitted work is served), behind every request that can still make it
                self._dequeue(rid)
                self._late(rid)
                scan.append(self.entry[rid])  # in this pass too: a GPU left idle may take it
                continue
            if entry[0] != math.inf:
                ontime = True
            if idle_total == 0 and preempted_now:
                continue
            margin = margin_frac * spec.slo_s
            if stage != StageKind.DIFFUSE:
                dur = info.enc_s if stage == StageKind.ENCODE else info.dec_s
                g, evictions = (None, [])
                if idle_total:
                    g, evictions = self._pick_one(view, idle, reserved, now, dur, spec.model, stage, rec, info)
                if g is None:
                    # no GPU now: shrink a widened diffuse, or, if a GPU frees too late for this
                    # request, pause a long diffuse
                    blocked += 1
                    if (self.opts["wide"] and not preempted_now and blocked <= _MAX_BLOCKED and self._widened(view)
                            and self._shrink(view, reserved, now, self._soonest(view, reserved, now, 1)[0], 1,
                                             actions, (rec, info, stage, info.eff_d))):
                        preempted_now = True
                        continue
                    if blocked <= _MAX_BLOCKED and self.opts["preempt"] and not preempted_now and preempt_tries < 2:
                        d = info.eff_d if stage == StageKind.ENCODE else 1
                        latest = spec.deadline_s - margin - self._remaining(rec, info, d, stage)
                        when, _ = self._soonest(view, reserved, now, 1)
                        if when > latest:
                            preempt_tries += 1
                            preempted_now = self._preempt(view, reserved, now, 1, rec, info, stage, actions)
                    continue
                actions += evictions
                batch = [rid]
                limit = self._stage_batch(view, info, stage, spec.model)
                if limit > 1 and self.opts["batch"]:
                    batch += self._mates(view, rid, stage, spec, limit - 1, taken)
                    # as many as fit there (g was chosen for one: a batch that runs out of memory is
                    # put back and would be chosen again, for ever)
                    room = view.free_gib(g) + sum(view.instance_gib(e.model, e.stage) for e in evictions) + 1e-9
                    need = view.memory_needed_gib
                    while len(batch) > 1 and need(spec.model, stage, spec.shape, len(batch), 1, g) > room:
                        batch.pop()
                for b in batch:
                    taken.add(b)
                    self._dequeue(b)
                node = self._node_of[g]
                idle[node] = tuple([x for x in idle[node] if x != g])
                idle_total -= 1
                actions.append(Dispatch(stage, tuple(batch), (g,)))
                continue
            # ---- diffuse: while GPUs are spare, the degrees that meet the deadline with the noise
            # margin (stretched predictions); under load, as predicted (GPU-seconds are dear then)
            stretch = self.stretch if busy_frac < self.opts["spread"] else 1.0
            left, step_s, dec_s, by = spec.shape.steps - rec.steps_done, info.step_s, info.dec_s, spec.deadline_s - margin
            feasible = [d for d in info.degrees if now + (left * step_s[d] + dec_s) * stretch <= by]  # _remaining
            if stretch == 1.0 and self.stretch > 1.0 and feasible:
                # under load: still the noise margin, where it costs few GPU-seconds more
                d0, cap, by = min(feasible), self.opts["noise_cost"], spec.deadline_s - margin
                safe = [d for d in feasible if d * info.step_s[d] <= cap * d0 * info.step_s[d0]
                        and now + self._remaining(rec, info, d, StageKind.DIFFUSE) * self.stretch <= by]
                if safe:
                    feasible = [d for d in feasible if d >= safe[0]]
            late = entry[0] == math.inf
            if late and not (feasible and rid in self.demoted):
                # already late: the fewest GPU-seconds, no reservation, no preemption (one admitted late
                # by triage that can still make it takes a degree that does, on GPUs left idle)
                feasible = [info.degrees[0]]
            elif not feasible:
                feasible = [info.fast_d]
            if self.safer.get(rid):  # retry after an OOM: the most GPUs first (activations split)
                order = sorted(set(feasible) | {d for d in info.degrees if d >= info.eff_d}, reverse=True)
            elif busy_frac < self.opts["spread"] and info.eff_d in feasible:
                order = [info.eff_d] + [d for d in feasible if d != info.eff_d]
            else:
                order = sorted(feasible)
            base = order[0]
            if late and late_only is None:
                late_only = self.opts["late_wide"] and not ontime and all(
                    r in self.hopeless for run in view.running() for r in run.action.request_ids)
            if (idle_total and self.opts["wide"] and (not late or late_only)
                    and (base_busy := self._base_busy(view) if base_busy is None else base_busy)
                    < self._wide_bound(spec, info) * n_gpus):
                # work-conserving: the GPUs that the rest of the waiting work leaves idle speed this one
                # up (to the fastest degree still worth its GPUs); shrunk when new work needs them. A late
                # request (behind every other: what is left is idle) may take any degree that is worth it
                wider = list(info.degrees) if late else feasible
                wide = self._widest(info, wider, idle_total - (len(scan) - i))
                if wide > base:
                    order = [d for d in sorted(wider, reverse=True) if base < d <= wide] + order
            cap = self.cap.get(rid)
            if cap is not None:
                order = [d for d in order if d <= cap] or [min(order)]
            placed = False
            if idle_total:
                for d in order:
                    if d >= blocked_degree and d > 1:
                        continue
                    dur = (spec.shape.steps - rec.steps_done) * info.step_s[d]
                    evictions: list[Action] = []
                    group = self._pick_group(view, idle, reserved, now, dur, d, rec, info, evictions)
                    if group is None:
                        blocked_degree = min(blocked_degree, d)
                        continue
                    actions += evictions
                    batch = [rid]
                    if (self.opts["batch"] and info.batch > 1 and rec.steps_done == 0 and not self.safer.get(rid)):
                        batch += self._diffuse_mates(view, rec, info, d, group, now, taken, margin)
                    for b in batch:
                        taken.add(b)
                        self._dequeue(b)
                    node = self._node_of[group[0]]
                    idle[node] = tuple([x for x in idle[node] if x not in group])
                    idle_total -= d
                    busy_frac = 1.0 - idle_total / n_gpus
                    actions.append(Dispatch(StageKind.DIFFUSE, tuple(batch), group, rec.steps_done, spec.shape.steps))
                    narrow = self.opts["wide"] and d < self._top(view, spec.model, spec.shape)
                    for b in batch:
                        self.base[b] = min(base, d)
                        self.cap.pop(b, None)
                        if narrow:  # idle GPUs may grow it later
                            self.narrow.add(b)
                    placed = True
                    break
            if placed or late:
                continue
            blocked += 1
            if blocked > _MAX_BLOCKED:
                continue
            # ---- no room now: reserve the GPUs that free soonest, or preempt if that is too late
            d = min(feasible)
            latest = spec.deadline_s - margin - self._remaining(rec, info, d, StageKind.DIFFUSE)
            when, group = self._soonest(view, reserved, now, d)
            if self.opts["wide"] and not preempted_now and self._shrink(
                    view, reserved, now, when, base, actions,
                    (rec, info, StageKind.DIFFUSE, base)):
                preempted_now = True
                continue
            if group is not None and when <= latest:
                if self.opts["grow"] and idle_total:
                    part = self._start_part(view, idle, reserved, now, when, group, d, rec, info)
                    if part is not None:  # a head start on the group's idle GPUs; grown at ``when``
                        node = self._node_of[part[0]]
                        idle[node] = tuple([x for x in idle[node] if x not in part])
                        idle_total -= len(part)
                        busy_frac = 1.0 - idle_total / n_gpus
                        taken.add(rid)
                        self._dequeue(rid)
                        actions.append(Dispatch(StageKind.DIFFUSE, (rid,), part, rec.steps_done, spec.shape.steps))
                        self.base[rid] = len(part)
                        self.cap.pop(rid, None)
                for g in group:
                    reserved[g] = when
                continue
            if self.opts["preempt"] and not preempted_now and preempt_tries < 2:
                preempt_tries += 1
                if self._preempt(view, reserved, now, d, rec, info, StageKind.DIFFUSE, actions):
                    preempted_now = True
                    continue
            if group is not None:
                for g in group:
                    reserved[g] = when
        if idle_total and not preempted_now and self.narrow and self.opts["wide"]:
            base_busy = self._base_busy(view) if base_busy is None else base_busy
            if base_busy < max(self.opts["wide_below"], self.opts["wide_loose"]) * n_gpus:
                self._grow(view, idle, reserved, now, actions, base_busy / n_gpus)
        return actions

    def _wide_bound(self, spec: RequestSpec, info: ClassInfo) -> float:
        """The fraction of the GPUs the running work may hold (unwidened) for this request to be widened:
        ``wide_loose`` (or ``wide_below`` if that is higher: a loose SLO is widened at least as far as a tight
        one) when its SLO is at least ``loose`` times its no-queue latency, else ``wide_below``.
        Widening spends GPU-seconds that a tight deadline arriving later may need; a loose one leaves
        room, and latency is then what its user sees."""
        ref = info.enc_s + spec.shape.steps * info.step_s[info.eff_d] + info.dec_s
        below = self.opts["wide_below"]
        return max(below, self.opts["wide_loose"]) if spec.slo_s >= self.opts["loose"] * ref else below

    # ------------------------------------------------------------------------------ choosing GPUs
    def _usable(self, view: ClusterView, g: int, reserved: dict[int, float], now: float, dur: float) -> bool:
        t = reserved.get(g)
        return t is None or now + dur <= t + 1e-9

    def _fits(self, view: ClusterView, model: str, stage: StageKind, shape: Shape, batch: int, degree: int, g: int) -> bool:
        return view.memory_needed_gib(model, stage, shape, batch, degree, g) <= view.free_gib(g) + 1e-9

    def _planned_on(self, model: str, stage: StageKind) -> frozenset[int]:
        """The GPUs the current plan wants ``(model, stage)`` on (cached per plan)."""
        if self._planned_for is not self.plan:
            self._planned_for, self._planned = self.plan, {}
        gpus = self._planned.get((model, stage))
        if gpus is None:
            gpus = self._planned[(model, stage)] = frozenset(g for g, inst in self.plan.items() if (model, stage) in inst)
        return gpus

    def _act(self, view: ClusterView, info: ClassInfo, model: str, stage: StageKind, shape: Shape, degree: int) -> float:
        """Activation GiB per GPU of one request's ``stage`` at ``degree`` (the cost model's, kept per class)."""
        act = info.act_gib.get((stage, degree))
        if act is None:
            act = info.act_gib[(stage, degree)] = view.cost.activation_gib(
                model, stage, None if stage == StageKind.ENCODE else shape, 1, degree, view.gpu_kind)
        return act

    def _pick_one(self, view, idle, reserved, now, dur, model, stage, rec, info) -> tuple[int | None, list[Action]]:
        """One GPU for an encode or decode, and any evictions needed to make room on it."""
        prefer = set(rec.latents_on) if stage == StageKind.DECODE else set()
        plan = self.plan
        held, planned = view.gpus_holding(model, stage), self._planned_on(model, stage)
        best = self._first_one(view, idle, reserved, now, dur, prefer, held, planned)
        if best is None:
            return None, []
        # usually it fits (``_fits``, with the weights missing where the GPU does not hold them): no need
        # to rank them all
        act = self._act(view, info, model, stage, rec.spec.shape, 1)
        if (act if best in held else view.instance_gib(model, stage) + act) <= view.free_gib(best) + 1e-9:
            return best, []
        candidates = []  # (preference..., g): best first once sorted
        for gpus in idle:
            size = len(gpus)
            candidates += [(g not in prefer, g not in held, g not in planned, size, g) for g in gpus
                           if g not in reserved or self._usable(view, g, reserved, now, dur)]
        candidates.sort()
        for *_, g in candidates:  # memory admission, best candidate first
            if self._fits(view, model, stage, rec.spec.shape, 1, 1, g):
                return g, []
        for *_, g in candidates:  # make room: evict instances the plan does not want there
            need = view.memory_needed_gib(model, stage, rec.spec.shape, 1, 1, g)
            evict = self._room_on(view, g, need, [i for i in view.resident(g) if i not in plan.get(g, ())
                                                  and i != (model, stage)])
            if evict is not None:
                return g, evict
        return None, []

    @staticmethod
    def _room_on(view, g, need, spare) -> list[Action] | None:
        """The evictions, of the ``spare`` instances on ``g``, largest first, that leave ``need`` GiB
        free there (None: even all of them do not)."""
        evict, free = [], view.free_gib(g)
        for w, m, s in sorted(((view.instance_gib(m, s), m, s) for m, s in spare), reverse=True):
            if free >= need:
                break
            evict.append(Evict(m, s, g))
            free += w
        return evict if free >= need - 1e-9 else None

    def _first_one(self, view, idle, reserved, now, dur, prefer, held, planned) -> int | None:
        """The first of ``_pick_one``'s ranking without ranking every idle GPU: the usable idle GPUs
        in ``prefer``, ``held`` and ``planned``, else those in the first two, ... (the order of the
        key ``(not in prefer, not in held, not in planned)``), and among them the one on the node
        with the fewest idle GPUs, then the lowest id."""
        node_of = self._node_of
        both = self._held_planned(held, planned)
        for tier in self._tiers(prefer, held, planned, both) if prefer else (both, held, planned, None):
            if tier is not None and len(tier) <= 8:  # a small tier: its members looked up among the idle
                if reserved:
                    found = [g for g in tier if g in idle[node_of[g]]
                             and (g not in reserved or self._usable(view, g, reserved, now, dur))]
                else:
                    found = [g for g in tier if g in idle[node_of[g]]]
                if found:
                    return found[0] if len(found) == 1 else min([(len(idle[node_of[g]]), g) for g in found])[1]
                continue
            # a large tier (None: every GPU): the idle GPUs looked up in it, per node the first (the
            # lowest id: a node's idle GPUs are in id order), the node with the fewest idle GPUs first
            best = None
            for gpus in idle:
                if not gpus or (best is not None and len(gpus) > best[0]):
                    continue
                for g in gpus:
                    if (tier is None or g in tier) and (
                            g not in reserved or self._usable(view, g, reserved, now, dur)):
                        if best is None or (len(gpus), g) < best:
                            best = (len(gpus), g)
                        break
            if best is not None:
                return best[1]
        return None

    @staticmethod
    def _tiers(prefer, held, planned, both):
        """Sets of GPUs, each holding a usable idle GPU only where every set before it holds none:
        then its usable idle GPUs are exactly one tier of ``_pick_one``'s key, in key order (``both``:
        ``held & planned``; None: every idle GPU). Made lazily: usually an early one has some. Without
        ``prefer`` its four tiers are empty: ``_first_one`` starts at ``both``."""
        yield prefer & both
        yield prefer & held
        yield prefer & planned
        yield prefer
        yield both
        yield held
        yield planned
        yield None

    def _held_planned(self, held: frozenset[int], planned: frozenset[int]) -> frozenset[int]:
        """``held & planned``, kept while both are the same sets (a placement change or a new plan
        makes new ones); the few pairs asked for are kept, their sets with them."""
        got = self._both.get((id(held), id(planned)))
        if got is None or got[0] is not held or got[1] is not planned:
            if len(self._both) >= 64:
                self._both.clear()
            got = self._both[(id(held), id(planned))] = (held, planned, held & planned)
        return got[2]

    def _pick_group(self, view, idle, reserved, now, dur, d, rec, info,
                    evict: list | None = None) -> tuple[int, ...] | None:
        """``d`` idle GPUs on one node where the diffuse fits (best fit first). ``evict`` given, and
        the plan holding this denoiser nowhere (the planner could not fit it beside its activation
        reserve, on small GPUs): idle GPUs are also made room on, their evictions appended to it;
        without that its requests waited for ever."""
        model, shape = rec.spec.model, rec.spec.shape
        near = set(rec.latents_on or rec.embeddings_on)
        held, encoders = view.gpus_holding(model, StageKind.DIFFUSE), self._planned_on(model, StageKind.ENCODE)
        node_of = self._node_of
        near_nodes = {node_of[g] for g in near}
        pools = enumerate(idle)
        if reserved:
            pools = [(node, [g for g in gpus if g not in reserved or self._usable(view, g, reserved, now, dur)])
                     for node, gpus in pools if len(gpus) >= d]
        # key: usable GPUs (best fit), GPUs among the d taken that lack the inputs (those holding them go first), node
        options = [((len(usable), d - min(d, len(near.intersection(usable))) if node in near_nodes else d, node),
                    usable) for node, usable in pools if len(usable) >= d]
        options.sort()  # best fit first: keep big holes for big requests
        # memory admission (``_fits``), its parts found once: the activations, and the weights where missing
        act = self._act(view, info, model, StageKind.DIFFUSE, shape, d)
        weights = view.instance_gib(model, StageKind.DIFFUSE)
        free = view.free_gib
        for _, usable in options:
            if len(usable) == d:  # all of them or none: no need to rank them
                if all((act if g in held else weights + act) <= free(g) + 1e-9 for g in usable):
                    return tuple(sorted(usable))
                continue
            usable = [k[-1] for k in sorted((g not in near, g not in held, g in encoders, g) for g in usable)]
            fit = []
            for g in usable:
                if (act if g in held else weights + act) <= view.free_gib(g) + 1e-9:
                    fit.append(g)
                    if len(fit) == d:
                        return tuple(sorted(fit))
        if evict is None or self._planned_on(model, StageKind.DIFFUSE):
            return None
        for _, usable in options:  # make room: the fewest evictions, the largest instances first
            room = []
            for g in usable:
                out = self._room_on(view, g, act if g in held else weights + act,
                                    [i for i in view.resident(g) if i != (model, StageKind.DIFFUSE)])
                if out is not None:
                    room.append((len(out), g, out))
            if len(room) >= d:
                room.sort(key=lambda r: r[:2])
                for _, _, out in room[:d]:
                    evict.extend(out)
                return tuple(sorted(g for _, g, _ in room[:d]))
        return None

    def _soonest(self, view, reserved, now, d) -> tuple[float, tuple[int, ...] | None]:
        """The ``d`` unreserved GPUs of one node that free soonest (``busy_until``), and when the last of
        them frees: the node where that is earliest (inf, None: no node has ``d``)."""
        frees = self._frees
        if frees is None:  # per node, (busy_until, gpu) sorted: once a pass (the view holds still in it)
            frees = self._frees = [sorted((view.busy_until(g, now), g) for g in gpus) for gpus in view.nodes]
        best_t, best = math.inf, None
        for times in frees:
            got = []
            for tg in times:
                if tg[1] not in reserved:
                    got.append(tg)
                    if len(got) == d:
                        break
            else:
                continue  # fewer than d unreserved
            t = got[-1][0]
            if t < best_t:
                best_t, best = t, tuple(g for _, g in got)
        return best_t, best

    def _preempt(self, view, reserved, now, d, rec, info, stage, actions) -> bool:
        """Pause the best victim for ``rec`` (if any): the Preempt action, and its GPUs reserved."""
        got = self._preempt_for(view, reserved, now, d, rec, info, stage)
        if got is None:
            return False
        victim, freed_at, freed = got
        actions.append(Preempt(victim))
        self.paused_at[victim] = now
        self.grown.discard(victim)
        for g in freed:
            reserved[g] = freed_at
        return True

    def _preempt_for(self, view, reserved, now, d, rec, info, stage=StageKind.DIFFUSE):
        """A running diffuse whose pause gives ``rec`` d GPUs on one node, keeping its own deadline."""
        need_s = self._remaining(rec, info, max(d, 1) if stage == StageKind.DIFFUSE else info.eff_d, stage)
        best, best_slack = None, 0.0
        for run in view.running():
            a = run.action
            if a.stage != StageKind.DIFFUSE or run.preempt_at_step is not None or run.step_s <= 0:
                continue
            # a victim must have run at least a step, and not have been paused just before: no
            # pause/resume cycles that make no progress
            if now - run.compute_start_s < run.step_s or any(
                    now - self.paused_at.get(v, -math.inf) < 10 * run.step_s and not self._regrown(v, view)
                    for v in a.request_ids):
                continue
            node = view.node_of(a.gpus[0])
            free_here = [g for g in view.idle_gpus(node) if g not in reserved]
            if len(free_here) + len(a.gpus) < d or any(g in reserved for g in a.gpus):
                continue
            slack = math.inf  # a diffuse of late requests only: they missed already, it yields first
            for vid in a.request_ids:
                if vid in self.hopeless:
                    continue
                v = view.request(vid)
                vinfo = self._info_for(view, v.spec.model, v.spec.shape)
                finish = run.predicted_end_s + vinfo.dec_s + need_s + run.step_s
                slack = min(slack, v.spec.deadline_s - self.opts["margin"] * v.spec.slo_s - finish)
            if slack > best_slack:
                freed_at = max(now, run.compute_start_s + math.ceil(max(0.0, now - run.compute_start_s) / run.step_s) * run.step_s)
                if freed_at > now + 2 * run.step_s:
                    continue
                group = tuple(sorted(list(a.gpus) + free_here))[: max(d, len(a.gpus))]
                best, best_slack = (a.request_ids[0], freed_at, group), slack
        return best

    # ------------------------------------------------------------------------------ batching
    def _stage_batch(self, view, info: ClassInfo, stage: StageKind, model: str) -> int:
        """Largest batch worth forming for an encode (per model) or a decode (per class)."""
        if stage == StageKind.DECODE:
            return info.dec_batch
        best = self.encode_batch.get(model)
        if best is None:
            cost, kind = view.cost, view.gpu_kind
            one = cost.latency_s(model, StageKind.ENCODE, None, 1, 1, kind)
            best = 1
            for b in (8, 4, 2):
                try:
                    if cost.latency_s(model, StageKind.ENCODE, None, b, 1, kind) / b <= 0.85 * one:
                        best = b
                        break
                except LookupError:
                    continue
            self.encode_batch[model] = best
        return best

    def _mates(self, view, rid, stage, spec, limit, taken) -> list[int]:
        out = []
        for entry in self.ready[:128]:
            other = entry[2]
            if other == rid or other in taken:
                continue
            rec = view.request(other)
            if WAITING_FOR.get(rec.state) != stage or rec.spec.model != spec.model:
                continue
            if stage == StageKind.DECODE and rec.spec.shape != spec.shape:
                continue
            out.append(other)
            if len(out) >= limit:
                break
        return out

    def _diffuse_mates(self, view, rec, info, d, group, now, taken, margin) -> list[int]:
        spec = rec.spec
        out: list[int] = []
        for entry in self.ready[:128]:
            other = entry[2]
            if other == rec.id or other in taken:
                continue
            o = view.request(other)
            if (WAITING_FOR.get(o.state) != StageKind.DIFFUSE or o.steps_done != 0 or o.spec.model != spec.model
                    or o.spec.shape != spec.shape or self.safer.get(other)):
                continue
            out.append(other)
            if len(out) + 1 >= info.batch:
                break
        # keep the largest batch whose members all still meet their deadlines
        while out:
            b = len(out) + 1
            step = view.cost.latency_s(spec.model, StageKind.DIFFUSE, spec.shape, b, d, view.gpu_kind)
            finish = now + spec.shape.steps * step + info.dec_s
            deadline = min([rec.spec.deadline_s] + [view.request(o).spec.deadline_s for o in out])
            if finish <= deadline - margin and all(
                    self._fits(view, spec.model, StageKind.DIFFUSE, spec.shape, b, d, g) for g in group):
                break
            out.pop()
        return out
