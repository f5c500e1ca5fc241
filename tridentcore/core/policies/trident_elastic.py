"""``trident``'s work-conserving part (``wide``): widening a diffuse onto GPUs no waiting work needs,
shrinking a widened one at a step boundary when work waits, and growing a narrow one onto GPUs that
went idle and that no waiting work can take; and head starts (``grow``): a diffuse waiting for a
group starts on the part of it already idle and is grown when the rest frees. A mixin of
:class:`~.trident.Trident`, whose state it shares: ``opts``, ``base`` (the degree a running diffuse
would have had unwidened), ``cap`` (the most GPUs a shrunk request's next diffuse may take),
``narrow`` (requests whose running diffuse is narrower than worth it), ``growing`` (head starts and
the degree each grows to), ``paused_at``, ``hopeless``, ``stretch`` and the per-class answers.

A pause here is the same ``Preempt`` as any other: the diffuse stops at its next step boundary, and
the request, first in line by its arrival rank, is dispatched again at once on the degree the pass
then gives it (its latents moving at their transfer cost), in the simulator and the live engine
alike.
"""

from __future__ import annotations

import math

from ..events import Preempt
from ..state import ClusterView
from ..types import StageKind
from .trident_classes import ClassInfo

__all__ = ["Elastic"]


class Elastic:
    """Widen, shrink and grow diffuses (the module docstring)."""

    def _base_busy(self, view: ClusterView) -> int:
        """GPUs the running work would hold at the degrees it would have had without widening."""
        busy = 0
        base = self.base
        for run in view.running():
            a = run.action
            n = len(a.gpus)
            busy += min(n, base.get(a.request_ids[0], n)) if a.stage == StageKind.DIFFUSE else n
        return busy

    def _widest(self, info: ClassInfo, feasible: list[int], spare: int) -> int:
        """The largest degree within ``spare`` GPUs at which each doubling still cuts the step time by
        ``gain`` (0: none is)."""
        best = 0
        for d in sorted(feasible):
            if d > spare:
                break
            if best and info.step_s[d] > (1.0 - self.opts["gain"]) * info.step_s[best]:
                break
            best = d
        return best

    def _top(self, view, model, shape) -> int:
        """The fastest degree worth its GPUs for a class, with GPUs to spare."""
        top = self._tops.get((model, shape))
        if top is None:
            info = self._info_for(view, model, shape)
            top = self._tops[(model, shape)] = self._widest(info, list(info.degrees), view.num_gpus)
        return top

    def _regrown(self, rid: int, view: ClusterView) -> bool:
        """Whether ``rid``'s last pause widened it (``shrink_grown``) while the running work holds at most
        ``grown_below`` of the GPUs at its unwidened degrees: waiting work may then pause it after one
        step at its new degree, not ten: the GPUs it took were idle, and giving them back makes progress
        (only new work that needs them shrinks it, and a shrunk request is not grown for 10 steps).
        Busier, the guard stands: with no bound, near saturation (image-video at SLO 3 and 5, widened up
        to ``wide_loose``) the early shrinks cost the lowest class about 4 points of attainment; bounded
        at ``wide_below`` (0.5) they still cost image-video's fair goodput at SLO 1.5 (0.434 to 0.420
        req/s) and 3 (0.782 to 0.771), which 0.3 keeps."""
        return (rid in self.grown and self.opts["shrink_grown"]
                and self._base_busy(view) <= self.opts["grown_below"] * view.num_gpus)

    def _movable(self, runs, view, reserved, now, shrinking=False, start_by=None):
        """The diffuses of ``runs`` a widening may pause, each with its request, class answers and the steps
        it will have done at its next boundary: one request (a batch stays whole), not paused in its
        last 10 steps (no pause/resume cycles that make no progress; ``shrinking``: one widened by its
        last pause, after a step, see :meth:`_regrown`; or, ``shrink_urgent``, however many GPUs the
        running work holds if its next boundary comes by ``start_by``, when the waiting request must
        start to meet its deadline), on no reserved GPU."""
        for run in runs:
            a = run.action
            if a.stage != StageKind.DIFFUSE or run.preempt_at_step is not None or run.step_s <= 0 or len(a.request_ids) > 1:
                continue
            rid = a.request_ids[0]
            done = 0 if now <= run.compute_start_s else math.ceil((now - run.compute_start_s) / run.step_s - 1e-9)
            if now - self.paused_at.get(rid, -math.inf) < 10 * run.step_s and not (
                    shrinking and now - run.compute_start_s >= run.step_s and (self._regrown(rid, view) or (
                        start_by is not None and rid in self.grown
                        and run.compute_start_s + done * run.step_s <= start_by))):
                continue
            if any(g in reserved for g in a.gpus):
                continue
            v = view.request(a.request_ids[0])
            yield run, v, self._info_for(view, v.spec.model, v.spec.shape), done

    def _grow(self, view, idle, reserved, now, actions, base_frac: float) -> None:
        """GPUs idle that no waiting work could take: pause the running diffuse that gains most from them
        at its next step boundary; it resumes at once, wider, on its node or another (the GPUs must hold
        its weights: no load). Only diffuses whose bound (``_wide_bound``) is above ``base_frac``, the
        fraction of the GPUs the running work holds unwidened."""
        best, best_gain = None, 0.0
        holding: dict[str, list[int]] = {}  # model -> per node, its idle unreserved GPUs that hold its diffuse
        narrow = [run for run in view.running() if run.action.request_ids[0] in self.narrow]
        for run, v, info, done in self._movable(narrow, view, reserved, now):
            if base_frac >= self._wide_bound(v.spec, info):
                continue
            a, vid, d = run.action, v.id, len(run.action.gpus)
            wider = [x for x in info.degrees if x >= d]
            model = v.spec.model
            per_node = holding.get(model)
            if per_node is None:
                per_node = holding[model] = [sum(g not in reserved and view.has_resident(model, StageKind.DIFFUSE, g)
                                                 for g in gpus) for gpus in idle]
            # its own node's idle GPUs join its own; another node's may take it whole (the latents move)
            here = view.node_of(a.gpus[0])
            room = max((d if n == here else 0) + free for n, free in enumerate(per_node))
            k = self._widest(info, wider, room)
            if k <= d:
                continue
            left = a.end_step - a.start_step - done
            gain = left * (info.step_s[d] - info.step_s[k]) - 2 * run.step_s  # the pause costs up to a step, and more
            if gain > best_gain:
                best, best_gain = vid, gain
        if best is not None:
            actions.append(Preempt(best))
            self.paused_at[best] = now
            self.grown.add(best)

    def _widened(self, view: ClusterView) -> list:
        """The running diffuses wider than their unwidened degree (``base``): the only ones a shrink may
        pause (most passes under load have none). Once a pass (``_schedule`` clears it)."""
        got = self._widened_now
        if got is None:
            base = self.base
            got = self._widened_now = [
                run for run in view.running() if run.action.stage == StageKind.DIFFUSE
                and len(run.action.gpus) > base.get(run.action.request_ids[0], len(run.action.gpus))]
        return got

    def _shrink(self, view, reserved, now, when, need, actions, waiter=None) -> bool:
        """Work that needs ``need`` GPUs waits until ``when``: shrink a widened diffuse at its next step
        boundary instead (it resumes at once on part of its GPUs, still within its deadline), if that
        frees room sooner. The victim with the most work left is chosen. ``waiter``: the waiting
        request's (record, class answers, stage, the degree it would start at); with ``shrink_tail`` a
        victim is shrunk only if its latency stays below the waiter's had it waited (the longer of the
        two latencies falls), unless the waiter would miss its deadline by waiting; then
        (``shrink_urgent``) a diffuse just widened may give GPUs back however many GPUs the running work
        holds, if the waiter can still meet its deadline at its fastest degree worth the GPUs and the
        work arriving is below ``urgent_load`` of the GPUs (near saturation, without that bound, fair
        goodput at SLO 1.5 fell: image-video 0.434 to 0.425 req/s, flux-uniform 1.211 to 1.206)."""
        widened = self._widened(view)
        if not widened:
            return False
        base = self.base
        best, best_left = None, 0.0
        tail = start_by = None
        if waiter is not None:
            rec, info, stage, degree = waiter
            spec = rec.spec
            rest = self._remaining(rec, info, degree, stage)  # from its start to its end
            if when + rest <= spec.deadline_s:  # waiting, it makes its deadline: the tail decides
                tail = when + rest - spec.arrival_s if self.opts["shrink_tail"] else None
            elif self.opts["shrink_urgent"] and self._offered(now) < self.opts["urgent_load"] * view.num_gpus:
                # it would miss: a diffuse just widened may give GPUs back (not near saturation)
                fastest = self._top(view, spec.model, spec.shape)
                start_by = spec.deadline_s - self._remaining(rec, info, fastest, stage)
        for run, v, vinfo, done in self._movable(widened, view, reserved, now, shrinking=True, start_by=start_by):
            a, vid, d = run.action, v.id, len(run.action.gpus)
            low = base[vid]
            free_here = sum(g not in reserved for g in view.idle_gpus(view.node_of(a.gpus[0])))
            keep = [k for k in vinfo.degrees if low <= k < d and d - k + free_here >= need]
            if not keep:
                continue
            k = max(keep)
            freed_at = max(now, run.compute_start_s + done * run.step_s)  # its next step boundary
            if freed_at + run.step_s >= when:
                continue  # waiting for the GPUs to free is about as quick
            left = a.end_step - a.start_step - done
            if vid not in self.hopeless and freed_at + left * vinfo.step_s[k] * self.stretch + vinfo.dec_s > (
                    v.spec.deadline_s - self.opts["margin"] * v.spec.slo_s):
                continue  # shrunk, it would miss its deadline
            loss = left * (vinfo.step_s[k] - vinfo.step_s[d])  # how much later the victim ends
            if loss >= when - freed_at:
                continue  # it would lose more than the waiting work gains
            if tail is not None and freed_at + left * vinfo.step_s[k] + vinfo.dec_s - v.spec.arrival_s > tail:
                continue  # the victim would become the longer wait of the two
            if left * run.step_s > best_left:
                best, best_left = (vid, k, freed_at), left * run.step_s
        if best is None:
            return False
        vid, k, _ = best
        actions.append(Preempt(vid))
        self.paused_at[vid] = now
        self.grown.discard(vid)
        self.cap[vid] = k
        return True

    # ------------------------------------------------------------------------------ head starts (grow)
    def _start_part(self, view, idle, reserved, now, when, group, d, rec, info) -> tuple[int, ...] | None:
        """A diffuse reserves ``group`` (``d`` GPUs on one node, the last free at ``when``): if some of
        them are idle now, start it on those at a smaller degree (they would idle until ``when``
        otherwise), to be grown to ``d`` when the rest free (:meth:`_hold_growth`). The group it
        starts on, or None."""
        node = self._node_of[group[0]]
        here = [g for g in group if g in idle[node] and g not in reserved]
        part = max((k for k in info.degrees if k <= len(here) and k < d), default=0)
        if not part or when - now < 3 * info.step_s[part]:
            return None  # nothing to start on, or too little done before the pause to pay for it
        left = rec.spec.shape.steps - rec.steps_done
        only = [tuple(here) if n == node else () for n in range(len(idle))]
        got = self._pick_group(view, only, reserved, now, left * info.step_s[part], part, rec, info)
        if got is not None:
            self.growing[rec.id] = d
        return got

    def _hold_growth(self, view, reserved, now, actions) -> None:
        """Each head start (:meth:`_start_part`) holds the GPUs on its node it will grow onto, from when
        they free, against all waiting work (as a running dispatch holds its own: it was started on the
        promise of them); once they are all idle it is paused at its next step boundary and dispatched
        again, wider. One that now finishes in time where it is keeps its GPUs and is not grown."""
        for rid, d in list(self.growing.items()):
            run = view.running_of(rid)
            if run is None or run.action.stage != StageKind.DIFFUSE or rid in self.hopeless:
                del self.growing[rid]
                continue
            v = view.request(rid)
            info = self._info_for(view, v.spec.model, v.spec.shape)
            if run.preempt_at_step is None and run.predicted_end_s + info.dec_s <= (
                    v.spec.deadline_s - self.opts["margin"] * v.spec.slo_s):
                del self.growing[rid]
                continue
            mine = run.action.gpus
            need = d - len(mine)
            times = sorted((view.busy_until(g, now), g) for g in view.nodes[view.node_of(mine[0])]
                           if g not in mine and g not in reserved)
            if len(times) < need:  # (need >= 1: a head start runs on fewer GPUs than it grows to)
                del self.growing[rid]
                continue
            at = max(now, times[need - 1][0])
            for _, g in times[:need]:
                reserved[g] = at
            if at <= now and run.preempt_at_step is None:
                actions.append(Preempt(rid))
                self.paused_at[rid] = now
                self.grown.add(rid)
