"""Long computations of a page in a child process, so that the page can stop them.

A Streamlit page is stopped (the Stop button, a changed input, a closed tab) only at its next
``st`` call: a simulation of 96,000 requests run in the page's own thread held its tab for minutes,
deaf to Stop, and took the interpreter's lock from every other visitor. :class:`ChildCall` runs one
function in a process forked from a server that has the workbench imported once (so a call starts in
milliseconds); the page polls it between ``st`` calls and, when the page is stopped, the ``with``
block ends the process at once.

What comes back (pickled) is kept in :data:`results`, a cache shared by every visitor of the
process, bounded by count and by bytes; each reader gets its own copy.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

_PRELOAD = ["workbench._forkserver"]
_OK, _ERROR = b"\x00", b"\x01"
_ctx_lock = threading.Lock()
_ctx: Any = None


def _context():
    """The forkserver context, its server preloading the workbench (:mod:`workbench._forkserver`, which
    also keeps the children from running the page's script again), so that a child imports nothing."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
            _ctx = ctx
        return _ctx


def prestart() -> None:
    """Start the forkserver now (``python -m workbench`` does, before it serves), not at the first
    simulation a visitor asks for."""
    _context()
    multiprocessing.forkserver.ensure_running()


def _run(conn, fn: Callable[..., Any], args: tuple) -> None:
    """In the child: call ``fn(*args)`` and send back its value or its exception, pickled behind one
    byte that says which (``_OK`` or ``_ERROR``)."""
    try:
        payload = _OK + pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - handed to the page, which says it
        try:
            payload = _ERROR + pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its words
            payload = _ERROR + pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    conn.send_bytes(payload)
    conn.close()


class ChildCall:
    """``fn(*args)`` in a child process; use it in a ``with`` block, which ends the child however the
    block is left (a page stopped while it waits raises out of its poll loop)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        ctx = _context()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_run, args=(send, fn, args), daemon=True,
                                 name=f"workbench:{getattr(fn, '__name__', 'call')}")
        self._proc.start()
        send.close()
        self.payload: bytes | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def ready(self, timeout_s: float = 0.0) -> bool:
        """Whether the answer is here (waiting at most ``timeout_s``)."""
        if self.payload is None and self._recv.poll(timeout_s):
            try:
                self.payload = self._recv.recv_bytes()
            except EOFError:
                self._proc.join(5.0)
                raise RuntimeError(f"the computation's process ended without an answer (exit code "
                                   f"{self._proc.exitcode}; out of memory?)") from None
        return self.payload is not None

    def result(self) -> Any:
        """The function's value, or its exception raised here."""
        if not self.ready(None):
            raise RuntimeError("no answer")
        return unpickle(self.payload)

    def stop(self) -> None:
        """End the child (if it still runs) and wait for it."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2.0)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc.join(5.0)
        self._recv.close()

    def __enter__(self) -> ChildCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_all(calls: Sequence[tuple[Callable[..., Any], tuple]], waiting: Callable[[int, list[int], float], None],
            parallel: int | None = None) -> list[Any]:
    """Each ``fn(*args)`` of ``calls``: from :data:`results`, or made in child processes, ``parallel``
    at once (the machine's cores by default), each answer kept in :data:`results`. ``waiting(done,
    running, seconds)`` is called at least once a second while children run (``running``: the
    indexes of the calls under way); an exception from it (the page stopped) or from a call ends
    every child still running and propagates."""
    out: list[Any] = [None] * len(calls)
    todo = []
    for i, (fn, args) in enumerate(calls):
        got = results.get((fn.__name__, *args))
        if got is None:
            todo.append(i)
        else:
            out[i] = got
    parallel = max(1, parallel or os.cpu_count() or 1)
    running: dict[int, ChildCall] = {}
    t0, done = time.monotonic(), len(calls) - len(todo)
    try:
        while todo or running:
            while todo and len(running) < parallel:
                i = todo.pop(0)
                fn, args = calls[i]
                running[i] = ChildCall(fn, *args)
            waiting(done, sorted(running), time.monotonic() - t0)
            multiprocessing.connection.wait([c._recv for c in running.values()], timeout=1.0)
            for i, call in list(running.items()):
                if call.ready(0.0):
                    fn, args = calls[i]
                    results.put((fn.__name__, *args), call.payload)
                    out[i] = call.result()
                    call.stop()
                    del running[i]
                    done += 1
    finally:
        for call in running.values():
            call.stop()
    return out


def unpickle(payload: bytes) -> Any:
    value = pickle.loads(memoryview(payload)[1:])
    if payload[:1] == _ERROR:
        raise value
    return value


class ResultCache:
    """Answers as pickled bytes, the least recently used dropped past ``max_entries`` or ``max_bytes``
    (one answer larger than ``max_bytes`` is not kept). Thread-safe; :meth:`get` unpickles a fresh copy."""

    def __init__(self, max_entries: int = 128, max_bytes: int = 1 << 30) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            payload = self._items.get(key)
            if payload is None:
                return None
            self._items.move_to_end(key)
        return unpickle(payload)

    def put(self, key: Hashable, payload: bytes) -> None:
        if len(payload) > self.max_bytes or payload[:1] != _OK:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += len(payload) - len(old or b"")
            self._items[key] = payload
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


results = ResultCache()
