"""The live engine on emulated devices, in process: every request ends once, records, cancellation,
the bounded queue, preemption at a step boundary, shutdown, and the store rows."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from tridentcore.core.events import Dispatch, Preempt, RequestArrived, StageFinished
from tridentcore.core.lifecycle import RequestState
from tridentcore.core.policy import Policy
from tridentcore.core.types import Shape
from tridentcore.profiles import load_profile
from tridentcore.runtime.build import SetupError, build_runtime, parse_devices
from tridentcore.runtime.engine import Accepted, Engine, EngineConfig, Refused, Submission
from tridentcore.runtime.workers import EmulatedWorker, WorkerPool

from emulated_workload import IMG, SMALL, mixed, run  # noqa: E402  (tests/, on sys.path under pytest)
from folder_profiles import tiny_sd3_profile_as  # noqa: E402

TERMINAL = {"done", "failed", "rejected", "cancelled"}


def check_records(engine: Engine, ids) -> None:
    """Exactly one terminal state per request, with a reason; spans cover every done request."""
    rows = {r.request_id: r for r in engine.request_rows()}
    assert set(rows) == set(ids)
    for rid in ids:
        row = rows[rid]
        assert row.state in TERMINAL and row.reason, row
        rec = engine.state.requests[rid]
        assert sum(1 for _, s in rec.history if s.terminal) == 1
        spans = [s for s in engine.spans if s.request_id == rid and s.outcome in ("done", "preempted")]
        if row.state == "done":
            stages = [s.stage for s in spans]
            assert stages[0] == "encode" and stages[-1] == "decode"
            steps = sorted((s.start_step, s.end_step) for s in spans if s.stage == "diffuse")
            assert steps[0][0] == 0 and steps[-1][1] == row.steps
            assert all(a[1] == b[0] for a, b in zip(steps, steps[1:]))  # contiguous pieces
            assert row.finish_s >= max(s.ended_s for s in spans) - 1e-9
    assert engine.state.requests.live == 0
    assert all(b is None for b in engine.state.busy)
    assert not engine.errors, list(engine.errors)


@pytest.mark.parametrize("policy", ["trident", "pipeline-static:degree=1", "pipeline-dynamic", "trident-paper"])
def test_emulated_mixed_workload_every_request_ends_once(policy):
    async def main():
        rt = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:2x4xH200", policy,
                           time_scale=0.0005 if policy == "trident-paper" else 0.0, strict=True)
        await rt.start()
        e = rt.engine
        ids = []
        for i in range(40):
            got = e.submit([mixed(i)])
            assert isinstance(got, Accepted)
            ids += got.ids
        outs = await asyncio.gather(*(e.wait(r) for r in ids))
        await e.shutdown(5)
        return e, ids, outs

    e, ids, outs = run(main())
    assert {o.state for o in outs} <= TERMINAL
    check_records(e, ids)
    assert Counter(o.state for o in outs)["done"] >= 1
    assert e.placements and all(p.action in ("place", "evict") for p in e.placements)
    assert all(o.result is None for o in outs)  # emulated devices make no pixels


def test_emulated_times_follow_the_cost_model():
    """At time_scale 0.05 the spans read (in engine seconds) close to the cost model's durations."""
    async def main():
        rt = build_runtime("sd3-medium", "emulated:1xH200", "pipeline-static:degree=1", time_scale=0.05, strict=True)
        await rt.start()
        e = rt.engine
        got = e.submit([Submission("sd3-medium", "x", Shape(512, 512, 1, 4))])
        await e.wait(got.ids[0])
        await e.shutdown(1)
        return e

    e = run(main())
    for sp in e.spans:
        assert sp.outcome == "done"
        run_s = sp.ended_s - sp.started_s
        assert run_s >= sp.predicted_s * 0.99
        assert run_s <= sp.predicted_s + 0.5  # wall jitter magnified 20x stays well under a second


