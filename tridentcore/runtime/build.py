"""Building a live run from its description: devices, models, policy, profile (validated once).

``--devices``:

* ``emulated:2x8xH200`` (any cluster form, ``emulated:8xH200``): emulated GPUs, one in-process
  worker per GPU; models are the profile's names (``sd3-medium``, ``wan2.1-1.3b``); default
  profile ``h200``.
* ``cpu:N``: N worker processes on this host, one torch thread each, running real (tiny)
  pipelines; the cluster is one node of N ``cpu`` devices, each with an equal share of host
  memory; default profile ``cpu`` (the shipped measurements of the tiny models).

Mixed kinds (``cpu:1,emulated:8xH200``) are not supported yet: they are refused with that reason.

``backend``: ``local`` (the workers above, on this host) or ``ray`` (one Ray actor per device slot,
``runtime/ray_workers.py``; ``ray_address`` names a running Ray cluster, None starts one here).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

from ..core.cluster import ClusterError, ClusterSpec, parse_cluster
from ..core.policy import make_policy
from .engine import Engine, EngineConfig
from .models import ModelEntry, emulated_entry, video_models
from .workers import CpuWorker, EmulatedWorker, WorkerPool

DEVICE_FORMS = "emulated:NODESxGPUSxKIND (emulated:2x8xH200), emulated:GPUSxKIND, or cpu:N"
BACKENDS = ("local", "ray")


STAGES = ("encode", "diffuse", "decode")


def parse_faults(text: str | None) -> tuple[tuple[tuple[str, int], ...], list[str]]:
    """``--inject-oom``: ``STAGE:N[,STAGE:N]`` (the first N dispatches of STAGE fail out of memory).

    Returns the plan and the problems found (a testing aid, validated like every other option)."""
    plan: dict[str, int] = {}
    problems = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        stage, sep, count = part.partition(":")
        stage = stage.strip()
        count = count.strip() if sep else "1"
        if stage not in STAGES:
            problems.append(f"inject-oom {part!r}: unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        elif not count.isdigit():
            problems.append(f"inject-oom {part!r}: the count must be a whole number >= 0")
        else:
            plan[stage] = plan.get(stage, 0) + int(count)
    return tuple(sorted(plan.items())), problems


class SetupError(ValueError):
    """A live run that cannot be built; ``problems`` lists every problem found."""

    def __init__(self, problems) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    kind: str  # emulated | cpu
    cluster: ClusterSpec
    text: str

    @property
    def default_profile(self) -> str:
        return "cpu" if self.kind == "cpu" else "h200"


def host_mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return 8.0


def parse_devices(text: str) -> DeviceSpec:
    text = text.strip()
    if "," in text:
        raise SetupError([f"devices {text!r}: mixing device kinds is not supported yet; use one of {DEVICE_FORMS}"])
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep:
        raise SetupError([f"devices {text!r}: expected {DEVICE_FORMS}"])
    if kind == "emulated":
        try:
            cluster = parse_cluster(rest)
        except ClusterError as exc:
            raise SetupError([f"devices {text!r}: {p}" for p in exc.problems]) from None
        return DeviceSpec("emulated", cluster, text)
    if kind == "cpu":
        if not re.fullmatch(r"\s*\d+\s*", rest) or int(rest) < 1:
            raise SetupError([f"devices {text!r}: cpu:N needs a worker count N >= 1"])
        n = int(rest)
        cluster = ClusterSpec(nodes=1, gpus_per_node=n, kind="cpu", mem_gib=round(host_mem_gib() / n, 3))
        return DeviceSpec("cpu", cluster, text)
    raise SetupError([f"devices {text!r}: unknown device kind {kind!r}; expected {DEVICE_FORMS}"])


@dataclass
class Runtime:
    """An engine and the model catalogue the server validates requests against."""

    engine: Engine
    models: dict[str, ModelEntry]
    devices: DeviceSpec
    gpu_kind: str

    async def start(self) -> None:
        await self.engine.start()
        if self.devices.kind == "cpu":  # the workers report what their pipelines accept
            for name, card in self.engine.workers.cards().items():
                self.models[name] = _cpu_entry(card)


def _cpu_entry(card) -> ModelEntry:
    kind = "video" if card.video else "image"
    size = max(card.min_size, 64 if card.video else 128)
    size -= size % card.size_multiple
    return ModelEntry(card.name, kind, card.min_size, min(card.max_size, 1024), card.size_multiple,
                      card.default_steps, size, size, card.frames_multiple, card.max_frames,
                      9 if card.video else 1)


def build_runtime(models: list[str] | str, devices: str, policy: str = "trident", *, profile: str | None = None,
                  time_scale: float = 1.0, max_queued: int = 256, slo_scale: float = 3.0,
                  strict: bool = False, threads: int = 1, backend: str = "local",
                  ray_address: str | None = None, inject_oom: str | None = None) -> Runtime:
    """Validate everything and build a not-yet-started runtime (``await runtime.start()``)."""
    from ..profiles import ProfileError, load_profile

    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    problems: list[str] = []
    dev = parse_devices(devices)
    profile = profile or dev.default_profile
    try:
        loaded = load_profile(profile)
    except ProfileError as exc:
        raise SetupError([str(exc)]) from None
    cost = loaded.cost_model()
    kinds = cost.gpus()
    kind = next((k for k in kinds if k.casefold() == dev.cluster.kind.casefold()), None)
    if kind is None:
        problems.append(f"profile {profile!r} has no rows for device kind {dev.cluster.kind!r} "
                        f"(it has {', '.join(kinds)})")
    if not names:
        problems.append("no models given")
    if not time_scale >= 0:
        problems.append(f"time_scale must be >= 0 (got {time_scale})")
    if dev.kind != "emulated" and time_scale != 1.0:
        problems.append("--time-scale applies to emulated devices only")
    if not max_queued >= 1:
        problems.append(f"max_queued must be >= 1 (got {max_queued})")
    faults, fault_problems = parse_faults(inject_oom)
    problems += fault_problems
    if backend not in BACKENDS:
        problems.append(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    elif backend == "ray" and importlib.util.find_spec("ray") is None:
        problems.append("backend 'ray' needs the ray package (pip install 'tridentserve[ray]')")
    if ray_address and backend != "ray":
        problems.append("a Ray address applies to backend 'ray' only")
    if kind is not None:
        known = cost.models(kind)
        for m in names:
            if m not in known:
                problems.append(f"model {m!r} is not in profile {profile!r} (it has {', '.join(known)})")
    if dev.kind == "cpu":
        from ..pipelines import MODELS

        for m in names:
            if m not in MODELS and not os.path.exists(m):
                problems.append(f"model {m!r} is not a built-in pipeline ({', '.join(MODELS)}) or a directory")
    try:
        pol = make_policy(policy)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise SetupError(problems)
    entries: dict[str, ModelEntry] = {}
    if dev.kind == "emulated":
        video = video_models(loaded.rows)
        entries = {m: emulated_entry(m, cost, kind, m in video) for m in names}
    if backend == "ray":
        from .ray_workers import RayWorker, RayWorkerPool

        emulated = dev.kind == "emulated"
        pool = RayWorkerPool([RayWorker(g.id, () if emulated else names, emulated=emulated, threads=threads)
                              for g in dev.cluster.gpus], address=ray_address or None)
    elif dev.kind == "emulated":
        pool = WorkerPool([EmulatedWorker(g.id) for g in dev.cluster.gpus])
    else:
        pool = WorkerPool([CpuWorker(g.id, names, threads=threads) for g in dev.cluster.gpus])
    config = EngineConfig(max_queued=max_queued, time_scale=time_scale if dev.kind == "emulated" else 1.0,
                          slo_scale=slo_scale, strict=strict, inject_oom=faults)
    engine = Engine(dev.cluster, cost, pol, pool, names, gpu_kind=kind, config=config, profile=profile,
                    devices=dev.text)
    return Runtime(engine, entries, dev, kind)
