"""Cluster state: one class, one owner (the driver), and the read-only view policies see.

``ClusterState`` holds what both drivers must agree on: which GPUs run what, which stage instances
are resident where and how much memory they take, and the request table. Only the driver core
(``core/driver.py``) calls its mutating methods (``start``, ``finish``, ``fail``, ``place``,
``evict``), for the simulator and the live engine alike. The state and its read-only view stay in
one module (about 490 lines): the view is a method-for-method face of the state's fields.

Two stages never share a GPU at the same time: a dispatch takes its GPUs exclusively. (The H200
measurements show co-running stages slow each other by 1.25-3x; exclusive use keeps the cost model's
numbers valid and is what every policy here assumes.)
"""

from __future__ import annotations

from collections.abc import Iterable

from .cluster import ClusterSpec, GpuSpec
from .costmodel import CostModel
from .events import Dispatch, Evict, Place
from .lifecycle import RUNNING_STATE, TERMINAL, WAITING_FOR, RequestRecord, RequestState, RequestTable
from .dispatch import GIB, CostAnswers, DispatchCost, Running, payload_bytes
from .records import PlacementRow
from .types import Shape, StageKind

__all__ = ["GIB", "ClusterState", "ClusterView", "DispatchCost", "Running", "payload_bytes"]

_WAITING_STATE = {stage: state for state, stage in WAITING_FOR.items()}  # stage -> the state that waits for it
_NONE: frozenset[int] = frozenset()


