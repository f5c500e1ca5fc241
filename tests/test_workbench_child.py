"""The workbench's long computations in child processes (``workbench/child.py``): the same answers
as in the page's own process, errors as they were raised, a stop that ends the process at once, and
the shared cache of answers within its bounds."""

from __future__ import annotations

import os
import pickle
import signal
import time
from dataclasses import replace

import pytest

from tridentcore.core.policy import PolicyError
from workbench import child, data


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_simulation_in_a_child_is_the_one_made_here():
    scenario = replace(data.DEFAULT_SCENARIO, duration_s=120.0)
    with child.ChildCall(data.simulate_frames, scenario, "trident", 0.7) as call:
        got = call.result()
    here = data.simulate_frames(scenario, "trident", 0.7)
    assert got.requests.equals(here.requests) and got.spans.equals(here.spans)
    timing = {"planner_p99_ms", "planner_mean_ms", "planner_max_ms"}
    assert {k: v for k, v in got.summary.items() if k not in timing} == \
        {k: v for k, v in here.summary.items() if k not in timing}


def test_an_error_in_the_child_is_raised_here_as_it_was():
    with child.ChildCall(data.simulate_frames, data.DEFAULT_SCENARIO, "no-such-policy", 0.5) as call:
        with pytest.raises(PolicyError, match="unknown policy 'no-such-policy'"):
            call.result()


def test_stop_ends_a_long_simulation_at_once_and_a_killed_child_is_said():
    huge = replace(data.DEFAULT_SCENARIO, duration_s=40_000.0)  # 80,000 requests at 2 req/s: minutes
    call = child.ChildCall(data.simulate_frames, huge, "trident", 2.0)
    assert not call.ready(1.0) and _alive(call.pid)
    t0 = time.monotonic()
    call.stop()
    assert time.monotonic() - t0 < 3.0 and not _alive(call.pid)

    with child.ChildCall(data.simulate_frames, huge, "trident", 2.0) as call:
        time.sleep(0.5)
        os.kill(call.pid, signal.SIGKILL)  # (the kernel's OOM killer, say)
        with pytest.raises(RuntimeError, match="ended without an answer"):
            call.ready(10.0)


def test_the_cache_of_answers_keeps_within_its_bounds_and_gives_copies():
    cache = child.ResultCache(max_entries=3, max_bytes=10_000)

    def ok(value):
        return child._OK + pickle.dumps(value)

    cache.put("a", ok([1, 2, 3]))
    mine = cache.get("a")
    mine.append(4)
    assert cache.get("a") == [1, 2, 3]  # a reader's change is its own
    cache.put("big", ok(b"x" * 20_000))  # larger than the whole cache: not kept
    cache.put("err", child._ERROR + pickle.dumps(ValueError("no")))  # an error is not an answer to keep
    assert cache.get("big") is None and cache.get("err") is None and len(cache) == 1
    for key in "bcd":
        cache.put(key, ok(key * 10))
    assert cache.get("a") is None and [cache.get(k) for k in "bcd"] == ["b" * 10, "c" * 10, "d" * 10]
    cache.get("b")  # used last: "c", then "d", are now the least recently used
    overhead = len(ok(b"y" * 9_000)) - 9_000
    cache.put("e", ok(b"y" * (10_000 - len(ok("b" * 10)) - overhead)))  # with "b", exactly the bytes allowed
    assert cache.get("c") is None  # past the count
    assert cache.get("d") is None  # past the bytes
    assert cache.get("b") == "b" * 10 and cache.get("e") is not None


def test_run_all_runs_calls_side_by_side_in_order_and_a_stop_ends_every_child(monkeypatch):
    monkeypatch.setattr(child, "results", child.ResultCache())
    scenario = replace(data.DEFAULT_SCENARIO, duration_s=120.0)
    calls = [(data.simulate_frames, (scenario, p, 0.6)) for p in ("trident", "pipeline-static:degree=1", "trident-paper")]
    seen: list[tuple[int, list[int]]] = []
    got = child.run_all(calls, lambda done, running, s: seen.append((done, running)), parallel=2)
    assert [r.policy for r in got] == ["trident", "pipeline-static:degree=1", "trident-paper"]
    assert seen[0] == (0, [0, 1]) and max(len(r) for _, r in seen) == 2  # two at a time
    assert len(child.results) == 3
    seen.clear()
    again = child.run_all(calls, lambda *a: seen.append(a))  # all kept: no child, no wait
    assert seen == [] and [r.summary for r in again] == [r.summary for r in got]

    huge = replace(data.DEFAULT_SCENARIO, duration_s=40_000.0)

    class Stopped(BaseException):  # (what Streamlit raises in the page: not an Exception)
        pass

    def stop_after_a_second(done, running, seconds):
        if seconds > 1.0:
            raise Stopped

    real = child.ChildCall
    started: list[child.ChildCall] = []

    def recording(*a):
        started.append(real(*a))
        return started[-1]

    monkeypatch.setattr(child, "ChildCall", recording)
    with pytest.raises(Stopped):
        child.run_all([(data.simulate_frames, (huge, p, 2.0)) for p in ("trident", "trident-paper")],
                      stop_after_a_second, parallel=2)
    assert len(started) == 2 and not any(_alive(c.pid) for c in started)

    started.clear()
    with pytest.raises(PolicyError):  # one call's error ends the other's child too
        child.run_all([(data.simulate_frames, (huge, "trident", 2.0)), (data.simulate_frames, (huge, "nope", 1.0))],
                      lambda *a: None, parallel=2)
    assert len(started) == 2 and not any(_alive(c.pid) for c in started)
