"""Workloads: request classes, mixes, arrival processes and SLOs (DESIGN.md, "Workloads").

Pure: no I/O, no clock, no module-level ``random`` (randomness comes from an injected
``random.Random``). File formats (named mix YAML, traces) live in the ``workloads`` package.

Arrivals and common random numbers
----------------------------------
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
  scale ``K**2``); ``K > 1`` is burstier than Poisson, ``K < 1`` more regular;
* ``constant``: gaps of exactly 1 (times ``0, 1/r, 2/r, ...``);
* ``bursts:size=N``: ``N`` arrivals at the same instant, bursts ``N`` unit times apart (the mean
  rate stays ``r``).

:func:`generate_requests` draws gaps and request contents from two streams derived from one
seed, so the same seed also gives the same request contents under a different arrival process.

SLOs
----
``slo_s = slo_scale x reference latency``; the reference is the request's no-queue latency at
batch 1: encode + steps x one diffuse step at the largest degree whose parallel efficiency is
>= 0.8 (degree 1 always allowed) + decode (DESIGN.md, "SLOs and metrics").
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .types import Shape, SpecError, StageKind

if TYPE_CHECKING:
    import random

    from .costmodel import CostModel

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
    "make_slo_fn",
    "mix_from_dict",
    "parse_arrival",
    "reference_degree",
    "reference_latency_s",
    "slo_s",
    "unit_arrivals",
]

SloFn = Callable[[str, Shape], float]

# Prompts drawn by generate_requests (content does not change cost; variety keeps caches honest).
PROMPTS: tuple[str, ...] = (
    "a red fox in fresh snow at dawn, telephoto, shallow depth of field",
    "an isometric illustration of a tiny city on a floating island",
    "a bowl of ramen on a wooden table, steam rising, soft window light",
    "a lighthouse on a rocky coast during a storm, dramatic clouds",
    "a watercolor painting of a cat sleeping on a stack of books",
    "a futuristic train crossing a desert at sunset, cinematic",
    "macro photograph of a dew drop on a spider web",
    "a cozy reading nook with plants and warm lamps, interior design photo",
    "an astronaut riding a horse on the moon, photorealistic",
    "a koi pond seen from above, autumn leaves on the water",
    "a street market in the rain at night, neon reflections",
    "a paper origami crane on a white background, studio lighting",
    "a drone shot of waves breaking on a black sand beach",
    "a golden retriever puppy running through a field of flowers",
    "a medieval castle on a hill surrounded by fog, oil painting",
    "a close-up of a hummingbird feeding from a flower, slow motion",
)

ARRIVAL_FORMS = "poisson, constant, gamma:cv=K (K > 0), bursts:size=N (N >= 1)"
_SEED_BITS = 31


class WorkloadError(SpecError):
    """A workload description that cannot be used; ``problems`` lists every problem found."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _class_label(model: str, shape: Shape) -> str:
    """``model WxH`` (images) or ``model WxHxF`` (video), as ``records.RequestRow.request_class``."""
    return f"{model} {shape.label()}"


# ---------------------------------------------------------------------- request classes and mixes
@dataclass(frozen=True, slots=True)
class RequestClass:
    """One kind of request in a mix: a model at one output shape, drawn with relative ``weight``."""

    model: str
    height: int
    width: int
    frames: int = 1
    steps: int = 28
    weight: float = 1.0

    def __post_init__(self) -> None:
        problems = _class_problems(self.model, self.height, self.width, self.frames, self.steps, self.weight)
        if problems:
            raise WorkloadError("invalid request class", [f"{k}: {msg}" for k, msg in problems])

    @property
    def shape(self) -> Shape:
        return Shape(self.height, self.width, self.frames, self.steps)

    @property
    def label(self) -> str:
        """``sd3-medium 1024x1024``, ``wan2.1-1.3b 832x480x81`` (WIDTHxHEIGHT[xFRAMES])."""
        return _class_label(self.model, self.shape)


def _class_problems(model: Any, height: Any, width: Any, frames: Any, steps: Any, weight: Any) -> list[tuple[str, str]]:
    problems = []
    if not (isinstance(model, str) and model.strip()):
        problems.append(("model", f"must be a non-empty model name (got {model!r})"))
    for key, value in (("height", height), ("width", width), ("frames", frames), ("steps", steps)):
        if not (_is_int(value) and value >= 1):
            problems.append((key, f"must be an integer >= 1 (got {value!r})"))
    if not (_is_number(weight) and weight > 0 and math.isfinite(weight)):
        problems.append(("weight", f"must be a positive finite number (got {weight!r})"))
    return problems


