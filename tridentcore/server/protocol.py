"""The HTTP/1.1 connection handling under the app: uvicorn's h11 protocol with two changes a server
facing many clients needs.

* **A deadline for each request's head.** uvicorn closes a keep-alive connection that says nothing
  for a few seconds, but a connection that has sent part of a request line or of its headers (or a
  new one that has sent nothing) is held for ever: a few thousand of them, each a byte every minute,
  use up the process's file descriptors, and no client can connect after that. Here the head (the
  request line and every header) must have arrived ``timeout_s`` after the connection opened or
  after the previous answer; past that the connection is closed, with a 408 in the API's JSON shape
  when part of a head had come (a connection that sent nothing is closed as an idle keep-alive one
  is). The body has its own deadline (:class:`~tridentcore.server.errors.BodyLimit`).
* **The API's error shape for what h11 refuses.** A request that is not HTTP/1.1 (a malformed request
  line or header, a head over h11's 16 KiB) is answered 400 with ``{"error": {"code":
  "bad_request", ...}}`` as every other error, not uvicorn's plain text.
* **16 KiB for a head, however it arrives.** h11 bounds only a head still incomplete in its buffer:
  one that came whole in a single read passed at any size (60 KB did), and so did one pipelined in the
  same read as the request before it. The bytes of the awaited head (those that came early included)
  are kept up to the bound, and a head that has not ended within it is refused as above.

Both answers are followed by a **lingering close** (as nginx's ``lingering_close``): the answer is
sent with a FIN, and what the client still sends is read and dropped for up to :data:`LINGER_S`
before the socket closes. Closed at once, a socket that has unread input sends a reset, and a client
still sending its head (a byte at a time, or the rest of an oversized one) lost the 408 or 400 to
``ECONNRESET`` (seen in a test under load).

:func:`raise_open_files_limit` lifts the process's soft limit on open files to its hard limit (each
connection is one), as servers commonly do at start; a soft limit of 1024 is many systems' default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from http import HTTPStatus

from .errors import STATUS

__all__ = ["protocol_class", "raise_open_files_limit"]

logger = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # bytes of a request line and headers (h11's bound on an incomplete one)
LINGER_S = 2.0  # after a 408 or 400 of our own: the client's input is read and dropped this long at most
_HEAD_END = re.compile(rb"\n\r?\n")  # where a head ends, as h11 reads it (a bare LF ends a line too)


def _error_bytes(code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the API's error shape, its status from the one table, and the
    connection closed (written to the socket: h11 sends no response before a request's head)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    status = STATUS[code]
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


def protocol_class(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a ``timeout_s`` deadline on each request's head and JSON 400s
    (``uvicorn.Config(http=...)``)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # bytes of the awaited head received so far
        _head_start = b""  # its first HEAD_LIMIT + 4 bytes (is its end within the bound?)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_head()

        def connection_lost(self, exc) -> None:
            self._head_arrived()
            super().connection_lost(exc)

        _lingering = False  # answered and half-closed: input is dropped until the client closes or LINGER_S

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return
            if self._head_timer is not None:
                if self._head_bytes <= HEAD_LIMIT:
                    self._head_start += data[:HEAD_LIMIT + 4 - len(self._head_start)]
                self._head_bytes += len(data)
                if self._head_bytes > HEAD_LIMIT and _HEAD_END.search(self._head_start) is None:
                    self.send_400_response("head over the bound")
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a request's head came whole (or was refused)
                self._head_arrived()

        def on_response_complete(self) -> None:
            if self.conn.their_state is h11.DONE and not self.transport.is_closing():
                # what came after the request (pipelined) is parsed by the next cycle, here: its head
                # is held to the bound too (whole in h11's buffer, it would pass at any size)
                early = self.conn.trailing_data[0]
                if len(early) > HEAD_LIMIT and _HEAD_END.search(early, 0, HEAD_LIMIT + 4) is None:
                    self.send_400_response("pipelined head over the bound")
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE:  # the next request's head is awaited now
                self._await_head()

        def _await_head(self) -> None:
            self._head_arrived()
            early = bytes(self.conn.trailing_data[0])  # the part of it that came with the previous request
            self._head_bytes, self._head_start = len(early), early[:HEAD_LIMIT + 4]
            self._head_timer = self.loop.call_later(timeout_s, self._head_late)

        def _head_arrived(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._head_bytes:
                logger.info("%s: a request's head did not arrive within %g s (%d bytes came); closing",
                            self.client, timeout_s, self._head_bytes)
                self.transport.write(_error_bytes(
                    "head_timeout",
                    f"the request line and headers did not arrive within {timeout_s:g} s "
                    f"({self._head_bytes} bytes came)"))
                self._close_lingering()
                return
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self._head_arrived()
            self.transport.write(_error_bytes(
                "bad_request",
                "not a valid HTTP/1.1 request (a malformed request line or header, or a request line "
                "and headers over 16 KiB)"))
            self._close_lingering()

        def _close_lingering(self) -> None:
            """Send what was written and a FIN; drop the client's input until it closes, or for
            ``LINGER_S``; then close (the module docstring)."""
            self._lingering = True
            transport = self.transport
            if not transport.can_write_eof():
                transport.close()
                return
            transport.write_eof()
            transport.resume_reading()  # (h11's flow control may have paused it: the input is drained)
            self.loop.call_later(LINGER_S, transport.close)

        def eof_received(self):
            if self._lingering:  # the client is done too
                self.transport.close()
                return None
            return super().eof_received()

    return DeadlineH11Protocol


def raise_open_files_limit() -> tuple[int, int] | None:
    """Lift the soft limit on open files to the hard one; the (old, new) soft limits, or None where
    nothing changed (already there, unlimited, or not a POSIX system)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or hard == resource.RLIM_INFINITY and soft >= 1 << 20:
        return None
    new = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
        return None
    return soft, new
