"""Data for the workbench pages: simulated comparisons, profiles and the results store as DataFrames.

Two layers. The plain functions (``simulate_frames``, ``profile_frame``, ``runs_frame``, ...)
take values and return values: no Streamlit, testable directly. The ``cached_*`` wrappers put
``st.cache_data`` in front of them for the pages; results-store reads are keyed by the file's
signature (path, size, modification time), so a new run written to the file is seen at once while
repeated interactions over an unchanged file hit the cache.

Expected problems (a bad mix, a profile without a model, a missing database, SQL that tries to
read a file) surface as exceptions of the library's own types; pages turn them into messages with
:func:`error_text`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tridentcore.core.metrics import attainment_by_class, summarize
from tridentcore.core.records import GpuSample, PlacementRow, RequestRow, SpanRow, column_names
from tridentcore.core.slo import met_slo
from tridentcore.core.types import DEGREES, PROFILE_COLUMNS, size_label
from tridentcore.store.schema import STAGE_ORDER_SQL
from tridentcore.bench.scenario import Loaded, Scenario, capacity_rps, load_scenario, run_one, sweep_goodput

__all__ = [
    "DEFAULT_POLICIES",
    "POLICY_CHOICES",
    "DEFAULT_DB",
    "DEFAULT_RATE",
    "DEFAULT_SCENARIO",
    "RunFrames",
    "DbSignature",
    "error_text",
    "goodput_on_grid",
    "parse_rates",
    "save_upload",
    "simulate_frames",
    "goodput_bisect",
    "scenario_capacity",
    "validate_comparison",
    "warm_up",
    "profile_frame",
    "default_steps",
    "db_signature",
    "runs_frame",
    "summaries_frame",
    "class_attainment_frame",
    "stage_breakdown_frame",
    "latencies",
    "run_zip",
    "run_sql",
    "sql_examples",
    "Kpi",
    "kpis",
    "markdown_table",
    "requests_to_frame",
    "spans_to_frame",
    "placements_to_frame",
    "samples_to_frame",
]

DEFAULT_POLICIES: tuple[str, ...] = ("pipeline-static:degree=1", "pipeline-dynamic", "trident-paper", "trident")
POLICY_CHOICES: tuple[str, ...] = (
    *(f"pipeline-static:degree={d}" for d in DEGREES),
    "pipeline-dynamic", "trident-paper", "trident",
)  # fmt: skip
DEFAULT_DB = "results/trident.duckdb"
# The comparison the home page opens with: the four policies on the image-video mix, Poisson arrivals
# at 0.5 req/s for 600 simulated seconds, simulated 2x8xH200, the h200 profile, SLO scale 3.
DEFAULT_SCENARIO = Scenario(duration_s=600.0)
DEFAULT_RATE = 0.5
UPLOAD_DIR = Path(tempfile.gettempdir()) / "trident-workbench-uploads"
REPO_ROOT = Path(__file__).resolve().parents[1]


def error_text(exc: BaseException) -> str:
    """The message a page shows for an expected failure (never a traceback)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # KeyError's str() adds quotes
    return text or type(exc).__name__


# ----------------------------------------------------------------------------------- uploads
def save_upload(content: bytes, suffix: str) -> str:
    """Store uploaded bytes under a name derived from their content; return the path.

    The library reads mixes, traces and profiles from paths; a content-addressed name makes the
    path (and so every cache key built from it) change exactly when the content does.
    """
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(content).hexdigest()[:20]
    path = UPLOAD_DIR / f"{digest}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, path)
    return str(path)


# ----------------------------------------------------------------------------------- simulation
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


def _frame(rows: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: [getattr(r, c) for r in rows] for c in columns}, columns=list(columns))


def requests_to_frame(rows: Sequence[RequestRow]) -> pd.DataFrame:
    df = _frame(rows, _REQUEST_COLUMNS)
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
    return _frame(rows, _SPAN_COLUMNS)


