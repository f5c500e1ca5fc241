"""Locust: open-loop mixed-resolution load from a named mix (or a trace) against ``trident serve``.

    locust -f workloads/mixed.py --headless -t 60s --host http://127.0.0.1:8000 \\
        [--mix image-video] --rate 2 [--arrival poisson|gamma:cv=4|constant|bursts:size=N|trace:FILE] \\
        [--slo-scale 3] [--seed 0] [--time-scale 1] [--duration S] [--db results/trident.duckdb] [--run-id NAME]
    locust -f workloads/mixed.py --headless --host URL --spec run.json   # a run spec file instead

**Defaults that follow the server.** Without ``--mix`` the mix is the shipped one the server at
``--host`` can serve (``GET /v1/models``; ``tridentcore.formats.mixes.mix_for_models``): the default
``image-video`` when it serves that mix's models, ``tiny`` for ``trident serve --models
tiny-sd3,tiny-wan --devices cpu:2``, a shipped mix narrowed to the served models otherwise
(``tiny:models=tiny-sd3``). Without ``--cost-profile`` and ``--cluster`` the SLOs are priced by the
first shipped profile that prices every class of the mix (``h200`` on ``2x8xH200``; the tiny models:
``cpu`` on ``2xcpu``; ``tridentcore.bench.scenario.pricing_for``).

Without ``--headless`` the web UI shows the same options under "Custom parameters"; Locust's own
``--csv`` and ``--html`` reports work as usual. Run it as one process (not master/worker: every
worker would send the whole schedule).

**Open loop.** The schedule is drawn by ``workloads.schedule.build_schedule``, the simulator's
own request generator, so the same ``--mix/--arrival/--rate/--seed/--slo-scale`` give the same
requests at the same times as ``trident simulate``/``trident bench --backend sim``. Each arrival is
sent at its scheduled time whether or not earlier requests have returned: a user only claims the
next arrival, sleeps until it is due and hands the send to a new greenlet, so the user count
(``-u``, 1 is enough) is just the pool that carries requests, never a cap on what is in flight (no
coordinated omission). The lag between schedule and send is recorded per request; at the end the
p50/p99 lag is printed, with a warning when the p99 is over 50 ms.

**Time.** ``--rate`` and ``--duration`` are in workload seconds; arrival ``t`` is sent at
``t x --time-scale`` wall seconds. Without ``--time-scale`` the server's own is used (``trident serve
--time-scale S``, read from ``GET /v1/cluster``; 1 where it does not say), and one given that is not
the server's is warned of (the server then sees the schedule's rates times the ratio).
``--duration`` defaults to the run time (``-t``) in workload seconds, else 60. The run ends when
every scheduled request has finished (or at ``-t``; requests still in flight, and those not yet
due, are then recorded as ``unfinished``, so a schedule that fills ``-t`` always ends with some:
give ``--duration`` below ``-t`` to leave time for the answers).

**Spec.** ``--spec FILE`` reads the whole run spec (``tridentcore.bench.spec.RunSpec`` as JSON, the
form ``trident bench --backend live`` writes for its Locust child) instead of the workload options
above (any of them given beside it is refused, on the command line, in ``TRIDENT_MIX`` or a config file);
it is read with ``json``, nothing heavier.

**Exit status.** 0 when the run ended by itself or at ``-t``; 2 on an error (the server gone, the
rows not stored); 130 after a Ctrl-C (SIGINT) and 143 after SIGTERM, the rows stored as for any end.

**Rows.** One row per scheduled request (schedule, send, finish, state, HTTP status, shape, the
server's per-stage timings, lag) goes to ``--rows-out FILE`` (JSON lines) and/or, with ``--db``,
to the results store's ``client_requests`` table: this process never imports the store (duckdb);
it writes the rows to a JSON-lines file and a short child process
(``python -m tridentcore.bench.client_rows``) inserts them at the end. Both paths are checked
before the run starts (a folder that does not exist or cannot be written is refused then, not
after the run); a store that still cannot be written at the end leaves the rows in a JSON-lines
file whose path the error names. A standalone run's ``client_requests.server_request_id`` is the
server's request id (``request_index`` is the schedule's). ``trident bench --backend
live`` stores a whole live run (server and client rows, one transaction) instead.

**Parent.** With ``TRIDENT_STOP_WITH_PARENT`` naming its parent's PID (set by ``trident bench
--backend live`` and the workbench's live jobs), the run ends, its rows written, once that parent is
gone (a ``kill -9`` of the bench): it would otherwise send to a stopped server until ``-t``.

**Server gone.** A run whose sends are refused (nothing listens at ``--host``: the server was
stopped or killed) for ``SERVER_GONE_AFTER_S`` with no answer since, and whose port still refuses
a connection then, ends at once, with an error naming when (exit status 2): it went on sending the
rest of the schedule into refused connections, each counted as a 1 ms failure in Locust's table.
The requests never sent are in the rows as ``unfinished``, with why.

**Key.** With ``TRIDENT_API_KEY`` in its environment, every request carries
``Authorization: Bearer KEY`` (a server with an API key answers 401 without it).

Request names in Locust's statistics are ``model WxH[xF]`` (``sd3-medium 1024x1024``), so its
tables break latency down by resolution. SLOs are the simulator's (``--slo-scale`` x the reference
latency from ``--cost-profile`` on ``--cluster``), sent as ``slo_ms``.

Imports nothing heavy (no torch, diffusers, transformers, duckdb or requests of its own;
``[tool.importlinter]`` forbids duckdb, torch and diffusers here).

One module of about 770 lines with one job, the Locust file: Locust loads its options, its user
class and its event listeners from this one file. The schedule (``workloads/schedule.py``) and the
rows, with where they go (``workloads/rows.py``), live beside it as plain functions.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import gevent
from gevent.event import Event
from gevent.pool import Group
from locust import FastHttpUser, constant, events, task
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

from tridentcore.bench.parent import starter, starter_gone
from tridentcore.bench.spec import TRACE_PREFIX, RunSpec, read_spec_config, read_spec_file
from tridentcore.core.defaults import (API_KEY_ENV, DEFAULT_ARRIVAL, DEFAULT_CLUSTER, DEFAULT_CPU_CLUSTER,
                                       DEFAULT_CPU_PROFILE, DEFAULT_LOCUST_DURATION_S, DEFAULT_MIX, DEFAULT_PROFILE,
                                       DEFAULT_RATE, DEFAULT_SEED, DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE,
                                       MAX_SEED, PARENT_PID_ENV)
from tridentcore.core.metrics import quantile
from tridentcore.formats.mixes import list_mixes, load_mix
from workloads.rows import absorb_response, base_row, db_problem, store_rows, unwritable, write_rows
from workloads.schedule import Arrival, ScheduleError, Served, build_schedule, refuses_connections, served_mix

logger = logging.getLogger("workloads.mixed")

LAG_WARN_MS = 50.0
START_LEAD_S = 0.2  # the schedule starts this long after test start (users are being spawned)
SERVER_GONE_AFTER_S = 2.0  # sends refused this long, with no answer since: the server is gone (if its port refuses)


# ------------------------------------------------------------------------------ options
@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    _parsers.append(parser)  # (its sources, once parsed: a --spec run refuses workload options from any)
    group = parser  # (Locust's include_in_web_ui needs the parser itself, not an argument group)
    group.add_argument("--mix", type=str, default=None, env_var="TRIDENT_MIX",
                       help=f"Named mix ({', '.join(list_mixes())}), NAME:models=A+B (its classes of those models) "
                            "or a mix YAML file (default: the shipped mix of the models the server at --host serves).")
    group.add_argument("--rate", type=float, default=None,
                       help=f"Mean requests per workload second (a mix; default {DEFAULT_RATE:g}).")
    group.add_argument("--arrival", type=str, default=DEFAULT_ARRIVAL,
                       help="poisson | gamma:cv=K | constant | bursts:size=N | trace:FILE (replay a trace).")
    group.add_argument("--slo-scale", type=float, default=DEFAULT_SLO_SCALE,
                       help="Deadline = arrival + scale x the request's reference latency (sent as slo_ms).")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED, help="Same seed, same schedule (as the simulator's).")
    group.add_argument("--duration", type=float, default=None,
                       help="Workload seconds of arrivals (default: the run time -t in workload seconds, "
                            f"else {DEFAULT_LOCUST_DURATION_S:g}).")
    group.add_argument("--time-scale", type=float, default=None,
                       help="Wall seconds per workload second (default: the time scale of the server at --host, "
                            f"else {DEFAULT_TIME_SCALE:g}; as trident serve --time-scale of emulated GPUs).")
    group.add_argument("--cost-profile", type=str, default=None,
                       help="Cost profile the SLOs are computed from (trident serve --profile; Locust's own --profile "
                            f"is something else). Default: {DEFAULT_PROFILE}, or the shipped profile that prices "
                            f"the mix ({DEFAULT_CPU_PROFILE} for the tiny models).")
    group.add_argument("--cluster", type=str, default=None,
                       help="Cluster the SLOs' reference degree is for (default: the cost profile's, "
                            f"{DEFAULT_CLUSTER} or {DEFAULT_CPU_CLUSTER}).")
    group.add_argument("--trace-model", type=str, default=None, help="Model of a paper-format trace's requests.")
    group.add_argument("--spec", type=str, default=None, include_in_web_ui=False,
                       help="Run spec file (JSON, as trident bench writes it): overrides the workload options above.")
    group.add_argument("--db", type=str, default=None,
                       help="DuckDB results file: one client_requests row per request, written at the end "
                            "(by a child process; this one never imports the store).")
    group.add_argument("--run-id", type=str, default=None, help="Run id of the rows (default: a new one).")
    group.add_argument("--rows-out", type=str, default=None, include_in_web_ui=False,
                       help="Also write the per-request rows as JSON lines to this file.")
    group.add_argument("--progress-file", type=str, default=None, include_in_web_ui=False,
                       help="Rewrite 'finished sent scheduled' to this file while running (for trident bench).")


def _num(value, kind, name: str, problems: list[str]):
    """Web-UI values arrive as strings: convert, or note the problem."""
    if value is None or value == "":
        return None
    try:
        out = kind(value)
    except (TypeError, ValueError):
        problems.append(f"--{name}: not a{'n integer' if kind is int else ' number'}: {value!r}")
        return None
    if isinstance(out, float) and not math.isfinite(out):
        problems.append(f"--{name}: must be finite, got {value!r}")
        return None
    return out


# a --spec file's keys for the options a problem names (the file gives them: outside test, a spec's
# problem named flags never given, "--mix/--cost-profile/--cluster: ...")
_SPEC_KEYS = {"--mix": "mix", "--cost-profile": "profile", "--cluster": "cluster", "--arrival": "trace",
              "--rate": "rate", "--duration": "duration_s", "--seed": "seed", "--slo-scale": "slo_scale",
              "--time-scale": "time_scale"}


def _schedule(spec: RunSpec, options) -> list[Arrival]:
    """``build_schedule(spec)``; a ``--spec`` file's problems name the file and its keys."""
    try:
        return build_schedule(spec)
    except ScheduleError as exc:
        path = getattr(options, "spec", None)
        if not path:
            raise
        worded = []
        for problem in exc.problems:
            flags, sep, rest = problem.partition(": ")
            keys = [_SPEC_KEYS.get(f) for f in flags.split("/")]
            worded.append(f"--spec {path}: {'/'.join(keys)}: {rest}" if sep and all(keys) else problem)
        raise ScheduleError(worded) from None


