"""``trident``'s admission test for ``late=reject`` (goodput mode): on arrival, a request is turned
away if it cannot meet its deadline behind the work already admitted ahead of it; once admitted it
is served, late if it comes to that. Under ``late=serve`` with ``triage`` (the default) the same
answer admits it late instead: it is served behind every request that can still make it. A mixin of
:class:`~.trident.Trident`, whose ready queue, class answers, unwidened degrees and ``_remaining`` it
uses.

The test is a list schedule of the waiting work, in the policy's own order:

* every GPU starts free when the dispatch on it is predicted to end, except a diffuse that
  ``trident`` would pause for the new request (its requests ranked behind it, or able to wait that
  long and still meet their deadlines: the preemption rule), free at its next step boundary, and a
  widened diffuse, which holds only its unwidened degree beyond its next step boundary;
* with ``admit_running`` (opt-in), a request ranked ahead whose encode (or a diffuse not to be
  paused) is running takes, from when that dispatch ends, the GPUs for the stages it has left,
  counted as running work (its wait is not stretched below). Without it, those stages are not seen:
  a burst whose encodes ran in one batch looks as if it had the GPUs to itself (outside test 93: 6 of
  6 admitted at once on 1x2xH200 at SLO scale 3, 5 met their SLO with stage times as predicted; with
  it 5 admitted, 5 met). Requests that arrived at the same instant as the new one (a generation of n
  images, a burst) are counted so always: they have done nothing yet (outside test 130: a generation
  of 8 images was admitted whole on an idle 1x8xH200 where one alone just met its SLO, 7 missed);
* each request ranked ahead takes, at the smallest degree that would still meet its deadline if it
  started now (the degree ``trident`` gives it under load), the GPUs of one node that free soonest,
  for all its remaining stages; one that can no longer make it is skipped (it will run behind);
* the new request finishes at the soonest, over its degrees and the nodes, of: after the work ahead,
  or in a hole the work ahead leaves before it claims its GPUs (backfilling, as ``trident`` does).

Work ranked behind it does not count (it would wait for this one). Under overload the test is
optimistic: work not yet arrived overtakes the new request, and a request admitted on a hopeful
estimate is then served late and makes others late too. So while the work arriving (GPU-seconds per
second at each request's cheapest degree that meets its SLO, over the last minute) exceeds the
GPUs, the share of the predicted wait due to queued work (not to running work) is stretched by
``admit_wait``; but not for a class whose recent arrivals were refused more often than all recent
arrivals (by 2 points): the stretch must not turn fairness into starving the largest class.

Measured (``trident:late=reject``, simulated 2x8xH200, SLO scale 3, 300 s at twice the capacity
ceiling; ``benchmarks/overload.py``, seed 0, since running diffuses free at their next step boundary
here): flux-uniform, 1078 requests: with no stretch (``admit_wait=1``) 356 finish within their SLO of
557 admitted; with the default 3, 488 of 611 (``trident`` serving everything: 286, or 484 with
triage; the best baseline: 129); image-video, 494 requests: 417 of 455, and 416 of 449 (``trident``
with triage: 431). Over seeds 0-3 the boundary changed the sums by -2 % (flux-uniform) and +1 %
(image-video) in goodput mode, within noise in serve mode (with a whole step: 475 and 435 at seed 0).
``admit_running`` (also in triage) moves those sums to flux-uniform ``trident`` 7,155 (7,068
without), goodput mode 7,167 (7,194); image-video 6,782 (6,742) and 6,897 (6,696). It is off by
default because on the goodput table's streams it lowers fair goodput at the tight SLO scale 1.5:
flux-uniform 1.185 and 1.180 req/s (goodput mode) against 1.211 and 1.231, image-video 0.425 and
0.404 against 0.434 and 0.427 (sd3-mixed at 3 is up, 4.613 and 4.650 against 4.535 and 4.564;
``benchmarks/goodput.py --policies "trident;trident:late=reject"``, measured with it on): the list
schedule prices the stages left at the smallest degree that meets each deadline, with no batching
or widening, and at tight SLOs that refuses (or, in serve mode, admits late) requests the policy
would have served in time.

Past ``_MAX_AHEAD`` requests ahead, the rest is spread over all GPUs as GPU-seconds. A request with
nothing ranked ahead of it that can start now on idle GPUs is admitted without building the schedule
(the schedule's own answer: the light-load case, most arrivals, costs no more than a glance at the
idle GPUs).
"""