def placements_to_frame(rows: Sequence[PlacementRow]) -> pd.DataFrame:
    return _frame(rows, _PLACEMENT_COLUMNS)


def samples_to_frame(rows: Sequence[GpuSample]) -> pd.DataFrame:
    return _frame(rows, _SAMPLE_COLUMNS)


@functools.lru_cache(maxsize=16)
def _loaded(scenario: Scenario) -> Loaded:
    return load_scenario(scenario)


def validate_comparison(scenario: Scenario, policies: Sequence[str], rates: Sequence[float | None]) -> list[str]:
    """Every problem with a comparison's inputs, as messages (empty: it can run)."""
    from tridentcore.core.policy import make_policy

    problems: list[str] = []
    if not policies:
        problems.append("choose at least one policy")
    for spec in policies:
        try:
            make_policy(spec)
        except (ValueError, LookupError) as exc:
            problems.append(error_text(exc))
    try:
        loaded = _loaded(scenario)
    except (ValueError, LookupError, OSError) as exc:
        problems.append(error_text(exc))
        return problems
    for rate in rates:
        try:
            if not loaded.requests(rate):
                problems.append(f"no requests at {rate} req/s over {scenario.duration_s:g} s (raise the rate or duration)")
        except (ValueError, LookupError) as exc:
            problems.append(error_text(exc))
    return problems


# The default comparison, computed once per process by :func:`warm_up` (``python -m workbench`` starts
# it with the server, before anyone opens a page). A page asking for a run the warm-up is still
# computing waits for it rather than computing it a second time.
_warm: dict[tuple[Scenario, str, float | None], RunFrames] = {}
_warming: dict[tuple[Scenario, str, float | None], threading.Event] = {}
_warm_guard = threading.Lock()


def warm_up(policies: Sequence[str] = DEFAULT_POLICIES, scenario: Scenario = DEFAULT_SCENARIO,
            rate: float = DEFAULT_RATE) -> float:
    """Compute the default comparison (and import and exercise what its page needs) ahead of the
    first visitor; returns the seconds it took. Safe to call from a background thread, once or more."""
    t0 = time.perf_counter()
    keys = [(scenario, p, rate) for p in policies]
    with _warm_guard:
        todo = [k for k in keys if k not in _warm and k not in _warming]
        for k in todo:
            _warming[k] = threading.Event()
    try:
        for k in todo:
            try:
                _warm[k] = _simulate_frames(*k)
            finally:
                _warming.pop(k).set()
        runs = [_warm[k] for k in keys if k in _warm]
        scenario_capacity(scenario)
        if runs:  # the first figure of a process pays for Plotly's imports and validators: pay it here
            from workbench import figures

            figures.latency_cdf({r.policy: r.requests["latency_s"].dropna() for r in runs}).to_json()
            figures.gpu_timeline({r.policy: r.spans for r in runs}, {r.policy: r.requests for r in runs},
                                 gpus=tuple(range(8)), window=(0.0, 300.0)).to_json()
    finally:
        with _warm_guard:
            for k in todo:
                ev = _warming.pop(k, None)
                if ev is not None:
                    ev.set()
    return time.perf_counter() - t0


def simulate_frames(scenario: Scenario, policy: str, rate: float | None) -> RunFrames:
    """Simulate one policy at one rate (``None`` for a trace) and return its rows as DataFrames."""
    key = (scenario, policy, rate)
    pending = _warming.get(key)
    if pending is not None:
        pending.wait(120.0)
    warm = _warm.get(key)
    if warm is not None:
        return warm
    return _simulate_frames(scenario, policy, rate)


