"""A test helper: the first diffuse a policy dispatches for one request, stepping the driver core by hand
(each started stage completes 0.5 s later). Imported by tests (``tests/`` is on sys.path under pytest)."""

from __future__ import annotations

from tridentcore.core.cluster import ClusterSpec
from tridentcore.core.driver import Completed, DriverCore
from tridentcore.core.events import Dispatch, RequestArrived, Tick
from tridentcore.core.policy import make_policy
from tridentcore.core.types import Shape
from tridentcore.core.workload import RequestSpec


def first_diffuse(cluster: ClusterSpec, cost, kind: str, spec: str, model: str, shape: Shape) -> Dispatch:
    """The first diffuse ``spec`` dispatches for one request of ``model`` at ``shape`` (no deadline)."""
    core = DriverCore(cluster, cost, make_policy(spec), gpu_kind=kind)
    core.start([model], None, 0.0)
    started = list(core.step(RequestArrived(RequestSpec(0, model, "x", shape, 1, None, 1e6, 0.0)), 0.0).started)
    now = 0.0
    while True:
        now += 0.5
        if not started:
            started = list(core.step(Tick(), now).started)
            continue
        s = started.pop(0)
        if s.run.action.stage == "diffuse":
            return s.run.action
        started += core.step(Completed(s.run.id), now).started
