"""A mixed live run: one engine per device kind behind the client API of one engine.

``--devices cpu:1,emulated:2x8xH200`` serves the tiny pipelines on a CPU worker and the profile's
models on sixteen emulated H200s. Policies, the cluster state and the cost model all assume one
kind of device (a cost model prices a stage *on a kind*), so a mixed run is a set of ordinary
engines, each with its own cluster, profile, policy instance (the same spec) and workers; a model
is served by exactly one of them and every request goes to the engine of its model.

What the group makes global:

* request ids: engine ``i`` of ``P`` numbers its requests ``i, i+P, i+2P, ...`` (``id % P`` finds it);
* device ids: engine ``i``'s devices are numbered after those of the engines before it, in the
  snapshot, in request timings and in the store;
* dispatch ids in the store: ``local * P + i``.

Each engine keeps its own clock: an emulated part with ``--time-scale 0.05`` records engine
seconds twenty times faster than the wall clock, a CPU part records wall seconds. A request's
times are all on the clock of the engine that served it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from ..core.defaults import DEFAULT_DRAIN_TIMEOUT_S
from ..core.records import GpuSample, PlacementRow, RequestRow, RunMeta, SpanRow
from ..core.types import StageKind
from . import stored, views
from .engine import Accepted, Engine, Outcome, Refused, Submission


class EngineGroup:
    """Engines of one run, one per device kind; the client API routes by model and request id."""

    def __init__(self, parts: Sequence[Engine], labels: Sequence[str]) -> None:
        if len(parts) < 2:
            raise ValueError("a group needs at least two engines")
        self.parts = tuple(parts)
        self.labels = tuple(labels)
        self._of_model: dict[str, int] = {}
        offset = 0
        self.offsets: list[int] = []
        for i, e in enumerate(self.parts):
            for m in e.models:
                if m in self._of_model:
                    raise ValueError(f"model {m!r} is served by two engines")
                self._of_model[m] = i
            e.share_ids(i, len(self.parts))
            e.device_offset = offset
            for w in e.workers.workers:  # (its log lines name the device as the API does)
                w.device_offset = offset
            self.offsets.append(offset)
            offset += len(e.state.gpus)
            e.span_listeners.append(self._span_forwarder(i))
            e.placement_listeners.append(self._placement_forwarder(i))
            e.end_listeners.append(self._on_end)
            e.forget_listeners.append(self._on_forget)
        self.models = tuple(self._of_model)
        self.span_listeners: list[Callable[[SpanRow], None]] = []
        self.placement_listeners: list[Callable[[PlacementRow], None]] = []
        self.end_listeners: list[Callable[[object], None]] = []
        self.forget_listeners: list[Callable[[int], None]] = []

    # ------------------------------------------------------------------ routing
    def engine_of_model(self, model: str) -> Engine:
        return self.parts[self._of_model[model]]

    def _engine_of(self, request_id: int) -> Engine:
        return self.parts[request_id % len(self.parts)]

    @property
    def config(self):
        return self.parts[0].config

    @property
    def policy(self):
        return self.parts[0].policy

    @property
    def closing(self) -> bool:
        return any(e.closing for e in self.parts)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        started: list[Engine] = []
        try:
            for e in self.parts:
                await e.start()
                started.append(e)
        except BaseException:
            await asyncio.gather(*(e.shutdown(0.0) for e in started), return_exceptions=True)
            raise

    async def shutdown(self, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        await asyncio.gather(*(e.shutdown(drain_timeout_s) for e in self.parts))

    def close_doors(self) -> None:
        for e in self.parts:
            e.close_doors()

    def hurry(self) -> None:
        for e in self.parts:
            e.hurry()

    def note_refused(self, reason: str, items: int = 1) -> None:
        self.parts[0].note_refused(reason, items)  # (counted over every part wherever it is read)

    @property
    def cut_short(self) -> int:
        return sum(e.cut_short for e in self.parts)

    # ------------------------------------------------------------------ client API
    def submit(self, items: Sequence[Submission]) -> Accepted | Refused:
        """All items of one submission are of one model (the server makes them so)."""
        models = {it.model for it in items}
        if len(models) != 1:
            raise ValueError("one submission must be of one model")
        return self.engine_of_model(next(iter(models))).submit(items)

    def cancel(self, request_id: int, reason: str = "cancelled by the client") -> bool:
        return self._engine_of(request_id).cancel(request_id, reason)

    async def wait(self, request_id: int, timeout_s: float | None = None) -> Outcome:
        return await self._engine_of(request_id).wait(request_id, timeout_s)

    def outcome(self, request_id: int) -> Outcome | None:
        return self._engine_of(request_id).outcome(request_id)

    def result(self, request_id: int) -> bytes | None:
        return self._engine_of(request_id).result(request_id)

    def hold_results(self, request_ids: Sequence[int]) -> None:
        for rid in request_ids:
            self._engine_of(rid).hold_results((rid,))

    def release_results(self, request_ids: Sequence[int]) -> None:
        for rid in request_ids:
            self._engine_of(rid).release_results((rid,))

    def describe(self, request_id: int) -> dict | None:
        return self._engine_of(request_id).describe(request_id)

    def live_ids(self) -> list[int]:
        return [rid for e in self.parts for rid in e.live_ids()]

    def live_states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.parts:
            for s, n in e.live_states().items():
                counts[s] = counts.get(s, 0) + n
        return counts

    def snapshot(self) -> dict:
        snaps = [e.snapshot() for e in self.parts]
        devices, instances = [], []
        queues = {StageKind.ENCODE: 0, StageKind.DIFFUSE: 0, StageKind.DECODE: 0}
        running = dict(queues)
        for label, snap in zip(self.labels, snaps):
            devices += [{**d, "part": label} for d in snap["devices"]]
            instances += snap["instances"]
            for k in queues:
                queues[k] += snap["queues"][k]
                running[k] += snap["running"][k]
        # the clock of the part --time-scale applies to (emulated devices; a cpu part runs at 1: an
        # outside test read 1.0 on a server started at 0.05 with cpu:1 first)
        main = next((s for s in snaps if s["time_scale"] != 1.0), snaps[0])
        return {
            "devices": devices, "instances": instances, "queues": queues, "running": running,
            "live_requests": sum(s["live_requests"] for s in snaps), "policy": self.parts[0].policy.spec,
            "cluster": " + ".join(s["cluster"] for s in snaps), "profile": ",".join(s["profile"] for s in snaps),
            "time_scale": main["time_scale"], "now_s": main["now_s"], "clock": main["clock"],
            "calibration": [row for s in snaps for row in s["calibration"]],
            "parts": [{"devices": label, "cluster": s["cluster"], "profile": s["profile"],
                       "time_scale": s["time_scale"], "now_s": s["now_s"], "clock": s["clock"],
                       "models": list(e.models)} for label, s, e in zip(self.labels, snaps, self.parts)],
        }

    # ------------------------------------------------------------------ records
    def _span_forwarder(self, i: int) -> Callable[[SpanRow], None]:
        def forward(span: SpanRow) -> None:
            if self.span_listeners:
                row = self._global_span(i, span)
                for listener in self.span_listeners:
                    listener(row)
        return forward

    def _placement_forwarder(self, i: int) -> Callable[[PlacementRow], None]:
        def forward(row: PlacementRow) -> None:
            if self.placement_listeners:
                row = replace(row, gpu=row.gpu + self.offsets[i])
                for listener in self.placement_listeners:
                    listener(row)
        return forward

    def _on_forget(self, rid: int) -> None:
        for listener in self.forget_listeners:
            listener(rid)

    def _on_end(self, rec) -> None:
        for listener in self.end_listeners:
            listener(rec)

    def _global_span(self, i: int, span: SpanRow) -> SpanRow:
        off, n = self.offsets[i], len(self.parts)
        did = span.dispatch_id * n + i if span.dispatch_id >= 0 else span.dispatch_id
        return replace(span, gpus=tuple(g + off for g in span.gpus), dispatch_id=did)

    def stream_records(self) -> None:
        for e in self.parts:
            e.stream_records()

    def request_rows(self) -> list[RequestRow]:
        rows = [r for e in self.parts for r in e.request_rows()]
        return sorted(rows, key=lambda r: r.request_id)

    def span_rows(self) -> list[SpanRow]:
        return [self._global_span(i, sp) for i, e in enumerate(self.parts) for sp in e.spans]

    def placement_rows(self) -> list[PlacementRow]:
        return [replace(p, gpu=p.gpu + self.offsets[i]) for i, e in enumerate(self.parts) for p in e.placements]

    def gpu_samples(self, sample_s: float = 10.0) -> list[GpuSample]:
        return [replace(s, gpu=s.gpu + self.offsets[i]) for i, e in enumerate(self.parts)
                for s in e.gpu_samples(sample_s)]

    def run_meta(self, run_id: str, config: dict | None = None,
                 provenance: Mapping[str, str] | None = None) -> RunMeta:
        metas = [e.run_meta(run_id, config, provenance) for e in self.parts]
        first = metas[0]
        cfg = json.loads(first.config_json)
        cfg["devices"] = ",".join(self.labels)
        cfg["models"] = list(self.models)
        cfg["calibration"] = [row for m in metas for row in json.loads(m.config_json).get("calibration", [])]
        cfg["slowdown"] = max(views.slowdown(e) for e in self.parts)
        cfg["refused"] = dict(sorted(sum((Counter(e.refused) for e in self.parts), Counter()).items()))
        cfg["hung"] = sum(e.hung for e in self.parts)
        main = next((e for e in self.parts if e.config.time_scale != 1.0), self.parts[0])  # (as snapshot())
        cfg["time_scale"], cfg["clock"] = main.config.time_scale, views.clock(main)
        each = [views.workers(e) for e in self.parts]
        cfg["workers"] = {"kinds": sorted({k for w in each for k in w["kinds"]}), "restarts": sum(w["restarts"] for w in each)}
        if any("ray_address" in w for w in each):  # (outside test 112: dropped for a run of several kinds)
            cfg["workers"]["ray_address"] = next(w["ray_address"] for w in each if "ray_address" in w)
        # each part's requests are timed on its own clock (an emulated part's in workload seconds, a real
        # device's in wall seconds): its own duration and rate too (outside test 112: a cpu and an emulated
        # part's run read "0.0083 req/s for 12511 s", the emulated clock's, for 104 requests in 686 s)
        cfg["parts"] = [{"devices": label, "models": list(e.models), "profile": e.profile,
                         "time_scale": e.config.time_scale, "clock": views.clock(e), "slowdown": views.slowdown(e),
                         "requests": len(e.state.requests) + e.forgotten, "duration_s": m.duration_s}
                        for label, e, m in zip(self.labels, self.parts, metas)]
        if len({e.config.time_scale for e in self.parts}) > 1:  # clocks of their own: the scaled part's, as
            # the README and `runs show` say (outside test 133: every part's requests over the scaled clock)
            i = self.parts.index(main)
            accepted, duration = cfg["parts"][i]["requests"], metas[i].duration_s
        else:  # one clock
            accepted, duration = sum(part["requests"] for part in cfg["parts"]), max(m.duration_s for m in metas)
        return replace(first, profile=",".join(m.profile for m in metas),
                       cluster=" + ".join(m.cluster for m in metas), duration_s=duration,
                       rate_rps=accepted / duration if duration > 0 else 0.0,
                       config_json=json.dumps(cfg, sort_keys=True), wall_s=max(m.wall_s for m in metas))

    def write_store(self, path: str, run_id: str | None = None, config: dict | None = None,
                    provenance: Mapping[str, str] | None = None) -> str:
        return stored.write(self, path, run_id, config, provenance)
