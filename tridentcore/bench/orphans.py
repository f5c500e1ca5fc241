"""Live runs whose bench was killed, or whose store failed: what their work folder holds is stored.

A live bench (:mod:`.live`) runs each policy in a work folder (a temporary ``trident-live-*``, or
its ``--keep`` folder). It writes :data:`OWNER` there first (the results database, the run id, the
policy and the live spec that ran it; once the load is over, the status the run reached) and holds
an exclusive ``flock`` on it, whose descriptor it hands to ``trident serve`` and to Locust: the
lock is free only once the bench and both children have ended. A bench killed with ``kill -9``
leaves the folder behind; its server and Locust end by themselves (:mod:`.parent`), the server
having drained and stored its rows (and its log) in the folder, Locust having written its client
rows there. A bench whose store failed leaves it too.

:func:`recover_orphans` stores such a run in its database (``interrupted`` if the bench was killed
during the load, else the status it had reached; ``config_json.recovered`` says what happened)
and removes a temporary folder (a kept one stays, without its claim). The next live bench on the
same database does this before it starts, and so does ``trident runs recover --db`` (``--folder``
for kept folders). A folder whose lock is held is left (``busy``), one of another database is not
read, and one that could not be stored stays for the next try.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.defaults import DEFAULT_DB_WAIT_S

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

    def done(self) -> None:
        """The run is stored: nothing here is left to recover (a kept folder stays, without the claim)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class Recovered:
    """One orphaned folder and what became of it: ``outcome`` ``stored`` (the run ``run_id``; or
    found stored already), ``empty`` (nothing served: the folder removed), ``busy`` (its bench,
    server or Locust still runs: left for a later recover), ``unreadable`` (its ``owner.json`` is
    not one this code wrote: left alone) or ``failed`` (the folder stays for the next try);
    ``message`` says it in words."""

    folder: Path
    run_id: str | None
    outcome: str
    message: str


def recover_orphans(db: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                    folders: Sequence[str | os.PathLike[str]] = (),
                    wait_s: float | None = None) -> list[Recovered]:
    """Store the runs that live benches on ``db`` left behind (killed, or their store failed): the
    ``trident-live-*`` folders in ``root`` (default: the temporary folder), and ``folders`` (a
    bench's ``--keep`` folder: itself, or the run folders in it). Temporary folders are removed once
    stored; kept ones stay, without their claim. Folders of other databases are left unread.
    ``wait_s``: how long to wait for another process's lock on ``db`` (default: the store's)."""
    if fcntl is None:
        return []
    want = Path(db).expanduser().resolve()
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    found: list[Path] = []
    try:
        found += sorted(p for p in base.glob(f"{PREFIX}*") if (p / OWNER).is_file())
        for f in map(Path, folders):
            found += [f] if (f / OWNER).is_file() else sorted(p for p in f.glob("*") if (p / OWNER).is_file())
    except OSError:
        pass
    out = []
    for folder in dict.fromkeys(found):
        got = _recover_one(folder, want, DEFAULT_DB_WAIT_S if wait_s is None else wait_s)
        if got is not None:
            out.append(got)
    return out


def _recover_one(folder: Path, db: Path, wait_s: float) -> Recovered | None:
    try:
        fd = os.open(folder / OWNER, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        try:  # (written whole before it got its name: readable without the lock)
            info = json.loads(os.pread(fd, 1 << 22, 0).decode("utf-8"))
            mine = Path(info["db"]) == db
        except (OSError, ValueError, KeyError, TypeError):
            return Recovered(folder, None, "unreadable", f"left {folder}: its {OWNER} is not a live bench's")
        if not mine:
            return None
        from ..store.journal import try_lock  # (the journals' own claim works the same way)

        if not try_lock(fd):
            return Recovered(folder, None, "busy", f"left {folder}: its bench, server or Locust still runs "
                                                   "(a later recover or live bench stores it)")
        if os.fstat(fd).st_nlink == 0:  # recovered by another process meanwhile
            return None
        try:
            return _store(folder, info, wait_s)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return Recovered(folder, None, "failed", f"could not read the live run left in {folder}: {exc}")
    finally:
        os.close(fd)


def _store(folder: Path, info: dict, wait_s: float) -> Recovered:
    from ..store.errors import DuplicateRunError
    from .live import LiveBench, spec_from_config

    run_id = str(info["run_id"])
    spec, policy = spec_from_config(info["config"])
    status, crashed = str(info.get("status") or "interrupted"), info.get("crashed")
    failed = info.get("store_failed")
    whose = "a live bench whose store failed" if failed else "a killed live bench"
    note = (f"its bench's store failed ({failed})" if failed else
            "its bench was killed" + (" after the load" if status != "interrupted" else ""))
    note += "; stored from its work folder by the next live bench or `trident runs recover`"
    bench = LiveBench(spec, policy, run_id, info["db"], extra_config={**info.get("extra_config", {}), "recovered": note})
    created = float(info.get("created", 0.0))
    ended = max((p.stat().st_mtime for p in folder.iterdir()), default=created)
    kept = bool(info.get("kept"))
    gone = "kept" if kept else "removed"
    try:
        result = bench.store_left(folder, int(info.get("scheduled", 0)), info.get("models", ()), created,
                                  max(0.0, ended - created), status, crashed, wait_s)
    except DuplicateRunError:
        outcome, message = "stored", f"run {run_id} of {whose} was stored already; {gone} {folder}"
    except Exception as exc:  # (a locked database, a journal that failed...): never the new bench's end
        from ..store.errors import RECOVER_ADVICE, damaged

        # (outside test 132: "it stays for the next try", which failed the same way for ever)
        why = damaged(exc, RECOVER_ADVICE) or f"{type(exc).__name__}: {exc}"
        return Recovered(folder, None, "failed", f"could not store the run {run_id} of {whose} from {folder} "
                                                 f"({why}); it stays for the next try")
    else:
        outcome = "stored" if result is not None else "empty"
        ended = {state: n for state, n in sorted(result.states.items()) if state != "unfinished" and n} \
            if result else {}
        how = f" ({', '.join(f'{n} {state}' for state, n in ended.items())})" if ended else ""
        message = (f"stored run {run_id} ({policy}) of {whose} as {result.status}: {sum(ended.values())} of "
                   f"{result.scheduled} scheduled requests answered{how}; {gone} {folder}" if result is not None else
                   f"the run {run_id} ({policy}) of {whose} had served nothing; {gone} {folder}")
    if kept:
        (folder / OWNER).unlink(missing_ok=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return Recovered(folder, run_id if outcome == "stored" else None, outcome, message)


def info_of(db: str | os.PathLike[str], run_id: str, policy: str, config: dict, extra_config: Mapping[str, Any],
            scheduled: int, models: tuple[str, ...], created: float, kept: bool = False) -> dict[str, Any]:
    """What :data:`OWNER` holds for one policy's live run (the bench adds ``status`` and ``crashed``
    once the load is over, and ``store_failed`` if its store failed)."""
    return {"db": str(Path(db).expanduser().resolve()), "run_id": run_id, "policy": policy, "config": config,
            "extra_config": dict(extra_config), "scheduled": scheduled, "models": list(models),
            "created": created, "pid": os.getpid(), "kept": kept}
