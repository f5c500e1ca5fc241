"""What a live run keeps between stages: each request's intermediate outputs and its finished result.

Embeddings (after encode) and latents (after each diffuse piece) stay here between stages: on CPU
workers they are shared-memory tensor handles, so the next stage's worker maps them without a copy;
on emulated devices they are None. A finished decode's media bytes wait here for the client to fetch
them, the oldest dropped first past ``max_results`` results or ``max_bytes`` bytes. A synchronous
generation's results are held (:meth:`ArtifactCache.hold`) until its answer is made, so all ``n`` of
them reach its client whatever the limits; the newest is always kept.
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
            self._trim()

    def _over(self) -> bool:
        return len(self.results) > 1 and (len(self.results) > self.max_results or self.result_bytes > self.max_bytes)

    def _trim(self) -> None:
        """Drop the oldest results not held until the cache is within its limits (or only held ones are left)."""
        if not self._over():
            return
        for rid in [r for r in self.results if r not in self._held]:
            dropped = self.results.pop(rid)
            self.result_bytes -= len(dropped or b"")
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
