"""The integer program of ``trident-paper`` and its exact and approximate solvers.

Pick, for items (batches of requests), at most one option each (a degree ``k`` on a node) so that
per node the chosen degrees fit its idle GPUs, maximising the total value. ``trident-paper``'s
``_solve`` tries them in order: :func:`pack_best`, :func:`enumerate_program`, :func:`milp_program`
(HiGHS, scipy imported lazily), :func:`greedy_program`; see that policy's docstring for why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "Choice", "ENUMERATION_BUDGET", "ENUMERATION_MAX_OPTIONS", "Option", "enumerate_program", "greedy_program",
    "milp_program", "pack_best",
]  # fmt: skip

ENUMERATION_MAX_OPTIONS = 32  # programs this small are solved by exact enumeration
ENUMERATION_BUDGET = 4000  # search nodes before handing the program to HiGHS

# An option is ``(value, item, k, node)``: item ``item`` at degree ``k`` on node ``node`` gains
# ``value``; a choice is ``(item, k, node)``. Each item takes at most one option; per node the
# chosen degrees sum to at most ``capacity[node]``. Maximise the total value.
Option = tuple[float, int, int, int]
Choice = tuple[int, int, int]


def _nodes_for(options: Sequence[Option]) -> dict[tuple[int, int], list[int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for _v, it, k, n in options:
        out.setdefault((it, k), []).append(n)
    return out


def pack_best(options: Sequence[Option], capacity: Sequence[int]) -> list[Choice] | None:
    """Every item at its own best option (ties: the larger degree), packed largest degree first
    onto the best-fitting node; that is optimal when it fits, None when it does not."""
    best: dict[int, tuple[float, int]] = {}
    for v, it, k, _n in options:
        cur = best.get(it)
        if cur is None or v > cur[0] + 1e-12 or (abs(v - cur[0]) <= 1e-12 and k > cur[1]):
            best[it] = (v, k)
    nodes_for = _nodes_for(options)
    left = list(capacity)
    out: list[Choice] = []
    for it, (_v, k) in sorted(best.items(), key=lambda x: (-x[1][1], x[0])):
        fit = [n for n in nodes_for[(it, k)] if left[n] >= k]
        if not fit:
            return None
        n = min(fit, key=lambda m: (left[m], m))
        left[n] -= k
        out.append((it, k, n))
    return out


def enumerate_program(options: Sequence[Option], capacity: Sequence[int],
                      max_options: int = ENUMERATION_MAX_OPTIONS, budget: int = ENUMERATION_BUDGET) -> list[Choice] | None:
    """Exact branch and bound for tiny programs (HiGHS's start-up costs more than they do).

    Items in order of their best value; each takes one of its options (ties: the larger degree,
    then the best-fitting node) or none; the bound adds the best values of as many remaining
    items as GPUs remain. None when the program has more than ``max_options`` options or the
    search passes ``budget`` nodes: HiGHS takes it then.
    """
    if len(options) > max_options:
        return None
    by_item: dict[int, list[tuple[float, int, int]]] = {}
    for v, it, k, n in options:
        by_item.setdefault(it, []).append((v, k, n))
    order = sorted(by_item, key=lambda it: (-max(o[0] for o in by_item[it]), it))
    opts = [sorted(by_item[it], key=lambda o: (-o[0], -o[1], capacity[o[2]], o[2])) for it in order]
    prefix = [0.0]
    for o in opts:
        prefix.append(prefix[-1] + o[0][0])
    m = len(order)
    left = list(capacity)
    best_val = -math.inf
    best: list[Choice] = []
    chosen: list[Choice] = []
    nodes = 0

    def dfs(i: int, room: int, cur: float) -> bool:
        nonlocal best_val, best, nodes
        nodes += 1
        if nodes > budget:
            return False
        if cur > best_val + 1e-9:
            best_val, best = cur, list(chosen)
        if i == m or room == 0 or cur + prefix[min(m, i + room)] - prefix[i] <= best_val + 1e-9:
            return True
        for v, k, n in opts[i]:
            if left[n] >= k:
                left[n] -= k
                chosen.append((order[i], k, n))
                ok = dfs(i + 1, room - k, cur + v)
                chosen.pop()
                left[n] += k
                if not ok:
                    return False
        return dfs(i + 1, room, cur)

    return best if dfs(0, sum(capacity), 0.0) else None


def milp_program(options: Sequence[Option], capacity: Sequence[int], time_limit_s: float,
                 node_limit: int) -> tuple[list[Choice], bool] | None:
    """HiGHS through ``scipy.optimize.milp``: (choices, proven optimal), or None without a solution."""
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_matrix
    except ImportError:  # scipy is optional: without it the greedy decides
        return None

    items = sorted({o[1] for o in options})
    row_of = {it: r for r, it in enumerate(items)}
    rows, cols, vals = [], [], []
    for j, (_v, it, k, n) in enumerate(options):
        rows += [row_of[it], len(items) + n]
        cols += [j, j]
        vals += [1.0, float(k)]
    a = csr_matrix((vals, (rows, cols)), shape=(len(items) + len(capacity), len(options)))
    upper = np.array([1.0] * len(items) + [float(c) for c in capacity])
    try:
        res = milp(-np.array([o[0] for o in options]), constraints=LinearConstraint(a, -np.inf, upper),
                   integrality=np.ones(len(options)), bounds=Bounds(0.0, 1.0),
                   options={"time_limit": time_limit_s, "node_limit": node_limit, "mip_rel_gap": 0.0,
                            "disp": False})
    except (ValueError, RuntimeError):
        return None
    if res.x is None:
        return None
    picked = [(o[1], o[2], o[3]) for j, o in enumerate(options) if res.x[j] > 0.5]
    # guard against solver tolerances: never exceed a node's idle GPUs or take an item twice
    left = list(capacity)
    seen: set[int] = set()
    out: list[Choice] = []
    for it, k, n in sorted(picked, key=lambda x: (-x[1], x[0])):
        if it in seen or left[n] < k:
            continue
        seen.add(it)
        left[n] -= k
        out.append((it, k, n))
    return out, res.status == 0


def greedy_program(options: Sequence[Option], capacity: Sequence[int]) -> list[Choice]:
    """The fallback: options by reward density (value per GPU), each item once, best-fit node."""
    nodes_for = _nodes_for(options)
    left = list(capacity)
    seen: set[int] = set()
    out: list[Choice] = []
    for _v, it, k, _n in sorted(options, key=lambda o: (-o[0] / o[2], -o[0], o[1], o[3])):
        if it in seen:
            continue
        fit = [m for m in nodes_for[(it, k)] if left[m] >= k]
        if not fit:
            continue
        m = min(fit, key=lambda x: (left[x], x))
        left[m] -= k
        seen.add(it)
        out.append((it, k, m))
    return out
