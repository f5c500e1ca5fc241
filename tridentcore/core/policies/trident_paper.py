"""``trident-paper``: TridentServe as its authors released it (arXiv 2510.02838).

A small integer program, solved every ``tick_s`` = 0.5 s, picks requests waiting for their encode
and gives each a degree k in {1, 2, 4, 8} on one node; everything else follows from that choice:

* **Candidates.** The ``candidates`` (default 64) most urgent queued requests (earliest deadline
  first; ties by id) are considered; the rest wait for a later tick. Among them, requests of the
  same model and shape are merged, in deadline order, into batches of at most the class's
  *profiled best batch*: start at 1 and double while the diffuse step at batch 2b takes at most
  1.2x the step at batch b, as long as the cost model answers encode, diffuse and decode at 2b
  (a ``LookupError`` stops it), and never beyond ``max_batch`` (default 64: the cost model
  extrapolates to any batch, so a guard is needed against a flat profile). A batch is one item of
  the program.
* **Options.** An item may take degree k on node n when its model can take k
  (``CostModel.allows_degree``) and k has diffuse parallel efficiency >= 0.8 at batch 1 (k = 1
  always), node n has k idle GPUs at this tick, and both its encode and its
  diffuse at (batch, k) fit the memory of the k idle GPUs the group would get
  (``view.memory_needed_gib <= view.free_gib``). A batch with no option for memory reasons is
  split in halves until it has one (a single request that can never fit is rejected on arrival).
* **Reward** of a request in an item at degree k, with predicted finish
  ``now + encode(b) + steps x step(b, k) + decode(b)``:

  - 1000 if that finish meets its deadline;
  - otherwise ``min(1000, 1000 x lateness / best)``, where ``best`` is its no-queue runtime at its
    fastest qualifying degree (batch 1) and ``lateness = now + best - deadline`` (>= 0) is how late
    it already is *now*, even if started at once at its best. The lateness is taken at the
    decision, not at the predicted finish of the degree being priced, so a late request is not
    worth more at a slower degree; it grows while the request waits and reaches 1000 (the worth
    of an on-time finish) after one more ``best`` of waiting: starvation avoidance.

  A batch's reward is the sum of its members' rewards (each judged against its own deadline at the
  batch's predicted finish). Each idle GPU costs 1, so an item at degree k gains ``reward + k``;
  a tie-breaker below 0.1 in total favours the more urgent items among otherwise equal plans.
  Late requests are never rejected: they run when their reward wins.
* **Program.** Binary ``x[item, k, n]``; each item at most once; per node, the sum of the chosen
  degrees <= its idle GPUs; maximise the total gain. The solver is HiGHS through
  ``scipy.optimize.milp`` (scipy imported lazily, inside the solve), with ``time_limit_s`` (0.25 s,
  half a tick) and ``node_limit`` (deterministic, so a run stays reproducible) as its budget; on a
  limit its best solution is used. Three exact steps come first, each giving the same optimum as
  the solver (up to ties):

  1. for each (k, n) only the ``C - k + 1`` best items at that option (C = idle GPUs) can appear
     in an optimum (swap argument: a better unpicked item always exists otherwise), so the rest
     of the options are dropped;
  2. when every remaining item's own best option packs onto the nodes (first fit decreasing,
     best-fit node), that packing is optimal (``packed``);
  3. a program with at most ``enumerate_max`` (32) options is solved by an exact branch and bound
     with a node budget (``enumerated``): HiGHS's start-up (~4 ms) dominates such tiny programs,
     which are most ticks under load (one or two GPUs freed since the last tick).

  A fast greedy by reward density (gain per GPU, best-fit node) decides instead when the program
  has more than ``max_vars`` options, or the solver gives no solution (or scipy is missing).
  Nothing is solved when no request is queued or no GPU is idle. ``self.paths`` counts the path
  each solved tick took: ``packed``, ``enumerated``, ``milp``, ``milp-limit``, ``greedy``.
  Ties between equal plans (which node) go to the best-fitting node in every path but HiGHS's.
* **Execution.** An item starts at once: encode (batch b) on its k GPUs, then, on the encode's
  ``StageFinished``, the diffuse of the same batch on the *same* group (held, as pipeline
  policies do). Decode runs on a separate 1-GPU instance: when a diffuse finishes its batch joins
  a FIFO decode queue, served on *every* event (not only on ticks) whenever a GPU is idle,
  preferring an idle GPU outside the diffuse's group (same node first), then one of the group's
  own GPUs. A decode batch that fits no idle GPU is split into single requests. (The diffuse's
  own group is idle when it finishes, so in practice only memory makes a decode wait.)
  Only the integer program waits for ticks; encode -> diffuse -> decode hand-offs never do.
* **Placement.** Every GPU holds every stage of every model (``start`` places everything).
* **Failures.** An out-of-memory ``StageFailed`` fails its requests (the program checks memory, so
  it means the cost model was wrong). Other failures (a lost worker): an encode's requests are
  queued again for the program; a diffuse's requests fail (the release cannot move a half-done
  diffuse); a decode's batch goes back to the head of the decode queue.
* **Arrivals.** A request whose encode, diffuse (at its largest qualifying degree) or decode can
  never fit any GPU, or whose model the cost model does not know, is rejected on arrival.

Stages never share a GPU at the same time (exclusive dispatch).

The program's solvers live in :mod:`.program`; the rest stays one module (a little over 400 lines)
because it is this specification plus one policy class whose methods all share its queues.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from ..events import (Action, Dispatch, Fail, Reject, RequestArrived, RequestEnded, StageFailed, StageFinished,
                      Tick)
from ..lifecycle import RequestState
from ..policy import Policy, register
from ..state import ClusterView
from ..slo import SLO_TOLERANCE_S
from ..types import PARALLEL_EFFICIENCY, Shape, StageKind
from .common import degrees_for, place_everything
from .options import number
from .program import (ENUMERATION_BUDGET, ENUMERATION_MAX_OPTIONS, Choice, Option, enumerate_program, greedy_program,
                      milp_program, pack_best)

__all__ = [
    "BATCH_GROWTH", "Choice", "ENUMERATION_BUDGET", "ENUMERATION_MAX_OPTIONS", "ON_TIME_REWARD", "Option",
    "TridentPaper", "URGENCY_BONUS", "enumerate_program", "greedy_program", "late_reward", "milp_program", "pack_best",
]  # fmt: skip

ON_TIME_REWARD = 1000.0
BATCH_GROWTH = 1.2  # double the batch while latency grows by at most 20 %
URGENCY_BONUS = 0.1  # total tie-breaking bonus over all candidates (below one GPU's worth)


def late_reward(now: float, deadline_s: float, best_s: float) -> float:
    """Reward of a request that will miss its deadline: grows with how late it already is.

    ``lateness = now + best_s - deadline_s`` (how late it would be if started now at its best),
    relative to ``best_s``, times 1000, capped at 1000 (the reward of an on-time finish).
    """
    lateness = max(0.0, now + best_s - deadline_s)
    return min(ON_TIME_REWARD, ON_TIME_REWARD * lateness / best_s) if best_s > 0 else ON_TIME_REWARD


@dataclass(slots=True)
class _ClassInfo:
    """Cost-model answers for one (model, shape), computed once."""

    degrees: tuple[int, ...]  # qualifying degrees (efficiency >= 0.8 at batch 1)
    best_batch: int
    best_s: float  # no-queue runtime at the fastest qualifying degree, batch 1
    never_fits: str  # non-empty: why no GPU can ever hold it


@register
class TridentPaper(Policy):
    name = "trident-paper"
    summary = "the released TridentServe: an ILP every 0.5 s picks requests and degrees; decode on 1-GPU instances"
    options = {
        "candidates": (number(1, integer=True), 64, "the most urgent queued requests the program considers per tick"),
        "time_limit_s": (number(0, above=True), 0.25, "HiGHS time limit per solve, seconds"),
        "node_limit": (number(1, integer=True), 2000, "HiGHS branch-and-bound node limit per solve (deterministic budget)"),
        "max_vars": (number(0, integer=True), 4096, "above this many variables the greedy replaces the solver"),
        "max_batch": (number(1, integer=True), 64, "guard on the profiled best batch"),
        "enumerate_max": (number(0, integer=True), ENUMERATION_MAX_OPTIONS, "programs with at most this many options are solved by exact enumeration (0: always HiGHS)"),
    }
    tick_s = 0.5

    # ------------------------------------------------------------------------------ setup
    def start(self, view: ClusterView, models: Sequence[str], now: float, expected=None) -> list[Action]:
        self.info: dict[tuple[str, Shape], _ClassInfo] = {}
        self._lat: dict[tuple, float] = {}
        self.queue: list[tuple[float, int]] = []  # (deadline, request id), sorted: waiting for the program
        self.decode_queue: deque[tuple[tuple[int, ...], tuple[int, ...]]] = deque()  # (request ids, diffuse group)
        self.paths: Counter[str] = Counter()
        return place_everything(view, models, policy=self.name)

    def _latency(self, view: ClusterView, model: str, stage: StageKind, shape: Shape | None, batch: int, degree: int) -> float:
        key = (model, stage, shape, batch, degree)
        value = self._lat.get(key)
        if value is None:
            value = view.cost.latency_s(model, stage, shape, batch, degree, view.gpu_kind)
            self._lat[key] = value
        return value

    def _runtime(self, view: ClusterView, model: str, shape: Shape, batch: int, degree: int) -> float:
        return (self._latency(view, model, StageKind.ENCODE, None, batch, 1)
                + shape.steps * self._latency(view, model, StageKind.DIFFUSE, shape, batch, degree)
                + self._latency(view, model, StageKind.DECODE, shape, batch, 1))

    def _info_for(self, view: ClusterView, model: str, shape: Shape) -> _ClassInfo:
        key = (model, shape)
        info = self.info.get(key)
        if info is not None:
            return info
        cost, kind = view.cost, view.gpu_kind
        degrees = tuple(k for k in degrees_for(view, model)
                        if k == 1
                        or cost.parallel_efficiency(model, StageKind.DIFFUSE, shape, k, 1, kind) >= PARALLEL_EFFICIENCY)
        batch = 1
        while 2 * batch <= self.opts["max_batch"]:
            try:
                grown = self._latency(view, model, StageKind.DIFFUSE, shape, 2 * batch, 1)
                self._latency(view, model, StageKind.ENCODE, None, 2 * batch, 1)
                self._latency(view, model, StageKind.DECODE, shape, 2 * batch, 1)
            except LookupError:
                break
            if grown > BATCH_GROWTH * self._latency(view, model, StageKind.DIFFUSE, shape, batch, 1):
                break
            batch *= 2
        best_s = min(self._runtime(view, model, shape, 1, k) for k in degrees)
        # an idle GPU holds every stage's weights: what is left for activations
        problems = []
        top = degrees[-1]
        for stage, d in ((StageKind.ENCODE, top), (StageKind.DIFFUSE, top), (StageKind.DECODE, 1)):
            if not any(view.memory_needed_gib(model, stage, shape, 1, d, g) <= self._capacity(view, g) + 1e-9
                       for g in range(view.num_gpus)):
                need = view.memory_needed_gib(model, stage, shape, 1, d, 0)
                problems.append(f"{stage} at degree {d} needs {need:.1f} GiB per GPU beyond the resident weights")
        info = _ClassInfo(degrees, batch, best_s, "; ".join(problems))
        self.info[key] = info
        return info

    @staticmethod
    def _capacity(view: ClusterView, g: int) -> float:
        return view.mem_gib(g) - view.weights_gib(g)

    # ------------------------------------------------------------------------------ events
    def on_event(self, view: ClusterView, event, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.cost_moved(view):  # calibrated stage times: recompute what was cached from the old ones
            self._lat.clear()
            for model, shape in list(self.info):
                del self.info[(model, shape)]
                self._info_for(view, model, shape)
        taken: set[int] = set()  # GPUs given out by this call's actions
        if isinstance(event, RequestArrived):
            spec = event.request
            try:
                info = self._info_for(view, spec.model, spec.shape)
            except LookupError as exc:
                return [Reject(spec.id, f"no cost data: {exc}")]
            if info.never_fits:
                return [Reject(spec.id, f"can never fit: {info.never_fits}", math.inf)]
            bisect.insort(self.queue, (spec.deadline_s, spec.id))
            return []  # the program decides on the next tick
        if isinstance(event, StageFinished):
            live = tuple(r for r in event.request_ids if not view.request(r).state.terminal)
            if live and event.stage == StageKind.ENCODE:
                rec = view.request(live[0])
                actions.append(Dispatch(StageKind.DIFFUSE, live, event.gpus, rec.steps_done, rec.spec.shape.steps))
                taken.update(event.gpus)
            elif live and event.stage == StageKind.DIFFUSE:
                self.decode_queue.append((live, event.gpus))
        elif isinstance(event, StageFailed):
            actions += self._on_failed(view, event)
        elif isinstance(event, RequestEnded):  # out of the queues now: it may be forgotten next
            rid = event.request_id
            self.queue = [e for e in self.queue if e[1] != rid]
            self.decode_queue = deque((kept, gpus) for rids, gpus in self.decode_queue
                                      if (kept := tuple(r for r in rids if r != rid)))
        actions += self._serve_decodes(view, taken)
        if isinstance(event, Tick) and self.queue:
            actions += self._plan(view, now, taken)
        return actions

    def _on_failed(self, view: ClusterView, event: StageFailed) -> list[Action]:
        live = [r for r in event.request_ids if not view.request(r).state.terminal]
        if event.oom or event.stage == StageKind.DIFFUSE:
            return [Fail(r, event.reason) for r in live]
        if event.stage == StageKind.ENCODE:
            for r in live:
                bisect.insort(self.queue, (view.request(r).spec.deadline_s, r))
        elif live:
            self.decode_queue.appendleft((tuple(live), event.gpus))
        return []

    # ------------------------------------------------------------------------------ decode instances
    def _serve_decodes(self, view: ClusterView, taken: set[int]) -> list[Action]:
        """FIFO: each waiting decode batch takes one idle GPU, outside its diffuse group if it can."""
        out: list[Action] = []
        while self.decode_queue:
            idle = [g for g in view.idle_gpus() if g not in taken]
            if not idle:
                break
            rids, group = self.decode_queue[0]
            rids = tuple(r for r in rids if view.request(r).state is RequestState.DIFFUSED)
            if not rids:  # ended while it waited (cancelled, ...)
                self.decode_queue.popleft()
                continue
            rec = view.request(rids[0])
            model, shape = rec.spec.model, rec.spec.shape
            home = view.node_of(group[0]) if group else -1
            idle.sort(key=lambda g: (g in group, view.node_of(g) != home, g))

            def fits(b: int, g: int) -> bool:
                return view.memory_needed_gib(model, StageKind.DECODE, shape, b, 1, g) <= view.free_gib(g) + 1e-9

            gpu = next((g for g in idle if fits(len(rids), g)), None)
            if gpu is None and len(rids) > 1:
                gpu = next((g for g in idle if fits(1, g)), None)
                if gpu is not None:  # split the batch: the rest stays at the head
                    self.decode_queue[0] = (rids[1:], group)
                    rids = rids[:1]
                else:
                    break
            elif gpu is None:
                break
            else:
                self.decode_queue.popleft()
            taken.add(gpu)
            out.append(Dispatch(StageKind.DECODE, rids, (gpu,)))
        return out

    # ------------------------------------------------------------------------------ the program
    def _plan(self, view: ClusterView, now: float, taken: set[int]) -> list[Action]:
        idle = [sorted((g for g in view.idle_gpus(n) if g not in taken), key=lambda g: (-view.free_gib(g), g))
                for n in range(len(view.nodes))]
        capacity = [len(x) for x in idle]
        total = sum(capacity)
        if total == 0:
            return []
        cand = []
        stale = False
        for _, rid in self.queue:
            rec = view.request(rid)
            if rec.state is not RequestState.QUEUED:  # stopped waiting for its encode (cancelled, ...)
                stale = True
                continue
            cand.append(rec)
            if len(cand) >= self.opts["candidates"]:
                break
        if stale:
            self.queue = [e for e in self.queue if view.request(e[1]).state is RequestState.QUEUED]
        if not cand:
            return []
        items = self._batches(view, cand)
        rank = {rec.id: r for r, rec in enumerate(cand)}
        options = self._options(view, now, items, rank, idle, total)
        if not options:
            return []
        chosen = self._solve(options, capacity)
        return self._dispatch(view, items, chosen, idle)

    def _batches(self, view: ClusterView, cand) -> list[tuple[int, ...]]:
        """Same model and shape, in deadline order, in batches up to the profiled best batch."""
        open_: dict[tuple[str, Shape], list[int]] = {}
        items: list[list[int]] = []
        for rec in cand:
            key = (rec.spec.model, rec.spec.shape)
            limit = self.info[key].best_batch
            cur = open_.get(key)
            if cur is None or len(cur) >= limit:
                cur = []
                open_[key] = cur
                items.append(cur)
            cur.append(rec.id)
        return [tuple(x) for x in items]

    def _fits(self, view: ClusterView, model: str, shape: Shape, batch: int, k: int, gpus: Sequence[int]) -> bool:
        for stage in (StageKind.ENCODE, StageKind.DIFFUSE):
            for g in gpus:
                if view.memory_needed_gib(model, stage, shape, batch, k, g) > view.free_gib(g) + 1e-9:
                    return False
        return True

    def _options(self, view: ClusterView, now: float, items: list[tuple[int, ...]], rank: dict[int, int],
                 idle: list[list[int]], total: int) -> list[Option]:
        """The program's options after the exact top-(C - k + 1) reduction (C = idle GPUs).

        An item with options on no node for memory reasons is split in halves (``items`` changes
        in place) and priced again.
        """
        bonus = URGENCY_BONUS / max(1, len(rank)) ** 2  # x (candidates - rank): < URGENCY_BONUS in all
        per_option: dict[tuple[int, int], list[tuple[float, int]]] = {}
        fits: dict[tuple, bool] = {}
        i = 0
        while i < len(items):
            rids = items[i]
            spec0 = view.request(rids[0]).spec
            model, shape = spec0.model, spec0.shape
            b = len(rids)
            found = memory_blocked = False
            for k in self.info[(model, shape)].degrees:
                nodes = [n for n, gpus in enumerate(idle) if len(gpus) >= k]
                if not nodes:
                    continue
                finish = now + self._runtime(view, model, shape, b, k)
                reward = 0.0
                for rid in rids:
                    spec = view.request(rid).spec
                    if finish <= spec.deadline_s + SLO_TOLERANCE_S:  # would meet its SLO (core.slo)
                        reward += ON_TIME_REWARD
                    else:
                        reward += late_reward(now, spec.deadline_s, self.info[(spec.model, spec.shape)].best_s)
                value = reward + k + bonus * (len(rank) - rank[rids[0]])
                for n in nodes:
                    key = (model, shape, b, k, n)
                    ok = fits.get(key)
                    if ok is None:
                        ok = fits[key] = self._fits(view, model, shape, b, k, idle[n][:k])
                    if not ok:
                        memory_blocked = True
                        continue
                    per_option.setdefault((k, n), []).append((value, i))
                    found = True
            if not found and memory_blocked and b > 1:
                items[i:i + 1] = [rids[: b // 2], rids[b // 2:]]
                continue
            i += 1
        options: list[Option] = []
        for (k, n), lst in sorted(per_option.items()):
            lst.sort(key=lambda x: (-x[0], x[1]))
            options += [(v, it, k, n) for v, it in lst[: total - k + 1]]
        options.sort(key=lambda o: (o[1], o[2], o[3]))
        return options

    def _solve(self, options: list[Option], capacity: list[int]) -> list[Choice]:
        got = pack_best(options, capacity)
        if got is not None:
            self.paths["packed"] += 1
            return got
        if len(options) <= self.opts["max_vars"]:
            got = enumerate_program(options, capacity, self.opts["enumerate_max"])
            if got is not None:
                self.paths["enumerated"] += 1
                return got
            solved = milp_program(options, capacity, self.opts["time_limit_s"], self.opts["node_limit"])
            if solved is not None:
                got, optimal = solved
                self.paths["milp" if optimal else "milp-limit"] += 1
                return got
        self.paths["greedy"] += 1
        return greedy_program(options, capacity)

    def _dispatch(self, view: ClusterView, items, chosen, idle) -> list[Action]:
        out: list[Action] = []
        free = [list(x) for x in idle]
        for it, k, n in sorted(chosen, key=lambda x: (x[2], -x[1], x[0])):
            rids = items[it]
            spec = view.request(rids[0]).spec
            group = free[n][:k]
            if len(group) < k or not self._fits(view, spec.model, spec.shape, len(rids), k, group):
                continue  # stays queued (cannot happen on homogeneous nodes)
            free[n] = free[n][k:]
            out.append(Dispatch(StageKind.ENCODE, rids, tuple(sorted(group))))
            for rid in rids:
                entry = (view.request(rid).spec.deadline_s, rid)
                j = bisect.bisect_left(self.queue, entry)
                if j < len(self.queue) and self.queue[j] == entry:
                    del self.queue[j]
        return out

