"""Arrival processes at rate 1 (docs/design.md, "Workloads").

Every arrival process is generated at **rate 1** (mean inter-arrival 1) as a sequence of *unit
times*; the times at rate ``r`` are ``unit_time / r``. A rate sweep therefore replays the same
requests (same classes, prompts and seeds, in the same order) with the time axis compressed:
the first ``k`` requests at rate 2 are exactly the first ``k`` at rate 1 with their times
halved. Differences between rates (and between policies at one rate) then come from the load,
not from sampling noise.

The first arrival is at time 0 for every process (a run starts with a request, as
``benchmark_serving``-style load generators do), then arrivals follow at the drawn gaps:

* ``poisson``: exponential gaps (CV 1);
* ``gamma:cv=K``: gamma gaps with mean 1 and coefficient of variation ``K`` (shape ``1/K**2``,
  scale ``K**2``), the first one the stationary stream's (the residual of a length-biased gap), so
  that a run of ``T`` unit times holds ``1 + T`` arrivals on average whatever ``K``; ``K > 1`` is
  burstier than Poisson, ``K < 1`` more regular; ``K`` in
  ``[MIN_CV, MAX_CV]`` (below, the gaps are ``constant``'s to within 0.1 %, and at ``1e-160``
  drawing them hung; above, nearly every gap is 0 and the few others are huge);
* ``constant``: gaps of exactly 1 (times ``0, 1/r, 2/r, ...``);
* ``bursts:size=N``: ``N`` arrivals at the same instant, bursts ``N`` unit times apart (the mean
  rate stays ``r``; a workload holds whole bursts, and less than one is refused:
  ``core.workload.generated_size_problems``).

Pure: randomness comes from an injected ``random.Random``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .defaults import MAX_REQUESTS
from .errors import WorkloadError, brief, is_int, is_number

if TYPE_CHECKING:
    import random

__all__ = ["ARRIVAL_FORMS", "ArrivalProcess", "parse_arrival", "unit_arrivals"]

MIN_CV, MAX_CV = 1e-3, 1e3
ARRIVAL_FORMS = (f"poisson, constant, gamma:cv=K ({MIN_CV:g} <= K <= {MAX_CV:g}), "
                 f"bursts:size=N (1 <= N <= {MAX_REQUESTS})")
_CV_BOUNDS = f"cv must be a number in [{MIN_CV:g}, {MAX_CV:g}]"


@dataclass(frozen=True, slots=True)
class ArrivalProcess:
    """An arrival process at rate 1 (see the module docstring). Build with :func:`parse_arrival`."""

    kind: str  # "poisson" | "gamma" | "constant" | "bursts"
    cv: float = 1.0  # gamma only
    size: int = 1  # bursts only

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in _ARRIVAL_KINDS:
            problems.append(f"unknown arrival process {self.kind!r}; valid forms: {ARRIVAL_FORMS}")
        if not (is_number(self.cv) and MIN_CV <= self.cv <= MAX_CV):
            problems.append(f"{_CV_BOUNDS} (got {self.cv!r})")
        if not (is_int(self.size) and 1 <= self.size <= MAX_REQUESTS):
            problems.append(f"size must be an integer in 1..{MAX_REQUESTS} (got {brief(self.size)})")
        if problems:
            raise WorkloadError("arrival process", problems)

    @property
    def label(self) -> str:
        """The text form, accepted back by :func:`parse_arrival`."""
        if self.kind == "gamma":
            return f"gamma:cv={self.cv:g}"
        if self.kind == "bursts":
            return f"bursts:size={self.size}"
        return self.kind

    def unit_gaps(self, rng: "random.Random") -> Iterator[float]:
        """Endless inter-arrival gaps at rate 1 (mean 1); deterministic kinds draw nothing."""
        kind = self.kind
        if kind == "poisson":
            while True:
                yield rng.expovariate(1.0)
        elif kind == "gamma":
            shape = 1.0 / (self.cv * self.cv)
            scale = self.cv * self.cv
            # the first gap is the time from a random instant to the next arrival (the gap around that
            # instant is length-biased, Gamma(shape + 1), and the instant uniform in it): as if the
            # stream had been running before the run began, so that T unit times hold 1 + T arrivals
            # on average. Drawn as the others, the arrival at 0 began a gap, and a bursty stream held
            # about (K**2 + 1) / 2 more (cv=30: 689 requests for 300 asked: outside test)
            yield rng.random() * rng.gammavariate(shape + 1.0, scale)
            while True:
                yield rng.gammavariate(shape, scale)
        elif kind == "constant":
            while True:
                yield 1.0
        else:  # bursts
            size = self.size
            while True:  # the first arrival (time 0) opens a burst: its size - 1 companions first
                for _ in range(size - 1):
                    yield 0.0
                yield float(size)

    def unit_times(self, rng: "random.Random") -> Iterator[float]:
        """Endless arrival times at rate 1: 0, then cumulative gaps."""
        t = 0.0
        gaps = self.unit_gaps(rng)
        yield t
        for gap in gaps:
            t += gap
            yield t


_ARRIVAL_KINDS: dict[str, tuple[str, ...]] = {"poisson": (), "constant": (), "gamma": ("cv",), "bursts": ("size",)}
_PARAM_RE = re.compile(r"^\s*([a-z_]+)\s*=\s*([^=,\s]+)\s*$")


def parse_arrival(text: "str | ArrivalProcess") -> ArrivalProcess:
    """``poisson``, ``constant``, ``gamma:cv=K`` or ``bursts:size=N``; a clear error otherwise."""
    if isinstance(text, ArrivalProcess):
        return text
    origin = f"arrival process {brief(text)}"
    if not isinstance(text, str):
        raise WorkloadError(origin, [f"expected a string; valid forms: {ARRIVAL_FORMS}"])
    kind, _, params_text = text.strip().lower().partition(":")
    kind = kind.strip()
    if kind == "trace":  # (the Locust file's form, and a stored run's arrival_spec: outside test 107)
        raise WorkloadError(origin, [f"a trace is not an arrival process here: `trident simulate` and `trident "
                                     f"bench` replay one with --trace FILE (trace:FILE is the Locust file's "
                                     f"--arrival); valid forms: {ARRIVAL_FORMS}"])
    if kind not in _ARRIVAL_KINDS:
        raise WorkloadError(origin, [f"unknown arrival process {kind!r}; valid forms: {ARRIVAL_FORMS}"])
    allowed = _ARRIVAL_KINDS[kind]
    params: dict[str, str] = {}
    problems = []
    if params_text.strip():
        for part in params_text.split(","):
            match = _PARAM_RE.match(part)
            if match is None:
                problems.append(f"cannot read parameter {brief(part.strip())}; expected key=value")
                continue
            key, value = match.groups()
            if key not in allowed:
                valid = ", ".join(allowed) if allowed else "none"
                problems.append(f"{kind} takes no parameter {key!r} (its parameters: {valid})")
            elif key in params:
                problems.append(f"parameter {key!r} given twice")
            else:
                params[key] = value
    missing = [k for k in allowed if k not in params]
    if missing:
        problems.append(f"{kind} needs {', '.join(f'{k}=...' for k in missing)}")
    cv, size = 1.0, 1
    if "cv" in params:
        try:
            cv = float(params["cv"])
        except ValueError:
            problems.append(f"cv must be a number (got {brief(params['cv'])})")
        else:
            if not MIN_CV <= cv <= MAX_CV:
                problems.append(f"{_CV_BOUNDS} (got {brief(params['cv'])})")
    if "size" in params:
        if params["size"].isdigit() and len(params["size"]) <= 9 and 1 <= int(params["size"]) <= MAX_REQUESTS:
            size = int(params["size"])
        else:
            problems.append(f"size must be an integer in 1..{MAX_REQUESTS} (got {brief(params['size'])})")
    if problems:
        problems[-1] += f"; valid forms: {ARRIVAL_FORMS}"  # a hint, not one more problem
        raise WorkloadError(origin, problems)
    return ArrivalProcess(kind=kind, cv=cv, size=size)


def unit_arrivals(kind: "str | ArrivalProcess", n_or_horizon: int | float, rng: "random.Random") -> list[float]:
    """Arrival times at rate 1 (the times at rate ``r`` are these divided by ``r``).

    ``n_or_horizon``: an ``int`` asks for that many arrivals; a ``float`` for every arrival with
    unit time < that horizon (so ``4`` and ``4.0`` differ: four arrivals vs. those before t = 4).
    """
    process = parse_arrival(kind)
    times = process.unit_times(rng)
    if is_int(n_or_horizon):
        if n_or_horizon < 0:
            raise ValueError(f"the number of arrivals must be >= 0 (got {n_or_horizon})")
        return [next(times) for _ in range(n_or_horizon)]
    if isinstance(n_or_horizon, float) and n_or_horizon >= 0 and math.isfinite(n_or_horizon):
        out = []
        for t in times:
            if t >= n_or_horizon:
                break
            out.append(t)
        return out
    raise ValueError(f"n_or_horizon must be an int count or a finite float horizon >= 0 (got {n_or_horizon!r})")
