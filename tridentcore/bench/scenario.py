"""Simulated comparisons: one workload, several policies; rate sweeps; goodput by bisection.

A :class:`~tridentcore.bench.spec.RunSpec` (``Scenario`` is its old name) names the profile,
cluster, workload, SLO scale and seed; :func:`load_scenario` loads and validates its inputs once.
The request sequence for a rate comes from common random numbers: the same seed gives the same
requests at every rate, only compressed in time, so attainment differences across rates and
policies are not noise from different draws.

Goodput is the highest rate whose overall SLO attainment is >= target; fair goodput the highest
rate at which *every* request class (model and shape) attains >= target. Both are found by
bisection. The capacity ceiling is the rate the cluster would sustain with every request at its
most GPU-efficient degree and perfect packing; the SLO-aware ceiling prices each class at the
cheapest degree and batch that meets its SLO without queueing (:mod:`tridentcore.core.capacity`).
Neither knows when the requests arrive; the hindsight bound does (:mod:`tridentcore.core.hindsight`:
a linear program over one stream), and :func:`hindsight_goodput` bisects it like a policy.

One module of about 520 lines with one job, a simulated comparison from its inputs to its stored
rows: loading and checking a workload, the rates it is run at and the rows a run is stored as stay
together, so a sweep, a bench and the workbench price and store a run the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..core.capacity import Ceiling, ClassDemand, efficient_ceiling, slo_aware_ceiling
from ..core.cluster import CPU_KIND, ClusterError, ClusterSpec, parse_cluster
from ..core.costmodel import CostModel
from ..core.defaults import DEFAULT_CLUSTER, DEFAULT_CPU_CLUSTER, DEFAULT_PROFILE, DEFAULT_TARGET, MAX_FRAMES, MAX_SIDE_PX
from ..core.driver import DriverCore, expected_mix
from ..core.hindsight import HindsightBound, hindsight_bound
from ..core.metrics import attainment_by_class, min_class_attainment, summarize
from ..core.policy import PolicyError, make_policy
from ..core.records import RunMeta
from ..core.types import Shape, StageKind
from ..core.workload import (Mix, RequestClass, RequestSpec, WorkloadError, generate_requests, generated_size_problems,
                             lowest_rate, make_slo_fn)
from ..sim.engine import SimResult, StageNoise, simulate
from .provenance import git_sha, hardware, package_versions
from .spec import RunSpec, RunSpecError

__all__ = ["Goodput", "Loaded", "RatePoint", "Scenario", "capacity_rps", "ceilings", "evaluate", "goodput_range", "goodput_rates",
           "hindsight_at", "hindsight_goodput", "load_scenario", "pricing_for", "run_meta", "run_one",
           "schedule_requests", "start_refusal", "stream_ceiling", "sweep_goodput"]

Scenario = RunSpec  # the name this module's callers used before the one run spec (issue 10)


@dataclass
class Loaded:
    """A scenario's inputs, loaded and validated once."""

    scenario: RunSpec
    cost: CostModel
    cluster: ClusterSpec
    mix: Mix | None
    trace_requests: list[RequestSpec] | None
    gpu_kind: str
    _cache: dict = field(default_factory=dict)

    def expected(self) -> dict[tuple[str, Shape], float] | None:
        """What the policy plans its initial placement for (:func:`planned_workload`, read once)."""
        if "expected" not in self._cache:
            if self.mix is not None and self.scenario.trace is None:  # the requests' own Shape objects
                self._cache["expected"] = expected_mix((c.model, c.shape, c.weight) for c in self.mix.classes)
            else:
                self._cache["expected"] = planned_workload(self.scenario)
        return self._cache["expected"]

    def check_rates(self, rates: Sequence[float]) -> None:
        """A WorkloadError if a mix at one of ``rates`` over the scenario's duration would be more
        requests than a workload may hold (``MAX_REQUESTS``): checked before a sweep starts."""
        if self.trace_requests is not None:
            return
        problems = [f"{key}: {msg}" for r in rates
                    for key, msg in generated_size_problems(r, self.scenario.duration_s, self.scenario.arrival)]
        if problems:
            raise WorkloadError(f"mix {self.scenario.mix}", problems[:1])

    def requests(self, rate: float | None) -> list[RequestSpec]:
        if self.trace_requests is not None:
            return self.trace_requests
        if rate is None or not rate > 0:
            raise ValueError("a rate > 0 is needed with a mix")
        key = round(rate, 9)
        if key not in self._cache:
            slo = make_slo_fn(self.cost, self.scenario.slo_scale, self.cluster.gpus_per_node, self.gpu_kind)
            self._cache[key] = generate_requests(self.mix, self.scenario.arrival, rate, self.scenario.duration_s,
                                                 self.scenario.seed, slo)
            if len(self._cache) > 64:
                self._cache.pop(next(k for k in self._cache if k not in ("expected", "ceilings")))
        return self._cache[key]


