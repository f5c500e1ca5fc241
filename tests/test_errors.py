"""One root for the project's errors: every error raised on purpose is a ``TridentError`` and
keeps the builtin base callers already catch."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from tridentcore.bench.live import LiveBenchError
from tridentcore.bench.runs import RunConfigError
from tridentcore.bench.spec import RunSpecError
from tridentcore.core.cluster import ClusterError
from tridentcore.core.costmodel import CostModelError
from tridentcore.core.driver import PolicyBug
from tridentcore.core.errors import SpecError, TridentError, WorkloadError
from tridentcore.core.lifecycle import TransitionError
from tridentcore.core.policy import PolicyError
from tridentcore.core.workload import WorkloadError as WorkloadErrorReexported
from tridentcore.formats.traces import TraceError
from tridentcore.profiles.format import ProfileError
from tridentcore.store import DuplicateRunError, RowsError, SchemaVersionError, StoreError, UnknownRunError

class _Steps(BaseModel):  # a body for the bare app below (module level: annotations are strings here)
    model_config = ConfigDict(strict=True)
    steps: int


ERRORS = [
    (SpecError, ValueError),
    (WorkloadError, ValueError),
    (ClusterError, ValueError),
    (CostModelError, LookupError),
    (TransitionError, RuntimeError),
    (ProfileError, ValueError),
    (RunConfigError, ValueError),
    (DuplicateRunError, ValueError),
    (UnknownRunError, KeyError),
    (SchemaVersionError, RuntimeError),
    (RowsError, ValueError),
    (RunSpecError, ValueError),
    (TraceError, ValueError),
    (PolicyBug, RuntimeError),
    (PolicyError, ValueError),
    (LiveBenchError, RuntimeError),
]


@pytest.mark.parametrize(("error", "builtin"), ERRORS, ids=lambda e: getattr(e, "__name__", str(e)))
def test_project_errors_share_one_root_and_keep_their_builtin_base(error, builtin):
    assert issubclass(error, TridentError) and issubclass(error, builtin)


def test_errors_cross_a_process_boundary_whole():
    """A benchmark's worker hands an error back pickled: class, message and attributes survive, though
    many take other arguments than their message (a process pool would otherwise break on them)."""
    import pickle

    from tridentcore.runtime.devices import SetupError

    for err in (SpecError("mix", ["a", "b"]), WorkloadError("nosuch", ["unknown mix"]), RunSpecError(["p", "q"]),
                SetupError(["no such device"]), ProfileError("p.csv", ["row 3"]), TraceError("t.jsonl", ["line 2"]),
                PolicyError("trident: bad"), UnknownRunError("run-x")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert getattr(back, "problems", None) == getattr(err, "problems", None)


def test_store_errors_have_their_own_base():
    assert all(issubclass(e, StoreError) for e in (DuplicateRunError, UnknownRunError, RowsError, SchemaVersionError))


def test_the_workload_module_re_exports_the_same_class():
    assert WorkloadErrorReexported is WorkloadError


def test_server_and_runtime_errors_too():
    pytest.importorskip("fastapi")
    from tridentcore.runtime.build import SetupError
    from tridentcore.server.errors import ApiError
    from tridentcore.bench.launch import LaunchError

    assert issubclass(SetupError, TridentError) and issubclass(SetupError, ValueError)
    assert issubclass(LaunchError, TridentError) and issubclass(LaunchError, RuntimeError)
    assert issubclass(ApiError, TridentError)


def test_every_answer_of_the_api_has_the_error_shape():
    """The handlers on a bare app: a route's ApiError, a body that fails the schema (422) or is not
    JSON (400), an unknown path (404), a method the path does not take (405, Allow names them all);
    an exception no handler expected (500); and the OpenAPI document's error responses are that shape,
    FastAPI's own 422 included."""
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tridentcore.server.errors import STATUS, ApiError, install_error_handlers, responses

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/things", responses=responses("invalid", "queue_full"))
    async def make(body: _Steps) -> dict:
        raise ApiError("queue_full", "full", retry_after_s=2.4)

    @app.get("/things")
    async def things(limit: int = 5) -> dict:
        return {"limit": limit}

    @app.get("/bug")
    async def bug() -> dict:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    resp = client.get("/bug")
    assert resp.status_code == 500 and resp.json()["error"]["code"] == "internal"
    assert "RuntimeError" in resp.json()["error"]["message"]
    resp = client.post("/things", json={"steps": 3})
    assert (resp.status_code, resp.headers["retry-after"]) == (429, "3")  # whole seconds, rounded up
    assert resp.json() == {"error": {"code": "queue_full", "message": "full", "retry_after_s": 2.4}}
    resp = client.post("/things", json={"steps": True})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "steps"
    resp = client.post("/things", content=b'{"steps": ', headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request"
    resp = client.get("/nothing")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = client.delete("/things")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert resp.headers["allow"] == "GET, HEAD, POST"
    assert {STATUS[c] for c in ("bad_request", "not_found", "method_not_allowed")} == {400, 404, 405}
    doc = app.openapi()
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert doc["paths"]["/things"]["post"]["responses"]["429"]["content"]["application/json"]["schema"] == ref
    assert doc["paths"]["/things"]["get"]["responses"]["422"]["content"]["application/json"]["schema"] == ref
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_a_size_is_ascii_digits_and_its_error_never_quotes_python():
    from tridentcore.core.types import parse_size

    assert parse_size("1024x768") == (1024, 768) and parse_size(" 64 X 64") == (64, 64)
    for text, said in (("\u0661\u0660\u0662\u0664x\u0665\u0661\u0662", "WIDTHxHEIGHT"), ("\u00b2x2", "WIDTHxHEIGHT"),
                       ("1" * 5000 + "x8", "is too large"), ("123456x8", "is too large")):
        with pytest.raises(ValueError, match=said) as info:
            parse_size(text)
        assert "int_max_str_digits" not in str(info.value) and len(str(info.value)) < 100


def test_a_seed_whose_items_run_past_the_seed_range_is_refused():
    """Outside test: seed 2147483647 with n 3 was served, its items seeded up to 2**31 + 1."""
    from fastapi.testclient import TestClient

    from tridentcore.runtime.build import build_runtime
    from tridentcore.server.app import create_app

    with TestClient(create_app(build_runtime("sd3-medium", "emulated:1xH200", time_scale=0.0))) as client:
        body = {"model": "sd3-medium", "prompt": "x", "size": "512x512", "steps": 2, "n": 3}
        got = client.post("/v1/images/generations", json={**body, "seed": 2**31 - 1})
        assert got.status_code == 422 and "give a seed of at most 2147483645" in got.text, got.text
        assert client.post("/v1/images/generations", json={**body, "seed": 2**31 - 3}).status_code == 200


def test_head_is_answered_as_get_without_a_body():
    from fastapi.testclient import TestClient

    from tridentcore.runtime.build import build_runtime
    from tridentcore.server.app import create_app

    with TestClient(create_app(build_runtime("sd3-medium", "emulated:1xH200", time_scale=0.0))) as client:
        for path in ("/healthz", "/v1/models", "/v1/requests"):
            got, head = client.get(path), client.head(path)
            assert head.status_code == got.status_code == 200, path
            assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"]
        assert client.head("/v1/requests/nosuch").status_code == 404


def test_a_json_key_given_twice_is_refused_naming_it():
    """`{"steps": 2, "steps": 3}` was served with 3 steps: the last value won without a word (outside
    test), where trace and spec files refuse a key given twice."""
    from fastapi.testclient import TestClient

    from tridentcore.runtime.build import build_runtime
    from tridentcore.server.app import create_app

    with TestClient(create_app(build_runtime("sd3-medium", "emulated:1xH200", time_scale=0.0))) as client:
        raw = b'{"model": "sd3-medium", "prompt": "a", "size": "512x512", "steps": 2, "steps": 3}'
        resp = client.post("/v1/requests", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid" and error["field"] == "steps"
        assert error["message"] == "steps: given twice in the body; give it once"
        nested = b'{"model": "sd3-medium", "prompt": "a", "extra": {"k": 1, "k": 2}, "prompt": "b"}'
        resp = client.post("/v1/images/generations", content=nested, headers={"content-type": "application/json"})
        assert resp.status_code == 422 and [p["field"] for p in resp.json()["error"]["problems"]] == ["k", "prompt"]
        empty = b'{"model": "sd3-medium", "prompt": "a", "": 1, "": 2}'
        resp = client.post("/v1/requests", content=empty, headers={"content-type": "application/json"})
        assert resp.json()["error"]["message"] == '"": given twice in the body; give it once'  # (it read ": given")
        once = raw.replace(b', "steps": 3', b"")
        assert client.post("/v1/requests", content=once, headers={"content-type": "application/json"}).status_code == 202
        broken = client.post("/v1/requests", content=b'{"steps": ', headers={"content-type": "application/json"})
        assert broken.status_code == 400  # (not JSON: the framework's answer, as before)


def test_hostile_bodies_get_short_answers_saying_why():
    """Outside test: 111,789 unknown keys in a 1 MB body got an 11 MB 422 (each key listed twice) and
    held the server about 0.25 s per answer; a million-character model name was echoed whole; JSON
    nested 100,000 deep got "There was an error parsing the body"; a gzip body was read as text."""
    import gzip
    import json

    from fastapi.testclient import TestClient

    from tridentcore.runtime.build import build_runtime
    from tridentcore.server.app import create_app
    from tridentcore.server.errors import MAX_BODY_KEYS, MAX_PROBLEMS

    json_type = {"content-type": "application/json"}
    with TestClient(create_app(build_runtime("sd3-medium", "emulated:1xH200", time_scale=0.0))) as client:
        wide = json.dumps({"prompt": "x", **{f"k{i}": 0 for i in range(60_000)}}).encode()
        resp = client.post("/v1/images/generations", content=wide, headers=json_type)
        assert resp.status_code == 422 and len(resp.content) < 1000, len(resp.content)
        assert resp.json()["error"]["message"] == (f"body: an object of 60001 keys; a request's objects have at "
                                                   f"most {MAX_BODY_KEYS}")
        # under the key bound, the framework's problems: the first 20 listed, the rest counted
        some = json.dumps({"prompt": "x", **{f"k{i}": 0 for i in range(MAX_BODY_KEYS - 1)}}).encode()
        error = client.post("/v1/images/generations", content=some, headers=json_type).json()["error"]
        assert len(error["problems"]) == MAX_PROBLEMS and error["more_problems"] == MAX_BODY_KEYS - 1 - MAX_PROBLEMS
        assert error["message"].endswith(f"; and {MAX_BODY_KEYS - 1 - MAX_PROBLEMS} more problems")
        resp = client.post("/v1/images/generations", json={"prompt": "x", "model": "m" * 1_000_000})
        assert resp.status_code == 404 and len(resp.content) < 300
        deep = b"[" * 100_000 + b"]" * 100_000
        resp = client.post("/v1/images/generations", content=deep, headers=json_type)
        assert resp.status_code == 400 and "nested too deeply" in resp.json()["error"]["message"]
        body = json.dumps({"model": "sd3-medium", "prompt": "a", "size": "512x512", "steps": 2}).encode()
        for encoded in (gzip.compress(body), body):  # gzip, or plain but labelled gzip: neither read
            resp = client.post("/v1/requests", content=encoded, headers={**json_type, "content-encoding": "gzip"})
            assert resp.status_code == 415 and resp.json()["error"]["code"] == "unsupported_encoding", resp.text
        assert client.post("/v1/requests", content=body, headers={**json_type, "content-encoding": "identity"}
                           ).status_code == 202


def test_a_body_that_does_not_arrive_in_time_gets_408_and_frees_the_request():
    """A client that sends its headers and then stalls (or trickles) gets 408 ``body_timeout`` in the
    error shape, and the app never sees the request."""
    import asyncio

    from tridentcore.server.errors import BodyLimit

    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    async def main():
        chunks = [{"type": "http.request", "body": b'{"prompt": ', "more_body": True}]

        async def receive():
            if chunks:
                return chunks.pop()
            await asyncio.sleep(3600)  # the rest never comes

        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/requests", "headers": [(b"content-length", b"100")]}
        t0 = asyncio.get_running_loop().time()
        await BodyLimit(app, max_bytes=1000, timeout_s=0.2)(scope, receive, send)
        return sent, asyncio.get_running_loop().time() - t0

    sent, took = asyncio.run(main())
    assert not seen and 0.2 <= took < 2.0
    start, body = sent[0], sent[-1]
    assert start["status"] == 408
    import json

    err = json.loads(body["body"])["error"]
    assert err["code"] == "body_timeout" and "11 bytes came" in err["message"]


def test_a_body_still_arriving_when_the_server_stops_gets_503_at_once():
    """A stalled body is answered 503 ``shutting_down`` as soon as the server begins to stop, not
    held until uvicorn cancels it with a plain-text 500; a body that begins after that is refused
    without being read."""
    import asyncio
    import json

    from tridentcore.server.errors import BodyLimit, BodyWaits

    async def app(scope, receive, send):
        raise AssertionError("the app never sees the request")

    async def main():
        async def receive():
            await asyncio.sleep(3600)  # the body never comes

        sent, later = [], []

        async def send(message):
            sent.append(message)

        async def send_later(message):
            later.append(message)

        waits = BodyWaits()
        limit = BodyLimit(app, max_bytes=1000, timeout_s=30, waits=waits)
        scope = {"type": "http", "method": "POST", "path": "/v1/requests", "headers": [(b"content-length", b"100")]}
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, waits.stop)
        t0 = loop.time()
        await limit(scope, receive, send)
        took = loop.time() - t0
        await limit(scope, receive, send_later)
        return sent, later, took, waits

    sent, later, took, waits = asyncio.run(main())
    assert 0.2 <= took < 1.0 and not waits.tasks
    for answer in (sent, later):
        assert answer[0]["status"] == 503 and (b"connection", b"close") in answer[0]["headers"]
        assert json.loads(answer[-1]["body"])["error"]["code"] == "shutting_down"