def test_bounded_queue_refuses_past_max_queued(tmp_path):
    async def main():
        rt = build_runtime("sd3-medium", "emulated:1xH200", "pipeline-static:degree=1", time_scale=1.0,
                           max_queued=3, strict=True)
        await rt.start()
        e = rt.engine
        got = [e.submit([Submission("sd3-medium", "x", IMG, seed=i)]) for i in range(6)]
        too_many = e.submit([Submission("sd3-medium", "x", IMG)] * 2)
        await e.shutdown(0)
        return e, got, too_many

    e, got, too_many = run(main())
    accepted = [g for g in got if isinstance(g, Accepted)]
    refused = [g for g in got if isinstance(g, Refused)]
    assert len(accepted) == 4  # one running + three waiting
    assert refused and all(r.code == "queue_full" and r.retry_after_s > 0 for r in refused)
    assert isinstance(too_many, Refused)
    # the stored run says how many it turned away (they are never rows); `trident runs show` prints it
    assert json.loads(e.run_meta("r").config_json)["refused"] == {"queue_full": len(refused) + 2}
    from typer.testing import CliRunner

    from tridentcore.cli import app

    db = str(tmp_path / "r.duckdb")
    shown = CliRunner().invoke(app, ["runs", "show", e.write_store(db), "--db", db])
    assert f"refused before admission (not in its rows): {len(refused) + 2} queue_full" in shown.stdout, shown.output
    # shutdown without drain time failed the rest explicitly
    rows = e.request_rows()
    assert len(rows) == 4 and all(r.state == "failed" and "shut down" in r.reason for r in rows)
    assert [s.outcome for s in e.spans] == ["failed"]


def test_cancel_queued_and_running():
    async def main():
        rt = build_runtime("sd3-medium", "emulated:1xH200", "pipeline-static:degree=1", time_scale=0.02, strict=True)
        await rt.start()
        e = rt.engine
        a, b, c = (e.submit([Submission("sd3-medium", "x", SMALL, seed=i)]).ids[0] for i in range(3))
        await asyncio.sleep(0.005)
        assert e.describe(a)["state"] in ("encoding", "diffusing")
        assert e.cancel(b)  # queued
        while e.describe(a)["state"] != "diffusing" or e.describe(a)["steps_done"] == 0:
            await asyncio.sleep(0.001)
        assert e.cancel(a)  # running: ends now, its diffuse stops at a step boundary
        assert not e.cancel(a)
        outs = await asyncio.gather(*(e.wait(r) for r in (a, b, c)))
        while e.view.running_of(a) is not None:  # its diffuse stops at the next step boundary
            await asyncio.sleep(0.001)
        progress = e.describe(a)["steps_done"]
        await e.shutdown(5)
        return e, (a, b, c), outs, progress

    e, ids, outs, progress = run(main())
    assert [o.state for o in outs] == ["cancelled", "cancelled", "done"]
    assert all(o.reason == "cancelled by the client" for o in outs[:2])
    check_records(e, ids)
    a, b, _ = ids
    assert not [s for s in e.spans if s.request_id == b]  # never ran
    diffuse_a = [s for s in e.spans if s.request_id == a and s.stage == "diffuse"]
    assert len(diffuse_a) == 1 and diffuse_a[0].end_step < SMALL.steps  # stopped early, result dropped
    assert progress == diffuse_a[0].end_step > 0  # how far it got stays readable (it read 0 once it stopped)
    assert a not in e.results


