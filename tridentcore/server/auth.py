"""The API key: where it comes from and the one check every request but ``GET /healthz`` passes.

With a key, a request needs ``Authorization: Bearer KEY``; without one it gets 401 (``unauthorized``,
the shape of :mod:`.errors`, with ``WWW-Authenticate: Bearer``). :class:`RequireApiKey` is an ASGI
middleware, so it covers every route of the app, FastAPI's own (``/docs``, ``/redoc``,
``/openapi.json``) and paths no route serves, before a body is read. The key is compared in
constant time. Without a key the server is open, as it has always been on loopback.

:func:`load_api_key` resolves the key once at start: from a file (``--api-key-file``), or the value
the entry point read from ``TRIDENT_API_KEY`` (or the deprecated ``--api-key``). This module reads
no environment variable itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat

from ..core.defaults import API_KEY_ENV
from ..core.errors import TridentError
from .errors import ApiError, error_response

logger = logging.getLogger(__name__)

__all__ = ["API_KEY_ENV", "OPEN_PATHS", "ApiKeyError", "RequireApiKey", "key_matches", "load_api_key"]

OPEN_PATHS = frozenset({"/healthz"})  # what a load balancer's probe needs; nothing else is open
_UNAUTHORIZED = "this server needs Authorization: Bearer <api key>"


class ApiKeyError(TridentError, ValueError):
    """The key file cannot be used (missing, unreadable, empty), the key cannot travel in a header,
    or it was given twice."""


def key_matches(authorization: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` as a bearer token (constant time)."""
    scheme, _, token = (authorization or "").partition(" ")
    # digests of both, compared even when the scheme is wrong: the time tells neither the key's
    # length nor which part failed
    same = hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(),
                               hashlib.sha256(api_key.encode()).digest())
    return scheme.lower() == "bearer" and same


def load_api_key(key: str | None = None, key_file: str | None = None) -> str | None:
    """The server's key: the stripped content of ``key_file``, else ``key`` (stripped; empty is none).

    Raises :class:`ApiKeyError` for both at once, a key file that is unreadable or empty, or a key
    that is not printable ASCII; warns when the file can be read by its group or by others."""
    if key_file is not None and key:
        raise ApiKeyError(f"give the API key one way: --api-key-file or {API_KEY_ENV} (or --api-key), not both")
    if key_file is None:
        return _checked((key or "").strip() or None, API_KEY_ENV)
    try:
        with open(key_file, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"cannot read the API key file {key_file}: {exc}") from None
    if not stat.S_ISREG(mode):
        raise ApiKeyError(f"the API key file {key_file} is not a regular file")
    got = text.strip()
    if not got:
        raise ApiKeyError(f"the API key file {key_file} is empty")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("the API key file %s can be read by other users (mode %o); chmod 600 it",
                       key_file, stat.S_IMODE(mode))
    return _checked(got, f"the API key file {key_file}")


def _checked(key: str | None, where: str) -> str | None:
    """``key``, unless it cannot travel in an HTTP header (printable ASCII only)."""
    if key is not None and not (key.isascii() and key.isprintable()):
        raise ApiKeyError(f"{where}: the API key must be printable ASCII (it travels in an HTTP header)")
    return key


class RequireApiKey:
    """ASGI middleware: every HTTP request but :data:`OPEN_PATHS` needs the key (401 otherwise);
    a WebSocket without it is closed (1008, policy violation)."""

    def __init__(self, app, api_key: str) -> None:
        if not api_key:
            raise ValueError("RequireApiKey needs a non-empty key")
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        authorization = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if key_matches(authorization, self.api_key):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        resp = error_response(ApiError("unauthorized", _UNAUTHORIZED))
        await resp(scope, receive, send)
