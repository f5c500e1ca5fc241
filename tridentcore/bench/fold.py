"""A stored live run's measurements: folded into a stage profile (``trident profile --from-run``), or
fitted as the simulator's stage-time noise (``trident simulate --noise-from``).

A live run stores every stage span: when it started and ended, its weight loading and transfers,
its batch, degree and step range. Each dispatch that completed normally is a measurement of its
stage at its shape, batch and degree: its compute time (diffuse: for the steps it ran) as the worker
measured it (``compute_s``; a run stored before that column: the span less its loading and
transfers, which includes the hand-over to and from the worker), read once by
:func:`measured_dispatches`.

* :func:`fold_run`: for every point of the base profile that the run measured at least
  ``min_samples`` times, the folded profile takes the median measured latency (diffuse: per step);
  the memory columns stay the base profile's (a span does not measure memory). Points the base
  profile lacks are reported, not invented.
* :func:`fit_run_noise`: each dispatch's measured compute time against the profile's prediction
  for it (the run's own profile by default: what the policy planned with before any calibration;
  a live run's stored ``predicted_s`` may already be calibrated), fitted by
  :func:`tridentcore.core.noise.fit_noise` (per-stage bias, pooled log-spread).

Only runs on real devices carry measurements: an emulated device takes the profile's own time, a
simulated run's times are the profile's (or its own noise), and a run with ``--slowdown K`` (a
testing aid) took K times what its devices computed; all are refused.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, replace

from ..core.noise import NoiseFit, fit_noise
from ..core.types import ProfileRow, Shape, StageKind
from ..profiles import load_profile
from ..store import UnknownRunError, query_readonly

__all__ = ["Folded", "Measured", "MeasuredRun", "fit_run_noise", "fold_run", "measured_dispatches"]


@dataclass(frozen=True, slots=True)
class Folded:
    rows: tuple[ProfileRow, ...]  # the base profile's rows, the measured ones replaced
    updated: tuple[tuple[ProfileRow, ProfileRow, int], ...]  # (before, after, measurements)
    unmatched: tuple[str, ...]  # measured points the base profile has no row for
    rare: tuple[str, ...] = ()  # points the base profile has, measured fewer than ``min_samples`` times
    status: str = ""  # the run's stored status (``running``: folded as far as it is stored)


@dataclass(frozen=True, slots=True)
class Measured:
    """One dispatch of a live run that completed normally."""

    model: str
    stage: str
    height: int
    width: int
    frames: int
    batch: int
    degree: int
    steps: int  # diffuse: the steps this dispatch ran; 1 otherwise
    compute_s: float  # the worker's measurement (older runs: ended - started - weight loading - transfers)

    @property
    def shape(self) -> Shape | None:
        return None if self.stage == StageKind.ENCODE else Shape(self.height, self.width, self.frames, self.steps)


@dataclass(frozen=True, slots=True)
class MeasuredRun:
    run_id: str
    gpu: str  # the device kind (the cluster label's kind: cpu, H200, ...)
    profile: str  # the profile the run planned with
    dispatches: tuple[Measured, ...]
    status: str = ""  # the run's stored status


def measured_dispatches(db: str | os.PathLike[str], run_id: str) -> MeasuredRun:
    """The completed dispatches of a stored live run on real devices of one kind (``ValueError``
    for a simulated run, emulated devices or mixed kinds; :class:`UnknownRunError` for no such run)."""
    runs = query_readonly(db, "SELECT backend, cluster, profile, config_json, status FROM runs WHERE run_id = ?", [run_id])
    if runs.empty:
        raise UnknownRunError(f"no run {run_id!r} in {os.fspath(db)}")
    run = runs.iloc[0]
    if run.backend != "live":
        # (a noisy simulated run's times are drawn, not the profile's own, as this said: outside test)
        raise ValueError(f"run {run_id} is simulated: its stage times were computed from the profile (and its noise "
                         "options, if any), not measured on devices; a live run on real devices is needed")
    config = json.loads(run.config_json or "{}")
    devices = str(config.get("devices", ""))
    # a live bench stores the emulated part's cluster (``cpu:1,emulated:2x8xH200`` -> 2x8xH200), a
    # server the parts joined by " + ": the devices say it either way
    kinds = {part.partition(":")[0].strip().lower() for part in devices.split(",") if part.strip()}
    if "+" in run.cluster or len(kinds) > 1:
        # (outside test 133: "use one kind at a time" read as an option to pick a part, which there is not)
        raise ValueError(f"run {run_id} mixes device kinds ({devices or run.cluster}): only a run on one kind of "
                         "real device is folded; serve that kind alone (e.g. --devices cpu:1) to measure it")
    if "emulated" in kinds:
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
    out = []
    for sp in spans.drop_duplicates("dispatch_id").itertuples(index=False):
        steps = sp.end_step - sp.start_step if sp.stage == StageKind.DIFFUSE else 1
        seconds = (sp.compute_s if sp.compute_s == sp.compute_s and sp.compute_s is not None  # NaN: NULL
                   else sp.ended_s - sp.started_s - sp.load_s - sp.transfer_s)
        if steps <= 0 or seconds <= 0:
            continue
        out.append(Measured(sp.model, str(sp.stage), int(sp.height), int(sp.width), int(sp.frames), int(sp.batch),
                            int(sp.degree), int(steps), float(seconds)))
    return MeasuredRun(run_id, run.cluster.rsplit("x", 1)[-1], str(run.profile or ""), tuple(out), str(run.status))


def _key(gpu: str, model: str, stage: str, height, width, frames, batch: int, degree: int) -> tuple:
    if str(stage) == StageKind.ENCODE:
        height = width = frames = None
    return (gpu.casefold(), model, str(stage), height, width, frames, batch, degree)


def fold_run(db: str | os.PathLike[str], run_id: str, base: str, *, min_samples: int = 3) -> Folded:
    """The base profile (a shipped name or a CSV) with the run's measured latencies folded in."""
    run = measured_dispatches(db, run_id)
    measured: dict[tuple, list[float]] = {}
    for m in run.dispatches:
        key = _key(run.gpu, m.model, m.stage, m.height, m.width, m.frames, m.batch, m.degree)
        measured.setdefault(key, []).append(1000.0 * m.compute_s / m.steps)
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
    in_base = {_key(row.gpu, row.model, row.stage, row.height, row.width, row.frames, row.batch, row.degree)
               for row in profile.rows}
    left = [(key, len(v)) for key, v in sorted(measured.items(), key=lambda kv: str(kv[0])) if key not in matched]
    # a point the base has but the run measured too rarely is not "not in" it (outside test 103)
    rare = tuple(f"{_point(key)} (measured {n} times, at least {min_samples} needed)" for key, n in left if key in in_base)
    unmatched = tuple(f"{_point(key)} ({n} measured)" for key, n in left if key not in in_base)
    return Folded(tuple(rows), tuple(updated), unmatched, rare, run.status)