@pytest.mark.parametrize("policy", ["trident", "pipeline-static:degree=1", "pipeline-dynamic", "trident-paper"])
def test_a_queued_request_cancelled_and_forgotten_at_once_leaves_the_policy_serving(policy):
    """Outside test 106: with ``keep_ended`` 0 a request cancelled while queued was forgotten in the same
    step; the policy, never told, still held it and looked it up on every later event (KeyError): nothing
    was dispatched again while /healthz said ok. The policy now hears ``RequestEnded`` first."""
    async def main():
        rt = build_runtime("sd3-medium", "emulated:1xH200", policy, time_scale=0.01, keep_ended=0)
        await rt.start()
        e = rt.engine
        ended = {}
        e.end_listeners.append(lambda rec: ended.setdefault(rec.id, rec.state.value))
        a, q = (e.submit([Submission("sd3-medium", "x", SMALL, seed=i)]).ids[0] for i in range(2))
        await asyncio.sleep(0.005)
        assert e.describe(q)["state"] == "queued"
        assert e.cancel(q)
        assert e.describe(q) is None  # forgotten at once
        await e.wait(a)
        c = e.submit([Submission("sd3-medium", "x", SMALL, seed=2)]).ids[0]
        await asyncio.wait_for(e.wait(c), 20)
        await e.shutdown(5)
        return e, [ended.get(r) for r in (a, q, c)]

    e, states = run(main())
    assert states == ["done", "cancelled", "done"]
    assert not e.errors, list(e.errors)


class _ScriptedPreempt(Policy):
    """Request 0 diffuses on GPU 0; when request 1 arrives, 0 is paused and resumed after 1."""

    name = "scripted"

    def start(self, view, models, now, expected=None):
        self.waiting = []
        return []

    def on_event(self, view, event, now):
        if isinstance(event, RequestArrived):
            rid = event.request.id
            if rid == 0:
                return [Dispatch("encode", (0,), (0,))]
            return [Preempt(0)] if view.request(0).state is RequestState.DIFFUSING else self._next(view)
        if isinstance(event, StageFinished):
            rid = event.request_ids[0]
            rec = view.request(rid)
            if event.stage == "encode":
                self.waiting.append(rid)
            elif event.stage == "diffuse" and rec.state is RequestState.DIFFUSED:
                return [Dispatch("decode", (rid,), (0,))]
            elif event.stage == "diffuse":  # paused
                self.waiting.append(rid)
            if event.stage == "decode" and rid == 1 or not view.running():
                return self._next(view)
        return self._next(view)

    def _next(self, view):
        if not view.is_idle(0):
            return []
        queued = [r.id for r in view.requests() if r.state is RequestState.QUEUED]
        if queued:
            return [Dispatch("encode", (queued[0],), (0,))]
        ready = sorted((r.id for r in view.requests() if r.state is RequestState.ENCODED), key=lambda r: -r)
        if ready:
            rec = view.request(ready[0])
            return [Dispatch("diffuse", (rec.id,), (0,), rec.steps_done, rec.spec.shape.steps)]
        return []


def test_preempt_pauses_at_a_step_boundary_and_resumes():
    async def main():
        cost = load_profile("h200").cost_model()
        (dev,) = parse_devices("emulated:1xH200")
        e = Engine(dev.cluster, cost, _ScriptedPreempt(), WorkerPool([EmulatedWorker(0)]), ["sd3-medium"],
                   gpu_kind="H200", config=EngineConfig(time_scale=0.05, strict=True))
        await e.start()
        first = e.submit([Submission("sd3-medium", "long", Shape(1024, 1024, 1, 40), slo_s=1e6)]).ids[0]
        while e.describe(first)["state"] != "diffusing":
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
        second = e.submit([Submission("sd3-medium", "urgent", SMALL, slo_s=1e6)]).ids[0]
        await asyncio.gather(e.wait(first), e.wait(second))
        await e.shutdown(1)
        return e, first, second

    e, first, second = run(main())
    check_records(e, [first, second])
    pieces = [s for s in e.spans if s.request_id == first and s.stage == "diffuse"]
    assert [p.outcome for p in pieces] == ["preempted", "done"]
    assert 0 < pieces[0].end_step == pieces[1].start_step < 40
    assert e.state.requests[first].preemptions == 1
    second_decode = next(s for s in e.spans if s.request_id == second and s.stage == "decode")
    assert second_decode.ended_s <= pieces[1].started_s + 1e-9  # the urgent one went first


