"""A live run's ``runs`` row and its write to the results store (one engine, or a mixed group).

Provenance (git commit, package versions, hardware) is the caller's to give: it is gathered by the
bench layer (``tridentcore.bench.provenance``), which sits above the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..core.records import RunMeta
from . import views

if TYPE_CHECKING:
    from .engine import Engine
    from .group import EngineGroup


def run_meta(engine: Engine, run_id: str, config: dict | None = None,
             provenance: Mapping[str, str] | None = None) -> RunMeta:
    prov = dict(provenance or {})
    accepted = len(engine.state.requests) + engine.forgotten
    duration = engine.now() if engine.started else 0.0
    return RunMeta(
        run_id=run_id, backend="live", policy=engine.policy.spec, seed=0, profile=engine.profile,
        cluster=engine.cluster.label, mix="live", rate_rps=accepted / duration if duration > 0 else 0.0,
        duration_s=duration, slo_scale=engine.config.slo_scale,
        config_json=json.dumps({"devices": engine.devices, "models": list(engine.models),
                                "time_scale": engine.config.time_scale, "max_queued": engine.config.max_queued,
                                "slowdown": views.slowdown(engine), "calibration": views.calibration(engine),
                                "clock": views.clock(engine),
                                **(config or {})}, sort_keys=True),
        git_sha=prov.get("git_sha", ""), packages_json=prov.get("packages_json", "{}"),
        hardware_json=prov.get("hardware_json", "{}"), status="complete",
        created_unix_s=engine.started_unix_s, wall_s=engine.wall_s or engine.elapsed_wall_s(),
    )


def write(run: Engine | EngineGroup, path: str, run_id: str | None = None, config: dict | None = None,
          provenance: Mapping[str, str] | None = None) -> str:
    """Write a live run's records in one transaction; returns the run id."""
    from ..store import ResultsStore, new_run_id

    run_id = run_id or new_run_id(run.policy.spec, 0, salt="live")
    ResultsStore(path).write_run(run.run_meta(run_id, config, provenance), run.request_rows(), run.span_rows(),
                                 run.placement_rows(), run.gpu_samples())
    return run_id