def planned_workload(spec: RunSpec) -> dict[tuple[str, Shape], float] | None:
    """``policy.start``'s input for a run of ``spec``, the same simulated (:meth:`Loaded.expected`)
    and live (``trident serve --spec``): the mix's classes at their weights, or one per request of
    the trace; None without a workload."""
    from ..formats.mixes import load_mix
    from ..formats.traces import read_trace

    if spec.trace is not None:
        return expected_mix((e.model, e.shape, 1.0) for e in read_trace(spec.trace, default_model=spec.trace_model))
    if spec.mix is not None:
        return expected_mix((c.model, c.shape, c.weight) for c in load_mix(spec.mix).classes)
    return None


def load_scenario(sc: RunSpec, *, profile_flag: str = "--profile") -> Loaded:
    """``sc``'s inputs, loaded and checked once (``profile_flag``: how the caller's command spells
    the profile option, for the hint when another shipped profile prices the mix)."""
    from ..formats.mixes import MODELS_OPTION, load_cluster, load_mix
    from ..formats.traces import TraceError, read_trace, requests_from_trace
    from ..profiles import load_profile, shipped_profiles

    cost = load_profile(sc.profile).cost_model()
    cluster = load_cluster(sc.cluster)
    kinds = cost.gpus()
    gpu_kind = cluster.kind if cluster.kind in kinds else None
    if gpu_kind is None:
        others = [p for p in shipped_profiles() if cluster.kind in load_profile(p).cost_model().gpus()]
        alt = f", or {profile_flag} {others[0]} for {cluster.kind}" if others else " or another profile"
        raise ValueError(f"profile {sc.profile!r} has no rows for GPU kind {cluster.kind!r} (it has "
                         f"{', '.join(kinds)}): use a cluster of {kinds[0]} (--cluster {_cluster_for(kinds[0])}){alt}")
    mix = trace = None
    if sc.trace is not None:
        entries = read_trace(sc.trace, default_model=sc.trace_model)
        missing = _unpriced_lines(cost, gpu_kind, entries, _video_models(sc.profile))
        if missing:  # named by the file and its lines, as the trace's other errors are
            classes = Mix("trace", tuple(RequestClass(*c) for c in sorted({_class_of(e) for e in entries})))
            hint = [f"; it is priced by {_flag_hint(p, c, profile_flag)}"
                    for p, c in _pricing(classes) if p != sc.profile]
            raise TraceError(sc.trace, [*missing[:-1], missing[-1] + "".join(hint[:1])])
        slo = make_slo_fn(cost, sc.slo_scale, cluster.gpus_per_node, gpu_kind)
        trace = requests_from_trace(entries, slo, sc.seed)
    elif sc.mix is not None:
        mix = load_mix(sc.mix)
        missing = _unpriced(cost, gpu_kind, mix, _video_models(sc.profile), indexed=MODELS_OPTION not in sc.mix)
        if missing:
            hint = [f"it is priced by {_flag_hint(p, c, profile_flag)}" for p, c in _pricing(mix) if p != sc.profile][:1]
            raise ValueError(f"profile {sc.profile!r} on {cluster.label} cannot cost mix {sc.mix!r}: "
                             + "; ".join(missing + hint))
    else:
        raise ValueError("a scenario needs a mix or a trace")
    return Loaded(sc, cost, cluster, mix, trace, gpu_kind)