class ClusterState:
    """Everything the drivers track. Only drivers call the mutating methods."""

    def __init__(self, cluster: ClusterSpec, cost: CostModel, gpu_kind: str | None = None) -> None:
        self.cluster = cluster
        self.cost = cost
        self.gpu_kind = gpu_kind if gpu_kind is not None else cluster.kind
        self.gpus: tuple[GpuSpec, ...] = cluster.gpus
        n = len(self.gpus)
        self.node_of = tuple(g.node for g in self.gpus)
        self.mem_gib = tuple(g.mem_gib for g in self.gpus)
        self.nodes: tuple[tuple[int, ...], ...] = tuple(
            tuple(g.id for g in self.gpus if g.node == k) for k in range(cluster.nodes)
        )
        self.busy: list[int | None] = [None] * n  # running dispatch id per GPU
        self.alive: list[bool] = [True] * n
        self.resident: list[dict[tuple[str, str], float]] = [dict() for _ in range(n)]  # (model, stage) -> GiB
        self.weights_gib: list[float] = [0.0] * n
        self.act_gib: list[float] = [0.0] * n
        self.pending_load_s: list[float] = [0.0] * n  # explicit Place costs, charged at next dispatch
        self.requests = RequestTable()
        self.running: dict[int, Running] = {}
        self.by_request: dict[int, int] = {}  # request id -> running dispatch id
        self._next_dispatch = 0
        self.idle_count = n
        self._weights: dict[tuple[str, str], float] = {}
        # dispatch_cost's cost-model answers, memoised; transfers at the cluster's own link speeds
        self._answers = CostAnswers(cost, self.gpu_kind, {"nvlink": cluster.intra_link_gbps,
                                                          "network": cluster.inter_link_gbps})
        # indexes kept in step with busy / alive / resident (the planner asks for them on every pass)
        self._idle_on: list[tuple[int, ...]] = [()] * len(self.nodes)  # per node, valid unless stale
        self._idle_stale: set[int] = set(range(len(self.nodes)))  # nodes whose GPUs went busy, idle, up or down
        self._holders: dict[tuple[str, str], frozenset[int]] = {}  # (model, stage) -> GPUs it is resident on

    def stage_weights_gib(self, model: str, stage: StageKind) -> float:
        """Weights of one stage instance on one GPU (memoised cost-model answer)."""
        w = self._weights.get((model, stage))
        if w is None:
            w = self._weights[(model, stage)] = self.cost.weights_gib(model, stage, self.gpu_kind)
        return w

    # ------------------------------------------------------------------------------- queries
    def is_idle(self, gpu: int) -> bool:
        return self.busy[gpu] is None and self.alive[gpu]

    def idle_gpus(self, node: int | None = None) -> list[int]:
        if node is not None:
            return list(self._idle_node(node))
        return [g for g in range(len(self.gpus)) if self.busy[g] is None and self.alive[g]]

    def idle_by_node(self) -> list[list[int]]:
        """Per node (in node order), its idle GPUs in id order: fresh lists the caller may change."""
        return list(map(list, self.idle_on_nodes()))

    def idle_on_nodes(self) -> list[tuple[int, ...]]:
        """``idle_by_node`` as kept: per node, a tuple of its idle GPUs in id order (the list is the
        state's own: read it, never change it)."""
        stale = self._idle_stale
        if stale:
            busy, alive, nodes, idle_on = self.busy, self.alive, self.nodes, self._idle_on
            for k in stale:
                idle_on[k] = tuple([g for g in nodes[k] if busy[g] is None and alive[g]])
            stale.clear()
        return self._idle_on

    def _idle_node(self, node: int) -> tuple[int, ...]:
        if node in self._idle_stale:
            busy, alive = self.busy, self.alive
            self._idle_on[node] = tuple([g for g in self.nodes[node] if busy[g] is None and alive[g]])
            self._idle_stale.discard(node)
        return self._idle_on[node]

    def gpus_holding(self, model: str, stage: StageKind) -> frozenset[int]:
        """The GPUs on which ``(model, stage)`` is resident."""
        return self._holders.get((model, stage), _NONE)

    def free_gib(self, gpu: int) -> float:
        return self.mem_gib[gpu] - self.weights_gib[gpu] - self.act_gib[gpu]

    def missing_weights_gib(self, model: str, stage: StageKind, gpu: int) -> float:
        if (model, stage) in self.resident[gpu]:
            return 0.0
        return self.stage_weights_gib(model, stage)

    def link(self, a: Iterable[int], b: Iterable[int]) -> str:
        """The slowest link between two GPU groups: ``local`` (same GPU), ``nvlink`` or ``network``."""
        a, b = tuple(a), tuple(b)
        if not a or set(b) <= set(a):
            return "local"
        node_of = self.node_of
        node = node_of[a[0]]
        for g in a + b:
            if node_of[g] != node:
                return "network"
        return "nvlink"

    # ------------------------------------------------------------------------------- checks
    def problems(self, action: Dispatch) -> list[str]:
        """Why a dispatch is invalid (a policy bug), empty when it may start."""
        out: list[str] = []
        gpus = action.gpus
        if not action.request_ids:
            out.append("dispatch without requests")
        if not gpus or (len(gpus) > 1 and len(set(gpus)) != len(gpus)):
            out.append(f"bad GPU group {gpus}")
        n, alive, busy = len(self.gpus), self.alive, self.busy
        for g in gpus:
            if not 0 <= g < n:
                out.append(f"no GPU {g}")
            elif not alive[g]:
                out.append(f"GPU {g} is down")
            elif busy[g] is not None:
                out.append(f"GPU {g} is busy with dispatch {busy[g]}")
        waiting = _WAITING_STATE.get(action.stage)
        if waiting is None:
            out.append(f"unknown stage {action.stage!r}")
            return out
        first: RequestRecord | None = None
        get = self.requests.by_id.get
        for rid in action.request_ids:
            rec = get(rid)
            if rec is None:
                out.append(f"unknown request {rid}")
                continue
            if rec.state is not waiting:
                out.append(f"request {rid} is {rec.state.value}, not waiting for {action.stage}")
            if first is None:
                first = rec
            elif rec.spec.model != first.spec.model or (
                action.stage != StageKind.ENCODE and rec.spec.shape != first.spec.shape
            ):
                out.append(f"request {rid} cannot share a batch with request {first.id} (model/shape differ)")
            if action.stage == StageKind.DIFFUSE:
                if rec.steps_done != action.start_step:
                    out.append(f"request {rid} is at step {rec.steps_done}, not {action.start_step}")
                if not action.start_step < action.end_step <= rec.spec.shape.steps:
                    out.append(f"bad step range [{action.start_step}, {action.end_step}) for request {rid}")
        return out

    def memory_needed_gib(self, model: str, stage: StageKind, shape: Shape, batch: int, degree: int, gpu: int) -> float:
        act = self.cost.activation_gib(model, stage, None if stage == StageKind.ENCODE else shape, batch, degree, self.gpu_kind)
        return self.missing_weights_gib(model, stage, gpu) + act

    def dispatch_cost(self, action: Dispatch) -> DispatchCost:
        """The cost model's answer for a dispatch on the current state (pure: nothing changes)."""
        records = self.requests.by_id
        recs = [records[r] for r in action.request_ids]
        spec = recs[0].spec
        model, shape = spec.model, spec.shape
        stage, batch, degree = action.stage, len(recs), len(action.gpus)
        act, call_s = self._answers.act_and_call_s(model, stage, shape, batch, degree)
        load = 0.0
        oom = False
        key = (model, stage)
        resident, pending, mem, weights, acts = self.resident, self.pending_load_s, self.mem_gib, self.weights_gib, self.act_gib
        for g in action.gpus:
            if key in resident[g]:
                wait = pending[g]
                need = act
            else:
                wait = pending[g] + self.cost.load_s(model, stage, self.gpu_kind)
                need = self.stage_weights_gib(model, stage) + act
            if wait > load:
                load = wait
            if need > mem[g] - weights[g] - acts[g] + 1e-9:  # free_gib(g)
                oom = True
        transfer = 0.0
        step = 0.0
        if stage == StageKind.ENCODE:
            compute = call_s
        elif stage == StageKind.DIFFUSE:
            step = call_s
            compute = (action.end_step - action.start_step) * step
            for rec in recs:
                source = rec.latents_on if rec.steps_done else rec.embeddings_on
                link = self.link(source, action.gpus)
                if link != "local":
                    transfer = max(transfer, self._answers.transfer_s(
                        "latents" if rec.steps_done else "embeddings", model, shape, link))
        else:
            compute = call_s
            for rec in recs:
                link = self.link(rec.latents_on, action.gpus)
                if link != "local":
                    transfer = max(transfer, self._answers.transfer_s("latents", model, shape, link))
        return DispatchCost(load, transfer, compute, step, act, oom)

    # ------------------------------------------------------------------------------- changes
    def place(self, model: str, stage: StageKind, gpu: int) -> float:
        """Make ``(model, stage)`` resident on ``gpu``; returns its weights in GiB (0 if already there)."""
        if (model, stage) in self.resident[gpu]:
            return 0.0
        w = self.stage_weights_gib(model, stage)
        self.resident[gpu][(model, stage)] = w
        self.weights_gib[gpu] += w
        self._holders[(model, stage)] = self.gpus_holding(model, stage) | {gpu}
        return w

    def evict(self, model: str, stage: StageKind, gpu: int) -> float:
        if (model, stage) in self.resident[gpu]:
            self._holders[(model, stage)] = self.gpus_holding(model, stage) - {gpu}
        w = self.resident[gpu].pop((model, stage), 0.0)
        self.weights_gib[gpu] -= w
        return w

    def apply_placement(self, action: Place | Evict, now: float, initial: bool = False) -> PlacementRow | None:
        """Apply an explicit ``Place`` or ``Evict``; the row to record, or None if nothing changed.

        A ``Place`` before the run (``initial``) is the deployment and costs nothing; during the run
        its load time is charged to the GPU's next dispatch (lazy application)."""
        if isinstance(action, Place):
            weights = self.place(action.model, action.stage, action.gpu)
            if not weights:
                return None
            load = 0.0 if initial else self.cost.load_s(action.model, action.stage, self.gpu_kind)
            self.pending_load_s[action.gpu] += load
            return PlacementRow(now, action.gpu, action.model, action.stage, "place", weights, load)
        weights = self.evict(action.model, action.stage, action.gpu)
        return PlacementRow(now, action.gpu, action.model, action.stage, "evict", weights) if weights else None

    def start(self, action: Dispatch, now: float, compute_start_s: float, predicted_end_s: float,
              step_s: float = 0.0, load_s: float = 0.0, transfer_s: float = 0.0, act_gib: float | None = None) -> Running:
        """Start ``action`` (``act_gib``: its activation memory per GPU if known, ``dispatch_cost``'s)."""
        rec0 = self.requests[action.request_ids[0]]
        shape = rec0.spec.shape
        act = act_gib if act_gib is not None else self.cost.activation_gib(
            rec0.spec.model, action.stage, None if action.stage == StageKind.ENCODE else shape,
            len(action.request_ids), len(action.gpus), self.gpu_kind)
        did = self._next_dispatch
        self._next_dispatch += 1
        run = Running(did, action, rec0.spec.model, shape, now, compute_start_s, predicted_end_s, step_s,
                      load_s, transfer_s, act)
        busy, stale, node_of, acts, weights, mem = (self.busy, self._idle_stale, self.node_of, self.act_gib,
                                                     self.weights_gib, self.mem_gib)
        for g in action.gpus:
            busy[g] = did
            stale.add(node_of[g])
            acts[g] += act
            self.pending_load_s[g] = 0.0
            if weights[g] + acts[g] > mem[g] + 1e-6:
                raise MemoryError(f"GPU {g}: {weights[g] + acts[g]:.2f} GiB in use exceeds "
                                  f"its {mem[g]:.2f} GiB (dispatch {action})")
        self.idle_count -= len(action.gpus)
        state = RUNNING_STATE[action.stage]
        requests, queued = self.requests, run.queued_s
        for rid in action.request_ids:
            queued[rid] = requests.transition(rid, state, now).ready_s  # a running state keeps ready_s
            self.by_request[rid] = did
        self.running[did] = run
        return run

    def _release(self, run: Running) -> None:
        busy, stale, node_of, acts, alive, did = self.busy, self._idle_stale, self.node_of, self.act_gib, self.alive, run.id
        for g in run.action.gpus:
            if busy[g] == did:
                busy[g] = None
                stale.add(node_of[g])
                acts[g] -= run.act_gib
                if alive[g]:
                    self.idle_count += 1
        for rid in run.action.request_ids:
            self.by_request.pop(rid, None)
        del self.running[did]

    def finish(self, dispatch_id: int, now: float, end_step: int = 0) -> Running:
        """A dispatch ended normally (a diffuse piece at ``end_step``)."""
        run = self.running[dispatch_id]
        self._release(run)
        stage = run.action.stage
        records = self.requests.by_id
        for rid in run.action.request_ids:
            rec = records[rid]
            if rec.state in TERMINAL:  # cancelled while running: keep how far it got (its progress read 0)
                if stage == StageKind.DIFFUSE:
                    rec.steps_done = max(rec.steps_done, end_step)
                continue
            if stage == StageKind.ENCODE:
                rec.embeddings_on = run.action.gpus
                self.requests.transition(rid, RequestState.ENCODED, now)
            elif stage == StageKind.DIFFUSE:
                rec.steps_done = end_step
                rec.latents_on = run.action.gpus
                if end_step >= rec.spec.shape.steps:
                    self.requests.transition(rid, RequestState.DIFFUSED, now)
                else:
                    if run.preempt_at_step is not None:
                        rec.preemptions += 1
                    self.requests.transition(rid, RequestState.ENCODED, now)
            else:
                self.requests.transition(rid, RequestState.DONE, now)
        return run

    def fail(self, dispatch_id: int, now: float, reason: str, oom: bool = False, retry: bool = True) -> Running:
        """A dispatch failed: its requests go back to waiting (``retry``) or end ``failed``."""
        run = self.running[dispatch_id]
        self._release(run)
        back = {StageKind.ENCODE: RequestState.QUEUED, StageKind.DIFFUSE: RequestState.ENCODED,
                StageKind.DECODE: RequestState.DIFFUSED}
        for rid in run.action.request_ids:
            rec = self.requests[rid]
            if rec.state.terminal:
                continue
            if oom:
                rec.ooms += 1
            if retry:
                self.requests.transition(rid, back[run.action.stage], now, reason)
            else:
                self.requests.transition(rid, RequestState.FAILED, now, reason)
        return run

    def note_oom(self, request_ids: Iterable[int]) -> None:
        """A dispatch could not allocate its memory: nothing started; count it on its requests."""
        for rid in request_ids:
            self.requests[rid].ooms += 1

    def end_waiting(self, request_id: int, state: RequestState, now: float, reason: str,
                    retry_s: float = 0.0) -> str | None:
        """Apply a policy's ``Reject``/``Fail``: end a waiting request (``retry_s``: a rejection's
        estimate of when it could be admitted). A request that is unknown or already ended is left
        alone; one that is running cannot be ended this way: the message says so (the driver reports
        a policy bug)."""
        rec = self.requests.get(request_id)
        if rec is None or rec.state.terminal:
            return None
        if self.by_request.get(request_id) is not None:
            return f"{state.value} of running request {request_id}"
        self.requests.transition(request_id, state, now, reason, retry_s)
        return None

    def end_request(self, request_id: int, state: RequestState, now: float, reason: str) -> None:
        """Reject, cancel or fail a request that is not running."""
        self.requests.transition(request_id, state, now, reason)

    def set_alive(self, gpu: int, alive: bool) -> None:
        if self.alive[gpu] == alive:
            return
        self.alive[gpu] = alive
        self._idle_stale.add(self.node_of[gpu])
        if self.busy[gpu] is None:
            self.idle_count += 1 if alive else -1
        if not alive:  # a lost worker loses its resident weights
            for key in self.resident[gpu]:
                self._holders[key] = self._holders[key] - {gpu}
            self.resident[gpu].clear()
            self.weights_gib[gpu] = 0.0


