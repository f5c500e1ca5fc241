"""``trident models``, ``generate``, ``profile`` and ``cost``: pipelines, stage profiles, the cost model.

Heavy modules (torch, diffusers) are imported inside the commands that need them.

About 530 lines, one job (the commands about a model's pipelines and costs): they share the bounds
of their options (sizes, frames, degrees, threads) and the deferred heavy imports; ``profile`` is the
largest, measuring or folding a stored run (``--from-run``).
"""

from __future__ import annotations

import math

import typer

from ..core.defaults import (DEFAULT_DB, DEFAULT_PROFILE, MAX_FRAMES, MAX_GPUS_PER_NODE, MAX_GUIDANCE,
                             MAX_PROFILE_BATCH, MAX_PROMPT_CHARS, MAX_SEED, MAX_SIDE_PX)
from ..core.types import STAGES, StageKind
from ..runtime.devices import host_available_gib as _available_gib  # (a name the tests replace)
from .common import EXIT_INTERRUPTED, check_out, fail, given, note_running, quiet_libraries, setup_logging

__all__ = ["cost", "generate", "models", "profile"]

MAX_THREADS = 1024  # profile --threads (a million made OpenBLAS fail to start its threads: a segfault)


def models() -> None:
    """List the built-in pipelines, one line each."""
    from ..pipelines import MODELS

    width = max(len(n) for n in MODELS)
    for info in MODELS.values():
        typer.echo(f"{info.name:<{width}}  {info.kind:<5}  {info.description}")
    typer.echo(f"{'<path or hub id>':<{width}}  any    a diffusers SD3, Flux, SD/SDXL or Wan pipeline (from_pretrained)")


def _check_device(device: str, degree: int = 1) -> None:
    """``--device`` checked before any model loads: ``cpu``, ``cuda`` or ``cuda:I``, with the CUDA
    devices it names visible (``cuda:I`` to ``cuda:I+degree-1`` at a degree); else one line, exit 2."""
    kind, colon, index = device.strip().partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        fail(f"--device {device}: unknown device; valid: cpu, cuda, cuda:I")
    if kind == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA device is visible (torch.cuda.is_available() is False)")
    first, count = int(index or 0), torch.cuda.device_count()
    last = first + degree - 1
    if last >= count:
        needs = f"cuda:{first}" if degree == 1 else f"cuda:{first}..cuda:{last} (degree {degree})"
        fail(f"--device {device}: {needs} is not visible; {count} CUDA device{'s' if count != 1 else ''} "
             f"visible ({'cuda:0' if count == 1 else f'cuda:0..cuda:{count - 1}'})")


def _host_memory_problem(models: list[str], device: str, dtype: str, processes: int = 1) -> str | None:
    """An ``arch:*`` model built on the CPU takes its full size in host memory: why it cannot fit in
    the memory available now (its weights by the shipped H200 profile's measurement, in bfloat16,
    twice that in float32, once per process), or None. An outside test: ``profile --model
    arch:sd3-medium`` took a 23 GiB host to 22 GiB before it was stopped. Linux only (elsewhere: None).
    ValueError for a dtype the pipelines do not take (said before a size is guessed from it)."""
    from ..pipelines import DTYPE_BYTES, MODELS, check_dtype
    from ..profiles import load_profile

    check_dtype(dtype)  # (ValueError: said before a size is guessed from it)
    if device.strip() != "cpu":
        return None

    rows = None
    for name in dict.fromkeys(models):
        info = MODELS.get(name)
        if info is None or not name.startswith("arch:") or info.profile_name is None:
            continue
        if rows is None:
            rows = load_profile(DEFAULT_PROFILE).rows
        per_stage: dict[str, float] = {}
        for r in rows:
            if r.model == info.profile_name:
                per_stage[r.stage] = max(per_stage.get(r.stage, 0.0), r.weights_gib)
        need = sum(per_stage.values()) * DTYPE_BYTES[dtype] / 2 * processes
        free = _available_gib()
        if free is not None and need > 0.9 * free:
            times = f" x {processes} processes" if processes > 1 else ""
            return (f"{name} in {dtype} on the CPU needs about {need:.1f} GiB of host memory for its weights "
                    f"({sum(per_stage.values()):.1f} GiB in bfloat16 by the {DEFAULT_PROFILE} profile{times}); "
                    f"{free:.1f} GiB is available: use a GPU (--device cuda), a tiny-* model"
                    + (", or --dtype bfloat16" if DTYPE_BYTES[dtype] > 2 else ""))
    return None


