"""Stored runs: look them up, report and compare them, and run a simulated one again.

Everything here reads the results store through read-only connections (``tridentcore.store``)
and returns plain data (dicts of Python values, ``None`` for SQL NULL); the ``trident runs`` and
``trident bench`` commands only format it. Metrics come from the store's SQL views
(``run_summary``, ``attainment_by_shape``, ``stage_breakdown``), never from the driver.

A run is named by its full id or by a prefix that matches exactly one stored id.

Repeating a run rebuilds its :class:`~tridentcore.bench.spec.RunSpec` (rate and policy included) from
the ``config_json`` it was stored with and simulates it again; the simulator is deterministic, so the
new run's rows and summary equal the old ones unless the code (``git_sha``) changed in between.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.defaults import DEFAULT_DB_WAIT_S
from ..core.errors import TridentError, brief
from ..store import ResultsStore, UnknownRunError, new_run_id, open_readonly
from ..store.schema import STAGE_ORDER_SQL
from .scenario import Loaded, load_scenario, run_meta, run_one
from .spec import RunSpec, RunSpecError

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

__all__ = [
    "COMPARED",
    "RunReport",
    "RunDiff",
    "Repeat",
    "RunConfigError",
    "resolve_run",
    "list_stored_runs",
    "count_and_running_runs",
    "show_run",
    "diff_runs",
    "summaries",
    "scenario_from_config",
    "run_and_store",
    "repeat_run",
]

# Summary metrics that two runs are compared on (columns of the run_summary view).
COMPARED = ("requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected", "failed",
            "preemptions", "gpu_s", "gpu_s_per_met")


class RunConfigError(TridentError, ValueError):
    """A stored run that cannot be run again (live backend, or a config_json missing fields)."""


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _resolve(con: duckdb.DuckDBPyConnection, db: str | os.PathLike[str], run: str) -> str:
    if not run.strip():  # ("" is a prefix of every id)
        raise UnknownRunError("give a run id, or the start of one (`trident runs list` shows them)")
    if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run]).fetchall():
        return run
    found = [r[0] for r in con.execute(
        "SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id LIMIT 6", [run]).fetchall()]
    if len(found) == 1:
        return found[0]
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise UnknownRunError(f"run {run!r} is ambiguous in {os.fspath(db)}: it begins {shown}")
    total = con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
    client = con.execute("SELECT count(*) FROM client_requests WHERE run_id = ?", [run]).fetchall()[0][0]
    if client:  # (it read as "not in FILE (0 runs stored)")
        raise UnknownRunError(f"run {run!r} has only client rows in {os.fspath(db)} ({client} requests, as a standalone "
                              f"Locust run with --db stores them; {total} runs stored): `trident sql --db "
                              f"{os.fspath(db)} \"SELECT * FROM client_requests WHERE run_id = '{run}'\"` shows them")
    # (outside test 118: a 5,000-character id said in full, and "1 runs stored")
    raise UnknownRunError(f"run {brief(run)} is not in {os.fspath(db)} ({total} run{'s' * (total != 1)} stored; see "
                          "`trident runs list`)")


def _open(db: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """A read-only connection; a file that is not a results database is an error naming it."""
    con = open_readonly(db)
    try:
        con.execute("SELECT 1 FROM runs LIMIT 0")
    except Exception:
        con.close()
        raise FileNotFoundError(f"{os.fspath(db)} is not a results database (no runs table)") from None
    return con


def resolve_run(db: str | os.PathLike[str], run: str) -> str:
    """The stored run id named by ``run`` (full id or unique prefix); ``UnknownRunError`` otherwise."""
    con = _open(db)
    try:
        return _resolve(con, db, run)
    finally:
        con.close()


def list_stored_runs(db: str | os.PathLike[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Every stored run, oldest first, with its headline numbers; ``limit``: only the newest ``limit``
    runs (still oldest first), their summaries alone computed."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    limit = None if limit is None else min(limit, 2**62)  # (DuckDB's LIMIT takes a BIGINT)
    newest = "" if limit is None else (
        "WHERE s.run_id IN (SELECT run_id FROM runs ORDER BY created_at DESC, run_id DESC LIMIT ?)")
    con = _open(db)
    try:
        return _rows(con, f"""
            SELECT s.run_id, s.created_at, s.backend, s.policy, s.mix, s.cluster, s.rate_rps, s.seed,
                   s.status, s.requests, s.attainment, s.p95_s
            FROM run_summary s {newest} ORDER BY s.created_at, s.run_id""", [] if limit is None else [limit])
    finally:
        con.close()


def count_and_running_runs(db: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """How many runs ``db`` holds, and the ids of those stored as ``running`` (oldest first)."""
    con = _open(db)
    try:
        count = int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
        running = [r[0] for r in con.execute(
            "SELECT run_id FROM runs WHERE status = 'running' ORDER BY created_at, run_id").fetchall()]
        return count, running
    finally:
        con.close()


def client_only_runs(db: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Run ids that have client rows (``client_requests``: a standalone Locust run's ``--db``) and no
    run of their own, with their request counts; ``trident runs list`` names them under its table."""
    con = _open(db)
    try:
        return [(r[0], int(r[1])) for r in con.execute(
            "SELECT run_id, count(*) FROM client_requests WHERE run_id NOT IN (SELECT run_id FROM runs) "
            "GROUP BY run_id ORDER BY run_id").fetchall()]
    finally:
        con.close()


