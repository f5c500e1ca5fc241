"""``trident simulate`` and ``trident sweep``: policies on a simulated cluster (not stored unless --db);
``trident policies``: the policies and their options."""

from __future__ import annotations

import math
import os

import typer

from ..core.defaults import (DEFAULT_ARRIVAL, DEFAULT_CLUSTER, DEFAULT_DURATION_S, DEFAULT_NOISE_SIGMA,
                             DEFAULT_PROFILE, DEFAULT_RATE, DEFAULT_SEED, DEFAULT_SLO_SCALE, DEFAULT_SWEEP_DURATION_S,
                             DEFAULT_DB_WAIT_S, DEFAULT_TARGET)
from .common import (DEFAULT_POLICIES_TEXT, EXIT_INTERRUPTED, ArrivalOpt, BiasOpt, ClusterOpt, DurationOpt, MixOpt, ModelOpt,
                     NoiseDbOpt, NoiseFromOpt, NoiseOpt, PoliciesOpt, given, ProfileOpt, RateOpt, SeedOpt, SloScaleOpt, fail,
                     ceiling_lines, check_db, fitted_noise, refuse_mix_options_with_trace, json_safe, drop_if_unused, load_workload, one_line, workload_pricing, policy_specs, runnable_specs, setup_logging, store_failed, table, write_errors)

__all__ = ["policies", "simulate", "sweep"]

_COLUMNS = ("policy", "requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected",
            "gpu_s_per_met", "planner_p99_ms")


