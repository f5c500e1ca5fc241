"""Figures of a stage profile: stage latency and memory by shape, and how the stages compare per model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures_base import STAGES, STAGE_COLORS, empty_figure

__all__ = ["stage_discrepancy", "stage_latency_by_shape", "stage_memory_by_shape"]


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