def test_store_rows_match_the_engine(tmp_path):
    from tridentcore.store import query_readonly

    async def main():
        rt = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:1x4xH200", "trident", time_scale=0.0, strict=True)
        await rt.start()
        e = rt.engine
        ids = [r for i in range(12) for r in e.submit([mixed(i)]).ids]
        e.cancel(ids[-1])
        await asyncio.gather(*(e.wait(r) for r in ids))
        await e.shutdown(1)
        return e, ids

    e, ids = run(main())
    db = tmp_path / "live.duckdb"
    run_id = e.write_store(str(db))
    runs = query_readonly(db, "SELECT backend, policy, cluster FROM runs WHERE run_id = ?", [run_id])
    assert list(runs.itertuples(index=False, name=None)) == [("live", "trident", "1x4xH200")]
    req = query_readonly(db, "SELECT request_id, state FROM requests WHERE run_id = ? ORDER BY request_id", [run_id])
    assert list(req.itertuples(index=False, name=None)) == [(r.request_id, r.state) for r in e.request_rows()]
    n_spans = query_readonly(db, "SELECT count(*) AS n FROM stage_spans WHERE run_id = ?", [run_id])["n"][0]
    assert n_spans == len(e.spans)
    summary = query_readonly(db, "SELECT requests FROM run_summary WHERE run_id = ?", [run_id])
    assert int(summary["requests"][0]) == len(ids)


def test_setup_errors_name_every_problem():
    with pytest.raises(SetupError) as err:
        build_runtime("nope,sd3-medium", "emulated:8xH200", "no-such-policy", time_scale=-1)
    text = str(err.value)
    assert "nope" in text and "no-such-policy" in text and "time_scale" in text
    mixed = parse_devices("cpu:1,emulated:2x8xH200")
    assert [(d.kind, d.cluster.num_gpus) for d in mixed] == [("cpu", 1), ("emulated", 16)]
    with pytest.raises(SetupError, match="cpu is named 2 times"):
        parse_devices("cpu:1,cpu:2")
    with pytest.raises(SetupError, match="an empty entry"):
        parse_devices("cpu:1,,emulated:8xH200")
    with pytest.raises(SetupError, match="runs on none of the devices") as err:
        build_runtime("tiny-sd3,nope", "cpu:1,emulated:8xH200")
    assert "not in profile 'cpu'" in str(err.value) and "not in profile 'h200'" in str(err.value)
    with pytest.raises(SetupError, match="serve none of the models"):
        build_runtime("sd3-medium", "cpu:1,emulated:8xH200")
    with pytest.raises(SetupError, match="no 'cuda' devices"):
        build_runtime("tiny-sd3,sd3-medium", "cpu:1,emulated:8xH200", profile="cuda=h200")
    with pytest.raises(SetupError, match="unknown device kind"):
        parse_devices("tpu:4")
    with pytest.raises(SetupError, match="applies to emulated"):
        build_runtime("tiny-sd3", "cpu:1", time_scale=0.5)


