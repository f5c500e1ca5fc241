"""Rows that the simulator and the live engine write to the results store (docs/design.md, "Results store").

Both drivers produce these same records; the store turns them into DuckDB tables in one
transaction. Times are seconds on the run's own clock (0 = start of the run) unless named
otherwise. Pure data: no I/O here.

Each row type is declared once, here: every field carries its SQL type (``column(...)``), and the
store derives its DDL and Arrow schemas from these declarations (``tridentcore.store.schema``),
the workbench its column lists (:func:`column_names`). Field names and order are part of the
API: rows are constructed positionally.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .frozen import quick_init
from .types import class_label

__all__ = [
    "ROW_TYPES",
    "ClientRequestRow",
    "GpuSample",
    "PlacementRow",
    "RequestRow",
    "RunMeta",
    "SpanRow",
    "column",
    "column_names",
]

# SQL types a column may have (DuckDB spelling); the store maps each to an Arrow type.
SQL_TYPES = ("VARCHAR", "BIGINT", "INTEGER", "DOUBLE", "BOOLEAN", "INTEGER[]")


def column(sql: str, *, nullable: bool = False, comment: str = "", default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its SQL type (``sql``), whether it may be NULL, and a comment for the DDL."""
    if sql not in SQL_TYPES:
        raise ValueError(f"unknown SQL type {sql!r}; valid: {', '.join(SQL_TYPES)}")
    return dataclasses.field(default=default, metadata={"sql": sql, "nullable": nullable, "comment": comment})


def column_names(row_type: type) -> tuple[str, ...]:
    """A row type's column names, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(row_type))


@dataclass(frozen=True, slots=True)
class RunMeta:
    """One row of ``runs``: everything needed to reproduce the run."""

    run_id: str = column("VARCHAR")
    backend: str = column("VARCHAR", comment="sim | live")
    policy: str = column("VARCHAR", comment="the policy spec as given, e.g. pipeline-static:degree=2")
    seed: int = column("BIGINT")
    profile: str = column("VARCHAR")
    cluster: str = column("VARCHAR")
    mix: str = column("VARCHAR")
    rate_rps: float = column("DOUBLE")
    duration_s: float = column("DOUBLE")
    slo_scale: float = column("DOUBLE")
    config_json: str = column("VARCHAR", comment="resolved configuration, JSON")
    git_sha: str = column("VARCHAR", default="")
    packages_json: str = column("VARCHAR", default="{}")
    hardware_json: str = column("VARCHAR", default="{}")
    status: str = column("VARCHAR", default="complete",
                         comment="complete | interrupted | failed; a server's run: running, then done | interrupted | crashed")
    created_unix_s: float = column("DOUBLE", default=0.0)
    wall_s: float = column("DOUBLE", default=0.0, comment="how long the run took on the host")


@quick_init  # built per request: see core/frozen.py
@dataclass(frozen=True, slots=True)
class RequestRow:
    """One row of ``requests``: a request's shape, its deadline and how it ended."""

    request_id: int = column("BIGINT")
    model: str = column("VARCHAR")
    height: int = column("INTEGER")
    width: int = column("INTEGER")
    frames: int = column("INTEGER")
    steps: int = column("INTEGER")
    arrival_s: float = column("DOUBLE")
    deadline_s: float = column("DOUBLE")
    state: str = column("VARCHAR", comment="terminal state: done | failed | rejected | cancelled")
    reason: str = column("VARCHAR", default="")
    finish_s: float | None = column("DOUBLE", nullable=True, default=None, comment="when it reached its terminal state")
    ooms: int = column("INTEGER", default=0, comment="out-of-memory failures it met on the way (retried or final)")
    preemptions: int = column("INTEGER", default=0)
    job_id: str | None = column("VARCHAR", nullable=True, default=None,
                                comment="a live request's generation, as the HTTP API named it (gen-...)")

    @property
    def request_class(self) -> str:
        """``model WxH`` for images, ``model WxHxF`` for video: the unit of fair goodput."""
        return class_label(self.model, self)


@quick_init  # built per dispatch: see core/frozen.py
@dataclass(frozen=True, slots=True)
class SpanRow:
    """One row of ``stage_spans``: one stage (or a piece of diffuse) of a batch on a GPU group."""

    dispatch_id: int = column("BIGINT", comment="a batched dispatch has one row per request")
    request_id: int = column("BIGINT")
    stage: str = column("VARCHAR", comment="encode | diffuse | decode")
    gpus: tuple[int, ...] = column("INTEGER[]")
    degree: int = column("INTEGER")
    batch: int = column("INTEGER")
    queued_s: float = column("DOUBLE", comment="when the request became ready for this stage")
    started_s: float = column("DOUBLE")
    ended_s: float = column("DOUBLE")
    predicted_s: float = column("DOUBLE", comment="the cost model's duration for it (sim: equals ended - started)")
    start_step: int = column("INTEGER", default=0)
    end_step: int = column("INTEGER", default=0)
    outcome: str = column("VARCHAR", default="done", comment="done | preempted | failed | oom | cancelled (every request of it was, while it ran)")
    load_s: float = column("DOUBLE", default=0.0, comment="weight loading charged to this dispatch (lazy placement)")
    transfer_s: float = column("DOUBLE", default=0.0, comment="moving embeddings/latents to its GPUs")
    compute_s: float | None = column("DOUBLE", nullable=True, default=None,
                                     comment="compute time as the worker measured it (live); NULL: not measured")