def spec_from_options(options, host: str | None = None) -> RunSpec:
    """The run spec the parsed options ask for (``--spec FILE``, else the workload options; without
    ``--mix``, the mix the server at ``host`` serves); :class:`ScheduleError` lists every bad value.
    A spec file without ``profile`` and ``cluster`` is priced as ``--mix`` is: by the first shipped
    profile that prices its classes (``tiny``: ``cpu`` on ``2xcpu``; it was ``h200``, which cannot)."""
    if getattr(options, "spec", None):
        typed = _typed(_WORKLOAD_FLAGS) + _set_elsewhere(_WORKLOAD_FLAGS)
        if typed:  # (outside test 125: `--spec FILE --rate 5` sent the file's rate, unsaid; so did TRIDENT_MIX or a
            # --config file's rate beside it)
            raise ScheduleError([f"{', '.join(typed)}: not used with --spec {options.spec} (the spec file gives the "
                                 "whole workload); drop {}".format("them" if len(typed) > 1 else "it")])
        spec = read_spec_file(options.spec)
        given = read_spec_config(options.spec)
        scale = _note_time_scale(host, spec.time_scale, "time_scale" in given, f"--spec {options.spec}: no time_scale")
        if scale != spec.time_scale:
            spec = dataclasses.replace(spec, time_scale=scale)
        if "profile" not in given or "cluster" not in given:
            from tridentcore.bench.scenario import pricing_for

            profile, cluster = pricing_for(spec.mix if spec.trace is None else None, given.get("profile"),
                                           given.get("cluster"), trace=spec.trace, model=spec.trace_model)
            spec = dataclasses.replace(spec, profile=profile, cluster=cluster)
        return spec
    problems: list[str] = []
    rate = _num(options.rate, float, "rate", problems)
    slo_scale = _num(options.slo_scale, float, "slo-scale", problems)
    seed = _num(options.seed, int, "seed", problems)
    time_scale = _num(options.time_scale, float, "time-scale", problems)
    duration = _num(options.duration, float, "duration", problems)
    if seed is not None and not 0 <= seed <= MAX_SEED:  # (as trident's options and traces take them)
        problems.append(f"--seed: must be an integer in 0..{MAX_SEED}, got {seed}")
    arrival = str(options.arrival)
    trace = arrival[len(TRACE_PREFIX):] if arrival.startswith(TRACE_PREFIX) else None
    mix = str(options.mix or "") or None
    if trace is not None:  # a trace is the whole workload: these would be ignored without a word
        given = [flag for flag, value in (("--mix", mix), ("--rate", rate), ("--duration", duration)) if value is not None]
        if given:
            problems.append(f"{', '.join(given)}: not used with --arrival trace:FILE (the trace gives the requests "
                            "and their times); drop {}".format("them" if len(given) > 1 else "it"))
    if trace is None and getattr(options, "trace_model", None):  # (argparse takes --trace FILE for it, too)
        # named as typed (outside test: `--trace FILE` was said as --trace-model, an option not given)
        typed = next((a.split("=", 1)[0] for a in sys.argv[1:] if len(a) > 2 and "--trace-model".startswith(
            a.split("=", 1)[0])), "--trace-model")
        problems.append(f"{typed} {options.trace_model}: {'' if typed == '--trace-model' else '(taken as --trace-model) '}"
                        "only with --arrival trace:FILE (the model of a paper-format trace's requests); a trace "
                        "is replayed with --arrival trace:FILE")
    if problems:
        raise ScheduleError(problems)
    rate = DEFAULT_RATE if rate is None else rate
    time_scale = _note_time_scale(host, time_scale, time_scale is not None)
    run_time = getattr(options, "run_time", None)
    if duration is None:
        duration = run_time / time_scale if run_time and time_scale and time_scale > 0 else DEFAULT_LOCUST_DURATION_S
    if trace is None and mix is None:
        mix, problem = _served_mix(host)
        problems += [problem] if problem else []
    from tridentcore.bench.scenario import pricing_for  # (the simulator's modules: once Locust has started)

    profile, cluster = pricing_for(mix if trace is None else None, options.cost_profile or None,
                                   options.cluster or None, trace=trace, model=options.trace_model or None)
    spec = RunSpec(mix=None if trace is not None else (mix or DEFAULT_MIX), trace=trace,
                   arrival=DEFAULT_ARRIVAL if trace is not None else arrival, rate=rate, duration_s=duration,
                   seed=seed, slo_scale=slo_scale, profile=profile, cluster=cluster, time_scale=time_scale,
                   trace_model=options.trace_model or None, backend="live")
    if problems:  # (the other options' problems too, in the same message)
        raise ScheduleError(spec.problems() + problems)
    return spec


