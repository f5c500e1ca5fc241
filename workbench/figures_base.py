"""What the workbench's figures share: stage and policy colours, the empty figure, array conversion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from tridentcore.core.types import StageKind

__all__ = ["STAGES", "STAGE_COLORS", "empty_figure"]

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
