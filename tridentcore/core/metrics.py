"""Metrics derived from the per-request rows and stage spans (never from counters in an engine).

The same definitions as the store's SQL views (``run_summary``, ``attainment_by_shape``); a test
checks the two agree. A request meets its SLO when it is ``done`` by its deadline; rejected,
failed, cancelled and unfinished requests miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .records import RequestRow, SpanRow
from .slo import met_slo


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (like DuckDB's ``quantile_cont``); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def finite(x: float | None) -> float | None:
    """``x``, or None for NaN and infinities (a figure with no data, as JSON and SQL want it)."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def met(row: RequestRow) -> bool:
    """Whether ``row`` met its SLO (:func:`tridentcore.core.slo.met_slo`)."""
    return met_slo(row.state, row.finish_s, row.deadline_s)


def gpu_seconds(spans: Iterable[SpanRow]) -> float:
    """GPU-seconds used: each dispatch once (a batch has one span per request), duration x GPUs."""
    seen: set[int] = set()
    total = 0.0
    for sp in spans:
        if sp.dispatch_id in seen:
            continue
        seen.add(sp.dispatch_id)
        total += (sp.ended_s - sp.started_s) * len(sp.gpus)
    return total


def summarize(policy: str, requests: Sequence[RequestRow], spans: Sequence[SpanRow] = (),
              decision_ms: Sequence[float] = ()) -> dict:
    """One row of the comparison table."""
    n = len(requests)
    met_n = sum(1 for r in requests if met(r))
    lat = [r.finish_s - r.arrival_s for r in requests if r.state == "done" and r.finish_s is not None]
    gpu_s = gpu_seconds(spans)
    return {
        "policy": policy,
        "requests": n,
        "attainment": met_n / n if n else math.nan,
        "mean_s": sum(lat) / len(lat) if lat else math.nan,
        "p50_s": quantile(lat, 0.5),
        "p95_s": quantile(lat, 0.95),
        "p99_s": quantile(lat, 0.99),
        "ooms": sum(r.ooms for r in requests),
        "rejected": sum(1 for r in requests if r.state == "rejected"),
        "failed": sum(1 for r in requests if r.state in ("failed", "unfinished")),
        "gpu_s_per_met": gpu_s / met_n if met_n else math.inf,
        "planner_p99_ms": quantile(decision_ms, 0.99) if decision_ms else 0.0,
    }


def attainment_by_class(requests: Sequence[RequestRow]) -> dict[str, tuple[int, float]]:
    """``{class label: (requests, attainment)}``."""
    counts: dict[str, list[int]] = {}
    for r in requests:
        c = counts.setdefault(r.request_class, [0, 0])
        c[0] += 1
        c[1] += met(r)
    return {k: (v[0], v[1] / v[0]) for k, v in sorted(counts.items())}


def min_class_attainment(requests: Sequence[RequestRow]) -> float:
    by = attainment_by_class(requests)
    return min((a for _, a in by.values()), default=math.nan)


def above_ceiling_note(goodputs: dict[str, float], ceiling_rps: float, duration_s: float, target: float = 0.9) -> str:
    """Why a goodput can read above the SLO-aware capacity ceiling ('' when none does). The ceiling is
    the rate of requests a cluster can serve within their SLOs; goodput is the arrival rate at which a
    ``target`` share of them are, so it may reach ceiling / target (the rest served late), and a
    finite run adds to that: its last arrivals are served after the arrivals stop."""
    above = [f"{p} {g:.3f}" for p, g in goodputs.items() if g > ceiling_rps * (1 + 1e-9)]
    if not above or not math.isfinite(ceiling_rps) or not 0 < target <= 1:
        return ""
    return (f"goodput above the SLO-aware ceiling ({ceiling_rps:.3f} req/s): {', '.join(above)} req/s. The ceiling is "
            f"how many requests per second the cluster can finish within their SLOs; goodput is the arrival rate at "
            f"which {target:.0%} of them are, so it may reach the ceiling / {target:g} = {ceiling_rps / target:.3f} "
            f"req/s (the other {1 - target:.0%} served late), and more in a run of {duration_s:g} s, whose last "
            "arrivals are served after the arrivals stop (a longer duration comes closer to the sustained rate).")
