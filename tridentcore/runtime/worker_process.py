"""What runs inside a worker process (or a Ray actor): loading and warming up the pipelines, the
process's message loop, and running one task for real (torch imported inside the functions).

``slowdown`` K (``trident serve --slowdown K``, a testing aid on cpu devices) makes the slot a K
times slower device: after computing, it waits (K - 1) x the time it measured, per denoising step
in a diffuse, so a preemption still stops it at a step boundary. The wait is a sleep (spinning
would slow the host's other workers too) and ``StageResult.wall_s`` includes it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

from ..core.types import StageKind
from .parallel_worlds import Worlds
from .residency import Residency
from .sigint import STOP_SIGNALS, ignore_signals
from .tasks import ModelCard, Pixels, StageResult, StageTask, failure, is_oom

__all__ = ["load_pipelines", "run_task", "worker_main"]


class ParentGone(Exception):
    """The worker's parent (the server) is gone: its pipe broke as a step's progress was sent. The
    task in hand ends there, and the process with it (outside test: workers killed with their server
    computed on for 7-19 s, to their stage's end; on a GPU, a long stage's whole length)."""


def _slice(value, i: int):
    return value[i:i + 1].clone()


def run_task(pipes: dict, cards: dict, task: StageTask, stop_flag, residency: Residency | None = None,
             slowdown: float = 1.0, worlds=None, on_step=None) -> StageResult:
    """Run one task inside a worker process (torch imported there); an allocation failure comes back as
    a value (``oom``), which the engine reports to the policy as ``StageFailed(oom=True)``.
    ``slowdown``: take that many times the computed time (the module's docstring). ``worlds``: the
    process's :class:`~.parallel_worlds.Worlds` (a diffuse with ``task.world`` runs sequence-parallel).
    ``on_step(dispatch_id, steps_reached)``: called after each denoising step of a diffuse (by its lead)."""
    try:
        if residency is not None:
            residency.sync(task)
        return _execute_stage(pipes, task, stop_flag, slowdown, worlds, on_step)
    except Exception as exc:  # noqa: BLE001 - only allocation failures are values here; the rest propagate
        if not is_oom(exc):
            raise
        result = failure(exc)
        if task.fault:
            result = StageResult(error=f"{result.error} (fault injected by --inject-oom)", oom=True)
        return result


def _provoke_oom() -> None:
    """A real allocation failure from torch's allocator (``--inject-oom``): more bytes than any address space."""
    import torch

    torch.empty((1 << 62,), dtype=torch.uint8)


def _slow(slowdown: float, since: float) -> None:
    """``--slowdown K``: wait (K - 1) x the time computed since ``since`` (nothing at K = 1)."""
    if slowdown > 1.0:
        time.sleep((slowdown - 1.0) * (time.perf_counter() - since))


def _execute_stage(pipes: dict, task: StageTask, stop_flag, slowdown: float = 1.0, worlds=None,
                   on_step=None) -> StageResult:
    import torch

    pipe = pipes[task.model]
    dev = pipe.device  # where the stage computes; inputs and outputs cross processes in host memory
    host = dev.type == "cpu"

    def out(t):
        return t if host else t.cpu()

    t0 = time.perf_counter()
    n = len(task.request_ids)
    if task.fault == "oom":
        _provoke_oom()
    if task.stage == StageKind.ENCODE:
        emb = pipe.encode(list(task.prompts), list(task.negative_prompts))
        outputs = tuple({k: out(_slice(v, i)) for k, v in emb.items()} for i in range(n))
        _slow(slowdown, t0)
        return StageResult(0, outputs, wall_s=time.perf_counter() - t0)
    if task.stage == StageKind.DIFFUSE:
        return _diffuse(pipe, task, stop_flag, slowdown, worlds, t0, out, on_step)
    latents = torch.cat(list(task.inputs))
    pixels = out(pipe.decode(latents, tiled=task.tiled))
    video = pipe.limits.video  # a video is an animated WebP, one of a single frame too (served as image/webp)
    # the frames, not their media: the engine encodes those off this device's time (tasks.Pixels)
    frames = tuple(Pixels((pixels[i] if pixels[i].ndim == 4 else pixels[i][None]).clone(), video) for i in range(n))
    _slow(slowdown, t0)
    return StageResult(0, frames, wall_s=time.perf_counter() - t0)


def _diffuse(pipe, task: StageTask, stop_flag, slowdown: float, worlds, t0: float, out, on_step=None) -> StageResult:
    """The diffuse of one dispatch, step by step (a stop is checked at each boundary); with
    ``task.world``, this process is one member of a sequence-parallel group (``parallel_worlds``):
    every member runs the same steps on its share of the tokens, the lead decides each stop and
    broadcasts it, and only the lead returns latents. A degree the shape or the model cannot take
    (a UNet, indivisible tokens or heads) runs on the lead alone: every member sees the same task, so
    all decide that alike, without a collective."""
    import contextlib

    import torch

    dev = pipe.device
    n = len(task.request_ids)
    # requests of one batch share model and shape; guidance may differ: one sub-batch per value
    groups: dict[float | None, list[int]] = {}
    for i, g in enumerate(task.guidances):
        groups.setdefault(g, []).append(i)
    state = []
    for g, idx in groups.items():
        embs = [task.inputs[i][0] for i in idx]
        emb = {k: torch.cat([e[k] for e in embs]).to(dev) for k in embs[0]}
        lat = None
        if task.start_step > 0:
            lat = torch.cat([task.inputs[i][1] for i in idx]).to(dev)
        state.append([g, idx, emb, lat])
    spec, group, lead = task.world, None, True
    split = contextlib.nullcontext()
    if spec is not None and len(spec.members) > 1:
        from ..pipelines.parallel import agree, degree_problems, sequence_parallel, transformer_of

        lead = spec.rank == 0
        text = state[0][2].get("prompt_embeds")
        if degree_problems(pipe, task.height, task.width, task.frames, len(spec.members),
                           None if text is None else int(text.shape[1])):
            if not lead:
                return StageResult(task.start_step, (), wall_s=time.perf_counter() - t0)  # the lead runs it alone
        else:
            group = worlds.join(spec, dev)
            split = sequence_parallel(transformer_of(pipe), group)
    reached = task.start_step
    shape = (task.height, task.width, task.frames)
    try:
        with split:
            for step in range(task.start_step, task.end_step):
                t_step = time.perf_counter()
                for entry in state:
                    g, idx, emb, lat = entry
                    entry[3] = pipe.diffuse(emb, shape, seed=[task.seeds[i] for i in idx], steps=task.steps,
                                            guidance=g, start_step=step, end_step=step + 1, latents=lat)
                _slow(slowdown, t_step)  # per step: a preemption still stops the slower device at a boundary
                reached = step + 1
                if on_step is not None and lead and reached < task.end_step:
                    on_step(task.dispatch_id, reached)
                stop = stop_flag.value == task.dispatch_id and reached < task.end_step
                if group is not None and reached < task.end_step:
                    stop = agree(group, stop, dev)
                if stop:
                    break
    except BaseException:
        if group is not None:
            worlds.leave()  # a broken world is abandoned (the engine forgets its key too)
        raise
    if not lead:
        return StageResult(reached, (), wall_s=time.perf_counter() - t0)
    outputs: list = [None] * n
    for g, idx, emb, lat in state:
        for j, i in enumerate(idx):
            outputs[i] = out(_slice(lat, j))
    return StageResult(reached, tuple(outputs), wall_s=time.perf_counter() - t0,
                       degree=1 if group is None else len(spec.members))


def load_pipelines(models: Sequence[str], threads: int, device: str = "cpu",
                   sources: dict[str, str] | None = None) -> tuple[dict, dict[str, ModelCard]]:
    """Load and warm up the pipelines of one slot (a worker process or a Ray actor).

    ``models`` are the names served; ``sources`` maps a name to the pipeline it runs when they differ
    (``sd3-medium`` -> ``arch:sd3-medium`` on a GPU). On ``cuda:I`` pipelines are bfloat16, built on the
    GPU, then moved to host memory: no weights stay on the GPU until the placement plan puts them there.

    Warm-up runs a one-step generation per model: first calls pay one-off costs the profile
    does not show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(threads)
    from ..pipelines import load_pipeline, served_dtype

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(device)
    pipes = {}
    for m in models:
        src = (sources or {}).get(m, m)
        pipes[m] = load_pipeline(src, device=device, dtype=served_dtype(device))
    from pathlib import Path

    from ..pipelines.folder import fingerprint

    cards = {}
    for m, p in pipes.items():
        lim = p.limits
        src = Path((sources or {}).get(m, m)).expanduser()
        cards[m] = ModelCard(m, lim.video, lim.min_size, lim.max_size, lim.size_multiple, lim.frames_multiple,
                             lim.max_frames, p.default_steps, lim.max_prompt_tokens,
                             fingerprint(src) if src.is_dir() else "")
    for m, p in pipes.items():
        card = cards[m]
        size = max(card.min_size, 32)
        emb = p.encode(["warm-up"], [""])
        p.decode(p.diffuse(emb, (size, size, 1 + card.frames_multiple if card.video else 1), steps=2, end_step=1))
        if cuda:  # back to host memory; the device stays the pipeline's compute device
            p.to("cpu")
            p.device = torch.device(device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return pipes, cards


def worker_main(slot: int, models: Sequence[str], conn, stop_flag, threads: int, device: str = "cpu",
                 sources: dict[str, str] | None = None, slowdown: float = 1.0, tmp_dir: str | None = None) -> None:
    """Entry point of a worker process (``slowdown``: the module's docstring). It ignores SIGINT and
    SIGTERM: its parent stops it (``process_worker``), after draining on it; a Ctrl-C at the terminal,
    or a SIGTERM to the process group (``kill -TERM -PGID``, systemd), reaches every process of the
    group, and a worker that obeyed it would lose the work the server drains. With its parent gone
    (killed) it ends at the next step boundary of a diffuse in hand (:class:`ParentGone`), else after
    its task in hand, when the pipe closes. ``tmp_dir``: its temporary files
    (the socket multiprocessing shares tensors through) go there, a folder its parent removes when it
    ends: a killed worker cannot remove its own."""
    ignore_signals(STOP_SIGNALS)
    if tmp_dir:
        import multiprocessing
        import shutil
        import tempfile
        from multiprocessing import util

        os.environ["TMPDIR"] = tempfile.tempdir = tmp_dir
        # multiprocessing's folder too (the socket its resource sharer sends tensors through): this
        # process was handed its parent's with the rest of its configuration, so its socket went to the
        # server's folder and stayed there after a kill
        multiprocessing.current_process()._config.pop("tempdir", None)
        # removed as it ends, after multiprocessing's own folder in it (exit priority -100): a parent
        # killed with SIGKILL cannot remove it, and this process then ends when the pipe closes
        util.Finalize(None, shutil.rmtree, args=(tmp_dir,), kwargs={"ignore_errors": True}, exitpriority=-200)
    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions)

    try:
        pipes, cards = load_pipelines(models, threads, device, sources)
        residency = Residency(pipes, device) if device.startswith("cuda") else None
        worlds = Worlds()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which gives up on this slot
        with contextlib.suppress(OSError):  # (its parent gone meanwhile: nobody to tell)
            conn.send(("broken", slot, f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ready", slot, cards))
    except OSError:  # its parent is gone: nothing to serve
        return

    def on_step(dispatch_id: int, reached: int) -> None:  # progress, for the API's steps_done
        try:
            conn.send(("step", dispatch_id, reached))
        except (BrokenPipeError, OSError):
            raise ParentGone(f"worker {slot}: its parent is gone (step {reached} of dispatch {dispatch_id})") from None

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "stop":
            break
        task: StageTask = msg[1]
        try:
            with torch.inference_mode():
                result = run_task(pipes, cards, task, stop_flag, residency, slowdown, worlds, on_step)
        except ParentGone:
            break
        except Exception as exc:  # noqa: BLE001 - an expected outcome, reported as a value
            result = failure(exc)
        try:
            conn.send(("result", task.dispatch_id, result))
        except (BrokenPipeError, OSError):
            break
