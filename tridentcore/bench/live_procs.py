"""The child processes of a live bench, as context managers: ``trident serve`` and Locust.

Each context manager stops only the process it started (by its PID: SIGTERM, wait, SIGKILL past a
timeout), also when the body raises (Ctrl-C included, and SIGTERM inside ``sigterm_interrupts``);
the stop itself holds SIGINT and SIGTERM (``no_interrupts``: noted, acted on once the run is stored) so a
second signal cannot leave a child running or lose a run. Plus the small readers of what the children write
(the Locust file's rows and progress files) and the HTTP calls made to the server (health, and
which engine request each API job became).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..core.defaults import PARENT_PID_ENV
from ..core.errors import TridentError
from ..runtime.sigint import stop_signals_heard
from .launch import stop_process

__all__ = ["ChildError", "engine_ids", "exit_words", "http_json", "locust_cmd", "locust_process", "locustfile", "no_interrupts",
           "read_progress", "read_rows", "server_process", "sigterm_interrupts", "stop_process", "stopping_signal",
           "tail", "wait_healthy"]


class ChildError(TridentError, RuntimeError):
    """A child process that could not start or did not become healthy; the message says why."""


def locustfile() -> Path:
    """``workloads/mixed.py`` of the installed ``workloads`` package (found, not imported)."""
    spec = importlib.util.find_spec("workloads")
    if spec is None or not spec.submodule_search_locations:
        raise ChildError("the workloads package (workloads/mixed.py, the Locust file) is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "mixed.py"


def http_json(url: str, timeout_s: float = 10.0, api_key: str | None = None) -> tuple[int, Any]:
    """GET ``url`` (with ``Authorization: Bearer API_KEY`` when given): (HTTP status, JSON body or None)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:  # noqa: S310 - loopback URLs we built
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildError(f"trident serve exited ({proc.returncode}) before it was healthy")
        try:
            status, body = http_json(f"{url}/healthz", 5.0)
            if status == 200 and isinstance(body, dict) and body.get("ok"):
                return
            last = f"HTTP {status} {body}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ChildError(f"trident serve at {url} not healthy after {timeout_s:.0f} s ({last})")


_held: list[int] = []  # signals that arrived inside ``no_interrupts``, not yet taken
_stopped_by: list[int] = []  # SIGTERMs (SIGHUPs) that stopped a live bench (its exit status says which signal)


def _terms() -> tuple[int, ...]:
    """The signals taken as SIGTERM: SIGTERM, and SIGHUP (a closed terminal) unless this process was
    started ignoring it (``nohup``)."""
    return tuple(sig for sig in stop_signals_heard() if sig != signal.SIGINT)


def take_held_interrupt() -> bool:
    """Whether a SIGINT, SIGTERM or SIGHUP arrived inside ``no_interrupts`` since the last call (a stop
    asked for while a run was being stopped or stored: it is acted on once the run is stored)."""
    held = bool(_held)
    _stopped_by.extend(s for s in _held if s != signal.SIGINT)
    _held.clear()
    return held


def stopping_signal() -> int | None:
    """The SIGTERM or SIGHUP (not a Ctrl-C) that stopped this process's live bench, if one did: its exit
    status is 128 + it (143, 129), not 130."""
    return _stopped_by[0] if _stopped_by else None


