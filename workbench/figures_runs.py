"""Figures of run outcomes: latency CDFs, attainment and latency against rate (with the latency
frontier across policies), attainment per class, and quick charts of SQL query results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures_base import _color, _np, _series_colors, empty_figure

__all__ = ["CHART_KINDS", "class_attainment", "latency_cdf", "latency_frontier", "latency_vs_rate", "quick_chart",
           "rate_curves"]


def _ecdf(values: Sequence[float], max_points: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.sort(np.asarray(values, dtype=float))
    xs = xs[np.isfinite(xs)]
    n = len(xs)
    if n == 0:
        return xs, xs
    ps = np.arange(1, n + 1) / n
    if n > max_points:  # keep the shape, not every point: evenly spaced probabilities, plus the tail
        idx = np.unique(np.concatenate([np.linspace(0, n - 1, max_points).round().astype(int), [n - 1]]))
        xs, ps = xs[idx], ps[idx]
    # the step from 0 at the first value: a curve of one value is a vertical line, not a single point
    # that no line draws (outside test 115: a run with one finished request had no curve)
    return np.concatenate([xs[:1], xs]), np.concatenate([[0.0], ps])


def latency_cdf(latencies: Mapping[str, Sequence[float]], *, max_points: int = 1000,
                title: str = "Latency CDF (finished requests)") -> go.Figure:
    """One step curve per policy (or run): the fraction of finished requests within x seconds."""
    fig = go.Figure()
    colors = _series_colors(list(latencies))
    for name, values in latencies.items():
        xs, ps = _ecdf(values, max_points)
        fig.add_trace(go.Scatter(x=xs, y=ps, mode="lines", name=str(name), line=dict(color=colors[str(name)], shape="hv"),
                                 hovertemplate="%{y:.1%} within %{x:.2f} s<extra>" + str(name) + "</extra>"))
    fig.update_layout(title=title, xaxis_title="latency (s)", yaxis_title="fraction of requests",
                      yaxis=dict(range=[0, 1.02], tickformat=".0%"), height=380, margin=dict(t=50, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def rate_curves(points: pd.DataFrame, *, target: float = 0.9) -> go.Figure:
    """SLO attainment, and the requests met per second (rate x attainment), against request rate,
    one line per policy (latency against rate is :func:`latency_vs_rate`'s).

    ``points``: columns ``policy``, ``rate``, ``attainment``.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("SLO attainment", "Requests within SLO (req/s)"))
    colors = _series_colors(list(dict.fromkeys(points["policy"].astype(str))))
    for policy, grp in points.sort_values("rate").groupby("policy", sort=False):
        color = colors[str(policy)]
        fig.add_trace(go.Scatter(x=_np(grp["rate"]), y=_np(grp["attainment"]), mode="lines+markers", name=str(policy),
                                 legendgroup=str(policy), line=dict(color=color),
                                 hovertemplate="%{x:.3g} req/s: %{y:.1%}<extra>" + str(policy) + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=_np(grp["rate"]), y=_np(grp["rate"] * grp["attainment"]), mode="lines+markers",
                                 name=str(policy), legendgroup=str(policy), showlegend=False, line=dict(color=color),
                                 hovertemplate="%{x:.3g} req/s: %{y:.3g} within SLO per s<extra>" + str(policy)
                                               + "</extra>"),
                      row=1, col=2)
    fig.add_hline(y=target, line=dict(dash="dot", color="gray"), row=1, col=1,
                  annotation_text=f"target {target:.0%}", annotation_position="bottom left")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="rate (req/s)")
    fig.update_layout(height=380, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def latency_frontier(points: pd.DataFrame, column: str, *, target: float = 0.9) -> pd.DataFrame:
    """The frontier across policies at each rate: the lowest ``column`` among the policies with
    attainment >= ``target`` (rates where none reaches it are left out). Columns: rate, ``column``,
    policy (every policy at that lowest value, joined by " = ": two that tie are both named); sorted
    by rate. It is taken per rate, not across rates: a lower latency at a higher rate does not
    remove a lower rate's point (the rate is the load a user has, not a choice)."""
    ok = points[(points["attainment"] >= target) & points[column].notna()]
    if ok.empty:
        return pd.DataFrame({"rate": [], column: [], "policy": []})
    rows = []
    for rate, grp in ok.groupby("rate", sort=True):
        low = grp[column].min()
        tied = grp[grp[column] <= low * (1 + 1e-9)]
        rows.append({"rate": rate, column: low, "policy": " = ".join(dict.fromkeys(tied["policy"].astype(str)))})
    return pd.DataFrame(rows).reset_index(drop=True)


def _turned_away(grp: pd.DataFrame) -> list[str]:
    """Per point, what its hover adds about the requests left out of its latency: those turned away
    (goodput mode) of all sent; nothing where the points do not say or none was."""
    if "rejected" not in grp or "requests" not in grp:
        return [""] * len(grp)
    return [f", {int(r)} of {int(n)} turned away" if r else "" for r, n in zip(grp["rejected"], grp["requests"])]


def latency_vs_rate(points: pd.DataFrame, *, target: float = 0.9) -> go.Figure:
    """Mean and P95 latency of the finished requests against request rate, one line per policy, with
    the frontier across policies: at each rate the lowest latency among the policies with attainment
    >= ``target`` (a thick dashed line; its hover names the policy, or the policies that tie).
    Requests a policy turned away (goodput mode) have no latency: each point's hover says how many
    there were, so a policy that is fast by turning requests away shows it.

    ``points``: columns ``policy``, ``rate``, ``attainment``, ``mean_s``, ``p95_s``; optionally
    ``rejected`` and ``requests``.
    """
    panels = (("mean_s", "Mean latency, finished requests (s)"), ("p95_s", "P95 latency, finished requests (s)"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in panels])
    colors = _series_colors(list(dict.fromkeys(points["policy"].astype(str))))
    ordered = points.sort_values("rate")
    said = {str(p): _turned_away(grp) for p, grp in ordered.groupby("policy", sort=False)}  # hover, per point
    away = {(str(p), r): t for p, grp in ordered.groupby("policy", sort=False) for r, t in zip(grp["rate"], said[str(p)])}
    for col, (column, _) in enumerate(panels, start=1):
        for policy, grp in ordered.groupby("policy", sort=False):
            fig.add_trace(go.Scatter(x=_np(grp["rate"]), y=_np(grp[column]), mode="lines+markers", name=str(policy),
                                     legendgroup=str(policy), showlegend=col == 1, line=dict(color=colors[str(policy)]),
                                     customdata=_np(grp["attainment"]), text=said[str(policy)],
                                     hovertemplate="%{x:.3g} req/s: %{y:.2f} s (attainment %{customdata:.1%}%{text})<extra>"
                                                   + str(policy) + "</extra>"),
                          row=1, col=col)
        front = latency_frontier(points, column, target=target)
        labels = [names + "".join(away.get((n, r), "") for n in names.split(" = "))
                  for names, r in zip(front["policy"].astype(str), front["rate"])]
        fig.add_trace(go.Scatter(x=_np(front["rate"]), y=_np(front[column]), mode="lines+markers",
                                 name=f"frontier: lowest latency at each rate (attainment >= {target:.0%})",
                                 legendgroup="frontier", showlegend=col == 1, text=labels,
                                 line=dict(color="rgba(0,0,0,0.45)", width=6, dash="dash"),
                                 marker=dict(symbol="star", size=13, color="rgba(0,0,0,0.7)"),
                                 hovertemplate="%{x:.3g} req/s: %{y:.2f} s, %{text}<extra>frontier</extra>"),
                      row=1, col=col)
    fig.update_xaxes(title_text="rate (req/s)")
    fig.update_yaxes(title_text="latency (s)", rangemode="tozero")
    fig.update_layout(height=400, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def class_attainment(df: pd.DataFrame, *, run_col: str = "run", target: float = 0.9) -> go.Figure:
    """SLO attainment per request class, one bar group per class, one bar per run.

    ``df``: columns ``request_class``, ``attainment`` and ``run_col``.
    """
    if df.empty:
        return empty_figure("no requests")
    fig = go.Figure()
    for i, (run, grp) in enumerate(df.groupby(run_col, sort=False)):
        # each bar says its value: a class at 0 % draws no bar, and must not read as a class the run lacks
        fig.add_trace(go.Bar(x=grp["request_class"], y=grp["attainment"], name=str(run), marker_color=_color(i),
                             text=[f"{v:.0%}" if pd.notna(v) else "" for v in grp["attainment"]],
                             textposition="outside", cliponaxis=False,
                             hovertemplate="%{x}: %{y:.1%}<extra>" + str(run) + "</extra>"))
    fig.add_hline(y=target, line=dict(dash="dot", color="gray"))
    fig.update_layout(barmode="group", title="SLO attainment per request class", yaxis=dict(tickformat=".0%", range=[0, 1.1]),
                      height=380, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.35))
    return fig


CHART_KINDS = ("bar", "line", "scatter")


def _seconds(column: pd.Series) -> pd.Series:
    """A duration column (DuckDB's INTERVAL) in seconds (Plotly cannot serialize a timedelta: a query
    of one failed the SQL page with a traceback; outside test); any other as it is."""
    return column.dt.total_seconds() if pd.api.types.is_timedelta64_dtype(column) else column


def quick_chart(df: pd.DataFrame, x: str, y: Sequence[str] | str, kind: str = "bar", *, max_rows: int = 5000) -> go.Figure:
    """A quick chart of a query result: ``y`` column(s) against ``x`` (first ``max_rows`` rows)."""
    if kind not in CHART_KINDS:
        raise ValueError(f"unknown chart kind {kind!r}; valid kinds: {', '.join(CHART_KINDS)}")
    ys = [y] if isinstance(y, str) else list(y)
    missing = [c for c in [x, *ys] if c not in df.columns]
    if missing:
        raise ValueError(f"no column(s) {', '.join(missing)} in the result; columns: {', '.join(map(str, df.columns))}")
    if not ys:
        return empty_figure("choose a column to plot")
    d = df.head(max_rows)
    xs = d[x].astype(str) if d[x].dtype == object else _seconds(d[x])
    fig = go.Figure()
    for i, col in enumerate(ys):
        vals = pd.to_numeric(_seconds(d[col]), errors="coerce")
        if kind == "bar":
            fig.add_trace(go.Bar(x=xs, y=vals, name=col, marker_color=_color(i)))
        else:
            fig.add_trace(go.Scatter(x=xs, y=vals, name=col, mode="lines+markers" if kind == "line" else "markers",
                                     line=dict(color=_color(i))))
    secs = lambda c: f"{c} (s)" if pd.api.types.is_timedelta64_dtype(d[c]) else c
    title = f"{', '.join(map(secs, ys))} by {secs(x)}" + (f" (first {max_rows} rows)" if len(df) > max_rows else "")
    fig.update_layout(title=title, xaxis_title=secs(x), height=380, margin=dict(t=50, b=40),
                      barmode="group", showlegend=len(ys) > 1)
    return fig
