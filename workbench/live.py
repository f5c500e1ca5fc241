"""Data for the Live page: a running ``trident serve`` read over HTTP, as plain values and DataFrames.

No Streamlit here. Each call is one short HTTP request (httpx, a few seconds' timeout); what can
go wrong in the expected way (no server at the URL, a timeout, an HTTP error, a reply that is not
the API's) raises :class:`LiveError` with a message a page can show as it is, never a traceback.

Only trident servers: every read first asks ``GET /healthz`` (a short timeout) and goes on only when
the reply has the shape a trident server gives (:func:`check_server`); anything else is "not a trident
server at URL", with nothing of what it sent. Error messages name the status code, and the message
of a trident error body, never another body or exception text that could quote one; replies are
read up to a cap. Only http and https.

Endpoints used: ``GET /healthz``, ``GET /v1/cluster`` (devices, resident stages, memory, queues),
``GET /v1/models`` (what can be asked for, with size bounds and defaults), ``GET /v1/requests?limit=N`` (recent
requests, newest first; a server without it answers 404 and the page says so) and
``POST /v1/images/generations`` / ``POST /v1/videos/generations`` (a test prompt). Each takes
``api_key``: a server started with one answers every route but ``/healthz`` only with
``Authorization: Bearer KEY`` (401 otherwise).

One module of about 650 lines with one job, the HTTP client of one page: the trident check, the
capped exchange and the reads and parsing of each endpoint share the error rules above.
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import ipaddress
import json
import math
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from tridentcore.core.defaults import DEFAULT_DRAIN_TIMEOUT_S
from tridentcore.core.errors import TridentError

__all__ = [
    "DEFAULT_URL",
    "Generation",
    "LOCAL_DEVICES",
    "LOCAL_MODELS",
    "SERVE_COMMAND",
    "LiveError",
    "NotSupported",
    "NotTrident",
    "BadUrl",
    "Unreachable",
    "ServedModel",
    "check_server",
    "devices_frame",
    "fetch_cluster",
    "fetch_models",
    "fetch_requests",
    "generate",
    "local_server",
    "media_kind",
    "normalize_url",
    "requests_frame",
    "serve_command_for",
    "size_choices",
    "stages_frame",
    "start_local_server",
    "stop_local_server",
    "stopping_local_server",
    "LOCAL_STOP_TIMEOUT_S",
    "DEFAULT_DRAIN_TIMEOUT_S",
]

DEFAULT_URL = "http://127.0.0.1:8000"
READ_TIMEOUT_S = 3.0  # control-plane reads: a live server answers in milliseconds
CONNECT_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 2.0
HEALTH_MAX_BYTES = 4096  # a trident /healthz reply is about 80 bytes
MAX_REPLY_BYTES = 8 * 1024**2  # control-plane replies (/v1/cluster of a large cluster: tens of KiB)
MAX_MEDIA_REPLY_BYTES = 256 * 1024**2  # a test prompt's images or animation, base64
MAX_MESSAGE_CHARS = 300
GENERATE_TIMEOUT_S = 300.0  # a test prompt waits for its image (tiny CPU pipelines: well under a minute)
# The one `trident serve` the workbench suggests, and the one its Live page can start itself (tiny CPU
# pipelines: real images and animations); by hand it listens on DEFAULT_URL.
LOCAL_MODELS = "tiny-sd3,tiny-wan"
LOCAL_DEVICES = "cpu:1"
SERVE_COMMAND = f"trident serve --models {LOCAL_MODELS} --devices {LOCAL_DEVICES}"


class LiveError(TridentError):
    """An expected failure talking to the server; ``str()`` is the message for the page."""


class NotSupported(LiveError):
    """The server answers, but not this endpoint (404: an older ``trident serve``)."""


class Unreachable(LiveError):
    """Nothing answers at the URL (connection refused, no such host, a timeout); ``reason`` is why,
    without the advice that ``str()`` adds."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


class NotTrident(LiveError):
    """Something answers at the URL, but not a trident server: nothing of its reply is shown."""


