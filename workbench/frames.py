"""Rows as DataFrames: one simulated run (:class:`RunFrames`) and the converters from the row types
(``core.records`` declares each row's columns once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tridentcore.core.records import GpuSample, PlacementRow, RequestRow, SpanRow, column_names
from tridentcore.core.slo import met_slo
from tridentcore.core.types import size_label

__all__ = ["RunFrames", "placements_to_frame", "requests_to_frame", "rows_to_frame", "samples_to_frame", "spans_to_frame"]


@dataclass
class RunFrames:
    """One simulated run (one policy at one rate), as DataFrames for the figures."""

    policy: str
    rate: float | None
    summary: dict
    by_class: dict[str, tuple[int, float]]
    requests: pd.DataFrame
    spans: pd.DataFrame
    placements: pd.DataFrame
    gpu_samples: pd.DataFrame
    end_s: float
    wall_s: float
    n_gpus: int
    gpu_mem_gib: float
    extra: dict = field(default_factory=dict)


# the row types' columns (core.records declares each row once)
_REQUEST_COLUMNS = column_names(RequestRow)
_SPAN_COLUMNS = column_names(SpanRow)
_PLACEMENT_COLUMNS = column_names(PlacementRow)
_SAMPLE_COLUMNS = column_names(GpuSample)


def rows_to_frame(rows: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: [getattr(r, c) for r in rows] for c in columns}, columns=list(columns))


def requests_to_frame(rows: Sequence[RequestRow]) -> pd.DataFrame:
    df = rows_to_frame(rows, _REQUEST_COLUMNS)
    df["finish_s"] = pd.to_numeric(df["finish_s"], errors="coerce")
    df["latency_s"] = (df["finish_s"] - df["arrival_s"]).where(df["state"] == "done")
    df["met_slo"] = pd.Series([met_slo(s, f, d) for s, f, d in zip(df["state"], df["finish_s"], df["deadline_s"])],
                              index=df.index, dtype=bool)
    df["shape"] = _shape_labels(df)
    return df


def _shape_labels(df: pd.DataFrame) -> pd.Series:
    if df.empty:
        return pd.Series([], dtype=object)
    return pd.Series([size_label(w, h, f) for w, h, f in zip(df["width"], df["height"], df["frames"])], index=df.index)


def spans_to_frame(rows: Sequence[SpanRow]) -> pd.DataFrame:
    return rows_to_frame(rows, _SPAN_COLUMNS)


def placements_to_frame(rows: Sequence[PlacementRow]) -> pd.DataFrame:
    return rows_to_frame(rows, _PLACEMENT_COLUMNS)


def samples_to_frame(rows: Sequence[GpuSample]) -> pd.DataFrame:
    return rows_to_frame(rows, _SAMPLE_COLUMNS)
