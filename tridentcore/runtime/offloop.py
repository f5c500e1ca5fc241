"""Blocking calls kept off the event loop: each runs in a thread of its own, a daemon (one that never
returns does not hold the process at its exit), so a call that waits for another process that is
gone cannot freeze the server. Ray's control calls (an actor's creation or kill, the cluster's
resources, ``ray.shutdown``) wait for its head's GCS for as long as they are let: with the head
gone, one made on the event loop left the server deaf to requests and to SIGTERM (outside test 104).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_background", "off_loop"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any, timeout_s: float, name: str = "off-loop") -> T:
    """``fn(*args)`` in a daemon thread, awaited for at most ``timeout_s`` (``TimeoutError`` then: the
    thread is left to end when it does, its result dropped); its exception is raised here."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if done.done():  # (timed out and cancelled)
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(value)

    def call() -> None:
        value, exc = None, None
        try:
            value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            exc = e
        try:
            loop.call_soon_threadsafe(settle, value, exc)
        except RuntimeError:  # the loop closed meanwhile: nobody waits
            pass

    threading.Thread(target=call, name=name, daemon=True).start()
    return await asyncio.wait_for(done, timeout_s)


def in_background(fn: Callable[..., Any], *args: Any, name: str = "in-background") -> None:
    """``fn(*args)`` in a daemon thread, not waited for; an exception it raises is logged at debug level."""

    def call() -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - nobody waits for it
            logger.debug("%s: %s", name, exc)

    threading.Thread(target=call, name=name, daemon=True).start()