def _flag_hint(profile: str, cluster: str, profile_flag: str = "--profile") -> str:
    return f"{profile_flag} {profile} --cluster {cluster}"


def _unpriced(cost: CostModel, kind: str, mix: Mix, video: frozenset[str] = frozenset(), *,
              indexed: bool = False) -> list[str]:
    """What ``cost`` cannot price of ``mix`` on ``kind``, or the HTTP API would refuse (``video``: the
    profile's video models): each problem once, with the classes it hits (``indexed``: each also by
    its entry in the mix's file, ``classes[1] (sd3-medium 1024x1024)``)."""
    where: dict[str, list[str]] = {}
    for i, c in enumerate(mix.classes):
        for problem in _api_problems(cost, kind, video, c.model, c.shape) or _check_class(cost, kind, c.model, c.shape):
            where.setdefault(problem, []).append(f"classes[{i}] ({c.label})" if indexed else c.label)
    return [f"{', '.join(labels)}: {problem}" for problem, labels in where.items()]


def _class_of(entry) -> tuple[str, int, int, int, int]:
    return entry.model, entry.height, entry.width, entry.frames, entry.steps


def _unpriced_lines(cost: CostModel, kind: str, entries, video: frozenset[str] = frozenset()) -> list[str]:
    """What ``cost`` cannot price of a trace's entries on ``kind``, or the HTTP API would refuse
    (``video``: the profile's video models): each problem once, with the lines of the file it is on
    (``line 3: ...``, ``lines 3, 8, ... (12 in all): ...``)."""
    from ..core.errors import listed

    checked: dict[tuple, list[str]] = {}
    where: dict[str, list[int]] = {}
    for e in entries:
        key = _class_of(e)
        if key not in checked:
            checked[key] = _api_problems(cost, kind, video, e.model, e.shape) or _check_class(cost, kind, e.model,
                                                                                               e.shape)
        for problem in checked[key]:
            where.setdefault(problem, []).append(e.line)
    return [f"line{'s' if len(lines) > 1 else ''} {listed(lines)}: {problem}" for problem, lines in where.items()]


def _cluster_for(kind: str) -> str:
    """The cluster a shipped profile's GPU kind is priced on when none is given."""
    if kind == parse_cluster(DEFAULT_CLUSTER).kind:
        return DEFAULT_CLUSTER
    return DEFAULT_CPU_CLUSTER if kind == CPU_KIND else f"8x{kind}"


def _pricing(mix: Mix) -> list[tuple[str, str]]:
    """(profile, cluster) of every shipped profile and GPU kind that prices every class of ``mix``,
    the default profile first; when none does, the one that comes nearest (most classes priced, then
    most of its models known), so the run's error names the profile that has those models (none
    nearer than knowing nothing: an empty list)."""
    from ..profiles import load_profile, shipped_profiles

    names = sorted(shipped_profiles(), key=lambda p: p != DEFAULT_PROFILE)
    out, near = [], []
    models = {c.model for c in mix.classes}
    for name in names:
        cost = load_profile(name).cost_model()
        for kind in cost.gpus():
            unpriced = sum(1 for c in mix.classes if _check_class(cost, kind, c.model, c.shape))
            if not unpriced:
                out.append((name, _cluster_for(kind)))
            near.append((len(mix.classes) - unpriced, len(models & set(cost.models(kind))), name, kind))
    if out:
        return out
    best = max(near, key=lambda n: n[:2], default=None)  # (max keeps the first of equals: default first)
    return [(best[2], _cluster_for(best[3]))] if best is not None and best[:2] != (0, 0) else []