@dataclass(frozen=True, slots=True)
class Mix:
    """A named set of request classes; a request's class is drawn in proportion to ``weight``.

    Validated on construction: a non-empty name, at least one class, and no two classes with the
    same label (per-class metrics group by label, so they would be indistinguishable).
    """

    name: str
    classes: tuple[RequestClass, ...]
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.name, str) and self.name.strip()):
            problems.append(f"name must be a non-empty string (got {self.name!r})")
        if not isinstance(self.classes, tuple):
            problems.append(f"classes must be a tuple of RequestClass (got {type(self.classes).__name__})")
        elif not self.classes:
            problems.append("a mix needs at least one class")
        else:
            seen: dict[str, int] = {}
            for i, cls in enumerate(self.classes):
                if not isinstance(cls, RequestClass):
                    problems.append(f"classes[{i}]: expected a RequestClass (got {type(cls).__name__})")
                    continue
                if cls.label in seen:
                    problems.append(f"classes[{i}]: duplicate class {cls.label!r} (also classes[{seen[cls.label]}])")
                else:
                    seen[cls.label] = i
        if not isinstance(self.description, str):
            problems.append(f"description must be a string (got {type(self.description).__name__})")
        if problems:
            raise WorkloadError(f"mix {self.name!r}", problems)

    @property
    def total_weight(self) -> float:
        return math.fsum(c.weight for c in self.classes)

    def probabilities(self) -> dict[str, float]:
        """Class label -> probability that a request is of that class."""
        total = self.total_weight
        return {c.label: c.weight / total for c in self.classes}

    def models(self) -> tuple[str, ...]:
        return tuple(sorted({c.model for c in self.classes}))

    def choose(self, rng: "random.Random") -> RequestClass:
        """Draw one class (one ``rng.random()`` call)."""
        cumulative = _cumulative(self.classes)
        x = rng.random() * cumulative[-1]
        return self.classes[min(bisect.bisect_right(cumulative, x), len(self.classes) - 1)]


def _cumulative(classes: Sequence[RequestClass]) -> list[float]:
    out, total = [], 0.0
    for c in classes:
        total += c.weight
        out.append(total)
    return out


_CLASS_KEYS = ("model", "height", "width", "frames", "steps", "weight")
_MIX_KEYS = ("name", "description", "classes")


def mix_from_dict(data: Any, *, origin: str = "mix") -> Mix:
    """The YAML form of a mix to a :class:`Mix`; every problem is named by entry index and field.

    ``{name, description?, classes: [{model, height, width, frames? (1), steps, weight? (1.0)}]}``
    """
    if not isinstance(data, Mapping):
        raise WorkloadError(origin, [f"expected a mapping with keys {', '.join(_MIX_KEYS)} (got {type(data).__name__})"])
    problems: list[str] = []
    unknown = sorted(str(k) for k in data if k not in _MIX_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_MIX_KEYS)}")
    name = data.get("name")
    if not (isinstance(name, str) and name.strip()):
        problems.append(f"name: must be a non-empty string (got {name!r})")
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        problems.append(f"description: must be a string (got {type(description).__name__})")
    raw_classes = data.get("classes")
    classes: list[RequestClass] = []
    if not isinstance(raw_classes, list) or not raw_classes:
        problems.append(f"classes: must be a non-empty list of {{{', '.join(_CLASS_KEYS)}}} (got {raw_classes!r})")
    else:
        for i, entry in enumerate(raw_classes):
            where = f"classes[{i}]"
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: expected a mapping with keys {', '.join(_CLASS_KEYS)} (got {entry!r})")
                continue
            bad = sorted(str(k) for k in entry if k not in _CLASS_KEYS)
            if bad:
                problems.append(f"{where}: unknown key(s) {', '.join(bad)}; valid keys: {', '.join(_CLASS_KEYS)}")
            missing = [k for k in ("model", "height", "width", "steps") if k not in entry]
            if missing:
                problems.append(f"{where}: missing key(s) {', '.join(missing)}")
                continue
            fields = {
                "model": entry["model"],
                "height": entry["height"],
                "width": entry["width"],
                "frames": entry.get("frames", 1),
                "steps": entry["steps"],
                "weight": entry.get("weight", 1.0),
            }
            entry_problems = _class_problems(**fields)
            if entry_problems:
                problems.extend(f"{where}.{key}: {msg}" for key, msg in entry_problems)
                continue
            fields["weight"] = float(fields["weight"])
            classes.append(RequestClass(**fields))
    if problems:
        raise WorkloadError(origin, problems)
    try:
        return Mix(name=name.strip(), classes=tuple(classes), description=description.strip())
    except WorkloadError as exc:  # duplicates
        raise WorkloadError(origin, exc.problems) from None


