"""Data for the workbench pages: simulated comparisons, profiles and the results store as DataFrames.

Two layers. The plain functions (``simulate_frames``, ``profile_frame``, ``runs_frame``, ...)
take values and return values: no Streamlit, testable directly. The ``cached_*`` wrappers put
``st.cache_data`` in front of them for the pages; results-store reads are keyed by the file's
signature (path, size, modification time), so a new run written to the file is seen at once while
repeated interactions over an unchanged file hit the cache.

Expected problems (a bad mix, a profile without a model, a missing database, SQL that tries to
read a file) surface as exceptions of the library's own types; pages turn them into messages with
:func:`error_text`.

This module holds the simulated comparisons, the uploads and the cached layer; it re-exports the rest
from :mod:`workbench.frames` (rows as DataFrames), :mod:`workbench.profile_frames`,
:mod:`workbench.stored` (the results store) and :mod:`workbench.kpis` (KPI cards, Markdown tables).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from tridentcore.core.defaults import DEFAULT_DB, DEFAULT_POLICIES, DEFAULT_RATE
from tridentcore.core.metrics import above_ceiling_note, attainment_by_class, summarize
from tridentcore.core.types import DEGREES
from tridentcore.bench.scenario import Loaded, Scenario, capacity_rps, ceilings, load_scenario, run_one, sweep_goodput

from workbench.frames import RunFrames, placements_to_frame, requests_to_frame, samples_to_frame, spans_to_frame
from workbench.kpis import Kpi, kpis, markdown_table
from workbench.profile_frames import default_steps, profile_frame
from workbench.stored import REPO_ROOT  # noqa: F401  (its old home)
from workbench.stored import (SQL_MAX_ROWS, DbSignature, SqlLimitError, class_attainment_frame, db_signature, latencies,
                              SqlResults, run_sql, run_zip, runs_frame, servers_gone, sql_examples, sql_waiting, stage_breakdown_frame,
                              summaries_frame)

__all__ = [
    "DEFAULT_POLICIES",
    "POLICY_CHOICES",
    "DEFAULT_DB",
    "DEFAULT_RATE",
    "DEFAULT_SCENARIO",
    "RunFrames",
    "DbSignature",
    "error_text",
    "plain_markdown",
    "goodput_on_grid",
    "parse_rates",
    "save_upload",
    "simulate_frames",
    "warm_frames",
    "above_ceiling_note",
    "goodput_bisect",
    "scenario_capacity",
    "scenario_ceilings",
    "validate_comparison",
    "warm_up",
    "store_default_comparison",
    "profile_frame",
    "default_steps",
    "db_signature",
    "runs_frame",
    "summaries_frame",
    "class_attainment_frame",
    "stage_breakdown_frame",
    "latencies",
    "run_zip",
    "servers_gone",
    "run_sql",
    "SQL_MAX_ROWS",
    "SqlLimitError",
    "sql_examples",
    "sql_waiting",
    "Kpi",
    "kpis",
    "markdown_table",
    "requests_to_frame",
    "spans_to_frame",
    "placements_to_frame",
    "samples_to_frame",
]

POLICY_CHOICES: tuple[str, ...] = (
    *(f"pipeline-static:degree={d}" for d in DEGREES),
    "pipeline-dynamic", "trident-paper", "trident",
)  # fmt: skip
# The comparison the home page opens with: the default policies on the default scenario
# (``tridentcore.core.defaults``), the same that `trident simulate` runs without options.
DEFAULT_SCENARIO = Scenario()
# per user, mode 0700 (uploads are the visitors' files: traces may hold prompts); files 0600
UPLOAD_DIR = Path(tempfile.gettempdir()) / f"trident-workbench-uploads-{os.getuid() if hasattr(os, 'getuid') else 0}"
UPLOAD_KEEP_S = 7 * 86400  # uploads not used for this long are removed when the next one is saved
UPLOAD_MAX_BYTES = 512 * 2**20  # and the least recently used beyond this many bytes in all (uploads of up to 200 MB each)


def error_text(exc: BaseException) -> str:
    """The message a page shows for an expected failure (never a traceback)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # KeyError's str() adds quotes
    if getattr(exc, "locked", False):  # a lock held past the wait, in the store's words: what to do here
        return f"{text}. Close that, then reload."
    return text or type(exc).__name__


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=^])")


