"""Figures for the workbench: pure functions from data (DataFrames, mappings) to Plotly figures.

No Streamlit here and no I/O: every function takes the rows it draws and returns a
``plotly.graph_objects.Figure``, so each can be tested on a few synthetic rows. Column names are
those of the results store (``tridentcore/store``) and of :mod:`workbench.data`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from tridentcore.core.types import StageKind

__all__ = [
    "STAGE_COLORS",
    "STAGES",
    "class_attainment",
    "dispatch_bars",
    "empty_figure",
    "gpu_memory",
    "gpu_timeline",
    "latency_cdf",
    "live_devices",
    "live_queues",
    "placement_heatmap",
    "placement_intervals",
    "placement_timeline",
    "quick_chart",
    "rate_curves",
    "stage_discrepancy",
    "stage_latency_by_shape",
    "stage_memory_by_shape",
]

STAGES = tuple(s.value for s in StageKind)  # plain strings for plotly
STAGE_COLORS = {"encode": "#4C78A8", "diffuse": "#F58518", "decode": "#54A24B"}
_PALETTE = qualitative.Plotly + qualitative.D3


def _np(values) -> np.ndarray:
    """Plain float arrays for Plotly (pandas objects go through slower conversions)."""
    return np.asarray(values, dtype=float)


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


# The same policy keeps its colour whichever others are shown with it.
_POLICY_COLORS = {"pipeline-static:degree=1": "#636EFA", "pipeline-static:degree=2": "#19D3F3",
                  "pipeline-static:degree=4": "#1F77B4", "pipeline-static:degree=8": "#17BECF",
                  "pipeline-static": "#636EFA", "pipeline-dynamic": "#EF553B", "trident-paper": "#00CC96",
                  "trident": "#AB63FA"}


def _series_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per series: a known policy's own (by spec, then by name without options), else the
    next free palette colour; never two series with one colour."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        key = str(name)
        want = _POLICY_COLORS.get(key.replace(" ", "")) or _POLICY_COLORS.get(key.split(":", 1)[0].strip())
        if want is None or want in used:
            want = next((c for c in _PALETTE if c not in used and c not in _POLICY_COLORS.values()), _color(len(out)))
        out[key] = want
        used.add(want)
    return out


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=200, margin=dict(l=10, r=10, t=30, b=10))
    return fig


# ------------------------------------------------------------------------------ latency and rates
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
    return xs, ps


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
    """SLO attainment and P95 latency against request rate, one line per policy.

    ``points``: columns ``policy``, ``rate``, ``attainment``, ``p95_s``.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("SLO attainment", "P95 latency (s)"))
    colors = _series_colors(list(dict.fromkeys(points["policy"].astype(str))))
    for policy, grp in points.sort_values("rate").groupby("policy", sort=False):
        color = colors[str(policy)]
        fig.add_trace(go.Scatter(x=_np(grp["rate"]), y=_np(grp["attainment"]), mode="lines+markers", name=str(policy),
                                 legendgroup=str(policy), line=dict(color=color),
                                 hovertemplate="%{x:.3g} req/s: %{y:.1%}<extra>" + str(policy) + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=_np(grp["rate"]), y=_np(grp["p95_s"]), mode="lines+markers", name=str(policy),
                                 legendgroup=str(policy), showlegend=False, line=dict(color=color),
                                 hovertemplate="%{x:.3g} req/s: %{y:.2f} s<extra>" + str(policy) + "</extra>"),
                      row=1, col=2)
    fig.add_hline(y=target, line=dict(dash="dot", color="gray"), row=1, col=1,
                  annotation_text=f"target {target:.0%}", annotation_position="bottom left")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="rate (req/s)")
    fig.update_layout(height=380, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


# ------------------------------------------------------------------------------ per-GPU timelines
def dispatch_bars(spans: pd.DataFrame, requests: pd.DataFrame | None = None, *,
                  window: tuple[float, float] | None = None, gpus: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per (dispatch, GPU) from stage spans: what ran on each GPU and when.

    A batched dispatch has one span per request; it becomes one bar per GPU listing its requests.
    Columns: ``dispatch_id, gpu, stage, start_s, end_s, degree, batch, request_ids, outcome, what``
    (``what``: the requests' model and shape, from ``requests`` when given). ``window`` and
    ``gpus`` keep only the bars overlapping that time window, on those GPUs.
    """
    cols = ["dispatch_id", "gpu", "stage", "start_s", "end_s", "degree", "batch", "request_ids", "outcome", "what"]
    if spans is None or spans.empty:
        return pd.DataFrame(columns=cols)
    if window is not None:
        spans = spans[(spans["ended_s"].to_numpy() >= window[0]) & (spans["started_s"].to_numpy() <= window[1])]
        if spans.empty:
            return pd.DataFrame(columns=cols)
    if requests is not None and not requests.empty and {"request_id", "model", "shape"} <= set(requests.columns):
        label = dict(zip(requests["request_id"].tolist(),
                         (m + " " + sh for m, sh in zip(requests["model"].tolist(), requests["shape"].tolist(), strict=True)),
                         strict=True))
    else:
        label = {}
    # plain Python over the (windowed) rows: cheaper than pandas groupby on a few thousand spans
    per: dict[int, list] = {}
    for did, rid, stage, gpu_group, degree, batch, t0, t1, outcome in zip(
            spans["dispatch_id"].tolist(), spans["request_id"].tolist(), spans["stage"].tolist(), spans["gpus"].tolist(),
            spans["degree"].tolist(), spans["batch"].tolist(), spans["started_s"].tolist(), spans["ended_s"].tolist(),
            spans["outcome"].tolist(), strict=True):
        row = per.get(did)
        if row is None:
            per[did] = [did, tuple(gpu_group) if gpu_group is not None else (), stage, t0, t1, degree, batch, [rid], outcome,
                        {label.get(rid, "?")}]
        else:
            row[3], row[4] = min(row[3], t0), max(row[4], t1)
            row[5], row[6] = max(row[5], degree), max(row[6], batch)
            row[7].append(rid)
            row[9].add(label.get(rid, "?"))
    keep = None if gpus is None else set(int(g) for g in gpus)
    out = [(r[0], int(g), r[2], r[3], r[4], r[5], r[6], r[7], r[8], ", ".join(sorted(r[9])))
           for r in per.values() for g in r[1] if keep is None or int(g) in keep]
    return pd.DataFrame(out, columns=cols)


def _window(df: pd.DataFrame, start: str, end: str, window: tuple[float, float] | None) -> pd.DataFrame:
    if window is None or df.empty:
        return df
    t0, t1 = window
    return df[(df[end] >= t0) & (df[start] <= t1)]


def _gpu_axis(gpus: Sequence[int]) -> list[str]:
    return [f"GPU {g}" for g in gpus]


def _ids_text(ids: Sequence[int], limit: int = 6) -> str:
    head = ", ".join(str(i) for i in list(ids)[:limit])
    return head + (f" … (+{len(ids) - limit})" if len(ids) > limit else "")


def gpu_timeline(spans: Mapping[str, pd.DataFrame], requests: Mapping[str, pd.DataFrame] | None = None, *,
                 gpus: Sequence[int] = tuple(range(8)), window: tuple[float, float] | None = None,
                 max_bars: int = 4000) -> go.Figure:
    """Per-GPU Gantt of stage spans, one panel per policy, coloured by stage.

    Hover shows the requests, their model and shape, the batch and the degree. Only ``gpus`` and
    spans overlapping ``window`` are drawn, at most ``max_bars`` bars per panel (earliest first).
    """
    names = list(spans)
    if not names:
        return empty_figure("no runs to show")
    rows_per_panel = max(len(gpus), 1)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.22 / max(len(names), 1),
                        subplot_titles=names)
    shown: set[str] = set()
    axis = _gpu_axis(gpus)
    for row, name in enumerate(names, start=1):
        bars = dispatch_bars(spans[name], (requests or {}).get(name), window=window, gpus=gpus).sort_values("start_s")
        if len(bars) > max_bars:
            bars = bars.iloc[:max_bars]
            fig.layout.annotations[row - 1].text = f"{name} (first {max_bars} bars)"
        by_stage = {str(k): v for k, v in bars.groupby("stage", sort=False)}
        for stage in STAGES + tuple(sorted(set(by_stage) - set(STAGES))):
            sb = by_stage.get(stage)
            if sb is None:
                continue
            custom = np.column_stack([
                [_ids_text(ids) for ids in sb["request_ids"]], sb["what"], sb["batch"], sb["degree"],
                sb["outcome"], sb["start_s"].round(2), sb["end_s"].round(2),
            ])
            fig.add_trace(go.Bar(
                y=[f"GPU {g}" for g in sb["gpu"].tolist()], x=_np(sb["end_s"] - sb["start_s"]).clip(min=1e-3),
                base=_np(sb["start_s"]),
                orientation="h", name=stage, legendgroup=stage, showlegend=stage not in shown,
                marker=dict(color=STAGE_COLORS.get(stage, "#999999"), line=dict(width=0.5, color="white")), customdata=custom,
                hovertemplate=("<b>%{fullData.name}</b> on %{y}<br>requests %{customdata[0]}<br>%{customdata[1]}"
                               "<br>batch %{customdata[2]}, degree %{customdata[3]}, %{customdata[4]}"
                               "<br>%{customdata[5]} s → %{customdata[6]} s<extra></extra>"),
            ), row=row, col=1)
            shown.add(stage)
        fig.update_yaxes(categoryorder="array", categoryarray=axis[::-1], type="category", row=row, col=1)
    if window is not None:
        fig.update_xaxes(range=list(window))
    fig.update_xaxes(title_text="time (s)", row=len(names), col=1)
    fig.update_layout(barmode="overlay", bargap=0.15, height=80 + len(names) * (40 + 18 * rows_per_panel),
                      margin=dict(t=40, b=40), legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"),
                      title="Per-GPU timeline of stage spans")
    return fig


def gpu_memory(samples: Mapping[str, pd.DataFrame], *, gpus: Sequence[int] = tuple(range(8)),
               window: tuple[float, float] | None = None, mem_cap_gib: float | None = None) -> go.Figure:
    """GPU memory in use over time (``gpu_samples``), one panel per policy, one line per GPU."""
    names = list(samples)
    if not names:
        return empty_figure("no runs to show")
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.22 / max(len(names), 1),
                        subplot_titles=names)
    for row, name in enumerate(names, start=1):
        df = samples[name]
        if window is not None:
            df = df[(df["t_s"].to_numpy() >= window[0]) & (df["t_s"].to_numpy() <= window[1])]
        by_gpu = {int(k): v for k, v in df.groupby("gpu", sort=False)}
        for i, gpu in enumerate(gpus):
            d = by_gpu.get(int(gpu))
            if d is None or d.empty:
                continue
            d = d.sort_values("t_s")
            fig.add_trace(go.Scatter(x=_np(d["t_s"]), y=_np(d["mem_gib"]), mode="lines", line=dict(shape="hv", color=_color(i)),
                                     name=f"GPU {gpu}", legendgroup=f"GPU {gpu}", showlegend=row == 1,
                                     hovertemplate="t=%{x:.0f} s: %{y:.1f} GiB<extra>GPU " + str(gpu) + "</extra>"),
                          row=row, col=1)
        if mem_cap_gib:
            fig.add_hline(y=mem_cap_gib, line=dict(dash="dot", color="red"), row=row, col=1)
        fig.update_yaxes(title_text="GiB", row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=len(names), col=1)
    fig.update_layout(height=80 + 220 * len(names), margin=dict(t=40, b=40), title="GPU memory in use")
    return fig


def placement_intervals(placements: pd.DataFrame, end_s: float) -> pd.DataFrame:
    """Replay place/evict rows into residency intervals: ``gpu, model, stage, instance, start_s, end_s, weights_gib``.

    An instance still resident at the end of the run lasts until ``end_s``; a second ``place`` of
    an instance already resident is ignored, an ``evict`` of one not resident too.
    """
    cols = ["gpu", "model", "stage", "instance", "start_s", "end_s", "weights_gib"]
    if placements is None or placements.empty:
        return pd.DataFrame(columns=cols)
    # evictions before placements at the same instant (a replacement frees memory first)
    order = placements.assign(_o=(placements["action"].to_numpy() == "place").astype(int)).sort_values(["t_s", "_o"], kind="stable")
    open_at: dict[tuple[int, str, str], tuple[float, float]] = {}
    out: list[tuple] = []
    for t, gpu, model, stage, action, gib in zip(order["t_s"], order["gpu"], order["model"], order["stage"],
                                                 order["action"], order["weights_gib"], strict=True):
        key = (int(gpu), str(model), str(stage))
        if action == "place":
            open_at.setdefault(key, (float(t), float(gib)))
        elif key in open_at:
            t0, w = open_at.pop(key)
            out.append((key[0], key[1], key[2], f"{key[1]}/{key[2]}", t0, float(t), w))
    for key, (t0, w) in open_at.items():
        out.append((key[0], key[1], key[2], f"{key[1]}/{key[2]}", t0, max(float(end_s), t0), w))
    return pd.DataFrame(out, columns=cols).sort_values(["gpu", "start_s"]).reset_index(drop=True)


def placement_timeline(placements: Mapping[str, pd.DataFrame], end_s: Mapping[str, float], *,
                       gpus: Sequence[int] = tuple(range(8)), window: tuple[float, float] | None = None) -> go.Figure:
    """The placement plan over time: which stage instances are resident on which GPU, per policy."""
    names = list(placements)
    if not names:
        return empty_figure("no runs to show")
    ivs = {n: placement_intervals(placements[n], end_s.get(n, 0.0)) for n in names}
    instances = sorted({i for df in ivs.values() for i in df["instance"]})
    colors = {inst: _color(i) for i, inst in enumerate(instances)}
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.22 / max(len(names), 1),
                        subplot_titles=names)
    axis = _gpu_axis(gpus)
    shown: set[str] = set()
    for row, name in enumerate(names, start=1):
        df = ivs[name]
        df = _window(df[df["gpu"].isin(list(gpus))], "start_s", "end_s", window)
        by_inst = {str(k): v for k, v in df.groupby("instance", sort=False)}
        for inst in instances:
            d = by_inst.get(inst)
            if d is None:
                continue
            fig.add_trace(go.Bar(
                y=[f"GPU {g}" for g in d["gpu"].tolist()], x=_np(d["end_s"] - d["start_s"]).clip(min=1e-3),
                base=_np(d["start_s"]),
                orientation="h", name=inst, legendgroup=inst, showlegend=inst not in shown, offsetgroup=inst,
                marker=dict(color=colors[inst], line=dict(width=0)),
                customdata=np.column_stack([d["weights_gib"].round(2), d["start_s"].round(1), d["end_s"].round(1)]),
                hovertemplate=("<b>" + inst + "</b> on %{y}<br>%{customdata[0]} GiB of weights"
                               "<br>resident %{customdata[1]} s → %{customdata[2]} s<extra></extra>"),
            ), row=row, col=1)
            shown.add(inst)
        fig.update_yaxes(categoryorder="array", categoryarray=axis[::-1], type="category", row=row, col=1)
    if window is not None:
        fig.update_xaxes(range=list(window))
    fig.update_xaxes(title_text="time (s)", row=len(names), col=1)
    fig.update_layout(barmode="group", bargap=0.1, bargroupgap=0.0, title="Placement plan over time (resident stage instances)",
                      height=80 + len(names) * (40 + 60 * max(len(gpus), 1)), margin=dict(t=40, b=40))
    return fig


def _ranges(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 8]`` -> ``"0–3, 8"``."""
    out: list[str] = []
    ids = sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}–{ids[j]}")
        i = j + 1
    return ", ".join(out)


def placement_heatmap(placements: Mapping[str, pd.DataFrame], end_s: Mapping[str, float], *, n_gpus: int | None = None,
                      window: tuple[float, float] | None = None) -> go.Figure:
    """The placement plan over time, compactly: one row per stage instance (model/stage), colour =
    how many GPUs hold it, hover = which GPUs. One panel per policy."""
    names = list(placements)
    if not names:
        return empty_figure("no runs to show")
    ivs = {n: placement_intervals(placements[n], end_s.get(n, 0.0)) for n in names}
    instances = sorted({i for df in ivs.values() for i in df["instance"]})
    if not instances:
        return empty_figure("no stage instances were placed")
    cmax = n_gpus or max((df["gpu"].nunique() for df in ivs.values()), default=1)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.22 / max(len(names), 1),
                        subplot_titles=names)
    for row, name in enumerate(names, start=1):
        df = ivs[name]
        lo, hi = (0.0, float(end_s.get(name, 0.0))) if window is None else (float(window[0]), float(window[1]))
        hi = max(hi, lo + 1e-6)
        edges = sorted({lo, hi} | {t for t in list(df["start_s"]) + list(df["end_s"]) if lo < t < hi})
        rows = {inst: d for inst, d in df.groupby("instance", sort=False)}
        z, text = [], []
        for inst in instances:
            d = rows.get(inst)
            zr, tr = [], []
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                held = [] if d is None else sorted(set(d.loc[(d["start_s"] <= a) & (d["end_s"] >= b), "gpu"].astype(int)))
                zr.append(len(held))
                tr.append(_ranges(held) if held else "none")
            z.append(zr)
            text.append(tr)
        fig.add_trace(go.Heatmap(
            x=edges, y=instances, z=z, text=text, coloraxis="coloraxis", xgap=0, ygap=2,
            hovertemplate="<b>%{y}</b><br>%{z} GPU(s): %{text}<extra>" + name + "</extra>",
        ), row=row, col=1)
    fig.update_xaxes(title_text="time (s)", row=len(names), col=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, cmax=cmax, colorbar=dict(title="GPUs")),
                      title="Placement plan over time: where each stage instance is resident",
                      height=80 + len(names) * (50 + 22 * len(instances)), margin=dict(t=40, b=40))
    return fig