_parsers: list = []  # the command-line parsers made for this process (Locust makes one per parse)
_inited_at: float | None = None  # time.monotonic() of Locust's init event
_served: dict[str, Served] = {}  # host -> what it serves: each server is asked once
_said: set[str] = set()  # notes said once (the options are read at the start and again at each test's start)

# the options of the workload, which a --spec file gives whole
_WORKLOAD_FLAGS = ("--mix", "--rate", "--arrival", "--slo-scale", "--seed", "--duration", "--time-scale",
                   "--cost-profile", "--cluster", "--trace-model")


def _typed(flags: tuple[str, ...]) -> list[str]:
    """Those of ``flags`` on the command line: ``--rate 5``, ``--rate=5``, or abbreviated as argparse takes
    them (``--rat 5``: it parsed, so it names one option alone; outside test 129)."""
    typed = {a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("--") and len(a.split("=", 1)[0]) > 3}
    return [f for f in flags if any(f.startswith(t) for t in typed)]


def _set_elsewhere(flags: tuple[str, ...]) -> list[str]:
    """Those of ``flags`` set by an environment variable or a config file (``--config``, ``locust.conf``,
    ``pyproject.toml``: configargparse's sources, read from the parser that parsed this run), each
    with its source: ``--mix (TRIDENT_MIX)``, ``--rate (from c.conf)``."""
    env = {a.env_var: a.option_strings[0] for p in _parsers for a in p._actions
           if getattr(a, "env_var", None) and a.option_strings}
    found: dict[str, str] = {}
    for parser in _parsers:
        for source, settings in getattr(parser, "get_source_to_settings_dict", dict)().items():
            for key in settings:
                if source == "environment_variables":
                    flag, where = env.get(key, ""), key
                elif source.startswith("config_file|"):
                    flag, where = "--" + key.lstrip("-").replace("_", "-"), "from " + source.split("|", 1)[1]
                else:
                    continue
                if flag in flags:
                    found.setdefault(flag, f"{flag} ({where})")
    return [found[f] for f in flags if f in found]