def pricing_for(mix: str | None, profile: str | None = None, cluster: str | None = None, *,
                trace: str | None = None, model: str | None = None) -> tuple[str, str]:
    """The cost profile and cluster a mix (or a ``trace``, its classes as a mix; ``model`` for a trace
    that names none) is priced with, where either is not given.

    Neither given: the default profile on the default cluster when it prices every class
    (``h200`` on ``2x8xH200``), else the first shipped profile that does, on its cluster (the
    ``tiny`` mix: ``cpu`` on ``2xcpu``); the defaults when none does or the mix cannot be read (the
    run's error then says what is missing). Only the profile given: its GPU kind's cluster. Only the
    cluster given: the first shipped profile with rows for its kind (default profile first)."""
    from ..formats.mixes import load_cluster, load_mix
    from ..profiles import load_profile, shipped_profiles

    if profile is not None and cluster is not None:
        return profile, cluster
    try:
        if profile is not None:
            return profile, _cluster_for(load_profile(profile).cost_model().gpus()[0])
        if cluster is not None:
            kind = load_cluster(cluster).kind
            names = sorted(shipped_profiles(), key=lambda p: p != DEFAULT_PROFILE)
            return next((p for p in names if kind in load_profile(p).cost_model().gpus()), DEFAULT_PROFILE), cluster
        if mix:
            pairs = _pricing(load_mix(mix))
        elif trace:
            from ..formats.traces import read_trace

            seen = sorted({(e.model, e.height, e.width, e.frames, e.steps) for e in read_trace(trace, model)})
            pairs = _pricing(Mix("trace", tuple(RequestClass(*c) for c in seen)))
        else:
            pairs = []
    except (ValueError, LookupError, OSError):  # the run's own checks report it
        pairs = []
    return (profile or DEFAULT_PROFILE, cluster or DEFAULT_CLUSTER) if not pairs else pairs[0]


def schedule_requests(spec: RunSpec, *, profile_flag: str = "--profile") -> list[RequestSpec]:
    """The requests of ``spec`` in arrival order (a mix at ``spec.rate``, or the trace), exactly as the
    simulator draws them; :class:`RunSpecError` lists every problem (``--option: message``, the
    profile option spelled ``profile_flag``: the Locust file's is ``--cost-profile``)."""
    spec.check()
    try:
        return load_scenario(spec, profile_flag=profile_flag).requests(None if spec.trace else spec.rate)
    except (ValueError, LookupError, OSError) as exc:
        from ..profiles.format import ProfileError

        if spec.trace:
            option = "--arrival"
        else:  # the option at fault where one alone is (a profile that cannot price the mix: all three)
            option = {WorkloadError: "--mix", ClusterError: "--cluster", ProfileError: profile_flag}.get(
                type(exc), f"--mix/{profile_flag}/--cluster")
        text = str(exc)
        if "\n" in text and getattr(exc, "problems", None):  # a trace's list of problems, one a line: in a line
            head, *lines = text.splitlines()
            text = f"{head} " + "; ".join(line.strip() for line in lines)
        raise RunSpecError([f"{option}: {' '.join(text.split())}"]) from None


def _video_models(profile: str) -> frozenset[str]:
    from ..profiles import load_profile
    from ..runtime.models import video_models

    return frozenset(video_models(load_profile(profile).rows))


