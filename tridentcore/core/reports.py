"""What a driver reports to the driver core (:data:`Report`), and what the core asks of it (:class:`Effects`).

Reports are in the past tense (something happened at ``now``); a live engine's log of them, with
their times, replays through the simulator exactly (``core/driver.py``). Where a report is exactly
what the policy then hears, it is that event: a request arrived (``RequestArrived``), a worker was
lost or came back (``WorkerLost``, ``WorkerRestored``), the policy's timer fell due (``Tick``: the
policy hears it only while requests live). The rest are the driver's own words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dispatch import Running
from .events import RequestArrived, Tick, WorkerLost, WorkerRestored
from .frozen import quick_init

# ------------------------------------------------------------------------------------------ reports


@quick_init  # built per dispatch: see core/frozen.py
@dataclass(frozen=True, slots=True)
class Completed:
    """A dispatch ended. ``error`` empty: it ran; for a diffuse, ``end_step`` is the step it reached
    (None: where the core expects it, i.e. the planned end or the pause it asked for). ``error`` set:
    it failed (``oom`` for an out-of-memory error in the worker); its requests go back to waiting.
    ``compute_s``: the compute time the worker itself measured (what calibration learns from: the
    driver's own clock would add the hand-over to and from the worker); None: the driver's clock.
    ``degree``: the degree it ran at where fewer than its GPUs (a sequence-parallel group whose model
    cannot split the request's shape that many ways runs on its lead alone); None: on all of them."""

    dispatch_id: int
    end_step: int | None = None
    error: str = ""
    oom: bool = False
    compute_s: float | None = None
    degree: int | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A client cancelled a request. A running one ends now and its stage's output is dropped.
    ``rejected``: it ends rejected instead (``retry_s`` as a ``Reject``'s): the driver refuses it with
    another request of its generation, which the policy rejected (a generation is admitted whole)."""

    request_id: int
    reason: str = "cancelled by the client"
    rejected: bool = False
    retry_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Forgot:
    """The driver dropped an ended request from the table (bounded memory of a long-lived server)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class ResultLost:
    """A request done for the policy lost its result before its client had it (the live engine could
    not encode its media): it ends ``failed`` with ``reason`` (the policy, done with it, is not told)."""

    request_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class ShutDown:
    """The run stops: running dispatches and live requests fail with ``reason``. ``reached``: (dispatch
    id, step) of each running diffuse whose worker said how far it got, stored as its span's end (a
    diffuse cut short by a drain read as if no step had run)."""

    reason: str
    reached: tuple[tuple[int, int], ...] = ()


Report = RequestArrived | Completed | WorkerLost | WorkerRestored | Tick | Cancelled | Forgot | ResultLost | ShutDown

# ------------------------------------------------------------------------------------------ effects


@quick_init  # built per dispatch: see core/frozen.py
@dataclass(frozen=True, slots=True)
class Started:
    """A dispatch started: ``run.predicted_end_s`` is the cost model's end, ``total_s`` its duration."""

    run: Running
    total_s: float


@dataclass(frozen=True, slots=True)
class Paused:
    """Stop the running diffuse ``run`` at step ``step`` (the cost model expects that boundary at ``at_s``)."""

    run: Running
    step: int
    at_s: float


@dataclass(slots=True)
class Effects:
    """What one step asks the driver to do, and the requests that reached a terminal state in it."""

    started: list[Started] = field(default_factory=list)
    paused: list[Paused] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