class BadUrl(LiveError):
    """A URL that cannot be asked at all (httpx or the IDNA codec refuses it; our own text, not a reply)."""


def normalize_url(text: str) -> str:
    """``127.0.0.1:8000/`` -> ``http://127.0.0.1:8000``; LiveError naming the problem otherwise."""
    text = text.strip()
    if not text:
        raise LiveError(f"give the server's URL, e.g. {DEFAULT_URL}")
    if any(c.isspace() for c in text):  # ("not a url" read as the host "not a url")
        raise LiveError(f"{text!r} is not a URL (it has spaces); give one like {DEFAULT_URL}")
    if not (text.isascii() and text.isprintable()):  # (a DEL, a full-width letter: httpx's traceback)
        raise LiveError(f"{text[:100]!r} is not a URL (it has characters other than printable ASCII; a host "
                        "of other letters goes in its xn-- form)")
    shown = text if len(text) <= 100 else text[:100] + "…"
    if "://" not in text and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:(?!\d+(?:/|$))", text):
        # another scheme (javascript:, mailto:, file:/x), not a host:port (outside test 115: read as the
        # host "javascript" with the port "alert(1)")
        raise LiveError(f"{shown}: the URL must start with http:// or https://")
    if "://" not in text:
        text = "http://" + text
        shown = text if len(text) <= 100 else text[:100] + "…"
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # a bracketed host that is not one: "http://[::1"
        raise LiveError(f"{shown}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise LiveError(f"{shown}: the URL must start with http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise LiveError(f"{shown}: the port is not a number in 1..65535") from None
    if port == 0:
        raise LiveError(f"{shown}: port 0 is no server's port; give the one it listens on (1..65535)")
    host = parts.hostname
    if not host:
        raise LiveError(f"{shown}: no host in the URL")
    if "[" in parts.netloc:  # a bracketed host must be an IPv6 address
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise LiveError(f"{shown}: [{host}] is not an IPv6 address") from None
    elif len(host) > 253 or any(not 0 < len(label) <= 63 for label in host.rstrip(".").split(".")):
        raise LiveError(f"{shown}: not a host name (at most 253 characters, in labels of 1 to 63)")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        raise LiveError(f"{where}: give the server's address alone (scheme://host:port), with no user, query or "
                        "fragment")
    if host.replace(".", "").isdigit():  # (999.1.1.1: httpx's "Invalid IPv4 address" traceback)
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise LiveError(f"{shown}: {host} is not an IPv4 address") from None
    # rebuilt from its parts: a bare "?" or "#" at the end (no query, no fragment) is dropped, not kept
    # in front of the paths the workbench asks for
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


_NOT_JSON = object()


def _json(raw: bytes) -> Any:
    """The JSON value of a reply, or ``_NOT_JSON``."""
    try:
        return json.loads(raw)
    except ValueError:  # UnicodeDecodeError too
        return _NOT_JSON


def _trident_message(raw: bytes) -> str | None:
    """The message of a trident error body (``{"error": {"code": ..., "message": ...}}``, the one
    shape ``tridentcore.server.errors`` answers with), or None for any other body: a body that is
    not trident's is never shown."""
    body = _json(raw)
    err = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
        return None
    return err["message"][:MAX_MESSAGE_CHARS]


def _read_capped(resp, cap_bytes: int, deadline: float, timeout_s: float, what: str) -> bytes:
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap_bytes:
        raise LiveError(f"{what}: the reply is larger than the workbench reads ({cap_bytes // 1024**2} MiB)")
    buf = bytearray()
    for chunk in resp.iter_bytes():
        buf += chunk
        if len(buf) > cap_bytes:
            raise LiveError(f"{what}: the reply is larger than the workbench reads ({cap_bytes // 1024**2} MiB)")
        if time.monotonic() > deadline:
            raise LiveError(f"{what}: the reply took longer than {timeout_s:g} s")
    return bytes(buf)


def _exchange(method: str, url: str, path: str, *, timeout_s: float, cap_bytes: int,
              json_body: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
              api_key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange: (status, headers, body of at most ``cap_bytes``). LiveError when there is
    no exchange; its message names the URL and what went wrong, never what the other side sent."""
    import httpx

    what = f"{method} {url}{path}"
    timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
    deadline = time.monotonic() + timeout_s
    headers = {"accept": "application/json", "accept-encoding": "identity"}
    if api_key and api_key.strip():
        if not (api_key.strip().isascii() and api_key.strip().isprintable()):  # (a traceback: 'ascii' codec)
            raise LiveError("the API key has characters other than printable ASCII: a trident server's key is "
                            "ASCII text (as TRIDENT_API_KEY holds it)")
        headers["authorization"] = f"Bearer {api_key.strip()}"
    try:
        with httpx.stream(method, url + path, json=json_body, params=params, timeout=timeout, follow_redirects=False,
                          headers=headers) as resp:
            if time.monotonic() > deadline:
                raise LiveError(f"{what}: no answer within {timeout_s:g} s")
            raw = _read_capped(resp, cap_bytes, deadline, timeout_s, what)
            return resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, raw
    except httpx.ConnectError as exc:
        raise _unreachable(url, exc) from None
    except httpx.TimeoutException:
        raise Unreachable(f"{url} did not answer {method} {path} within {timeout_s:g} s") from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # (it said only "failed (RemoteProtocolError)")
        raise LiveError(f"{what} failed: the server closed the connection without an answer (it stopped or "
                        f"crashed?) ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:  # its text may quote what the other side sent: the type only
        raise LiveError(f"{what} failed ({type(exc).__name__})") from None
    except (httpx.InvalidURL, UnicodeError) as exc:  # our URL, which httpx or the IDNA codec refuses
        raise BadUrl(f"{url}: not a URL that can be reached ({type(exc).__name__}: {str(exc)[:120]})") from None


def serve_command_for(url: str) -> str | None:
    """The ``trident serve`` command that would listen at ``url`` (a normalized URL), for an address
    of this machine over http; None for any other."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    return SERVE_COMMAND if url == DEFAULT_URL else f"{SERVE_COMMAND} --port {parts.port or 80}"


def _unreachable(url: str, exc: BaseException) -> Unreachable:
    """Why nothing answered at ``url``: a refused connection, an unknown host or another network
    error, named from the OS error under httpx's; with the command that would serve there."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLError):  # (it said "Operation not permitted", the strerror of its errno 1)
        why = f"{url}: the TLS handshake failed ({cause.reason or 'SSL error'}): is the server plain http://?"
    elif isinstance(cause, ConnectionRefusedError):
        why = f"nothing listens at {url} (connection refused)"
    elif isinstance(cause, socket.gaierror):
        why = f"cannot reach {url}: this machine knows no host named {urlsplit(url).hostname!r}"
    elif isinstance(cause, OSError) and cause.errno:
        why = f"cannot reach {url} ({os.strerror(cause.errno)})"
    else:
        why = f"cannot reach {url} ({type(exc).__name__})"
    command = serve_command_for(url)
    return Unreachable(why + (f"; start a server there with `{command}`" if command else ""), reason=why)


def _health(raw: bytes) -> dict | None:
    """The ``GET /healthz`` body of a trident server (``ok``, ``devices_alive``, ``devices``,
    ``live_requests``: ``tridentcore.server.routes.control.healthz``), or None."""
    body = _json(raw)
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        return None
    counts = [body.get(k) for k in ("devices_alive", "devices", "live_requests")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return None
    return body


def check_server(base_url: str) -> dict:
    """``GET /healthz``: the reply when the URL is a trident server (healthy, 200, or not, 503);
    :class:`NotTrident` when something else answers (nothing of its reply is kept),
    :class:`Unreachable` when nothing answers. Every read below checks this first, so nothing of
    another service is shown."""
    url = normalize_url(base_url)
    try:
        status, _, raw = _exchange("GET", url, "/healthz", timeout_s=HEALTH_TIMEOUT_S, cap_bytes=HEALTH_MAX_BYTES)
    except (Unreachable, BadUrl):
        raise
    except LiveError:  # it answers, but not as an HTTP server should, or at length
        raise NotTrident(f"not a trident server at {url}") from None
    body = _health(raw) if status in (200, 503) else None
    if body is None:
        raise NotTrident(f"not a trident server at {url}")
    return body


def _request(method: str, base_url: str, path: str, *, timeout_s: float = READ_TIMEOUT_S,
             json: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
             cap_bytes: int | None = None, api_key: str | None = None) -> Any:
    """``method path`` on a trident server (checked first with :func:`check_server`), its JSON.

    Errors name the status code, with the message of a trident error body; no other body, and no
    exception text that could quote one, reaches the message."""
    url = normalize_url(base_url)
    check_server(url)
    status, headers, raw = _exchange(method, url, path, timeout_s=timeout_s, json_body=json, params=params,
                                     cap_bytes=MAX_REPLY_BYTES if cap_bytes is None else cap_bytes, api_key=api_key)
    message = _trident_message(raw) if status >= 300 else None
    detail = f": {message}" if message else ""
    if status == 401:
        hint = "the API key is not the server's" if api_key and api_key.strip() else "give the server's API key"
        raise LiveError(f"{method} {path} → HTTP 401{detail} ({hint})")
    if status == 404:
        raise NotSupported(f"{url} does not offer {method} {path} (HTTP 404{detail})")
    if status >= 300:
        retry = headers.get("retry-after", "")
        hint = f" (retry after {retry} s)" if retry.replace(".", "", 1).isdigit() else ""
        raise LiveError(f"{method} {path} → HTTP {status}{detail}{hint}")
    body = _json(raw)
    if body is _NOT_JSON:
        raise LiveError(f"{url}{path} answered with something that is not JSON")
    return body


def _expect(body: Any, key: str, what: str) -> Any:
    if not isinstance(body, dict) or key not in body:
        raise LiveError(f"the reply to {what} has no {key!r}: is the URL a `trident serve`?")
    return body[key]


# ----------------------------------------------------------------------------------- reads
def fetch_cluster(base_url: str, api_key: str | None = None) -> dict:
    """``GET /v1/cluster``: devices, instances, queues, running, live_requests, policy, ..."""
    body = _request("GET", base_url, "/v1/cluster", api_key=api_key)
    _expect(body, "devices", "GET /v1/cluster")
    return body


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``GET /v1/models``: what a test prompt may ask of it."""

    id: str
    kind: str  # image | video
    emulated: bool
    min_size: int
    max_size: int
    size_multiple: int
    default_size: str
    default_steps: int
    max_steps: int
    default_frames: int = 1
    max_frames: int = 1
    frames_multiple: int = 1
    max_pixels: int | None = None  # width*height*frames the server's profile prices (None: not said)

    @property
    def endpoint(self) -> str:
        return "/v1/videos/generations" if self.kind == "video" else "/v1/images/generations"


def _model(d: Mapping[str, Any]) -> ServedModel:
    size, steps, frames = d.get("size", {}), d.get("steps", {}), d.get("frames", {})
    rule = str(frames.get("rule", "1"))  # "1" or "k*4+1"
    multiple = 1
    if rule.startswith("k*"):
        try:
            multiple = int(rule[2:].split("+")[0])
        except ValueError:
            multiple = 1
    kind = str(d.get("kind", "image"))
    return ServedModel(
        id=str(d["id"]), kind=kind, emulated=bool(d.get("emulated", False)),
        min_size=int(size.get("min", 16)), max_size=int(size.get("max", 4096)),
        size_multiple=int(size.get("multiple_of", 16)), default_size=str(size.get("default", "512x512")),
        default_steps=int(steps.get("default", 28)), max_steps=int(steps.get("max", 200)),
        default_frames=int(frames.get("default", 1)) if kind == "video" else 1,
        max_frames=int(frames.get("max", 1)) if kind == "video" else 1, frames_multiple=multiple,
        max_pixels=int(pixels["max"]) if isinstance(pixels := d.get("pixels"), Mapping) and "max" in pixels else None,
    )


def fetch_models(base_url: str, api_key: str | None = None) -> list[ServedModel]:
    """``GET /v1/models``, parsed."""
    body = _request("GET", base_url, "/v1/models", api_key=api_key)
    items = _expect(body, "data", "GET /v1/models")
    try:
        return [_model(d) for d in items]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LiveError(f"GET /v1/models: an entry the workbench cannot read ({exc})") from None


def fetch_requests(base_url: str, limit: int = 20, api_key: str | None = None) -> list[dict]:
    """``GET /v1/requests?limit=N``, newest first; :class:`NotSupported` on a server without it."""
    body = _request("GET", base_url, "/v1/requests", params={"limit": int(limit)}, api_key=api_key)
    return list(_expect(body, "data", "GET /v1/requests"))


def size_choices(model: ServedModel, limit: int = 8) -> list[str]:
    """Square sizes a test prompt can pick for ``model`` (the default first), smallest to largest: those
    the server takes, its profile's priced pixels included (at the model's default frames)."""
    out = [model.default_size]
    side = model.min_size + (-model.min_size) % model.size_multiple
    frames = model.default_frames if model.kind == "video" else 1
    while (side <= model.max_size and len(out) < limit
           and (model.max_pixels is None or side * side * frames <= model.max_pixels)):
        label = f"{side}x{side}"
        if label not in out:
            out.append(label)
        side *= 2
    return out


# ----------------------------------------------------------------------------------- frames
_DEVICE_COLUMNS = ("device", "node", "kind", "alive", "busy", "running", "resident", "weights_gib", "activations_gib",
                   "free_gib", "mem_gib")


def devices_frame(cluster: Mapping[str, Any]) -> pd.DataFrame:
    """One row per device of a ``/v1/cluster`` reply: state, what runs, resident stages, memory.
    LiveError for a reply of another shape (a service that answers /healthz as trident does, then
    something else: it was a traceback)."""
    rows = []
    try:
        for d in cluster.get("devices", ()):
            run = d.get("running") or None
            running = "" if not run else f"{run.get('stage', '?')} ×{len(run.get('requests', ()))}"
            rows.append({
                "device": int(d.get("id", len(rows))), "node": d.get("node"), "kind": str(d.get("kind", "")),
                "alive": bool(d.get("alive", True)), "busy": bool(d.get("busy", False)), "running": running,
                "resident": ", ".join(map(str, d.get("resident", ()))),
                "weights_gib": float(d.get("weights_gib") or 0.0),
                "activations_gib": float(d.get("activations_gib") or 0.0),
                "free_gib": float(d.get("free_gib") or 0.0), "mem_gib": float(d.get("mem_gib") or 0.0),
            })
    except (AttributeError, TypeError, ValueError):
        raise LiveError("GET /v1/cluster: a device the workbench cannot read: is the URL a `trident serve`?") from None
    return pd.DataFrame(rows, columns=list(_DEVICE_COLUMNS))


_REQUEST_COLUMNS = ("job", "id", "model", "state", "stage", "progress", "latency_s", "met_slo", "reason", "arrival_s",
                    "deadline_s", "finish_s")


def _flat_items(listing: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """(job id, item) pairs: a listing entry is either a generation job with ``items`` (one per
    image or video) or a single request carrying its fields itself."""
    out = []
    for entry in listing:
        items = entry.get("items")
        if isinstance(items, list):
            out += [(str(entry.get("id", "")), {"model": entry.get("model"), **it}) for it in items]
        else:
            out.append((str(entry.get("job", entry.get("id", ""))), entry))
    return out


def requests_frame(listing: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Recent requests (``GET /v1/requests`` data, newest first) as one row per request."""
    rows = []
    for job, it in _flat_items(listing):
        arrival, finish = it.get("arrival_s"), it.get("finish_s")
        latency = finish - arrival if isinstance(finish, (int, float)) and isinstance(arrival, (int, float)) else math.nan
        steps, done = it.get("steps"), it.get("steps_done")
        progress = f"{done}/{steps} steps" if steps else ""
        rows.append({
            "job": job, "id": it.get("id"), "model": it.get("model"), "state": it.get("state"),
            "stage": it.get("stage") or "", "progress": progress, "latency_s": latency,
            "met_slo": it.get("met_slo") if it.get("state") == "done" else None, "reason": it.get("reason") or "",
            "arrival_s": arrival, "deadline_s": it.get("deadline_s"), "finish_s": finish,
        })
    return pd.DataFrame(rows, columns=list(_REQUEST_COLUMNS))


def stages_frame(stages: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-stage timings of one request (``stages`` of a request or ``timings[i].stages``)."""
    cols = ("stage", "devices", "batch", "outcome", "queued_ms", "run_ms", "predicted_ms", "load_ms", "transfer_ms")
    rows = [{c: (", ".join(map(str, s.get(c, ()))) if c == "devices" else s.get(c)) for c in cols} for s in stages]
    return pd.DataFrame(rows, columns=list(cols))


# ----------------------------------------------------------------------------------- a test prompt
@dataclass
class Generation:
    """What came back for a test prompt: media (PNG / animated WebP bytes) unless emulated."""

    model: str
    kind: str
    state: str
    media: list[bytes] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    emulated: bool = False
    note: str = ""
    wall_s: float = 0.0
    meta: dict = field(default_factory=dict)


def media_kind(blob: bytes) -> str:
    """``image/png``, ``image/webp`` (animated for videos), ``image/gif`` or ``image/jpeg`` by magic bytes."""
    if blob.startswith(b"\x89PNG"):
        return "image/png"
    if blob[:4] == b"RIFF" and blob[8:12] == b"WEBP":
        return "image/webp"
    if blob[:3] == b"GIF":
        return "image/gif"
    if blob[:2] == b"\xff\xd8":
        return "image/jpeg"
    return "application/octet-stream"


def generate(base_url: str, model: ServedModel, prompt: str, *, size: str | None = None, steps: int | None = None,
             frames: int | None = None, seed: int | None = None, timeout_s: float = GENERATE_TIMEOUT_S,
             api_key: str | None = None) -> Generation:
    """Send one test prompt (``response_format: b64_json``) and wait for the image or video."""
    body: dict[str, Any] = {"prompt": prompt, "model": model.id, "response_format": "b64_json"}
    if size:
        body["size"] = size
    if steps:
        body["steps"] = int(steps)
    if seed is not None:
        body["seed"] = int(seed)
    if model.kind == "video" and frames:
        body["frames"] = int(frames)
    t0 = time.perf_counter()
    reply = _request("POST", base_url, model.endpoint, json=body, timeout_s=timeout_s, cap_bytes=MAX_MEDIA_REPLY_BYTES,
                     api_key=api_key)
    if not isinstance(reply, dict):
        raise LiveError(f"the reply to POST {model.endpoint} is not a generation: is the URL a `trident serve`?")
    wall_s = time.perf_counter() - t0
    media = []
    for item in reply.get("data", ()):
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if b64:
            try:
                media.append(base64.b64decode(b64, validate=True))
            except ValueError:
                raise LiveError("the server sent an image that is not valid base64") from None
    meta = {k: reply[k] for k in ("id", "size", "frames", "steps", "seed", "time_scale") if k in reply}
    return Generation(model=str(reply.get("model", model.id)), kind=str(reply.get("kind", model.kind)),
                      state=str(reply.get("state", "")), media=media, timings=list(reply.get("timings", ())),
                      emulated=bool(reply.get("emulated", model.emulated)), note=str(reply.get("note", "")),
                      wall_s=wall_s, meta=meta)


# A page's test prompt runs in one of these threads, not in the page's script: Streamlit runs a
# session's fragments only between script runs, so a prompt waited on in the script froze the cluster
# view above it for as long as the generation took (up to GENERATE_TIMEOUT_S: outside test).
_generations = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="live-generate")


def start_generation(base_url: str, model: ServedModel, prompt: str, **kw: Any) -> concurrent.futures.Future:
    """:func:`generate` in a worker thread; the future's result is the Generation (or its LiveError)."""
    return _generations.submit(generate, base_url, model, prompt, **kw)


# ----------------------------------------------------------------------------------- a local server
# The Live page can start one `trident serve` of its own (SERVE_COMMAND) so that it has something to
# watch without a second terminal: one per workbench process, on 127.0.0.1 and a free port, stopped
# (by its PID, through ServerProcess.stop) from the page or when the workbench exits.
_local: dict[str, Any] = {}
_local_lock = threading.Lock()


def local_server():
    """The running server this process started (``tridentcore.bench.launch.ServerProcess``), or None."""
    srv = _local.get("server")
    return srv if srv is not None and srv.proc.poll() is None else None


def ended_local_server() -> tuple[str, int, str] | None:
    """The server this process started, when it ended without being stopped (killed, crashed): its
    URL, PID and exit in words; None otherwise. (The page said "no server answers yet" instead.)"""
    from tridentcore.bench.live_procs import exit_words

    srv = _local.get("server")
    if srv is None or srv.proc.poll() is None:
        return None
    return srv.url, srv.pid, exit_words(srv.proc.returncode)


def stopped_local_server() -> tuple[str, int, str] | None:
    """The server this process started and the page stopped, once it has ended: its URL, PID and exit
    in words; None otherwise (a new one started forgets it). Outside test 127: the page's own Stop read as
    an outage ("stopped answering ... It answered earlier in this session")."""
    from tridentcore.bench.live_procs import exit_words

    srv = _local.get("stopped")
    if srv is None or srv.proc.poll() is None:
        return None
    return srv.url, srv.pid, exit_words(srv.proc.returncode)


def start_local_server(models: str = LOCAL_MODELS, devices: str = LOCAL_DEVICES, timeout_s: float = 180.0) -> str:
    """Start ``trident serve --models MODELS --devices DEVICES`` on 127.0.0.1 unless this process
    already runs one; returns its URL. LiveError (with the server's own words) when it cannot start."""
    from tridentcore.bench.launch import LaunchError, start_server

    with _local_lock:
        srv = local_server()
        if srv is not None:
            return srv.url
        try:
            srv = start_server(["--models", models, "--devices", devices], host="127.0.0.1", timeout_s=timeout_s)
        except (LaunchError, OSError) as exc:
            raise LiveError(f"`trident serve --models {models} --devices {devices}` did not start: "
                            f"{str(exc).strip()[-600:]}") from None
        if not _local.get("atexit"):
            atexit.register(stop_local_server)
            _local["atexit"] = True
        _local["server"] = srv
        _local.pop("stopped", None)
        return srv.url


# how long a stopping local server may take before it is killed: its drain (--drain-timeout, 30 s by
# default), the connections still open (5 s) and storing; stopped at 30 s, a busy server was killed
# in the middle of its own drain and its worker outlived it
LOCAL_STOP_TIMEOUT_S = DEFAULT_DRAIN_TIMEOUT_S + 30.0


def stopping_local_server():
    """The local server this process is stopping (it drains), or None."""
    srv = _local.get("stopping")
    return srv if srv is not None and srv.proc.poll() is None else None


def stop_local_server(pid: int | None = None, wait: bool = True) -> int | None:
    """Stop the server :func:`start_local_server` started (SIGTERM, then its drain); its exit status.
    ``pid``: only if it is still that process (a button drawn for a server that has since been
    replaced stops nothing). ``wait=False``: return at once (None) while it drains in a thread of
    its own; :func:`stopping_local_server` tells it is on its way."""
    with _local_lock:
        srv = _local.get("server")
        if srv is None or (pid is not None and srv.pid != pid):
            return None
        _local.pop("server")
        _local["stopped"] = srv
        if wait:
            return srv.stop(timeout_s=LOCAL_STOP_TIMEOUT_S)
        _local["stopping"] = srv
        threading.Thread(target=srv.stop, kwargs={"timeout_s": LOCAL_STOP_TIMEOUT_S}, daemon=True,
                         name="stop-local-server").start()
        return None