def _api_problems(cost: CostModel, kind: str, video: frozenset[str], model: str, shape) -> list[str]:
    """What the HTTP API would refuse of ``model`` at ``shape`` (its size multiple and bounds, the frame
    counts its video VAE takes), so that a run simulated from it can be run live too: the live bench
    sends the same requests to ``trident serve`` on emulated devices, whose rules these are. On the
    ``cpu`` kind its models run live as the real tiny pipelines, whose exact rules are read from the
    pipelines (torch): here only what every pipeline refuses (sides not multiples of 16 or under 32,
    frames on an image model, a video's frames not 4k+1; a trace of those simulated, then failed live)."""
    from ..runtime.models import ModelEntry, emulated_entry, shape_problems

    if model not in cost.models(kind):
        return []  # (a model the profile lacks is named by the pricing check)
    if kind == CPU_KIND:
        entry = ModelEntry(model, "video" if model in video else "image", 32, MAX_SIDE_PX, 16, 1, 64, 64,
                           frames_multiple=4, max_frames=MAX_FRAMES)
    else:
        entry = emulated_entry(model, cost, kind, model in video)
    return [f"{p.message} (the HTTP API refuses it)"
            for p in shape_problems(entry, shape.width, shape.height, shape.frames)]


def _check_class(cost: CostModel, kind: str, model: str, shape) -> list[str]:
    try:
        cost.latency_s(model, StageKind.ENCODE, None, 1, 1, kind)
        cost.latency_s(model, StageKind.DIFFUSE, shape, 1, 1, kind)
        cost.latency_s(model, StageKind.DECODE, shape, 1, 1, kind)
    except LookupError as exc:
        return [str(exc)]
    return []


def run_one(loaded: Loaded, policy_spec: str, rate: float | None, *, record: bool = True) -> SimResult:
    policy = make_policy(policy_spec)
    sc = loaded.scenario
    noise = StageNoise(sc.noise_sigma, sc.noise_bias, sc.seed)  # the same draws for every policy
    return simulate(loaded.cluster, loaded.cost, policy, loaded.requests(rate), gpu_kind=loaded.gpu_kind,
                    record=record, expected=loaded.expected(), noise=noise)


def start_refusal(loaded: Loaded, policy_spec: str) -> str | None:
    """Why ``policy_spec`` cannot start on this scenario's cluster (a deployment whose weights do not
    fit its GPUs, a degree that does not divide its nodes), or None: a comparison leaves such a policy
    out, and says why, instead of failing whole (its start, on an empty cluster, decides)."""
    expected = loaded.expected()
    if not expected:
        return None
    core = DriverCore(loaded.cluster, loaded.cost, make_policy(policy_spec), gpu_kind=loaded.gpu_kind, record=False,
                      strict=True)
    try:
        core.start(tuple(sorted({model for model, _ in expected})), expected, 0.0)
    except PolicyError as exc:
        return str(exc)
    return None


def capacity_rps(loaded: Loaded) -> float:
    """Rate the cluster sustains with every request at its most GPU-efficient degree, perfectly packed."""
    return ceilings(loaded)[0].rps


def ceilings(loaded: Loaded) -> tuple[Ceiling, Ceiling]:
    """The efficient and the SLO-aware capacity ceilings of the scenario's workload (its mix's
    classes at their weights, or a trace's requests by class and SLO)."""
    if "ceilings" not in loaded._cache:
        demands = _demands(loaded)
        cluster = loaded.cluster
        args = (loaded.cost, loaded.gpu_kind, demands, cluster.num_gpus, cluster.gpus_per_node)
        loaded._cache["ceilings"] = (efficient_ceiling(*args), slo_aware_ceiling(*args))
    return loaded._cache["ceilings"]


def _demands(loaded: Loaded) -> list[ClassDemand]:
    if loaded.mix is not None:
        sc = loaded.scenario
        slo = make_slo_fn(loaded.cost, sc.slo_scale, loaded.cluster.gpus_per_node, loaded.gpu_kind)
        return [ClassDemand(c.model, c.shape, c.weight, slo(c.model, c.shape)) for c in loaded.mix.classes]
    return _counted(loaded.trace_requests or [])


def _counted(requests: Sequence[RequestSpec]) -> list[ClassDemand]:
    """The requests' classes (model, shape, SLO), each weighted by how many of them there are."""
    counts: dict[tuple[str, Shape, float], int] = {}
    for r in requests:
        counts[(r.model, r.shape, r.slo_s)] = counts.get((r.model, r.shape, r.slo_s), 0) + 1
    return [ClassDemand(m, s, n, slo) for (m, s, slo), n in counts.items()]


