"""The workbench's Live page against real `trident serve` processes (127.0.0.1, port 0), through AppTest.

Three servers: emulated GPUs at zero cost (the control plane and a test prompt that comes back with
timings and no pixels), tiny CPU pipelines (a test prompt that comes back as a PNG), and a stub
that answers the control plane but not ``GET /v1/requests`` (an older server). Plus the cases where
nothing listens at the URL or the URL is not one.
"""

from __future__ import annotations

import base64
import errno
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("httpx")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tridentcore.bench.launch import start_server  # noqa: E402
from workbench import figures, live  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGE = "workbench/pages/live.py"


def _live_page(url: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["live_server"] = url
    at.run()
    at.switch_page(PAGE).run()
    return at


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _generated(at: AppTest, timeout_s: float = 120.0) -> None:
    """After Generate: the page's script returns at once (the prompt runs in a thread of its own);
    run it again until the result is shown (what the page's one-second fragment does in a browser)."""
    deadline = time.monotonic() + timeout_s
    while any("is generating" in i.value for i in at.info):
        assert time.monotonic() < deadline, "the test prompt did not end"
        time.sleep(0.1)
        at.run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulated():
    server = start_server(["--models", "sd3-medium,wan2.1-1.3b", "--devices", "emulated:1x2xH200",
                           "--time-scale", "0"])
    try:
        yield server.url
    finally:
        server.stop()


# ------------------------------------------------------------------------------ helpers (no server)
def test_urls_are_normalized_or_refused():
    assert live.normalize_url(" 127.0.0.1:8000/ ") == "http://127.0.0.1:8000"
    assert live.normalize_url("https://h.example/") == "https://h.example"
    for bad in ("", "ftp://127.0.0.1", "http://127.0.0.1:99999", "http://", "file:///etc/passwd",
                "http://user:pw@127.0.0.1:8000", "http://127.0.0.1:8000/?x=1", "http://127.0.0.1:8000/#frag",
                "not a url", "http://127.0.0.1 :8000"):  # (spaces: it was taken as the host "not a url")
        with pytest.raises(live.LiveError):
            live.normalize_url(bad)
    assert live.normalize_url("[::1]:8100") == "http://[::1]:8100"
    assert live.normalize_url("localhost:8000/x") == "http://localhost:8000/x"
    for bad in ("javascript:alert(1)", "mailto:a@b", "file:/etc/passwd"):  # (outside test 115: "the port is not a number")
        with pytest.raises(live.LiveError, match=f"^{re.escape(bad)}: the URL must start with http:// or https://$"):
            live.normalize_url(bad)
    # each of these was a traceback on the Live page (an outside test), or a wrong hint (port 0: "--port 80")
    for bad, says in (("http://[::1", "not a URL"), ("http://[zz]:80", "not a URL"), ("x" * 3000, "not a host name"),
                      ("http://a..b:80", "not a host name"), ("http://127.0.0.1:0", "port 0 is no server's port")):
        with pytest.raises(live.LiveError, match=says) as err:
            live.normalize_url(bad)
        assert len(str(err.value)) < 300
    with pytest.raises(live.LiveError) as err:  # the port as typed, not dropped
        live.normalize_url("http://user:pw@127.0.0.1:1")
    assert str(err.value).startswith("http://127.0.0.1:1: give the server's address alone")
    # a second outside test: each was a traceback (httpx.InvalidURL, the IDNA codec's error)
    for bad, says in (("http://999.1.1.1", "999.1.1.1 is not an IPv4 address"),
                      ("http://\uff46\uff55\uff4c\uff4c:1", "characters other than printable ASCII"),
                      ("http://127.0.0.1:1/\x7f", "characters other than printable ASCII")):
        with pytest.raises(live.LiveError, match=says):
            live.normalize_url(bad)
    with pytest.raises(live.LiveError, match=r"not a URL that can be reached \(") as err:
        live.check_server(live.normalize_url("http://xn--a"))
    # a bare ? or # at the end was kept, so /healthz went after it (a real server read as "not trident")
    assert live.normalize_url("http://127.0.0.1:8000?") == live.normalize_url("http://127.0.0.1:8000#") == \
        "http://127.0.0.1:8000"
    with pytest.raises(live.LiveError, match="the API key has characters other than printable ASCII"):
        live._exchange("GET", "http://127.0.0.1:9", "/healthz", timeout_s=1, cap_bytes=100, api_key="cl\u00e9")


def test_recent_requests_flatten_jobs_and_plain_rows():
    job = {"id": "gen-3", "model": "tiny-sd3", "items": [
        {"id": 7, "state": "done", "stage": None, "reason": "done", "steps_done": 4, "steps": 4, "arrival_s": 1.0,
         "deadline_s": 3.0, "finish_s": 2.5, "met_slo": True, "stages": []},
        {"id": 8, "state": "diffusing", "stage": "diffuse", "reason": "", "steps_done": 2, "steps": 4, "arrival_s": 1.0,
         "deadline_s": 3.0, "finish_s": None, "met_slo": False, "stages": []}]}
    flat = {"id": 9, "state": "rejected", "stage": None, "model": "tiny-wan", "reason": "no capacity", "steps_done": 0,
            "steps": 4, "arrival_s": 2.0, "deadline_s": 5.0, "finish_s": 2.0, "met_slo": False}
    df = live.requests_frame([job, flat])
    assert list(df["id"]) == [7, 8, 9] and list(df["job"]) == ["gen-3", "gen-3", "9"]
    assert df["latency_s"].iloc[0] == pytest.approx(1.5) and pd.isna(df["latency_s"].iloc[1])
    assert df["progress"].iloc[1] == "2/4 steps" and df["stage"].iloc[1] == "diffuse"
    assert df["met_slo"].iloc[0] is True and df["met_slo"].iloc[1] is None and df["model"].iloc[2] == "tiny-wan"
    assert live.requests_frame([]).empty


def test_model_entries_sizes_and_media_kinds():
    video = live._model({"id": "tiny-wan", "kind": "video", "emulated": False,
                         "size": {"min": 32, "max": 512, "multiple_of": 16, "default": "64x64"},
                         "frames": {"rule": "k*4+1", "max": 33, "default": 9}, "steps": {"min": 1, "max": 200, "default": 20}})
    assert video.endpoint == "/v1/videos/generations" and video.frames_multiple == 4 and video.default_frames == 9
    assert live.size_choices(video) == ["64x64", "32x32", "128x128", "256x256", "512x512"]
    # only the sizes the server's profile prices (it answered 422 for 512x512 at 9 frames: an outside test)
    priced = live._model({"id": "tiny-wan", "kind": "video", "size": {"min": 32, "max": 512, "multiple_of": 16,
                          "default": "64x64"}, "frames": {"rule": "k*4+1", "max": 33, "default": 9},
                          "steps": {"max": 200, "default": 20}, "pixels": {"min": 1, "max": 557056}})
    assert live.size_choices(priced) == ["64x64", "32x32", "128x128"]
    assert live.media_kind(b"\x89PNG\r\n\x1a\n...") == "image/png"
    assert live.media_kind(b"RIFF\x00\x00\x00\x00WEBPVP8X") == "image/webp"


def test_live_figures_draw_devices_and_queues():
    cluster = {"devices": [
        {"id": 0, "node": 0, "kind": "H200", "alive": True, "busy": True, "mem_gib": 141.0, "weights_gib": 20.0,
         "activations_gib": 5.0, "free_gib": 116.0, "resident": ["sd3-medium/encode", "sd3-medium/diffuse"],
         "running": {"dispatch": 4, "stage": "diffuse", "requests": [1, 2]}},
        {"id": 1, "node": 0, "kind": "H200", "alive": False, "busy": False, "mem_gib": 141.0, "weights_gib": 0.0,
         "activations_gib": 0.0, "free_gib": 141.0, "resident": [], "running": None}]}
    df = live.devices_frame(cluster)
    assert list(df["running"]) == ["diffuse ×2", ""] and df["resident"].iloc[0] == "sd3-medium/encode, sd3-medium/diffuse"
    fig = figures.live_devices(df)
    assert [t.name for t in fig.data] == ["weights", "activations", "free"]
    assert list(fig.data[0].x) == [20.0, 0.0] and "DOWN" in fig.data[0].y[1]
    assert any("sd3-medium/encode" in a.text and "diffuse ×2" in a.text for a in fig.layout.annotations)
    q = figures.live_queues({"encode": 1, "diffuse": 3, "decode": 0}, {"encode": 0, "diffuse": 2, "decode": 0})
    assert list(q.data[0].y) == [1, 3, 0] and list(q.data[1].y) == [0, 2, 0]
    assert "no devices" in figures.live_devices(live.devices_frame({"devices": []})).layout.annotations[0].text
    # a reply of another shape (a service that answers /healthz as trident does): a line, not a traceback
    for odd in ({"devices": [{"id": "x"}]}, {"devices": [7]}, {"devices": [{"mem_gib": "lots"}]}):
        with pytest.raises(live.LiveError, match="a device the workbench cannot read"):
            live.devices_frame(odd)


# ------------------------------------------------------------------------------ the page
def test_the_servers_health_is_checked_and_its_errors_are_its_own(emulated):
    health = live.check_server(emulated)
    assert health["ok"] is True and health["devices"] == 2 and health["devices_alive"] == 2
    with pytest.raises(live.NotSupported) as err:  # a trident 404 (its error shape): its message is shown
        live._request("GET", emulated, "/no/such/route")
    assert str(err.value).endswith("(HTTP 404: no such path: /no/such/route)")
    port = _free_port()
    with pytest.raises(live.Unreachable) as err:
        live.check_server(f"http://127.0.0.1:{port}")
    assert err.value.reason == f"nothing listens at http://127.0.0.1:{port} (connection refused)"
    assert str(err.value).endswith(f"start a server there with `{live.SERVE_COMMAND} --port {port}`")


def test_why_a_server_is_unreachable_is_named_with_the_command_that_would_serve_there():
    import httpx

    def failed(cause: BaseException) -> httpx.ConnectError:  # as httpx raises it: the OS error under its own
        try:
            try:
                raise cause
            except OSError as exc:
                raise httpx.ConnectError(str(exc)) from exc
        except httpx.ConnectError as exc:
            return exc

    here = live._unreachable(live.DEFAULT_URL, failed(ConnectionRefusedError(111, "Connection refused")))
    assert str(here) == (f"nothing listens at {live.DEFAULT_URL} (connection refused); "
                         f"start a server there with `{live.SERVE_COMMAND}`")
    unknown = live._unreachable("http://gpu-box:8000", failed(socket.gaierror(-2, "Name or service not known")))
    assert str(unknown) == unknown.reason == "cannot reach http://gpu-box:8000: this machine knows no host named 'gpu-box'"
    down = live._unreachable("http://10.0.0.7:9000", failed(OSError(errno.EHOSTUNREACH, "No route to host")))
    assert str(down) == "cannot reach http://10.0.0.7:9000 (No route to host)"
    assert live.serve_command_for("http://localhost:8100") == f"{live.SERVE_COMMAND} --port 8100"
    assert live.serve_command_for("https://127.0.0.1:8100") is None


SECRET = "SSH-2.0-OpenSSH_9.2 internal-banner-51c0"


class _Raw:
    """A TCP service on 127.0.0.1 that answers every connection with ``reply`` (bytes), then closes."""

    def __init__(self, reply: bytes, delay_s: float = 0.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply, self.delay_s, self.stop = reply, delay_s, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import time

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    for i in range(0, len(self.reply), 65536):
                        conn.sendall(self.reply[i:i + 65536])
                        time.sleep(self.delay_s)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("reply", [
    (SECRET + "\r\n").encode(),  # not HTTP at all: the client's error would quote it
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + json.dumps({"ok": SECRET}).encode(),
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n" + SECRET.encode(),  # claims to be huge
    b"HTTP/1.1 200 OK\r\n\r\n" + SECRET.encode() * 2000,  # is larger than a healthz reply may be
    b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\n\r\n",
], ids=["not-http", "wrong-shape", "declared-huge", "huge", "redirect"])
def test_something_else_at_the_url_is_not_a_trident_server_and_nothing_of_it_is_kept(reply):
    raw = _Raw(reply)
    try:
        with pytest.raises(live.NotTrident) as err:
            live.fetch_cluster(raw.url)
        assert str(err.value) == f"not a trident server at {raw.url}"  # nothing of what it sent
    finally:
        raw.close()


def test_replies_are_read_up_to_a_cap(monkeypatch):
    """A trident server (its healthz) whose /v1/cluster reply is larger than the cap."""
    health = json.dumps({"ok": True, "devices_alive": 1, "devices": 1, "live_requests": 0}).encode()

    class Big(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = health if self.path == "/healthz" else b'{"devices": [' + b"0," * 100_000 + b"0]}"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()  # no length: read until the connection closes
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    monkeypatch.setattr(live, "MAX_REPLY_BYTES", 64 * 1024)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Big)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(live.LiveError, match="larger than the workbench reads"):
            live.fetch_cluster(f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_unreachable_server_is_a_calm_note_with_the_one_serve_command():
    port = _free_port()
    at = _live_page(f"http://127.0.0.1:{port}")
    _clean(at)
    assert not at.error  # no server up yet (the first visit) is not a failure
    notes = [i.value for i in at.info]
    assert len(notes) == 1 and "No trident server answers" in notes[0] and "(connection refused)" in notes[0]
    assert f"run `{live.SERVE_COMMAND} --port {port}` in a terminal" in notes[0]  # the port of the URL asked
    assert at.button(key="live_start_local").proto.label == "Start a local server"
    text = " ".join(c.value for c in at.caption) + at.button(key="live_start_local").proto.help
    assert "trident serve --" not in text.replace(live.SERVE_COMMAND, "")  # no other command on the page
    assert not at.metric and not at.get("plotly_chart")
    at.text_input(key="live_url").set_value("ftp://127.0.0.1:8000").run()
    _clean(at)
    assert any("http://" in e.value for e in at.error)


def test_emulated_server_shows_devices_queue_and_timings_without_pixels(emulated):
    at = _live_page(emulated)
    _clean(at)
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Devices busy"] == "0 / 2" and metrics["Policy"] == "trident" and metrics["Live requests"] == "0"
    assert len(at.get("plotly_chart")) == 2  # queue per stage, devices and their memory
    devices = at.dataframe[0].value
    assert list(devices["device"]) == [0, 1] and (devices["mem_gib"] > 100).all()
    assert at.selectbox(key="live_model").options == ["sd3-medium", "wan2.1-1.3b"]

    at.selectbox(key="live_model").set_value("wan2.1-1.3b").run()
    at.text_area(key="live_prompt").set_value("a boat on a lake")
    at.number_input(key="live_steps_wan2.1-1.3b").set_value(3)
    at.number_input(key="live_frames_wan2.1-1.3b").set_value(9)
    at.button(key="live_send").click().run()
    _generated(at)
    _clean(at)
    assert not at.error
    assert any("emulated devices" in i.value and "no pixels" in i.value for i in at.info)
    assert not at.get("image")
    timings = at.dataframe[-1].value
    assert list(timings["stage"]) == ["encode", "diffuse", "decode"]
    assert any("wan2.1-1.3b" in m.value and "frames 9" in m.value and "steps 3" in m.value for m in at.markdown)

    at.run()  # the request now shows among the recent ones
    _clean(at)
    recent = next(d.value for d in at.dataframe if "state" in d.value.columns)
    assert recent["model"].iloc[0] == "wan2.1-1.3b" and recent["state"].iloc[0] == "done"


def test_invalid_prompt_is_the_servers_message(emulated):
    at = _live_page(emulated)
    at.text_area(key="live_prompt").set_value("   ")
    at.button(key="live_send").click().run()
    _generated(at)
    _clean(at)
    assert any("The test prompt failed" in e.value and "422" in e.value for e in at.error)


def test_local_tiny_cpu_server_started_from_the_page_returns_an_image_and_stops():
    """The page's own server (tiny-sd3 and tiny-wan on cpu:1): started by a button, a PNG and an
    animated WebP come back, stopped by a button (the process is gone)."""
    at = _live_page(f"http://127.0.0.1:{_free_port()}")
    assert live.local_server() is None
    at.button(key="live_start_local").click().run()
    _clean(at)
    server = live.local_server()
    try:
        assert server is not None and at.text_input(key="live_url").value == server.url
        assert not at.error and not at.warning and {m.label: m.value for m in at.metric}["Devices busy"] == "0 / 1"
        assert "tiny-sd3/diffuse" in at.dataframe[0].value["resident"].iloc[0]
        at.selectbox(key="live_size_tiny-sd3").set_value("64x64")
        at.number_input(key="live_steps_tiny-sd3").set_value(4)
        at.button(key="live_send").click().run()
        _generated(at)
        _clean(at)
        assert not at.error
        imgs = at.get("image")
        assert len(imgs) == 1 and len(imgs[0].proto.imgs) == 1
        url = imgs[0].proto.imgs[0].url
        assert url.startswith("data:image/png;base64,")
        assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")
        assert any("64x64" in m.value and "steps 4" in m.value for m in at.markdown)

        at.selectbox(key="live_model").set_value("tiny-wan").run()
        at.number_input(key="live_steps_tiny-wan").set_value(2)
        at.number_input(key="live_frames_tiny-wan").set_value(5)
        at.button(key="live_send").click().run()
        _generated(at)
        _clean(at)
        url = at.get("image")[0].proto.imgs[0].url
        blob = base64.b64decode(url.split(",", 1)[1])
        assert url.startswith("data:image/webp;base64,") and blob[:4] == b"RIFF" and b"ANIM" in blob[:64]

        # a stop for a process that is not the one running (a button drawn before it was replaced) stops nothing
        assert live.stop_local_server(pid=server.pid + 100_000) is None and live.local_server() is server
        # the button stops it in the background (the page is not held for its drain) and says so
        at.button(key="live_stop_local").click().run()
        _clean(at)
        assert live.local_server() is None
        assert server.proc.wait(live.LOCAL_STOP_TIMEOUT_S) == 0  # drained and stored, not killed
        at.run()
        _clean(at)
        assert not at.button(key="live_start_local").disabled and live.stopping_local_server() is None
    finally:
        live.stop_local_server()


class _OldServer(BaseHTTPRequestHandler):
    """The control plane of a server that predates ``GET /v1/requests``."""

    CLUSTER = {"devices": [{"id": 0, "node": 0, "kind": "cpu", "alive": True, "busy": False, "mem_gib": 8.0,
                            "weights_gib": 0.5, "activations_gib": 0.0, "free_gib": 7.5, "resident": ["m/encode"]}],
               "instances": [{"model": "m", "stage": "encode", "devices": [0]}], "queues": {"encode": 0, "diffuse": 0,
               "decode": 0}, "running": {"encode": 0, "diffuse": 0, "decode": 0}, "live_requests": 0, "policy": "fifo"}

    def do_GET(self):  # noqa: N802
        body = {"/healthz": {"ok": True, "devices_alive": 1, "devices": 1, "live_requests": 0},
                "/v1/cluster": self.CLUSTER, "/v1/models": {"object": "list", "data": []}}.get(self.path)
        raw = json.dumps(body if body is not None else {"detail": "Not Found"}).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


def test_server_without_recent_requests_says_so():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OldServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        at = _live_page(f"http://127.0.0.1:{httpd.server_address[1]}")
        _clean(at)
        assert not at.error
        assert any("does not list recent requests" in i.value for i in at.info)
        assert any("serves no models" in i.value for i in at.info)
        assert {m.label: m.value for m in at.metric}["Policy"] == "fifo"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_server_that_dies_while_watched_is_said_to_have_ended_not_to_be_not_started_yet():
    """Outside test: a server the page had shown, then `kill -9`ed, read as "No trident server answers
    ... yet ... Press Start a local server" (the first visit's note), the workbench's own server too,
    with nothing saying it had ended or how."""
    server = start_server(["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0"])
    try:
        at = _live_page(server.url)
        _clean(at)
        assert at.metric and not at.error and not at.warning
        server.proc.kill()
        server.proc.wait(30)
        at.run()
        _clean(at)
        said = [w.value for w in at.warning]
        assert len(said) == 1 and f"The trident server at {server.url} stopped answering" in said[0], said
        assert "(connection refused)" in said[0] and not any("yet" in i.value for i in at.info)
    finally:
        server.stop()
    url = live.start_local_server("sd3-medium", "emulated:1x2xH200")
    try:
        own = live.local_server()
        at = _live_page(url)
        _clean(at)
        assert at.metric and live.ended_local_server() is None
        own.proc.kill()
        own.proc.wait(30)
        at.run()
        _clean(at)
        said = [e.value for e in at.error]
        assert len(said) == 1 and f"local server at {url} (process {own.pid}) has ended (killed by SIGKILL)" in said[0]
        assert at.button(key="live_start_local").proto.label == "Start a local server"
    finally:
        live.stop_local_server()
    assert live.ended_local_server() is None and live.local_server() is None
    # stopped from the page: said so, not as an outage (outside test 127: "stopped answering")
    url = live.start_local_server("sd3-medium", "emulated:1x2xH200")
    try:
        own = live.local_server()
        at = _live_page(url)
        _clean(at)
        assert at.metric and live.stopped_local_server() is None
        at.button(key="live_stop_local").click().run()
        for _ in range(300):
            if live.stopped_local_server() is not None:
                break
            time.sleep(0.1)
        at.run()
        _clean(at)
        said = [i.value for i in at.info]
        assert not at.warning and len(said) == 1, (said, [w.value for w in at.warning])
        assert f"local server at {url} (process {own.pid}) was stopped from this page" in said[0], said
    finally:
        live.stop_local_server()


def test_a_connection_closed_without_an_answer_is_said_in_words():
    """Outside test: a server killed during a test prompt read "... failed (RemoteProtocolError)"."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def hang_up() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.close()  # the request read, no answer

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        with pytest.raises(live.LiveError, match="the server closed the connection without an answer"):
            live._exchange("POST", f"http://127.0.0.1:{listener.getsockname()[1]}", "/v1/images/generations",
                           timeout_s=10, cap_bytes=1024, json_body={"prompt": "x"})  # (after /healthz had answered)
    finally:
        listener.close()


def test_a_test_prompt_runs_beside_the_page_which_keeps_refreshing(emulated):
    """Outside test: a 200-step prompt held the page's script, so the cluster view (every 2 s) stood
    still until it ended (up to 300 s). Now the script returns at once and the view is drawn anew
    while the prompt runs; its result is shown once it is done."""
    slow = start_server(["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0.5"])
    try:
        at = _live_page(slow.url)
        at.number_input(key="live_steps_sd3-medium").set_value(150)  # emulated, at time scale 0.5: several wall seconds
        t0 = time.monotonic()
        at.button(key="live_send").click().run()
        _clean(at)
        assert time.monotonic() - t0 < 5 and any("is generating" in i.value for i in at.info)
        deadline = time.monotonic() + 20
        while True:  # the page again while the prompt runs: the cluster view shows it running (once the
            at.run()  # prompt's thread has sent it: on a busy host not by the first showing, CI)
            _clean(at)
            metrics = {m.label: m.value for m in at.metric}
            if metrics["Live requests"] == "1" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert metrics["Live requests"] == "1", metrics
        _generated(at)
        _clean(at)
        assert not at.error and any("sd3-medium" in m.value and "steps 150" in m.value for m in at.markdown)
    finally:
        slow.stop()