def simulate(
    ctx: typer.Context,
    profile: ProfileOpt = DEFAULT_PROFILE,
    cluster: ClusterOpt = DEFAULT_CLUSTER,
    mix: MixOpt = None,
    trace: str = typer.Option(None, help="Trace file (JSON lines, or the paper's Request(...) lines)."),
    model: ModelOpt = None,
    arrival: ArrivalOpt = DEFAULT_ARRIVAL,
    rate: RateOpt = DEFAULT_RATE,
    duration: DurationOpt = DEFAULT_DURATION_S,
    slo_scale: SloScaleOpt = DEFAULT_SLO_SCALE,
    seed: SeedOpt = DEFAULT_SEED,
    policies: PoliciesOpt = DEFAULT_POLICIES_TEXT,
    noise: NoiseOpt = DEFAULT_NOISE_SIGMA,
    bias: BiasOpt = None,
    noise_from: NoiseFromOpt = None,
    noise_db: NoiseDbOpt = None,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list, one object per policy."),
    db: str = typer.Option(None, help="DuckDB results file to store every run in."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Simulate each policy on one workload; one row per policy."""
    import json

    from ..core.policy import PolicyError
    from ..core.metrics import summarize
    from ..bench.live_procs import sigterm_interrupts, stopping_signal
    from ..bench.scenario import run_meta, run_one

    setup_logging(verbose)
    refuse_mix_options_with_trace(ctx, trace)
    noise, bias = fitted_noise(noise_from, noise_db or db, noise, bias, err=json_out, profile=noise_from and (
        workload_pricing(given(ctx, "profile", profile), given(ctx, "cluster", cluster), mix, trace, model)[0]))
    rows, stored, writing, made, specs = [], [], None, False, []
    try:
        with sigterm_interrupts():  # SIGTERM (timeout, systemd) ends it as Ctrl-C does: what is stored said
            loaded = load_workload(given(ctx, "profile", profile), given(ctx, "cluster", cluster), mix, trace, model, arrival, duration, slo_scale, seed, noise, bias)
            specs = policy_specs(policies, unique=True)  # every spec validated before any runs
            if not loaded.requests(rate):
                fail("the workload has no requests (rate x duration too small?)")
            specs = runnable_specs(loaded, specs)
            made = bool(db) and not os.path.exists(db)  # (a database this run made, then stored nothing in, goes)
            if db:
                check_db(db)
            for spec in specs:
                result = run_one(loaded, spec, rate)
                row = summarize(spec, result.requests, result.spans, result.decision_ms)
                rows.append({c: row[c] for c in _COLUMNS})
                if db:
                    from ..store import ResultsStore, new_run_id

                    writing = run_id = new_run_id(spec, seed)
                    ResultsStore(db, lock_wait_s=DEFAULT_DB_WAIT_S).write_run(run_meta(run_id, loaded, spec, rate, result),
                                               result.requests, result.spans, result.placements, result.gpu_samples)
                    stored.append(run_id)
    except KeyboardInterrupt:  # each run is stored whole as it ends: say which are there
        if db:
            _add_if_committed(db, writing, stored)
            drop_if_unused(db, made, stored)
            said = (f"interrupted after {len(rows)} of {len(specs)} policies; {_runs(len(stored))} stored in {db}"
                    + (": " + ", ".join(stored) if stored else "") if specs else
                    f"interrupted before any policy ran; nothing stored in {db}")
            typer.secho(said, err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(128 + stopping_signal() if stopping_signal() else EXIT_INTERRUPTED) from None
    except write_errors() as exc:  # (the store failed part way: a full disk)
        if not db or writing is None:  # (not a run's store)
            fail(one_line(str(exc)))
        _add_if_committed(db, writing, stored)
        drop_if_unused(db, made, stored)
        store_failed(exc, db, writing, stored, len(specs))
    except (ValueError, LookupError, PolicyError, OSError) as exc:
        if db:
            drop_if_unused(db, made, stored)
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps([json_safe(r) for r in rows], indent=1))
    else:
        typer.echo(table(rows, _COLUMNS))
    if stored:  # (on stderr: --json's stdout stays one JSON document)
        typer.echo(f"stored {_runs(len(stored))} in {db}: {', '.join(stored)}", err=True)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _add_if_committed(db: str, run_id: str | None, stored: list[str]) -> None:
    """An interrupt just after a run's transaction committed: the run is there after all."""
    if run_id is None or run_id in stored:
        return
    from ..bench.runs import resolve_run

    try:
        resolve_run(db, run_id)
    except Exception:  # noqa: BLE001 - not there (rolled back), or the file is not readable now
        return
    stored.append(run_id)


def sweep(
    ctx: typer.Context,
    profile: ProfileOpt = DEFAULT_PROFILE,
    cluster: ClusterOpt = DEFAULT_CLUSTER,
    mix: MixOpt = None,
    arrival: ArrivalOpt = DEFAULT_ARRIVAL,
    duration: float = typer.Option(DEFAULT_SWEEP_DURATION_S, min=1.0, help="Seconds of arrivals per simulated rate."),
    slo_scale: SloScaleOpt = DEFAULT_SLO_SCALE,
    seed: SeedOpt = DEFAULT_SEED,
    policies: PoliciesOpt = DEFAULT_POLICIES_TEXT,
    noise: NoiseOpt = DEFAULT_NOISE_SIGMA,
    bias: BiasOpt = None,
    noise_from: NoiseFromOpt = None,
    noise_db: NoiseDbOpt = None,
    goodput: bool = typer.Option(False, "--goodput", help="Bisect goodput and fair goodput per policy."),
    target: float = typer.Option(DEFAULT_TARGET, max=1.0, help="Attainment target for goodput: above 0, at most 1."),
    rates: str = typer.Option(None, help="Comma list of rates: attainment per rate and per class."),
    json_out: bool = typer.Option(False, "--json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Goodput, or attainment per rate, of each policy (simulated).

    Goodput and fair goodput per policy (--goodput), or attainment per rate and class (--rates).
    """
    import json

    from ..core.policy import PolicyError
    from ..bench.scenario import capacity_rps, ceilings, evaluate, goodput_range, goodput_rates, sweep_goodput
    from ..core.metrics import above_ceiling_note

    setup_logging(verbose)
    if goodput == (rates is not None):
        fail("give exactly one of --goodput or --rates")
    if goodput and not target > 0:
        fail(f"--target {target:g}: an attainment above 0 (at most 1); at 0 every rate would pass")
    if not goodput and given(ctx, "target", target) is not None:  # (outside test 99: ignored without a word)
        fail("--target applies to --goodput only (--rates prints the attainment at each rate); drop it")
    rate_list = _rates(rates) if rates is not None else []
    noise, bias = fitted_noise(noise_from, noise_db, noise, bias, err=json_out, profile=noise_from and (
        workload_pricing(given(ctx, "profile", profile), given(ctx, "cluster", cluster), mix, None, None)[0]))
    try:
        loaded = load_workload(given(ctx, "profile", profile), given(ctx, "cluster", cluster), mix, None, None, arrival, duration, slo_scale, seed, noise, bias)
        specs = runnable_specs(loaded, policy_specs(policies, unique=True))
        cap = capacity_rps(loaded)
        slo_cap = ceilings(loaded)[1].rps
        if goodput:
            low, top = goodput_rates(loaded, cap)  # (refused before any policy runs where the arrival cannot take them)
            results = [sweep_goodput(loaded, spec, target, cap=cap) for spec in specs]
            # top: the bisection's highest rate (a policy that passes there may go higher); low: its lowest
            out = {"capacity_rps": cap, "slo_aware_capacity_rps": slo_cap, "target": target, "search_max_rps": top,
                   "policies": [{"policy": g.policy, "goodput_rps": g.goodput_rps,
                                 "fair_goodput_rps": g.fair_goodput_rps,
                                 "at_search_max": g.goodput_rps >= top * (1 - 1e-9)} for g in results]}
            if json_out:
                typer.echo(json.dumps(out, indent=1))
                return
            typer.echo("\n".join(ceiling_lines(loaded)))
            typer.echo(table(out["policies"], ("policy", "goodput_rps", "fair_goodput_rps")))
            note = above_ceiling_note({g.policy: g.goodput_rps for g in results}, slo_cap, duration, target)
            if note:
                typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
            for p in out["policies"]:
                if p["at_search_max"]:
                    typer.secho(f"note: {p['policy']} meets the target at the search's highest rate ({top:.3g} req/s, "
                                "1.25 x the capacity ceiling): its goodput is at least that, not that; "
                                "`--rates` beyond it shows how far", err=True, fg=typer.colors.YELLOW)
                elif not p["goodput_rps"]:
                    typer.secho(f"note: {p['policy']} misses the target even at the search's lowest rate ({low:.3g} "
                                f"req/s{', one whole burst over the duration' if low > goodput_range(cap)[0] * 1.0001 else ''}): "
                                "0 says that, not that it serves nothing", err=True, fg=typer.colors.YELLOW)
            return
        loaded.check_rates(rate_list)
        points = {spec: [evaluate(loaded, spec, r) for r in rate_list] for spec in specs}
    except (ValueError, LookupError, PolicyError, OSError) as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps({"capacity_rps": cap, "slo_aware_capacity_rps": slo_cap, "points": [
            {"policy": spec, "rate": p.rate, "attainment": p.attainment, "min_class": p.min_class,
             "by_class": {k: a for k, (_, a) in p.by_class.items()}} for spec, ps in points.items() for p in ps]},
            indent=1))
        return
    typer.echo("\n".join(ceiling_lines(loaded)))
    classes = sorted({k for ps in points.values() for p in ps for k in p.by_class})
    cols = ("policy", "rate", "attainment", *classes)
    # (the rate as given, to 6 significant digits: to 2 decimals 0.1629 and 0.16 read the same; outside test 128)
    rows = [{"policy": spec, "rate": f"{p.rate:g}", "attainment": p.attainment,
             **{k: p.by_class.get(k, (0, float("nan")))[1] for k in classes}} for spec, ps in points.items() for p in ps]
    typer.echo(table(rows, cols))


def _rates(text: str) -> list[float]:
    """``--rates``: a comma list of numbers, at least one; else one ``error:`` line."""
    parts = [r.strip() for r in text.split(",")]
    if not any(parts):
        fail("--rates: give at least one rate (a comma list, e.g. 0.5,1,2)")
    if not all(parts):  # (`1,,2` dropped its empty item without a word)
        fail(f"--rates {text}: an empty item; give a comma list of numbers, e.g. 0.5,1,2")
    bad = []
    out = []
    for r in parts:
        try:  # (as --rate reads a number: float() also took `1_0`, fullwidth `０.５` and other scripts' digits)
            if not r.isascii() or "_" in r:
                raise ValueError(r)
            out.append(float(r))
        except ValueError:
            bad.append(repr(r))
    if bad:
        fail(f"--rates: not a number: {', '.join(bad)} (a comma list of requests per second, e.g. 0.5,1,2)")
    # before any simulation: `1,nan` simulated rate 1, then failed
    bad = [r for r, v in zip(parts, out) if not (math.isfinite(v) and v > 0)]
    if bad:
        fail(f"--rates: not a rate > 0: {', '.join(bad)} (requests per second, e.g. 0.5,1,2)")
    twice = list(dict.fromkeys(r for r, v in zip(parts, out) if out.count(v) > 1))  # (as given, in order)
    if twice:
        fail(f"--rates: given more than once: {', '.join(twice)}")
    return out


def policies(name: str = typer.Argument(None, metavar="NAME",
                                        help="A policy: list its options, each with its default and what it does.")
             ) -> None:
    """List the scheduling policies, or one policy's options.

    With NAME, each option of that policy with its default and what it does; give them in --policies
    as NAME:key=value,key=value."""
    import textwrap

    from ..core.policy import PolicyError, policy_class, registered_policies

    if name is None:
        for key, cls in sorted(registered_policies().items()):
            typer.echo(f"{key:18} {cls.summary}")
        typer.echo("`trident policies NAME` lists a policy's options (NAME:key=value,... in --policies)")
        return
    try:  # (outside test: the only listing of an option was its name, after a bad one)
        cls = policy_class(name.strip())
    except PolicyError as exc:
        fail(str(exc))
    typer.echo(f"{cls.name}: {cls.summary}")
    for key, (conv, default, help_text) in cls.options.items():
        shown = str(default).lower() if isinstance(default, bool) or default is None else f"{default:g}" if isinstance(
            default, float) else str(default)
        typer.echo(textwrap.fill(f"{key}={shown} ({conv.__name__}): {help_text}", width=110, initial_indent="  ",
                                 subsequent_indent="      "))

