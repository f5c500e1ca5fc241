"""``trident`` is work-conserving (issue 14, point 1; the degree change of issue 13, point 2): idle GPUs
speed up a running diffuse, which gives them back at a step boundary when new work needs them.

Simulated on one node of 8 H200s (``core/policies/trident_elastic.py``); the live engine runs the same
core, so ``tests/test_parity.py`` (every policy, emulated and CPU workers) covers the live side, and
``tests/test_degree_change.py`` shows a diffuse resumed at another degree gives the same image.
"""

from __future__ import annotations

import dataclasses

import pytest

from tridentcore.core.cluster import parse_cluster
from tridentcore.core.policy import make_policy
from tridentcore.core.types import Shape
from tridentcore.core.workload import RequestSpec, make_slo_fn
from tridentcore.profiles import load_profile
from tridentcore.sim.engine import simulate

H200 = load_profile("h200").cost_model()
NODE = parse_cluster("1x8xH200")
BIG = Shape(2048, 2048, 1, 28)
slo = make_slo_fn(H200, 3.0, 8)


def _req(i: int, arrival: float, shape: Shape = BIG, model: str = "flux-dev") -> RequestSpec:
    return RequestSpec(i, model, "p", shape, i, None, slo(model, shape), arrival)


def _diffuses(res, rid: int) -> list[tuple[int, int, int, str]]:
    return sorted((s.start_step, s.end_step, s.degree, s.outcome) for s in res.spans
                  if s.request_id == rid and s.stage == "diffuse")


def test_alone_a_request_takes_the_fastest_degree_worth_its_gpus():
    wide = simulate(NODE, H200, make_policy("trident"), [_req(0, 0.0)])
    narrow = simulate(NODE, H200, make_policy("trident:wide=false"), [_req(0, 0.0)])
    assert _diffuses(wide, 0) == [(0, 28, 8, "done")]
    assert _diffuses(narrow, 0)[0][2] < 8  # its efficient degree: fewer GPU-seconds, slower
    assert wide.requests[0].finish_s < narrow.requests[0].finish_s


@pytest.mark.parametrize("arrival", [1.0, 4.0])
def test_a_widened_diffuse_shrinks_at_a_step_boundary_for_new_work_and_grows_back(arrival):
    """The first 2048² request runs on all 8 GPUs (6.9 s alone); a second arrives after 1 s or after 4 s
    (more than half its steps done): the first is paused at its next step boundary and resumes at once
    on part of its GPUs (the second starts long before the first would have ended); when the second
    ends, the first grows again. Every step runs exactly once. (The 4 s case once waited for the whole
    run: the boundary was reckoned from the decision's time plus the steps done since the start.)"""
    res = simulate(NODE, H200, make_policy("trident"), [_req(0, 0.0), _req(1, arrival)])
    assert {r.state for r in res.requests} == {"done"}
    first = _diffuses(res, 0)
    assert first[0][2] == 8 and first[0][3] == "preempted"  # shrunk
    assert first[1][2] < 8  # resumed narrower
    assert [p[0] for p in first[1:]] == [p[1] for p in first[:-1]] and first[-1][1] == 28
    second_start = min(s.started_s for s in res.spans if s.request_id == 1 and s.stage == "diffuse")
    alone_end = simulate(NODE, H200, make_policy("trident"), [_req(0, 0.0)]).requests[0].finish_s
    assert second_start < alone_end - 1.0  # it did not wait for the first to finish
    pause = [s for s in res.spans if s.request_id == 0 and s.stage == "diffuse"][0]
    assert pause.ended_s - arrival < 2 * (pause.ended_s - pause.started_s) / pause.end_step  # within a step or so
    if len(first) > 2:  # grown back once the second was done
        assert first[-1][2] > first[1][2]
    # unwidened, nothing is paused: the second waits for GPUs the first never held
    plain = simulate(NODE, H200, make_policy("trident:wide=false"), [_req(0, 0.0), _req(1, arrival)])
    assert all(p[3] == "done" for p in _diffuses(plain, 0))


def test_a_narrow_diffuse_grows_when_gpus_go_idle():
    """Two 2048² requests at once share the node; when the smaller one's decode frees GPUs the other
    grows onto them at its next step boundary (the GPUs hold its weights: no load)."""
    small = Shape(1024, 1024, 1, 28)
    res = simulate(NODE, H200, make_policy("trident"), [_req(0, 0.0), _req(1, 0.0, small)])
    pieces = _diffuses(res, 0)
    assert len(pieces) >= 2 and pieces[-1][2] > pieces[0][2], pieces
    assert {r.state for r in res.requests} == {"done"}