# ---------------------------------------------------------------------- requests
@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as a workload issues it. ``guidance`` None = the model's default.

    ``slo_s`` is the allowed latency; the deadline is ``arrival_s + slo_s``.
    """

    id: int
    model: str
    prompt: str
    shape: Shape
    seed: int
    guidance: float | None
    slo_s: float
    arrival_s: float
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not (_is_int(self.id) and self.id >= 0):
            problems.append(f"id must be an integer >= 0 (got {self.id!r})")
        if not (isinstance(self.model, str) and self.model.strip()):
            problems.append(f"model must be a non-empty string (got {self.model!r})")
        if not isinstance(self.prompt, str):
            problems.append(f"prompt must be a string (got {type(self.prompt).__name__})")
        if not isinstance(self.shape, Shape):
            problems.append(f"shape must be a Shape (got {type(self.shape).__name__})")
        if not _is_int(self.seed):
            problems.append(f"seed must be an integer (got {self.seed!r})")
        if self.guidance is not None and not (_is_number(self.guidance) and self.guidance >= 0 and math.isfinite(self.guidance)):
            problems.append(f"guidance must be None or a finite number >= 0 (got {self.guidance!r})")
        if not (_is_number(self.slo_s) and self.slo_s > 0 and math.isfinite(self.slo_s)):
            problems.append(f"slo_s must be a positive finite number (got {self.slo_s!r})")
        if not (_is_number(self.arrival_s) and self.arrival_s >= 0 and math.isfinite(self.arrival_s)):
            problems.append(f"arrival_s must be a finite number >= 0 (got {self.arrival_s!r})")
        if not isinstance(self.negative_prompt, str):
            problems.append(f"negative_prompt must be a string (got {type(self.negative_prompt).__name__})")
        if problems:
            raise WorkloadError(f"request {self.id!r}", problems)

    @property
    def deadline_s(self) -> float:
        return self.arrival_s + self.slo_s

    @property
    def request_class(self) -> str:
        """The class label, equal to :attr:`RequestClass.label` for the same model and shape."""
        return _class_label(self.model, self.shape)


# ---------------------------------------------------------------------- arrival processes
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
        if not (_is_number(self.cv) and self.cv > 0 and math.isfinite(self.cv)):
            problems.append(f"cv must be a positive finite number (got {self.cv!r})")
        if not (_is_int(self.size) and self.size >= 1):
            problems.append(f"size must be an integer >= 1 (got {self.size!r})")
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
    origin = f"arrival process {text!r}"
    if not isinstance(text, str):
        raise WorkloadError(origin, [f"expected a string; valid forms: {ARRIVAL_FORMS}"])
    kind, _, params_text = text.strip().lower().partition(":")
    kind = kind.strip()
    if kind not in _ARRIVAL_KINDS:
        raise WorkloadError(origin, [f"unknown arrival process {kind!r}; valid forms: {ARRIVAL_FORMS}"])
    allowed = _ARRIVAL_KINDS[kind]
    params: dict[str, str] = {}
    problems = []
    if params_text.strip():
        for part in params_text.split(","):
            match = _PARAM_RE.match(part)
            if match is None:
                problems.append(f"cannot read parameter {part.strip()!r}; expected key=value")
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
            problems.append(f"cv must be a number (got {params['cv']!r})")
        else:
            if not (cv > 0 and math.isfinite(cv)):
                problems.append(f"cv must be a positive finite number (got {params['cv']!r})")
    if "size" in params:
        if params["size"].isdigit() and int(params["size"]) >= 1:
            size = int(params["size"])
        else:
            problems.append(f"size must be an integer >= 1 (got {params['size']!r})")
    if problems:
        raise WorkloadError(origin, problems + [f"valid forms: {ARRIVAL_FORMS}"])
    return ArrivalProcess(kind=kind, cv=cv, size=size)


def unit_arrivals(kind: "str | ArrivalProcess", n_or_horizon: int | float, rng: "random.Random") -> list[float]:
    """Arrival times at rate 1 (the times at rate ``r`` are these divided by ``r``).

    ``n_or_horizon``: an ``int`` asks for that many arrivals; a ``float`` for every arrival with
    unit time < that horizon (so ``4`` and ``4.0`` differ: four arrivals vs. those before t = 4).
    """
    process = parse_arrival(kind)
    times = process.unit_times(rng)
    if _is_int(n_or_horizon):
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
    if not (_is_number(rate) and rate > 0 and math.isfinite(rate)):
        problems.append(f"rate must be a positive finite number of requests per second (got {rate!r})")
    if not (_is_number(duration_s) and duration_s > 0 and math.isfinite(duration_s)):
        problems.append(f"duration_s must be a positive finite number (got {duration_s!r})")
    if not _is_int(seed):
        problems.append(f"seed must be an integer (got {seed!r})")
    process = None
    try:
        process = parse_arrival(arrival)
    except WorkloadError as exc:
        problems.extend(exc.problems)
    if problems:
        raise WorkloadError("generate_requests", problems)
    assert process is not None

    master = random.Random(seed)
    gap_rng = random.Random(master.getrandbits(64))
    content_rng = random.Random(master.getrandbits(64))
    cumulative = _cumulative(mix.classes)
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


# ---------------------------------------------------------------------- SLOs
def reference_degree(
    cost_model: "CostModel",
    model: str,
    shape: Shape,
    max_degree: int = 8,
    efficiency: float = 0.8,
    degrees: Sequence[int] = (1, 2, 4, 8),
    gpu: str | None = None,
) -> int:
    """The largest degree ``d <= max_degree`` in ``degrees`` whose diffuse parallel efficiency is
    ``>= efficiency`` (degree 1 always qualifies)."""
    if not (_is_int(max_degree) and max_degree >= 1):
        raise ValueError(f"max_degree must be an integer >= 1 (got {max_degree!r})")
    best = 1
    for d in sorted(set(degrees)):
        if not (_is_int(d) and d >= 1):
            raise ValueError(f"degrees must be integers >= 1 (got {d!r})")
        if d <= best or d > max_degree:
            continue
        if cost_model.parallel_efficiency(model, StageKind.DIFFUSE, shape, d, 1, gpu) >= efficiency - 1e-12:
            best = d
    return best


def reference_latency_s(
    cost_model: "CostModel",
    model: str,
    shape: Shape,
    max_degree: int = 8,
    efficiency: float = 0.8,
    degrees: Sequence[int] = (1, 2, 4, 8),
    gpu: str | None = None,
) -> float:
    """No-queue latency at batch 1: encode + steps x diffuse step at :func:`reference_degree` +
    decode (encode and decode on one GPU)."""
    degree = reference_degree(cost_model, model, shape, max_degree, efficiency, degrees, gpu)
    encode = cost_model.latency_s(model, StageKind.ENCODE, shape, 1, 1, gpu)
    step = cost_model.latency_s(model, StageKind.DIFFUSE, shape, 1, degree, gpu)
    decode = cost_model.latency_s(model, StageKind.DECODE, shape, 1, 1, gpu)
    return encode + shape.steps * step + decode


def slo_s(
    cost_model: "CostModel",
    model: str,
    shape: Shape,
    slo_scale: float = 3.0,
    max_degree: int = 8,
    gpu: str | None = None,
) -> float:
    """``slo_scale`` x :func:`reference_latency_s`."""
    if not (_is_number(slo_scale) and slo_scale > 0 and math.isfinite(slo_scale)):
        raise ValueError(f"slo_scale must be a positive finite number (got {slo_scale!r})")
    return slo_scale * reference_latency_s(cost_model, model, shape, max_degree, gpu=gpu)


def make_slo_fn(
    cost_model: "CostModel", slo_scale: float = 3.0, max_degree: int = 8, gpu: str | None = None
) -> SloFn:
    """``slo_fn(model, shape)`` for :func:`generate_requests` / ``requests_from_trace`` (memoised)."""
    cache: dict[tuple[str, Shape], float] = {}

    def slo_fn(model: str, shape: Shape) -> float:
        key = (model, shape)
        value = cache.get(key)
        if value is None:
            value = cache[key] = slo_s(cost_model, model, shape, slo_scale, max_degree, gpu)
        return value

    return slo_fn
