"""The placement planner: which stage instances live on which GPUs.

Input: the cluster, the cost model and the expected demand (each model's share of GPU time per
stage, from the expected or observed mix). Output: a plan, ``{gpu: frozenset((model, stage))}``.

The plan keeps, on every GPU, an activation reserve: the largest activation any expected request
needs there (a 2048² decode needs 9.5 GiB on an H200). Within what is left:

1. ``diffuse`` and ``decode`` instances of every model go on every GPU where they fit: a denoiser
   must be resident on every GPU of whatever group a request is given, and decoders are small.
   Where memory is short, GPUs are shared out between models in proportion to their diffuse
   demand (at least one node-local group of the largest degree each).
2. ``encode`` instances (text encoders: ~70 % of the weights, ~3 % of the time) go only where the
   encode demand calls for them: enough GPUs to keep encode utilisation below ``encode_util``, at
   least one per node so embeddings never cross nodes.

The plan is where a policy starts and what it prefers; a dispatch that needs an instance elsewhere
(an encode while every encoder GPU is busy with a long diffuse) loads it lazily, its load time
charged to that dispatch (a T5-XXL takes ~0.17 s over a 55 GB/s host link), so the placement
follows the load. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .cluster import ClusterSpec
from .costmodel import CostModel
from .types import MAX_DEGREE, StageKind

Plan = dict[int, frozenset[tuple[str, str]]]


def plan_placement(
    cluster: ClusterSpec,
    cost: CostModel,
    kind: str,
    demand: Mapping[str, Mapping[str, float]],
    act_reserve_gib: Mapping[str, float],
    *,
    encode_util: float = 0.3,
    max_degree: int = MAX_DEGREE,
    solver: str = "highs",
    time_limit_s: float = 1.0,
) -> Plan:
    """``demand[model][stage]``: expected GPU-seconds per second; ``act_reserve_gib[model]``: the
    largest activation a request of that model needs on one GPU.

    When every model's denoiser and decoder fit on every GPU the plan is direct. Otherwise it is a
    packing problem (which instances on which GPU under each GPU's memory), solved as an integer
    program with HiGHS (``scipy.optimize.milp``; the problem is small, solved at start and on each
    re-plan, and an exact packing matters most exactly when memory is short), with the greedy
    below as the fallback when scipy is missing, the solver fails or runs out of ``time_limit_s``.
    """
    if solver == "highs":
        plan = _plan_milp(cluster, cost, kind, demand, act_reserve_gib, encode_util, time_limit_s)
        if plan is not None:
            return plan
    return _plan_greedy(cluster, cost, kind, demand, act_reserve_gib, encode_util, max_degree)


def _wanted_encoders(cluster: ClusterSpec, demand: Mapping[str, Mapping[str, float]], model: str, util: float) -> int:
    return min(cluster.num_gpus, max(cluster.nodes, math.ceil(demand[model].get(StageKind.ENCODE, 0.0) / util)))


def _plan_milp(cluster, cost, kind, demand, act_reserve_gib, encode_util, time_limit_s) -> Plan | None:
    """maximise  sum_g,m share_m x[g,m]  +  sum_g,m eps e[g,m]
    s.t.      memory per GPU; sum_g e[g,m] <= wanted_m; sum_(g on node n) e[g,m] >= 1 where it fits.
    x[g,m]: model m's denoiser + decoder on GPU g; e[g,m]: its text encoders on GPU g."""
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError:
        return None
    gpus = cluster.gpus
    models = sorted(demand)
    if not models:
        return {g.id: frozenset() for g in gpus}
    reserve = max((act_reserve_gib.get(m, 0.0) for m in models), default=0.0)
    free = [g.mem_gib - reserve for g in gpus]
    wd = [cost.weights_gib(m, StageKind.DIFFUSE, kind) + cost.weights_gib(m, StageKind.DECODE, kind) for m in models]
    we = [cost.weights_gib(m, StageKind.ENCODE, kind) for m in models]
    if all(sum(wd) + sum(we) <= f for f in free):
        return None  # no packing problem: every instance fits on every GPU, the direct plan is exact
    total = sum(demand[m].get(StageKind.DIFFUSE, 0.0) for m in models) or 1.0
    share = [max(demand[m].get(StageKind.DIFFUSE, 0.0) / total, 1e-3) for m in models]
    G, M = len(gpus), len(models)
    nx = G * M

    def xi(g, m):
        return g * M + m

    def ei(g, m):
        return nx + g * M + m

    n = 2 * nx
    c = np.zeros(n)
    for g in range(G):
        for m in range(M):
            c[xi(g, m)] = -share[m]
            c[ei(g, m)] = -1e-3
    rows, lb, ub = [], [], []
    for g in range(G):  # memory
        row = np.zeros(n)
        for m in range(M):
            row[xi(g, m)] = wd[m]
            row[ei(g, m)] = we[m]
        rows.append(row), lb.append(-np.inf), ub.append(free[g])
    for m in range(M):  # encoder count cap, and at least one per node where memory allows
        row = np.zeros(n)
        for g in range(G):
            row[ei(g, m)] = 1
        rows.append(row), lb.append(-np.inf), ub.append(_wanted_encoders(cluster, demand, models[m], encode_util))
        for node in range(cluster.nodes):
            ids = [g.id for g in gpus if g.node == node]
            if max(free[i] for i in ids) >= we[m]:
                row = np.zeros(n)
                for i in ids:
                    row[ei(i, m)] = 1
                rows.append(row), lb.append(1), ub.append(np.inf)
    for m in range(M):  # every model gets a denoiser somewhere if it fits anywhere
        if max(free) >= wd[m]:
            row = np.zeros(n)
            for g in range(G):
                row[xi(g, m)] = 1
            rows.append(row), lb.append(1), ub.append(np.inf)
    try:
        res = milp(c, constraints=LinearConstraint(np.array(rows), lb, ub), integrality=np.ones(n),
                   bounds=Bounds(0, 1), options={"time_limit": time_limit_s, "disp": False})
    except (ValueError, RuntimeError):
        return None
    if res.x is None:
        return None
    plan: dict[int, set[tuple[str, str]]] = {g.id: set() for g in gpus}
    for g in range(G):
        for m in range(M):
            if res.x[xi(g, m)] > 0.5:
                plan[gpus[g].id] |= {(models[m], StageKind.DIFFUSE), (models[m], StageKind.DECODE)}
            if res.x[ei(g, m)] > 0.5:
                plan[gpus[g].id].add((models[m], StageKind.ENCODE))
    return {g: frozenset(s) for g, s in plan.items()}


def _plan_greedy(cluster, cost, kind, demand, act_reserve_gib, encode_util, max_degree) -> Plan:
    gpus = cluster.gpus
    models = sorted(demand)
    resident: dict[int, set[tuple[str, str]]] = {g.id: set() for g in gpus}
    reserve = max((act_reserve_gib.get(m, 0.0) for m in models), default=0.0)
    free = {g.id: g.mem_gib - reserve for g in gpus}

    def w(model: str, stage: str) -> float:
        return cost.weights_gib(model, stage, kind)

    # 1. denoisers and decoders
    diffuse_total = sum(demand[m].get(StageKind.DIFFUSE, 0.0) for m in models) or 1.0
    fits_all = all(sum(w(m, StageKind.DIFFUSE) + w(m, StageKind.DECODE) for m in models) <= free[g.id] for g in gpus)
    if fits_all:
        for g in gpus:
            for m in models:
                resident[g.id] |= {(m, StageKind.DIFFUSE), (m, StageKind.DECODE)}
                free[g.id] -= w(m, StageKind.DIFFUSE) + w(m, StageKind.DECODE)
    else:
        # share the nodes' GPUs out between models, in whole groups of max_degree
        per_node = cluster.gpus_per_node
        group = min(max_degree, per_node)
        groups = [tuple(g.id for g in gpus[i:i + group]) for i in range(0, len(gpus), group)]
        share = {m: demand[m].get(StageKind.DIFFUSE, 0.0) / diffuse_total for m in models}
        counts = {m: max(1, round(share[m] * len(groups))) for m in models}
        order = sorted(models, key=lambda m: -share[m])
        gi = 0
        for m in order:
            for _ in range(counts[m]):
                if gi >= len(groups):
                    break
                for g in groups[gi]:
                    need = w(m, StageKind.DIFFUSE) + w(m, StageKind.DECODE)
                    if need <= free[g]:
                        resident[g] |= {(m, StageKind.DIFFUSE), (m, StageKind.DECODE)}
                        free[g] -= need
                gi += 1
        # remaining groups and leftover memory: add denoisers where they still fit
        for g in sorted(free, key=lambda x: -free[x]):
            for m in order:
                need = w(m, StageKind.DIFFUSE) + w(m, StageKind.DECODE)
                if (m, StageKind.DIFFUSE) not in resident[g] and need <= free[g]:
                    resident[g] |= {(m, StageKind.DIFFUSE), (m, StageKind.DECODE)}
                    free[g] -= need

    # 2. encoders: as many as the demand needs, at least one per node, then wherever memory is idle
    for m in models:
        need = w(m, StageKind.ENCODE)
        wanted = _wanted_encoders(cluster, demand, m, encode_util)
        hosts = [g for g in resident if (m, StageKind.DIFFUSE) in resident[g]] or list(resident)
        by_node: dict[int, list[int]] = {}
        for g in hosts:
            by_node.setdefault(gpus[g].node, []).append(g)
        chosen: list[int] = []
        # round-robin over nodes, roomiest GPUs first
        queues = [sorted(v, key=lambda g: -free[g]) for _, v in sorted(by_node.items())]
        while len(chosen) < wanted and any(queues):
            for q in queues:
                while q and free[q[0]] < need:
                    q.pop(0)
                if q and len(chosen) < wanted:
                    chosen.append(q.pop(0))
        for g in chosen:
            resident[g].add((m, StageKind.ENCODE))
            free[g] -= need
    return {g: frozenset(s) for g, s in resident.items()}