def test_a_profile_measured_in_another_dtype_than_the_workers_run_is_warned_about(tmp_path, caplog):
    """`trident profile --dtype bfloat16` rows priced the float32 CPU workers unsaid (outside test 133: its
    diffuse 38 % slower than float32's): the rows now say their dtype, and a part whose workers load
    another is warned about at build time; rows that say none (the shipped ones), or the workers' own
    dtype, are not. Nothing is started: the workers are only built."""
    rows = tiny_sd3_profile_as("tiny-sd3", tmp_path / "plain.csv").read_text().splitlines()
    for dtype in ("bfloat16", "float32"):
        (tmp_path / f"{dtype}.csv").write_text("\n".join(
            [rows[0]] + [line.replace(",measured", f",measured (dtype {dtype})") for line in rows[1:]]) + "\n")
    # a file appended to in another dtype: only its rows in it are said (outside test 135: said as whole)
    (tmp_path / "mixed.csv").write_text("\n".join(
        [rows[0]] + [line.replace(",measured", f",measured (dtype {'bfloat16' if k < 3 else 'float32'})")
                     for k, line in enumerate(rows[1:])]) + "\n")
    warned = {}
    for name in ("plain", "bfloat16", "float32", "mixed"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tridentcore.runtime.build"):
            build_runtime("tiny-sd3", "cpu:1", profile=str(tmp_path / f"{name}.csv"))
        warned[name] = [r.getMessage() for r in caplog.records if r.name == "tridentcore.runtime.build"]
    assert warned["plain"] == warned["float32"] == []
    assert len(warned["bfloat16"]) == 1 and "measured tiny-sd3 in bfloat16, but the cpu workers run it in float32" \
        in warned["bfloat16"][0] and "trident profile --dtype float32" in warned["bfloat16"][0], warned
    assert len(warned["mixed"]) == 1 and f"measured 3 of the {len(rows) - 1} rows of tiny-sd3 in bfloat16, but" \
        in warned["mixed"][0], warned


def test_a_pipeline_folder_no_profile_prices_says_how_to_measure_it(tmp_path, monkeypatch):
    """A saved pipeline served without a profile of its own was "not in profile 'cpu'" and no more
    (outside test): the answer names the command that measures it."""
    folder = str(tmp_path / "my-sd3")
    (tmp_path / "my-sd3").mkdir()
    with pytest.raises(SetupError) as err:
        build_runtime(folder, "cpu:1")
    assert "not in profile 'cpu'" in str(err.value)
    assert f"measure it with `trident profile --model {folder} --device cpu --out FILE.csv` and serve with " \
           "`--profile FILE.csv`" in str(err.value)

    # measured as ./my-sd3, served as my-sd3 from the folder above it: the same folder (outside test 110:
    # told to measure it again); `trident cost` says the same
    profile = tiny_sd3_profile_as("./my-sd3", tmp_path / "my-sd3.csv")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SetupError) as err:
        build_runtime("my-sd3", "cpu:1", profile=str(profile))
    assert "'./my-sd3' there is this folder, written another way: serve it as --models ./my-sd3" in str(err.value)
    assert "measure it with" not in str(err.value)
    from typer.testing import CliRunner

    from tridentcore.cli.main import app

    got = CliRunner().invoke(app, ["cost", "--model", "my-sd3", "--stage", "diffuse", "--size", "64x64", "--profile",
                                   str(profile)])
    assert got.exit_code == 2 and "('./my-sd3' is this folder, written another way: give --model ./my-sd3)" in \
        got.output, got.output


def test_a_long_lived_engine_forgets_ended_requests_and_keeps_their_rows():
    """Past ``keep_ended`` the oldest ended requests leave the table (their store rows stay, complete)."""
    async def main():
        rt = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:1x4xH200", "trident", time_scale=0.0,
                           max_queued=10_000, strict=True, keep_ended=5)
        await rt.start()
        e = rt.engine
        ids = []
        for i in range(60):
            ids += e.submit([mixed(i)]).ids
            if i % 10 == 9:
                await asyncio.gather(*(e.wait(r) for r in ids[-10:]))
        await e.shutdown(5)
        return e, ids

    e, ids = run(main())
    assert len(e.state.requests) <= 5 and e.forgotten == len(ids) - len(e.state.requests)
    assert e.describe(ids[0]) is None and e.describe(ids[-1])["state"] == "done"
    rows = e.request_rows()
    assert sorted(r.request_id for r in rows) == sorted(ids) and all(r.state == "done" for r in rows)
    assert e.run_meta("r").rate_rps > 0 and not e._spans_of.keys() - set(e.state.requests._records)


