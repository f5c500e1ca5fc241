"""``trident trace …``: generate a trace from a mix, import the paper's, show what one asks of a cluster.

Formats: ``tridentcore.formats.traces``; offered load: ``tridentcore.sim.tracestats``.
"""

from __future__ import annotations

import os
import sys

import typer

from ..core.defaults import (DEFAULT_ARRIVAL, DEFAULT_CLUSTER, DEFAULT_DURATION_S, DEFAULT_MIX, DEFAULT_PROFILE,
                             DEFAULT_RATE, DEFAULT_SEED, DEFAULT_SLO_SCALE, MAX_SEED)
from .common import ARRIVAL_HELP, CLUSTER_HELP, HELP_MARKUP, MIX_HELP, DurationOpt, check_out, fail, given, load_workload, one_line, table

__all__ = ["trace_app"]

trace_app = typer.Typer(help="Request traces: generate from a mix, import, offered load.\n\n"
                             "Generate one from a mix, import the paper's, show what one asks of a cluster.",
                        no_args_is_help=True, rich_markup_mode=HELP_MARKUP)


def _dash_table(rows: list[dict], columns) -> str:
    return table(rows, columns, none_as_dash=True)


@trace_app.command("generate")
def trace_generate(
    out: str = typer.Option(..., help="JSON-lines trace to write (-: standard output)."),
    mix: str = typer.Option(DEFAULT_MIX, help=MIX_HELP),
    arrival: str = typer.Option(DEFAULT_ARRIVAL, help=ARRIVAL_HELP),
    rate: float = typer.Option(DEFAULT_RATE, help="Mean requests per second."),
    duration: DurationOpt = DEFAULT_DURATION_S,  # (at least 1 s, as simulate's: outside test 99, 1e-9 was drawn)
    seed: int = typer.Option(DEFAULT_SEED, min=0, max=MAX_SEED,
                             help="Same seed, same requests (as `trident simulate --mix` draws them; 0..2^31-1)."),
) -> None:
    """Draw a mix's open-loop arrivals into a JSON-lines trace.

    The requests are exactly those `trident simulate --mix MIX --seed SEED` draws at this rate, so simulating the trace gives the same run. SLOs are not part of the trace: whoever replays it sets them (--slo-scale of simulate and bench).
    """
    from ..formats.mixes import load_mix
    from ..formats.traces import entries_from_requests

    from ..core.workload import generate_requests

    if out != "-":
        check_out(out, dash=True)  # (before the trace is drawn: a folder or a place it cannot write is said at once)
    try:
        loaded_mix = load_mix(mix)
        requests = generate_requests(loaded_mix, arrival, rate, duration, seed, lambda model, shape: 1.0)
        if not requests:
            fail("no requests (rate x duration too small?)")
        _write(entries_from_requests(requests), out)
    except (ValueError, OSError) as exc:
        fail(one_line(str(exc)))
    _said(out, f"wrote {_requests(len(requests))} to {_where(out)} (mix {loaded_mix.name}, {arrival} at {rate:g} req/s "
               f"over {duration:g} s, seed {seed})")


def _write(entries, out: str) -> None:
    """The trace as JSON lines to ``out`` (checked, its folder made, by ``check_out``), or to standard
    output for ``-``."""
    from ..formats.traces import format_trace, write_trace

    if out == "-":
        sys.stdout.write(format_trace(entries))
        sys.stdout.flush()
        return
    try:
        write_trace(entries, out)
    except OSError as exc:  # (its words, not the temporary file's name: a full disk, say)
        fail(f"--out {out}: cannot be written ({exc.strerror or exc})")


def _where(out: str) -> str:
    return "standard output" if out == "-" else out


def _said(out: str, line: str) -> None:
    """What was written: on stdout, or on stderr when the trace itself went to stdout."""
    typer.echo(line, err=out == "-")


def _trace_format(path: str) -> str:
    from ..formats.traces import read_trace_text, trace_format

    return trace_format(read_trace_text(path))  # (a pipe's text is kept from its first reading)


def _stdin(file: str) -> str:
    """``-`` is standard input (outside tests: "-: cannot read: No such file or directory", where
    ``--out -`` writes standard output); read once: a pipe's text is kept from its first reading."""
    return "/dev/stdin" if file == "-" else file


