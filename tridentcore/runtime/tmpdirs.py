"""A server's temporary files in a folder of its own: ``$TMPDIR/trident-PID-XXXXXXXX``.

multiprocessing puts the socket it passes tensors through (``pymp-*/listener-*``) in the temporary
directory of the process that sends them, and removes it as that process ends: a server killed
with SIGKILL left its ``pymp-*`` folder behind, one per kill. With :func:`use_own_temp_folder` the
server's temporary files (its workers' ``twN-*`` folders included) go into one folder named with its
PID, removed as it ends; and each server that starts removes the folders of servers that are gone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["use_own_temp_folder"]

_NAME = re.compile(r"trident-(\d+)-[a-z0-9_]{8}")
# the server's folder (25 characters) holds its workers' folders (``twN-*``, 14), which hold
# multiprocessing's socket (``pymp-*/listener-*``, 32): a Unix socket path stays under 108 bytes only
# below a short $TMPDIR (else the temporary directory is used as it is, as before)
_MAX_BASE_CHARS = 35
_OWN: str | None = None  # this process's folder, once made


def use_own_temp_folder() -> str | None:
    """Make this process's temporary directory a folder of its own (``tempfile.tempdir``), removed
    as it ends, after removing those of processes that are gone; its path, or None (a $TMPDIR too
    long for it: nothing changes)."""
    from multiprocessing import util

    global _OWN
    if _OWN is not None and tempfile.tempdir == _OWN and os.path.isdir(_OWN):
        return _OWN  # (asked again in one process: `trident serve` run in-process by tests)
    base = tempfile.gettempdir()
    if len(base) > _MAX_BASE_CHARS:
        return None
    sweep(base)
    folder = tempfile.mkdtemp(prefix=f"trident-{os.getpid()}-", dir=base)
    tempfile.tempdir = _OWN = folder
    # after multiprocessing's own clean-up of its folder in it (exit priority -100)
    util.Finalize(None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-200)
    return folder


def sweep(base: str) -> list[str]:
    """Remove the folders in ``base`` that servers now gone left (killed: they could not); the paths
    removed."""
    removed = []
    for path in Path(base).glob("trident-*-*"):
        match = _NAME.fullmatch(path.name)
        if match is None or int(match[1]) == os.getpid() or not path.is_dir() or path.is_symlink():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
        except (OSError, OverflowError):  # alive (another user's), or no PID at all
            continue
    return removed
