"""A server's temporary files in a folder of its own: ``$TMPDIR/trident-PID-XXXXXXXX``.

multiprocessing puts the socket it passes tensors through (``pymp-*/listener-*``) in the temporary
directory of the process that sends them, and removes it as that process ends: a server killed
with SIGKILL left its ``pymp-*`` folder behind, one per kill. With :func:`use_own_temp_folder` the
server's temporary files (its workers' ``twN-*`` folders included) go into one folder named with its
PID, removed as it ends; and each server that starts removes the folders of servers that are gone.
A server holds an exclusive ``flock`` on its folder's ``.owner`` file while it lives (the kernel
drops it when the process dies, ``kill -9`` included): a folder is removed only when that lock can
be taken, so servers in other PID namespaces sharing the directory keep theirs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["restore_temp_dir", "socket_safe_base", "socket_safe_mp_dir", "use_own_temp_folder"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"trident-(\d+)-[a-z0-9_]{8}")
# the server's folder (25 characters) holds its workers' folders (``twN-*``, 14), which hold
# multiprocessing's socket (``pymp-*/listener-*``, 32): a Unix socket path stays under 108 bytes only
# below a short $TMPDIR (else below one of ``_SHORT_BASES``; if none may be written in, the temporary
# directory is used as it is)
_MAX_BASE_CHARS = 35
_OWN: str | None = None  # this process's folder, once made
_BEFORE: str | None = None  # ``tempfile.tempdir`` as it was before
_OWNER_FD: int | None = None  # its ``.owner`` file, locked for as long as this process lives
_YOUNG_S = 60.0  # a folder without its ``.owner`` file yet is being made: left alone this long
# where the socket folders go when $TMPDIR is too long for them (CPython 3.13's multiprocessing falls
# back to the same ones for its own folder)
_SHORT_BASES = ("/tmp", "/var/tmp", "/usr/tmp")
_MP_DIR_CHARS = 75  # multiprocessing's folder (``pymp-*``, 14) and socket (``listener-*``, 18) below it
_warned: set[str] = set()
_mp_dir_checked = False  # socket_safe_mp_dir ran in this process


def socket_safe_base(base: str, limit: int) -> str | None:
    """``base`` if it has at most ``limit`` characters, else the first of ``_SHORT_BASES`` that does
    and that this process may write in (said once in the log), else None: a Unix socket's path must
    fit in 108 bytes, and a $TMPDIR of 76 characters or more made every tensor a worker sent fail."""
    if len(base) <= limit:
        return base
    for short in _SHORT_BASES:
        if len(short) <= limit and os.path.isdir(short) and os.access(short, os.W_OK | os.X_OK):
            if base not in _warned:
                _warned.add(base)
                logger.warning("the temporary directory %s (%d characters) is too long for the Unix sockets "
                               "worker processes pass tensors through: their folders go to %s", base, len(base),
                               short)
            return short
    return None


def socket_safe_mp_dir() -> None:
    """Make multiprocessing's temporary folder of this process (where the socket it shares tensors
    through is bound) in a short directory when $TMPDIR is too long for that socket: once, before it
    is first made (a server forwards the tensors one worker sent it to another)."""
    from multiprocessing import util

    global _mp_dir_checked
    if _mp_dir_checked:
        return
    _mp_dir_checked = True
    base = tempfile.gettempdir()
    short = socket_safe_base(base, _MP_DIR_CHARS)
    if short is None or short == base:
        return
    before = tempfile.tempdir
    tempfile.tempdir = short
    try:
        util.get_temp_dir()  # made there (unless made already); multiprocessing removes it as this process ends
    finally:
        tempfile.tempdir = before


def use_own_temp_folder() -> str | None:
    """Make this process's temporary directory a folder of its own (``tempfile.tempdir``), removed
    as it ends, after removing those of processes that are gone; its path, or None (a $TMPDIR too
    long for it: nothing changes)."""
    from multiprocessing import util

    global _OWN, _OWNER_FD, _BEFORE
    if _OWN is not None and tempfile.tempdir == _OWN and os.path.isdir(_OWN):
        return _OWN
    _BEFORE = tempfile.tempdir
    base = socket_safe_base(tempfile.gettempdir(), _MAX_BASE_CHARS)
    if base is None:
        return None
    folder = None
    try:
        sweep(base)
        folder = tempfile.mkdtemp(prefix=f"trident-{os.getpid()}-", dir=base)
        _OWNER_FD = os.open(os.path.join(folder, ".owner"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(_OWNER_FD, fcntl.LOCK_EX)
    except OSError as exc:  # (a file system without flock, ...): the temporary directory as it is
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        logger.warning("temporary files stay in %s, not in a folder of this server's own: %s", base, exc)
        return None
    tempfile.tempdir = _OWN = folder
    # after multiprocessing's own clean-up of its folder in it (exit priority -100)
    util.Finalize(None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-200)
    return folder


def restore_temp_dir() -> None:
    """The temporary directory as it was before :func:`use_own_temp_folder` (a `trident serve` run
    inside another program, tests: what the program makes next goes where it did); the folder itself
    stays, held, until this process ends (multiprocessing may still use its socket there)."""
    global _OWN
    if _OWN is not None and tempfile.tempdir == _OWN:
        tempfile.tempdir = _BEFORE
    _OWN = None


def sweep(base: str) -> list[str]:
    """Remove the folders in ``base`` that servers now gone left (killed: they could not); the paths
    removed."""
    removed = []
    for path in Path(base).glob("trident-*-*"):
        if _NAME.fullmatch(path.name) is None or path == Path(_OWN or "") or not path.is_dir() or path.is_symlink():
            continue
        if _abandoned(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _abandoned(path: Path) -> bool:
    """Whether no live process holds ``path``'s ``.owner`` lock (one that has none yet is being made,
    unless it is old)."""
    try:
        fd = os.open(path / ".owner", os.O_RDONLY)
    except FileNotFoundError:
        try:
            return time.time() - path.stat().st_mtime > _YOUNG_S
        except OSError:
            return False
    except OSError:  # another user's
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: its server lives
        return False
    finally:
        os.close(fd)
