"""``trident trace …``, ``trident runs …`` and ``trident bench``: thin commands over library calls.

Traces: ``workloads.traces`` (formats), ``tridentcore.sim.tracestats`` (offered load). Stored runs
and simulated benches: ``tridentcore.sim.runs`` over the results store. :func:`register` adds the
commands to the main ``trident`` app. Errors are one line, ``error: …``, exit status 2.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import typer

trace_app = typer.Typer(help="Request traces: generate one from a mix, import the paper's, show what one asks of a cluster.",
                        no_args_is_help=True)
runs_app = typer.Typer(help="Stored runs in a results database (opened read-only).", no_args_is_help=True)

DEFAULT_DB = "results/trident.duckdb"
_DB_HELP = "DuckDB results file."
EXIT_INTERRUPTED = 130


def register(app: typer.Typer) -> None:
    """Add ``trace``, ``runs`` and ``bench`` to the ``trident`` app."""
    app.add_typer(trace_app, name="trace")
    app.add_typer(runs_app, name="runs")
    app.command("bench")(bench)


# ------------------------------------------------------------------------------ helpers
def _one_line(text: str) -> str:
    """A multi-problem error (``origin: 3 problems:\\n  a\\n  b``) as one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} " + "; ".join(lines[1:])


def _fail(message: str) -> None:
    from .cli import _fail as fail

    fail(_one_line(message))


def _message(exc: BaseException) -> str:
    """The text of an exception (a KeyError's ``str`` would quote it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _table(rows: list[dict], columns) -> str:
    from .cli import _table as table

    if not rows:
        return "  (none)"
    clean = [{c: (math.nan if r.get(c) is None else r.get(c)) for c in columns} for r in rows]
    return table(clean, columns)


def _store_errors():
    """Exceptions of a store read that become ``error: …`` lines."""
    import duckdb

    from .store import SchemaVersionError, UnknownRunError

    return (FileNotFoundError, UnknownRunError, SchemaVersionError, duckdb.Error)


def _db_message(exc: BaseException, db: str) -> str:
    text = _message(exc)
    if isinstance(exc, FileNotFoundError) and "no results database" in text:
        text += " (runs are written there by `trident bench --db` or `trident simulate --db`)"
    return text


# ------------------------------------------------------------------------------ trident trace
@trace_app.command("generate")
def trace_generate(
    out: str = typer.Option(..., help="JSON-lines trace to write."),
    mix: str = typer.Option("image-video", help="Named mix (flux-uniform, sd3-mixed, video-wan, image-video) or YAML."),
    arrival: str = typer.Option("poisson", help="poisson | gamma:cv=K | constant | bursts:size=N"),
    rate: float = typer.Option(1.0, help="Mean requests per second."),
    duration: float = typer.Option(600.0, help="Seconds of arrivals."),
    seed: int = typer.Option(0, help="Same seed, same requests (as `trident simulate --mix` draws them)."),
) -> None:
    """Draw a mix's open-loop arrivals into a JSON-lines trace.

    The requests are exactly those `trident simulate --mix … --seed …` draws at this rate, so simulating the trace gives the same run. SLOs are not part of the trace: whoever replays it sets them (--slo-scale of simulate and bench).
    """
    from pathlib import Path

    from workloads.mixes import load_mix
    from workloads.traces import entries_from_requests, write_trace

    from .core.workload import generate_requests

    try:
        loaded_mix = load_mix(mix)
        requests = generate_requests(loaded_mix, arrival, rate, duration, seed, lambda model, shape: 1.0)
        if not requests:
            _fail("no requests (rate x duration too small?)")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_trace(entries_from_requests(requests), out)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {len(requests)} requests to {out} (mix {loaded_mix.name}, {arrival} at {rate:g} req/s "
               f"over {duration:g} s, seed {seed})")


def _trace_format(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            head = line.strip()
            if head and not head.startswith("#"):
                return "paper Request(...) lines" if head.startswith("Request(") else "JSON lines"
    return "empty"


@trace_app.command("import")
def trace_import(
    file: str = typer.Argument(..., help="A trace: the paper's Request(...) lines or JSON lines (detected)."),
    out: str = typer.Option(..., help="JSON-lines trace to write."),
    model: str = typer.Option(None, help="Model of the requests (the paper's traces do not name one)."),
) -> None:
    """Convert a trace (the TridentServe paper's Request(...) format, detected) to JSON lines."""
    from pathlib import Path

    from workloads.traces import read_trace, write_trace

    try:
        entries = read_trace(file, default_model=model)
        if not entries:
            _fail(f"{file}: no requests in the trace")
        kind = _trace_format(file)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_trace(entries, out)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"imported {len(entries)} requests ({kind}) from {file} to {out}")