@dataclass(frozen=True, slots=True)
class PlacementRow:
    """One row of ``placements``: a stage instance placed on or evicted from a GPU."""

    t_s: float = column("DOUBLE")
    gpu: int = column("INTEGER")
    model: str = column("VARCHAR")
    stage: str = column("VARCHAR")
    action: str = column("VARCHAR", comment="place | evict")
    weights_gib: float = column("DOUBLE")
    load_s: float = column("DOUBLE", default=0.0)


@quick_init  # built per GPU and sampling interval: see core/frozen.py
@dataclass(frozen=True, slots=True)
class GpuSample:
    """One row of ``gpu_samples``: a GPU's state at a sampling instant."""

    t_s: float = column("DOUBLE")
    gpu: int = column("INTEGER")
    busy: float = column("DOUBLE", comment="fraction of the sampling interval the GPU was running work")
    mem_gib: float = column("DOUBLE", comment="memory in use (weights + activations) at the instant")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequestRow:
    """One row of ``client_requests``: one scheduled request as the load generator saw it.

    Written by ``workloads/mixed.py`` and the live bench (as dicts or a DataFrame with these
    keys; the nullable ones may be left out: keyword-only, they default to None). ``state`` is one
    of ``CLIENT_STATES`` in the store.
    """

    request_index: int = column("BIGINT", comment="position in the schedule (= the simulator's request_id)")
    server_request_id: int | None = column("BIGINT", nullable=True, default=None,
                                           comment="the engine's request id (NULL: not accepted, or unknown)")
    server_job_id: str | None = column("VARCHAR", nullable=True, default=None, comment="the API's job id (gen-...)")
    model: str = column("VARCHAR")
    height: int = column("INTEGER")
    width: int = column("INTEGER")
    frames: int = column("INTEGER")
    steps: int = column("INTEGER")
    request_class: str = column("VARCHAR", comment="'model WxH' or 'model WxHxF', as requests.request_class")
    workload_t_s: float = column("DOUBLE",
                                 comment="scheduled arrival, workload seconds (the simulator's arrival_s)")
    scheduled_s: float = column("DOUBLE", comment="scheduled send, wall seconds from the run's start")
    sent_s: float | None = column("DOUBLE", nullable=True, default=None, comment="actual send (NULL: never sent)")
    finished_s: float | None = column("DOUBLE", nullable=True, default=None, comment="response received (NULL: none)")
    lag_ms: float | None = column("DOUBLE", nullable=True, default=None, comment="(sent_s - scheduled_s) x 1000")
    state: str = column("VARCHAR",
                        comment="done | rejected | failed | cancelled | refused | error | unfinished")
    http_status: int = column("INTEGER", comment="0: no HTTP response")
    reason: str = column("VARCHAR")
    slo_ms: float | None = column("DOUBLE", nullable=True, default=None, comment="the objective sent (engine ms)")
    latency_ms: float | None = column("DOUBLE", nullable=True, default=None,
                                      comment="the server's latency (engine ms), done requests")
    deadline_ms: float | None = column("DOUBLE", nullable=True, default=None)
    met_slo: bool | None = column("BOOLEAN", nullable=True, default=None)
    client_ms: float | None = column("DOUBLE", nullable=True, default=None,
                                     comment="(finished_s - sent_s) x 1000, wall")
    queued_ms: float | None = column("DOUBLE", nullable=True, default=None,
                                     comment="the server's per-stage timings, summed over the stage's spans")
    encode_ms: float | None = column("DOUBLE", nullable=True, default=None)
    diffuse_ms: float | None = column("DOUBLE", nullable=True, default=None)
    decode_ms: float | None = column("DOUBLE", nullable=True, default=None)
    stages_json: str = column("VARCHAR", comment="the server's per-stage timings as it returned them")


# table name -> its row type (the store keys every table by run_id besides these columns)
ROW_TYPES: dict[str, type] = {
    "runs": RunMeta,
    "requests": RequestRow,
    "stage_spans": SpanRow,
    "placements": PlacementRow,
    "gpu_samples": GpuSample,
    "client_requests": ClientRequestRow,
}
