"""The API key: with one, every route but ``GET /healthz`` answers 401 without it (FastAPI's own
``/docs``, ``/redoc`` and ``/openapi.json`` included); where the key comes from (environment, file,
the deprecated option) and that it never has to be on the command line; unguessable job ids.

The routes are enumerated from the app itself, so a route added later is checked without a change
here. The app runs in-process (emulated GPUs at zero cost, FastAPI's TestClient); the command-line
checks start real ``trident serve`` processes (127.0.0.1, port 0).
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tridentcore.bench.launch import start_server
from tridentcore.runtime.build import build_runtime
from tridentcore.server.app import ServerConfig, create_app
from tridentcore.server.auth import ApiKeyError, key_matches, load_api_key
from tridentcore.server.jobs import JOB_ID_PREFIX, new_job_id

KEY = "k-" + secrets.token_urlsafe(18)
GOOD = {"Authorization": f"Bearer {KEY}"}
WRONG = {
    "another key": {"Authorization": "Bearer not-the-key"},
    "the key plus a character": {"Authorization": f"Bearer {KEY}x"},
    "a prefix of the key": {"Authorization": f"Bearer {KEY[:-1]}"},
    "an empty bearer token": {"Authorization": "Bearer "},
    "another scheme": {"Authorization": f"Basic {KEY}"},
    "no scheme": {"Authorization": KEY},
    "another header": {"X-API-Key": KEY},
}
OPEN = {("GET", "/healthz")}
# what the API serves today: the enumeration must find at least these (so it cannot pass empty)
KNOWN = {("POST", "/v1/images/generations"), ("POST", "/v1/videos/generations"), ("POST", "/v1/requests"),
         ("GET", "/v1/requests"), ("GET", "/v1/requests/{job_id}"), ("GET", "/v1/requests/{job_id}/result"),
         ("GET", "/v1/requests/{job_id}/result/{index}"), ("DELETE", "/v1/requests/{job_id}"),
         ("GET", "/v1/cluster"), ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/healthz"),
         ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"), ("GET", "/openapi.json")}
MODELS = "sd3-medium,wan2.1-1.3b"
BODIES = {"/v1/images/generations": {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 2},
          "/v1/videos/generations": {"prompt": "x", "model": "wan2.1-1.3b", "frames": 5, "steps": 2},
          "/v1/requests": {"prompt": "x", "model": "sd3-medium", "size": "512x512", "steps": 2}}


def _routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, FastAPI's own included (HEAD aside)."""
    try:  # FastAPI >= 0.16x keeps included routers as branches of app.routes
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(app.routes))
    except ImportError:  # pragma: no cover - older FastAPI: app.routes are the routes
        routes = list(app.routes)
    found = set()
    for r in routes:
        path = getattr(r, "path", None)
        assert path is not None, f"a route without a path: {r!r}"
        for method in getattr(r, "methods", None) or {"WEBSOCKET"}:
            if method != "HEAD":
                found.add((method, path))
    return sorted(found)


def _call(client: TestClient, method: str, path: str, params: dict[str, str], headers: dict[str, str]):
    assert method != "WEBSOCKET", f"{path}: a WebSocket route; check it here"
    url = re.sub(r"\{(\w+)\}", lambda m: params.get(m.group(1), "x"), path)
    body = BODIES.get(path) if method == "POST" else None
    return client.request(method, url, json=body, headers=headers)


@pytest.fixture(scope="module")
def keyed():
    """An app with an API key over emulated GPUs at zero cost, and a finished job to read."""
    app = create_app(build_runtime(MODELS, "emulated:1x2xH200", time_scale=0.0), ServerConfig(api_key=KEY))
    with TestClient(app) as client:
        job = client.post("/v1/images/generations", json=BODIES["/v1/images/generations"], headers=GOOD)
        assert job.status_code == 200, job.text
        yield app, client, {"job_id": job.json()["id"], "index": "0"}


@pytest.fixture(scope="module")
def open_app():
    app = create_app(build_runtime(MODELS, "emulated:1x2xH200", time_scale=0.0), ServerConfig())
    with TestClient(app) as client:
        yield app, client


# ------------------------------------------------------------------------------ every route
def test_the_route_enumeration_finds_the_whole_api(keyed):
    app, _, _ = keyed
    assert KNOWN <= set(_routes(app)), KNOWN - set(_routes(app))


