"""What a live run keeps between stages: each request's intermediate outputs and its finished result.

Embeddings (after encode) and latents (after each diffuse piece) stay here between stages: on CPU
workers they are shared-memory tensor handles, so the next stage's worker maps them without a copy;
on emulated devices they are None. A finished decode's media bytes wait here for the client to fetch
them, the oldest dropped first past ``max_results`` results or ``max_bytes`` bytes (the newest
is always kept: a synchronous request's client is about to read it).
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
            while len(self.results) > 1 and (len(self.results) > self.max_results or self.result_bytes > self.max_bytes):
                _, dropped = self.results.popitem(last=False)
                self.result_bytes -= len(dropped or b"")

    def drop(self, request_id: int) -> None:
        """Forget a request's intermediate outputs (it ended, or no stage of it is running)."""
        self._between.pop(request_id, None)

    def result(self, request_id: int) -> bytes | None:
        return self.results.get(request_id)