class ClusterView:
    """What a policy may look at: a read-only face of :class:`ClusterState`.

    It holds no copy (the snapshot is the state at the moment of the call, and policies run
    synchronously inside the driver), and offers no way to change anything. Request records it
    returns are the live ones: policies must treat them as read-only.
    """

    __slots__ = ("_s",)

    def __init__(self, state: ClusterState) -> None:
        self._s = state

    @property
    def cluster(self) -> ClusterSpec:
        return self._s.cluster

    @property
    def cost(self) -> CostModel:
        return self._s.cost

    @property
    def gpu_kind(self) -> str:
        return self._s.gpu_kind

    @property
    def num_gpus(self) -> int:
        return len(self._s.gpus)

    @property
    def nodes(self) -> tuple[tuple[int, ...], ...]:
        return self._s.nodes

    def node_of(self, gpu: int) -> int:
        return self._s.node_of[gpu]

    def mem_gib(self, gpu: int) -> float:
        return self._s.mem_gib[gpu]

    def is_idle(self, gpu: int) -> bool:
        return self._s.busy[gpu] is None and self._s.alive[gpu]

    def is_alive(self, gpu: int) -> bool:
        return self._s.alive[gpu]

    def idle_gpus(self, node: int | None = None) -> list[int]:
        return self._s.idle_gpus(node)

    def idle_by_node(self) -> list[list[int]]:
        """``[idle_gpus(k) for k in nodes]``, from one call: fresh lists the caller may change."""
        return self._s.idle_by_node()

    def idle_on_nodes(self) -> tuple[tuple[int, ...], ...]:
        """``idle_by_node`` as tuples, without copying them (the planner asks on every pass)."""
        return tuple(self._s.idle_on_nodes())

    @property
    def idle_count(self) -> int:
        return self._s.idle_count

    def running_on(self, gpu: int) -> Running | None:
        did = self._s.busy[gpu]
        return None if did is None else self._s.running[did]

    def running(self) -> Iterable[Running]:
        return self._s.running.values()

    def running_of(self, request_id: int) -> Running | None:
        did = self._s.by_request.get(request_id)
        return None if did is None else self._s.running[did]

    def busy_until(self, gpu: int, now: float) -> float:
        """Predicted time the GPU frees (``now`` when idle, +inf when down)."""
        if not self._s.alive[gpu]:
            return float("inf")
        did = self._s.busy[gpu]
        return now if did is None else self._s.running[did].predicted_end_s

    def resident(self, gpu: int) -> frozenset[tuple[str, str]]:
        return frozenset(self._s.resident[gpu])

    def has_resident(self, model: str, stage: StageKind, gpu: int) -> bool:
        return (model, stage) in self._s.resident[gpu]

    def gpus_holding(self, model: str, stage: StageKind) -> frozenset[int]:
        """The GPUs on which ``(model, stage)`` is resident (``has_resident`` for all GPUs at once)."""
        return self._s._holders.get((model, stage), _NONE)  # ClusterState.gpus_holding, one call less

    def free_gib(self, gpu: int) -> float:
        s = self._s  # ClusterState.free_gib, one call less (the planner asks per GPU)
        return s.mem_gib[gpu] - s.weights_gib[gpu] - s.act_gib[gpu]

    def instance_gib(self, model: str, stage: StageKind) -> float:
        """Weights of one ``(model, stage)`` instance on one GPU."""
        return self._s.stage_weights_gib(model, stage)

    def weights_gib(self, gpu: int) -> float:
        return self._s.weights_gib[gpu]

    def memory_needed_gib(self, model: str, stage: StageKind, shape: Shape, batch: int, degree: int, gpu: int) -> float:
        return self._s.memory_needed_gib(model, stage, shape, batch, degree, gpu)

    def request(self, request_id: int) -> RequestRecord:
        return self._s.requests.by_id[request_id]

    def requests(self) -> Iterable[RequestRecord]:
        return iter(self._s.requests)

    def link(self, a: Iterable[int], b: Iterable[int]) -> str:
        return self._s.link(a, b)