def _say_once(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(text, file=sys.stderr, flush=True)


def _note_time_scale(host: str | None, scale: float | None, given: bool, unsaid: str = "no --time-scale") -> float:
    """The run's time scale: ``scale`` if given, else the server's (said), else the default. A scale
    given that is not the server's is warned of: the server then sees the schedule's rates x its
    scale / this one (outside test 125: a run without --time-scale against `trident serve
    --time-scale 0.05` sent at time scale 1, a load 20 times lighter than asked, unsaid)."""
    got = _asked(host) if host else None
    served = got.time_scale if got is not None else None
    if got is not None and got.time_scales:  # parts on clocks of their own (cpu:1,emulated:...): no one scale
        parts = ", ".join(f"{label} at {s:g}" for label, s in got.time_scales)
        if not given:
            _say_once(f"[mixed.py] WARNING: the server at {host} runs its parts at different time scales ({parts}): "
                      f"sending at {DEFAULT_TIME_SCALE:g}; give --time-scale, that of the part whose models you send")
        return DEFAULT_TIME_SCALE if scale is None else scale
    if not given:
        if served is None:
            return DEFAULT_TIME_SCALE
        if served != DEFAULT_TIME_SCALE:
            _say_once(f"[mixed.py] {unsaid}: the server at {host} runs its clock at time scale {served:g}; "
                      "sending the schedule at it")
        return served
    if served is not None and scale is not None and scale > 0 and abs(scale / served - 1.0) > 1e-9:
        _say_once(f"[mixed.py] WARNING: the schedule is sent at time scale {scale:g}, but the server at {host} runs "
                  f"its clock at {served:g}: it sees the schedule's rates x {served / scale:g} (give --time-scale "
                  f"{served:g}, or leave it out)")
    return scale


def _served_mix(host: str | None) -> tuple[str | None, str | None]:
    """The mix of what the server at ``host`` serves, or a problem saying why there is none."""
    if not host:
        return None, f"--mix: no --host to ask what it serves; give --host or --mix ({', '.join(list_mixes())})"
    got = _asked(host)
    if got.mix is not None:
        _say_once(f"[mixed.py] no --mix: the server at {host} serves {', '.join(got.models)}; sending mix {got.mix}")
    if not got.reachable:  # ("give --mix" is no help when the server cannot be asked at all: outside test 104)
        return None, f"--host {host}: {got.problem.removesuffix('; give --mix')}{_scheme_hint(host)}"
    return got.mix, got.problem and f"--mix: {got.problem}"


def _asked(host: str) -> Served:
    """What the server at ``host`` serves (``GET /v1/models``), asked once per host."""
    if host not in _served:
        _served[host] = served_mix(host, _headers)
    return _served[host]


def _serves(host: str, mix: str | None, flag: str = "--mix", needed: set[str] | None = None) -> str | None:
    """Why the server at ``host`` cannot take the load (it does not answer, refuses the key, or lacks a
    model of ``mix``, or of ``needed``: a trace's); None: it can, as far as ``GET /v1/models`` tells (a
    run sent everything first)."""
    got = _asked(host)
    if not got.reachable:
        return f"--host {host}: {got.problem.removesuffix('; give --mix')}{_scheme_hint(host)}"
    if needed is None and mix is not None:
        try:
            needed = {c.model for c in load_mix(mix).classes}
        except Exception:  # noqa: BLE001 - the mix's own problem is said by the spec's check
            return None
    missing = sorted((needed or set()) - set(got.models))
    if missing:
        return (f"{flag}: the server at {host} does not serve {', '.join(missing)} "
                f"(it serves {', '.join(got.models) or 'no models'})")
    return None


def _scheme_hint(host: str) -> str:
    """A hint for a host given without its scheme (``127.0.0.1:8000`` read as the URL type "127.0.0.1")."""
    return "" if "://" in host else f" (give the host as a URL: --host http://{host})"


# ------------------------------------------------------------------------------ one run
@dataclass
class Run:
    """One test: the schedule, what has been claimed and sent, and one row per claimed request."""

    run_id: str
    spec: RunSpec
    arrivals: list[Arrival]
    t0: float  # time.monotonic() of schedule time 0
    next_index: int = 0
    rows: dict[int, dict] = field(default_factory=dict)
    inflight: Group = field(default_factory=Group)
    waiting: int = 0  # arrivals claimed whose users still sleep until they are due (not yet in inflight)
    claimed_all: Event = field(default_factory=Event)  # every arrival claimed and handed to inflight
    finished: Event = field(default_factory=Event)
    stored: Event = field(default_factory=Event)  # the rows are written (or failed to be)
    ended: bool = False
    stopped_at_s: float | None = None
    refused_since: float | None = None  # time.monotonic() of the first refused send since the last answer
    server_gone_s: float | None = None  # schedule time the server stopped answering, when that ended the run

    def claim(self) -> Arrival | None:
        """The next arrival, its user to hand it over (:meth:`handed`) once it sent it or gave it up; None:
        none left."""
        if self.next_index >= len(self.arrivals):
            self._all_handed()
            return None
        a = self.arrivals[self.next_index]
        self.next_index += 1
        self.waiting += 1
        return a

    def handed(self) -> None:
        self.waiting -= 1
        self._all_handed()

    def _all_handed(self) -> None:
        # (the run is over only when no user still sleeps on an arrival it claimed: with several users the
        # first to find none left ended the run while the others' arrivals were still to be sent)
        if self.next_index >= len(self.arrivals) and self.waiting == 0:
            self.claimed_all.set()

    def counts(self) -> tuple[int, int]:
        done = sum(1 for r in self.rows.values() if r["finished_s"] is not None or r["state"] != "unfinished")
        return done, sum(1 for r in self.rows.values() if r["sent_s"] is not None)


_run: Run | None = None
_env = None
_headers: dict[str, str] | None = None  # Authorization, when TRIDENT_API_KEY is set


class MixUser(FastHttpUser):
    """Carries the schedule: claims the next arrival, waits until it is due, sends it in a new greenlet."""

    concurrency = 10_000  # connections this user may open: the pool never holds a due request back
    network_timeout = 24 * 3600.0  # a long video at time scale 1 takes minutes
    connection_timeout = 60.0
    wait_time = constant(0)

    @task
    def carry(self) -> None:
        run = _run
        if run is None or run.ended:
            gevent.sleep(0.1)
            return
        a = run.claim()
        if a is None:
            run.finished.wait()
            return
        try:
            delay = run.t0 + a.send_s - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            if run.ended:
                return
            run.rows[a.index] = base_row(a)
            run.inflight.spawn(self._send, run, a)
        finally:
            run.handed()

    def _send(self, run: Run, a: Arrival) -> None:
        row = run.rows[a.index]
        sent = time.monotonic()
        row["sent_s"] = sent - run.t0
        row["lag_ms"] = 1000.0 * (row["sent_s"] - a.send_s)
        with self.client.request("POST", a.path, json=a.body, name=a.name, headers=_headers,
                                 catch_response=True) as resp:
            finished = time.monotonic()
            status = int(resp.status_code or 0)
            try:
                body = resp.json() if status else None
            except Exception:  # noqa: BLE001 - any undecodable body is an error row
                body = None
            error = "" if status else str(getattr(resp, "error", "") or "connection failed")
            if status:
                run.refused_since = None
            elif isinstance(getattr(resp, "error", None), ConnectionRefusedError) and run.refused_since is None:
                run.refused_since = finished
            failure = absorb_response(row, status, body, error)
            row["finished_s"] = finished - run.t0
            row["client_ms"] = 1000.0 * (finished - sent)
            if failure is None:
                resp.success()
            else:
                resp.failure(failure)


# ------------------------------------------------------------------------------ lifecycle
def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    global _env, _headers, _inited_at
    _env = environment
    _inited_at = time.monotonic()  # (before -t's timer starts: a headless run spawns its start after it)
    _strip_slash(environment)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not where it is ignored: `cmd &`)
        gevent.signal_handler(signal.SIGINT, _interrupt_main)
    gevent.signal_handler(signal.SIGTERM, _stopped_by, 128 + signal.SIGTERM)  # (beside Locust's own, which stops it)
    key = os.environ.get(API_KEY_ENV, "").strip()
    _headers = {"Authorization": f"Bearer {key}"} if key else None
    if isinstance(environment.runner, (MasterRunner, WorkerRunner)):
        _exit_with("workloads/mixed.py runs as one process (each worker would send the whole schedule); "
                   "drop --master/--worker/--processes")
    options = environment.parsed_options
    if options is not None and options.headless and getattr(options, "num_users", None) == 0:
        _exit_with("-u 0: no user would send the schedule; give -u 1 (one user carries any rate: it sends "
                   "each request in a greenlet of its own)")
    if options is None or not (options.headless or environment.host or options.mix or options.spec):
        return  # the web UI's form gives the host (and the mix follows it) at the start
    # before any load: where the rows go and the workload (their problems in one message), then the server
    problems = [p for p in (unwritable("--rows-out", options.rows_out), unwritable("--db", options.db)) if p]
    if options.db and not problems:  # (a file that is not a results database, a run id already stored there)
        problems = [p for p in (db_problem(options.db, options.run_id or None),) if p]
    try:
        spec = spec_from_options(options, environment.host)
        arrivals = _schedule(spec, options)
    except ScheduleError as exc:
        _exit_with("; ".join([*exc.problems, *problems]))
    if environment.host and spec.trace is not None:  # (outside test 104: a trace of other models sent whole, 404s)
        needed = {a.spec.model for a in arrivals}
        problems += [p for p in (_serves(environment.host, None, f"--arrival trace:{spec.trace}", needed),) if p]
    elif environment.host and (spec.mix is None or options.mix or options.spec):  # (without --mix or --spec the
        # server was asked already, for its mix)
        flag = f"--spec {options.spec}: its mix {spec.mix}" if options.spec else f"--mix {spec.mix}"
        problems += [p for p in (_serves(environment.host, spec.mix, flag),) if p]  # it answers, serves the mix's models
    if problems:
        _exit_with("; ".join(problems))
    if not arrivals:
        _exit_with("the schedule has no requests (rate x duration too small?)")


