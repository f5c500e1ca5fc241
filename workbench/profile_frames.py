"""Profiles for the workbench: a profile's rows as a DataFrame, and the steps the shipped mixes use."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tridentcore.core.types import PROFILE_COLUMNS, size_label

from workbench.frames import rows_to_frame

__all__ = ["default_steps", "profile_frame"]


def profile_frame(rows: Sequence[Any]) -> pd.DataFrame:
    """A profile's rows as a DataFrame with ``shape`` and ``tokens`` columns (encode rows: '-')."""
    df = rows_to_frame(rows, PROFILE_COLUMNS)
    df["stage"] = df["stage"].map(lambda s: getattr(s, "value", s))
    has_shape = df["height"].notna()
    h = df["height"].fillna(0).astype(int)
    w = df["width"].fillna(0).astype(int)
    f = df["frames"].fillna(1).astype(int)
    label = pd.Series([size_label(*whf) for whf in zip(w, h, f)], index=df.index, dtype=object)
    df["shape"] = label.where(has_shape, "-")
    df["tokens"] = (h * w * f).where(has_shape)
    return df


@functools.lru_cache(maxsize=1)
def _mix_steps() -> dict[str, int]:
    from tridentcore.formats.mixes import list_mixes, load_mix

    steps: dict[str, int] = {}
    for name in list_mixes():
        try:
            mix = load_mix(name)
        except (ValueError, LookupError, OSError):
            continue
        for c in mix.classes:
            steps.setdefault(c.model, c.shape.steps)
    return steps


def default_steps(model: str) -> int:
    """Denoising steps the shipped mixes use for ``model`` (28 when no mix names it)."""
    return _mix_steps().get(model, 28)