class no_interrupts(contextlib.AbstractContextManager):  # noqa: N801 - used like a function
    """SIGINT, SIGTERM and SIGHUP held inside (main thread only): cleanup and the store write run to
    their end, and a signal that arrives meanwhile is noted (:func:`take_held_interrupt`), not lost."""

    def __enter__(self) -> None:
        self.old: dict = {}
        if threading.current_thread() is threading.main_thread():
            self.old = {sig: signal.signal(sig, lambda signum, frame: _held.append(signum))
                        for sig in (signal.SIGINT, *_terms())}

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class sigterm_interrupts(contextlib.AbstractContextManager):  # noqa: N801 - used like a function
    """SIGTERM (and SIGHUP, a closed terminal, unless started under ``nohup``) raises KeyboardInterrupt
    inside (main thread only), as Ctrl-C does: a live bench stopped by ``timeout``, a CI cancel,
    systemd or a dropped SSH session stops the processes it started and stores what it ran."""

    def __enter__(self) -> None:
        self.old: dict = {}
        if threading.current_thread() is threading.main_thread():
            self.old = {sig: signal.signal(sig, self._interrupt) for sig in _terms()}

    @staticmethod
    def _interrupt(signum, frame) -> None:
        _stopped_by.append(signum)
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def exit_words(code: int | None) -> str:
    """A child's exit code in words: ``exit 3``, ``killed by SIGKILL``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


@contextlib.contextmanager
def server_process(args: Sequence[str], startup_timeout_s: float, stop_timeout_s: float,
                   env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
                   folder: Path | None = None) -> Iterator[Any]:
    """``trident serve ARGS`` on loopback and a free port, healthy; stopped (drained) on exit.
    ``env``: added to its environment (``TRIDENT_API_KEY``: its API key); ``pass_fds``: descriptors
    it keeps open (the work folder's lock, :mod:`.orphans`); ``folder``: where its port file and log go.

    Yields the :class:`~tridentcore.bench.launch.ServerProcess`; stop it inside the block to get
    its exit code (the exit stop is then a no-op)."""
    from .launch import LaunchError, start_server

    try:
        server = start_server(list(args), timeout_s=startup_timeout_s, env=env, pass_fds=pass_fds, folder=folder)
    except LaunchError as exc:
        raise ChildError(str(exc)) from None
    try:
        wait_healthy(server.url, server.proc, startup_timeout_s)
        yield server
    finally:
        with no_interrupts():
            server.stop(stop_timeout_s)  # (removes its temporary folder; a no-op when stopped)


@contextlib.contextmanager
def locust_process(cmd: Sequence[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None,
                   pass_fds: tuple[int, ...] = ()) -> Iterator[subprocess.Popen]:
    """Locust (``cmd``) in its own session with its output in ``log_path``; stopped on exit.
    ``env``: added to its environment, with ``TRIDENT_STOP_WITH_PARENT`` (this process: the run
    ends when this process is gone, killed too; ``workloads/mixed.py``); ``pass_fds``: as for the server."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd, pass_fds=pass_fds,
                                env={**os.environ, **(env or {}), PARENT_PID_ENV: str(os.getpid())})
    try:
        yield proc
    finally:
        with no_interrupts():
            stop_process(proc, 30.0)


def locust_cmd(url: str, spec_file: Path, run_id: str, work: Path, users: int, run_time_s: int) -> list[str]:
    """Headless Locust on the Locust file with the run spec from ``spec_file``."""
    return [sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless", "--host", url,
            "-u", str(users), "-r", str(max(users, 1)), "-t", f"{run_time_s}s", "--only-summary",
            "--csv", str(work / "locust"), "--html", str(work / "locust.html"), "--loglevel", "WARNING",
            "--spec", str(spec_file), "--run-id", run_id, "--rows-out", str(work / "rows.jsonl"),
            "--progress-file", str(work / "progress")]


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def read_progress(path: Path) -> tuple[int, int, int] | None:
    """(finished, sent, scheduled) from the Locust file's progress file, if it wrote one."""
    try:
        done, sent, total = (int(x) for x in path.read_text().split())
        return done, sent, total
    except (OSError, ValueError):
        return None


def read_rows(path: Path) -> list[dict] | None:
    """The Locust file's client rows (JSON lines), or None when it wrote none."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def engine_ids(url: str, rows: list[dict], api_key: str | None = None) -> None:
    """Fill ``server_request_id`` from the server's job list (the API's job ids are not engine ids)."""
    want = {r["server_job_id"] for r in rows if r.get("server_job_id") and r.get("server_request_id") is None}
    if not want:
        return
    found: dict[str, int] = {}
    status, body = http_json(f"{url}/v1/requests?limit=1000", 30.0, api_key)
    if status == 200 and isinstance(body, dict):
        for job in body.get("data") or []:
            items = job.get("items") or []
            if job.get("id") in want and len(items) == 1:
                found[job["id"]] = int(items[0]["id"])
    for job_id in sorted(want - set(found)):  # more jobs than one page holds
        status, job = http_json(f"{url}/v1/requests/{job_id}", 10.0, api_key)
        items = (job or {}).get("items") or [] if status == 200 else []
        if len(items) == 1:
            found[job_id] = int(items[0]["id"])
    for r in rows:
        if r.get("server_request_id") is None and r.get("server_job_id") in found:
            r["server_request_id"] = found[r["server_job_id"]]