@trace_app.command("import")
def trace_import(
    file: str = typer.Argument(..., help="A trace: the paper's Request(...) lines or JSON lines (detected); "
                                         "-: standard input."),
    out: str = typer.Option(..., help="JSON-lines trace to write (-: standard output)."),
    model: str = typer.Option(None, help="Model of the requests (the paper's traces do not name one)."),
) -> None:
    """Convert a trace to JSON lines.

    The TridentServe paper's Request(...) format is detected.
    """
    from ..formats.traces import read_trace

    file = _stdin(file)
    if out != "-":
        check_out(out, dash=True)
        if os.path.exists(out) and os.path.exists(file) and os.path.samefile(file, out):
            # (outside test 121: the paper-format input replaced by its JSON lines without a word)
            fail(f"--out {out} is the trace being imported: write the JSON lines to another file")
    try:
        entries = read_trace(file, default_model=model)
        if not entries:
            fail(f"{file}: no requests in the trace")
        kind = _trace_format(file)
        _write(entries, out)
    except (ValueError, OSError) as exc:
        fail(one_line(str(exc)))
    _said(out, f"imported {_requests(len(entries))} ({kind}) from {file} to {_where(out)}")
    unpriced = _unpriced_models({e.model for e in entries})
    if unpriced:  # (a warning: the trace is valid; a profile of the user's own may price it)
        typer.secho(f"warning: no shipped profile has rows for {', '.join(unpriced)}: simulate and bench will need "
                    "--profile with rows for it (`trident profile`)", err=True, fg=typer.colors.YELLOW)
        return
    # what simulate, bench and stats refuse of it as they price it by default (outside test 99: "imported"
    # without a word, then refused by each: frames on an image model, a side not a multiple of 16, ...)
    try:
        load_workload(None, None, None, file, model, DEFAULT_ARRIVAL, DEFAULT_DURATION_S, DEFAULT_SLO_SCALE,
                      DEFAULT_SEED)
    except (ValueError, LookupError, OSError) as exc:
        typer.secho(f"warning: simulate, bench and trace stats will refuse it as they price it by default: "
                    f"{one_line(str(exc))}", err=True, fg=typer.colors.YELLOW)


def _requests(n: int) -> str:
    return f"{n} request" if n == 1 else f"{n} requests"


def _unpriced_models(models: set[str]) -> list[str]:
    """The models of ``models`` that no shipped profile prices."""
    from ..profiles import load_profile, shipped_profiles

    known: set[str] = set()
    for name in shipped_profiles():
        known.update(load_profile(name).cost_model().models())
    return sorted(models - known)


@trace_app.command("stats")
def trace_stats_command(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="A trace (JSON lines or the paper's Request(...) lines); -: standard "
                                         "input."),
    profile: str = typer.Option(DEFAULT_PROFILE, help="Shipped profile name or CSV path (costs of each request; "
                                                      "with --cluster not given either: the shipped pair that "
                                                      "prices the trace's models, cpu on 2xcpu for tiny ones, as "
                                                      "`trident simulate --trace` does)."),
    cluster: str = typer.Option(DEFAULT_CLUSTER, help=CLUSTER_HELP),
    model: str = typer.Option(None, help="Model of a paper-format trace's requests."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A trace's requests, rate, classes and offered load.

    Requests, duration, rate and classes of a trace, and its offered load against the cluster.
    Offered load: arrival rate x mean GPU-seconds of a request at its most GPU-efficient degree (encode + min over degrees d of d x steps x step(d) + decode). Capacity: the cluster's GPU count. Warns (stderr) when the load is over capacity: queues then grow under any policy.
    """
    import json

    from ..sim.tracestats import trace_stats

    file = _stdin(file)
    try:  # priced as `trident simulate --trace` prices it (the arrival, duration and seed are the trace's)
        loaded = load_workload(given(ctx, "profile", profile), given(ctx, "cluster", cluster), None, file, model,
                               DEFAULT_ARRIVAL, DEFAULT_DURATION_S, DEFAULT_SLO_SCALE, DEFAULT_SEED)
        if not loaded.trace_requests:
            fail(f"{file}: no requests in the trace")
        stats = trace_stats(loaded.trace_requests, loaded.cost, loaded.cluster, loaded.gpu_kind)
    except (ValueError, LookupError, OSError) as exc:
        fail(one_line(str(exc)))
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
        rate = "-" if stats.rate_rps is None else f"{stats.rate_rps:.4g} req/s"
        typer.echo(f"{file}: {stats.requests} request{'' if stats.requests == 1 else 's'} over {stats.duration_s:.1f} s "
                   f"(first at {stats.first_s:.2f} s), rate {rate}")
        rows = [{"class": c.label, "steps": c.steps, "requests": c.requests,
                 "share": f"{100 * c.requests / stats.requests:.1f}%", "best_degree": c.best_degree,
                 "gpu_s_each": c.gpu_s_each} for c in stats.classes]
        typer.echo(_dash_table(rows, ("class", "steps", "requests", "share", "best_degree", "gpu_s_each")))
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