# ------------------------------------------------------------------------------ profiles
def _profile_points(profile: pd.DataFrame, gpu: str, model: str) -> pd.DataFrame:
    df = profile[(profile["gpu"] == gpu) & (profile["model"] == model) & (profile["degree"] == 1)]
    return df


def _encode_row(df: pd.DataFrame) -> pd.Series | None:
    enc = df[df["stage"] == "encode"].sort_values("batch")
    return None if enc.empty else enc.iloc[0]


def _shape_rows(df: pd.DataFrame, stage: str) -> pd.DataFrame:
    d = df[(df["stage"] == stage) & (df["batch"] == 1)]
    return d.sort_values("tokens").drop_duplicates("shape")


def _by_shape(profile: pd.DataFrame, gpu: str, model: str):
    """A model's batch-1 rows, its diffuse and decode rows by shape, and the shapes in token order."""
    df = _profile_points(profile, gpu, model)
    dif, dec = _shape_rows(df, "diffuse"), _shape_rows(df, "decode")
    shapes = pd.concat([dif[["shape", "tokens"]], dec[["shape", "tokens"]]]).sort_values("tokens").drop_duplicates("shape")
    return df, dif, dec, list(shapes["shape"])


def stage_latency_by_shape(profile: pd.DataFrame, gpu: str, model: str, *, steps: int = 28) -> go.Figure:
    """One model's stage latencies against output size (resolution x frames), batch 1, one GPU.

    ``profile``: :func:`workbench.data.profile_frame` rows. Encode does not depend on the shape
    (a flat line); diffuse is drawn per step and for ``steps`` steps.
    """
    df, dif, dec, order = _by_shape(profile, gpu, model)
    if not order:
        return empty_figure(f"{model}: no diffuse or decode rows at batch 1 on {gpu}")
    fig = go.Figure()
    enc = _encode_row(df)
    if enc is not None:
        fig.add_trace(go.Scatter(x=order, y=[enc["latency_ms"]] * len(order), mode="lines", name=f"encode (batch {int(enc['batch'])})",
                                 line=dict(color=STAGE_COLORS["encode"], dash="dash")))
    if not dif.empty:
        fig.add_trace(go.Scatter(x=dif["shape"], y=dif["latency_ms"], mode="lines+markers", name="diffuse, one step",
                                 line=dict(color=STAGE_COLORS["diffuse"], dash="dot")))
        fig.add_trace(go.Scatter(x=dif["shape"], y=dif["latency_ms"] * steps, mode="lines+markers",
                                 name=f"diffuse, {steps} steps", line=dict(color=STAGE_COLORS["diffuse"])))
    if not dec.empty:
        fig.add_trace(go.Scatter(x=dec["shape"], y=dec["latency_ms"], mode="lines+markers", name="decode",
                                 line=dict(color=STAGE_COLORS["decode"])))
    fig.update_xaxes(categoryorder="array", categoryarray=order, title_text="output size (W x H [x frames])")
    fig.update_yaxes(type="log", title_text="latency (ms, log)")
    fig.update_layout(title=f"{model} on {gpu}: stage latency (batch 1, 1 GPU)", height=380, margin=dict(t=50, b=40),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def stage_memory_by_shape(profile: pd.DataFrame, gpu: str, model: str) -> go.Figure:
    """One model's stage memory against output size: peak (solid) and weights (dashed) per stage."""
    df, dif, dec, order = _by_shape(profile, gpu, model)
    if not order:
        return empty_figure(f"{model}: no diffuse or decode rows at batch 1 on {gpu}")
    fig = go.Figure()
    enc = _encode_row(df)
    if enc is not None:
        fig.add_trace(go.Scatter(x=order, y=[enc["peak_gib"]] * len(order), mode="lines", name="encode peak",
                                 line=dict(color=STAGE_COLORS["encode"])))
    for stage, d in (("diffuse", dif), ("decode", dec)):
        if d.empty:
            continue
        fig.add_trace(go.Scatter(x=d["shape"], y=d["peak_gib"], mode="lines+markers", name=f"{stage} peak",
                                 line=dict(color=STAGE_COLORS[stage])))
        fig.add_trace(go.Scatter(x=d["shape"], y=d["weights_gib"], mode="lines", name=f"{stage} weights",
                                 line=dict(color=STAGE_COLORS[stage], dash="dash")))
    fig.update_xaxes(categoryorder="array", categoryarray=order, title_text="output size (W x H [x frames])")
    fig.update_yaxes(title_text="GiB", rangemode="tozero")
    fig.update_layout(title=f"{model} on {gpu}: stage memory (batch 1, 1 GPU)", height=380, margin=dict(t=50, b=40),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def stage_discrepancy(profile: pd.DataFrame, gpu: str, steps: Mapping[str, int] | None = None) -> go.Figure:
    """The discrepancy the design rests on: per model, each stage's share of a request's time
    against its share of the weights (at the model's largest shape profiled for both diffuse and decode)."""
    steps = steps or {}
    models = sorted(set(profile.loc[profile["gpu"] == gpu, "model"]))
    rows = []
    for model in models:
        df = _profile_points(profile, gpu, model)
        enc = _encode_row(df)
        dif, dec = _shape_rows(df, "diffuse"), _shape_rows(df, "decode")
        common = sorted(set(dif["shape"]) & set(dec["shape"]), key=lambda s: float(dif.loc[dif["shape"] == s, "tokens"].iloc[0]))
        if enc is None or not common:
            continue
        shape = common[-1]
        d, c = dif[dif["shape"] == shape].iloc[0], dec[dec["shape"] == shape].iloc[0]
        n = int(steps.get(model, 28))
        rows.append({"label": f"{model} {shape}", "steps": n,
                     "time_ms": {"encode": enc["latency_ms"], "diffuse": d["latency_ms"] * n, "decode": c["latency_ms"]},
                     "weights_gib": {"encode": enc["weights_gib"], "diffuse": d["weights_gib"], "decode": c["weights_gib"]},
                     "act_gib": {"encode": enc["act_gib"], "diffuse": d["act_gib"], "decode": c["act_gib"]}})
    if not rows:
        return empty_figure(f"no model on {gpu} has encode, diffuse and decode rows")
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True,
                        subplot_titles=("share of request time", "share of weight memory", "share of activation memory"))
    labels = [r["label"] for r in rows]
    for stage in STAGES:
        for col, key, unit in ((1, "time_ms", "ms"), (2, "weights_gib", "GiB"), (3, "act_gib", "GiB")):
            vals = [r[key][stage] for r in rows]
            totals = [sum(r[key].values()) or 1.0 for r in rows]
            fig.add_trace(go.Bar(
                y=labels, x=[v / t for v, t in zip(vals, totals, strict=True)], orientation="h", name=stage,
                legendgroup=stage, showlegend=col == 1, marker=dict(color=STAGE_COLORS[stage]),
                customdata=np.array([[round(float(v), 3)] for v in vals]),
                hovertemplate=f"{stage}: %{{x:.1%}} (%{{customdata[0]}} {unit})<extra>%{{y}}</extra>",
            ), row=1, col=col)
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_layout(barmode="stack", title=f"Stage discrepancy on {gpu} (each model at its largest size profiled for every stage)", height=140 + 45 * len(rows), margin=dict(t=70, b=30),
                      legend=dict(orientation="h", y=-0.15))
    return fig


# ------------------------------------------------------------------------------ runs and SQL
def class_attainment(df: pd.DataFrame, *, run_col: str = "run", target: float = 0.9) -> go.Figure:
    """SLO attainment per request class, one bar group per class, one bar per run.

    ``df``: columns ``request_class``, ``attainment`` and ``run_col``.
    """
    if df.empty:
        return empty_figure("no requests")
    fig = go.Figure()
    for i, (run, grp) in enumerate(df.groupby(run_col, sort=False)):
        fig.add_trace(go.Bar(x=grp["request_class"], y=grp["attainment"], name=str(run), marker_color=_color(i),
                             hovertemplate="%{x}: %{y:.1%}<extra>" + str(run) + "</extra>"))
    fig.add_hline(y=target, line=dict(dash="dot", color="gray"))
    fig.update_layout(barmode="group", title="SLO attainment per request class", yaxis=dict(tickformat=".0%", range=[0, 1.02]),
                      height=380, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.35))
    return fig


