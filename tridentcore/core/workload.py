"""Workloads: request classes, mixes, arrival processes and SLOs (docs/design.md, "Workloads").

The pieces live in their own modules; this one draws requests from them
(:func:`generate_requests`) and re-exports every name, so ``from tridentcore.core.workload import
X`` keeps working:

* :mod:`~tridentcore.core.requests`: ``RequestSpec``, ``PROMPTS``;
* :mod:`~tridentcore.core.arrivals`: ``ArrivalProcess``, ``parse_arrival``, ``unit_arrivals``;
* :mod:`~tridentcore.core.mix`: ``RequestClass``, ``Mix``, ``mix_from_dict``;
* :mod:`~tridentcore.core.slo`: ``reference_degree``, ``reference_latency_s``, ``slo_s``,
  ``make_slo_fn``, ``met_slo``;
* :mod:`~tridentcore.core.errors`: ``WorkloadError``.

Pure: no I/O, no clock, no module-level ``random`` (randomness comes from an injected
``random.Random``). File formats (named mix YAML, traces) live in the ``workloads`` package.

Common random numbers
---------------------
:func:`generate_requests` draws gaps and request contents from two streams derived from one
seed, so the same seed also gives the same request contents under a different arrival process.
Arrivals are drawn at rate 1 and scaled (see :mod:`~tridentcore.core.arrivals`), so a rate
sweep replays the same requests with the time axis compressed.
"""

from __future__ import annotations

import bisect
import math

from .arrivals import ARRIVAL_FORMS, ArrivalProcess, parse_arrival, unit_arrivals
from .defaults import MAX_REQUESTS, MAX_WORKLOAD_S
from .errors import WorkloadError, is_finite, is_int, is_number
from .mix import Mix, RequestClass, cumulative_weights, mix_from_dict
from .requests import PROMPTS, RequestSpec
from .slo import SloFn, make_slo_fn, met_slo, reference_degree, reference_latency_s, slo_s
from .types import Shape

__all__ = [
    "ARRIVAL_FORMS",
    "ArrivalProcess",
    "Mix",
    "PROMPTS",
    "RequestClass",
    "RequestSpec",
    "SloFn",
    "WorkloadError",
    "generate_requests",
    "generated_size_problems",
    "make_slo_fn",
    "met_slo",
    "mix_from_dict",
    "parse_arrival",
    "reference_degree",
    "reference_latency_s",
    "slo_s",
    "unit_arrivals",
]

_SEED_BITS = 31


def generated_size_problems(rate: float, duration_s: float,
                            arrival: "str | ArrivalProcess | None" = None) -> list[tuple[str, str]]:
    """``(field, message)`` for what is past the bounds of a drawn workload (``core/defaults.py``):
    a duration over ``MAX_WORKLOAD_S`` (``duration``), or more than ``MAX_REQUESTS`` requests
    expected, rate x duration (``rate``). Checked before a request is drawn; numbers that are not
    positive and finite are left to the caller's own checks (and an ``arrival`` that does not parse).

    ``bursts:size=N`` sends whole bursts, the first at 0 s: ``N x ceil(rate x duration / N)``
    requests, which is what is counted; less than one burst's worth (``rate x duration < N``) is
    refused (``arrival``), since its one burst would be many times the rate asked (outside test:
    1000 requests for 0.01/s over 10 s, and 100,000 at once for 0.5/s over 10 s)."""
    if is_finite(duration_s) and duration_s > MAX_WORKLOAD_S:
        said = f"{duration_s:g}" if float(f"{duration_s:g}") > MAX_WORKLOAD_S else repr(float(duration_s))  # (not "86400")
        return [("duration", f"{said} s is over the limit of {MAX_WORKLOAD_S:g} s")]
    if not (is_finite(rate) and is_finite(duration_s) and rate > 0 and duration_s > 0):
        return []
    expected = rate * duration_s
    size = 1
    if arrival is not None:
        try:
            process = parse_arrival(arrival)
        except WorkloadError:
            process = None
        if process is not None and process.kind == "bursts":
            size = process.size
    if size > 1 and expected < size:
        return [("arrival", f"bursts:size={size} at {rate:g}/s over {duration_s:g} s: rate x duration is "
                            f"{expected:.3g} requests, less than one burst (bursts are whole, the first at 0 s: "
                            f"it would send {size}); lower the size, or raise the rate or the duration")]
    # (rate x duration past a float's range: infinite, counted as such, not as an integer)
    count = size * math.ceil(expected / size - 1e-9) if is_finite(expected) else math.inf
    if count > MAX_REQUESTS:
        # (a rate of 1e300: 300 digits said; past a float's range: a traceback)
        many = lambda n: f"{n:.0f}" if n < 1e12 else f"{n:.3g}" if is_finite(n) else "more than 1.8e+308"
        whole = f" ({many(count)} in whole bursts of {size})" if is_finite(count) and count != round(expected) else ""
        return [("rate", f"{rate:g}/s x {duration_s:g} s = {many(expected)} requests expected{whole}; a workload "
                         f"has at most {MAX_REQUESTS} (lower the rate or the duration)")]
    return []