def stream_ceiling(loaded: Loaded, rate: float) -> Ceiling:
    """The SLO-aware ceiling priced with the classes as often as the stream at ``rate`` has them,
    not at the mix's weights: a finite stream's draw can hold more of the dear classes than the
    mix (video-wan's seed-0 stream of 1800 s: 30 % 720p requests, not 25 %)."""
    cl = loaded.cluster
    return slo_aware_ceiling(loaded.cost, loaded.gpu_kind, _counted(loaded.requests(rate)), cl.num_gpus,
                             cl.gpus_per_node)


@dataclass
class RatePoint:
    rate: float
    attainment: float
    min_class: float
    by_class: dict[str, tuple[int, float]]
    summary: dict


def evaluate(loaded: Loaded, policy_spec: str, rate: float) -> RatePoint:
    res = run_one(loaded, policy_spec, rate, record=True)
    s = summarize(policy_spec, res.requests, res.spans, res.decision_ms)
    return RatePoint(rate, s["attainment"], min_class_attainment(res.requests), attainment_by_class(res.requests), s)


def _bisect(passes: Callable[[float], bool], lo: float, hi: float, rel_tol: float, max_iter: int,
            probes: int = 0) -> float:
    """Highest rate in [lo, hi] that passes, assuming pass/fail is monotone in rate above the lowest
    rate that passes. When ``lo`` fails, up to ``probes`` rates spaced evenly in log scale up to ``hi``
    are tried, lowest first, and the bisection starts from the first that passes (0 if none does): a
    short stream's attainment at a low rate can fail by chance (7 of 9 requests met) where more
    requests pass."""
    if not passes(lo):
        if lo <= 0 or hi <= lo:
            return 0.0
        for k in range(1, probes + 1):
            rate = lo * (hi / lo) ** (k / probes)
            if passes(rate):
                lo = rate
                break
        else:
            return 0.0
    if passes(hi):
        return hi
    for _ in range(max_iter):
        if (hi - lo) <= rel_tol * hi:
            break
        mid = (lo + hi) / 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class Goodput:
    policy: str
    goodput_rps: float
    fair_goodput_rps: float
    points: list[RatePoint]


GOODPUT_PROBES = 6  # rates tried above a lowest rate that fails (``_bisect``)


def goodput_range(cap: float) -> tuple[float, float]:
    """The rates :func:`sweep_goodput` bisects between, from the capacity ceiling."""
    return 0.02 * cap, 1.25 * cap


def goodput_rates(loaded: Loaded, cap: float) -> tuple[float, float]:
    """:func:`goodput_range` for ``loaded``, its lowest rate raised to the lowest its arrival takes
    (``bursts:size=N``: one whole burst over the duration) and both checked: a ``WorkloadError``
    before anything runs (outside test 107: the search's lowest rate, 0.02 x the ceiling, was less
    than one burst, refused part way, a rate the user never gave, after a bench had stored a run)."""
    lo, hi = goodput_range(cap)
    sc = loaded.scenario
    if loaded.trace_requests is None:
        floor = lowest_rate(sc.duration_s, sc.arrival) * (1 + 1e-9)
        if floor > hi:
            raise WorkloadError(f"mix {sc.mix}", [
                f"arrival: the goodput search simulates rates up to {hi:.3g}/s (1.25 x the capacity ceiling "
                f"{cap:.3g}/s), and {sc.arrival} over {sc.duration_s:g} s needs at least {floor:.3g}/s (one whole "
                f"burst); lower the size or raise the duration"])
        lo = max(lo, floor)
    loaded.check_rates([lo, hi])
    return lo, hi