def _interrupt_main() -> None:
    """Ctrl-C as a ``KeyboardInterrupt`` in the main greenlet, where Locust stops the run (and a second one
    stops the store of its rows: :func:`workloads.rows.store_rows` keeps them). Python's own handler raised
    it in whichever greenlet ran: one sending a request died with a traceback on the way."""
    _stopped_by(128 + signal.SIGINT)
    gevent.get_hub().parent.throw(KeyboardInterrupt)


def _stopped_by(status: int) -> None:
    """A signal stopped the run: Locust exits with ``status`` (130, 143), as ``trident bench`` and ``trident
    serve`` do, unless an error set another (outside test 125: 0, as a run that ended by itself)."""
    if _env is not None and _env.process_exit_code is None:
        _env.process_exit_code = status


def _strip_slash(environment) -> None:
    """``--host http://h:8000/``: the request paths start with ``/``, and Locust joins them to the host
    as they are (``//v1/images/generations``, which every request failed on while ``/v1/models``, asked
    before the load, answered)."""
    if environment.host and environment.host.endswith("/"):
        environment.host = environment.host.rstrip("/")


def _new_run_id(spec: RunSpec) -> str:
    """``20250101-120000-locust-image-video-s0-3fa9c2`` (the form of the store's run ids)."""
    what = "".join(c if c.isalnum() else "-" for c in (spec.mix if spec.trace is None else "trace").lower())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-locust-{what.strip('-')[:40]}-s{spec.seed}-{os.urandom(3).hex()}"


