"""A request whose diffuse changes degree mid-way, live on ``cpu:2`` (issue 13).

A small policy scripts the dispatches: encode on device 0, the diffuse in two pieces at different
degrees (2 then 1, or 1 then 2), decode on the last piece's lead. tiny-flux's FlowMatch scheduler
keeps no history between steps, so a diffuse resumed at another degree on other devices must give
the image of an uninterrupted degree-1 run (the split changes float rounding only). The spans name
each piece's devices, and a piece whose input was on other devices is charged its transfer
(``ClusterState.dispatch_cost``). The live report log, replayed through the simulator with a fresh
copy of the same policy, gives identical spans.
"""

from __future__ import annotations

import asyncio
import io

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch")

from tridentcore.core.events import Dispatch, Fail, RequestArrived, StageFailed, StageFinished  # noqa: E402
from tridentcore.core.policies.common import place_everything  # noqa: E402
from tridentcore.core.policy import Policy  # noqa: E402
from tridentcore.core.types import Shape, StageKind  # noqa: E402
from tridentcore.runtime.api import Submission  # noqa: E402
from tridentcore.runtime.build import build_runtime  # noqa: E402
from tridentcore.sim.replay import compare, replay  # noqa: E402

LONG_SLO_S = 10_000.0
SHAPE = Shape(64, 64, 1, 4)  # 16 image tokens, 2 heads: degree 2 divides both
# per request (in submission order): the diffuse's pieces as (devices, end step)
PIECES = (
    (((0,), 4),),  # uninterrupted, degree 1: the reference image
    (((0, 1), 2), ((1,), 4)),  # degree 2 on (0, 1), then degree 1 on (1,): a non-lead member resumes it
    (((1,), 2), ((0, 1), 4)),  # degree 1 on (1,), then degree 2 on (0, 1): the latents move to a group
)


class Scripted(Policy):
    """Dispatches each request's stages exactly as ``PIECES`` says (one request at a time)."""

    name = "scripted-degrees"

    def start(self, view, models, now, expected=None):
        self.pieces: dict[int, tuple] = {}
        return place_everything(view, models)

    def on_event(self, view, event, now):
        if isinstance(event, RequestArrived):
            self.pieces[event.request.id] = PIECES[event.request.id]
            return [Dispatch(StageKind.ENCODE, (event.request.id,), (0,))]
        if isinstance(event, StageFailed):
            return [Fail(rid, event.reason) for rid in event.request_ids]
        if not isinstance(event, StageFinished) or event.stage == StageKind.DECODE:
            return []
        rid = event.request_ids[0]
        rec = view.request(rid)
        if event.stage == StageKind.DIFFUSE and rec.steps_done >= rec.spec.shape.steps:
            return [Dispatch(StageKind.DECODE, (rid,), event.gpus[:1])]
        gpus, end = next((g, e) for g, e in self.pieces[rid] if e > rec.steps_done)
        return [Dispatch(StageKind.DIFFUSE, (rid,), gpus, rec.steps_done, end)]


def _pixels(png: bytes):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


async def _serve():
    rt = build_runtime("tiny-flux", "cpu:2", "pipeline-static:degree=1", strict=True, log_reports=True)
    rt.engine.policy = Scripted()
    await rt.start()
    e = rt.engine
    try:
        outs = []
        for _ in PIECES:  # one at a time: the script never finds a device busy
            rid = e.submit([Submission("tiny-flux", "a red cube", SHAPE, seed=3, slo_s=LONG_SLO_S)]).ids[0]
            outs.append(await e.wait(rid, 120))
        return e, outs
    finally:
        await e.shutdown(5)