def sweep_goodput(loaded: Loaded, policy_spec: str, target: float = DEFAULT_TARGET, *, rel_tol: float = 0.01,
                  max_iter: int = 14, cap: float | None = None) -> Goodput:
    if not 0 < target <= 1:  # (outside test: --target 0 was taken, and every rate passes it)
        raise ValueError(f"target must be an attainment above 0 and at most 1, got {target!r}")
    cap = capacity_rps(loaded) if cap is None else cap
    cache: dict[float, RatePoint] = {}

    def point(rate: float) -> RatePoint:
        key = round(rate, 6)
        if key not in cache:
            cache[key] = evaluate(loaded, policy_spec, rate)
        return cache[key]

    lo, hi = goodput_rates(loaded, cap)
    overall = _bisect(lambda r: point(r).attainment >= target, lo, hi, rel_tol, max_iter, GOODPUT_PROBES)
    fair_hi = overall if overall > 0 else hi
    fair = _bisect(lambda r: point(r).min_class >= target, lo, max(fair_hi, lo), rel_tol, max_iter,
                   GOODPUT_PROBES) if overall else 0.0
    return Goodput(policy_spec, overall, fair, sorted(cache.values(), key=lambda p: p.rate))


def hindsight_at(loaded: Loaded, rate: float, *, slot_s: float = 1.0, time_limit_s: float = 600.0,
                 integral: bool = False) -> HindsightBound:
    """The hindsight bound (:mod:`tridentcore.core.hindsight`) of the stream ``rate`` gives: the
    most lowest-class attainment any scheduler could reach on exactly these requests."""
    cl = loaded.cluster
    return hindsight_bound(loaded.requests(rate), loaded.cost, loaded.gpu_kind, cl.num_gpus, cl.gpus_per_node,
                           slot_s=slot_s, time_limit_s=time_limit_s, integral=integral)


def hindsight_goodput(loaded: Loaded, lo: float, hi: float, target: float = DEFAULT_TARGET, *,
                      rel_tol: float = 0.01, slot_s: float = 1.0, time_limit_s: float = 600.0,
                      integral: bool = False) -> tuple[float, dict[float, HindsightBound]]:
    """The highest rate in [lo, hi] at which the hindsight bound's lowest class is >= ``target``:
    no scheduler has a higher fair goodput on these streams, as far as the bisection's assumption
    holds (pass or fail monotone in rate, as :func:`sweep_goodput`; 0 if ``lo`` fails). Also every
    rate's bound."""
    seen: dict[float, HindsightBound] = {}

    def passes(rate: float) -> bool:
        key = round(rate, 6)
        if key not in seen:
            seen[key] = hindsight_at(loaded, rate, slot_s=slot_s, time_limit_s=time_limit_s, integral=integral)
        return seen[key].min_class >= target

    return _bisect(passes, lo, hi, rel_tol, 14), seen


# ------------------------------------------------------------------------------------ stored runs
def run_meta(run_id: str, loaded: Loaded, policy_spec: str, rate: float | None, result: SimResult, backend: str = "sim") -> RunMeta:
    sc = loaded.scenario
    duration_s, rate_rps = sc.duration_s, float(rate or 0.0)
    if sc.trace is not None:  # the trace's own (its span and mean rate), not the unused mix options'
        from ..formats.traces import trace_span

        duration_s, rate_rps = trace_span([r.arrival_s for r in loaded.trace_requests or ()])
    return RunMeta(
        run_id=run_id, backend=backend, policy=policy_spec, seed=sc.seed, profile=sc.profile,
        cluster=loaded.cluster.label, mix=sc.workload_label, rate_rps=rate_rps,
        duration_s=duration_s, slo_scale=sc.slo_scale,
        config_json=json.dumps(sc.replace(rate=rate, policies=(policy_spec,)).config(), sort_keys=True, default=str),
        git_sha=git_sha(), packages_json=json.dumps(package_versions(), sort_keys=True),
        hardware_json=json.dumps(hardware(), sort_keys=True), wall_s=result.wall_s,
    )