_test_number = 0


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    global _run, _test_number
    _strip_slash(environment)  # (the web UI's form gives the host at the start)
    options = environment.parsed_options
    try:
        spec = spec_from_options(options, environment.host)
        arrivals = _schedule(spec, options)
    except ScheduleError as exc:
        logger.error("cannot start: %s", "; ".join(exc.problems))
        _end(environment)
        return
    _test_number += 1
    run_id = options.run_id or _new_run_id(spec)
    if options.run_id and _test_number > 1:
        run_id = f"{options.run_id}-{_test_number}"
    _run = run = Run(run_id, spec, arrivals, time.monotonic() + START_LEAD_S)
    logger.info("run %s: %d requests over %.1f workload s (%.1f wall s), %s", run_id, len(arrivals),
                arrivals[-1].t_s if arrivals else 0.0, arrivals[-1].send_s if arrivals else 0.0, spec)
    gevent.spawn(_finish_when_done, environment, run)
    gevent.spawn(_end_when_server_gone, environment, run)
    if options.progress_file:
        gevent.spawn(_write_progress, run, options.progress_file)
    parent = starter()
    if parent is not None:
        gevent.spawn(_end_with_parent, environment, run, parent)


def _end_with_parent(environment, run: Run, parent: int) -> None:
    while not run.ended:
        if starter_gone(parent):
            logger.error("the process that started this run (%s %s) is gone: ending the run", PARENT_PID_ENV,
                         os.environ.get(PARENT_PID_ENV))
            _end(environment)
            return
        gevent.sleep(1.0)