CHART_KINDS = ("bar", "line", "scatter")


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
    xs = d[x].astype(str) if d[x].dtype == object else d[x]
    fig = go.Figure()
    for i, col in enumerate(ys):
        vals = pd.to_numeric(d[col], errors="coerce")
        if kind == "bar":
            fig.add_trace(go.Bar(x=xs, y=vals, name=col, marker_color=_color(i)))
        else:
            fig.add_trace(go.Scatter(x=xs, y=vals, name=col, mode="lines+markers" if kind == "line" else "markers",
                                     line=dict(color=_color(i))))
    title = f"{', '.join(ys)} by {x}" + (f" (first {max_rows} rows)" if len(df) > max_rows else "")
    fig.update_layout(title=title, xaxis_title=x, height=380, margin=dict(t=50, b=40),
                      barmode="group", showlegend=len(ys) > 1)
    return fig


# ------------------------------------------------------------------------------ a live cluster
_MEM_PARTS = (("weights_gib", "weights", "#4C78A8"), ("activations_gib", "activations", "#F58518"),
              ("free_gib", "free", "#E5ECF6"))


def _resident_text(resident: str, limit: int = 4) -> str:
    items = [r.strip() for r in resident.split(",") if r.strip()]
    shown = ", ".join(items[:limit]) + (f" +{len(items) - limit}" if len(items) > limit else "")
    return shown or "(nothing resident)"


