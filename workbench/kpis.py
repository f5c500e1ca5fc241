"""What the pages show as text: the KPI cards of one policy, and small DataFrames as Markdown tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

__all__ = ["Kpi", "kpis", "markdown_table"]


@dataclass(frozen=True)
class Kpi:
    label: str
    value: str
    delta: str | None = None
    delta_color: str = "normal"  # "normal": up is good; "inverse": down is good
    help: str | None = None


def _fmt_s(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.1f} s"


def kpis(summary: dict, baseline: dict | None = None, goodput: dict | None = None) -> list[Kpi]:
    """The KPI cards of one policy (``summarize`` row), with deltas against ``baseline``'s row.

    ``goodput``: ``{"goodput_rps", "fair_goodput_rps"?, "grid": bool, "lowest_rps"?}`` when a sweep was run
    (``lowest_rps``: the sweep's lowest rate, the bound said when none reached 90 %).
    """
    def delta(key: str, scale: float = 1.0, unit: str = "", fmt: str = "+.1f") -> str | None:
        if baseline is None or baseline is summary:
            return None
        a, b = summary.get(key), baseline.get(key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == b:
            return None
        text = f"{(a - b) * scale:{fmt}}"
        if float(text) == 0:  # a difference that rounds to nothing (outside test 108: "↓ -0.0 pp", in red)
            return None
        return text + unit

    out = [
        Kpi("SLO attainment", f"{summary['attainment']:.1%}" if math.isfinite(summary["attainment"]) else "—",
            delta("attainment", 100, " pp"),
            help=f"{summary['requests']} requests; {summary['rejected']} rejected, {summary['failed']} failed or unfinished"),
        Kpi("Mean latency", _fmt_s(summary["mean_s"]), delta("mean_s", 1, " s"), "inverse"),
        Kpi("P95 latency", _fmt_s(summary["p95_s"]), delta("p95_s", 1, " s"), "inverse"),
        Kpi("P99 latency", _fmt_s(summary["p99_s"]), delta("p99_s", 1, " s"), "inverse"),
    ]
    if goodput is not None:
        g = goodput["goodput_rps"]
        if goodput.get("grid"):
            # (below the lowest rate: said as a bound that fits the card, "below the sweep" was cut off)
            lowest = goodput.get("lowest_rps")
            value = (f"≥ {g:.3g} req/s" if g > 0 else f"< {lowest:.3g} req/s" if lowest is not None
                     else "below the sweep")
            hint = ("highest swept rate with >= 90 % attainment (tick 'bisect goodput' for the exact value)" if g > 0
                    else "below the lowest swept rate: no rate of the sweep reached 90 % attainment")
        else:
            value = f"{g:.3f} req/s"
            hint = f"bisection; fair goodput (every class >= 90 %): {goodput.get('fair_goodput_rps', math.nan):.3f} req/s"
        out.append(Kpi("Goodput", value, help=hint))
    out += [
        Kpi("OOMs", str(int(summary["ooms"])), delta("ooms", 1, "", "+.0f"), "inverse"),
        Kpi("GPU-s per SLO-met request",
            f"{summary['gpu_s_per_met']:.1f}" if math.isfinite(summary["gpu_s_per_met"]) else "∞ (none met)",
            delta("gpu_s_per_met", 1, ""), "inverse"),
    ]
    return out


def markdown_table(df: pd.DataFrame, fmt: str = "{}", *, index_name: str = "", na: str = "—") -> str:
    """A small DataFrame as a Markdown table (index first); numbers through ``fmt``, missing as ``na``."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return na
        text = fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
        return text.replace("|", "\\|")

    head = [index_name, *map(str, df.columns)]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in head) + " |", "|" + " --- |" * len(head)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([cell(idx), *(cell(v) for v in row)]) + " |")
    return "\n".join(lines)
