"""Figures for the workbench: pure functions from data (DataFrames, mappings) to Plotly figures.

No Streamlit here and no I/O: every function takes the rows it draws and returns a
``plotly.graph_objects.Figure``, so each can be tested on a few synthetic rows. Column names are
those of the results store (``tridentcore/store``) and of :mod:`workbench.data`.

This module is the import path the pages use; the figures live in :mod:`workbench.figures_runs`
(latency, rates and the latency frontier across policies, attainment, SQL charts), :mod:`workbench.figures_timelines` (per-GPU timelines and
placements), :mod:`workbench.figures_profiles`, :mod:`workbench.figures_live`, and what they share in
:mod:`workbench.figures_base`.
"""

from __future__ import annotations

from workbench.figures_base import STAGE_COLORS, STAGES, empty_figure
from workbench.figures_live import live_devices, live_queues
from workbench.figures_profiles import stage_discrepancy, stage_latency_by_shape, stage_memory_by_shape
from workbench.figures_runs import (CHART_KINDS, class_attainment, latency_cdf, latency_frontier, latency_vs_rate,
                                    quick_chart, rate_curves)
from workbench.figures_timelines import (dispatch_bars, gpu_memory, gpu_timeline, placement_heatmap, placement_intervals,
                                         placement_timeline)

__all__ = [
    "CHART_KINDS",
    "STAGE_COLORS",
    "STAGES",
    "class_attainment",
    "dispatch_bars",
    "empty_figure",
    "gpu_memory",
    "gpu_timeline",
    "latency_cdf",
    "latency_frontier",
    "latency_vs_rate",
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