def _end_when_server_gone(environment, run: Run) -> None:
    while not run.ended:
        gevent.sleep(0.5)
        since = run.refused_since
        if since is None or time.monotonic() - since < SERVER_GONE_AFTER_S or run.ended:
            continue
        if not refuses_connections(environment.host):  # (in a gevent-patched process: this greenlet only waits)
            run.refused_since = None
            continue
        run.server_gone_s = since - run.t0
        logger.error("the server at %s stopped answering at %.1f s (connection refused): ending the run",
                     environment.host, run.server_gone_s)
        _end(environment)
        return


def _finish_when_done(environment, run: Run) -> None:
    run.claimed_all.wait()
    gevent.sleep(0)
    run.inflight.join()
    if getattr(environment.parsed_options, "csv_prefix", None):
        # Locust rewrites its --csv files every CSV_STATS_INTERVAL_SEC and not again at exit: let it
        # write once more, so its counts include the last responses
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)
    if not run.ended:
        run.finished.set()
        _end(environment)


def _end(environment) -> None:
    runner = environment.runner
    if runner is None:
        return
    if environment.parsed_options is not None and environment.parsed_options.headless:
        gevent.spawn(runner.quit)
    else:
        gevent.spawn(runner.stop)


def _write_progress(run: Run, path: str) -> None:
    while not run.ended:
        done, sent = run.counts()
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{done} {sent} {len(run.arrivals)}\n")
            os.replace(tmp, path)
        except OSError:
            return
        gevent.sleep(0.5)


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    run = _run
    if run is None or run.ended:
        return
    run.ended = True
    run.stopped_at_s = time.monotonic() - run.t0
    run.inflight.kill(block=True, timeout=5)
    run.finished.set()
    # arrivals never sent (too few users, the stop came first, or -t ended the run before they were
    # due) are part of the run too: one row each
    for a in run.arrivals:  # (a claimed arrival has no row while its user sleeps until it is due)
        if a.index not in run.rows:
            why = ("due but not sent before the run ended" if a.send_s <= run.stopped_at_s
                   else "the run ended before it was due")
            if run.server_gone_s is not None:
                why = f"not sent: the server stopped answering (connection refused) at {run.server_gone_s:.1f} s"
            run.rows[a.index] = {**base_row(a), "reason": why}
    rows = [run.rows[i] for i in sorted(run.rows)]
    options = environment.parsed_options
    try:
        _report(run, rows, options)
        if run.server_gone_s is not None:
            unsent = sum(1 for r in rows if r["sent_s"] is None)
            _late_error(f"the server at {environment.host} stopped answering at {run.server_gone_s:.1f} s (its "
                        f"port refuses connections): the run ended there; {unsent} of {len(rows)} scheduled "
                        "requests were never sent (in the rows as unfinished)")
        written = None
        if options.rows_out:
            try:
                write_rows(rows, options.rows_out)
                written = options.rows_out
            except OSError as exc:
                _late_error(f"could not write the rows to --rows-out {options.rows_out}: {exc}")
        if options.db:
            failed = store_rows(run.run_id, rows, options.db, written)
            if failed:
                _late_error(failed)
    finally:
        run.stored.set()