def _simulate_frames(scenario: Scenario, policy: str, rate: float | None) -> RunFrames:
    loaded = _loaded(scenario)
    result = run_one(loaded, policy, rate, record=True)
    summary = summarize(policy, result.requests, result.spans, result.decision_ms)
    return RunFrames(
        policy=policy, rate=rate, summary=summary, by_class=attainment_by_class(result.requests),
        requests=requests_to_frame(result.requests), spans=spans_to_frame(result.spans),
        placements=placements_to_frame(result.placements), gpu_samples=samples_to_frame(result.gpu_samples),
        end_s=float(result.end_s), wall_s=float(result.wall_s), n_gpus=loaded.cluster.num_gpus,
        gpu_mem_gib=float(loaded.cluster.mem_gib),
    )


def scenario_capacity(scenario: Scenario) -> float:
    return capacity_rps(_loaded(scenario))


def goodput_bisect(scenario: Scenario, policy: str, target: float = 0.9) -> dict:
    """Goodput and fair goodput by bisection (``sweep_goodput``), as plain values."""
    g = sweep_goodput(_loaded(scenario), policy, target)
    return {"policy": policy, "goodput_rps": g.goodput_rps, "fair_goodput_rps": g.fair_goodput_rps,
            "points": [(p.rate, p.attainment, p.min_class) for p in g.points]}


def parse_rates(text: str) -> list[float]:
    """``"0.25, 0.5 1"`` -> ``[0.25, 0.5, 1.0]`` (sorted, unique); ValueError naming bad items."""
    items = [t for t in re.split(r"[,\s;]+", text.strip()) if t]
    rates, bad = [], []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            bad.append(item)
            continue
        if not (value > 0 and math.isfinite(value)):
            bad.append(item)
        else:
            rates.append(value)
    if bad:
        raise ValueError(f"rates must be positive numbers; cannot use: {', '.join(bad)}")
    if not rates:
        raise ValueError("give at least one rate (req/s), e.g. 0.25, 0.5, 0.75, 1")
    return sorted(set(rates))


def goodput_on_grid(points: pd.DataFrame, target: float = 0.9) -> dict[str, float]:
    """Per policy, the highest swept rate whose attainment is >= target, with every lower swept
    rate also passing (0.0 when the lowest fails). ``points``: columns policy, rate, attainment."""
    out: dict[str, float] = {}
    for policy, grp in points.sort_values("rate").groupby("policy", sort=False):
        best = 0.0
        for rate, att in zip(grp["rate"], grp["attainment"], strict=True):
            if att >= target:
                best = float(rate)
            else:
                break
        out[str(policy)] = best
    return out


# ----------------------------------------------------------------------------------- profiles
def profile_frame(rows: Sequence[Any]) -> pd.DataFrame:
    """A profile's rows as a DataFrame with ``shape`` and ``tokens`` columns (encode rows: '-')."""
    df = _frame(rows, PROFILE_COLUMNS)
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


# ----------------------------------------------------------------------------------- results store
@dataclass(frozen=True)
class DbSignature:
    """What identifies a results file's contents for caching: path, size and modification time."""

    path: str
    size: int
    mtime_ns: int


def db_signature(path: str | os.PathLike[str]) -> DbSignature:
    """The file's signature; FileNotFoundError with a hint when there is no file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"no results database at {p} (write one with `trident simulate --db {p}` or choose another file)")
    st = p.stat()
    return DbSignature(str(p.resolve()), st.st_size, st.st_mtime_ns)


def runs_frame(sig: DbSignature) -> pd.DataFrame:
    from tridentcore.store import list_runs

    return list_runs(sig.path)


def summaries_frame(sig: DbSignature, run_ids: Sequence[str]) -> pd.DataFrame:
    from tridentcore.store import run_summary

    return run_summary(sig.path, list(run_ids))


def _read(sig: DbSignature, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    from tridentcore.store import open_readonly

    con = open_readonly(sig.path)
    try:
        return con.execute(sql, list(params)).df()
    finally:
        con.close()


def class_attainment_frame(sig: DbSignature, run_ids: Sequence[str]) -> pd.DataFrame:
    return _read(sig, "SELECT run_id, request_class, requests, met, attainment, p50_s, p95_s, rejected, failed "
                      "FROM attainment_by_shape WHERE list_contains(?, run_id) ORDER BY request_class, run_id",
                 [list(run_ids)])


def stage_breakdown_frame(sig: DbSignature, run_ids: Sequence[str]) -> pd.DataFrame:
    return _read(sig, "SELECT * FROM stage_breakdown WHERE list_contains(?, run_id) "
                      f"ORDER BY run_id, {STAGE_ORDER_SQL}",
                 [list(run_ids)])


def latencies(sig: DbSignature, run_id: str) -> pd.Series:
    """Latencies of a run's finished requests (seconds)."""
    df = _read(sig, "SELECT latency_s FROM requests WHERE run_id = ? AND latency_s IS NOT NULL", [run_id])
    return df["latency_s"]