def _point(key: tuple) -> str:
    """A profile point (a :func:`_key`) as the fold's messages name it: model, stage, shape, batch, degree."""
    _, m, s, h, w, f, b, d = key
    return f"{m} {s}{'' if h is None else f' {w}x{h}x{f}'} batch {b} degree {d}"


def fit_run_noise(db: str | os.PathLike[str], run_id: str, profile: str | None = None, *,
                  min_samples: int = 3) -> NoiseFit:
    """The simulator's stage-time noise fitted to a stored live run: each completed dispatch's
    compute time against ``profile``'s prediction for it (default: the run's own profile)."""
    run = measured_dispatches(db, run_id)
    cost = load_profile(profile or run.profile).cost_model()
    kinds = {k.casefold(): k for k in cost.gpus()}
    kind = kinds.get(run.gpu.casefold())
    if kind is None:
        raise ValueError(f"profile {profile or run.profile!r} has no rows for {run.gpu!r} (run {run_id}); "
                         f"it has {', '.join(cost.gpus())}")
    samples = []
    for m in run.dispatches:
        per_call = cost.latency_s(m.model, m.stage, m.shape, m.batch, m.degree, kind)
        samples.append((m.stage, per_call * m.steps, m.compute_s))
    return replace(fit_noise(samples, min_samples=min_samples), against=profile or run.profile)