def live_devices(devices: pd.DataFrame) -> go.Figure:
    """Memory of each device of a live server, stacked: resident weights, activations, free.

    ``devices``: columns of :func:`workbench.live.devices_frame` (``device``, ``kind``, ``alive``,
    ``busy``, ``running``, ``resident``, ``weights_gib``, ``activations_gib``, ``free_gib``,
    ``mem_gib``). Each bar is labelled with the stages resident on the device and what it runs.
    """
    if devices.empty:
        return empty_figure("the server reports no devices")
    df = devices.sort_values("device")
    state = np.where(~df["alive"].astype(bool), "DOWN", np.where(df["busy"].astype(bool), "busy", "idle"))
    labels = [f"{k} {int(d)} · {s}" for d, k, s in zip(df["device"], df["kind"], state, strict=True)]
    hover_stage = [f"{_resident_text(r, 12)}" + (f"<br>running: {run}" if run else "")
                   for r, run in zip(df["resident"], df["running"], strict=True)]
    fig = go.Figure()
    for col, name, color in _MEM_PARTS:
        fig.add_trace(go.Bar(
            y=labels, x=_np(df[col].clip(lower=0)), name=name, orientation="h", marker_color=color,
            customdata=np.stack([_np(df["mem_gib"]), np.asarray(hover_stage, dtype=object)], axis=-1),
            hovertemplate="%{y}: " + name + " %{x:.2f} GiB of %{customdata[0]:.1f}<br>%{customdata[1]}<extra></extra>"))
    for label, resident, run in zip(labels, df["resident"], df["running"], strict=True):
        text = _resident_text(resident) + (f"  ▶ {run}" if run else "")
        fig.add_annotation(x=0, y=label, text=text, showarrow=False, xanchor="left", xshift=4,
                           font=dict(size=11, color="black"), bgcolor="rgba(255,255,255,0.6)")
    fig.update_layout(barmode="stack", title="Devices: resident stages and memory", xaxis_title="GiB",
                      yaxis=dict(autorange="reversed"), height=120 + 42 * len(df), margin=dict(t=50, b=40, l=10, r=10),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def live_queues(queues: Mapping[str, int], running: Mapping[str, int]) -> go.Figure:
    """Requests waiting for and running in each stage of a live server."""
    stages = [s for s in STAGES if s in queues or s in running] or list(STAGES)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=stages, y=[int(queues.get(s, 0)) for s in stages], name="waiting",
                         marker_color=[STAGE_COLORS.get(s, "#999") for s in stages], opacity=0.45,
                         hovertemplate="%{x}: %{y} waiting<extra></extra>"))
    fig.add_trace(go.Bar(x=stages, y=[int(running.get(s, 0)) for s in stages], name="running",
                         marker_color=[STAGE_COLORS.get(s, "#999") for s in stages],
                         hovertemplate="%{x}: %{y} running<extra></extra>"))
    fig.update_layout(barmode="group", title="Queue per stage", yaxis=dict(title="requests", rangemode="tozero",
                      dtick=1 if max([*queues.values(), *running.values(), 0]) < 10 else None),
                      height=300, margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return fig
