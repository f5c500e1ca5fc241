"""``trident bench``: compare policies on one workload, simulated or live; every run is stored.

Library calls: ``tridentcore.bench.scenario`` and ``tridentcore.bench.runs`` (simulated runs),
``tridentcore.bench.live`` (live runs); these functions validate, loop over the policies, handle
Ctrl-C and format. About 510 lines, one job (the `trident bench` command): the simulated and the live
bench share its options, checks and output, each a function of its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from typing import Any

import typer

from ..core.defaults import (DEFAULT_ARRIVAL, DEFAULT_CLUSTER, DEFAULT_DURATION_S, DEFAULT_LIVE_DEVICES,
                             DEFAULT_LIVE_TIME_SCALE, DEFAULT_MIX, DEFAULT_PROFILE, DEFAULT_RATE, DEFAULT_SEED,
                             DEFAULT_SLO_SCALE, DEFAULT_TARGET, DEFAULT_TIME_SCALE)
from .common import (DEFAULT_DB, DEFAULT_POLICIES_TEXT, EXIT_INTERRUPTED, ArrivalOpt, ClusterOpt, DurationOpt,
                     MixOpt, ModelOpt, PoliciesOpt, ProfileOpt, RateOpt, SeedOpt, SloScaleOpt, ceiling_lines, check_db, check_folder, drop_if_unused, refuse_mix_options_with_trace, db_message, given, delta, fail, json_safe, load_workload, one_line, policy_specs,
                     runnable_specs, setup_logging, store_errors, store_failed, table, value, write_errors)

__all__ = ["bench"]


def _fail(text: str) -> None:
    fail(one_line(text))


def _dash_table(rows: list[dict], columns) -> str:
    return table(rows, columns, none_as_dash=True)


_BENCH_COLUMNS = ("policy", "requests", "attainment", "mean_s", "p95_s", "p99_s", "ooms", "rejected", "gpu_s_per_met")
_REPEAT_ONLY = {"repeat", "db", "verbose", "progress"}
MIN_LIVE_TIME_SCALE = 0.001  # a live bench's smallest --time-scale: 1 ms of host time reads as 1 workload second


def bench(
    ctx: typer.Context,
    backend: str = typer.Option("sim", help="sim (the simulator) or live (trident serve + Locust per policy)."),
    policies: PoliciesOpt = DEFAULT_POLICIES_TEXT,
    mix: MixOpt = None,
    trace: str = typer.Option(None, help="Trace file (JSON lines, or the paper's Request(...) lines) instead of a mix."),
    model: ModelOpt = None,
    arrival: ArrivalOpt = DEFAULT_ARRIVAL,
    rate: RateOpt = DEFAULT_RATE,
    duration: DurationOpt = DEFAULT_DURATION_S,
    slo_scale: SloScaleOpt = DEFAULT_SLO_SCALE,
    seed: SeedOpt = DEFAULT_SEED,
    profile: ProfileOpt = DEFAULT_PROFILE,
    cluster: ClusterOpt = DEFAULT_CLUSTER,
    goodput: bool = typer.Option(False, "--goodput", help="Also bisect goodput and fair goodput per policy (mixes)."),
    target: float = typer.Option(DEFAULT_TARGET, max=1.0, help="Attainment target for goodput: above 0, at most 1."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB results file every run is stored in."),
    devices: str = typer.Option(DEFAULT_LIVE_DEVICES, help="Live: trident serve --devices (its emulated part is the "
                                                          "cluster the SLOs and the simulator use)."),
    time_scale: float = typer.Option(None, help="Live: wall seconds per workload second (trident serve --time-scale; "
                                                "the schedule is sent compressed by it; default "
                                                f"{DEFAULT_LIVE_TIME_SCALE:g} with emulated devices, else 1)."),
    keep: str = typer.Option(None, help="Live: keep Locust's CSV/HTML reports and the logs in DIR/<run_id>/."),
    repeat: str = typer.Option(None, help="Run a stored run (sim or live) again from its config and compare; takes only --db (and --no-progress)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list, one object per policy."),
    progress: bool = typer.Option(True, help="Progress bar on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Compare policies on one workload and store every run.

    Every run is stored (with what reproduces it) in --db. Prints a side-by-side table and the run ids. Ctrl-C (or SIGTERM, or SIGHUP unless started under nohup) stops: runs already stored stay, the run in progress is not written (each run is one transaction); exit 130 (143 after SIGTERM, 129 after SIGHUP). With --repeat RUN_ID a stored sim run is simulated again and old and new summaries are printed; exit status 1 if they differ.

    Live (--backend live): for each policy `trident serve --devices DEVICES --time-scale SCALE` and Locust (workloads/mixed.py) run as child processes on loopback with the simulator's schedule for the same seed (--rate and --duration in workload seconds; the sends are compressed by --time-scale); the server's rows and the client's rows are stored as one run. Ctrl-C (or SIGTERM, or SIGHUP unless started under nohup) stops both children and stores the run in progress as interrupted; exit 130 (143 after SIGTERM, 129 after SIGHUP). --repeat of a live run runs it live again and prints both summaries (live runs are not expected to be identical).
    """
    setup_logging(verbose)
    refuse_mix_options_with_trace(ctx, trace)
    if repeat is not None:
        # (typer ships its own click: compare the ParameterSource by name)
        extra = sorted(name for name in ctx.params if name not in _REPEAT_ONLY
                       and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT")
        if extra:
            flags = {p.name: p for p in ctx.command.params}  # as given: --no-progress is a flag's off side
            named = [flags[e].secondary_opts[0] if ctx.params[e] is False and flags[e].secondary_opts
                     else flags[e].opts[0] for e in extra]
            _fail(f"--repeat takes only --db and --no-progress (the run's own config is used); drop {', '.join(named)}")
        _repeat(repeat, db, progress)
        return
    if backend == "live":
        if goodput:
            _fail("--goodput bisects the rate in the simulator; use it with --backend sim")
        _bench_live(policies=policies, mix=mix, trace=trace, model=model, arrival=arrival, rate=rate,
                    duration=duration, slo_scale=slo_scale, seed=seed, profile=given(ctx, "profile", profile),
                    cluster=given(ctx, "cluster", cluster), devices=devices, time_scale=time_scale, keep=keep,
                    db=db, json_out=json_out, progress=progress)
        return
    if backend != "sim":
        _fail(f"unknown backend {backend!r}; valid: sim, live")
    live_only = [f"--{name.replace('_', '-')}" for name in ("devices", "time_scale", "keep")
                 if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"]
    if live_only:  # (they were ignored without a word)
        _fail(f"{', '.join(live_only)}: {'apply' if len(live_only) > 1 else 'applies'} to --backend live only; "
              "drop {} or add --backend live".format("them" if len(live_only) > 1 else "it"))
    if goodput and trace is not None:
        _fail("--goodput sweeps the rate of a mix; it does not apply to a trace")
    if not target > 0:
        _fail(f"--target {target:g}: an attainment above 0 (at most 1); at 0 every rate would pass")
    _bench_sim(policies=policies, mix=mix, trace=trace, model=model, arrival=arrival, rate=rate, duration=duration,
               slo_scale=slo_scale, seed=seed, profile=given(ctx, "profile", profile),
               cluster=given(ctx, "cluster", cluster), goodput=goodput, target=target,
               db=db, json_out=json_out, progress=progress)


def _policy_specs(policies: str) -> list[str]:
    return policy_specs(policies, unique=True)


def _bench_sim(*, policies, mix, trace, model, arrival, rate, duration, slo_scale, seed, profile, cluster, goodput,
               target, db, json_out, progress) -> None:
    import json

    from tqdm import tqdm

    from ..bench.live_procs import sigterm_interrupts, stopping_signal
    from ..bench.scenario import capacity_rps, goodput_rates, sweep_goodput
    from ..core.policy import PolicyError
    from ..bench.runs import resolve_run, run_and_store, summaries
    from ..store import new_run_id

    try:
        loaded = load_workload(profile, cluster, mix, trace, model, arrival, duration, slo_scale, seed)
        specs = _policy_specs(policies)
        if not loaded.requests(rate):
            _fail("the workload has no requests (rate x duration too small?)")
        specs = runnable_specs(loaded, specs)
        cap = capacity_rps(loaded) if goodput else None
        if cap is not None:
            goodput_rates(loaded, cap)  # the rates sweep_goodput simulates: refused before any run is stored
    except (ValueError, LookupError, PolicyError, OSError) as exc:
        _fail(str(exc))
    made = not os.path.exists(db)  # (a database this bench made, then stored nothing in, goes: as simulate's)

    bench_id = new_run_id("bench", seed)
    run_ids = {spec: new_run_id(spec, seed) for spec in specs}
    stored: list[str] = []
    goodputs: dict[str, Any] = {}
    current, phase = None, "simulating"
    bar = tqdm(specs, desc="bench", unit="policy", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        with sigterm_interrupts():  # SIGTERM (timeout, systemd) ends it as Ctrl-C does: what is stored said
            check_db(db)  # (in here: a Ctrl-C just after it made the file removes it)
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
        half = "" if current is None or run_ids[current] in stored else " (its run was not stored: nothing half-written)"
        drop_if_unused(db, made, stored)  # (outside test 121: an empty 270 KB file was left)
        typer.secho(f"interrupted while {phase} {current or 'the first policy'}{half}; {len(stored)} of {len(specs)} "
                    f"runs stored in {db}" + (": " + ", ".join(stored) if stored else ""), err=True,
                    fg=typer.colors.YELLOW)
        raise typer.Exit(128 + stopping_signal() if stopping_signal() else EXIT_INTERRUPTED) from None
    except write_errors() as exc:  # (the store failed part way: a full disk)
        bar.close()
        if current is not None and run_ids[current] not in stored:
            with contextlib.suppress(Exception):  # (committed after all)
                resolve_run(db, run_ids[current])
                stored.append(run_ids[current])
        drop_if_unused(db, made, stored)
        store_failed(exc, db, run_ids[current], stored, len(specs))
    except (ValueError, LookupError, PolicyError, OSError) as exc:
        bar.close()
        drop_if_unused(db, made, stored)
        if stored:  # (what was stored is said, as after a Ctrl-C)
            _fail(f"{one_line(str(exc))}; while {phase} {current}: {len(stored)} of {len(specs)} runs stored in {db}: "
                  + ", ".join(stored))
        _fail(str(exc))
    bar.close()

    rows = summaries(db, stored)
    for row in rows:
        g = goodputs.get(row["policy"])
        if g is not None:
            row["goodput_rps"], row["fair_goodput_rps"] = g.goodput_rps, g.fair_goodput_rps
    columns = _BENCH_COLUMNS[:6] + (("goodput_rps", "fair_goodput_rps") if goodput else ()) + _BENCH_COLUMNS[6:] + ("run_id",)
    if json_out:
        out = [json_safe({c: (math.nan if r.get(c) is None else r.get(c)) for c in columns}) for r in rows]
        typer.echo(json.dumps(out, indent=1))
        return
    load = "" if trace is not None else f" at {rate:g} req/s for {duration:g} s"
    typer.echo(f"{loaded.scenario.workload_label}{load} on {loaded.cluster.label} ({loaded.scenario.profile}), slo scale {slo_scale:g}, "
               f"seed {seed}: {len(loaded.requests(rate))} requests")
    if goodput:
        typer.echo("\n".join(ceiling_lines(loaded)))
    typer.echo(_dash_table(rows, columns))
    typer.echo(f"stored {len(stored)} run{'' if len(stored) == 1 else 's'} in {db} (each run's config names this bench, {bench_id}); `trident runs show RUN_ID --db {db}` for details")


_REPEAT_KEYS = ("requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected", "failed",
                "preemptions", "gpu_s", "gpu_s_per_met")


def _repeat(run: str, db: str, progress: bool = True) -> None:
    from ..core.policy import PolicyError
    from ..bench.runs import RunConfigError, repeat_run, resolve_run
    from ..store import query_readonly

    try:
        run_id = resolve_run(db, run)
        stored = query_readonly(db, "SELECT backend, config_json FROM runs WHERE run_id = ?", [run_id])
    except store_errors() as exc:
        _fail(db_message(exc, db))
    if stored["backend"][0] == "live":
        config = stored["config_json"][0]
        if '"devices"' not in config:
            _fail(f"run {run_id!r} is a live run without a live bench's config (it was not written by "
                  "`trident bench --backend live`); only sim runs and live bench runs can be repeated")
        _repeat_live(run_id, config, db, progress)
        return
    try:
        rep = repeat_run(db, run)
    except (*store_errors(), RunConfigError, ValueError, LookupError, PolicyError, OSError) as exc:
        _fail(db_message(exc, db))
    old, new = rep.old, rep.new
    typer.echo(f"repeat of {rep.old_id} ({old['policy']}, {old['mix']} at {old['rate_rps']:g} req/s, seed {old['seed']})")
    typer.echo(f"new run   {rep.new_id} stored in {db}")
    rows = [{"metric": k, "old": value(old[k], k), "new": value(new[k], k),
             "same": "yes" if k not in rep.differences else "NO"} for k in _REPEAT_KEYS]
    typer.echo(_dash_table(rows, ("metric", "old", "new", "same")))
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
    """The live bench's spec and its requests, validated (errors are one line)."""
    from ..bench.live import LiveBenchSpec, cluster_of_devices
    from ..bench.scenario import pricing_for, schedule_requests
    from ..core.cluster import CPU_KIND
    from ..bench.spec import RunSpec, RunSpecError

    from ..runtime.devices import SetupError, parse_devices

    if mix is not None and trace is not None:
        _fail("give --mix or --trace, not both")
    if trace is not None and os.path.exists(trace) and not os.path.isfile(trace):
        _fail(f"--trace {trace} is not a regular file (a pipe?): a live bench hands the trace to Locust, which reads "
              "it again; write it to a file first")
    try:
        parse_devices(devices)  # (a kind it does not know is named as such, not as a profile that cannot cost it)
    except SetupError as exc:
        _fail("--devices: " + "; ".join(exc.problems))
    emulated = cluster_of_devices(devices)
    if cluster is not None and emulated is not None and cluster != emulated:
        _fail(f"--cluster {cluster} differs from the emulated devices {emulated} (--devices {devices}); drop --cluster")
    cpu = re.fullmatch(r"\s*cpu:(\d+)\s*", devices)  # CPU workers only: the SLOs are priced for them
    if cluster is not None and cpu is not None:  # (outside test 121: stored as the cluster given, 1x1xcpu on cpu:2)
        from ..core.cluster import parse_cluster

        try:
            given_cluster = parse_cluster(cluster)
        except ValueError as exc:
            _fail(f"--cluster {cluster}: {exc}")
        if given_cluster.kind != CPU_KIND or given_cluster.num_gpus != int(cpu.group(1)):
            _fail(f"--cluster {cluster} differs from the cpu devices {cpu.group(1)}x{CPU_KIND} (--devices {devices}); "
                  "drop --cluster")
    if time_scale is not None and time_scale != 1.0 and emulated is None:  # (refused by the server, once started)
        _fail(f"--time-scale {time_scale:g}: it applies to emulated devices only (--devices {devices} take their "
              "own time)")
    cluster = cluster or emulated or (f"{cpu.group(1)}x{CPU_KIND}" if cpu else DEFAULT_CLUSTER)
    if profile is None:
        profile, _ = pricing_for(None, None, cluster)  # the shipped profile of the cluster's kind
    if time_scale is None:  # real devices (cpu, cuda) take their own time: only emulated ones are scaled
        time_scale = DEFAULT_LIVE_TIME_SCALE if emulated is not None else DEFAULT_TIME_SCALE
    if not time_scale >= MIN_LIVE_TIME_SCALE:
        # (1e-9 was taken: the whole schedule sent in a microsecond, and each millisecond of the host's own
        # work read as a million workload seconds: mean latency 57,579 s, attainment 0)
        _fail(f"--time-scale must be at least {MIN_LIVE_TIME_SCALE:g} for a live bench (the schedule is sent at t x "
              "time scale, and latencies are read back divided by it: below that the host's own milliseconds "
              "per request are most of what is measured)")
    run = RunSpec(profile=profile, cluster=cluster, mix=None if trace else (mix or DEFAULT_MIX), trace=trace,
                  trace_model=model, arrival=arrival, rate=rate, duration_s=duration, seed=seed, slo_scale=slo_scale,
                  backend="live", devices=devices, time_scale=time_scale)
    try:
        requests = schedule_requests(run)
    except RunSpecError as exc:
        _fail(str(exc))
    if not requests:
        _fail("the workload has no requests (rate x duration too small?)")
    return LiveBenchSpec(run), requests


class _LiveBar:
    """One progress bar per policy: requests finished of those scheduled, and the phase."""

    def __init__(self, enabled: bool, policy: str, total: int, index: int, count: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=f"[{index}/{count}] {policy}", unit="req", file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True, leave=True)
        self.enabled, self.phase = enabled, ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total and total != self.bar.total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        if phase != self.phase:
            self.phase = phase
            self.bar.set_postfix_str(phase)
            if not self.enabled and phase.startswith("interrupted"):  # said even without the bar: the wait is long
                typer.echo(phase, err=True)

    def close(self) -> None:
        self.bar.close()


def _run_live(spec, specs: list[str], db: str, seed: int, keep: str | None, progress: bool,
              extra_config: dict, total: int, made: bool = False) -> tuple[list, list[str]]:
    """Run each policy live; returns (LiveRun results, stored run ids). Ctrl-C: see bench's help.
    ``made``: the bench made ``db``; stopped or failed before any run is stored, it is removed."""
    from pathlib import Path

    from ..bench.live import LiveBench, LiveBenchError, LiveRunCrashed
    from ..bench.live_procs import sigterm_interrupts, stopping_signal
    from ..bench.orphans import recover_orphans
    from ..store import new_run_id

    # runs of live benches on this database that were killed (or could not store): in the temporary
    # folder, and in this bench's --keep folder
    for r in recover_orphans(db, folders=[keep] if keep else ()):
        typer.echo(r.message, err=True)
        made = False
    results, stored = [], []
    for k, policy in enumerate(specs, start=1):
        run_id = new_run_id(policy, seed)
        bar = _LiveBar(progress, policy, total, k, len(specs))
        try:
            with sigterm_interrupts():  # SIGTERM (timeout, a CI cancel) ends it as Ctrl-C does
                result = LiveBench(spec, policy, run_id, db, extra_config=extra_config, progress=bar,
                                   artifacts=Path(keep) / run_id if keep else None).run()
        except KeyboardInterrupt as exc:  # LiveBenchInterrupted: the run in progress, stored as interrupted
            bar.close()
            partial = getattr(exc, "partial", None)
            if partial is not None:
                stored.append(partial.run_id)
                what = f"run {partial.run_id} stored as {partial.status}"
            else:
                what = "its run was not stored: nothing half-written"
            drop_if_unused(db, made, stored)
            typer.secho(f"interrupted during {policy} ({what}); {len(stored)} of {len(specs)} runs stored in {db}"
                        + (": " + ", ".join(stored) if stored else ""), err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(128 + stopping_signal() if stopping_signal() else EXIT_INTERRUPTED) from None
        except (LiveBenchError, ValueError, OSError) as exc:
            bar.close()
            if isinstance(exc, LiveRunCrashed) and exc.partial is not None:
                stored.append(exc.partial.run_id)
            drop_if_unused(db, made, stored)
            done = f" (stored: {', '.join(stored)})" if stored else ""
            _fail((f"live run of {policy} failed: {exc}{done}"))
        bar.close()
        results.append(result)
        stored.append(result.run_id)
    return results, stored


def _bench_live(*, policies, mix, trace, model, arrival, rate, duration, slo_scale, seed, profile, cluster, devices,
                time_scale, keep, db, json_out, progress) -> None:
    from ..bench.runs import summaries
    from ..core.policy import PolicyError
    from ..store import new_run_id

    try:
        specs = _policy_specs(policies)
    except (ValueError, LookupError, PolicyError) as exc:
        _fail(str(exc))
    spec, requests = _live_spec(mix=mix, trace=trace, model=model, arrival=arrival, rate=rate, duration=duration,
                                slo_scale=slo_scale, seed=seed, profile=profile, cluster=cluster, devices=devices,
                                time_scale=time_scale)
    if keep is not None:
        check_folder(keep, "--keep", "each run's reports and logs")
    made = not os.path.exists(db)  # (a database this bench made, then stored nothing in, goes: outside test 121)
    check_db(db)
    bench_id = new_run_id("bench-live", seed)
    results, stored = _run_live(spec, specs, db, seed, keep, progress, {"bench": bench_id}, len(requests), made)
    _print_live(results, summaries(db, stored), spec, len(requests), db, bench_id, json_out)


def _print_live(results, rows, spec, scheduled: int, db, bench_id, json_out) -> None:
    import json

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
    s = spec.run
    load = "" if s.trace else f" at {s.rate:g} req/s for {s.duration_s:g} s"
    typer.echo(f"{s.workload_label}{load} (workload seconds; sent at x{s.time_scale:g} wall) on "
               f"{spec.devices}, slo scale {s.slo_scale:g}, seed {s.seed}: {scheduled} requests per policy")
    typer.echo(_dash_table(rows, _LIVE_COLUMNS))
    by_run = {r["run_id"]: r for r in rows}
    for res in results:
        odd = {k: v for k, v in res.states.items() if k not in ("done", "rejected", "failed")}
        if odd:
            row = by_run.get(res.run_id, {})
            n, att = row.get("requests"), row.get("attainment")
            known = n is not None and att is not None and math.isfinite(float(att)) and scheduled > 0
            over_all = f"; over all {scheduled} scheduled it is {float(att) * int(n) / scheduled:.3f}" if known else ""
            typer.secho(f"warning: {res.policy}: client saw {odd}: not in the server's rows, so the table's "
                        f"attainment counts only the {n} requests the server accepted{over_all}",
                        err=True, fg=typer.colors.YELLOW)
        if not math.isnan(res.lag_p99_ms) and res.lag_p99_ms > 50:
            typer.secho(f"warning: {res.policy}: schedule lag p99 {res.lag_p99_ms:.1f} ms > 50 ms: the load generator "
                        "fell behind the schedule", err=True, fg=typer.colors.YELLOW)
        for note in res.notes:
            typer.secho(f"warning: {res.policy}: {note}", err=True, fg=typer.colors.YELLOW)
        seen = _seen_rate(db, res.run_id, s)
        if seen:
            typer.secho(f"warning: {res.policy}: {seen}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"stored {len(rows)} run{'' if len(rows) == 1 else 's'} in {db} (each run's config names this bench, "
               f"{bench_id}); `trident runs show RUN_ID --db {db}` for details")


def _seen_rate(db: str, run_id: str, run) -> str:
    """On emulated devices, the load the server's clock saw where it is over 3 % above the schedule's:
    its own work (the host's CPU) counts at real speed there while the devices' time is compressed
    (``runtime/clock.py``), so each wall second it is busy brings the next arrival closer on its clock
    (outside test 121: 11-17 % more load at time scale 0.05 on a busy host, unsaid; the simulator
    matched the run at that higher rate). "" where it did not, or on real devices. (A stored live run's
    ``requests.request_id`` is the schedule's index, as ``client_requests.request_index``; the engine's id
    is ``server_request_id``, on which the join paired 19 of 259 rows wrongly: outside test 125.)"""
    from ..store import query_readonly

    if run.time_scale == 1.0 or run.trace:
        return ""
    try:
        got = query_readonly(db, "SELECT count(*) AS n, max(r.arrival_s) - min(r.arrival_s) AS seen, "
                                 "max(c.workload_t_s) - min(c.workload_t_s) AS scheduled FROM requests r "
                                 "JOIN client_requests c ON c.run_id = r.run_id AND c.request_index = r.request_id "
                                 "WHERE r.run_id = ?", [run_id])
    except Exception:  # noqa: BLE001 - a note, never a failure of the bench
        return ""
    n, seen, scheduled = got["n"][0], got["seen"][0], got["scheduled"][0]
    if n < 20 or not (seen == seen and scheduled == scheduled and seen > 0 and scheduled > 0):
        return ""
    ratio = seen / scheduled
    if 1 / ratio < 1.03:
        return ""
    # (the rates of the requests sent: a seed's schedule is not exactly --rate; outside test 123)
    return (f"its arrivals came {1 / ratio:.2f} times as fast on the server's clock as scheduled, so it served "
            f"about {(n - 1) / seen:.3g} req/s, not {(n - 1) / scheduled:.3g} (--rate {run.rate:g}): the host's own "
            "work counts at real speed on that "
            f"clock while the devices' time is compressed x{run.time_scale:g} (compare with the simulator at that "
            "rate; a larger --time-scale, or a quieter host, brings them closer)")


def _repeat_live(old_id: str, config_json: str, db: str, progress: bool = True) -> None:
    import json

    from ..bench.live import spec_from_config
    from ..bench.runs import refuse_changed_inputs, summaries
    from ..bench.scenario import schedule_requests

    try:
        refuse_changed_inputs(json.loads(config_json), old_id)
    except ValueError as exc:
        _fail(str(exc))
    try:
        spec, policy = spec_from_config(json.loads(config_json))
        total = len(schedule_requests(spec.run))
    except (ValueError, TypeError) as exc:
        _fail((f"run {old_id!r}: {exc}"))
    results, stored = _run_live(spec, [policy], db, spec.run.seed, None, progress, {"repeat_of": old_id}, total)
    old, new = summaries(db, [old_id, stored[0]])
    typer.echo(f"repeat of {old_id} (live {policy}, {old['mix']} at {old['rate_rps']:g} req/s, seed {old['seed']}, "
               f"devices {spec.devices}, time scale {spec.run.time_scale:g})")
    typer.echo(f"new run   {stored[0]} stored in {db}")
    rows = [{"metric": k, "old": value(old[k], k), "new": value(new[k], k), "new - old": delta(old[k], new[k], k)}
            for k in _REPEAT_KEYS]
    typer.echo(_dash_table(rows, ("metric", "old", "new", "new - old")))
    typer.echo("live runs repeat the same schedule on the wall clock: expect small differences, not identity")