@trace_app.command("stats")
def trace_stats_command(
    file: str = typer.Argument(..., help="A trace (JSON lines or the paper's Request(...) lines)."),
    profile: str = typer.Option("h200", help="Shipped profile name or CSV path (costs of each request)."),
    cluster: str = typer.Option("2x8xH200", help="NODESxGPUSxKIND, GPUSxKIND, or a YAML file."),
    model: str = typer.Option(None, help="Model of a paper-format trace's requests."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Requests, duration, rate and classes of a trace, and its offered load against the cluster.

    Offered load: arrival rate x mean GPU-seconds of a request at its most GPU-efficient degree (encode + min over degrees d of d x steps x step(d) + decode). Capacity: the cluster's GPU count. Warns (stderr) when the load is over capacity: queues then grow under any policy.
    """
    import json

    from .sim.bench import Scenario, load_scenario
    from .sim.tracestats import trace_stats

    try:
        loaded = load_scenario(Scenario(profile=profile, cluster=cluster, mix=None, trace=file, trace_model=model))
        if not loaded.trace_requests:
            _fail(f"{file}: no requests in the trace")
        stats = trace_stats(loaded.trace_requests, loaded.cost, loaded.cluster, loaded.gpu_kind)
    except (ValueError, LookupError, OSError) as exc:
        _fail(str(exc))
    offered, fraction = stats.offered_gpu_s_per_s, stats.load_fraction
    if json_out:
        typer.echo(json.dumps({
            "file": file, "requests": stats.requests, "first_s": stats.first_s, "duration_s": stats.duration_s,
            "rate_rps": stats.rate_rps, "cluster": loaded.cluster.label, "gpus": stats.num_gpus,
            "offered_gpu_s_per_s": offered, "capacity_gpu_s_per_s": stats.capacity_gpu_s_per_s,
            "load_fraction": fraction, "capacity_rps": stats.capacity_rps, "overloaded": stats.overloaded,
            "classes": [{"class": c.label, "steps": c.steps, "requests": c.requests, "best_degree": c.best_degree,
                         "gpu_s_each": c.gpu_s_each} for c in stats.classes],
        }, indent=1))
    else:
        rate = "-" if stats.rate_rps is None else f"{stats.rate_rps:.3f} req/s"
        typer.echo(f"{file}: {stats.requests} requests over {stats.duration_s:.1f} s "
                   f"(first at {stats.first_s:.2f} s), rate {rate}")
        rows = [{"class": c.label, "steps": c.steps, "requests": c.requests,
                 "share": f"{100 * c.requests / stats.requests:.1f}%", "best_degree": c.best_degree,
                 "gpu_s_each": c.gpu_s_each} for c in stats.classes]
        typer.echo(_table(rows, ("class", "steps", "requests", "share", "best_degree", "gpu_s_each")))
        capacity = (f"capacity {stats.capacity_gpu_s_per_s:.2f} GPU-s/s ({loaded.cluster.label}: {stats.num_gpus} GPU{'s' if stats.num_gpus != 1 else ''}; "
                    f"{stats.capacity_rps:.3f} req/s of this class mix)")
        if offered is None:
            typer.echo(f"offered load: undefined (the requests all arrive at one instant); {capacity}")
        else:
            typer.echo(f"offered load: {offered:.2f} GPU-s/s, each request at its most GPU-efficient degree; "
                       f"{capacity}; {100 * fraction:.0f}% of capacity")
    if stats.overloaded:
        typer.secho(f"warning: offered load {offered:.2f} GPU-s/s exceeds the cluster's capacity "
                    f"{stats.capacity_gpu_s_per_s:.2f} GPU-s/s ({100 * fraction:.0f}%): queues grow without bound "
                    "under any policy; lower the rate or add GPUs", err=True, fg=typer.colors.YELLOW)


# ------------------------------------------------------------------------------ trident runs
_LIST_COLUMNS = ("run_id", "created_at", "backend", "policy", "mix", "cluster", "rate_rps", "seed", "status",
                 "requests", "attainment", "p95_s")


@runs_app.command("list")
def runs_list(db: str = typer.Option(DEFAULT_DB, help=_DB_HELP)) -> None:
    """Every stored run, oldest first, with its headline numbers."""
    from .sim.runs import list_stored_runs

    try:
        rows = list_stored_runs(db)
    except _store_errors() as exc:
        _fail(_db_message(exc, db))
    if not rows:
        typer.echo(f"no runs in {db}")
        return
    for r in rows:
        r["created_at"] = str(r["created_at"])[:19]
    typer.echo(_table(rows, _LIST_COLUMNS))


_SUMMARY_KEYS = ("requests", "done", "met", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "rejected", "failed",
                 "cancelled", "ooms", "preemptions", "dispatches", "gpu_s", "gpu_s_per_met")


def _value(v: Any, key: str = "") -> str:
    from .cli import _fmt

    if v is None:
        return "-"
    return _fmt(v, key)


@runs_app.command("show")
def runs_show(
    run: str = typer.Argument(..., help="Run id (or a prefix that names one run)."),
    db: str = typer.Option(DEFAULT_DB, help=_DB_HELP),
) -> None:
    """One run: what it was, its summary, attainment per request class, and time per stage."""
    from .sim.runs import show_run

    try:
        report = show_run(db, run)
    except _store_errors() as exc:
        _fail(_db_message(exc, db))
    m = report.meta
    typer.echo(f"run {report.run_id}")
    typer.echo(f"  {m['backend']} {m['policy']}  mix {m['mix']} at {m['rate_rps']:g} req/s for {m['duration_s']:g} s, "
               f"cluster {m['cluster']}, profile {m['profile']}, slo scale {m['slo_scale']:g}, seed {m['seed']}")
    typer.echo(f"  status {m['status']}, created {str(m['created_at'])[:19]} UTC, wall {m['wall_s']:.2f} s, "
               f"git {m['git_sha'][:12] or '-'}")
    typer.echo("summary")
    width = max(map(len, _SUMMARY_KEYS))
    for key in _SUMMARY_KEYS:
        typer.echo(f"  {key:<{width}}  {_value(report.summary[key], key)}")
    typer.echo("attainment by request class (worst first)")
    typer.echo(_table(report.classes, ("request_class", "requests", "met", "attainment", "p50_s", "p95_s",
                                       "rejected", "failed")))
    typer.echo("stage breakdown")
    typer.echo(_table(report.stages, ("stage", "spans", "dispatches", "mean_s", "p95_s", "mean_queue_s",
                                      "p95_queue_s", "mean_batch", "mean_degree", "gpu_s", "load_s",
                                      "preempted", "oom")))


_DIFF_KEYS = ("requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected", "failed",
              "preemptions", "gpu_s_per_met")


def _delta(a: Any, b: Any, key: str) -> str:
    if a is None or b is None or isinstance(a, str):
        return "-"
    d = b - a
    if isinstance(d, float) and (math.isnan(d) or math.isinf(d)):
        return "-"
    text = _value(d, key)
    return text if text.startswith("-") else f"+{text}"


@runs_app.command("diff")
def runs_diff(
    run_a: str = typer.Argument(..., help="The first run (id or unique prefix)."),
    run_b: str = typer.Argument(..., help="The second run."),
    db: str = typer.Option(DEFAULT_DB, help=_DB_HELP),
) -> None:
    """Two runs side by side: summary metrics, then attainment per request class (B - A)."""
    from .sim.runs import diff_runs

    try:
        diff = diff_runs(db, run_a, run_b)
    except _store_errors() as exc:
        _fail(_db_message(exc, db))
    a, b = diff.a, diff.b
    typer.echo(f"A  {a['run_id']}  {a['backend']} {a['policy']}  {a['mix']} at {a['rate_rps']:g} req/s, seed {a['seed']}")
    typer.echo(f"B  {b['run_id']}  {b['backend']} {b['policy']}  {b['mix']} at {b['rate_rps']:g} req/s, seed {b['seed']}")
    rows = [{"metric": k, "A": _value(a[k], k), "B": _value(b[k], k), "B - A": _delta(a[k], b[k], k)} for k in _DIFF_KEYS]
    typer.echo(_table(rows, ("metric", "A", "B", "B - A")))
    typer.echo("attainment by request class")
    rows = [{"request_class": c["request_class"], "requests_A": _value(c["requests_a"]), "requests_B": _value(c["requests_b"]),
             "A": _value(c["attainment_a"], "attainment"), "B": _value(c["attainment_b"], "attainment"),
             "B - A": _delta(c["attainment_a"], c["attainment_b"], "attainment")} for c in diff.classes]
    typer.echo(_table(rows, ("request_class", "requests_A", "requests_B", "A", "B", "B - A")))


@runs_app.command("export")
def runs_export(
    run: str = typer.Argument(..., help="Run id (or a prefix that names one run)."),
    parquet: str = typer.Option(..., "--parquet", help="Directory for one Parquet file per table."),
    db: str = typer.Option(DEFAULT_DB, help=_DB_HELP),
) -> None:
    """Write one run's rows to DIR/<table>.parquet (runs, requests, stage_spans, placements, gpu_samples)."""
    from .sim.runs import resolve_run
    from .store import export_run

    try:
        run_id = resolve_run(db, run)
        written = export_run(db, run_id, parquet)
    except (*_store_errors(), OSError) as exc:
        _fail(_db_message(exc, db))
    typer.echo(f"exported run {run_id} to {parquet}: " + ", ".join(p.name for p in written.values()))


# ------------------------------------------------------------------------------ trident bench
_BENCH_COLUMNS = ("policy", "requests", "attainment", "mean_s", "p95_s", "p99_s", "ooms", "rejected", "gpu_s_per_met")
_REPEAT_ONLY = {"repeat", "db", "verbose"}


def bench(
    ctx: typer.Context,
    backend: str = typer.Option("sim", help="sim (the simulator) or live (trident serve + Locust per policy)."),
    policies: str = typer.Option("pipeline-static:degree=1,pipeline-dynamic,trident-paper,trident",
                                 help="Comma list of policy specs, options as name:key=value (pipeline-static:degree=2)."),
    mix: str = typer.Option(None, help="Named mix or YAML (default image-video)."),
    trace: str = typer.Option(None, help="Trace file (JSON lines, or the paper's Request(...) lines) instead of a mix."),
    model: str = typer.Option(None, help="Model the paper-format trace is for."),
    arrival: str = typer.Option("poisson", help="poisson | gamma:cv=K | constant | bursts:size=N"),
    rate: float = typer.Option(1.0, min=0.0, help="Requests per second (mixes)."),
    duration: float = typer.Option(1800.0, min=1.0, help="Seconds of arrivals."),
    slo_scale: float = typer.Option(3.0, min=0.1, help="Deadline = arrival + scale x reference latency."),
    seed: int = typer.Option(0),
    profile: str = typer.Option("h200", help="Shipped profile name or CSV path."),
    cluster: str = typer.Option("2x8xH200", help="NODESxGPUSxKIND, GPUSxKIND, or a YAML file."),
    goodput: bool = typer.Option(False, "--goodput", help="Also bisect goodput and fair goodput per policy (mixes)."),
    target: float = typer.Option(0.9, min=0.0, max=1.0, help="Attainment target for goodput."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB results file every run is stored in."),
    devices: str = typer.Option("emulated:2x8xH200", help="Live: trident serve --devices (its emulated part is the "
                                                          "cluster the SLOs and the simulator use)."),
    time_scale: float = typer.Option(0.05, help="Live: wall seconds per workload second (trident serve --time-scale; "
                                                "the schedule is sent compressed by it)."),
    keep: str = typer.Option(None, help="Live: keep Locust's CSV/HTML reports and the logs in DIR/<run_id>/."),
    repeat: str = typer.Option(None, help="Run a stored run (sim or live) again from its config and compare; takes only --db."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list, one object per policy."),
    progress: bool = typer.Option(True, help="Progress bar on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Compare policies on one workload; every run is stored (with what reproduces it) in --db.

    Prints a side-by-side table and the run ids. Ctrl-C stops: runs already stored stay, the run in progress is not written (each run is one transaction). With --repeat RUN_ID a stored sim run is simulated again and old and new summaries are printed; exit status 1 if they differ.

    Live (--backend live): for each policy `trident serve --devices … --time-scale …` and Locust (workloads/mixed.py) run as child processes on loopback with the simulator's schedule for the same seed (--rate and --duration in workload seconds; the sends are compressed by --time-scale); the server's rows and the client's rows are stored as one run. Ctrl-C stops both children and stores the run in progress as interrupted. --repeat of a live run runs it live again and prints both summaries (live runs are not expected to be identical).
    """
    from .cli import _setup_logging

    _setup_logging(verbose)
    if repeat is not None:
        # (typer ships its own click: compare the ParameterSource by name)
        extra = sorted(name for name in ctx.params if name not in _REPEAT_ONLY
                       and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT")
        if extra:
            _fail(f"--repeat takes only --db (the run's own config is used); drop {', '.join('--' + e.replace('_', '-') for e in extra)}")
        _repeat(repeat, db)
        return
    if backend == "live":
        if goodput:
            _fail("--goodput bisects the rate in the simulator; use it with --backend sim")
        cluster_given = getattr(ctx.get_parameter_source("cluster"), "name", "DEFAULT") != "DEFAULT"
        _bench_live(policies=policies, mix=mix, trace=trace, model=model, arrival=arrival, rate=rate,
                    duration=duration, slo_scale=slo_scale, seed=seed, profile=profile,
                    cluster=cluster if cluster_given else None, devices=devices, time_scale=time_scale, keep=keep,
                    db=db, json_out=json_out, progress=progress)
        return
    if backend != "sim":
        _fail(f"unknown backend {backend!r}; valid: sim, live")
    if goodput and trace is not None:
        _fail("--goodput sweeps the rate of a mix; it does not apply to a trace")
    _bench_sim(policies=policies, mix=mix, trace=trace, model=model, arrival=arrival, rate=rate, duration=duration,
               slo_scale=slo_scale, seed=seed, profile=profile, cluster=cluster, goodput=goodput, target=target,
               db=db, json_out=json_out, progress=progress)


def _policy_specs(policies: str) -> list[str]:
    """The policy specs of a comparison, each validated before any runs (raises ValueError/PolicyError)."""
    from .core.policy import make_policy, split_specs

    specs = split_specs(policies)
    if not specs:
        _fail("no policies given")
    twice = sorted({s for s in specs if specs.count(s) > 1})
    if twice:
        _fail(f"policy given twice: {', '.join(twice)}")
    for spec in specs:
        make_policy(spec)
    return specs


def _bench_sim(*, policies, mix, trace, model, arrival, rate, duration, slo_scale, seed, profile, cluster, goodput,
               target, db, json_out, progress) -> None:
    import json

    from tqdm import tqdm

    from .cli import _json_safe, _scenario
    from .core.policy import PolicyError
    from .sim.bench import capacity_rps, sweep_goodput
    from .sim.runs import resolve_run, run_and_store, summaries
    from .store import new_run_id

    try:
        loaded = _scenario(profile, cluster, mix, trace, model, arrival, duration, slo_scale, seed)
        specs = _policy_specs(policies)
        if not loaded.requests(rate):
            _fail("the workload has no requests (rate x duration too small?)")
    except (ValueError, LookupError, PolicyError, OSError) as exc:
        _fail(str(exc))

    bench_id = new_run_id("bench", seed)
    run_ids = {spec: new_run_id(spec, seed) for spec in specs}
    stored: list[str] = []
    goodputs: dict[str, Any] = {}
    cap = capacity_rps(loaded) if goodput else None
    current, phase = None, "simulating"
    bar = tqdm(specs, desc="bench", unit="policy", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for spec in bar:
            current, phase = spec, "simulating"
            bar.set_postfix_str(spec)
            run_and_store(loaded, spec, rate, db, extra_config={"bench": bench_id}, run_id=run_ids[spec])
            stored.append(run_ids[spec])
            if goodput:
                phase = "sweeping goodput for"
                bar.set_postfix_str(f"{spec} goodput")
                goodputs[spec] = sweep_goodput(loaded, spec, target, cap=cap)
    except KeyboardInterrupt:
        bar.close()
        if current is not None and run_ids[current] not in stored:
            try:  # an interrupt just after the commit: the run is there after all
                resolve_run(db, run_ids[current])
                stored.append(run_ids[current])
            except Exception:
                pass
        half = "" if run_ids[current] in stored else " (its run was not stored: nothing half-written)"
        typer.secho(f"interrupted while {phase} {current}{half}; {len(stored)} of {len(specs)} runs stored in {db}"
                    + (": " + ", ".join(stored) if stored else ""), err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (ValueError, LookupError, PolicyError, OSError) as exc:
        bar.close()
        _fail(str(exc))
    bar.close()

    rows = summaries(db, stored)
    for row in rows:
        g = goodputs.get(row["policy"])
        if g is not None:
            row["goodput_rps"], row["fair_goodput_rps"] = g.goodput_rps, g.fair_goodput_rps
    columns = _BENCH_COLUMNS[:6] + (("goodput_rps", "fair_goodput_rps") if goodput else ()) + _BENCH_COLUMNS[6:] + ("run_id",)
    if json_out:
        out = [_json_safe({c: (math.nan if r.get(c) is None else r.get(c)) for c in columns}) for r in rows]
        typer.echo(json.dumps(out, indent=1))
        return
    load = "" if trace is not None else f" at {rate:g} req/s for {duration:g} s"
    typer.echo(f"{loaded.scenario.workload_label}{load} on {loaded.cluster.label} ({profile}), slo scale {slo_scale:g}, "
               f"seed {seed}: {len(loaded.requests(rate))} requests")
    if goodput:
        typer.echo(f"capacity ceiling: {cap:.3f} req/s (every request at its most GPU-efficient degree)")
    typer.echo(_table(rows, columns))
    typer.echo(f"stored {len(stored)} runs in {db} (bench {bench_id}); `trident runs show RUN_ID --db {db}` for details")


_REPEAT_KEYS = ("requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected", "failed",
                "preemptions", "gpu_s", "gpu_s_per_met")


def _repeat(run: str, db: str) -> None:
    from .core.policy import PolicyError
    from .sim.runs import RunConfigError, repeat_run, resolve_run
    from .store import query_readonly

    try:
        run_id = resolve_run(db, run)
        stored = query_readonly(db, "SELECT backend, config_json FROM runs WHERE run_id = ?", [run_id])
    except _store_errors() as exc:
        _fail(_db_message(exc, db))
    if stored["backend"][0] == "live":
        config = stored["config_json"][0]
        if '"devices"' not in config:
            _fail(f"run {run_id!r} is a live run without a live bench's config (it was not written by "
                  "`trident bench --backend live`); only sim runs and live bench runs can be repeated")
        _repeat_live(run_id, config, db)
        return
    try:
        rep = repeat_run(db, run)
    except (*_store_errors(), RunConfigError, ValueError, LookupError, PolicyError, OSError) as exc:
        _fail(_db_message(exc, db))
    old, new = rep.old, rep.new
    typer.echo(f"repeat of {rep.old_id} ({old['policy']}, {old['mix']} at {old['rate_rps']:g} req/s, seed {old['seed']})")
    typer.echo(f"new run   {rep.new_id} stored in {db}")
    rows = [{"metric": k, "old": _value(old[k], k), "new": _value(new[k], k),
             "same": "yes" if k not in rep.differences else "NO"} for k in _REPEAT_KEYS]
    typer.echo(_table(rows, ("metric", "old", "new", "same")))
    identical = rep.rows_identical and not rep.differences
    if identical:
        typer.echo("identical: every request and stage-span row equal, and the summary (SQL sums to 1e-9)")
        return
    code = "" if rep.old_git_sha == rep.new_git_sha else (
        f"; the code changed since ({rep.old_git_sha[:12] or '?'} -> {rep.new_git_sha[:12] or '?'})")
    what = ", ".join(rep.differences) or "request or stage-span rows"
    typer.secho(f"different: {what}{code}", err=True, fg=typer.colors.YELLOW)
    raise typer.Exit(1)


# ------------------------------------------------------------------------------ trident bench --backend live
_LIVE_COLUMNS = ("policy", "status", "requests", "attainment", "mean_s", "p95_s", "p99_s", "ooms", "rejected",
                 "gpu_s_per_met", "lag_p99_ms", "run_id")


def _live_spec(*, mix, trace, model, arrival, rate, duration, slo_scale, seed, profile, cluster, devices, time_scale):
    """The live bench's spec, validated (errors are one line)."""
    from workloads.schedule import ScheduleError, ScheduleSpec, build_schedule

    from .live_bench import LiveBenchSpec, cluster_of_devices

    if mix is not None and trace is not None:
        _fail("give --mix or --trace, not both")
    emulated = cluster_of_devices(devices)
    if cluster is not None and emulated is not None and cluster != emulated:
        _fail(f"--cluster {cluster} differs from the emulated devices {emulated} (--devices {devices}); drop --cluster")
    cluster = cluster or emulated or "2x8xH200"
    if not time_scale > 0:
        _fail("--time-scale must be > 0 for a live bench (the schedule is sent at t x time scale)")
    schedule = ScheduleSpec(mix=mix or "image-video", arrival=f"trace:{trace}" if trace else arrival, rate=rate,
                            duration_s=duration, seed=seed, slo_scale=slo_scale, profile=profile, cluster=cluster,
                            time_scale=time_scale, trace_model=model)
    try:
        arrivals = build_schedule(schedule)
    except ScheduleError as exc:
        _fail(str(exc))
    if not arrivals:
        _fail("the workload has no requests (rate x duration too small?)")
    return LiveBenchSpec(schedule, devices), arrivals


class _LiveBar:
    """One progress bar per policy: requests finished of those scheduled, and the phase."""

    def __init__(self, enabled: bool, policy: str, total: int, index: int, count: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=f"[{index}/{count}] {policy}", unit="req", file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True, leave=True)
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total and total != self.bar.total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        if phase != self.phase:
            self.phase = phase
            self.bar.set_postfix_str(phase)

    def close(self) -> None:
        self.bar.close()


def _run_live(spec, specs: list[str], db: str, seed: int, keep: str | None, progress: bool,
              extra_config: dict) -> tuple[list, list[str]]:
    """Run each policy live; returns (LiveRun results, stored run ids). Ctrl-C: see bench's help."""
    from pathlib import Path

    from .live_bench import LiveBenchError, run_policy
    from .store import new_run_id

    from workloads.schedule import build_schedule

    total = len(build_schedule(spec.schedule))
    results, stored = [], []
    for k, policy in enumerate(specs, start=1):
        run_id = new_run_id(policy, seed)
        bar = _LiveBar(progress, policy, total, k, len(specs))
        try:
            result = run_policy(spec, policy, run_id, db, extra_config=extra_config, progress=bar,
                                artifacts=Path(keep) / run_id if keep else None)
        except KeyboardInterrupt as exc:
            bar.close()
            partial = exc.args[0] if exc.args else None
            if partial is not None:
                stored.append(partial.run_id)
                what = f"run {partial.run_id} stored as interrupted"
            else:
                what = "its run was not stored: nothing half-written"
            typer.secho(f"interrupted during {policy} ({what}); {len(stored)} of {len(specs)} runs stored in {db}"
                        + (": " + ", ".join(stored) if stored else ""), err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (LiveBenchError, ValueError, OSError) as exc:
            bar.close()
            done = f" ({len(stored)} runs stored before it: {', '.join(stored)})" if stored else ""
            _fail(f"live run of {policy} failed: {exc}{done}")
        bar.close()
        results.append(result)
        stored.append(result.run_id)
    return results, stored


def _bench_live(*, policies, mix, trace, model, arrival, rate, duration, slo_scale, seed, profile, cluster, devices,
                time_scale, keep, db, json_out, progress) -> None:
    import json

    from .cli import _json_safe
    from .core.policy import PolicyError
    from .sim.runs import summaries
    from .store import new_run_id

    try:
        specs = _policy_specs(policies)
    except (ValueError, LookupError, PolicyError) as exc:
        _fail(str(exc))
    spec, arrivals = _live_spec(mix=mix, trace=trace, model=model, arrival=arrival, rate=rate, duration=duration,
                                slo_scale=slo_scale, seed=seed, profile=profile, cluster=cluster, devices=devices,
                                time_scale=time_scale)
    bench_id = new_run_id("bench-live", seed)
    results, stored = _run_live(spec, specs, db, seed, keep, progress, {"bench": bench_id})
    _print_live(results, summaries(db, stored), spec, arrivals, db, bench_id, json_out, _json_safe, json)


def _print_live(results, rows, spec, arrivals, db, bench_id, json_out, json_safe, json) -> None:
    by_id = {r.run_id: r for r in results}
    for row in rows:
        res = by_id[row["run_id"]]
        row["lag_p99_ms"] = res.lag_p99_ms
        row["client_states"] = res.states
    if json_out:
        out = [json_safe({c: (math.nan if r.get(c) is None else r.get(c)) for c in (*_LIVE_COLUMNS, "client_states")})
               for r in rows]
        typer.echo(json.dumps(out, indent=1))
        return
    s = spec.schedule
    load = "" if s.trace else f" at {s.rate:g} req/s for {s.duration_s:g} s"
    typer.echo(f"{s.scenario().workload_label}{load} (workload seconds; sent at x{s.time_scale:g} wall) on "
               f"{spec.devices}, slo scale {s.slo_scale:g}, seed {s.seed}: {len(arrivals)} requests per policy")
    typer.echo(_table(rows, _LIVE_COLUMNS))
    for res in results:
        odd = {k: v for k, v in res.states.items() if k not in ("done", "rejected", "failed")}
        if odd:
            typer.secho(f"warning: {res.policy}: client saw {odd} (not in the server's rows: attainment there "
                        "counts only what the server accepted)", err=True, fg=typer.colors.YELLOW)
        if not math.isnan(res.lag_p99_ms) and res.lag_p99_ms > 50:
            typer.secho(f"warning: {res.policy}: schedule lag p99 {res.lag_p99_ms:.1f} ms > 50 ms: the load generator "
                        "fell behind the schedule", err=True, fg=typer.colors.YELLOW)
        for note in res.notes:
            typer.secho(f"warning: {res.policy}: {note}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"stored {len(rows)} runs in {db} (bench {bench_id}); `trident runs show RUN_ID --db {db}` for details")


def _repeat_live(old_id: str, config_json: str, db: str) -> None:
    import json

    from .live_bench import spec_from_config
    from .sim.runs import summaries

    try:
        spec, policy = spec_from_config(json.loads(config_json))
    except (ValueError, TypeError) as exc:
        _fail(f"run {old_id!r}: {exc}")
    results, stored = _run_live(spec, [policy], db, spec.schedule.seed, None, True, {"repeat_of": old_id})
    old, new = summaries(db, [old_id, stored[0]])
    typer.echo(f"repeat of {old_id} (live {policy}, {old['mix']} at {old['rate_rps']:g} req/s, seed {old['seed']}, "
               f"devices {spec.devices}, time scale {spec.schedule.time_scale:g})")
    typer.echo(f"new run   {stored[0]} stored in {db}")
    rows = [{"metric": k, "old": _value(old[k], k), "new": _value(new[k], k), "new - old": _delta(old[k], new[k], k)}
            for k in _REPEAT_KEYS]
    typer.echo(_table(rows, ("metric", "old", "new", "new - old")))
    typer.echo("live runs repeat the same schedule on the wall clock: expect small differences, not identity")
