"""Compare's live comparisons as jobs: each in a process of its own, detached from the page.

A live comparison takes minutes. Run inside a Streamlit script run, it ended (its children stopped,
the run in progress lost) as soon as the visitor went to another page, reloaded, or changed a
widget. Here :func:`start` writes the comparison to a job folder and starts
``python -m workbench.live_jobs JOB_DIR`` in a new session: the job runs
:func:`workbench.live_bench.run_live` (a ``trident serve`` and Locust per policy, stored in the
results database as each policy ends) whatever becomes of the page, the workbench server included,
and reports through ``status.json`` in its folder (replaced whole, so a reader never sees half of
it). The page reads it (:func:`read`, :func:`current`, :func:`latest`) and can :func:`stop` the job:
SIGTERM, which ends the policy in progress as Ctrl-C ends ``trident bench``: its run stored as
``interrupted``, the runs before it kept.

One live job at a time on a machine (a lock file around the check and the start): two at once
would share the CPUs and each measure the other. A job whose process is gone without a word
(``kill -9``) reads as ``vanished``; its ``trident serve`` stops by itself (it watches its parent).
Job folders live under the system's temporary folder, as uploads do; finished ones past the newest
:data:`KEEP` are removed when a job starts (their runs stay in the database).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: no lock, the check alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["JOBS_DIR", "Job", "JobBusy", "current", "latest", "read", "start", "stop"]

JOBS_DIR = Path(tempfile.gettempdir()) / "trident-workbench-jobs"
KEEP = 20  # finished job folders kept
ACTIVE = ("starting", "running", "stopping")
_WRITE_EVERY_S = 0.5  # progress written at most this often (a phase change at once)
_children: dict[int, subprocess.Popen] = {}  # jobs this process started: polled, so none stays a zombie


class JobBusy(ValueError):
    """A live job is already running on this machine."""


@dataclass(frozen=True)
class Job:
    """A job as its folder says, with ``state`` checked against its process."""

    id: str
    dir: Path
    db: str
    policies: list[str]
    what: str  # the workload, in words (a visitor back on the page finds its inputs reset)
    state: str  # starting | running | stopping | done | stopped | failed | vanished
    pid: int | None = None
    started: float = 0.0
    ended: float | None = None
    k: int = 0  # policy in progress, from 1
    policy: str = ""
    phase: str = ""
    done: int = 0
    total: int = 0
    run_ids: list[str] = field(default_factory=list)  # stored so far, in policy order
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def fraction(self) -> float:
        """Share of the job done: whole policies, plus the requests answered of the one in progress."""
        if not self.policies:
            return 0.0
        part = self.done / self.total if self.total else 0.0
        return min(max(((max(self.k, 1) - 1) + part) / len(self.policies), 0.0), 1.0)


# ------------------------------------------------------------------------------ the page's side
def start(plan, policies: Sequence[str], db: str, extra_config: dict | None = None,
          jobs_dir: Path | None = None, names: dict[str, str] | None = None) -> Job:
    """Start a live comparison (a :class:`workbench.live_bench.LivePlan`) as a job; returns it as
    started. :class:`JobBusy` when one is running already. ``names``: an uploaded file's saved path
    -> the name it was uploaded as (for the job's description)."""
    jobs_dir = Path(jobs_dir or JOBS_DIR)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    with _locked(jobs_dir):
        running = current(jobs_dir)
        if running is not None:
            raise JobBusy(f"a live comparison is already running (job {running.id}: {', '.join(running.policies)}, "
                          f"into {running.db}); stop it or wait for it: two at once would share the CPUs")
        _prune(jobs_dir)
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        folder = jobs_dir / job_id
        folder.mkdir()
        order = {"run": plan.spec.run.config(), "policies": list(policies), "db": str(db),
                 "extra_config": dict(extra_config or {}), "requests": plan.requests,
                 "send_wall_s": plan.send_wall_s}
        (folder / "job.json").write_text(json.dumps(order, default=str))
        _write_status(folder, {"state": "starting", "started": time.time(), "policies": list(policies),
                               "db": str(db), "what": _what(plan, names or {})})
        with open(folder / "job.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "workbench.live_jobs", str(folder)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=_root())
        _children[proc.pid] = proc
        _update(folder, pid=proc.pid)
    return read(folder)


def read(folder: Path) -> Job:
    """The job in ``folder`` as it stands (``vanished``: it said it was active, its process is gone)."""
    folder = Path(folder)
    st = _read_status(folder)
    state = st.get("state", "vanished")
    pid = st.get("pid")
    if state in ACTIVE and not _alive(pid, folder, st.get("started", 0.0)):
        st = _read_status(folder)  # it may have ended between the two reads
        state = st.get("state", "vanished")
        if state in ACTIVE:
            state = "vanished"
    return Job(id=folder.name, dir=folder, db=str(st.get("db", "")), policies=list(st.get("policies", [])),
               what=str(st.get("what", "")), state=state, pid=pid, started=float(st.get("started", 0.0)), ended=st.get("ended"),
               k=int(st.get("k", 0)), policy=str(st.get("policy", "")), phase=str(st.get("phase", "")),
               done=int(st.get("done", 0)), total=int(st.get("total", 0)), run_ids=list(st.get("run_ids", [])),
               error=st.get("error") if state != "vanished" else
               "the job's process ended without a word (killed?); the runs it stored before stay stored")


def jobs(jobs_dir: Path | None = None) -> list[Job]:
    """Every job with a folder, newest first."""
    _reap()
    root = Path(jobs_dir or JOBS_DIR)
    if not root.is_dir():
        return []
    folders = sorted((p for p in root.iterdir() if (p / "status.json").is_file()), key=lambda p: p.name, reverse=True)
    return [read(p) for p in folders]


def current(jobs_dir: Path | None = None) -> Job | None:
    """The job running now, if one is (into any database)."""
    return next((j for j in jobs(jobs_dir) if j.active), None)


def latest(db: str, jobs_dir: Path | None = None) -> Job | None:
    """The newest job into ``db``, running or ended."""
    return next((j for j in jobs(jobs_dir) if j.db == str(db)), None)


def stop(job: Job) -> bool:
    """Stop the job: the policy in progress ends and is stored (``interrupted`` if its load was cut
    short), the runs before it kept. False when there was nothing to stop.

    The stop is written to the job's status first, then the job's process (only if it is still the
    job's) gets SIGTERM, but only once it said it runs, with its handler in place; a job still
    starting reads the stop itself as it begins (both under the folder's lock: no stop is lost)."""
    if not job.active or not _alive(job.pid, job.dir, job.started):
        return False
    with _locked(job.dir):
        st = _read_status(job.dir)
        if st.get("state") not in ACTIVE:  # it ended meanwhile
            return False
        running = bool(st.get("begun"))  # its SIGTERM handler is in place
        st.update(stop=True, state="stopping", phase="stopping: the run in progress is being stored")
        _write_status(job.dir, st)
    if running and job.pid:
        try:
            os.kill(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
    return True


# ------------------------------------------------------------------------------ the job's side
def main(folder: Path) -> int:
    """The job process: run the comparison in ``folder/job.json``, reporting to ``status.json``."""
    from tridentcore.bench.live import LiveBenchSpec
    from tridentcore.bench.live_procs import sigterm_interrupts
    from tridentcore.bench.spec import RunSpec
    from workbench.data import error_text
    from workbench.live_bench import LivePlan, run_live

    order = json.loads((folder / "job.json").read_text())
    stored: list[str] = []
    reporter = _Reporter(folder, stored)
    state, error = "done", None
    try:
        with sigterm_interrupts():  # the page's Stop (SIGTERM) ends it as Ctrl-C does
            if not _begin(folder):
                raise KeyboardInterrupt  # stopped before it began
            plan = LivePlan(LiveBenchSpec(RunSpec.from_config(order["run"])), int(order["requests"]),
                            float(order["send_wall_s"]))
            run_live(plan, order["policies"], order["db"], reporter, order["extra_config"], stored=stored)
    except KeyboardInterrupt:
        state = "stopped"
    except Exception as exc:  # whatever went wrong is the job's answer, for the page to show
        state, error = "failed", error_text(exc)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late Stop must not cut the last word short
    _update(folder, state=state, error=error, run_ids=stored, ended=time.time())
    return 0 if state == "done" else 1


def _begin(folder: Path) -> bool:
    """Say the job runs (SIGTERM is now the page's way to stop it), unless a stop came first."""
    with _locked(folder):
        st = _read_status(folder)
        if st.get("stop"):
            return False
        st.update(state="running", pid=os.getpid(), begun=True)
        _write_status(folder, st)
    return True


class _Reporter:
    """``run_live``'s progress callback: status.json, at most every ``_WRITE_EVERY_S``."""

    def __init__(self, folder: Path, stored: list[str]) -> None:
        self.folder, self.stored = folder, stored
        self.last_t, self.last_phase = 0.0, None

    def __call__(self, k: int, policy: str, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase == self.last_phase and now - self.last_t < _WRITE_EVERY_S:
            return
        self.last_t, self.last_phase = now, phase
        _update(self.folder, k=k, policy=policy, phase=phase, done=done, total=total, run_ids=list(self.stored))


# ------------------------------------------------------------------------------ the folder
def _what(plan, names: dict[str, str]) -> str:
    run = plan.spec.run

    def named(path: str) -> str:
        return names.get(path) or names.get(os.path.abspath(path)) or Path(path).name

    load = (f"trace {named(run.trace)}" if run.trace else
            f"{named(run.mix) if os.path.isfile(str(run.mix)) else run.mix} at {run.rate:g} req/s for {run.duration_s:g} s")
    return (f"{load}, {run.arrival} arrivals, SLO scale {run.slo_scale:g}, seed {run.seed}: {plan.requests} requests "
            f"per policy on {plan.spec.devices} (time scale {run.time_scale:g})")


def _root() -> str:
    """The checkout's root (``python -m workbench.live_jobs`` must find the package)."""
    return str(Path(__file__).resolve().parents[1])


def _read_status(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_status(folder: Path, status: dict[str, Any]) -> None:
    tmp = folder / f".status-{os.getpid()}.json"
    tmp.write_text(json.dumps(status, default=str))
    os.replace(tmp, folder / "status.json")


def _update(folder: Path, **fields: Any) -> None:
    # the page writes ``pid`` and the stop, the job everything else: a lock keeps one from
    # overwriting the other's fields with what it read before
    with _locked(folder):
        st = _read_status(folder)
        if st.get("stop") and "phase" in fields and "state" not in fields:
            del fields["phase"]  # a stopping job keeps saying why it is ending
        st.update(fields)
        _write_status(folder, st)


class _locked:  # noqa: N801 - used like a function
    """An exclusive lock on ``folder/.lock`` (POSIX; nothing elsewhere)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> None:
        if fcntl is not None:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _reap() -> None:
    """Collect the exit of every job this process started that has ended (a job that ended while
    nobody looked stayed a zombie for as long as the workbench ran)."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)


def _alive(pid: int | None, folder: Path, started: float) -> bool:
    """Whether ``pid`` is still this job's process (not a zombie, not a later process with its PID)."""
    if not pid:
        return time.time() - started < 30.0  # just started: the PID is being written
    proc = _children.get(pid)
    if proc is not None:  # this process's own child: its PID is its own until it is reaped here
        if proc.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.is_dir():  # Linux: a zombie has none, another process names another folder
        try:
            return str(folder).encode() in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _prune(jobs_dir: Path) -> None:
    ended = [j for j in jobs(jobs_dir) if not j.active]
    for job in ended[KEEP:]:
        shutil.rmtree(job.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
