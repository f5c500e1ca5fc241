"""Building a live run from its description: devices, models, policy, profile (validated once).

``--devices`` (one kind, or several joined by commas):

* ``emulated:2x8xH200`` (any cluster form, ``emulated:8xH200``): emulated GPUs, one in-process
  worker per GPU; models are the profile's names (``sd3-medium``, ``wan2.1-1.3b``); default
  profile ``h200``.
* ``cpu:N``: N worker processes on this host, one torch thread each, running real (tiny)
  pipelines; the cluster is one node of N ``cpu`` devices, each with an equal share of host
  memory; default profile ``cpu`` (the shipped measurements of the tiny models).
* ``cuda:all`` or ``cuda:0,1``: one worker process per GPU running real pipelines in bfloat16 (a
  profile model name such as ``sd3-medium`` runs its ``arch:`` build: the published architecture
  with random weights); stage weights move onto a GPU and off it as the placement plan says, and
  each GPU's memory is its own (``torch.cuda`` reports the size and the kind, e.g. H200); default
  profile ``h200``, which must have rows for that kind.
* mixed, e.g. ``cpu:1,emulated:2x8xH200``: one engine per kind (``runtime/group.py``), each model
  served by the first kind that can serve it (tiny pipelines on the CPU, profile models on the
  emulated GPUs).

``profile``: one name for every part (in a mixed run, every part but ``cpu``), or ``KIND=NAME``
pairs (``cpu=cpu,emulated=h200``).

``backend``: ``local`` (the workers above, on this host) or ``ray`` (one Ray actor per device slot,
``runtime/ray_workers.py``; ``ray_address`` names a running Ray cluster, None starts one here).

``slowdown`` K (a testing aid, ``trident serve --slowdown K``): every cpu slot (a local process or a
Ray cpu actor) takes K times the time it computed (``runtime/worker_process.py``), so a run sees a
device K times slower than its profile and the online calibration learns a factor of about K. It
applies to cpu devices only (in a mixed run, its cpu part): emulated devices have ``time_scale``,
cuda devices are real.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..core.costmodel import CostModel
from ..core.defaults import (DEFAULT_KEEP_ENDED, DEFAULT_NO_DEVICE_TIMEOUT_S, DEFAULT_RESULTS_MIB, DEFAULT_LIVE_CALIBRATE, DEFAULT_MAX_QUEUED, DEFAULT_POLICY,
                             DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE, MAX_FRAMES, MAX_SIDE_PX, MAX_SCALE)
from ..core.errors import is_number
from ..core.policy import make_policy, with_late
from ..core.types import Shape
from .devices import (DEVICE_FORMS, DeviceSpec, SetupError, gpu_kind_of, host_mem_gib, parse_devices, parse_faults,
                      parse_profiles)
from .engine import Engine, EngineConfig
from .group import EngineGroup
from .models import ModelEntry, emulated_entry, priced, video_models
from .parallel_worlds import WorldKeys
from .workers import CpuWorker, EmulatedWorker, WorkerPool

__all__ = ["BACKENDS", "DEVICE_FORMS", "DeviceSpec", "Part", "Runtime", "SetupError", "build_runtime", "gpu_kind_of",
           "host_mem_gib", "parse_devices", "parse_faults", "parse_profiles", "pipeline_for", "same_folder"]

BACKENDS = ("local", "ray")
logger = logging.getLogger(__name__)


@dataclass
class Part:
    """One device kind of a run: its devices, profile, cost model and engine."""

    devices: DeviceSpec
    profile: str
    cost: CostModel
    gpu_kind: str
    models: list[str] = field(default_factory=list)
    engine: Engine | None = None
    rows: tuple = ()  # the profile's rows (``ProfileRow``), as read once


@dataclass
class Runtime:
    """An engine (or a group of engines, one per device kind) and the model catalogue the server
    validates requests against."""

    engine: Engine | EngineGroup
    models: dict[str, ModelEntry]
    parts: list[Part]
    stop_requested: bool = False  # the server was told to stop (``stopping``)

    @property
    def devices(self) -> DeviceSpec:
        return self.parts[0].devices

    @property
    def gpu_kind(self) -> str:
        return self.parts[0].gpu_kind

    def part_of(self, model: str) -> Part:
        for part in self.parts:
            if model in part.models:
                return part
        raise KeyError(model)

    def pricing(self, model: str) -> tuple[CostModel, str]:
        """The cost model and device kind that price ``model`` (its part's)."""
        part = self.part_of(model)
        return part.cost, part.gpu_kind

    def engine_of(self, model: str) -> Engine:
        return self.part_of(model).engine

    def stopping(self) -> None:
        """The server was told to stop: new work is refused at once, and its workers' ends are expected
        (``Worker.stopping``)."""
        self.stop_requested = True
        self.engine.close_doors()
        for part in self.parts:
            if part.engine is not None:
                part.engine.workers.stopping()

    async def start(self) -> None:
        await self.engine.start()
        for part in self.parts:  # real workers report what their pipelines accept
            if part.devices.real:
                for name, card in part.engine.workers.cards().items():
                    self.models[name] = priced(_device_entry(card, part.devices.kind), part.cost, part.gpu_kind)


def _device_entry(card, kind: str) -> ModelEntry:
    """What a model accepts on real devices: the pipeline's bounds (on the CPU at most 1024, the tiny
    models' range); the default size is the smallest the pipeline takes on the CPU, the published
    default (1024², 832x480) on GPUs."""
    video = card.video
    if kind == "cpu":
        size = max(card.min_size, 64 if video else 128)
        size -= size % card.size_multiple
        width = height = size
        max_size = min(card.max_size, 1024)
    else:
        width, height = (832, 480) if video else (1024, 1024)
        max_size = card.max_size
    # never beyond what the API's schema declares (MAX_SIDE_PX, MAX_FRAMES)
    return ModelEntry(card.name, "video" if video else "image", card.min_size, min(max_size, MAX_SIDE_PX),
                      card.size_multiple, card.default_steps, width, height, card.frames_multiple,
                      min(card.max_frames, MAX_FRAMES),
                      (1 + 4 * card.frames_multiple if kind != "cpu" else 9) if video else 1)


def pipeline_for(model: str, kind: str) -> str | None:
    """The pipeline a real device runs for ``model``: a built-in or a directory as named; on cuda, a
    profile name runs its ``arch:`` build (``sd3-medium`` -> ``arch:sd3-medium``). None: no pipeline."""
    from ..pipelines import MODELS

    if model in MODELS or os.path.exists(model):
        return model
    if kind == "cuda" and f"arch:{model}" in MODELS:
        return f"arch:{model}"
    return None


def same_folder(model: str, names) -> str | None:
    """The one of ``names`` that is the folder ``model`` names, written another way (``./saved`` and
    ``saved``, a link), if ``model`` is a folder; None if none is."""
    if not os.path.isdir(model):
        return None
    for name in names:
        try:
            if name != model and os.path.isdir(name) and os.path.samefile(name, model):
                return name
        except OSError:
            continue
    return None


def _model_problems(part: Part, model: str) -> list[str]:
    """Why ``part`` cannot serve ``model`` (empty: it can)."""
    problems = []
    known = part.cost.models(part.gpu_kind)
    if model not in known:
        problem = f"model {model!r} is not in profile {part.profile!r} (it has {', '.join(known)})"
        same = same_folder(model, known)
        if same is not None:  # (outside test 110: told to measure again a folder it had measured)
            problem += (f"; {same!r} there is this folder, written another way: serve it as --models {same} "
                        "(a profile's rows name a folder as it was written when measured)")
        elif os.path.isdir(model):  # a saved pipeline: nothing prices it until it is measured
            device = "cpu" if part.devices.kind != "cuda" else "cuda:0"
            problem += (f"; measure it with `trident profile --model {model} --device {device} --out FILE.csv` "
                        "and serve with `--profile FILE.csv` (its rows name the model as given here)")
        problems.append(problem)
    if part.devices.real and pipeline_for(model, part.devices.kind) is None:
        from ..pipelines import MODELS

        problems.append(f"model {model!r} is not a built-in pipeline ({', '.join(MODELS)}) or a directory")
    return problems


def _dtype_notes(part: Part) -> list[str]:
    """Where ``part``'s profile says its rows of a served model were measured in another dtype than
    the part's workers load it in (``trident profile`` writes ``measured (dtype bfloat16)``; outside test
    133: a bfloat16 profile priced float32 CPU workers, unsaid). Older rows say none: nothing to say."""
    if not part.devices.real:
        return []
    from ..pipelines import served_dtype
    from ..profiles import measured_dtype

    want = served_dtype(part.devices.kind)
    rows: dict[str, int] = {}  # a served model's rows on this kind
    found: dict[str, Counter] = {}  # ... and of them, those measured in another dtype, by dtype
    for row in part.rows:
        if row.model in part.models and row.gpu.casefold() == part.gpu_kind.casefold():
            rows[row.model] = rows.get(row.model, 0) + 1
            dtype = measured_dtype(row)
            if dtype is not None and dtype != want:
                found.setdefault(row.model, Counter())[dtype] += 1
    # (outside test 135: a file appended to in another dtype was said to be measured in it whole)
    return [f"profile {part.profile!r} measured {_of(sum(dtypes.values()), rows[model])}{model} in "
            f"{' and '.join(sorted(dtypes))}, but the {part.devices.kind} workers run it in {want}: its stage "
            f"times may be off (measure it with `trident profile --dtype {want}`)" for model, dtypes in found.items()]


def _of(n: int, total: int) -> str:
    return "" if n == total else f"{n} of the {total} rows of "


def _workers(part: Part, backend: str, threads: int, ray_address: str | None, slowdown: float = 1.0):
    dev = part.devices
    sources = {m: pipeline_for(m, dev.kind) for m in part.models} if dev.real else {}
    slowdown = slowdown if dev.kind == "cpu" else 1.0
    if backend == "ray":
        from .ray_workers import RayWorker, RayWorkerPool

        if dev.kind == "cuda":
            raise SetupError(["backend 'ray' runs emulated and cpu devices; for GPUs use the local backend "
                              "on each node (see docs/ray.md)"])
        emulated = dev.kind == "emulated"
        return RayWorkerPool([RayWorker(g.id, () if emulated else part.models, emulated=emulated, threads=threads,
                                        slowdown=slowdown)
                              for g in dev.cluster.gpus], address=(ray_address or "").strip() or None,
                             worlds=None if emulated else WorldKeys())
    if dev.kind == "emulated":
        return WorkerPool([EmulatedWorker(g.id) for g in dev.cluster.gpus])
    if dev.kind == "cuda":
        return WorkerPool([CpuWorker(g.id, part.models, threads=threads, device=f"cuda:{dev.indices[g.id]}",
                                     sources=sources) for g in dev.cluster.gpus], worlds=WorldKeys())
    return WorkerPool([CpuWorker(g.id, part.models, threads=threads, sources=sources, slowdown=slowdown)
                       for g in dev.cluster.gpus], worlds=WorldKeys())


def build_runtime(models: list[str] | str, devices: str, policy: str = DEFAULT_POLICY, *, profile: str | None = None,
                  time_scale: float = DEFAULT_TIME_SCALE, max_queued: int = DEFAULT_MAX_QUEUED,
                  slo_scale: float = DEFAULT_SLO_SCALE,
                  strict: bool = False, threads: int = 1, backend: str = "local",
                  ray_address: str | None = None, inject_oom: str | None = None, record: bool = True,
                  keep_ended: int = DEFAULT_KEEP_ENDED, results_mib: int = DEFAULT_RESULTS_MIB,
                  log_reports: bool = False, late: str | None = None,
                  calibrate: bool = DEFAULT_LIVE_CALIBRATE, slowdown: float = 1.0,
                  expected: Mapping[tuple[str, Shape], float] | None = None,
                  no_device_timeout_s: float = DEFAULT_NO_DEVICE_TIMEOUT_S) -> Runtime:
    """Validate everything and build a not-yet-started runtime (``await runtime.start()``).

    ``expected``: the workload the policy plans its initial placement for (``core.driver.expected_mix``
    of the run's mix), as the simulator is given it; None: the served models, evenly.
    ``log_reports``: each engine keeps its report log for a replay through the simulator (parity).
    ``late``: what the policy does with a request that can no longer meet its deadline (``serve``,
    the default of every policy, or ``reject``: ``core.policy.with_late``); None: as its spec says.
    ``calibrate``: learn measured / predicted stage times (``core/calibration.py``) on real devices
    (cpu, cuda, Ray cpu slots); emulated devices never calibrate.
    ``slowdown``: a testing aid, K >= 1: cpu slots take K times the time they computed (the module's
    docstring); 1: as they are."""
    from ..profiles import ProfileError, load_profile

    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    problems: list[str] = []
    devs = parse_devices(devices)
    profiles, profile_problems = parse_profiles(profile, devs)
    problems += profile_problems
    parts: list[Part] = []
    for dev in devs:
        name = profiles[dev.kind]
        try:
            prof = load_profile(name)
            cost = prof.cost_model()
        except ProfileError as exc:
            problems.append(str(exc))
            continue
        kinds = cost.gpus()
        kind = next((k for k in kinds if k.casefold() == dev.cluster.kind.casefold()), None)
        if kind is None:
            problems.append(f"profile {name!r} has no rows for device kind {dev.cluster.kind!r} "
                            f"(it has {', '.join(kinds)})")
            continue
        parts.append(Part(dev, name, cost, kind, rows=tuple(prof.rows)))
    if not names:
        problems.append("no models given")
    if len(set(names)) != len(names):
        problems.append(f"models {', '.join(names)}: a model is named twice")
    emulated = any(d.kind == "emulated" for d in devs)
    if not 0 <= time_scale <= MAX_SCALE:
        problems.append(f"time_scale must be in [0, {MAX_SCALE:g}] (got {time_scale})")
    if not (is_number(slo_scale) and 0 < slo_scale <= MAX_SCALE):
        problems.append(f"slo_scale must be in (0, {MAX_SCALE:g}] (got {slo_scale})")
    if not emulated and time_scale != 1.0:
        problems.append("--time-scale applies to emulated devices only")
    try:
        slow = float(slowdown)
    except (TypeError, ValueError):
        slow = math.nan
    if not 1.0 <= slow <= MAX_SCALE:
        problems.append(f"slowdown must be a number in [1, {MAX_SCALE:g}] (got {slowdown!r}); 1: devices as they are")
    elif slow != 1.0 and not any(d.kind == "cpu" for d in devs):
        problems.append("--slowdown applies to cpu devices only (emulated devices have --time-scale; "
                        "cuda devices are real)")
    if not max_queued >= 1:
        problems.append(f"max_queued must be >= 1 (got {max_queued})")
    if not keep_ended >= 0:
        problems.append(f"keep_ended must be >= 0 (got {keep_ended})")
    if not results_mib >= 1:
        problems.append(f"results_mib must be >= 1 (got {results_mib})")
    faults, fault_problems = parse_faults(inject_oom)
    problems += fault_problems
    if backend not in BACKENDS:
        problems.append(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    elif backend == "ray" and importlib.util.find_spec("ray") is None:
        problems.append("backend 'ray' needs the ray package (pip install 'tridentserve[ray]')")
    if ray_address is not None and not ray_address.strip():
        problems.append("an empty Ray address: give HOST:PORT or auto (not given: a private instance)")
    elif ray_address and backend != "ray":
        problems.append("a Ray address applies to backend 'ray' only")
    if len(parts) == len(devs):
        for m in dict.fromkeys(names):
            why = {part.devices.text: _model_problems(part, m) for part in parts}
            home = next((part for part in parts if not why[part.devices.text]), None)
            if home is not None:
                home.models.append(m)
            elif len(parts) == 1:
                problems += why[parts[0].devices.text]
            else:
                problems.append(f"model {m!r} runs on none of the devices: "
                                + "; ".join(f"{d}: {', '.join(p)}" for d, p in why.items()))
        if len(parts) > 1:
            for part in parts:
                if not part.models:
                    problems.append(f"devices {part.devices.text!r} serve none of the models "
                                    f"({', '.join(names)}); add a model they can run or drop them")
    try:
        if late is not None:
            policy = with_late(policy, late)
        policies = [make_policy(policy) for _ in parts] or [make_policy(policy)]
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise SetupError(problems)
    for part in parts:
        for note in _dtype_notes(part):
            logger.warning("%s", note)
    entries: dict[str, ModelEntry] = {}
    for part, pol in zip(parts, policies):
        dev = part.devices
        if dev.kind == "emulated":
            video = video_models(part.rows)
            entries.update({m: emulated_entry(m, part.cost, part.gpu_kind, m in video) for m in part.models})
        config = EngineConfig(max_queued=max_queued, time_scale=time_scale if dev.kind == "emulated" else 1.0,
                              slo_scale=slo_scale, strict=strict, inject_oom=faults, record=record,
                              keep_ended=keep_ended, results_mib=results_mib, log_reports=log_reports,
                              no_device_timeout_s=no_device_timeout_s,
                              # emulated devices take the profile's time by construction: what they would
                              # learn is the harness's own overhead magnified by 1 / time_scale
                              calibrate=calibrate and dev.kind != "emulated")
        mine = None if expected is None else {k: w for k, w in expected.items() if k[0] in part.models}
        workers = _workers(part, backend, threads, ray_address, slow)
        part.engine = Engine(dev.cluster, part.cost, pol, workers, part.models,
                             gpu_kind=part.gpu_kind, config=config, profile=part.profile, devices=dev.text,
                             expected=mine)
    if len(parts) == 1:
        engine = parts[0].engine
    else:
        engine = EngineGroup([p.engine for p in parts], [p.devices.text for p in parts])
    return Runtime(engine, entries, parts)