def test_a_diffuse_resumed_at_another_degree_gives_the_uninterrupted_image_and_replays_identically():
    e, outs = asyncio.run(asyncio.wait_for(_serve(), 300))
    assert [o.state for o in outs] == ["done"] * 3, [o.reason for o in outs]
    assert e.workers.worlds.parallel_runs == 2  # both degree-2 pieces really ran split
    reference = _pixels(outs[0].result)
    for out in outs[1:]:
        diff = np.abs(_pixels(out.result) - reference).mean()
        assert diff <= 1.0, (out.request_id, diff)

    def diffuse(rid):
        return [s for s in e.spans if s.request_id == rid and s.stage == "diffuse"]

    assert [(s.gpus, s.degree, s.start_step, s.end_step, s.outcome) for s in diffuse(1)] == [
        ((0, 1), 2, 0, 2, "done"), ((1,), 1, 2, 4, "done")]
    assert [(s.gpus, s.degree, s.start_step, s.end_step, s.outcome) for s in diffuse(2)] == [
        ((1,), 1, 0, 2, "done"), ((0, 1), 2, 2, 4, "done")]
    # transfers: the embeddings leave device 0 for (0, 1) or (1,); the latents of (1,) move to (0, 1);
    # the latents of (0, 1) are already on device 1 (every member ends a step with the full latents)
    first, second = diffuse(1)
    assert first.transfer_s > 0 and second.transfer_s == 0
    first, second = diffuse(2)
    assert first.transfer_s > 0 and second.transfer_s > 0
    assert [s.transfer_s for s in diffuse(0)] == [0.0]

    sim = replay(e.core, Scripted())
    parity = compare(e.request_rows(), e.spans, e.placements, sim)
    assert parity.exact, parity.first_difference
    assert [(s.dispatch_id, s.transfer_s, s.degree) for s in sim.spans] == [
        (s.dispatch_id, s.transfer_s, s.degree) for s in e.spans]


def test_denoisers_csv_bounds_each_tiny_model_by_the_heads_its_kernel_splits():
    """The cost model's degree rule is the kernel's (``pipelines/parallel.py::degree_problems``): for
    every tiny model, denoisers.csv's heads are its transformer's, and a degree fails on heads exactly
    when ``CostModel.allows_degree`` refuses it (a UNet refuses every degree > 1)."""
    from tridentcore.pipelines import MODELS, load_pipeline
    from tridentcore.pipelines.parallel import degree_problems, transformer_of
    from tridentcore.profiles import load_profile

    cost = load_profile("cpu").cost_model()
    tiny = [m for m in MODELS if m.startswith("tiny-")]
    assert set(cost.models()) == set(tiny)
    for model in tiny:
        pipe = load_pipeline(model)
        tr = transformer_of(pipe)
        assert cost.heads.get(model) == (None if tr is None else int(tr.config.num_attention_heads)), model
        frames = 5 if pipe.limits.video else 1  # 256x256 (x5): token counts every degree up to 8 divides
        for d in (2, 3, 4, 8):
            problems = degree_problems(pipe, 256, 256, frames, d)
            on_heads = any("attention heads" in p for p in problems)
            assert (on_heads or tr is None and bool(problems)) == (not cost.allows_degree(model, d)), (model, d, problems)


async def _serve_degree_4():
    rt = build_runtime("tiny-flux", "cpu:4", "pipeline-static:degree=4", strict=True, log_reports=True)
    await rt.start()
    e = rt.engine
    try:
        rid = e.submit([Submission("tiny-flux", "a red cube", SHAPE, seed=3, slo_s=LONG_SLO_S)]).ids[0]
        return e, await e.wait(rid, 120)
    finally:
        await e.shutdown(5)


@pytest.mark.slow
def test_pipeline_static_degree_4_runs_tiny_flux_on_two_of_its_replica_live_as_simulated():
    """tiny-flux has 2 heads: a replica of 4 ``cpu`` workers runs its diffuse on the first 2, really
    split (not on the lead alone), and the simulator, replaying the log, prices exactly that."""
    e, out = asyncio.run(asyncio.wait_for(_serve_degree_4(), 300))
    assert out.state == "done", out.reason
    assert [(s.stage, s.gpus) for s in e.spans] == [("encode", (0, 1, 2, 3)), ("diffuse", (0, 1)),
                                                   ("decode", (0, 1, 2, 3))]
    assert e.workers.worlds.parallel_runs == 1
    sim = replay(e.core)
    parity = compare(e.request_rows(), e.spans, e.placements, sim)
    assert parity.exact, parity.first_difference
