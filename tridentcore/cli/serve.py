"""``trident serve``: the HTTP API over live workers driven by a policy."""

from __future__ import annotations

import typer

from ..core.defaults import (API_KEY_ENV, DEFAULT_DB_WAIT_S, DEFAULT_JOURNAL_MIB, DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_NO_DEVICE_TIMEOUT_S, DEFAULT_KEEP_ENDED, DEFAULT_MAX_RESULTS, DEFAULT_RESULTS_MIB,
                             DEFAULT_CLIENT_TIMEOUT_S, DEFAULT_LIVE_CALIBRATE, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUED, DEFAULT_POLICY,
                             DEFAULT_SERVE_DEVICES, DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE, MAX_SCALE)
from .common import EXIT_INTERRUPTED, fail, quiet_libraries, setup_logging

__all__ = ["serve"]

def serve(
    ctx: typer.Context,
    models: str = typer.Option(None, help="Comma list: tiny pipelines for cpu:N (tiny-sd3,tiny-wan), "
                                          "profile models for emulated or cuda devices (sd3-medium,wan2.1-1.3b); "
                                          "required unless --spec names a workload (its models are served)."),
    devices: str = typer.Option(DEFAULT_SERVE_DEVICES, help="cpu:N (N worker processes), cuda:all or cuda:0,1 (one worker "
                                                            "per GPU), emulated:NODESxGPUSxKIND (emulated:2x8xH200), or kinds mixed "
                                                            "(cpu:1,emulated:8xH200: each model on the first kind that runs it)."),
    policy: str = typer.Option(DEFAULT_POLICY, help="A policy spec of the registry, options as name:key=value."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs an API key."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: any free port; see --port-file)."),
    db: str = typer.Option(None, help="DuckDB results file: the run's requests, spans and placements, stored as they "
                                      "happen (a journal next to it, FILE.journal/, holds what is not in yet; a crashed "
                                      "run's journal is ingested at the next start or by `trident runs recover`). Folders "
                                      "on its path that do not exist are made."),
    db_wait: float = typer.Option(DEFAULT_DB_WAIT_S, min=0.0, help="Seconds the final write waits for another process's "
                                                                   "lock on --db (and for room on a full disk); past it "
                                                                   "the server exits 1 and its journal keeps the rows."),
    journal_mb: float = typer.Option(DEFAULT_JOURNAL_MIB, min=0.01, metavar="MIB", help="With --db: once the run's "
                                     "journal is past this size (about 0.7 kB a request), what the store already holds "
                                     "is dropped from it, so that a server running for weeks keeps a journal of about "
                                     "this size."),
    time_scale: float = typer.Option(DEFAULT_TIME_SCALE, min=0.0, max=MAX_SCALE, help="Emulated devices: wall seconds per cost-model second (0: zero-cost)."),
    profile: str = typer.Option(None, help="Cost profile (default: h200 for emulated and cuda, cpu for cpu:N) or a CSV "
                                           "path; with mixed kinds it applies to all but cpu, or give KIND=NAME pairs."),
    max_queued: int = typer.Option(DEFAULT_MAX_QUEUED, min=1, help="Submissions get 429 while this many requests wait "
                                   "(for their first stage or between stages: admitted ones count again when they wait "
                                   "for their next); a request with more images or videos (n) is refused 422."),
    slo_scale: float = typer.Option(DEFAULT_SLO_SCALE, min=0.1, max=MAX_SCALE, help="Default deadline: arrival + scale x reference latency."),
    api_key_file: str = typer.Option(None, help="File holding the API key (stripped; keep it mode 600). With a key, "
                                                "every route but /healthz needs Authorization: Bearer KEY. "
                                                "Or set TRIDENT_API_KEY."),
    api_key: str = typer.Option(None, help="Deprecated: the key on the command line is visible to every user "
                                           "(ps, /proc); use TRIDENT_API_KEY or --api-key-file."),
    drain_timeout: float = typer.Option(DEFAULT_DRAIN_TIMEOUT_S, min=0.0, help="Seconds shutdown waits for in-flight work before failing it."),
    no_device_timeout: float = typer.Option(DEFAULT_NO_DEVICE_TIMEOUT_S, min=1.0, max=86400.0, metavar="SECONDS",
                                            help="With no device alive this long and every lost worker's restart "
                                                 "failing, the waiting requests fail and new ones get 503 until one "
                                                 "is back (a restart under way only keeps them queued)."),
    max_body: int = typer.Option(DEFAULT_MAX_BODY_BYTES, min=1024, help="Largest request body in bytes (413 past it)."),
    client_timeout: float = typer.Option(DEFAULT_CLIENT_TIMEOUT_S, min=0.1, max=3600.0, metavar="SECONDS",
                                         help="A request's line and headers must arrive within this after the "
                                              "connection opened (or the previous answer), then its body within "
                                              "this after its headers: 408 and the connection closed past it."),
    port_file: str = typer.Option(None, help="Write the bound port here once the server is ready (and, once it begins "
                                             "to stop, the number of the signal that stops it to FILE.stopping)."),
    run_id: str = typer.Option(None, help="Id of the run written to --db (default: a new one); refused if it is stored "
                                          "or another server holds it. A {n} in it takes the next free number at "
                                          "each start ('prod-{n}': prod-1, then prod-2 after a restart)."),
    keep_ended: int = typer.Option(DEFAULT_KEEP_ENDED, min=0, help="Ended requests kept in full in memory; older ones keep only "
                                                      "their final status (and their store row with --db); "
                                                      "their images and videos are kept apart (--results-mib)."),
    results_mib: int = typer.Option(DEFAULT_RESULTS_MIB, min=1, help=f"Finished images and videos kept for clients "
                                    f"to fetch: at most this many MiB (and {DEFAULT_MAX_RESULTS} results), the "
                                    "oldest dropped first (410 gone after)."),
    backend: str = typer.Option("local", help="local: workers on this host; ray: one Ray actor per device slot."),
    ray_address: str = typer.Option(None, help="--backend ray: a running Ray cluster (auto, HEAD:6379); "
                                               "not given: a private Ray instance on this host."),
    late: str = typer.Option(None, help="serve (the default): a request that can no longer meet its deadline is "
                                         "still served, last, and counts as an SLO miss (trident also admits one that "
                                         "would miss behind the admitted work as late at once); reject (goodput "
                                         "mode): a request that could not meet its deadline behind the admitted "
                                         "work is turned away on arrival with 503 + Retry-After."),
    calibrate: bool = typer.Option(DEFAULT_LIVE_CALIBRATE, "--calibrate/--no-calibrate",
                                   help="Learn measured / predicted stage times per model and stage; the policy and "
                                        "new deadlines use the calibrated cost model (/v1/cluster, /metrics)."),
    slowdown: float = typer.Option(1.0, metavar="K", min=1.0, max=MAX_SCALE,
                                   help="Testing aid, cpu devices: each worker takes K times the time it computed "
                                        "(it sleeps K-1 times that after each stage, per step in a diffuse): a "
                                        "device K times slower than its profile, whose factor the calibration "
                                        "learns. 1 <= K <= 1000 (1: as they are)."),
    inject_oom: str = typer.Option(None, envvar="TRIDENT_INJECT_OOM",
                                   help="Testing aid: STAGE:N[,STAGE:N] makes the first N dispatches of STAGE fail "
                                        "out of memory in their worker (retried at a safer configuration, counted)."),
    spec: str = typer.Option(None, help="Run spec file (JSON, as `trident bench --backend live` writes it): its devices, "
                                        "policy, time scale, SLO scale and profile (unless every device is cpu); "
                                        "options given on the command line win."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the HTTP API over live workers driven by a policy.

    OpenAPI docs at /docs. Once it serves it prints one line (URL, devices, models, policy). Ctrl-C
    or SIGTERM stops it: it drains the requests in flight (and answers for up to 5 s more until the
    clients polling for them have read how they ended), stops its workers and stores the rest of
    the run; it exits 0 after SIGTERM (or SIGHUP, a closed terminal, unless started under nohup), 130 after Ctrl-C (SIGINT), 1
    when the run could not all be stored, 2 when it could not start (an option, a model or device
    that cannot load, a Ray cluster that does not answer: said in one line).
    """
    import logging
    import os
    import signal
    import threading

    from ..runtime.sigint import stop_signals_heard, take_held

    served: list = []  # the ready server (its run id and database), once it serves

    def stop_before_serving(sig: int, frame) -> None:
        if served:  # after the server's own handlers (storing the run): the default action, as before
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        raise StoppedBeforeServing(sig)

    previous: dict = {}  # the handlers replaced, each put back as the command ends
    try:
        # until the server's own handlers take them (uvicorn's, as it starts the workers), a SIGTERM or
        # SIGHUP ends the start as a Ctrl-C does: it killed the process while it imported (outside test
        # 92: exit -15 and an empty log, on a busy host 2 s after launch). Taken inside the ``try``: a
        # SIGTERM between taking it and taking SIGHUP was raised outside it (exit 130 and no line; most
        # likely also the one traceback and exit 1 seen in about 200 stops 0.2-0.9 s after launch)
        if threading.current_thread() is threading.main_thread():  # (run in a thread: its caller's)
            for sig in stop_signals_heard():
                if sig != signal.SIGINT:
                    previous[sig] = signal.getsignal(sig)
                    signal.signal(sig, stop_before_serving)
            # a stop that came while the command was imported (``cli/launch.py`` held it): acted on now
            before, came = take_held()
            previous.update((sig, handler) for sig, handler in before.items() if sig in previous)
            if came is not None:
                raise StoppedBeforeServing(came)
        setup_logging(verbose)
        quiet_libraries()
        if api_key is not None:
            logging.getLogger(__name__).warning("--api-key is deprecated: the key on the command line is visible to "
                                                "every user of this machine (ps, /proc/PID/cmdline); "
                                                "use TRIDENT_API_KEY or --api-key-file")
        # the environment's key unless an option gives one; taken out of the environment, so worker
        # processes (which run model code) do not inherit it
        env_key = os.environ.pop(API_KEY_ENV, None)
        if api_key is None and api_key_file is None:
            api_key = env_key
        from ..runtime.build import SetupError
        from ..runtime.stored import RecordsNotStored
        from ..server.serve import ServeOptions, run_server

        expected = models_from = None
        if spec is not None:
            given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"}
            taken = _from_spec(spec, given)
            devices, policy = taken.get("devices", devices), taken.get("policy", policy)
            time_scale, slo_scale = taken.get("time_scale", time_scale), taken.get("slo_scale", slo_scale)
            profile, models = taken.get("profile", profile), taken.get("models", models)
            expected, models_from = taken.get("expected"), taken.get("models_from")
        if not models:
            fail("give --models (or a --spec whose workload names them)")

        if backend == "ray":  # a Ray instance this command starts sends no usage reports unless asked to
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

        try:
            stopped_by = _serve_then_tidy(port_file, run_server, ServeOptions(models=models, devices=devices, policy=policy, host=host, port=port, db=db,
                                    time_scale=time_scale, profile=profile, max_queued=max_queued, slo_scale=slo_scale,
                                    api_key=api_key, api_key_file=api_key_file, drain_timeout_s=drain_timeout, max_body_bytes=max_body,
                                    no_device_timeout_s=no_device_timeout,
                                    client_timeout_s=client_timeout,
                                    port_file=port_file, run_id=run_id, keep_ended=keep_ended, results_mib=results_mib, log_level="info" if verbose else "warning",
                                    backend=backend, ray_address=ray_address, inject_oom=inject_oom, expected=expected,
                                    late=late, calibrate=calibrate, slowdown=slowdown, db_wait_s=db_wait,
                                    journal_mib=journal_mb),
                                    on_ready=lambda ready: (served.append(ready), _announce(ready)))
        except SetupError as exc:  # a model the spec's mix names is said to come from there
            fail(str(exc) + (f" ({models_from})" if models_from and any(
                f"'{m}'" in str(exc) for m in models.split(",")) else ""))
        except RecordsNotStored as exc:  # served, but the run is not all in --db: say so in the exit status
            fail(str(exc), code=1)
        except StoppedBeforeServing:
            raise
        except KeyboardInterrupt:  # Ctrl-C before it served (loading, building): nothing to drain
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if served and served[0].db:  # (a run that could not be stored in full ended above, exit status 1)
            typer.echo(f"trident serve: run {served[0].run_id} stored in {served[0].db}", err=True)
        elif not served and stopped_by is not None:
            _stopped_before_serving(db)
        if stopped_by == signal.SIGINT:
            raise typer.Exit(EXIT_INTERRUPTED)
    except StoppedBeforeServing:
        _stopped_before_serving(db)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StoppedBeforeServing(KeyboardInterrupt):
    """A SIGTERM or SIGHUP before the server serves (what Ctrl-C's KeyboardInterrupt is to SIGINT)."""


def _stopped_before_serving(db: str | None) -> None:
    typer.echo("trident serve: stopped before it served" + ("; nothing stored" if db else ""), err=True)


def _serve_then_tidy(port_file: str | None, run, *args, **kw):
    """``run(*args, **kw)`` with this server's temporary files in a folder of its own (a server killed
    with SIGKILL left multiprocessing's socket folder behind: ``runtime/tmpdirs.py``); then, when the
    process that started it is gone (killed), the folder it made for the port file and the log
    (``start_server``'s ``trident-serve-*``, in the temporary directory) goes too: nobody else would
    remove it."""
    import tempfile

    from ..runtime.tmpdirs import restore_temp_dir, use_own_temp_folder

    temp = tempfile.gettempdir()  # (the starter's, where it made the folder of --port-file)
    use_own_temp_folder()
    try:
        return run(*args, **kw)
    finally:
        restore_temp_dir()  # (this command run inside another program: its temporary directory as it was)
        if port_file:
            import shutil
            from pathlib import Path

            from ..bench.launch import SERVE_FOLDER_PREFIX
            from ..bench.parent import GONE, starter

            folder = Path(port_file).resolve().parent
            if (starter() == GONE and folder.name.startswith(SERVE_FOLDER_PREFIX)
                    and folder.parent == Path(temp).resolve()):
                shutil.rmtree(folder, ignore_errors=True)


def _announce(ready) -> None:
    """The ready line (stderr, with the logs): where it serves, and what."""
    stored = f"; run {ready.run_id} stored in {ready.db}" if ready.db else ""
    typer.echo(f"trident serve: ready at {ready.url} (devices {ready.devices}; models {','.join(ready.models)}; "
               f"policy {ready.policy}{stored}); API docs at {ready.url}/docs; Ctrl-C stops", err=True)


def _stored_served_models(path: str) -> list[str]:
    """``served_models`` of a spec that is a live bench's stored ``config_json`` (empty: none)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            served = json.load(f).get("served_models")
    except (OSError, ValueError, AttributeError):
        return []
    ok = isinstance(served, list) and served and all(isinstance(m, str) and m.strip() for m in served)
    return list(served) if ok else []


def _from_spec(path: str, given: set[str]) -> dict:
    """The serve options a run spec file sets, less those given on the command line."""
    from ..bench.spec import RunSpecError
    from ..bench.spec_schema import load_spec

    try:
        run = load_spec(path)
    except RunSpecError as exc:
        fail(str(exc))
    out: dict = {"time_scale": run.time_scale, "slo_scale": run.slo_scale}
    if run.devices:
        out["devices"] = run.devices
    if len(run.policies) == 1:
        out["policy"] = run.policies[0]
    elif run.policies:
        fail(f"--spec {path}: names {len(run.policies)} policies; a server runs one (give --policy)")
    kinds = {part.strip().partition(":")[0].strip().lower() for part in out.get("devices", "").split(",") if part.strip()}
    if kinds and kinds != {"cpu"}:
        out["profile"] = run.profile
    from ..bench.scenario import planned_workload

    try:
        out["expected"] = planned_workload(run)  # as the simulator plans the same spec
    except ValueError as exc:
        fail(f"--spec {path}: {exc}")
    if "models" not in given:
        from ..bench.live import served_models

        try:
            if run.trace is None:
                from ..formats.mixes import load_mix

                workload = {c.model for c in load_mix(run.mix).classes}
                out["models_from"] = f"the models of --spec {path}'s mix {run.mix}"
            else:
                from ..formats.traces import read_trace

                workload = {e.model for e in read_trace(run.trace, default_model=run.trace_model)}
                out["models_from"] = f"the models of --spec {path}'s trace {run.trace}"
        except ValueError as exc:
            fail(f"--spec {path}: {exc}")
        # what the live bench served (a stored run says; else as it would: a cpu part serves tiny-sd3)
        served = _stored_served_models(path) or served_models(out.get("devices", ""), workload)
        out["models"] = ",".join(served)
    return {k: v for k, v in out.items() if k not in given}