def test_a_waiting_diffuse_starts_on_the_idle_part_of_its_group_and_grows():
    """``grow`` (opt-in): on two GPUs, a 480p x 33 video takes one (``spread=0``: the fewest GPU-seconds);
    a 720p one arriving next needs both to meet its SLO (one alone takes 243 s against 223). With
    ``grow`` it starts at once on the idle GPU, is paused at a step boundary when the other frees and
    resumes on both: every step once, both within their SLO, the 720p one done earlier than when it waits."""
    wan = "wan2.1-1.3b"
    two = parse_cluster("1x2xH200")
    reqs = [_req(0, 0.0, Shape(480, 832, 33, 50), wan), _req(1, 1.0, Shape(720, 1280, 81, 50), wan)]
    waits = simulate(two, H200, make_policy("trident:spread=0,wide=false"), reqs)
    grows = simulate(two, H200, make_policy("trident:spread=0,wide=false,grow=true"), reqs)
    assert [(p[2], p[3]) for p in _diffuses(waits, 1)] == [(2, "done")]
    pieces = _diffuses(grows, 1)
    assert [(p[2], p[3]) for p in pieces] == [(1, "preempted"), (2, "done")], pieces
    assert pieces[0][0] == 0 and pieces[0][1] == pieces[1][0] > 0 and pieces[1][1] == 50
    first = min(s.started_s for s in grows.spans if s.request_id == 1 and s.stage == "diffuse")
    busy_until = max(s.ended_s for s in grows.spans if s.request_id == 0 and s.stage == "diffuse")
    assert first < busy_until  # it did not wait for the second GPU
    done = {r.request_id: r for r in grows.requests}
    assert all(r.state == "done" and r.finish_s <= r.deadline_s for r in grows.requests)
    assert done[1].finish_s < {r.request_id: r for r in waits.requests}[1].finish_s - 3.0
    # opt-in: turning it on by default changes every table of trident's results (re-run them first)
    assert make_policy("trident").opts["grow"] is False


def test_a_loose_slo_widens_while_more_of_the_cluster_is_busy():
    """Under a loose SLO (3x the no-queue latency, >= ``loose``) a narrow diffuse is grown onto idle GPUs
    while the unwidened work holds up to ``wide_loose`` (0.7) of them, not only ``wide_below`` (0.5):
    five flux requests within 2 s on 8 GPUs, the 1024² and a 2048² one started at one GPU grow at a step
    boundary, and the last to finish does so 2 s sooner. Under a tight SLO (1.5x) the bound stays
    ``wide_below``: the same decisions either way."""
    arrivals = [(1536, 0.0), (1536, 1.2), (1024, 1.5), (2048, 1.7), (2048, 2.0)]

    def run(scale: float, policy: str):
        slo_at = make_slo_fn(H200, scale, 8)
        reqs = [RequestSpec(i, "flux-dev", "p", Shape(w, w, 1, 28), i, None, slo_at("flux-dev", Shape(w, w, 1, 28)), t)
                for i, (w, t) in enumerate(arrivals)]
        res = simulate(NODE, H200, make_policy(policy), reqs)
        assert all(r.state == "done" and r.finish_s <= r.deadline_s for r in res.requests)
        return res, [r.finish_s - r.arrival_s for r in res.requests]

    loose, loose_lat = run(3.0, "trident")
    held, held_lat = run(3.0, "trident:wide_loose=0.5")  # as trident decided before wide_loose
    assert max(_diffuses(loose, 3), key=lambda p: p[1])[2] > max(_diffuses(held, 3), key=lambda p: p[1])[2]
    assert len(_diffuses(loose, 2)) > len(_diffuses(held, 2))  # grown at a step boundary
    assert max(loose_lat) < max(held_lat) - 2.0 and sum(loose_lat) < sum(held_lat)
    low, _ = run(3.0, "trident:wide_loose=0.2")  # never below wide_below: a loose SLO widens at least as far
    assert [_diffuses(low, i) for i in range(5)] == [_diffuses(held, i) for i in range(5)]
    tight, _ = run(1.5, "trident")
    tight_held, _ = run(1.5, "trident:wide_loose=0.5")
    assert [_diffuses(tight, i) for i in range(5)] == [_diffuses(tight_held, i) for i in range(5)]


