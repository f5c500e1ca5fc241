"""Figures of a live cluster: memory per device and the queues per stage."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures_base import STAGES, STAGE_COLORS, _np, empty_figure

__all__ = ["live_devices", "live_queues"]


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
