"""What a live run stores besides the children's rows as they are: the server's rows with request
ids turned into schedule indices, and the ``runs`` row with what reproduces the run
(:mod:`.live`, whose docstring says why the ids are remapped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.records import RunMeta

if TYPE_CHECKING:
    from .live import LiveBenchSpec

__all__ = ["UNMAPPED_ID_BASE", "live_run_meta", "remap_to_schedule", "server_run_ids"]

UNMAPPED_ID_BASE = 1_000_000_000  # + engine id: a request the client never learned the id of


def remap_to_schedule(tables: dict, rows: list[dict]) -> dict:
    """Server tables with request ids replaced by schedule indices (``tridentcore.bench.live``'s docstring)."""
    import pyarrow as pa

    index_of = {int(r["server_request_id"]): int(r["request_index"]) for r in rows
                if r.get("server_request_id") is not None}
    out = dict(tables)
    for name in ("requests", "stage_spans"):
        table = tables[name]
        ids = table.column("request_id").to_pylist()
        new = pa.array([index_of.get(i, UNMAPPED_ID_BASE + i) for i in ids], type=pa.int64())
        out[name] = table.set_column(table.column_names.index("request_id"), "request_id", new)
    return out


def live_run_meta(spec: LiveBenchSpec, policy: str, run_id: str, status: str, created: float, wall_s: float,
                  extra: dict, span: tuple[float, float] | None = None) -> RunMeta:
    """The ``runs`` row of one policy's live run: the run spec and the harness's options as its
    ``config_json`` (``extra`` added), git commit, package versions and hardware. ``span``: a trace's
    seconds and mean rate, from the schedule the bench sent (None: read from the trace, as when a
    killed bench's run is stored later; a trace gone by then leaves its rate 0)."""
    from .live import LiveBenchSpec, cluster_of_devices  # (the module that imports this one)
    from .provenance import LIVE_PACKAGES, git_sha, hardware, package_versions

    run = spec.run.replace(policies=(policy,))
    rate_rps, duration_s = float(run.rate), float(run.duration_s)
    if run.trace:  # the trace's own span and mean rate (as `trident trace stats` says them)
        rate_rps = 0.0
        if span is None:
            from ..formats.traces import read_trace, trace_span

            try:
                span = trace_span([e.t for e in read_trace(run.trace, default_model=run.trace_model)])
            except (ValueError, OSError):  # (the run is stored all the same)
                span = None
        if span is not None:
            duration_s, rate_rps = span
    emulated = cluster_of_devices(spec.devices)
    hw = {**hardware(), "devices": spec.devices, "gpus": emulated or run.cluster, "gpus_emulated": emulated is not None}
    return RunMeta(run_id=run_id, backend="live", policy=policy, seed=run.seed, profile=run.profile,
                   cluster=_cluster_label(run.cluster), mix=run.workload_label,
                   rate_rps=rate_rps, duration_s=duration_s,
                   slo_scale=float(run.slo_scale),
                   config_json=json.dumps(LiveBenchSpec(run, spec.options).config(**extra), sort_keys=True, default=str),
                   git_sha=git_sha(), packages_json=json.dumps(package_versions(LIVE_PACKAGES), sort_keys=True),
                   hardware_json=json.dumps(hw, sort_keys=True), status=status, created_unix_s=created, wall_s=wall_s)


def _cluster_label(cluster: str) -> str:
    try:
        from ..formats.mixes import load_cluster

        return load_cluster(cluster).label
    except (ValueError, OSError):
        return cluster


def server_run_ids(path: Path) -> list[str]:
    from ..store import open_readonly

    con = open_readonly(path)
    try:
        return [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY created_unix_s").fetchall()]
    finally:
        con.close()