def test_a_stopped_run_keeps_the_duration_it_stopped_at():
    """Outside test 113: a run's duration was read off the engine clock when it was stored, which runs on
    after the stop (at a time scale, 20x as fast while idle): a stored run of several parts read a wall
    time below its scale-1 part's duration, and its rate fell the later it was stored."""
    import time

    async def main():
        rt = build_runtime("sd3-medium", "emulated:1x4xH200", "trident", time_scale=0.05, strict=True)
        await rt.start()
        e = rt.engine
        ids = e.submit([mixed(i) for i in range(3)]).ids
        await asyncio.gather(*(e.wait(r) for r in ids))
        await e.shutdown(5)
        return e

    e = run(main())
    first = e.run_meta("r")
    time.sleep(0.3)  # (6 s of the emulated clock while idle)
    later = e.run_meta("r")
    assert later.duration_s == first.duration_s and later.rate_rps == first.rate_rps
    assert first.duration_s <= e.wall_s / 0.05 + 1e-9


@pytest.mark.parametrize("streaming", [False, True], ids=["no-db", "db"])
def test_engine_memory_stays_flat_when_it_keeps_no_records(streaming):
    """A server without --db (record off) forgets ended requests and keeps no rows; one with --db
    sends every row to its journal as it is made (``stream_records``) and keeps none either (it kept
    them all, about 2 KiB a request, for as long as it served): allocations stop growing once
    ``keep_ended`` is reached."""
    import gc
    import tracemalloc

    async def main():
        rt = build_runtime("sd3-medium", "emulated:1x2xH200", "pipeline-static:degree=1", time_scale=0.0,
                           max_queued=100_000, strict=True, keep_ended=200, record=streaming)
        await rt.start()
        e = rt.engine
        if streaming:
            e.stream_records()
        sizes = []
        for rounds in range(4):
            for _ in range(10):
                got = e.submit([Submission("sd3-medium", "x", SMALL, seed=i) for i in range(100)])
                await asyncio.gather(*(e.wait(r) for r in got.ids))
            gc.collect()
            sizes.append(tracemalloc.get_traced_memory()[0])
        await e.shutdown(1)
        return e, sizes

    tracemalloc.start()
    try:
        e, sizes = run(main())
    finally:
        tracemalloc.stop()
    assert e.forgotten == 4000 - 200 and e.spans == [] and len(e.request_rows()) == 200
    assert not streaming or {s.gpu for s in e.gpu_samples()} == {0, 1}
    # 1,000 more requests per round: kept, they would cost about 2 KiB each (about 2 MB a round)
    growth = sizes[3] - sizes[2]
    assert growth < 100_000, sizes


def test_a_full_queue_says_when_to_come_back_from_the_rate_requests_end():
    """Retry-After of a full queue: the wall seconds until the requests beyond the bound would have
    left, at the rate requests ended (here one at a time, 1.57 s each on one emulated GPU); the
    configured default (1 s) before two have ended."""
    async def main():
        rt = build_runtime("sd3-medium", "emulated:1xH200", "pipeline-static:degree=1", time_scale=1.0,
                           max_queued=2, strict=True)
        await rt.start()
        e = rt.engine
        first = [e.submit([Submission("sd3-medium", "x", IMG, seed=i)]) for i in range(4)]
        ids = [i for g in first if isinstance(g, Accepted) for i in g.ids]
        for rid in ids[:2]:
            await e.wait(rid, timeout_s=30)
        later = [e.submit([Submission("sd3-medium", "x", IMG, seed=i)]) for i in range(3)]
        await e.shutdown(0)
        return first, later

    first, later = run(main())
    assert [type(g) for g in first] == [Accepted] * 3 + [Refused]
    assert first[3].retry_after_s == 1.0  # nothing has ended yet: the default
    refused = [g for g in later if isinstance(g, Refused)]
    assert refused and all(g.code == "queue_full" for g in refused)
    assert 1.2 < refused[0].retry_after_s < 4.0, refused[0]  # one request beyond the bound: about 1.57 s


