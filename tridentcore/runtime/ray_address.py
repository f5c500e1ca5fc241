"""Checking a Ray address before ``ray.init`` connects to it (``--backend ray --ray-address``).

``ray.init`` retries an address that does not answer as a Ray head for minutes, in native code that
Ctrl-C does not interrupt. :func:`probe_ray_address` answers in seconds instead: nothing listening,
something listening that stays silent, or something that does not speak gRPC (a Ray head's GCS port
does) is a ``RuntimeError`` saying so. No Ray import: a plain socket.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

__all__ = ["probe_ray_address"]

_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def probe_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast where ``ray.init`` would retry for minutes, deaf to Ctrl-C: a ``HOST:PORT`` (``auto``:
    the one ``RAY_ADDRESS`` or the last cluster started on this host names; neither: an error) with nothing listening, or
    with something that does not answer as a Ray head does (its GCS is a gRPC server: to an HTTP/2
    preface it answers with a SETTINGS frame)."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            known = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
            try:
                address = known.read_text().strip() or None
            except OSError:
                address = None
            if address is None:  # (left to ray.init, it scanned the host's processes and joined another
                # trident serve's private instance, to lose every worker when that server stopped)
                # (outside test 134: a head started with `ray start --temp-dir DIR` leaves its address in DIR,
                # which this cannot know without scanning the host's processes)
                raise RuntimeError(f"--ray-address auto: no Ray cluster is known on this host (RAY_ADDRESS is "
                                   f"unset and no `ray start` left its address in {known}; a `ray start "
                                   "--temp-dir DIR` leaves it in DIR): give HEAD:PORT, or leave --ray-address "
                                   "out for a private instance")
    address = address.strip() if address else address
    if not address:
        return
    scheme, sep, _ = address.partition("://")
    if sep:
        if scheme != "ray":
            raise RuntimeError(f"--ray-address {address}: a {scheme}:// address is not a Ray head's; give HEAD:PORT "
                               f"(the GCS port `ray start --head` prints, 6379 by default) or auto")
        import importlib.util

        if importlib.util.find_spec("grpc") is None:  # what Ray Client needs (ray itself does not)
            raise RuntimeError(f"--ray-address {address}: a ray:// address goes through Ray Client, which needs "
                               f"`pip install 'ray[client]'`; or give the head's HEAD:PORT (its GCS port, 6379 by "
                               f"default) from a node of the cluster")
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise RuntimeError(f"--ray-address {address}: give HOST:PORT (a port 1-65535) or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(_HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                got = conn.recv(9 - len(head))
                if not got:
                    break
                head += got
    except socket.timeout:
        raise RuntimeError(f"no Ray cluster answers at {address}: it accepts connections but said nothing "
                           f"in {timeout_s:g} s (not a Ray head's GCS port?)") from None
    except OSError as exc:
        raise RuntimeError(f"no Ray cluster answers at {address}: {exc}") from None
    if len(head) < 9 or head[3] != 0x04:  # a frame's type is its 4th byte; 0x04: SETTINGS
        raise RuntimeError(f"no Ray cluster answers at {address}: what listens there does not speak gRPC "
                           f"(not a Ray head's GCS port?)")