@events.quitting.add_listener
def _on_quitting(environment, **_kw) -> None:
    """Locust exits once its runner has quit: a run that ended by itself just before ``-t`` is still
    writing its rows (the store's child process takes about a second), so wait for them."""
    run = _run
    if run is not None and run.ended and not run.stored.wait(timeout=600):
        _late_error("the rows were still being written after 600 s; giving up")


def _report(run: Run, rows: list[dict], options) -> None:
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    lags = [r["lag_ms"] for r in rows if r["lag_ms"] is not None]
    p50, p99 = quantile(lags, 0.5), quantile(lags, 0.99)
    lag = (f"schedule lag p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lags):.1f} ms" if lags
           else "none sent, so no schedule lag")
    text = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    print(f"[mixed.py] run {run.run_id}: {len(rows)} of {len(run.arrivals)} scheduled requests ({text}); {lag}",
          file=sys.stderr, flush=True)
    if lags and p99 > LAG_WARN_MS:
        print(f"[mixed.py] WARNING: schedule lag p99 {p99:.1f} ms exceeds {LAG_WARN_MS:.0f} ms: requests went out "
              "later than scheduled (the load generator could not keep up: a busy CPU?), so the server saw a "
              "smoother, lighter load than the schedule and its latencies understate it", file=sys.stderr, flush=True)
    unfinished = states.get("unfinished", 0)
    if unfinished:
        unsent = sum(1 for r in rows if r["state"] == "unfinished" and r["sent_s"] is None)
        run_time = getattr(options, "run_time", None)
        # headless, -t's timer starts as the test's start is spawned, before the schedule is built: the time
        # since init, not since the schedule began (a busy host took long to build it, and the note blamed a stop)
        ran = None if run.stopped_at_s is None else run.stopped_at_s + (
            run.t0 - _inited_at if getattr(options, "headless", False) and _inited_at is not None else START_LEAD_S)
        if run_time and ran is not None and ran >= 0.95 * run_time:
            if run.spec.trace is not None:  # (outside test 125: a trace was told of --duration, which it refuses)
                why = f"-t ({run_time:g} s) ended the run before the trace's last requests were answered: raise -t"
            elif options.duration in (None, "") and not options.spec:
                why = (f"-t ({run_time:g} s) ended the run; --duration defaults to -t, so the schedule's last "
                       "requests were due at its end: give --duration below -t to leave time for the answers")
            else:
                why = f"-t ({run_time:g} s) ended the run: raise -t, or lower --duration"
        elif run.server_gone_s is not None:
            why = "the server stopped answering"
        else:
            why = "the run was stopped before they ended"
        print(f"[mixed.py] note: {unfinished} requests unfinished ({unfinished - unsent} sent and not answered, "
              f"{unsent} never sent): {why}", file=sys.stderr, flush=True)


def _late_error(message: str) -> None:
    """An error after the run: said, and the exit status 2 (the run itself is over; after a Ctrl-C Locust
    has taken its exit status before the rows are stored, hence the exit at the end)."""
    print(f"[mixed.py] error: {message}", file=sys.stderr, flush=True)
    if _env is not None:
        _env.process_exit_code = 2
    atexit.unregister(_exit_2)  # (once, however many errors)
    atexit.register(_exit_2)


def _exit_2() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(2)


if __name__ == "__main__":  # `python workloads/mixed.py --help`: Locust's options and this file's, in one list
    # (Locust 2.47 prints `locust -f FILE --help` before it imports FILE, so its custom options are
    # missing there: locustio/locust#2917; the web UI does show them)
    from locust.argument_parser import get_parser

    get_parser().parse_args(sys.argv[1:] or ["--help"])