def test_a_policy_error_after_a_dispatch_still_sends_that_dispatch():
    """A non-strict engine (a server) outlives a policy bug; but one raised after a Dispatch of the same
    step was applied unwound the step, and that dispatch, marked running, never reached a worker: its
    GPU busy for ever and every later request queued behind it (outside review)."""
    from tridentcore.core.events import Fail

    async def main():
        rt = build_runtime("sd3-medium", "emulated:1xH200", "pipeline-static:degree=1", time_scale=0.01)
        e = rt.engine
        policy = e.core.policy
        decide = policy.on_event

        def buggy(view, event, now):  # the right dispatch, then an impossible Fail of the running request
            actions = decide(view, event, now)
            if isinstance(event, RequestArrived) and event.request.id == 0:
                assert any(isinstance(a, Dispatch) for a in actions)
                actions = [*actions, Fail(0, "bug")]
            return actions

        policy.on_event = buggy
        await rt.start()
        first = e.submit([Submission("sd3-medium", "x", SMALL, seed=1)]).ids[0]
        second = e.submit([Submission("sd3-medium", "y", SMALL, seed=2)]).ids[0]
        outs = await asyncio.wait_for(asyncio.gather(e.wait(first), e.wait(second)), 20)
        await e.shutdown(1)
        return e, outs

    e, outs = run(main())
    assert [o.state for o in outs] == ["done", "done"]
    assert any("PolicyBug" in m and "failed of running request 0" in m for m in e.errors), e.errors


def test_media_that_cannot_be_encoded_ends_its_request_failed():
    """A decode whose frames cannot be encoded for the client: the request ends failed with the reason
    (it was stored and counted done, while its client was told its result was no longer kept)."""
    import dataclasses

    from tridentcore.core.types import StageKind
    from tridentcore.runtime.tasks import Pixels

    async def main():
        rt = build_runtime("sd3-medium", "emulated:1xH200", "pipeline-static:degree=1", time_scale=0.0)
        e = rt.engine
        for worker in e.workers.workers:
            ran = worker.run

            async def broken(task, ran=ran):  # frames the encoder refuses (not an array)
                res = await ran(task)
                if task.stage == StageKind.DECODE and res.ok:
                    res = dataclasses.replace(res, outputs=tuple(Pixels(None, False) for _ in task.request_ids))
                return res

            worker.run = broken
        await rt.start()
        rid = e.submit([Submission("sd3-medium", "x", SMALL, seed=1)]).ids[0]
        out = await e.wait(rid)
        described = e.describe(rid)
        await e.shutdown(1)
        return e, rid, out, described

    e, rid, out, described = run(main())
    assert out.state == "failed" and out.result is None
    assert out.reason.startswith("its media could not be encoded (TypeError")
    assert described["state"] == "failed"
    (row,) = [r for r in e.request_rows() if r.request_id == rid]
    assert row.state == "failed" and row.reason == out.reason
    assert any(m.startswith(f"media of request {rid}: TypeError") for m in e.errors)