from __future__ import annotations

import math
from collections import deque

from ..dispatch import next_boundary
from ..lifecycle import WAITING_FOR, RequestRecord
from ..state import ClusterView
from ..types import StageKind
from .trident_classes import ClassInfo

__all__ = ["Admission"]

_MAX_AHEAD = 256  # waiting requests placed one by one; beyond them, their GPU-seconds are spread evenly
_LOAD_WINDOW_S = 60.0  # the offered load is measured over the arrivals of this many seconds...
_LOAD_ARRIVALS = 64  # ...or of this many arrivals if they span longer
_FAIR_ARRIVALS = 40  # a class's last arrivals: the wait is stretched only while the fraction of them
_FAIR_REFUSED = 0.02  # refused is at most this much above the fraction of all recent arrivals refused


def _by_ahead(g: list) -> tuple[float, int]:
    return g[1], g[3]


class Admission:
    """The arrival-time admission test of ``late=reject`` (the module docstring)."""

    def _admission_refusal(self, view: ClusterView, rec: RequestRecord, info: ClassInfo,
                           now: float) -> tuple[str, float] | None:
        """Why ``rec`` (just queued) would miss its deadline behind the admitted work ahead of it, and
        by how much (seconds: the same request sent that much later would finish in time if nothing
        new came ahead of it), or None when it can meet it."""
        mine = self.entry[rec.id]
        stage = WAITING_FOR[rec.state]
        key = (rec.spec.model, rec.spec.shape)
        refused = self.refused.setdefault(key, deque(maxlen=_FAIR_ARRIVALS))
        overall = self.refused_all
        need = self._remaining(rec, info, info.eff_d, stage)
        # requests that arrived at this same instant (a generation of n images, a burst) and already run
        # a stage count as running work with their stages left, ``admit_running`` or not: they have done
        # nothing yet (outside test 130: on an idle 1x8xH200 a generation of 8 images with an 0.8 s SLO,
        # each image 0.695 s alone on the 8 GPUs, was admitted whole; 7 of 8 missed)
        # (the set holds this request too, which is not running: no copy of a burst's set per arrival)
        together = len(self._arrived_with) > 1 and self._arrived_at == now
        left = (self._stages_left(view, now, mine[0], need) if self.opts["admit_running"] else
                self._stages_left(view, now, mine[0], need, self._arrived_with) if together else [])
        if not left and self.ready[0] == mine and self._starts_now(view, rec, info, stage, now):
            refused.append(False)  # the list schedule's answer, without building it
            overall.append(False)
            return None
        # per node, per GPU: [when the running work frees it, when the work ahead frees it, when the
        # work ahead first claims it (a hole before the claim may be backfilled), its place on the node],
        # kept in order of when the work ahead frees them
        gpus = [sorted(([t, t, math.inf, i] for i, t in enumerate(times)), key=_by_ahead)
                for times in self._free_times(view, now, mine[0], need)]
        spread = 0.0  # GPU-seconds of the work ahead beyond _MAX_AHEAD
        placed = 0

        def place(other: RequestRecord, ostage: StageKind, ready_at: float) -> None:
            nonlocal spread, placed
            oinfo = self._info_for(view, other.spec.model, other.spec.shape)
            if ready_at + self._remaining(other, oinfo, oinfo.fast_d, ostage) > other.spec.deadline_s:
                return  # found late at the next pass: then it runs behind every request that can make it
            d = self._degree_now(other, oinfo, ostage, ready_at)
            dur = self._remaining(other, oinfo, d, ostage)
            if placed >= _MAX_AHEAD:
                spread += dur * d
                return
            placed += 1
            node, at = None, math.inf  # the node whose d-th GPU frees first (the first such node)
            for n in gpus:
                if len(n) >= d and (node is None or n[d - 1][1] < at):
                    node, at = n, n[d - 1][1]
            start = max(ready_at, node[d - 1][1])
            for g in node[:d]:
                g[1], g[2] = start + dur, min(g[2], start)
            node.sort(key=_by_ahead)

        if left:
            # requests ranked ahead with a stage running: first the stages they have left once it ends,
            # counted as running work (not stretched below). Left out, a burst whose encodes ran in one
            # batch was admitted whole, its diffuses unseen, and its last requests missed (outside test
            # 93: 6 of 6 admitted at once on 1x2xH200, 5 met their SLO, with stage times as predicted)
            for _, ready_at, other, ostage in left:
                place(other, ostage, ready_at)
            for node in gpus:
                for g in node:
                    g[0] = g[1]
            placed = 0
        for entry in self.ready:
            if entry >= mine or entry[0] == math.inf:
                break  # the rest is ranked behind it (late work is behind everything)
            other = view.request(entry[2])
            ostage = WAITING_FOR.get(other.state)
            if ostage is not None:
                place(other, ostage, now)
        shift = spread / view.num_gpus
        stretch = 1.0
        if self._offered(now) >= view.num_gpus and (
                sum(refused) <= (sum(overall) / max(1, len(overall)) + _FAIR_REFUSED) * len(refused)):
            stretch = self.opts["admit_wait"]
        deadline = rec.spec.deadline_s + 1e-9
        finish = math.inf
        # per node: when its GPUs free after the running work alone, and after the work ahead too
        nodes = [(sorted(max(now, g[0]) for g in node), sorted(g[1] for g in node), node) for node in gpus]
        # a refusal also says when to come back: when the work ahead has freed the GPUs of a degree
        # that alone meets its SLO, its wait stretched as here (then the request would start at once)
        slo = rec.spec.slo_s + 1e-9
        back = math.inf
        for d in info.degrees:
            left = self._remaining(rec, info, d, stage)
            for running, ahead, node in nodes:
                if len(node) < d:
                    continue
                first = running[d - 1]
                after = max(first, ahead[d - 1] + shift)
                begins = first + stretch * (after - first)  # the queued share stretched
                if left <= slo and begins < back:
                    back = begins
                finish = min(finish, begins + left)
                if after > first:  # the work ahead claims GPUs here: it may leave a hole to backfill
                    for start in running:  # in order: once a start is too late, so are the rest
                        if start + left >= finish:
                            break
                        if sum(max(now, g[0]) <= start and g[2] >= start + left
                                                         for g in node) >= d:
                            finish = start + left
                            break
                if finish <= deadline:
                    break  # it can make it: that is all the answer needs
            if finish <= deadline:
                break
        refused.append(finish > deadline)
        overall.append(refused[-1])
        if not refused[-1]:
            return None
        if back == math.inf:
            fastest = min(self._remaining(rec, info, d, stage) for d in info.degrees)
            if fastest > slo:  # no wait makes it: a retry is refused again (no Retry-After)
                return ("cannot meet its SLO at any wait: alone on idle GPUs at its fastest degree it would take "
                        "{}, its SLO is {}".format(*_secs_apart(fastest, rec.spec.slo_s)), math.inf)
        return (f"would miss its deadline: {placed + (1 if spread else 0)}+ admitted requests are ahead of it; "
                f"with its wait stretched x{stretch:g} it would finish {{}} after arrival at the earliest, its SLO "
                f"is {{}}".format(*_secs_apart(finish - rec.spec.arrival_s, rec.spec.slo_s)),
                max(0.0, back - now) if back < math.inf else 0.0)

    def _starts_now(self, view: ClusterView, rec: RequestRecord, info: ClassInfo, stage: StageKind, now: float) -> bool:
        """Whether ``rec``, with nothing ranked ahead of it, meets its deadline starting now on the idle
        GPUs of one node: then the list schedule admits it too (idle GPUs free at ``now``), and the
        common case at light load costs no schedule."""
        most = max(map(len, view.idle_on_nodes()))
        deadline = rec.spec.deadline_s + 1e-9
        return any(d <= most and now + self._remaining(rec, info, d, stage) <= deadline for d in info.degrees)

    def _note_arrival(self, spec, info: ClassInfo, now: float) -> None:
        """Count an arrival's work in the offered load: GPU-seconds at the cheapest degree whose
        no-queue latency meets its SLO (the fastest degree if none does)."""
        steps, fixed = spec.shape.steps, info.enc_s + info.dec_s
        meets = [fixed + steps * info.step_s[d] * d for d in info.degrees
                 if fixed + steps * info.step_s[d] <= spec.slo_s]
        work = min(meets) if meets else fixed + steps * info.step_s[info.fast_d] * info.fast_d
        self.arrived.append((now, work))
        self.arrived_gpu_s += work
        self._offered(now)  # (drops what fell out of the window: nothing else may ask for a long time)

    def _offered(self, now: float) -> float:
        """GPUs' worth of work arriving per second, every arrival counted (admitted or not): over the
        last ``_LOAD_WINDOW_S`` seconds, or the last ``_LOAD_ARRIVALS`` arrivals if those span longer
        (sparse long requests); over the time since start, at least 10 s, before that."""
        kept = self.arrived
        while len(kept) > _LOAD_ARRIVALS and kept[0][0] < now - _LOAD_WINDOW_S:
            self.arrived_from, gpu_s = kept.popleft()
            self.arrived_gpu_s -= gpu_s
        return self.arrived_gpu_s / max(10.0, now - self.arrived_from)

    def _free_times(self, view: ClusterView, now: float, key: float, need: float) -> list[list[float]]:
        """Per node, per GPU (in id order), when it frees for a request ranked at ``key`` that needs
        about ``need`` seconds: when the dispatch on it is predicted to end, except that a diffuse
        that could be paused for it frees at its next step boundary (its requests are ranked behind,
        or would still meet their deadlines after waiting ``need``: the preemption rule), and a
        widened diffuse counts at its unwidened degree (a shrink gives the rest back at its next step
        boundary, and its own steps then take longer)."""
        until = [view.busy_until(g, now) for g in range(view.num_gpus)]
        for run in view.running():
            a = run.action
            if a.stage != StageKind.DIFFUSE or run.step_s <= 0:
                continue
            boundary = _next_boundary(run, now)
            if all(self._rank(view, rid) > key or self._can_wait(view, rid, run.predicted_end_s + run.step_s + need)
                   for rid in a.request_ids):
                for g in a.gpus:
                    until[g] = min(until[g], boundary)
                continue
            base = self.base.get(a.request_ids[0], len(a.gpus))
            if base >= len(a.gpus):
                continue
            v = view.request(a.request_ids[0])
            info = self._info_for(view, v.spec.model, v.spec.shape)
            slower = info.step_s[base] / info.step_s[len(a.gpus)] if len(a.gpus) in info.step_s else 1.0
            for g in a.gpus[:base]:
                until[g] = now + max(0.0, run.predicted_end_s - now) * slower
            for g in a.gpus[base:]:
                until[g] = min(until[g], boundary)
        return [[until[g] for g in gpus] for gpus in view.nodes]

    def _stages_left(self, view: ClusterView, now: float, key: float, need: float,
                     only: set[int] | None = None) -> list[tuple[float, float, RequestRecord, StageKind]]:
        """The requests ranked ahead of ``key`` (or as high: they were admitted first; not late) whose
        encode, or whose diffuse that is not to be paused, is running: (rank, when that dispatch is
        predicted to end, the request, its next stage), the most urgent first (``only``: of these
        requests alone). A diffuse that would be paused for a newcomer needing ``need`` seconds frees
        its GPUs at its next boundary (``_free_times``), and its rest waits behind it."""
        left = []
        for run in view.running():
            a = run.action
            if a.stage == StageKind.DECODE:
                continue
            for rid in a.request_ids:
                if only is not None and rid not in only:
                    continue
                rank = self._rank(view, rid)
                if rank > key:  # (the same rank: a request of the same class that arrived with it, earlier)
                    continue
                rec = view.request(rid)
                if a.stage == StageKind.DIFFUSE and run.step_s > 0 and self._can_wait(
                        view, rid, run.predicted_end_s + run.step_s + need):
                    continue  # paused for the newcomer (``_free_times``' rule): its rest comes after
                nxt = StageKind.DIFFUSE if a.stage == StageKind.ENCODE else StageKind.DECODE
                left.append((rank, max(now, run.predicted_end_s), rec, nxt))
        left.sort(key=lambda t: (t[0], t[1]))
        return left

    def _can_wait(self, view: ClusterView, rid: int, diffused_by: float) -> bool:
        """Whether a running request still meets its deadline if its diffuse ends at ``diffused_by``."""
        v = view.request(rid)
        info = self._info_for(view, v.spec.model, v.spec.shape)
        return diffused_by + info.dec_s <= v.spec.deadline_s - self.opts["margin"] * v.spec.slo_s

    def _rank(self, view: ClusterView, rid: int) -> float:
        """The queue key of a running request: its rank on arrival (``order=admission``), else its
        latest start now; +inf for one found late."""
        if rid in self.hopeless:
            return math.inf
        entry = self.first_key.get(rid)
        if entry is not None:
            return entry[0]
        rec = view.request(rid)
        info = self._info_for(view, rec.spec.model, rec.spec.shape)
        return rec.spec.deadline_s - self._remaining(rec, info, info.eff_d, StageKind.DIFFUSE)

    def _degree_now(self, rec: RequestRecord, info: ClassInfo, stage: StageKind, now: float) -> int:
        """The smallest degree at which ``rec`` would still meet its deadline if it started now (the
        fastest if none would)."""
        for d in info.degrees:
            if now + self._remaining(rec, info, d, stage) <= rec.spec.deadline_s:
                return d
        return info.fast_d


def _next_boundary(run, now: float) -> float:
    """When a running diffuse can next be paused or shrunk: its next step boundary, and not before it
    has run one step (``trident`` pauses nothing younger: no pause/resume cycles that make no progress).
    It was ``now`` plus a whole step, which turned away a short request that the running diffuse's next
    boundary, a fraction of a step away, leaves time for."""
    return max(next_boundary(run, now)[1], run.compute_start_s + run.step_s)


def _secs(s: float, digits: int = 3) -> str:
    """Seconds for a message: three significant digits (0.0834 s, 1.25 s, 84.1 s), so that two different
    times never print alike at a small SLO; whole seconds from 1000 s (``digits`` more: decimals there)."""
    return f"{s:.{max(0, digits - 4)}f} s" if abs(s) >= 1000 else f"{s:.{digits}g} s"


def _secs_apart(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` as :func:`_secs` says them, with more digits while two different times would
    print alike (outside test 93: "it would finish 4.71 s after arrival ..., its SLO is 4.71 s", which
    read as a request that meets its SLO)."""
    for digits in range(3, 10) if a != b else ():
        if _secs(a, digits) != _secs(b, digits):
            return _secs(a, digits), _secs(b, digits)
    return _secs(a), _secs(b)
