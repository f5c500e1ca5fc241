"""Live runs whose bench was killed: what their work folder holds is stored, not lost.

A live bench (:mod:`.live`) runs each policy in a temporary work folder (``trident-live-*``). It
writes :data:`OWNER` there first (the results database, the run id, the policy and the live spec
that ran it) and holds an exclusive ``flock`` on it, whose descriptor it hands to ``trident serve``
and to Locust: the lock is free only once the bench and both children have ended. A bench killed
with ``kill -9`` leaves the folder behind; its server and Locust end by themselves
(:mod:`.parent`), the server having drained and stored its rows in the folder's ``server.duckdb``,
Locust having written its client rows to ``rows.jsonl``.

:func:`recover_orphans` stores such a run in its database as ``interrupted`` (``config_json``
says ``recovered``) and removes the folder, and the server's log folder with it. The next live
bench on the same database does this before it starts, and so does ``trident runs recover --db``.
A folder whose lock is held (its bench, server or Locust still running) is left alone, and so is
one that could not be stored (it says why and stays for the next try).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: no lock, so no folder is ever taken as orphaned
    fcntl = None  # type: ignore[assignment]

__all__ = ["OWNER", "PREFIX", "Owner", "Recovered", "info_of", "recover_orphans"]

OWNER = "owner.json"
PREFIX = "trident-live-"


class Owner:
    """The bench's claim on its work folder: :data:`OWNER` written and locked until :meth:`close`
    (and while a child that was handed :attr:`fd` runs)."""

    def __init__(self, work: Path, info: Mapping[str, Any]) -> None:
        self.path = work / OWNER
        self.info = dict(info)
        # written and locked under another name, then renamed: nobody sees it unlocked or half written
        tmp = work / f".{OWNER}.tmp"
        self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        self._write()
        os.replace(tmp, self.path)

    def update(self, **more: Any) -> None:
        self.info.update(more)
        self._write()

    def _write(self) -> None:
        data = json.dumps(self.info, sort_keys=True, default=str).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    @property
    def fds(self) -> tuple[int, ...]:
        """The descriptors a child is to be handed (``pass_fds``): it holds the lock while it runs."""
        return (self.fd,) if fcntl is not None else ()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class Recovered:
    """One orphaned folder and what became of it: ``outcome`` ``stored`` (the run ``run_id``; or
    found stored already), ``empty`` (nothing served: the folder removed) or ``failed`` (the folder
    stays for the next try); ``message`` says it in words."""

    folder: Path
    run_id: str | None
    outcome: str
    message: str


def recover_orphans(db: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> list[Recovered]:
    """Store the runs of killed live benches on ``db`` left in ``root`` (default: the temporary
    folder) and remove their folders; folders of other databases, and those in use, are left."""
    want = Path(db).expanduser().resolve()
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    if fcntl is None:
        return []
    try:
        folders = sorted(p for p in base.glob(f"{PREFIX}*") if (p / OWNER).is_file())
    except OSError:
        return []
    out = []
    for folder in folders:
        got = _recover_one(folder, want)
        if got is not None:
            out.append(got)
    return out


def _recover_one(folder: Path, db: Path) -> Recovered | None:
    try:
        fd = os.open(folder / OWNER, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its bench, server or Locust still runs
            return None
        if os.fstat(fd).st_nlink == 0:  # recovered by another process meanwhile
            return None
        try:
            info = json.loads(Path(folder / OWNER).read_text(encoding="utf-8"))
            if Path(info["db"]) != db:
                return None
            return _store(folder, info)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return Recovered(folder, None, "failed", f"could not read the killed live run in {folder}: {exc}")
    finally:
        os.close(fd)


def _store(folder: Path, info: dict) -> Recovered:
    from ..store.errors import DuplicateRunError
    from .live import LiveBench, spec_from_config

    run_id = str(info["run_id"])
    spec, policy = spec_from_config(info["config"])
    note = "its bench was killed; stored from its work folder by the next live bench or `trident runs recover`"
    bench = LiveBench(spec, policy, run_id, info["db"], extra_config={**info.get("extra_config", {}), "recovered": note})
    created = float(info.get("created", 0.0))
    ended = max((p.stat().st_mtime for p in folder.iterdir()), default=created)
    try:
        result = bench.store_left(folder, int(info.get("scheduled", 0)), info.get("models", ()), created,
                                  max(0.0, ended - created))
    except DuplicateRunError:
        outcome, message = "stored", f"run {run_id} of a killed live bench was stored already; removed {folder}"
    except Exception as exc:  # (a locked database, a journal that failed...): never the new bench's end
        return Recovered(folder, None, "failed", f"could not store the run {run_id} of a killed live bench from "
                                                 f"{folder} ({type(exc).__name__}: {exc}); it stays for the next try")
    else:
        outcome = "stored" if result is not None else "empty"
        message = (f"stored run {run_id} ({policy}) of a killed live bench as interrupted: "
                   f"{sum(result.states.values())} client rows" if result is not None else
                   f"a killed live bench's run {run_id} ({policy}) had served nothing; removed {folder}")
    for path in (folder, info.get("server_folder")):
        if path:
            shutil.rmtree(path, ignore_errors=True)
    return Recovered(folder, run_id if outcome == "stored" else None, outcome, message)


def info_of(db: str | os.PathLike[str], run_id: str, policy: str, config: dict, extra_config: Mapping[str, Any],
            scheduled: int, models: tuple[str, ...], created: float) -> dict[str, Any]:
    """What :data:`OWNER` holds for one policy's live run."""
    return {"db": str(Path(db).expanduser().resolve()), "run_id": run_id, "policy": policy, "config": config,
            "extra_config": dict(extra_config), "scheduled": scheduled, "models": list(models),
            "created": created, "pid": os.getpid()}
