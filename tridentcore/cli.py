"""The ``trident`` command: a thin wrapper over library calls.

Heavy modules (torch, diffusers) are imported inside the commands that need them, so
``trident --help`` and the simulator commands stay fast.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="trident",
    help="TridentServe: stage-level serving for diffusion pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)

def _quiet_libraries() -> None:
    """transformers warns about optional image backends we never use; keep the CLI's output clean."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@app.command()
def models() -> None:
    """List the built-in pipelines, one line each."""
    from .pipelines import MODELS

    width = max(len(n) for n in MODELS)
    for info in MODELS.values():
        typer.echo(f"{info.name:<{width}}  {info.kind:<5}  {info.description}")
    typer.echo(f"{'<path or hub id>':<{width}}  any    a diffusers SD3, Flux, SD/SDXL or Wan pipeline (from_pretrained)")


@app.command()
def generate(
    prompt: str = typer.Option(..., help="What to draw."),
    out: str = typer.Option(..., help="Output file: .png/.jpg/.webp for images, .webp/.gif for video."),
    model: str = typer.Option("tiny-sd3", help="Pipeline name (`trident models`), directory or hub id."),
    size: str = typer.Option("256x256", help="WIDTHxHEIGHT, as in the OpenAI images API."),
    steps: int = typer.Option(None, min=1, max=200, help="Denoising steps (default: the model's)."),
    seed: int = typer.Option(0, help="Noise seed: the same seed gives the same bytes."),
    frames: int = typer.Option(None, min=1, help="Frames (video models)."),
    guidance: float = typer.Option(None, help="Guidance scale (default: the model's)."),
    negative_prompt: str = typer.Option(None, help="Negative prompt (CFG models)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:i."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16."),
    fps: int = typer.Option(8, min=1, help="Frames per second of an animation."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run encode -> diffuse -> decode for one prompt and write the image or animation."""
    _setup_logging(verbose)
    _quiet_libraries()
    import time

    from .core.types import parse_size
    from .pipelines import load_pipeline
    from .pipelines.media import save_output

    try:
        width, height = parse_size(size)
        pipe = load_pipeline(model, device=device, dtype=dtype)
        limits = pipe.limits
        n_frames = frames or (17 if limits.video else 1)
        problems = limits.check(height, width, n_frames)
        if problems:
            _fail(f"{model}: " + "; ".join(problems))
        t0 = time.perf_counter()
        emb = pipe.encode([prompt], None if negative_prompt is None else [negative_prompt])
        t1 = time.perf_counter()
        latents = pipe.diffuse(emb, (height, width, n_frames), seed=seed, steps=steps, guidance=guidance)
        t2 = time.perf_counter()
        pixels = pipe.decode(latents)[0]
        t3 = time.perf_counter()
        path = save_output(pixels, out, fps=fps)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(
        f"wrote {path} ({width}x{height}" + (f", {n_frames} frames" if limits.video else "")
        + f") encode {1000 * (t1 - t0):.0f} ms, diffuse {1000 * (t2 - t1):.0f} ms, decode {1000 * (t3 - t2):.0f} ms"
    )


@app.command()
def profile(
    model: str = typer.Option(..., help="Pipeline name(s), comma separated (`trident models`)."),
    out: str = typer.Option(..., help="CSV to write (the format of shared/profiles/README.md)."),
    device: str = typer.Option("cpu", help="cpu or cuda:i."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16."),
    sizes: str = typer.Option("64,128,256", help="Squares (64,128) or WIDTHxHEIGHT items."),
    frames: str = typer.Option("5,9", help="Frame counts (video models only)."),
    batches: str = typer.Option("1,2,4", help="Requests per call."),
    steps: int = typer.Option(2, min=1, help="Denoising steps per timed diffuse call."),
    repeats: int = typer.Option(5, min=1, help="Timed calls per point (the median is kept)."),
    warmup: int = typer.Option(1, min=0, help="Untimed calls before timing."),
    stages: str = typer.Option("encode,diffuse,decode", help="Stages to measure."),
    append: bool = typer.Option(False, help="Keep the rows already in --out (same points are replaced)."),
    threads: int = typer.Option(1, min=1, help="CPU threads for torch (CPU workers serve with one)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Measure encode, one diffuse step and decode (latency and peak memory) into a profile CSV."""
    _setup_logging(verbose)
    _quiet_libraries()
    from pathlib import Path

    from .profiles.format import load_profile, save_profile
    from .profiles.runner import ProfileSpec, parse_ints, parse_sizes, run_profile

    import torch

    torch.set_num_threads(threads)
    try:
        stage_list = tuple(s.strip() for s in stages.split(",") if s.strip())
        bad = [s for s in stage_list if s not in ("encode", "diffuse", "decode")]
        if bad:
            _fail(f"unknown stage(s) {', '.join(bad)}; valid: encode, diffuse, decode")
        rows = []
        for name in (m.strip() for m in model.split(",") if m.strip()):
            spec = ProfileSpec(
                model=name, device=device, dtype=dtype, sizes=parse_sizes(sizes),
                frames=parse_ints(frames, "frames"), batches=parse_ints(batches, "batches"),
                steps=steps, repeats=repeats, warmup=warmup, stages=stage_list,
            )
            rows += run_profile(spec, progress=True)
        if append and Path(out).exists():
            key = lambda r: (r.gpu, r.model, r.stage, r.height, r.width, r.frames, r.batch, r.degree)  # noqa: E731
            fresh = {key(r) for r in rows}
            rows = [r for r in load_profile(out).rows if key(r) not in fresh] + rows
        save_profile(rows, out)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {len(rows)} rows to {out}")


# ---------------------------------------------------------------------- cost (cost model lookups)
@app.command()
def cost(
    model: str = typer.Option(..., help="Model name as in the profile (sd3-medium, flux-dev, ...)."),
    stage: str = typer.Option(..., help="encode, diffuse (one denoising step) or decode."),
    profile: str = typer.Option("h200", help="Shipped profile name (h200, cpu, ...) or a profile CSV path."),
    size: str = typer.Option(None, help="WIDTHxHEIGHT (needed for diffuse and decode)."),
    frames: int = typer.Option(1, help="Frames (video models); 1 for images."),
    batch: int = typer.Option(1, help="Requests served together by one call."),
    degree: int = typer.Option(1, help="GPUs cooperating on the call (only diffuse speeds up)."),
    gpu: str = typer.Option(None, help="GPU kind in the profile (needed if it holds several)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predicted latency and memory of one stage call, from a stage profile."""
    import json

    from .core.costmodel import CostModelError
    from .core.types import Shape, parse_size
    from .profiles import ProfileError, load_profile

    try:
        shape = None
        if size is not None:
            width, height = parse_size(size)
            shape = Shape(height=height, width=width, frames=frames)
        elif stage != "encode":
            raise ValueError(f"--size WIDTHxHEIGHT is required for stage {stage!r}")
        loaded = load_profile(profile)
        costs = loaded.cost_model()
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
        _fail(str(exc).replace("\n", " "))
    if as_json:
        typer.echo(json.dumps(result))
        return
    what = "per denoising step" if stage == "diffuse" else "per call"
    where = "" if shape is None else f" {shape.label()}"
    typer.echo(
        f"{model} {stage}{where} batch {batch} degree {degree} on {result['gpu']} ({loaded.name}): "
        f"{1000 * result['latency_s']:.1f} ms {what}"
        + (f" (speed-up {result['speedup']:.2f}x)" if degree > 1 else "")
        + f"; weights {result['weights_gib']:.2f} GiB (load {result['load_s']:.2f} s), "
        f"activations {result['activation_gib']:.2f} GiB"
    )


# ------------------------------------------------------------------------------ simulation
_COLUMNS = ("policy", "requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected",
            "gpu_s_per_met", "planner_p99_ms")


def _scenario(profile, cluster, mix, trace, model, arrival, duration, slo_scale, seed):
    from .sim.bench import Scenario, load_scenario

    if mix is None and trace is None:
        mix = "image-video"
    if mix is not None and trace is not None:
        _fail("give --mix or --trace, not both")
    sc = Scenario(profile=profile, cluster=cluster, mix=mix if trace is None else None, trace=trace,
                  trace_model=model, arrival=arrival, duration_s=duration, slo_scale=slo_scale, seed=seed)
    return load_scenario(sc)


def _fmt(value, key: str) -> str:
    import math

    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "-"
        return f"{value:.3f}" if key == "attainment" else f"{value:.2f}"
    return str(value)


def _table(rows: list[dict], columns) -> str:
    cells = [[_fmt(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    for row in cells:
        lines.append("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _json_safe(row: dict) -> dict:
    from .sim.bench import finite

    return {k: finite(v) if isinstance(v, float) else v for k, v in row.items()}


_POLICIES_HELP = "Comma list of policy specs, options as name:key=value (pipeline-static:degree=2)."
_DEFAULT_POLICIES = "pipeline-static:degree=1,pipeline-dynamic,trident-paper,trident"


@app.command()
def simulate(
    profile: str = typer.Option("h200", help="Shipped profile name or CSV path."),
    cluster: str = typer.Option("2x8xH200", help="NODESxGPUSxKIND (2x8xH200), GPUSxKIND, or a YAML file."),
    mix: str = typer.Option(None, help="Named mix (flux-uniform, sd3-mixed, video-wan, image-video) or YAML."),
    trace: str = typer.Option(None, help="Trace file (JSON lines, or the paper's Request(...) lines)."),
    model: str = typer.Option(None, help="Model the paper-format trace is for."),
    arrival: str = typer.Option("poisson", help="poisson | gamma:cv=K | constant | bursts:size=N"),
    rate: float = typer.Option(1.0, min=0.0, help="Requests per second (mixes)."),
    duration: float = typer.Option(1800.0, min=1.0, help="Seconds of arrivals."),
    slo_scale: float = typer.Option(3.0, min=0.1, help="Deadline = arrival + scale x reference latency."),
    seed: int = typer.Option(0),
    policies: str = typer.Option(_DEFAULT_POLICIES, help=_POLICIES_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list, one object per policy."),
    db: str = typer.Option(None, help="DuckDB results file to store every run in."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Simulate the workload under each policy and print one row per policy."""
    import json

    from .core.policy import PolicyError, make_policy, split_specs
    from .core.metrics import summarize
    from .sim.bench import run_meta, run_one

    _setup_logging(verbose)
    try:
        loaded = _scenario(profile, cluster, mix, trace, model, arrival, duration, slo_scale, seed)
        specs = split_specs(policies)
        for spec in specs:
            make_policy(spec)  # validate every spec before running any
        if not loaded.requests(rate):
            _fail("the workload has no requests (rate x duration too small?)")
        rows = []
        for spec in specs:
            result = run_one(loaded, spec, rate)
            row = summarize(spec, result.requests, result.spans, result.decision_ms)
            rows.append({c: row[c] for c in _COLUMNS})
            if db:
                from .store import ResultsStore, new_run_id

                ResultsStore(db).write_run(run_meta(new_run_id(spec, seed), loaded, spec, rate, result),
                                           result.requests, result.spans, result.placements, result.gpu_samples)
    except (ValueError, LookupError, PolicyError) as exc:
        _fail(str(exc))
    if json_out:
        typer.echo(json.dumps([_json_safe(r) for r in rows], indent=1))
    else:
        typer.echo(_table(rows, _COLUMNS))


@app.command()
def sweep(
    profile: str = typer.Option("h200", help="Shipped profile name or CSV path."),
    cluster: str = typer.Option("2x8xH200", help="NODESxGPUSxKIND, GPUSxKIND, or a YAML file."),
    mix: str = typer.Option(None, help="Named mix or YAML file."),
    arrival: str = typer.Option("poisson", help="poisson | gamma:cv=K | constant | bursts:size=N"),
    duration: float = typer.Option(1800.0, min=1.0, help="Seconds of arrivals per simulated rate."),
    slo_scale: float = typer.Option(3.0, min=0.1),
    seed: int = typer.Option(0),
    policies: str = typer.Option(_DEFAULT_POLICIES, help=_POLICIES_HELP),
    goodput: bool = typer.Option(False, "--goodput", help="Bisect goodput and fair goodput per policy."),
    target: float = typer.Option(0.9, min=0.0, max=1.0, help="Attainment target for goodput."),
    rates: str = typer.Option(None, help="Comma list of rates: attainment per rate and per class."),
    json_out: bool = typer.Option(False, "--json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Goodput and fair goodput per policy (--goodput), or attainment per rate and class (--rates)."""
    import json

    from .core.policy import PolicyError, make_policy, split_specs
    from .sim.bench import capacity_rps, evaluate, sweep_goodput

    _setup_logging(verbose)
    if goodput == (rates is not None):
        _fail("give exactly one of --goodput or --rates")
    try:
        loaded = _scenario(profile, cluster, mix, None, None, arrival, duration, slo_scale, seed)
        specs = split_specs(policies)
        for spec in specs:
            make_policy(spec)
        cap = capacity_rps(loaded)
        if goodput:
            results = [sweep_goodput(loaded, spec, target, cap=cap) for spec in specs]
            out = {"capacity_rps": cap, "target": target,
                   "policies": [{"policy": g.policy, "goodput_rps": g.goodput_rps,
                                 "fair_goodput_rps": g.fair_goodput_rps} for g in results]}
            if json_out:
                typer.echo(json.dumps(out, indent=1))
                return
            typer.echo(f"capacity ceiling: {cap:.3f} req/s (every request at its most GPU-efficient degree)")
            typer.echo(_table(out["policies"], ("policy", "goodput_rps", "fair_goodput_rps")))
            return
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
        points = {spec: [evaluate(loaded, spec, r) for r in rate_list] for spec in specs}
    except (ValueError, LookupError, PolicyError) as exc:
        _fail(str(exc))
    if json_out:
        typer.echo(json.dumps({"capacity_rps": cap, "points": [
            {"policy": spec, "rate": p.rate, "attainment": p.attainment, "min_class": p.min_class,
             "by_class": {k: a for k, (_, a) in p.by_class.items()}} for spec, ps in points.items() for p in ps]},
            indent=1))
        return
    typer.echo(f"capacity ceiling: {cap:.3f} req/s")
    classes = sorted({k for ps in points.values() for p in ps for k in p.by_class})
    cols = ("policy", "rate", "attainment", *classes)
    rows = [{"policy": spec, "rate": p.rate, "attainment": p.attainment,
             **{k: p.by_class.get(k, (0, float("nan")))[1] for k in classes}} for spec, ps in points.items() for p in ps]
    typer.echo(_table(rows, cols))


# ------------------------------------------------------------------------------ live serving
@app.command()
def serve(
    models: str = typer.Option(..., help="Comma list: tiny pipelines for cpu:N (tiny-sd3,tiny-wan), "
                                         "profile models for emulated or cuda devices (sd3-medium,wan2.1-1.3b)."),
    devices: str = typer.Option("cpu:2", help="cpu:N (N worker processes), cuda:all or cuda:0,1 (one worker per GPU), "
                                              "emulated:NODESxGPUSxKIND (emulated:2x8xH200), or kinds mixed "
                                              "(cpu:1,emulated:8xH200: each model on the first kind that runs it)."),
    policy: str = typer.Option("trident", help="A policy spec of the registry, options as name:key=value."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: any free port; see --port-file)."),
    db: str = typer.Option(None, help="DuckDB results file: the run's spans, placements and requests at shutdown."),
    time_scale: float = typer.Option(1.0, min=0.0, help="Emulated devices: wall seconds per cost-model second (0: zero-cost)."),
    profile: str = typer.Option(None, help="Cost profile (default: h200 for emulated and cuda, cpu for cpu:N) or a CSV "
                                           "path; with mixed kinds it applies to all but cpu, or give KIND=NAME pairs."),
    max_queued: int = typer.Option(256, min=1, help="Waiting requests past which submissions get 429."),
    slo_scale: float = typer.Option(3.0, min=0.1, help="Default deadline: arrival + scale x reference latency."),
    api_key: str = typer.Option(None, envvar="TRIDENT_API_KEY", help="Bearer key required for submissions and cancels."),
    drain_timeout: float = typer.Option(30.0, min=0.0, help="Seconds shutdown waits for in-flight work before failing it."),
    max_body: int = typer.Option(1 << 20, min=1024, help="Largest request body in bytes (413 past it)."),
    port_file: str = typer.Option(None, help="Write the bound port here once the server is ready."),
    run_id: str = typer.Option(None, help="Id of the run written to --db (default: a new one); must not exist yet."),
    keep_ended: int = typer.Option(10_000, min=0, help="Ended requests kept in full in memory; older ones keep only "
                                                      "their final status (and their store row with --db)."),
    backend: str = typer.Option("local", help="local: workers on this host; ray: one Ray actor per device slot."),
    ray_address: str = typer.Option(None, help="--backend ray: a running Ray cluster (auto, HEAD:6379); "
                                               "none: start Ray on this host."),
    inject_oom: str = typer.Option(None, envvar="TRIDENT_INJECT_OOM",
                                   help="Testing aid: STAGE:N[,STAGE:N] makes the first N dispatches of STAGE fail "
                                        "out of memory in their worker (retried at a safer configuration, counted)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) over live workers driven by a policy."""
    _setup_logging(verbose)
    _quiet_libraries()
    from .server.serve import ServeOptions, run_server
    from .runtime.build import SetupError

    if backend == "ray":  # a Ray instance this command starts sends no usage reports unless asked to
        import os

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    try:
        run_server(ServeOptions(models=models, devices=devices, policy=policy, host=host, port=port, db=db,
                                time_scale=time_scale, profile=profile, max_queued=max_queued, slo_scale=slo_scale,
                                api_key=api_key, drain_timeout_s=drain_timeout, max_body_bytes=max_body,
                                port_file=port_file, run_id=run_id, keep_ended=keep_ended, log_level="info" if verbose else "warning",
                                backend=backend, ray_address=ray_address, inject_oom=inject_oom))
    except SetupError as exc:
        _fail(str(exc))


# trace, runs and bench (tridentcore/bench_cli.py)
from .bench_cli import register as _register_bench  # noqa: E402

_register_bench(app)


if __name__ == "__main__":  # pragma: no cover
    app()