def test_a_widened_diffuse_is_not_shrunk_to_become_the_longer_wait_when_the_newcomer_can_wait():
    """A 512² request arrives 5 s into a 2048² run on all 8 GPUs: waiting about 2 s for them it still
    meets its deadline, while shrinking the first (26 of 28 steps left at half the degree) would make
    the first the longer of the two. ``shrink_tail`` keeps the first whole: the longer latency is lower
    (tail first, once the deadlines are safe); without it the mean-only test shrinks it."""
    small = Shape(512, 512, 1, 28)
    reqs = [_req(0, 0.0), _req(1, 5.0, small)]
    kept = simulate(NODE, H200, make_policy("trident"), reqs)
    shrunk = simulate(NODE, H200, make_policy("trident:shrink_tail=false"), reqs)
    assert _diffuses(kept, 0) == [(0, 28, 8, "done")]
    assert _diffuses(shrunk, 0)[0][3] == "preempted"
    for res in (kept, shrunk):
        assert all(r.state == "done" and r.finish_s <= r.deadline_s for r in res.requests)
    def longest(res):
        return max(r.finish_s - r.arrival_s for r in res.requests)
    assert longest(kept) < longest(shrunk) - 0.3
    # a newcomer that would miss its deadline by waiting still gets the GPUs (attainment first)
    early = simulate(NODE, H200, make_policy("trident"), [_req(0, 0.0), _req(1, 1.0, small)])
    assert _diffuses(early, 0)[0][3] == "preempted"
    assert all(r.finish_s <= r.deadline_s for r in early.requests)


def test_a_request_past_saving_takes_the_idle_gpus_while_only_late_work_is_left():
    """A request that cannot meet its deadline any more (an SLO below what it takes alone; live, one
    admitted and then made late by tens of ms of server overhead) ran at degree 1 on an idle node:
    its SLO is lost, and its latency is then what is at stake (the objective: attainment, then
    latency, then GPU-seconds). While only late work runs and waits, it takes the idle GPUs, as
    any request does, and is shrunk for new work; with ``late_wide=false``, degree 1 as before.
    Behind a request that can still make it, it is not widened."""
    hopeless = RequestSpec(0, "flux-dev", "p", BIG, 0, None, 0.5, 0.0)
    wide = simulate(NODE, H200, make_policy("trident"), [hopeless])
    narrow = simulate(NODE, H200, make_policy("trident:late_wide=false"), [hopeless])
    assert [d[2] for d in _diffuses(wide, 0)] == [8]
    assert [d[2] for d in _diffuses(narrow, 0)] == [1]
    assert wide.requests[0].finish_s < narrow.requests[0].finish_s / 3
    # a request that can make its deadline arrives while the late one runs wide: it gets GPUs at a step
    # boundary, and meets its deadline
    res = simulate(NODE, H200, make_policy("trident"), [hopeless, _req(1, 1.0)])
    (late, ontime) = sorted(res.requests, key=lambda r: r.request_id)
    assert ontime.finish_s <= ontime.deadline_s and late.finish_s > late.deadline_s
    assert _diffuses(res, 0)[0][2] == 8 and _diffuses(res, 0)[0][3] == "preempted", _diffuses(res, 0)
    # arriving while a request that can make it runs: one GPU while that one runs, the idle ones after
    res = simulate(NODE, H200, make_policy("trident"), [_req(1, 0.0), RequestSpec(0, "flux-dev", "p", BIG, 0, None,
                                                                                  0.5, 0.05)])
    assert [d[2] for d in _diffuses(res, 0)] == [1, 8], _diffuses(res, 0)
    ontime = [r for r in res.requests if r.request_id == 1][0]
    assert ontime.finish_s <= ontime.deadline_s and max(d[1] for d in _diffuses(res, 1)) == 28


