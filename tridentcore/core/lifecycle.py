"""Request lifecycle: an explicit state enum, its transition table, and the one table that owns it.

::

    queued -> encoding -> encoded -> diffusing -> diffused -> decoding -> done
                  \\           ^   |                              |
                   \\          +---+ (paused between steps:       |
                    \\               preempted or a piece ended)   |
                     +-> failed | rejected | cancelled  <----------+

A diffuse may run in pieces (``Dispatch`` of steps ``[a, b)``); between pieces the request is
``encoded`` again with ``steps_done`` > 0. Failures that a policy retries (an out-of-memory error,
a lost worker) send the request back to the state it was in before the stage started. Every
accepted request ends in exactly one terminal state with a reason; the one exception is the live
engine's: a request ``done`` for the policy whose media could not then be encoded for its client
ends ``failed`` instead (:meth:`RequestTable.lose_result`, before its client or any record sees it).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from .errors import TridentError
from .types import StageKind
from .workload import RequestSpec


class RequestState(str, enum.Enum):
    QUEUED = "queued"
    ENCODING = "encoding"
    ENCODED = "encoded"
    DIFFUSING = "diffusing"
    DIFFUSED = "diffused"
    DECODING = "decoding"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RequestState.DONE, RequestState.FAILED, RequestState.REJECTED, RequestState.CANCELLED})
_S = RequestState
_ENDINGS = {_S.FAILED, _S.REJECTED, _S.CANCELLED}
TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    _S.QUEUED: frozenset({_S.ENCODING} | _ENDINGS),
    _S.ENCODING: frozenset({_S.ENCODED, _S.QUEUED} | _ENDINGS),  # QUEUED: encode failed, retry
    _S.ENCODED: frozenset({_S.DIFFUSING} | _ENDINGS),
    _S.DIFFUSING: frozenset({_S.DIFFUSED, _S.ENCODED} | _ENDINGS),  # ENCODED: paused between steps
    _S.DIFFUSED: frozenset({_S.DECODING} | _ENDINGS),
    _S.DECODING: frozenset({_S.DONE, _S.DIFFUSED} | _ENDINGS),  # DIFFUSED: decode failed, retry
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.CANCELLED: frozenset(),
}

# the stage a request waits for in each waiting state
WAITING_FOR = {_S.QUEUED: StageKind.ENCODE, _S.ENCODED: StageKind.DIFFUSE, _S.DIFFUSED: StageKind.DECODE}
RUNNING_STATE = {StageKind.ENCODE: _S.ENCODING, StageKind.DIFFUSE: _S.DIFFUSING, StageKind.DECODE: _S.DECODING}


def started_any(rec: "RequestRecord") -> bool:
    """Whether any stage of the request has started (it left ``queued`` at least once)."""
    return any(state is not RequestState.QUEUED for _, state in rec.history)


class TransitionError(TridentError, RuntimeError):
    """A transition the table does not allow: a bug in a driver or a policy, never user input."""


class RequestRecord:
    """Mutable progress of one request. Only :class:`RequestTable` changes it."""

    __slots__ = ("spec", "state", "steps_done", "ready_s", "finish_s", "reason", "retry_s", "ooms", "preemptions",
                 "embeddings_on", "latents_on", "history")

    def __init__(self, spec: RequestSpec, now: float) -> None:
        self.spec = spec
        self.state = RequestState.QUEUED
        self.steps_done = 0
        self.ready_s = now  # when it became ready for the stage it waits for
        self.finish_s: float | None = None
        self.reason = ""
        self.retry_s = 0.0  # a rejection's estimate of how much later it could be admitted (0: none)
        self.ooms = 0
        self.preemptions = 0
        self.embeddings_on: tuple[int, ...] = ()  # GPUs holding its text embeddings
        self.latents_on: tuple[int, ...] = ()  # GPUs holding its latents
        self.history: list[tuple[float, RequestState]] = [(now, RequestState.QUEUED)]

    @property
    def id(self) -> int:
        return self.spec.id

    @property
    def steps_left(self) -> int:
        return self.spec.shape.steps - self.steps_done

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<request {self.id} {self.state.value} steps {self.steps_done}/{self.spec.shape.steps}>"


class RequestTable:
    """The one owner of request state; every change goes through :meth:`transition`."""

    def __init__(self) -> None:
        self._records: dict[int, RequestRecord] = {}
        self.by_id: Mapping[int, RequestRecord] = MappingProxyType(self._records)  # read-only, live
        self.live = 0  # requests not yet in a terminal state

    def add(self, spec: RequestSpec, now: float) -> RequestRecord:
        if spec.id in self._records:
            raise TransitionError(f"request {spec.id} already exists")
        rec = RequestRecord(spec, now)
        self._records[spec.id] = rec
        self.live += 1
        return rec

    def __getitem__(self, request_id: int) -> RequestRecord:
        return self._records[request_id]

    def get(self, request_id: int) -> RequestRecord | None:
        return self._records.get(request_id)

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._records

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def forget(self, request_id: int) -> RequestRecord:
        """Drop an ended request and return its record (a long-lived driver keeps its memory bounded)."""
        rec = self._records[request_id]
        if not rec.state.terminal:
            raise TransitionError(f"request {request_id} is {rec.state.value}: only ended requests can be forgotten")
        del self._records[request_id]
        return rec

    def lose_result(self, request_id: int, now: float, reason: str) -> RequestRecord:
        """``done`` -> ``failed``: the request's result was lost before its client had it (the live
        engine could not encode its media). Not in :data:`TRANSITIONS`: no policy action makes it."""
        rec = self._records[request_id]
        if rec.state is not RequestState.DONE:
            raise TransitionError(f"request {request_id}: only a done request can lose its result "
                                  f"(it is {rec.state.value})")
        rec.state = RequestState.FAILED
        rec.history.append((now, RequestState.FAILED))
        rec.finish_s = now
        rec.reason = reason
        return rec

    def transition(self, request_id: int, new: RequestState, now: float, reason: str = "",
                   retry_s: float = 0.0) -> RequestRecord:
        rec = self._records[request_id]
        if new not in TRANSITIONS[rec.state]:
            raise TransitionError(f"request {request_id}: {rec.state.value} -> {new.value} is not allowed")
        rec.state = new
        rec.history.append((now, new))
        if new in WAITING_FOR:
            rec.ready_s = now
        if new in TERMINAL:
            rec.finish_s = now
            rec.reason = reason or new.value
            rec.retry_s = retry_s
            self.live -= 1
        elif reason:
            rec.reason = reason
        return rec