def test_without_the_key_every_route_but_healthz_is_401(keyed):
    app, client, params = keyed
    wrong = []
    for method, path in _routes(app):
        resp = _call(client, method, path, params, {})
        if (method, path) in OPEN:
            ok = resp.status_code == 200
        else:
            ok = (resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
                  and resp.headers.get("www-authenticate", "").startswith("Bearer"))
        if not ok:
            wrong.append(f"{method} {path}: {resp.status_code} {resp.text[:120]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("what", list(WRONG))
def test_a_wrong_key_is_401_on_every_route_but_healthz(keyed, what):
    app, client, params = keyed
    wrong = []
    for method, path in _routes(app):
        resp = _call(client, method, path, params, WRONG[what])
        expected = 200 if (method, path) in OPEN else 401
        if resp.status_code != expected:
            wrong.append(f"{method} {path}: {resp.status_code}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_the_key_opens_every_route(keyed):
    app, client, params = keyed
    wrong = []
    for method, path in _routes(app):
        resp = _call(client, method, path, params, GOOD)
        if resp.status_code == 401 or resp.status_code >= 500:
            wrong.append(f"{method} {path}: {resp.status_code} {resp.text[:120]}")
    assert not wrong, "\n".join(wrong)
    # and a few answers in full: the key gives what an open server gives
    assert params["job_id"] in [j["id"] for j in client.get("/v1/requests", headers=GOOD).json()["data"]]
    assert client.get(f"/v1/requests/{params['job_id']}/result", headers=GOOD).json()["state"] == "done"
    assert "trident_" in client.get("/metrics", headers=GOOD).text
    assert client.get("/openapi.json", headers=GOOD).json()["info"]["title"] == "TridentServe"
    assert "swagger" in client.get("/docs", headers=GOOD).text.lower()
    lower = {"authorization": f"bearer   {KEY}  "}  # the scheme in any case, spaces around the token
    assert client.get("/v1/cluster", headers=lower).status_code == 200


def test_paths_no_route_serves_and_bodies_are_checked_before_anything_else(keyed):
    _, client, _ = keyed
    assert client.get("/nothing-here").status_code == 401  # no hint of which paths exist
    assert client.get("/nothing-here", headers=GOOD).status_code == 404
    assert client.get("/healthz", headers=GOOD).status_code == 200
    big = b"x" * (4 << 20)  # over the body limit: 401 first, the body is never read
    resp = client.post("/v1/requests", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 401
    resp = client.post("/v1/requests", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 401  # no validation detail for a caller without the key


def test_without_a_key_the_server_is_open_as_before(open_app):
    app, client = open_app
    for path in ("/v1/cluster", "/v1/models", "/v1/requests", "/metrics", "/docs", "/openapi.json", "/healthz"):
        assert client.get(path).status_code == 200, path
    assert client.post("/v1/requests", json=BODIES["/v1/requests"]).status_code == 202


# ------------------------------------------------------------------------------ job ids
def test_job_ids_are_unguessable():
    ids = [new_job_id() for _ in range(100)]
    assert len(set(ids)) == 100
    assert all(i.startswith(JOB_ID_PREFIX) and re.fullmatch(r"[A-Za-z0-9_-]{16}", i[len(JOB_ID_PREFIX):]) for i in ids)
    assert not any(re.fullmatch(r"gen-\d+", i) for i in ids)


def test_jobs_of_a_server_get_random_ids_and_engine_ids_are_not_job_ids(open_app):
    _, client = open_app
    made = [client.post("/v1/requests", json=BODIES["/v1/requests"]).json()["id"] for _ in range(20)]
    assert len(set(made)) == 20 and not any(re.fullmatch(r"gen-\d+", i) for i in made)
    status = client.get(f"/v1/requests/{made[0]}").json()
    rid = status["items"][0]["id"]  # the engine's numeric request id: internal
    for guess in (str(rid), f"gen-{rid}", "gen-0", "gen-1", "0"):
        assert client.get(f"/v1/requests/{guess}").status_code == 404, guess


# ------------------------------------------------------------------------------ key sources
def test_key_matches_is_bearer_and_exact():
    assert key_matches("Bearer abc", "abc") and key_matches("bearer  abc ", "abc")
    for header in (None, "", "Bearer", "Bearer ab", "Bearer abcd", "Basic abc", "abc", "Bearerabc"):
        assert not key_matches(header, "abc"), header


def test_key_file_is_read_stripped_and_refused_when_empty_or_unreadable(tmp_path, caplog):
    f = tmp_path / "key"
    f.write_text(f"  {KEY}\n")
    f.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="tridentcore.server.auth"):
        assert load_api_key(None, str(f)) == KEY
    assert not caplog.records
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="tridentcore.server.auth"):
        assert load_api_key(None, str(f)) == KEY
    assert any("can be read by other users" in r.getMessage() and "644" in r.getMessage() for r in caplog.records)
    f.write_text(" \n\t\n")
    with pytest.raises(ApiKeyError, match="empty"):
        load_api_key(None, str(f))
    with pytest.raises(ApiKeyError, match="cannot read"):
        load_api_key(None, str(tmp_path / "missing"))
    with pytest.raises(ApiKeyError, match="cannot read|not a regular file"):
        load_api_key(None, str(tmp_path))
    with pytest.raises(ApiKeyError, match="not both"):
        load_api_key("k", str(f))
    assert load_api_key(" k ") == "k" and load_api_key("  ") is None and load_api_key(None) is None
    f.write_text("cl\u00e9\n")
    with pytest.raises(ApiKeyError, match="printable ASCII"):
        load_api_key(None, str(f))
    with pytest.raises(ApiKeyError, match="TRIDENT_API_KEY.*printable ASCII"):
        load_api_key("a\tb")


def test_cli_refuses_a_bad_key_file_and_two_keys_before_starting(tmp_path, caplog):
    from tridentcore.cli import app

    empty = tmp_path / "empty"
    empty.write_text("\n")
    base = ["serve", "--models", "sd3-medium", "--devices", "emulated:1xH200", "--port", "0"]
    got = CliRunner().invoke(app, [*base, "--api-key-file", str(empty)], env={"TRIDENT_API_KEY": ""})
    assert got.exit_code == 2 and "is empty" in got.output
    got = CliRunner().invoke(app, [*base, "--api-key-file", str(tmp_path / "missing")], env={"TRIDENT_API_KEY": ""})
    assert got.exit_code == 2 and "cannot read" in got.output
    with caplog.at_level(logging.WARNING):
        got = CliRunner().invoke(app, [*base, "--api-key", "k", "--api-key-file", str(empty)],
                                 env={"TRIDENT_API_KEY": ""})
    assert got.exit_code == 2 and "not both" in got.output
    assert any("--api-key is deprecated" in r.getMessage() and "ps" in r.getMessage() for r in caplog.records)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _needs_key(url: str, key: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/requests").status_code == 401
        assert client.get("/v1/requests", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def _clients_send_the_key(url: str, key: str) -> None:
    """The live bench's reads and the workbench's Live page, with and without the key."""
    from tridentcore.bench.live_procs import http_json
    from workbench import live

    assert http_json(f"{url}/v1/requests", 10.0)[0] == 401
    assert http_json(f"{url}/v1/requests", 10.0, key) == (200, {"object": "list", "data": []})
    with pytest.raises(live.LiveError, match="401.*give the server's API key"):
        live.fetch_cluster(url)
    with pytest.raises(live.LiveError, match="401.*not the server's"):
        live.fetch_models(url, "wrong")
    assert live.fetch_cluster(url, key)["devices"] and [m.id for m in live.fetch_models(url, key)] == ["sd3-medium"]


ARGS = ["--models", "sd3-medium", "--devices", "emulated:1x2xH200", "--time-scale", "0.01"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/cmdline")
def test_a_key_from_the_environment_or_a_file_is_not_on_the_command_line(tmp_path, monkeypatch):
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("TRIDENT_API_KEY", "ambient-" + KEY)  # not inherited: start_server drops it
    for how, server in (("env", lambda: start_server(ARGS, env={"TRIDENT_API_KEY": KEY})),
                        ("file", lambda: start_server([*ARGS, "--api-key-file", str(key_file)]))):
        srv = server()
        try:
            assert KEY not in _cmdline(srv.pid), how
            _needs_key(srv.url, KEY)
            if how == "env":
                _clients_send_the_key(srv.url, KEY)
        finally:
            srv.stop()
        assert "can be read by other users" not in srv.log()
    srv = start_server(ARGS)  # no key given: the ambient one is not the server's
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            assert client.get("/v1/requests").status_code == 200
    finally:
        srv.stop()


def test_the_deprecated_option_still_works_and_says_why_not_to_use_it():
    srv = start_server([*ARGS, "--api-key", KEY])
    try:
        _needs_key(srv.url, KEY)
        log = srv.log()
    finally:
        srv.stop()
    assert "--api-key is deprecated" in log and "ps" in log
