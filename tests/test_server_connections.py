"""Connections of a real `trident serve` (emulated devices at zero cost): a request's head must come
within ``--client-timeout`` (a partial head gets 408 ``head_timeout`` in the API's error shape, a
silent connection is closed; a byte now and then does not keep it), then its body within the same
(408 ``body_timeout``); what h11 refuses is a JSON 400; the open-files soft limit is raised to the
hard one; and the server still serves after all of it."""

from __future__ import annotations

import json
import resource
import socket
import time

import httpx
import pytest

from tridentcore.bench.launch import start_server

TIMEOUT_S = 1.0


def _read_all(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed (seconds from
    now); fails if it is still open after ``limit_s``."""
    t0 = time.monotonic()
    sock.settimeout(limit_s)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk


def _error(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)["error"]


@pytest.fixture(scope="module")
def server():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)  # a child inherits this: the server must lift it to the hard limit itself
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        proc = start_server(["--models", "sd3-medium", "--devices", "emulated:1xH200", "--time-scale", "0",
                             "--client-timeout", f"{TIMEOUT_S:g}"])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield proc
    finally:
        assert proc.stop() == 0


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def test_a_partial_head_gets_408_in_the_error_shape_and_the_connection_closes(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
        raw, took = _read_all(sock, 10)
    status, headers, err = _error(raw)
    assert status == 408 and headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert err["code"] == "head_timeout" and "within 1 s" in err["message"] and "32 bytes came" in err["message"], err
    assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + 5, took


def test_a_head_trickled_a_byte_at_a_time_is_not_kept_alive_by_each_byte(server):
    """A byte every 0.2 s, under the 1 s timeout each time: the deadline is the head's, not a byte's."""
    import select

    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(server) as sock:
        t0 = time.monotonic()
        for byte in head[:15]:  # 15 bytes over 3 s: three times the timeout
            if select.select([sock], [], [], 0.2)[0]:  # the server answered
                break
            sock.sendall(bytes([byte]))
        answered = time.monotonic() - t0
        raw, _ = _read_all(sock, 10)
    status, _, err = _error(raw)
    assert status == 408 and err["code"] == "head_timeout", raw
    assert TIMEOUT_S * 0.9 <= answered < 2.9, answered  # before the trickle ended (3 s)


def test_a_silent_connection_is_closed_without_an_answer(server):
    with _connect(server) as sock:
        raw, took = _read_all(sock, 10)
    assert raw == b"" and TIMEOUT_S * 0.9 <= took < TIMEOUT_S + 5, (raw, took)


def test_a_keep_alive_connection_gets_the_deadline_for_its_next_head(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(0.1)
        sock.sendall(b"GET /healthz HT")  # the next request, begun and left
        raw, took = _read_all(sock, 10)
    status, _, err = _error(raw)
    assert status == 408 and err["code"] == "head_timeout" and "15 bytes came" in err["message"], err
    assert took < TIMEOUT_S + 5, took


def test_a_stalled_body_gets_408_after_the_same_timeout(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        raw, took = _read_all(sock, 10)
    status, _, err = _error(raw)
    assert status == 408 and err["code"] == "body_timeout" and "within 1 s" in err["message"], err
    assert took < TIMEOUT_S + 5, took


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
                                 b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
                                 b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 60000 + b"\r\n\r\n"],
                         ids=["request-line", "header", "head-over-16KiB", "header-over-16KiB-whole"])
def test_what_is_not_http_gets_a_json_400(server, raw):
    with _connect(server) as sock:
        sock.sendall(raw)
        got, _ = _read_all(sock, 10)
    status, headers, err = _error(got)
    assert status == 400 and headers["content-type"] == "application/json", got[:200]
    assert err["code"] == "bad_request" and "not a valid HTTP/1.1 request" in err["message"], err


def test_a_head_over_16_kib_is_refused_however_it_arrives_and_a_large_body_is_not_a_head(server):
    """A head arriving whole in one read passed h11's bound at any size (60 KB did), and one sent in
    4 KiB pieces too (20 KB); a small head followed by a large body in the same write is not a head."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n"
    with _connect(server) as sock:
        for i in range(0, len(head), 4096):
            sock.sendall(head[i:i + 4096])
            time.sleep(0.02)
        got, _ = _read_all(sock, 10)
    status, _, err = _error(got)
    assert status == 400 and err["code"] == "bad_request", got[:200]
    # pipelined after a good request in the same write: parsed from h11's buffer when the first is answered
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + head)
        got, _ = _read_all(sock, 10)
    first, _, rest = got.partition(b"HTTP/1.1 400")
    assert first.startswith(b"HTTP/1.1 200") and rest, got[:400]
    assert b'"code": "bad_request"' in rest and b"HTTP/1.1 200" not in rest, got[:400]
    with _connect(server) as sock:
        body = json.dumps({"prompt": "x" * 40000, "model": "sd3-medium"}).encode()
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got, _ = _read_all(sock, 10)
    status, _, err = _error(got)
    assert status == 422 and err["field"] == "prompt", got[:300]  # read as a request: its prompt is too long


