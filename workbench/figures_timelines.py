"""Per-GPU timelines of a run: dispatches, GPU time and memory per policy, and placements over time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures_base import STAGES, STAGE_COLORS, _color, _np, empty_figure

__all__ = ["dispatch_bars", "gpu_memory", "gpu_timeline", "placement_heatmap", "placement_intervals", "placement_timeline"]


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