@pytest.mark.parametrize("steps_after", [1.5, 3])
def test_with_shrink_grown_a_diffuse_just_widened_gives_gpus_back_to_new_work_after_a_step(steps_after):
    """A 2048² request grows from 4 to 8 GPUs when a 1024² one ends (2.6 s in); a 1024² request with a
    6 s SLO arrives 1.5 or 3 of its steps later. Waiting for the GPUs (until 7.25 s) it misses its
    deadline, and it did: a paused diffuse was not paused again for 10 of its steps, which guarded
    against pause cycles without progress but also kept the GPUs it had just taken while idle (in the
    latency table, image-video x1.5 at 25 %: a 768² image waited 2.1 s for a video widened 0.4 s
    before it arrived). Now (``shrink_grown``, the default) one widened by its last pause is shrunk after
    one step at its new degree while the running work holds at most ``grown_below`` of the GPUs
    unwidened (0.3; here the 2048² request's unwidened degree is 2 of 8); ``shrink_grown=false`` keeps
    the guard, as does ``shrink_grown`` once the running work holds more (``grown_below=0.2``), both
    without ``shrink_urgent`` (the next test)."""
    small = Shape(1024, 1024, 1, 28)
    newcomer = RequestSpec(2, "flux-dev", "p", small, 2, None, 6.0, 2.6 + steps_after * 0.233)
    reqs = [_req(0, 0.0), _req(1, 0.0, small), newcomer]
    res = simulate(NODE, H200, make_policy("trident:shrink_urgent=false"), reqs)
    old = simulate(NODE, H200, make_policy("trident:shrink_grown=false,shrink_urgent=false"), reqs)
    bound = simulate(NODE, H200, make_policy("trident:grown_below=0.2,shrink_urgent=false"), reqs)
    assert [p[2:] for p in _diffuses(bound, 0)] == [p[2:] for p in _diffuses(old, 0)]
    for r in (res, old):
        assert [p[2] for p in _diffuses(r, 0)][:2] == [4, 8]  # grown when the 1024² request ended
    assert all(r.state == "done" and r.finish_s <= r.deadline_s for r in res.requests)
    assert [p[2:] for p in _diffuses(res, 0)] == [(4, "preempted"), (8, "preempted"), (4, "done")]
    shrunk_at = sorted(s.ended_s for s in res.spans if s.request_id == 0 and s.stage == "diffuse")[1]
    assert shrunk_at - newcomer.arrival_s < 2 * 0.233  # at its next step boundary or so
    late = [r for r in old.requests if r.request_id == 2][0]
    assert late.finish_s > late.deadline_s and _diffuses(old, 0)[-1][2:] == (8, "done")


@pytest.mark.parametrize(("slo_s", "steps_after"), [(6.0, 3), (4.5, 7)])
def test_with_shrink_urgent_a_diffuse_just_widened_gives_gpus_back_to_a_request_that_would_miss_unless_near_saturation(
        slo_s, steps_after):
    """The scenario above with the load bound shut (``grown_below=0.2``: the running work holds more, so
    without ``shrink_urgent`` the 10-step guard stands and the newcomer misses its SLO).
    ``shrink_urgent`` (the default) lets a diffuse widened by its last pause give the GPUs back after
    one step however many GPUs the running work holds, but only for a waiting request that would miss
    its deadline by waiting, and only while the work arriving is below ``urgent_load`` (0.5) of the
    GPUs: the newcomer then meets it, also where it can only at a wider degree than its cheapest
    (4.5 s: an outside test found the option idle there when it asked whether the cheapest degree
    could still make it); one that would meet its deadline waiting (a 60 s SLO) still waits. The
    three requests here arrive as 3.55 GPUs' worth of work (GPU-seconds at their cheapest degrees over
    the first 10 s): with ``urgent_load=0.4`` (3.2 of 8 GPUs) that counts as near saturation, and the
    guard stands (at any load, fair goodput at SLO 1.5 fell: image-video 0.434 to 0.425 req/s)."""
    small = Shape(1024, 1024, 1, 28)
    newcomer = RequestSpec(2, "flux-dev", "p", small, 2, None, slo_s, 2.6 + steps_after * 0.233)
    reqs = [_req(0, 0.0), _req(1, 0.0, small), newcomer]
    guarded = simulate(NODE, H200, make_policy("trident:grown_below=0.2,shrink_urgent=false"), reqs)
    busy = simulate(NODE, H200, make_policy("trident:grown_below=0.2,urgent_load=0.4"), reqs)
    urgent = simulate(NODE, H200, make_policy("trident:grown_below=0.2"), reqs)
    for r in (guarded, busy):
        late = [q for q in r.requests if q.request_id == 2][0]
        assert late.finish_s > late.deadline_s and _diffuses(r, 0)[-1][2:] == (8, "done")
    assert all(r.state == "done" and r.finish_s <= r.deadline_s for r in urgent.requests)
    assert [p[2:] for p in _diffuses(urgent, 0)] == [(4, "preempted"), (8, "preempted"), (4, "done")]
    relaxed = reqs[:2] + [dataclasses.replace(newcomer, slo_s=60.0)]
    waits = simulate(NODE, H200, make_policy("trident:grown_below=0.2"), relaxed)
    assert _diffuses(waits, 0)[-1][2:] == (8, "done")
