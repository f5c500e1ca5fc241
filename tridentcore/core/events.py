"""Events (what happened, past tense) and actions (what a policy wants, imperative).

A policy receives ``on_event(view, event, now)`` and returns a list of actions; the driver (the
simulator or the live engine) applies them and later reports what came of them as new events.
"""

from __future__ import annotations

from dataclasses import dataclass

from .frozen import quick_init
from .types import StageKind
from .workload import RequestSpec

# ------------------------------------------------------------------------------------------ events


@quick_init  # built per request: see core/frozen.py
@dataclass(frozen=True, slots=True)
class RequestArrived:
    request: RequestSpec


@quick_init  # built per dispatch: see core/frozen.py
@dataclass(frozen=True, slots=True)
class StageFinished:
    """A dispatch ended normally. For a diffuse piece, ``end_step`` says how far it got; a
    preempted diffuse finishes early with ``preempted`` set and ``end_step`` at the step reached.
    ``predicted_s`` / ``measured_s``: its compute time (after weight loading and transfers, for the
    steps it ran) as the policy was told when it started and as it took (0: nothing ran)."""

    dispatch_id: int
    stage: StageKind
    request_ids: tuple[int, ...]
    gpus: tuple[int, ...]
    end_step: int = 0
    preempted: bool = False
    predicted_s: float = 0.0
    measured_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StageFailed:
    dispatch_id: int
    stage: StageKind
    request_ids: tuple[int, ...]
    gpus: tuple[int, ...]
    reason: str
    oom: bool = False
    lost: bool = False  # it died with a worker (one of its GPUs was lost), not of its own doing


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """A GPU (worker) stopped; its running dispatch, if any, is reported as ``StageFailed`` first. A
    dispatch over several GPUs instead fails (``lost``) when its own end is reported: its other GPUs
    stay busy until then (their workers are still in its group)."""

    gpu: int
    reason: str = "worker lost"


@dataclass(frozen=True, slots=True)
class WorkerRestored:
    gpu: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic wake-up for policies that plan on a timer (``Policy.tick_s``)."""


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """A request ended while it waited for a stage (none of its stages running) without an action of
    the policy's: ``cancelled`` by its client, or ``failed`` by the driver (no device alive for too
    long, a shutdown). It leaves the policy's queues now: the driver may forget its record right
    after this event (a long-lived server keeps only its last ``keep_ended`` ended requests), so a
    policy never looks it up again. A request cancelled while a stage runs is not told this way: that
    stage's ``StageFinished`` comes, the request already ended."""

    request_id: int


Event = RequestArrived | StageFinished | StageFailed | WorkerLost | WorkerRestored | Tick | RequestEnded

# ----------------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Place:
    """Load the weights of ``(model, stage)`` onto ``gpu`` (takes the cost model's load time)."""

    model: str
    stage: StageKind
    gpu: int


@dataclass(frozen=True, slots=True)
class Evict:
    model: str
    stage: StageKind
    gpu: int


@quick_init  # built per dispatch: see core/frozen.py
@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run ``stage`` for a batch of requests on a GPU group (degree = ``len(gpus)``).

    For ``diffuse``, steps ``[start_step, end_step)`` of every request in the batch (they must share
    model, shape and progress). Weights not yet resident on the group are loaded first, their load
    time charged to this dispatch (lazy placement).
    """

    stage: StageKind
    request_ids: tuple[int, ...]
    gpus: tuple[int, ...]
    start_step: int = 0
    end_step: int = 0

    @property
    def degree(self) -> int:
        return len(self.gpus)

    @property
    def batch(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True, slots=True)
class Preempt:
    """Pause a running diffuse at its next step boundary (the whole batch it runs in)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Reject:
    """Turn a waiting request away (``rejected``): admission control, an impossible request.
    ``retry_s``: the policy's estimate of how much later the same request could be admitted (policy
    seconds; 0: no estimate; ``math.inf``: never, whatever the wait: it can never fit, or no degree
    meets its SLO even alone on idle GPUs)."""

    request_id: int
    reason: str
    retry_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Fail:
    """Give up on a waiting request (``failed``): e.g. a pipeline-level policy after an OOM."""

    request_id: int
    reason: str


Action = Place | Evict | Dispatch | Preempt | Reject | Fail
