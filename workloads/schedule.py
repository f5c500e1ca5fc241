"""Open-loop schedules for a load generator: the simulator's requests, as timed HTTP sends.

A :class:`~tridentcore.bench.spec.RunSpec` names the workload the way ``trident bench`` and
``trident simulate`` do (mix or trace, arrival process, rate, duration, seed, SLO scale, the
profile and cluster the SLOs are computed for, the time scale). :func:`build_schedule` draws the
requests with the *same* function the simulator uses
(:func:`tridentcore.bench.scenario.schedule_requests`), so for the same spec a live run and a
simulated run see the same requests at the same (workload) times, with the same seeds and deadlines.

Times: ``rate`` and ``duration_s`` are in workload seconds, like the simulator's; an arrival at
workload time ``t`` is sent ``t x time_scale`` wall seconds after the run starts. Against
``trident serve --time-scale S`` (emulated GPUs that sleep S x the cost model's durations) pass
the same S, and the server's engine clock and the schedule agree; against real devices use 1.

:func:`served_mix` asks a server which models it serves (``GET /v1/models``) and names the shipped
mix it can take: the Locust file's default when no mix is given.

Light on purpose (Locust imports it): the standard library, ``yaml`` and ``tridentcore`` (no
duckdb, torch or diffusers; ``[tool.importlinter]`` checks it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from tridentcore.bench.spec import RunSpec, RunSpecError
from tridentcore.core.types import class_label
from tridentcore.core.workload import RequestSpec

__all__ = ["Arrival", "ScheduleError", "Served", "build_schedule", "check_spec", "request_body", "served_mix"]

_MODELS_REPLY_BYTES = 1 << 20  # a /v1/models reply read at most
_CLUSTER_REPLY_BYTES = 16 << 20  # a /v1/cluster reply (per device) read at most

ScheduleError = RunSpecError  # a schedule that cannot be built; ``problems`` lists every problem


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scheduled request: when to send it and what to send."""

    index: int  # position in the schedule (the simulator's request id)
    t_s: float  # workload seconds
    send_s: float  # wall seconds after the run's start
    spec: RequestSpec
    name: str  # "sd3-medium 1024x1024" (model and shape: Locust's request name)
    path: str  # /v1/images/generations or /v1/videos/generations
    body: dict = field(hash=False, compare=False)


def check_spec(spec: RunSpec) -> list[str]:
    """Problems with the numbers and the arrival form (files are checked by :func:`build_schedule`)."""
    return spec.problems()


def request_body(spec: RequestSpec) -> tuple[str, dict]:
    """The endpoint and JSON body of one request (video when it has more than one frame)."""
    shape = spec.shape
    body = {"model": spec.model, "prompt": spec.prompt, "size": f"{shape.width}x{shape.height}", "n": 1,
            "steps": shape.steps, "seed": spec.seed, "slo_ms": 1000.0 * spec.slo_s, "response_format": "b64_json"}
    if spec.guidance is not None:
        body["guidance"] = spec.guidance
    if spec.negative_prompt:
        body["negative_prompt"] = spec.negative_prompt
    if shape.frames > 1:
        body["frames"] = shape.frames
        return "/v1/videos/generations", body
    return "/v1/images/generations", body


def build_schedule(spec: RunSpec) -> list[Arrival]:
    """The requests of ``spec`` in send order; :class:`ScheduleError` lists every problem (the
    profile option spelled as the Locust file's, ``--cost-profile``)."""
    from tridentcore.bench.scenario import schedule_requests

    out = []
    for r in schedule_requests(spec, profile_flag="--cost-profile"):
        path, body = request_body(r)
        out.append(Arrival(r.id, r.arrival_s, r.arrival_s * spec.time_scale, r, class_label(r.model, r.shape), path,
                           body))
    return out


@dataclass(frozen=True, slots=True)
class Served:
    """What a server serves (``GET /v1/models``) and the shipped mix for it; ``problem``: why none."""

    mix: str | None
    models: tuple[str, ...] = ()
    problem: str | None = None
    reachable: bool = True  # it answered GET /v1/models (False: the problem says why not)
    time_scale: float | None = None  # its clock's wall seconds per workload second (GET /v1/cluster; None: unknown)
    time_scales: tuple[tuple[str, float], ...] = ()  # (devices, scale) of its parts where they differ


def served_mix(host: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> Served:
    """The shipped mix of the models the server at ``host`` serves (``GET /v1/models``;
    :func:`tridentcore.formats.mixes.mix_for_models`), or why there is none (the server cannot be
    asked, or no shipped mix has its models). No proxy is used (as Locust's own client)."""
    import urllib.error
    import urllib.request

    from tridentcore.formats.mixes import list_mixes, mix_for_models

    url = f"{host.rstrip('/')}/v1/models"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as resp:
            data = json.loads(resp.read(_MODELS_REPLY_BYTES))
        models = [str(m["id"]) for m in data["data"]]
    except urllib.error.HTTPError as exc:
        key = ""
        if exc.code == 401:
            key = (" (the server refused the API key in TRIDENT_API_KEY)" if headers and headers.get("Authorization")
                   else " (the server wants an API key: set TRIDENT_API_KEY)")
        return Served(None, problem=f"GET {url} answered HTTP {exc.code}{key}; give --mix", reachable=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Served(None, problem=f"cannot ask the server which models it serves (GET {url}: {reason}); give --mix",
                      reachable=False)
    mix = mix_for_models(models)
    problem = None if mix else (f"the server at {host} serves {', '.join(models) or 'no models'}, in no shipped "
                                f"mix ({', '.join(list_mixes())}); give --mix FILE.yaml")
    scale, scales = _time_scale(opener, host, headers, timeout_s)
    return Served(mix, tuple(models), problem, time_scale=scale, time_scales=scales)


def _time_scale(opener, host: str, headers: dict[str, str] | None,
                timeout_s: float) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    """The server's time scale (``GET /v1/cluster``; None where it does not say), and its parts' where
    they differ (``cpu:1,emulated:1x2xH200 --time-scale 0.05``: the cpu part runs on the wall clock)."""
    import urllib.request

    try:
        with opener.open(urllib.request.Request(f"{host.rstrip('/')}/v1/cluster", headers=headers or {}),
                         timeout=timeout_s) as resp:
            cluster = json.loads(resp.read(_CLUSTER_REPLY_BYTES))
        scale = float(cluster["time_scale"])
        parts = tuple((str(p["devices"]), float(p["time_scale"])) for p in cluster.get("parts") or ())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, ()
    if not (math.isfinite(scale) and scale > 0):
        return None, ()
    return scale, (parts if len({s for _, s in parts}) > 1 else ())


def refuses_connections(host: str, timeout_s: float = 2.0) -> bool:
    """Whether nothing listens at ``host`` (a URL) any more: its port refuses a TCP connection. A
    timeout or any other error is not taken as refused (a busy server can be slow to accept)."""
    import socket
    import urllib.parse

    url = urllib.parse.urlsplit(host)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "127.0.0.1", port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False
