"""What the live engine's clients exchange with it: its configuration, a submission and the answers.

The HTTP server turns request bodies into :class:`Submission` values, and :class:`Accepted`,
:class:`Refused` and :class:`Outcome` into responses (the status mapping lives in ``server/``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.defaults import (DEFAULT_KEEP_ENDED, DEFAULT_LIVE_CALIBRATE, DEFAULT_MAX_QUEUED, DEFAULT_MAX_RESULTS,
                             DEFAULT_NO_DEVICE_TIMEOUT_S, DEFAULT_RESULTS_MIB, DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE, HUNG_STAGE_FACTOR,
                             HUNG_STAGE_MIN_S)
from ..core.driver import DEFAULT_MAX_ATTEMPTS
from ..core.types import Shape


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_queued: int = DEFAULT_MAX_QUEUED  # waiting requests (not running) past which submissions are refused
    time_scale: float = DEFAULT_TIME_SCALE  # wall seconds per engine second (emulated durations are scaled by it)
    slo_scale: float = DEFAULT_SLO_SCALE  # default deadline: arrival + slo_scale x reference latency
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # a request whose stage fails this often (lost worker, error) fails
    max_results: int = DEFAULT_MAX_RESULTS  # finished results kept for clients to fetch (oldest dropped first) ...
    results_mib: int = DEFAULT_RESULTS_MIB  # ... and at most this many MiB of them
    # ended requests kept in full (describe, outcome); older ones are forgotten, leaving only their
    # store row when ``record`` is on, so a long-lived server's memory stays bounded
    keep_ended: int = DEFAULT_KEEP_ENDED
    # keep the run's records (request rows, spans, placements) for the store; a server without --db
    # keeps none (listeners still see every span and ending)
    record: bool = True
    # keep every report the core handled, with its time, for a replay through the simulator (parity)
    log_reports: bool = False
    # learn measured / predicted stage times; the policy and new deadlines see the calibrated model
    calibrate: bool = DEFAULT_LIVE_CALIBRATE
    retry_after_s: float = 1.0  # suggested wait when the queue is full
    min_tick_wall_s: float = 0.005
    strict: bool = False  # raise PolicyBug instead of failing the requests of an invalid action
    # testing aid (``trident serve --inject-oom decode:1``): the first N dispatches of a stage fail in their
    # worker with an out-of-memory error, which then takes the real path (StageFailed(oom=True), retry)
    inject_oom: tuple[tuple[str, int], ...] = ()
    # real devices: a stage running past both bounds takes its worker as hung (stopped, restarted)
    hung_min_s: float = HUNG_STAGE_MIN_S
    hung_factor: float = HUNG_STAGE_FACTOR
    # with no device alive this long (wall seconds) and every lost worker's restart failing, waiting
    # requests fail and submissions are refused (503 no_devices) until one is back; a restart under way
    # only keeps them queued
    no_device_timeout_s: float = DEFAULT_NO_DEVICE_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Submission:
    """One image or video to make (the server turns a request for ``n`` images into ``n`` of these)."""

    model: str
    prompt: str
    shape: Shape
    seed: int = 0
    guidance: float | None = None
    negative_prompt: str = ""
    slo_s: float | None = None  # engine seconds; None: slo_scale x the reference latency
    job_id: str = ""  # the API's generation (gen-...), stored with the request's row


@dataclass(frozen=True, slots=True)
class Accepted:
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    code: str  # queue_full | shutting_down | no_devices | records_unwritable
    reason: str
    retry_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended (``result``: its encoded media; None on emulated devices)."""

    request_id: int
    state: str
    reason: str
    result: bytes | None = None
