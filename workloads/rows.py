"""The Locust file's client rows: one per scheduled request, filled from the server's answer.

Plain functions over dicts (no gevent, no Locust), so they are testable on their own. The row's
keys are the results store's ``client_requests`` columns (less ``run_id``).
"""

from __future__ import annotations

import json

from tridentcore.core.types import STAGES
from workloads.schedule import Arrival

__all__ = ["ERROR_STATES", "absorb_response", "base_row"]

# the API's error codes -> the row's state
ERROR_STATES = {"rejected": "rejected", "failed": "failed", "cancelled": "cancelled",
                "queue_full": "refused", "shutting_down": "refused"}


def base_row(a: Arrival) -> dict:
    """The row of a claimed arrival before any answer (``unfinished``)."""
    shape = a.spec.shape
    return {
        "request_index": a.index, "server_request_id": None, "server_job_id": None, "model": a.spec.model,
        "height": shape.height, "width": shape.width, "frames": shape.frames, "steps": shape.steps,
        "request_class": a.name, "workload_t_s": a.t_s, "scheduled_s": a.send_s, "sent_s": None,
        "finished_s": None, "lag_ms": None, "state": "unfinished", "http_status": 0,
        "reason": "no response before the run ended", "slo_ms": 1000.0 * a.spec.slo_s, "latency_ms": None,
        "deadline_ms": None, "met_slo": None, "client_ms": None, "queued_ms": None, "encode_ms": None,
        "diffuse_ms": None, "decode_ms": None, "stages_json": "[]",
    }


def absorb_response(row: dict, status: int, body, error: str) -> str | None:
    """Fill ``row`` from a response; return a failure message for Locust (None: success): the HTTP
    status and the API's error code, the same for every refusal of a kind."""
    row["http_status"] = status
    if status == 0:
        row["state"], row["reason"] = "error", error or "no HTTP response"
        return row["reason"]
    if not isinstance(body, dict):
        row["state"], row["reason"] = "error", f"HTTP {status}: response is not a JSON object"
        return row["reason"]
    if status == 200:
        timings = (body.get("timings") or [{}])[0]
        stages = timings.get("stages") or []
        row.update(state="done", reason="", server_job_id=body.get("id"), latency_ms=timings.get("latency_ms"),
                   deadline_ms=timings.get("deadline_ms"), met_slo=timings.get("met_slo"),
                   stages_json=json.dumps(stages, separators=(",", ":")))
        ids = body.get("request_ids")
        if isinstance(ids, list) and ids:
            row["server_request_id"] = ids[0]
        row["queued_ms"] = sum(float(s.get("queued_ms") or 0.0) for s in stages)
        for kind in STAGES:
            runs = [float(s.get("run_ms") or 0.0) for s in stages if s.get("stage") == kind]
            row[f"{kind}_ms"] = sum(runs) if runs else None
        return None
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    code = str(err.get("code", ""))
    row["state"] = ERROR_STATES.get(code, "error")
    row["reason"] = f"{code}: {err.get('message', '')}".strip(": ") or f"HTTP {status}"
    row["server_job_id"] = err.get("id")
    ids = err.get("request_ids")
    if isinstance(ids, list) and ids:
        row["server_request_id"] = ids[0]
    # Locust groups its error report by this text: the code only (the row keeps the whole message,
    # which names the job and its timings and would make a line of each refusal)
    return f"{status} {code or 'error'}"
