"""The parent watch of the children a bench starts (``trident serve``, Locust): they end when the
process that started them is gone, ``kill -9`` included, instead of serving or sending for ever.

The starter puts its PID in ``TRIDENT_STOP_WITH_PARENT`` (``core.defaults.PARENT_PID_ENV``) of the
child's environment. :func:`starter` reads it: the starter is watched while it is still the
parent; one that is already gone when the child first looks (killed while the child was starting:
the child has been handed to init), or has ended and waits to be reaped (a zombie: a workbench job
killed while nobody lists the jobs), means the child should end at once; a value inherited from
further up, naming a live process that is not the parent, is not this child's and is ignored.
"""

from __future__ import annotations

import os

from ..core.defaults import PARENT_PID_ENV

__all__ = ["GONE", "starter", "starter_gone"]

GONE = -1  # the starter named in the environment is already gone


def starter() -> int | None:
    """The starter's PID to watch (``os.getppid()`` stops being it when it dies), :data:`GONE`, or
    None (no starter named, or not ours)."""
    raw = os.environ.get(PARENT_PID_ENV, "").strip()
    if not raw.isdigit() or int(raw) <= 1:
        return None
    pid = int(raw)
    if pid == os.getppid():
        return pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return GONE
    except PermissionError:  # alive, someone else's: not ours
        return None
    return GONE if _zombie(pid) else None  # (killed, not yet reaped by its own parent: gone too)


def starter_gone(watched: int) -> bool:
    """Whether the starter that :func:`starter` gave (not None) is gone now."""
    return watched == GONE or os.getppid() != watched


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and waits to be reaped (Linux; False where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
