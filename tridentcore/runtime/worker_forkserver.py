"""The forkserver CPU worker processes are forked from (:mod:`.process_worker`): multiprocessing's
forkserver, preloading :mod:`._worker_preload` (torch, diffusers, transformers), its start and its end.

It is started by the first worker (or the first after it was killed) and lives as long as the
process that started it, the server: it ends when that process's end closes the pipe it watches,
at once (``_worker_preload``), once its imports are over. A server stopped while the forkserver
still imported (a Ctrl-C during the start) exited, and the forkserver went on importing for up to
5 s more, holding the server's stderr open (a caller reading it to its end waited as long):
:func:`ensure_running` has the process that starts it kill it as that process exits.

The server learns a forked worker's end from the forkserver (multiprocessing's sentinel for it is a
pipe the forkserver writes the exit status to), so a forkserver that died took every worker for
dead (exit code 255) though they ran on: each was abandoned and a new one forked once a new
forkserver had imported (5-7 s without a worker). :func:`outliving` tells such a worker from a dead
one and gives a pidfd to watch it by (Linux), as :class:`Watched` does.
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
import threading
import time

__all__ = ["Watched", "context", "ensure_running", "outliving", "start_time"]

PRELOAD = ["tridentcore.runtime._worker_preload"]

# the forkserver listens on a Unix socket in this process's multiprocessing folder (``listener-*``, 18
# bytes past it), whose path must fit the 108 bytes of a socket address
_MAX_FORKSERVER_DIR_BYTES = 107 - 18
_ENVIRON_LOCK = threading.Lock()
_ended_at_exit = False  # ``_end`` registered to run as this process exits


def context(device: str):
    """The multiprocessing context a worker for ``device`` starts in: forked from the forkserver on
    the CPU; spawned on a GPU (a process forked from one that touched CUDA cannot use it), and also
    where the forkserver's socket could not be bound: a $TMPDIR too long for it (outside test: a
    76-character one failed the start, "AF_UNIX path too long") and no short directory to write in
    instead (``tmpdirs.socket_safe_mp_dir``, called first)."""
    import multiprocessing as mp
    from multiprocessing import util

    if device.startswith("cuda") or len(os.fsencode(util.get_temp_dir())) > _MAX_FORKSERVER_DIR_BYTES:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # (for its first start: one already running keeps its own)
    return ctx


def ensure_running() -> None:
    """Start the forkserver if it is not running (its first start, or after it was killed) with $TMPDIR
    set to this process's temporary directory, the server's own folder (``tmpdirs``): its imports
    write there (torch makes ``torchinductor_<user>`` in the temporary directory as it is imported),
    and it reads $TMPDIR, not this process's ``tempfile.tempdir``: each server left that folder in
    $TMPDIR (found by a test of the server's folder that passed only while the server happened to
    import torch before its first worker). Called with the stop signals blocked (``process_worker``):
    the forkserver is born deaf to them."""
    from multiprocessing import forkserver, util

    global _ended_at_exit
    with _ENVIRON_LOCK:  # (workers start in threads of their own)
        if not _ended_at_exit:
            _ended_at_exit = True
            # at exit, once multiprocessing has joined the workers still running (killed first, it
            # could no longer tell they were: the server's folder went while they still used it)
            # and before it removes its folders (exit priority -100)
            util.Finalize(None, _end, exitpriority=-50)
        folder = tempfile.gettempdir()
        before = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = folder
        try:
            forkserver.ensure_running()
        finally:
            if before is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = before


def _end() -> None:
    """(At exit.) Kill this process's forkserver if it is still running: by now the workers forked from
    it have been stopped, and it has nothing left to do but finish its imports. Only a child of this
    process that has not ended is killed (``waitpid`` answers for it, and reaps one that has)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):  # ended (reaped now)
            return
        os.kill(pid, signal.SIGKILL)  # (its stop signals are blocked)
        os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):  # not a child of this process, or gone already
        pass


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, ``/proc/PID/stat``), to know it again
    (a pid is reused once its process has gone); ``None`` where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])  # (field 22; the name may hold spaces)
    except (OSError, ValueError, IndexError):
        return None


def _ended(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def outliving(proc, started: int | None) -> int | None:
    """For a worker ``proc`` forked from the forkserver whose end multiprocessing has just reported
    with exit code 255: a pidfd of its process if that is in fact still running (its forkserver is
    what died), the same process as ``started`` says; otherwise ``None`` (it ended)."""
    if proc.exitcode != 255 or started is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # gone (or pidfds not supported)
        return None
    if start_time(proc.pid) != started or _ended(fd):  # (the pid taken by another process, or ended)
        os.close(fd)
        return None
    return fd


class Watched:
    """A worker process and, once its forkserver has died under it (:func:`outliving`), the pidfd it is
    watched and stopped by: ``alive``, ``kill`` and ``join`` answer for either."""

    def __init__(self, proc) -> None:
        self.proc, self.pidfd = proc, None

    def alive(self) -> bool:
        fd = self.pidfd
        if fd is not None:
            return not _ended(fd)  # (closed meanwhile, by ``close`` once it ended: POLLNVAL, ended)
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:  # (ended and reaped)
                pass
        elif self.proc.is_alive():
            self.proc.kill()

    def join(self, timeout: float) -> None:
        if self.pidfd is None:
            self.proc.join(timeout)
            return
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        """(Once its process has ended; on the thread that may ``kill`` it.)"""
        fd, self.pidfd = self.pidfd, None
        if fd is not None:
            os.close(fd)