def lowest_rate(duration_s: float, arrival: "str | ArrivalProcess | None" = None) -> float:
    """The lowest rate a drawn workload over ``duration_s`` takes (:func:`generated_size_problems`):
    one whole burst over it for ``bursts:size=N`` (``N / duration_s``); 0 for any other arrival."""
    if arrival is None or not (is_finite(duration_s) and duration_s > 0):
        return 0.0
    try:
        process = parse_arrival(arrival)
    except WorkloadError:
        return 0.0
    return process.size / duration_s if process.kind == "bursts" and process.size > 1 else 0.0


def generate_requests(
    mix: Mix,
    arrival: "str | ArrivalProcess",
    rate: float,
    duration_s: float,
    seed: int,
    slo_fn: SloFn,
    *,
    guidance: float | None = None,
) -> list[RequestSpec]:
    """Open-loop requests over ``[0, duration_s)`` at mean ``rate`` per second.

    Two streams are derived from ``random.Random(seed)``: one draws the unit-rate arrival gaps,
    the other each request's class, prompt and seed, request by request. Neither depends on
    ``rate`` or ``duration_s``, so the request sequence is shared across rates (common random
    numbers: the first k requests at rate 2 are those at rate 1 with times halved) and across
    arrival processes (same contents, other times). ``slo_fn(model, shape)`` gives each
    request's ``slo_s`` (e.g. :func:`make_slo_fn`). Ids are 0, 1, 2, ... in arrival order.
    """
    import random

    problems = []
    if not isinstance(mix, Mix):
        problems.append(f"mix must be a Mix (got {type(mix).__name__})")
    if not (is_number(rate) and rate > 0 and math.isfinite(rate)):
        problems.append(f"rate must be a positive finite number of requests per second (got {rate!r})")
    if not (is_number(duration_s) and duration_s > 0 and math.isfinite(duration_s)):
        problems.append(f"duration_s must be a positive finite number (got {duration_s!r})")
    if not is_int(seed):
        problems.append(f"seed must be an integer (got {seed!r})")
    process, arrival_problems = None, []
    try:
        process = parse_arrival(arrival)
    except WorkloadError as exc:
        arrival_problems = exc.problems
    problems.extend(f"{key}: {msg}" for key, msg in generated_size_problems(rate, duration_s, process))
    problems.extend(arrival_problems)
    if problems:
        raise WorkloadError("workload", problems)
    assert process is not None

    master = random.Random(seed)
    gap_rng = random.Random(master.getrandbits(64))
    content_rng = random.Random(master.getrandbits(64))
    cumulative = cumulative_weights(mix.classes)
    total_weight = cumulative[-1]
    last = len(mix.classes) - 1
    slo_cache: dict[tuple[str, Shape], float] = {}

    requests: list[RequestSpec] = []
    for index, unit_t in enumerate(process.unit_times(gap_rng)):
        # Draw the contents before the stop test so the stream never depends on where we stop.
        cls = mix.classes[min(bisect.bisect_right(cumulative, content_rng.random() * total_weight), last)]
        prompt = PROMPTS[content_rng.randrange(len(PROMPTS))]
        request_seed = content_rng.getrandbits(_SEED_BITS)
        arrival_s = unit_t / rate
        if arrival_s >= duration_s:
            break
        if index >= MAX_REQUESTS:  # (a burst, or a draw above rate x duration)
            raise WorkloadError("workload", [f"more than {MAX_REQUESTS} requests drawn; a workload has "
                                                      f"at most {MAX_REQUESTS} (lower the rate or the duration)"])
        shape = cls.shape
        key = (cls.model, shape)
        slo = slo_cache.get(key)
        if slo is None:
            slo = slo_cache[key] = float(slo_fn(cls.model, shape))
        requests.append(
            RequestSpec(
                id=index,
                model=cls.model,
                prompt=prompt,
                shape=shape,
                seed=request_seed,
                guidance=guidance,
                slo_s=slo,
                arrival_s=arrival_s,
            )
        )
    return requests
