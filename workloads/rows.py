"""The Locust file's client rows: one per scheduled request, filled from the server's answer.

Plain functions over dicts (no gevent, no Locust), so they are testable on their own. The row's
keys are the results store's ``client_requests`` columns (less ``run_id``). Also where the rows go
at the end: checked before the run (:func:`unwritable`), written as JSON lines (:func:`write_rows`)
and stored by a short child process (:func:`store_rows`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from tridentcore.core.types import STAGES
from workloads.schedule import Arrival

__all__ = ["ERROR_STATES", "absorb_response", "base_row", "store_rows", "unwritable", "write_rows"]

# the API's error codes -> the row's state
ERROR_STATES = {"rejected": "rejected", "failed": "failed", "cancelled": "cancelled",
                "queue_full": "refused", "shutting_down": "refused", "no_devices": "refused",
                "records_unwritable": "refused"}


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


def unwritable(flag: str, path: str | None) -> str | None:
    """Why the rows could not be written to ``path`` at the end (None: they can, as far as can be told now)."""
    if not path:
        return None
    if os.path.isdir(path):
        return f"{flag} {path}: is a folder, not a file"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{flag} {path}: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{flag} {path}: cannot be written (permissions)"
    probe = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.probe")
    try:  # a file made there and removed (root passes the permission test where none can be made: /proc)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        return f"{flag} {path}: cannot be written ({exc.strerror or exc})"
    return None


def db_problem(db: str, run_id: str | None) -> str | None:
    """Why the rows could not be stored in ``db`` at the end (not a results database, or ``run_id``
    already has client rows there): asked of ``tridentcore.bench.client_rows --check`` in a short child
    process, as the rows are stored (duckdb never enters the Locust process). None: they can."""
    cmd = [sys.executable, "-m", "tridentcore.bench.client_rows", "--check", "--db", db]
    out = subprocess.run([*cmd, *(["--run-id", run_id] if run_id else [])], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if out.returncode == 0:
        return None
    said = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1].removeprefix("error: ")
    return f"--db {db}: {said}"


def write_rows(rows: list[dict], path: str) -> None:
    """The rows as JSON lines, replacing ``path`` whole."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def store_rows(run_id: str, rows: list[dict], db: str, written: str | None) -> str | None:
    """Insert the rows into ``db`` through a short child process (``tridentcore.bench.client_rows``):
    the store's duckdb never enters the (gevent-patched) Locust process. ``written``: the --rows-out
    file already holding them; when the insert fails and there is none, the rows file is kept.
    Returns the error to report (None: stored, and said so on stderr)."""
    tmp = tempfile.mkdtemp(prefix="mixed-rows-")
    path = os.path.join(tmp, "rows.jsonl")
    try:
        write_rows(rows, path)
        out = subprocess.run([sys.executable, "-m", "tridentcore.bench.client_rows", "--db", db, "--run-id", run_id,
                              path], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        failed = None if out.returncode == 0 else (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    except OSError as exc:
        failed = str(exc)
    except KeyboardInterrupt:  # a second Ctrl-C while they are stored: the insert is stopped, the rows kept
        failed = "stopped by Ctrl-C while it ran"
    if failed is None:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"[mixed.py] {out.stdout.strip()}", file=sys.stderr, flush=True)
        return None
    if written:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the rows are in --rows-out {written}"
    else:
        kept = (f"the rows are kept in {path} (`python -m tridentcore.bench.client_rows --db DB --run-id {run_id} "
                f"{path}` stores them)" if os.path.exists(path) else "the rows are lost")
    return f"could not write the client rows to {db}: {failed}; {kept}"