def run_zip(sig: DbSignature, run_id: str) -> bytes:
    """One run as a zip of Parquet files (one per table), via ``store.export_run``."""
    from tridentcore.store import export_run

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="trident-export-") as tmp:
        written = export_run(sig.path, run_id, tmp)
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, path in written.items():
                zf.write(path, arcname=f"{run_id}/{name}.parquet")
    return buf.getvalue()


def run_sql(sig: DbSignature, sql: str) -> pd.DataFrame:
    """Untrusted SQL over the results file: read-only, no file access (``store.query_readonly``)."""
    from tridentcore.store import query_readonly

    return query_readonly(sig.path, sql)


_SQL_BLOCK = re.compile(r"```sql\s*\n(.*?)```", re.S)


def sql_examples(readme: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """``(title, sql)`` for each ```sql block of results/README.md; the title is the paragraph
    just before the block. Empty when the README is not there (an installed package)."""
    path = Path(readme) if readme is not None else REPO_ROOT / "results" / "README.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _SQL_BLOCK.finditer(text):
        before = text[pos:m.start()].strip().split("\n\n")[-1].strip()
        title = " ".join(before.split()).rstrip(":") or f"example {len(out) + 1}"
        out.append((title, m.group(1).strip()))
        pos = m.end()
    return out


# ----------------------------------------------------------------------------------- cached wrappers
# Streamlit is imported here, not at the top: the plain functions above stay usable without it.
def _st():
    import streamlit as st

    return st


def _cache(**kw):
    def wrap(fn):
        cached = None

        @functools.wraps(fn)
        def call(*args, **kwargs):
            nonlocal cached
            if cached is None:
                cached = _st().cache_data(show_spinner=False, **kw)(fn)
            return cached(*args, **kwargs)

        return call

    return wrap


cached_simulate = _cache(max_entries=128)(simulate_frames)
cached_goodput = _cache(max_entries=64)(goodput_bisect)
cached_capacity = _cache(max_entries=64)(scenario_capacity)
cached_runs = _cache(max_entries=16)(runs_frame)
cached_summaries = _cache(max_entries=64)(summaries_frame)
cached_class_attainment = _cache(max_entries=64)(class_attainment_frame)
cached_stage_breakdown = _cache(max_entries=64)(stage_breakdown_frame)
cached_latencies = _cache(max_entries=64)(latencies)
cached_sql = _cache(max_entries=16)(run_sql)


# ----------------------------------------------------------------------------------- KPI cards
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

    ``goodput``: ``{"goodput_rps", "fair_goodput_rps"?, "grid": bool}`` when a sweep was run.
    """
    def delta(key: str, scale: float = 1.0, unit: str = "", fmt: str = "+.1f") -> str | None:
        if baseline is None or baseline is summary:
            return None
        a, b = summary.get(key), baseline.get(key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == b:
            return None
        return f"{(a - b) * scale:{fmt}}{unit}"

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
            value = f"≥ {g:.3g} req/s" if g > 0 else "below the sweep"
            hint = "highest swept rate with >= 90 % attainment (tick 'bisect goodput' for the exact value)"
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