def generate(
    prompt: str = typer.Option(..., help="What to draw."),
    out: str = typer.Option(..., help="Output file: .png/.jpg/.webp for images, .webp/.gif for video."),
    model: str = typer.Option("tiny-sd3", help="Pipeline name (`trident models`), directory or hub id."),
    size: str = typer.Option("256x256", help="WIDTHxHEIGHT, as in the OpenAI images API."),
    steps: int = typer.Option(None, min=1, max=200, help="Denoising steps (default: the model's)."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Noise seed (0..2^31-1): the same seed gives the same bytes."),
    frames: int = typer.Option(None, min=1, help="Frames (video models)."),
    guidance: float = typer.Option(None, help="Guidance scale (default: the model's)."),
    negative_prompt: str = typer.Option(None, help="Negative prompt (CFG models)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:i."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16 (fp32, bf16, fp16)."),
    fps: int = typer.Option(8, min=1, max=50, help="Frames per second of an animation (at most 50: a GIF counts "
                                                   "its frames' delays in 1/100 s)."),
    degree: int = typer.Option(1, min=1, help="Run the diffuse sequence-parallel (Ulysses) over K local processes: "
                                              "gloo on cpu, NCCL on cuda (cuda:0..K-1). Transformer models only; K "
                                              "must divide the attention heads and the image tokens."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Generate one image or animation from a prompt.

    Runs encode -> diffuse -> decode for the prompt and writes the image or animation. With
    --degree K the diffuse runs on K processes (this one the lead, which encodes and decodes).
    """
    setup_logging(verbose)
    quiet_libraries()
    import time

    from ..core.types import parse_size
    from ..pipelines import check_model_name, load_pipeline

    try:
        check_model_name(model)  # (a typo is said before torch and diffusers are imported: 5 s)
    except ValueError as exc:
        fail(str(exc))
    from ..pipelines.media import check_output_path, save_output
    from ..pipelines.staged_base import ANY_MODEL

    _check_device(device, degree)
    try:
        problem = _host_memory_problem([model], device, dtype, degree)
    except ValueError as exc:
        fail(f"--dtype: {exc}")
    if problem:
        fail(problem)
    # the API's bounds (an empty or a 5,000-character prompt was drawn here and refused there)
    if not prompt.strip():
        fail("--prompt must not be empty")
    for name, text in (("--prompt", prompt), ("--negative-prompt", negative_prompt or "")):
        if len(text) > MAX_PROMPT_CHARS:
            fail(f"{name} has {len(text):,} characters; at most {MAX_PROMPT_CHARS:,} (the API's bound)")
    if guidance is not None and not (math.isfinite(guidance) and 0.0 <= guidance <= MAX_GUIDANCE):
        # (inf made a black image, nan and -5 no guidance at all, 1e308 a traceback on tiny-flux)
        fail(f"--guidance must be a finite number in [0, {MAX_GUIDANCE:g}] (got {guidance:g})")
    from ..bench.live_procs import sigterm_interrupts, stopping_signal

    # SIGTERM ends it as Ctrl-C does: it stops its members itself and says nothing was written (outside test
    # 122: killed where it stood, exit 143 without a word, its member computing on for 4 s)
    with sigterm_interrupts():
        try:
            width, height = parse_size(size)
            problems = ANY_MODEL.check(height, width)
            if problems:  # before the model loads: no model takes it
                fail(f"--size {size}: " + "; ".join(problems) + " (no supported model takes it)")
            check_output_path(out)  # before the model loads: a path that cannot be written costs nothing
            check_out(out)
            pipe = load_pipeline(model, device=device, dtype=dtype)
            limits = pipe.limits
            n_frames = frames or (17 if limits.video else 1)
            problems = limits.check(height, width, n_frames)
            if problems:
                fail(f"{model}: " + "; ".join(problems))
            check_output_path(out, n_frames)  # an image format for a video: said before it is made
            if degree > 1:
                from ..pipelines.parallel import degree_problems

                problems = degree_problems(pipe, height, width, n_frames, degree)
                if problems:
                    fail(f"{model}: " + "; ".join(problems))
            t0 = time.perf_counter()
            emb = pipe.encode([prompt], None if negative_prompt is None else [negative_prompt])
            t1 = time.perf_counter()
            if degree == 1:
                latents = pipe.diffuse(emb, (height, width, n_frames), seed=seed, steps=steps, guidance=guidance)
                diffuse_s = time.perf_counter() - t1
            else:
                latents, diffuse_s = _diffuse_on_local_group(pipe, model, emb, (height, width, n_frames), seed, steps,
                                                             guidance, device, dtype, degree)
            t2 = time.perf_counter()
            group_s = t2 - t1 - diffuse_s
            pixels = pipe.decode(latents)[0]
            t3 = time.perf_counter()
            path = save_output(pixels, out, fps=fps)
        except (ValueError, OSError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:  # (outside test 110: exit 130 without a word)
            typer.secho(f"interrupted; nothing written to {out}", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(128 + stopping_signal() if stopping_signal() else EXIT_INTERRUPTED) from None
    typer.echo(
        f"wrote {path} ({width}x{height}" + (f", {n_frames} frame" + "s" * (n_frames != 1) if limits.video else "")
        + f") encode {1000 * (t1 - t0):.0f} ms, diffuse {1000 * diffuse_s:.0f} ms, decode {1000 * (t3 - t2):.0f} ms"
        + (f" (diffuse at degree {degree}; starting and stopping the members: {group_s:.1f} s)" if degree > 1 else "")
    )


def _diffuse_on_local_group(pipe, model, emb, shape, seed, steps, guidance, device, dtype, degree):
    """The diffuse on ``degree`` local processes (this one the lead): the latents and the diffuse's own
    seconds (starting and stopping the members not counted)."""
    import time

    import torch.distributed as dist

    from ..pipelines.parallel import DiffuseCall
    from ..runtime.local_group import LocalGroup, MemberFailed

    call = DiffuseCall(height=shape[0], width=shape[1], frames=shape[2], seed=seed, steps=steps, guidance=guidance)
    try:
        with LocalGroup(model, device, dtype, degree) as group:
            t0 = time.perf_counter()
            latents = group.diffuse(pipe, call, emb)
            return latents, time.perf_counter() - t0
    except (MemberFailed, dist.DistError) as exc:
        failed = f"the diffuse at degree {degree} failed: {exc}"
    # said out of the except, its exception let go first: the frames it held keep the failed collective's work
    # alive, and their teardown at the interpreter's exit aborted the process now and then ("terminate called
    # without an active exception", exit -6 after the error line, about 1 run in 5)
    import gc

    gc.collect()
    fail(failed)


def profile(
    ctx: typer.Context,
    model: str = typer.Option(None, help="Pipeline name(s), comma separated (`trident models`)."),
    out: str = typer.Option(..., help="CSV to write (the format of docs/profiles.md; its folder made if missing)."),
    device: str = typer.Option("cpu", help="cpu or cuda:i."),
    dtype: str = typer.Option(None, help="float32, bfloat16 or float16 (fp32, bf16, fp16); default: what "
                                         "`trident serve` loads on --device (float32 on cpu, bfloat16 on cuda)."),
    sizes: str = typer.Option("64,128,256", help="Squares (64,128) or WIDTHxHEIGHT items."),
    frames: str = typer.Option("5,9", help="Frame counts (video models only)."),
    batches: str = typer.Option("1,2,4", help="Requests per call."),
    steps: int = typer.Option(2, min=1, help="Denoising steps per timed diffuse call."),
    repeats: int = typer.Option(5, min=1, help="Timed calls per point (the median is kept)."),
    warmup: int = typer.Option(1, min=0, help="Untimed calls before timing."),
    stages: str = typer.Option("encode,diffuse,decode", help="Stages to measure."),
    append: bool = typer.Option(False, help="Keep the rows already in --out (same points are replaced)."),
    threads: int = typer.Option(1, min=1, max=MAX_THREADS, help="CPU threads for torch (CPU workers serve with one); at degree K, "
                                               "per process."),
    degrees: str = typer.Option("1", help="Degrees to measure the diffuse at, e.g. 1,2,4: beyond 1 sequence-parallel "
                                          "over K local processes (gloo on cpu, NCCL on cuda:I..I+K-1), timed on the "
                                          "lead. Encode and decode: degree 1 only. Degrees a model or shape cannot "
                                          "take are skipped with a note."),
    from_run: str = typer.Option(None, help="Instead of measuring: fold this stored live run's measured stage "
                                            "times into --base (the points it measured at least 3 times)."),
    db: str = typer.Option(DEFAULT_DB, help="--from-run: the DuckDB results file."),
    base: str = typer.Option(None, help="--from-run: the profile to fold into (default: the run's profile)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Measure stage latency and memory into a profile CSV.

    Measures encode, one diffuse step and decode (latency and peak memory) at every point asked
    for, or folds a live run's measurements into a profile (--from-run).
    """
    setup_logging(verbose)
    # the other mode's options were ignored without a word (outside test 120: --model with --from-run folded
    # every model of the run; --base without it measured afresh)
    other = ([f"--{'no-' if ctx.params.get(n) is False else ''}{n}" for n in _MEASURING if given(ctx, n, True)]
             if from_run is not None else [f"--{n}" for n in ("base", "db") if given(ctx, n, True)])
    if other:
        one = len(other) == 1
        fail(f"{', '.join(other)}: " + (("a measuring option" if one else "measuring options") + ", and --from-run "
                                        "measures nothing (it folds the run's measured times into --base)"
                                        if from_run is not None else
                                        ("an option" if one else "options") + " of --from-run (folding a stored run)")
             + "; drop " + ("it" if one else "them"))
    check_out(out)  # (before minutes of measuring, not after)
    if from_run is not None:
        _fold(from_run, db, base, out)
        return
    if not model:
        fail("give --model (pipelines to measure) or --from-run (a stored live run)")
    if dtype is None:  # what the workers that serve it will run (a cuda profile was measured in float32)
        from ..pipelines import served_dtype

        dtype = served_dtype(device)
    quiet_libraries()
    from ..pipelines.profiling import parse_ints

    model_list = list(dict.fromkeys(m.strip() for m in model.split(",") if m.strip()))  # (each once)
    if not model_list:
        fail(f"--model {model!r}: no pipeline named")
    try:
        degree_list = parse_ints(degrees, "degrees", MAX_GPUS_PER_NODE)
        batch_list = parse_ints(batches, "batches", MAX_PROFILE_BATCH)  # (100000 took 10 GB before it was stopped)
        frame_list = parse_ints(frames, "frames", MAX_FRAMES)
        _check_device(device, max(degree_list))
    except ValueError as exc:
        fail(str(exc))
    try:
        problem = _host_memory_problem(model_list, device, dtype, max(degree_list))
    except ValueError as exc:
        fail(f"--dtype: {exc}")
    if problem:
        fail(problem)
    import os
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from ..pipelines.profiling import ProfileSpec, parse_sizes, run_profiles
    from ..pipelines import dtype_name
    from ..profiles.format import load_profile, measured_dtype, save_profile
    from ..runtime.local_group import MemberFailed

    torch.set_num_threads(threads)
    kept = []
    if append and Path(out).exists():  # read now, not after minutes (hours on a GPU) of measuring
        try:
            kept = load_profile(out).rows
        except ValueError as exc:
            fail(f"--append: {exc}")
        # the file would mix dtypes (outside test 135: said by nothing, then by serve as if whole)
        now = dtype_name(dtype)
        other = sorted({(r.model, d) for r in kept if r.model in model_list
                        and (d := measured_dtype(r)) is not None and d != now})
        if other:
            typer.echo(f"note: --append: {out} holds rows measured in another dtype ("
                       + ", ".join(f"{m} in {d}" for m, d in other) + f"); these are measured in {now}: "
                       "the file will mix them (points measured again are replaced)")
    try:
        cores = len(os.sched_getaffinity(0))
        if device == "cpu" and max(degree_list) * threads > cores:
            typer.echo(f"note: degree {max(degree_list)} x {threads} thread(s) per process exceeds the {cores} "
                       "cores here: the processes share cores, so that degree's rows measure an oversubscribed host")
        stage_list = tuple(dict.fromkeys(s.strip() for s in stages.split(",") if s.strip()))
        if not stage_list:
            fail("--stages: none given; valid: encode, diffuse, decode")
        bad = [s for s in stage_list if s not in STAGES]
        if bad:
            fail(f"unknown stage(s) {', '.join(bad)}; valid: encode, diffuse, decode")
        specs = [
            ProfileSpec(
                model=name, device=device, dtype=dtype, sizes=parse_sizes(sizes),
                frames=frame_list, batches=batch_list,
                steps=steps, repeats=repeats, warmup=warmup, stages=stage_list, degrees=degree_list,
            )
            for name in model_list
        ]
        rows = run_profiles(specs, progress=True, groups=_local_groups(threads),
                            on_note=lambda text: typer.echo(f"note: {text}"))
        if not rows:
            fail("nothing measured: every point asked for was skipped (the notes above say why); nothing written")
        if kept:
            key = lambda r: (r.gpu, r.model, r.stage, r.height, r.width, r.frames, r.batch, r.degree)  # noqa: E731
            fresh = {key(r) for r in rows}
            rows = [r for r in kept if key(r) not in fresh] + rows
        save_profile(rows, out)
    except ValueError as exc:
        fail(str(exc))
    except (MemberFailed, dist.DistError) as exc:
        fail(f"the diffuse at degree > 1 failed: {exc}")
    except OSError as exc:  # (checked at the start; a disk that filled meanwhile)
        fail(f"--out {out}: cannot be written ({exc.strerror or exc})")
    typer.echo(f"wrote {len(rows)} row{'s' if len(rows) != 1 else ''} to {out}")


def _local_groups(threads: int):
    """``groups(spec, K)`` for the profile runner: K local processes, ``threads`` torch threads each."""
    from ..runtime.local_group import LocalGroup

    return lambda spec, degree: LocalGroup(spec.model, spec.device, spec.dtype, degree, cores=threads * degree)


def _run_profile(db: str, run_id: str) -> str:
    """The profile run ``run_id`` planned with, the fold's default base: refused when it was a file
    that has changed since the run (its config's ``inputs`` hold its SHA-256) or that is not where
    the run named it (a server before these were stored named it as given, relative to its folder)."""
    import json
    import os

    from ..bench.spec import changed_inputs
    from ..profiles import shipped_profiles
    from ..store import query_readonly

    got = query_readonly(db, "SELECT profile, config_json FROM runs WHERE run_id = ?", [run_id])
    if got.empty:
        fail(f"no run {run_id!r} in {db}")
    base = str(got.iloc[0].profile)
    try:
        config = json.loads(got.iloc[0].config_json or "{}")
    except ValueError:
        config = {}
    inputs = config.get("inputs") if isinstance(config, dict) else None
    profile_inputs = {k: v for k, v in inputs.items() if k.startswith("profile")} if isinstance(inputs, dict) else {}
    changed = changed_inputs({"inputs": profile_inputs})
    if changed:  # (outside test 103: an edited file was folded into without a word)
        fail(f"run {run_id}: {'; '.join(changed)}; the fold would mix its measurements with other figures "
             "(give --base FILE to fold into the file as it is now)")
    if base not in shipped_profiles() and not os.path.isabs(base) and not os.path.isfile(base):
        fail(f"run {run_id} planned with the profile {base}, named relative to the folder it was served from, which "
             "is not here; give --base FILE (its path from here)")
    return base


_MEASURING = ("model", "device", "dtype", "sizes", "frames", "batches", "steps", "repeats", "warmup", "stages", "append",
              "threads", "degrees")  # `trident profile`'s options that measure (not --from-run's)


def _fold(run_id: str, db: str, base: str | None, out: str) -> None:
    from ..bench.fold import fold_run
    from ..bench.runs import resolve_run
    from ..profiles import load_profile
    from ..profiles.format import save_profile

    try:
        run_id = resolve_run(db, run_id)  # (a unique prefix, as `runs show` takes: outside test 103)
        if base is None:
            base = _run_profile(db, run_id)
        folded = fold_run(db, run_id, base)
    except (ValueError, LookupError, OSError) as exc:
        fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    if folded.status == "running":  # (outside test 120: a run still being served was folded without a word)
        note_running(db, [run_id], "folded")
    if not folded.updated:  # an unchanged copy of the base is no answer
        said = [f"{what} {'; '.join(points[:3])}{'; ...' if len(points) > 3 else ''}"
                for what, points in ((f"measured, not in {base}:", folded.unmatched), ("too rarely:", folded.rare))
                if points]
        fail(f"no stage of run {run_id} was measured often enough on a shape and device kind that {base} has "
             f"a row for; nothing written" + (f" ({'; '.join(said)})" if said else ""))
    save_profile(folded.rows, out)
    load_profile(out).cost_model()  # (its warnings now: the run's points out of line with the base's others)
    for before, after, n in folded.updated:
        shape = "" if before.height is None else f" {before.width}x{before.height}"
        shape += f"x{before.frames}" if before.frames and before.frames > 1 else ""
        typer.echo(f"{after.model} {after.stage}{shape} batch {after.batch}: {before.latency_ms:g} -> "
                   f"{after.latency_ms:g} ms ({n} measured)")
    for text in folded.unmatched:
        typer.echo(f"not in {base}: {text}")
    for text in folded.rare:
        typer.echo(f"kept from {base}: {text}")
    typer.echo(f"wrote {len(folded.rows)} rows to {out} ({len(folded.updated)} from run {run_id})")


# ---------------------------------------------------------------------- cost (cost model lookups)
def cost(
    model: str = typer.Option(..., help="Model name as in the profile (sd3-medium, flux-dev, ...)."),
    stage: str = typer.Option(..., help="encode, diffuse (one denoising step) or decode."),
    profile: str = typer.Option(DEFAULT_PROFILE, help="Shipped profile name (h200, cpu, ...) or a profile CSV path."),
    size: str = typer.Option(None, help="WIDTHxHEIGHT (needed for diffuse and decode)."),
    frames: int = typer.Option(1, help="Frames (video models); 1 for images."),
    batch: int = typer.Option(1, help="Requests served together by one call (1..1024)."),
    degree: int = typer.Option(1, help="GPUs cooperating on the call (only diffuse speeds up; at most a node's, "
                                       f"{MAX_GPUS_PER_NODE})."),
    gpu: str = typer.Option(None, help="GPU kind in the profile (needed if it holds several)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predicted latency and memory of one stage call.

    From a stage profile (--profile: a shipped name or a CSV).
    """
    import json

    from ..core.costmodel import CostModelError
    from ..core.types import Shape, parse_size
    from ..profiles import ProfileError, load_profile

    bad = [f"--{name} must be an integer in 1..{most} (got {value})"
           for name, value, most in (("frames", frames, MAX_FRAMES), ("batch", batch, 1024),
                                     ("degree", degree, MAX_GPUS_PER_NODE)) if not 1 <= value <= most]
    if bad:  # (--degree 1000000 was priced: a 3.32x speed-up; --batch 100000 extrapolated to 31,050 GiB)
        fail("; ".join(bad))
    costs = None
    try:
        shape = None
        if size is not None:
            width, height = parse_size(size)
            if max(width, height) > MAX_SIDE_PX:  # (outside test 99: 99999x99999 priced and echoed)
                raise ValueError(f"--size {size}: a side of at most {MAX_SIDE_PX} pixels (as every model takes)")
            shape = Shape(height=height, width=width, frames=frames)
        elif stage != StageKind.ENCODE:
            raise ValueError(f"--size WIDTHxHEIGHT is required for stage {stage!r}")
        loaded = load_profile(profile)
        costs = loaded.cost_model()
        if frames > 1 and stage != StageKind.ENCODE:
            from ..runtime.models import video_models

            if model in costs.models() and model not in video_models(loaded.rows):  # (it was priced)
                raise ValueError(f"--frames {frames}: {model} is an image model (frames 1)")
        if stage != StageKind.DIFFUSE and degree > 1:  # (outside test 122: priced and printed as "degree 3")
            raise ValueError(f"--degree {degree}: the {stage} runs on one GPU (only the diffuse splits): degree 1")
        if stage == StageKind.DIFFUSE and model in costs.models() and not costs.allows_degree(model, degree):
            # (outside test 116: a UNet's "speed-up 1.00x" at degree 2, a degree no policy gives it)
            raise ValueError(f"--degree {degree}: {model}'s diffuse does not split {degree} ways (" + (
                "its denoiser does not split: degree 1 only)" if not costs.splits(model) else
                f"its {costs.heads[model]} attention heads do not divide by {degree})"))
        result = {
            "profile": loaded.name,
            "model": model,
            "stage": stage,
            "gpu": gpu if gpu is not None else (costs.gpus()[0] if len(costs.gpus()) == 1 else None),
            "size": size,
            "frames": frames,
            "batch": batch,
            "degree": degree,
            "latency_s": costs.latency_s(model, stage, shape, batch, degree, gpu),
            "weights_gib": costs.weights_gib(model, stage, gpu),
            "activation_gib": costs.activation_gib(model, stage, shape, batch, degree, gpu),
            "load_s": costs.load_s(model, stage, gpu),
            "speedup": costs.speedup(model, stage, shape, degree, batch, gpu),
        }
    except (CostModelError, ProfileError, ValueError) as exc:
        hint = ""
        if frames == 1 and shape is not None and "below the smallest measured shape" in str(exc):
            from ..runtime.models import video_models

            if model in video_models(loaded.rows):  # (outside test 99: a video at one frame, no word why)
                hint = f" ({model} is a video model: --frames gives its frames, 1 by default)"
        elif costs is not None and isinstance(exc, CostModelError) and model not in costs.models():
            from ..runtime.build import same_folder

            same = same_folder(model, costs.models())
            if same is not None:  # (outside test 110: the profile's ./saved for saved)
                hint = f" ({same!r} is this folder, written another way: give --model {same})"
        fail(str(exc).replace("\n", " ").replace("; pass gpu=", "; give --gpu") + hint)
    if as_json:
        typer.echo(json.dumps(result))
        return
    what = "per denoising step" if stage == StageKind.DIFFUSE else "per call"
    where = "" if shape is None else f" {shape.label()}"
    typer.echo(
        f"{model} {stage}{where} batch {batch} degree {degree} on {result['gpu']} ({loaded.name}): "
        f"{1000 * result['latency_s']:.1f} ms {what}"
        + (f" (speed-up {result['speedup']:.2f}x)" if degree > 1 else "")
        + f"; weights {result['weights_gib']:.2f} GiB (load {result['load_s']:.2f} s), "
        f"activations {result['activation_gib']:.2f} GiB"
    )
