"""Prometheus metrics for one app (its own registry, so several apps can live in one process).

Counters and histograms are fed by the engine's listeners (each request as it ends, each stage
span as it is recorded); gauges are read from the engine at scrape time.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..core.lifecycle import RequestState
from ..core.slo import met_slo

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)


class _Live:
    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        snap = self.engine.snapshot()
        live = GaugeMetricFamily("trident_requests_live", "Requests not yet ended, by state", labels=["state"])
        counts = self.engine.live_states()
        for s in RequestState:
            if not s.terminal:
                live.add_metric([s.value], counts.get(s.value, 0))
        yield live
        q = GaugeMetricFamily("trident_queue_depth", "Requests waiting for a stage", labels=["stage"])
        for stage, n in snap["queues"].items():
            q.add_metric([stage], n)
        yield q
        busy = GaugeMetricFamily("trident_device_busy", "1 while a device runs a stage", labels=["device"])
        alive = GaugeMetricFamily("trident_device_alive", "1 while a device's worker is up", labels=["device"])
        mem = GaugeMetricFamily("trident_device_memory_gib", "Memory in use per device (accounted)",
                                labels=["device", "kind"])
        total = GaugeMetricFamily("trident_device_memory_total_gib", "Memory per device", labels=["device"])
        for d in snap["devices"]:
            dev = str(d["id"])
            busy.add_metric([dev], 1.0 if d["busy"] else 0.0)
            alive.add_metric([dev], 1.0 if d["alive"] else 0.0)
            mem.add_metric([dev, "weights"], d["weights_gib"])
            mem.add_metric([dev, "activations"], d["activations_gib"])
            total.add_metric([dev], d["mem_gib"])
        yield busy
        yield alive
        yield mem
        yield total
        cal = GaugeMetricFamily("trident_calibration_factor",
                                "Measured / predicted stage compute time the policy and new deadlines use",
                                labels=["kind", "model", "stage"])
        samples = GaugeMetricFamily("trident_calibration_samples", "Completed dispatches the factor is the median of",
                                    labels=["kind", "model", "stage"])
        for row in snap.get("calibration", ()):
            labels = [row["kind"], row["model"], str(row["stage"])]
            cal.add_metric(labels, row["factor"])
            samples.add_metric(labels, row["samples"])
        yield cal
        yield samples
        clock = snap.get("clock")
        if clock:
            wall = GaugeMetricFamily("trident_engine_wall_seconds", "Wall seconds since the engine started")
            wall.add_metric([], clock["wall_s"])
            yield wall
            busy = GaugeMetricFamily("trident_engine_busy_wall_seconds",
                                     "Wall seconds the server's event loop was busy (not scaled by --time-scale)")
            busy.add_metric([], clock["busy_wall_s"])
            yield busy


class Metrics:
    def __init__(self, engine) -> None:
        self.registry = CollectorRegistry()
        self.ended = Counter("trident_requests_ended", "Requests that reached a terminal state", ["state"],
                             registry=self.registry)
        self.slo_met = Counter("trident_requests_slo_met", "Requests done by their deadline", registry=self.registry)
        self.attainment = 0.0
        self.stage = Histogram("trident_stage_seconds", "Stage run time (engine seconds) per request", ["stage", "outcome"],
                               buckets=_BUCKETS, registry=self.registry)
        self.wait = Histogram("trident_stage_queue_seconds", "Time a request waited for a stage (engine seconds)",
                              ["stage"], buckets=_BUCKETS, registry=self.registry)
        self.busy_s = Counter("trident_device_busy_seconds", "Engine seconds each device spent running stages",
                              ["device"], registry=self.registry)
        self._n_ended = 0
        self._n_met = 0
        self._last_dispatch = None
        for s in RequestState:
            if s.terminal:
                self.ended.labels(s.value)
        self.registry.register(_Live(engine))
        att = self

        class _Att:
            def collect(self):
                g = GaugeMetricFamily("trident_slo_attainment", "Fraction of ended requests done by their deadline "
                                                                "(NaN until one has ended)")
                # (it read 1.0 before any request had ended: 0/0 is no attainment at all; outside test)
                g.add_metric([], att._n_met / att._n_ended if att._n_ended else math.nan)
                yield g

        self.registry.register(_Att())
        parts = getattr(engine, "parts", None) or [engine]

        class _Refused:
            def collect(self):
                c = CounterMetricFamily("trident_requests_refused", "Requests turned away before admission (never "
                                        "in the run's rows): 429 queue_full, 503 shutting_down, 503 no_devices, "
                                        "503 records_unwritable",
                                        labels=["reason"])
                for reason in ("queue_full", "shutting_down", "no_devices", "records_unwritable"):
                    c.add_metric([reason], sum(p.refused.get(reason, 0) for p in parts))
                yield c

        self.registry.register(_Refused())

        class _Workers:
            def collect(self):
                c = CounterMetricFamily("trident_worker_restarts", "Times a device's worker process was restarted "
                                        "after it died or was stopped as hung", labels=["device"])
                first = 0
                for p in parts:
                    pool = p.workers.workers
                    for i, w in enumerate(pool):
                        c.add_metric([str(first + i)], int(getattr(w, "restarts", 0)))
                    first += len(pool)
                yield c
                hung = CounterMetricFamily("trident_stages_hung", "Stages taken as hung (past their bound): the "
                                           "worker was stopped and the stage run again")
                hung.add_metric([], sum(p.hung for p in parts))
                yield hung
                errors = CounterMetricFamily("trident_engine_errors", "Events whose step raised in the policy or the "
                                             "engine (each logged with its traceback); /healthz is 503 while the "
                                             "last 3 in a row did")
                errors.add_metric([], sum(p.errors_total for p in parts))
                yield errors

        self.registry.register(_Workers())
        engine.end_listeners.append(self.on_end)
        engine.span_listeners.append(self.on_span)

    def on_end(self, rec) -> None:
        self.ended.labels(rec.state.value).inc()
        self._n_ended += 1
        if met_slo(rec.state, rec.finish_s, rec.spec.deadline_s):
            self.slo_met.inc()
            self._n_met += 1

    def on_span(self, sp) -> None:
        dur = max(0.0, sp.ended_s - sp.started_s)
        self.stage.labels(sp.stage, sp.outcome).observe(dur)
        self.wait.labels(sp.stage).observe(max(0.0, sp.started_s - sp.queued_s))
        if sp.dispatch_id >= 0 and sp.dispatch_id != self._last_dispatch:
            self._last_dispatch = sp.dispatch_id
            for g in sp.gpus:
                self.busy_s.labels(str(g)).inc(dur)