def plain_markdown(text: str) -> str:
    """``text`` as Markdown that shows it as it is (every punctuation character escaped, each line
    break kept), wrapping at the box's width: for messages that quote SQL or paths."""
    return "  \n".join(_MARKDOWN_SPECIAL.sub(r"\\\1", line) for line in text.splitlines())


_EXACT_IN_A_BROWSER = 2**53  # integers past this lose digits as JavaScript numbers (the table's)


def exact_for_display(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each integer column that holds a value past 2**53 as text, so that the browser's
    table shows its digits (it holds numbers as doubles: 9007199254740993 would show ...992), and each
    duration (DuckDB's INTERVAL) as text too, ``1 days 00:01:04.250000`` (Streamlit shows a duration
    as "a minute"; outside test). The CSV download keeps the frame itself."""
    big = [c for c in frame.columns if pd.api.types.is_integer_dtype(frame[c]) and not frame.empty
           and (frame[c].max() > _EXACT_IN_A_BROWSER or frame[c].min() < -_EXACT_IN_A_BROWSER)]
    spans = [c for c in frame.columns if pd.api.types.is_timedelta64_dtype(frame[c])]
    if not big and not spans:
        return frame
    shown = frame.copy()
    for c in big:
        shown[c] = frame[c].map(lambda v: None if pd.isna(v) else str(int(v)))
    for c in spans:
        shown[c] = frame[c].map(lambda v: None if pd.isna(v) else str(v))
    return shown


# ----------------------------------------------------------------------------------- uploads
def save_upload(content: bytes, suffix: str) -> str:
    """Store uploaded bytes under a name derived from their content; return the path.

    The library reads mixes, traces and profiles from paths; a content-addressed name makes the
    path (and so every cache key built from it) change exactly when the content does.
    """
    UPLOAD_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = UPLOAD_DIR.lstat()
    if not UPLOAD_DIR.is_dir() or UPLOAD_DIR.is_symlink() or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise OSError(f"{UPLOAD_DIR} is not a folder of this user's: uploads are not saved there")
    os.chmod(UPLOAD_DIR, 0o700)
    digest = hashlib.sha256(content).hexdigest()[:20]
    path = UPLOAD_DIR / f"{digest}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    else:
        os.utime(path)  # used again: kept another UPLOAD_KEEP_S
    _forget_old_uploads(keep=path)
    return str(path)


def _forget_old_uploads(keep: Path) -> None:
    """Remove uploads unused for ``UPLOAD_KEEP_S`` (the folder outlives the app; nothing else cleans it),
    then the least recently used while the folder holds more than ``UPLOAD_MAX_BYTES``."""
    cutoff = time.time() - UPLOAD_KEEP_S
    kept = []
    for old in UPLOAD_DIR.iterdir():
        try:
            if old == keep or not old.is_file():
                continue
            st_ = old.stat()
            if st_.st_mtime < cutoff:
                old.unlink()
            else:
                kept.append((st_.st_mtime, st_.st_size, old))
        except OSError:
            pass
    total = sum(size for _, size, _ in kept) + (keep.stat().st_size if keep.exists() else 0)
    for _, size, old in sorted(kept):  # oldest first
        if total <= UPLOAD_MAX_BYTES:
            break
        try:
            old.unlink()
            total -= size
        except OSError:
            pass


def drop_uploads(uploaded: Mapping[str, str]) -> None:
    """Remove saved uploads the page refused (``uploaded``: path -> the name it was uploaded as)."""
    for path in uploaded:
        p = Path(path)
        if p.parent == UPLOAD_DIR:
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- simulation
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


def start_refusals(scenario: Scenario, policies: Sequence[str]) -> dict[str, str]:
    """Why each of ``policies`` that cannot start on the scenario's cluster cannot (its deployment does
    not fit, ...): the comparison leaves those out and says so."""
    from tridentcore.bench.scenario import start_refusal

    loaded = _loaded(scenario)
    return {p: why for p in policies if (why := start_refusal(loaded, p)) is not None}


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
        scenario_ceilings(scenario)
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


def store_default_comparison(db: str | os.PathLike[str], policies: Sequence[str] = DEFAULT_POLICIES,
                             scenario: Scenario = DEFAULT_SCENARIO, rate: float = DEFAULT_RATE) -> list[str]:
    """Store the comparison the home page opens with in ``db`` as simulated runs (what ``trident bench``
    stores for them), so that the Runs and SQL pages have something to show from the first start;
    returns the run ids stored now. Once per database: a policy whose run of the same scenario and rate
    is there (``config_json``'s ``default_comparison``) is not stored again. Store errors (a lock
    held past the store's wait) propagate."""
    from tridentcore.bench.runs import run_and_store
    from tridentcore.store import query_readonly

    key = hashlib.sha256(scenario.to_json(rate=rate).encode()).hexdigest()[:16]
    have: set[str] = set()
    if Path(db).is_file():
        have = set(query_readonly(db, "SELECT policy FROM runs WHERE json_extract_string(config_json, "
                                      "'$.default_comparison') = ?", [key])["policy"])
    todo = [p for p in policies if p not in have]
    if not todo:
        return []
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    loaded = _loaded(scenario)
    return [run_and_store(loaded, p, rate, db, extra_config={"source": "workbench", "default_comparison": key})
            for p in todo]


def warm_frames(scenario: Scenario, policy: str, rate: float | None) -> RunFrames | None:
    """The warm-up's run of this comparison (waiting for it while it is being made), or None."""
    key = (scenario, policy, rate)
    pending = _warming.get(key)
    if pending is not None:
        pending.wait(120.0)
    return _warm.get(key)


def simulate_frames(scenario: Scenario, policy: str, rate: float | None) -> RunFrames:
    """Simulate one policy at one rate (``None`` for a trace) and return its rows as DataFrames."""
    warm = warm_frames(scenario, policy, rate)
    return warm if warm is not None else _simulate_frames(scenario, policy, rate)


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


def scenario_ceilings(scenario: Scenario) -> dict:
    """The capacity ceiling and the SLO-aware one (req/s), and the SLO-aware pricing's note ('' or
    the classes that meet their SLO at no degree), as plain values."""
    efficient, slo_aware = ceilings(_loaded(scenario))
    return {"capacity_rps": efficient.rps, "slo_aware_rps": slo_aware.rps, "note": slo_aware.note()}


def goodput_bisect(scenario: Scenario, policy: str, target: float = 0.9) -> dict:
    """Goodput and fair goodput by bisection (``sweep_goodput``), as plain values."""
    g = sweep_goodput(_loaded(scenario), policy, target)
    return {"policy": policy, "goodput_rps": g.goodput_rps, "fair_goodput_rps": g.fair_goodput_rps,
            "points": [(p.rate, p.attainment, p.min_class) for p in g.points]}


MAX_RATES = 50  # rates in one sweep (each simulated for every policy, on the workbench's cores)


def parse_rates(text: str) -> list[float]:
    """``"0.25, 0.5 1"`` -> ``[0.25, 0.5, 1.0]`` (sorted, unique); ValueError naming bad items, an
    empty item between separators (``1,,2``, which was dropped unsaid), and more than MAX_RATES."""
    if re.search(r"[,;]\s*[,;]", text.strip()):
        raise ValueError(f"an empty item in {text.strip()[:80]!r}: give numbers separated by commas, e.g. 0.25, 0.5, 1")
    items = [t for t in re.split(r"[,\s;]+", text.strip()) if t]
    rates, bad = [], []
    for item in items:
        try:
            if not item.isascii() or "_" in item:  # (float() reads fullwidth and other scripts' digits, and 1_0 as 10)
                raise ValueError(item)
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
    if len(set(rates)) > MAX_RATES:  # (399 were taken: 1,596 simulations on every core)
        raise ValueError(f"{len(set(rates))} rates: at most {MAX_RATES} in one sweep")
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


cached_capacity = _cache(max_entries=64)(scenario_capacity)
cached_ceilings = _cache(max_entries=64)(scenario_ceilings)
cached_runs = _cache(max_entries=16)(runs_frame)
cached_summaries = _cache(max_entries=64)(summaries_frame)
cached_class_attainment = _cache(max_entries=64)(class_attainment_frame)
cached_stage_breakdown = _cache(max_entries=64)(stage_breakdown_frame)
cached_latencies = _cache(max_entries=64)(latencies)
# at most 16 results of at most SQL_MAX_ROWS rows and SQL_MAX_BYTES each (workbench.stored), for an hour
cached_sql = SqlResults(max_entries=16, ttl_s=3600)
