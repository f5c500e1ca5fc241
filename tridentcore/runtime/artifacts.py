"""What a live run keeps between stages: each request's intermediate outputs and its finished result.

Embeddings (after encode) and latents (after each diffuse piece) stay here between stages: on CPU
workers they are shared-memory tensor handles, so the next stage's worker maps them without a copy;
on emulated devices they are None. A finished decode's media bytes wait here for the client to fetch
them, the oldest dropped first past ``max_results`` results or ``max_bytes`` bytes. The requests
submitted together (one generation's ``n`` items: :meth:`ArtifactCache.group`) are kept and dropped
together, and none of them is dropped while one of them still runs: a generation never reads done
with part of its results already gone. The newest finished generation is always kept, whatever the
limits, and a synchronous generation's results are held (:meth:`ArtifactCache.hold`) until its
answer is made.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..core.defaults import DEFAULT_MAX_RESULTS, DEFAULT_RESULTS_MIB
from ..core.types import StageKind


class ArtifactCache:
    def __init__(self, max_results: int = DEFAULT_MAX_RESULTS, max_bytes: int = DEFAULT_RESULTS_MIB << 20) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self._between: dict[int, dict[str, Any]] = {}  # request id -> {"embeddings": ..., "latents": ...}
        self.results: OrderedDict[int, bytes | None] = OrderedDict()
        self.result_bytes = 0
        self._held: set[int] = set()  # results a synchronous answer still has to read: not dropped
        self._group: dict[int, tuple[int, ...]] = {}  # request id -> the ids submitted with it (itself included)
        self._running: dict[tuple[int, ...], set[int]] = {}  # a group -> its members not yet ended
        self._newest: tuple[int, ...] = ()  # the group that ended last: never dropped

    def inputs(self, stage: StageKind, request_ids: Sequence[int]) -> tuple:
        """A stage's inputs, one per request: encode (); diffuse (embeddings, latents or None); decode latents."""
        if stage == StageKind.ENCODE:
            return ()
        got = [self._between.get(r, {}) for r in request_ids]
        if stage == StageKind.DIFFUSE:
            return tuple((g.get("embeddings"), g.get("latents")) for g in got)
        return tuple(g.get("latents") for g in got)

    def keep(self, stage: StageKind, request_id: int, output: Any) -> None:
        """Keep a stage's output for the next stage (decode: the result, for the client)."""
        if stage == StageKind.ENCODE:
            self._between.setdefault(request_id, {})["embeddings"] = output
        elif stage == StageKind.DIFFUSE:
            self._between.setdefault(request_id, {})["latents"] = output
        else:
            self._between.pop(request_id, None)
            old = self.results.pop(request_id, None)
            self.result_bytes += len(output or b"") - len(old or b"")
            self.results[request_id] = output
            if request_id not in self._group:  # submitted alone: spared until it ends, like a group
                self._group[request_id] = (request_id,)
                self._running[(request_id,)] = {request_id}
            self._trim()

    def group(self, request_ids: Sequence[int]) -> None:
        """These requests were submitted together (one generation): keep and drop their results together."""
        ids = tuple(request_ids)
        if ids:
            self._running[ids] = set(ids)
            for rid in ids:
                self._group[rid] = ids

    def siblings(self, request_id: int) -> tuple[int, ...]:
        """The requests submitted with this one (one generation), itself included."""
        return self._group.get(request_id, (request_id,))

    def ended(self, request_id: int) -> None:
        """The request ended (done, failed, cancelled or rejected): its group may now be dropped."""
        ids = self._group.get(request_id, (request_id,))
        running = self._running.get(ids)
        if running is not None:
            running.discard(request_id)
            if running:
                return
            del self._running[ids]
        if any(r in self.results for r in ids):
            self._newest = ids
        else:
            self._forget(ids)
        self._trim()

    def _forget(self, ids: tuple[int, ...]) -> None:
        for rid in ids:
            self._group.pop(rid, None)

    def _over(self) -> bool:
        return len(self.results) > self.max_results or self.result_bytes > self.max_bytes

    def _trim(self) -> None:
        """Drop the oldest groups' results until the cache is within its limits, sparing held results,
        groups with a member still running, and the newest ended group."""
        if not self._over():
            return
        seen: set[tuple[int, ...]] = set()
        for rid in list(self.results):
            ids = self._group.get(rid, (rid,))
            if ids in seen:
                continue
            seen.add(ids)
            if ids == self._newest or ids in self._running or any(r in self._held for r in ids):
                continue
            for r in ids:
                self.result_bytes -= len(self.results.pop(r, None) or b"")
            self._forget(ids)
            if not self._over():
                return

    def hold(self, request_ids: Sequence[int]) -> None:
        """Keep these requests' results (when they come) until :meth:`release`: a synchronous answer reads them."""
        self._held.update(request_ids)

    def release(self, request_ids: Sequence[int]) -> None:
        self._held.difference_update(request_ids)
        self._trim()

    def drop(self, request_id: int) -> None:
        """Forget a request's intermediate outputs (it ended, or no stage of it is running)."""
        self._between.pop(request_id, None)

    def result(self, request_id: int) -> bytes | None:
        return self.results.get(request_id)