@dataclass(frozen=True)
class RunReport:
    run_id: str
    meta: dict[str, Any]  # the runs row
    summary: dict[str, Any]  # the run_summary row
    classes: list[dict[str, Any]]  # attainment_by_shape rows, worst class first
    stages: list[dict[str, Any]]  # stage_breakdown rows, encode / diffuse / decode


def show_run(db: str | os.PathLike[str], run: str) -> RunReport:
    con = _open(db)
    try:
        run_id = _resolve(con, db, run)
        meta = _rows(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])[0]
        summary = _rows(con, "SELECT * FROM run_summary WHERE run_id = ?", [run_id])[0]
        classes = _rows(con, """
            SELECT request_class, requests, met, attainment, p50_s, p95_s, rejected, failed
            FROM attainment_by_shape WHERE run_id = ? ORDER BY attainment, request_class""", [run_id])
        stages = _rows(con, f"""
            SELECT stage, spans, dispatches, mean_s, p95_s, mean_queue_s, p95_queue_s, mean_batch,
                   mean_degree, gpu_s, load_s, preempted, oom
            FROM stage_breakdown WHERE run_id = ? ORDER BY {STAGE_ORDER_SQL}""", [run_id])
    finally:
        con.close()
    return RunReport(run_id, meta, summary, classes, stages)