def test_a_streaming_engine_gives_the_gpu_samples_of_the_rows_it_streamed():
    """``stream_records`` keeps only what the GPU samples need: they are those the streamed rows make."""
    from tridentcore.core.recording import gpu_samples

    async def main():
        rt = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:1x4xH200", "trident", time_scale=0.002,
                           strict=True, keep_ended=5, record=True)
        await rt.start()
        e = rt.engine
        spans, placements = [], list(e.placement_rows())
        e.span_listeners.append(spans.append)
        e.placement_listeners.append(placements.append)
        e.stream_records()
        ids = [r for i in range(24) for r in e.submit([mixed(i)]).ids]
        await asyncio.gather(*(e.wait(r) for r in ids))
        end = e.now()
        got = e.core.recorder.gpu_samples(4, end)  # (at the same end: the clock runs on)
        await e.shutdown(1)
        return e, spans, placements, got, end

    e, spans, placements, got, end = run(main())
    assert e.spans == [] and e.placements == [] and len(e.request_rows()) == 5
    assert len({s.dispatch_id for s in spans}) > 24
    want = gpu_samples(spans, placements, {}, 4, end)
    assert [(s.t_s, s.gpu, s.busy) for s in got] == [(s.t_s, s.gpu, s.busy) for s in want]
    assert len(got) >= 4 * 3 and any(s.busy > 0 for s in got)
    # memory: the weights placed (as without activations) plus each dispatch's activations
    assert all(g.mem_gib >= w.mem_gib - 1e-9 for g, w in zip(got, want)) and any(
        g.mem_gib > w.mem_gib for g, w in zip(got, want))


def test_pipeline_static_starts_nothing_on_a_replica_with_a_gpu_down():
    """A worker of a pipeline-static replica lost while the replica was idle (kill -9, outside test):
    the next request was dispatched there anyway, failed as an invalid dispatch, and the replica then
    waited for it for ever: every later request routed there stayed queued, /healthz ok. Now new
    requests go to whole replicas, and a replica's queue waits for it to be whole again."""
    async def main(devices):
        rt = build_runtime("sd3-medium", devices, "pipeline-static:degree=2", time_scale=0.001)
        await rt.start()
        e = rt.engine
        e._worker_lost(1, "killed")  # replica 0 is GPUs 0 and 1
        ids = [e.submit([Submission("sd3-medium", "x", SMALL, seed=i)]).ids[0] for i in range(3)]
        await asyncio.sleep(0.2)
        waiting = [e.describe(r)["state"] for r in ids]
        e._worker_restored(1)
        outs = await asyncio.wait_for(asyncio.gather(*(e.wait(r) for r in ids)), 20)
        await e.shutdown(1)
        return e, waiting, outs

    for devices, waits, gpus in (("emulated:1x2xH200", True, {0, 1}), ("emulated:1x4xH200", False, {2, 3})):
        e, waiting, outs = run(main(devices))
        assert [o.state for o in outs] == ["done"] * 3, [(o.state, o.reason) for o in outs]
        assert not e.errors, e.errors
        assert (waiting == ["queued"] * 3) if waits else "done" in waiting, waiting
        assert {g for s in e.spans for g in s.gpus} == gpus


def test_a_run_of_several_kinds_stores_its_ray_address_and_logs_workers_by_device_id(monkeypatch):
    """Outside test 112: with ``--backend ray`` and several device kinds the stored run kept the worker
    kinds and restarts but not the Ray cluster's address (one kind's runs keep it); and a stage that
    failed on an emulated device numbered after a CPU worker was logged as ``worker 1`` for device 2
    (its index within its kind), beside a line that named it ``worker 2``."""
    from tridentcore.runtime import views
    from tridentcore.runtime.engine import _worker_name

    rt = build_runtime("tiny-sd3,sd3-medium", "cpu:1,emulated:1x2xH200")  # (not started: no worker runs)
    real = views.workers

    def on_ray(engine):  # what a part run by Ray actors reports (a Ray cluster costs a test 40 s to start)
        out = real(engine)
        return {**out, "kinds": [f"ray-{k}" for k in out["kinds"]], "ray_address": "127.0.0.1:26379"}

    monkeypatch.setattr(views, "workers", on_ray)
    workers = json.loads(rt.engine.run_meta("r").config_json)["workers"]
    assert workers == {"kinds": ["ray-cpu", "ray-emulated"], "ray_address": "127.0.0.1:26379", "restarts": 0}
    emulated = rt.engine.parts[1].workers.workers
    assert [_worker_name(w) for w in emulated] == ["worker 1", "worker 2"]

