"""Rows that the simulator and the live engine write to the results store (DESIGN.md, "Results store").

Both drivers produce these same records; the store turns them into DuckDB tables in one
transaction. Times are seconds on the run's own clock (0 = start of the run) unless named
otherwise. Pure data: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunMeta:
    """One row of ``runs``: everything needed to reproduce the run."""

    run_id: str
    backend: str  # "sim" | "live"
    policy: str  # the policy spec as given, e.g. "pipeline-static:degree=2"
    seed: int
    profile: str
    cluster: str
    mix: str
    rate_rps: float
    duration_s: float
    slo_scale: float
    config_json: str  # resolved configuration, JSON
    git_sha: str = ""
    packages_json: str = "{}"
    hardware_json: str = "{}"
    status: str = "complete"  # "complete" | "interrupted" | "failed"
    created_unix_s: float = 0.0
    wall_s: float = 0.0  # how long the run took on the host


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One row of ``requests``: a request's shape, its deadline and how it ended."""

    request_id: int
    model: str
    height: int
    width: int
    frames: int
    steps: int
    arrival_s: float
    deadline_s: float
    state: str  # terminal state: done | failed | rejected | cancelled
    reason: str = ""
    finish_s: float | None = None  # when it reached its terminal state
    ooms: int = 0  # out-of-memory failures it met on the way (retried or final)
    preemptions: int = 0

    @property
    def request_class(self) -> str:
        """``model WxH`` for images, ``model WxHxF`` for video: the unit of fair goodput."""
        size = f"{self.width}x{self.height}" + (f"x{self.frames}" if self.frames > 1 else "")
        return f"{self.model} {size}"


@dataclass(frozen=True, slots=True)
class SpanRow:
    """One row of ``stage_spans``: one stage (or a piece of diffuse) of a batch on a GPU group."""

    dispatch_id: int
    request_id: int
    stage: str  # encode | diffuse | decode
    gpus: tuple[int, ...]
    degree: int
    batch: int
    queued_s: float  # when the request became ready for this stage
    started_s: float
    ended_s: float
    predicted_s: float  # the cost model's duration for it (sim: equals ended - started)
    start_step: int = 0
    end_step: int = 0
    outcome: str = "done"  # done | preempted | failed | oom
    load_s: float = 0.0  # weight loading charged to this dispatch (lazy placement)
    transfer_s: float = 0.0  # moving embeddings/latents to its GPUs


@dataclass(frozen=True, slots=True)
class PlacementRow:
    """One row of ``placements``: a stage instance placed on or evicted from a GPU."""

    t_s: float
    gpu: int
    model: str
    stage: str
    action: str  # place | evict
    weights_gib: float
    load_s: float = 0.0


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One row of ``gpu_samples``: a GPU's state at a sampling instant."""

    t_s: float
    gpu: int
    busy: float  # fraction of the sampling interval the GPU was running work
    mem_gib: float  # memory in use (weights + activations) at the instant