def summaries(db: str | os.PathLike[str], run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """``run_summary`` rows of ``run_ids``, in the order given (each must be stored)."""
    con = _open(db)
    try:
        ids = [_resolve(con, db, r) for r in run_ids]
        found = {r["run_id"]: r for r in _rows(con, "SELECT * FROM run_summary WHERE list_contains(?, run_id)", [ids])}
    finally:
        con.close()
    return [found[i] for i in ids]


@dataclass(frozen=True)
class RunDiff:
    a: dict[str, Any]  # run_summary row of run A
    b: dict[str, Any]
    classes: list[dict[str, Any]]  # request_class, requests_a/b, attainment_a/b, delta (b - a)


def diff_runs(db: str | os.PathLike[str], run_a: str, run_b: str) -> RunDiff:
    con = _open(db)
    try:
        a, b = _resolve(con, db, run_a), _resolve(con, db, run_b)
        rows = {r["run_id"]: r for r in _rows(con, "SELECT * FROM run_summary WHERE run_id IN (?, ?)", [a, b])}
        for r in _rows(con, "SELECT run_id, config_json FROM runs WHERE run_id IN (?, ?)", [a, b]):
            rows[r["run_id"]]["config_json"] = r["config_json"]  # (noise, bias, a cluster file: runs diff's note)
        classes = _rows(con, """
            WITH a AS (SELECT * FROM attainment_by_shape WHERE run_id = ?),
                 b AS (SELECT * FROM attainment_by_shape WHERE run_id = ?)
            SELECT coalesce(a.request_class, b.request_class) AS request_class,
                   a.requests AS requests_a, b.requests AS requests_b,
                   a.attainment AS attainment_a, b.attainment AS attainment_b,
                   b.attainment - a.attainment AS delta
            FROM a FULL OUTER JOIN b USING (request_class)
            ORDER BY request_class""", [a, b])
    finally:
        con.close()
    return RunDiff(rows[a], rows[b], classes)


# ------------------------------------------------------------------------------ running and repeating
_REQUIRED = ("profile", "cluster", "mix", "arrival", "duration_s", "slo_scale", "seed", "rate")


def scenario_from_config(config_json: str, *, origin: str = "config") -> tuple[RunSpec, str, float | None]:
    """The spec, policy spec and rate a sim run's ``config_json`` (``run_meta``) holds.

    Reads the configs of runs stored before the one run spec too (``policy`` instead of
    ``policies``); the rate is ``None`` for a trace."""
    try:
        config = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise RunConfigError(f"{origin}: config_json is not valid JSON ({exc.msg})") from None
    if not isinstance(config, Mapping):
        raise RunConfigError(f"{origin}: config_json is not a JSON object")
    missing = [k for k in _REQUIRED if k not in config]
    if not config.get("policy") and not config.get("policies"):
        missing.append("policy")
    if missing:
        raise RunConfigError(f"{origin}: config_json lacks {', '.join(missing)}; it cannot be run again")
    from .spec_schema import validate_spec

    try:
        spec = validate_spec(config)
    except RunSpecError as exc:
        raise RunConfigError(f"{origin}: config_json: {exc}") from None
    if len(spec.policies) != 1:
        raise RunConfigError(f"{origin}: config_json names {len(spec.policies)} policies; a run has one")
    return spec, spec.policies[0], config["rate"]


def run_and_store(loaded: Loaded, policy_spec: str, rate: float | None, db: str | os.PathLike[str], *,
                  extra_config: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
    """Simulate one policy and write the run (one transaction); return its run id.

    ``extra_config`` keys are added to the stored ``config_json`` (e.g. the bench it belongs to).
    """
    result = run_one(loaded, policy_spec, rate)
    meta = run_meta(run_id or new_run_id(policy_spec, loaded.scenario.seed), loaded, policy_spec, rate, result)
    if extra_config:
        config = {**json.loads(meta.config_json), **extra_config}
        meta = dataclasses.replace(meta, config_json=json.dumps(config, sort_keys=True))
    return ResultsStore(db, lock_wait_s=DEFAULT_DB_WAIT_S).write_run(meta, result.requests, result.spans, result.placements, result.gpu_samples)


@dataclass(frozen=True)
class Repeat:
    old_id: str
    new_id: str
    old: dict[str, Any]  # run_summary rows
    new: dict[str, Any]
    differences: tuple[str, ...]  # COMPARED metrics that differ
    rows_identical: bool  # every request and stage-span row equal, exactly
    old_git_sha: str
    new_git_sha: str


def _same(x: Any, y: Any, rel_tol: float = 1e-9) -> bool:
    """Equal; floats within ``rel_tol`` (SQL sums over a hash aggregate add in no fixed order)."""
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-12) or (math.isnan(x) and math.isnan(y))
    return x == y


_ROWS_SQL = (
    "SELECT request_id, model, height, width, frames, steps, arrival_s, deadline_s, state, reason, finish_s, ooms, "
    "preemptions FROM requests WHERE run_id = ? ORDER BY request_id",
    "SELECT dispatch_id, request_id, stage, gpus, degree, batch, queued_s, started_s, ended_s, predicted_s, "
    "start_step, end_step, outcome, load_s, transfer_s FROM stage_spans WHERE run_id = ? "
    "ORDER BY dispatch_id, request_id, stage, start_step",
)


def refuse_changed_inputs(config: Mapping[str, Any], run_id: str) -> None:
    """:class:`RunConfigError` if a file the run read is gone or has changed since (``changed_inputs``)."""
    from .spec import changed_inputs

    problems = changed_inputs(config)
    if problems:
        raise RunConfigError(f"run {run_id!r} cannot be repeated as it ran: {'; '.join(problems)}")


def repeat_run(db: str | os.PathLike[str], run: str) -> Repeat:
    """Simulate a stored sim run again from its config and store the new run next to it."""
    con = _open(db)
    try:
        old_id = _resolve(con, db, run)
        meta = _rows(con, "SELECT backend, config_json, git_sha FROM runs WHERE run_id = ?", [old_id])[0]
    finally:
        con.close()
    if meta["backend"] != "sim":
        raise RunConfigError(f"run {old_id!r} is a {meta['backend']} run; only sim runs can be repeated "
                             "(the live backend of `trident bench` is not available yet)")
    scenario, policy, rate = scenario_from_config(meta["config_json"], origin=f"run {old_id!r}")
    refuse_changed_inputs(json.loads(meta["config_json"]), old_id)
    loaded = load_scenario(scenario)
    new_id = run_and_store(loaded, policy, rate, db, extra_config={"repeat_of": old_id})
    con = _open(db)
    try:
        rows = {r["run_id"]: r for r in _rows(con, "SELECT * FROM run_summary WHERE run_id IN (?, ?)", [old_id, new_id])}
        rows_identical = all(
            con.execute(sql, [old_id]).fetchall() == con.execute(sql, [new_id]).fetchall() for sql in _ROWS_SQL)
        new_sha = con.execute("SELECT git_sha FROM runs WHERE run_id = ?", [new_id]).fetchall()[0][0]
    finally:
        con.close()
    old, new = rows[old_id], rows[new_id]
    differences = tuple(k for k in COMPARED if not _same(old[k], new[k]))
    return Repeat(old_id, new_id, old, new, differences, rows_identical, meta["git_sha"], new_sha)

