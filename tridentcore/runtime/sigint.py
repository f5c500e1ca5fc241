"""Child processes that Ctrl-C does not reach: a terminal's Ctrl-C signals the whole foreground
process group, and a child that took it would die mid-import or mid-step with a traceback of its own
while its parent (the server, or ``generate --degree K``'s lead) is the one that decides how to stop
it. The parent spawns it with SIGINT blocked (:func:`sigint_blocked`: the child inherits the mask
through fork and exec, so a Ctrl-C while it starts waits); the child ignores SIGINT and then unblocks
it (:func:`ignore_sigint`), first thing in its entry point. None is lost meanwhile: a SIGINT meant
for the parent reaches another of its threads, or waits until the block ends.

multiprocessing's first spawn of a process starts its resource tracker, and that start unblocks
SIGINT in the calling thread (``ResourceTracker.ensure_running``) just before the child is forked, so
the child would be born hearing it: :func:`sigint_blocked` starts the tracker before it blocks.

Also the other way round: :func:`hold_stops` and :func:`take_held` keep a SIGTERM or SIGHUP from
killing ``trident serve`` while Python still imports the command (``cli/launch.py``).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["STOP_SIGNALS", "hold_stops", "ignore_sigint", "stop_signals_heard", "ignore_signals", "sigint_blocked",
           "signals_blocked", "take_held"]

# What stops a server (it drains), and what its worker processes ignore: sent to the whole group
# (a terminal's Ctrl-C, ``kill -TERM -PGID``, GNU ``timeout`` relaying one, systemd's
# ``KillMode=control-group``, the SIGHUP of a closed terminal), the server drains on live workers.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_signals_heard() -> tuple[int, ...]:
    """The :data:`STOP_SIGNALS` a server or a bench should act on: all but a SIGHUP this process was
    started ignoring (``nohup``: it is meant to outlive its terminal)."""
    return tuple(sig for sig in STOP_SIGNALS
                 if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN))


_HELD = (signal.SIGTERM, signal.SIGHUP)
_held_before: dict[int, object] = {}  # the handlers the held signals had before :func:`hold_stops`
_held_came: list[int] = []  # the held signals that came since


def _hold(sig: int, frame) -> None:
    _held_came.append(sig)


def hold_stops() -> None:
    """(The ``trident`` command's entry point, for ``serve``, before it imports the command.) Hold
    SIGTERM and SIGHUP (not a SIGHUP ignored, as under ``nohup``) until :func:`take_held`: one that
    comes meanwhile is noted instead of killing the process. Main thread only (signals are)."""
    for sig in _HELD:
        before = signal.getsignal(sig)
        if before == signal.SIG_IGN:
            continue
        _held_before[sig] = before
        signal.signal(sig, _hold)


def take_held() -> tuple[dict[int, object], int | None]:
    """(Once the caller has taken the signals itself.) The handlers the held signals had before
    :func:`hold_stops`, and the first of them that came since (``None``: none, or nothing held);
    nothing is held any more."""
    before, came = dict(_held_before), (_held_came[0] if _held_came else None)
    _held_before.clear()
    _held_came.clear()
    return before, came


@contextlib.contextmanager
def signals_blocked(signals: tuple[int, ...] = (signal.SIGINT,)) -> Iterator[None]:
    """``signals`` blocked in this thread while a multiprocessing child process is spawned."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # (its first start would unblock SIGINT here: the docstring)
    old = mask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


def ignore_signals(signals: tuple[int, ...] = (signal.SIGINT,)) -> None:
    """In the child: ignore ``signals``, then unblock them (its parent spawned it with them blocked)."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signals))


def sigint_blocked() -> contextlib.AbstractContextManager[None]:
    """SIGINT blocked in this thread while a multiprocessing child process is spawned."""
    return signals_blocked((signal.SIGINT,))


def ignore_sigint() -> None:
    """In the child: ignore SIGINT, then unblock it (its parent spawned it blocked)."""
    ignore_signals((signal.SIGINT,))
