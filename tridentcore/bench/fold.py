"""Folding a stored live run's measurements into a stage profile (``trident profile --from-run``).

A live run stores every stage span: when it started and ended, its weight loading and transfers,
its batch, degree and step range. Each dispatch that completed normally is a measurement of its
stage at its shape, batch and degree: its compute time (diffuse: per step), as the worker measured
it (``compute_s``; a run stored before that column: the span less its loading and transfers, which
includes the hand-over to and from the worker). For every point of the
base profile that the run measured at least ``min_samples`` times, the folded profile takes the
median measured latency; the memory columns stay the base profile's (a span does not measure
memory). Points the base profile lacks are reported, not invented.

Only runs on real devices carry measurements: an emulated device takes the profile's own time, and
a run with ``--slowdown K`` (a testing aid) took K times what its devices computed.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, replace

from ..core.types import ProfileRow, StageKind
from ..profiles import load_profile
from ..store import UnknownRunError, query_readonly

__all__ = ["Folded", "fold_run"]


@dataclass(frozen=True, slots=True)
class Folded:
    rows: tuple[ProfileRow, ...]  # the base profile's rows, the measured ones replaced
    updated: tuple[tuple[ProfileRow, ProfileRow, int], ...]  # (before, after, measurements)
    unmatched: tuple[str, ...]  # measured points the base profile has no row for


def _key(gpu: str, model: str, stage: str, height, width, frames, batch: int, degree: int) -> tuple:
    if str(stage) == StageKind.ENCODE:
        height = width = frames = None
    return (gpu.casefold(), model, str(stage), height, width, frames, batch, degree)


def fold_run(db: str | os.PathLike[str], run_id: str, base: str, *, min_samples: int = 3) -> Folded:
    """The base profile (a shipped name or a CSV) with the run's measured latencies folded in."""
    runs = query_readonly(db, "SELECT backend, cluster, config_json FROM runs WHERE run_id = ?", [run_id])
    if runs.empty:
        raise UnknownRunError(f"no run {run_id!r} in {os.fspath(db)}")
    run = runs.iloc[0]
    if run.backend != "live":
        raise ValueError(f"run {run_id} is simulated: its stage times are the profile's own")
    if "+" in run.cluster:
        raise ValueError(f"run {run_id} mixes device kinds ({run.cluster}); fold one kind at a time")
    gpu = run.cluster.rsplit("x", 1)[-1]
    config = json.loads(run.config_json or "{}")
    devices = str(config.get("devices", ""))
    if devices.strip().lower().startswith("emulated"):
        raise ValueError(f"run {run_id} ran on emulated devices ({devices}): they take the profile's own time")
    if float(config.get("slowdown", 1.0)) != 1.0:
        raise ValueError(f"run {run_id} ran with --slowdown {config['slowdown']:g}: its stage times are that many "
                         f"times what the devices computed")
    spans = query_readonly(
        db,
        "SELECT s.dispatch_id, s.stage, s.degree, s.batch, s.started_s, s.ended_s, s.load_s, s.transfer_s, s.compute_s, "
        "s.start_step, s.end_step, r.model, r.height, r.width, r.frames "
        "FROM stage_spans s JOIN requests r USING (run_id, request_id) "
        "WHERE s.run_id = ? AND s.outcome = 'done'", [run_id])
    measured: dict[tuple, list[float]] = {}
    for sp in spans.drop_duplicates("dispatch_id").itertuples(index=False):
        seconds = (sp.compute_s if sp.compute_s == sp.compute_s and sp.compute_s is not None  # NaN: NULL
                   else sp.ended_s - sp.started_s - sp.load_s - sp.transfer_s)
        if sp.stage == StageKind.DIFFUSE:
            steps = sp.end_step - sp.start_step
            if steps <= 0:
                continue
            seconds /= steps
        if seconds <= 0:
            continue
        key = _key(gpu, sp.model, sp.stage, int(sp.height), int(sp.width), int(sp.frames), int(sp.batch),
                   int(sp.degree))
        measured.setdefault(key, []).append(1000.0 * seconds)
    profile = load_profile(base)
    rows, updated, matched = [], [], set()
    for row in profile.rows:
        key = _key(row.gpu, row.model, row.stage, row.height, row.width, row.frames, row.batch, row.degree)
        got = measured.get(key, [])
        if len(got) >= min_samples:
            new = replace(row, latency_ms=round(statistics.median(got), 4),
                          source=f"run {run_id}: median of {len(got)}")
            updated.append((row, new, len(got)))
            matched.add(key)
            rows.append(new)
        else:
            rows.append(row)
    unmatched = tuple(f"{m} {s} {w}x{h}x{f} batch {b} degree {d} ({len(v)} measured)"
                      for (g, m, s, h, w, f, b, d), v in sorted(measured.items(), key=lambda kv: str(kv[0]))
                      if (g, m, s, h, w, f, b, d) not in matched)
    return Folded(tuple(rows), tuple(updated), unmatched)