def test_a_request_with_both_content_length_and_chunked_is_refused(server):
    """RFC 9112 section 6.3: the two framings disagree (a smuggling vector behind a proxy), so the request
    is refused and the connection closed, as two Content-Lengths are."""
    body = b'{"prompt": "a cat", "model": "sd3-medium", "size": "512x512", "steps": 1}'
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(body):x}".encode() + b"\r\n" + body + b"\r\n0\r\n\r\n")
        got, took = _read_all(sock, 10)
    status, headers, err = _error(got)
    assert status == 400 and err["code"] == "bad_request" and "Transfer-Encoding" in err["message"], got[:300]
    assert headers.get("connection") == "close" and took < 5


def test_the_open_files_limit_is_raised_and_the_server_still_serves(server):
    """The fixture started it with a soft limit of 256 (a child inherits its parent's)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open(f"/proc/{server.proc.pid}/limits") as f:
        row = next(line for line in f if line.startswith("Max open files")).split()
    soft_now = int(row[3])
    assert soft_now == hard or hard == resource.RLIM_INFINITY, row
    resp = httpx.post(f"{server.url}/v1/images/generations",
                      json={"prompt": "still here", "model": "sd3-medium", "size": "512x512", "steps": 4}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_many_stalled_clients_do_not_lock_the_others_out(server):
    """400 connections that each send part of a head, more than the 256 open files the server was
    started with: a generation is still served, and every stalled one is answered 408 and closed."""
    n = 400
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n + 100:
        pytest.skip("this process may not open 400 sockets")
    socks = []
    try:
        for _ in range(n):
            sock = _connect(server)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            socks.append(sock)
        resp = httpx.post(f"{server.url}/v1/images/generations",
                          json={"prompt": "past the stalled", "model": "sd3-medium", "size": "512x512", "steps": 4},
                          timeout=30)
        assert resp.status_code == 200, resp.text
        statuses = [_error(_read_all(sock, 15)[0])[0] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [408] * n


def test_a_client_still_sending_after_its_408_reads_the_answer_not_a_reset(server):
    """A 408 then an immediate close: the bytes the client sent after it reached a closed socket, which
    answered with a reset, and the client read ``ECONNRESET`` instead of the 408 (seen once in CI under
    load, for the byte-a-time head above). The server now half-closes after its answer and drops what
    still comes for a while (a lingering close, as nginx's)."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HT")
        time.sleep(TIMEOUT_S + 0.5)  # the 408 has been sent (unread) and the server's side closed
        for _ in range(5):
            sock.sendall(b"X")
            time.sleep(0.05)
        raw, _ = _read_all(sock, 10)
    status, _, err = _error(raw)
    assert status == 408 and err["code"] == "head_timeout", raw
