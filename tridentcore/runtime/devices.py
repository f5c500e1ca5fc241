"""``--devices``, ``--profile`` and ``--inject-oom`` parsed and validated: what a live run runs on.

Each problem found is collected into one :class:`SetupError`; ``build.py`` assembles the runtime
from the parsed values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.cluster import GPU_MEMORY_GIB, ClusterError, ClusterSpec, parse_cluster
from ..core.defaults import DEFAULT_CPU_PROFILE, DEFAULT_PROFILE, MAX_GPUS_PER_NODE
from ..core.errors import TridentError
from ..core.types import STAGES

DEVICE_FORMS = ("emulated:NODESxGPUSxKIND (emulated:2x8xH200), emulated:GPUSxKIND, cpu:N, cuda:all or cuda:0,1, "
                "or several kinds joined by commas (cpu:1,emulated:8xH200)")


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


class SetupError(TridentError, ValueError):
    """A live run that cannot be built; ``problems`` lists every problem found."""

    def __init__(self, problems) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    kind: str  # emulated | cpu | cuda
    cluster: ClusterSpec
    text: str
    indices: tuple[int, ...] = ()  # cuda: the torch device indices, in slot order

    @property
    def default_profile(self) -> str:
        return DEFAULT_CPU_PROFILE if self.kind == "cpu" else DEFAULT_PROFILE

    @property
    def real(self) -> bool:
        """Devices that run real pipelines (cpu, cuda), as opposed to emulated ones."""
        return self.kind != "emulated"


def host_mem_gib() -> float:
    return _meminfo_gib("MemTotal:") or 8.0


def host_available_gib() -> float | None:
    """The memory available to a new process now (``MemAvailable``), GiB; None where it is not known."""
    return _meminfo_gib("MemAvailable:")


def _meminfo_gib(key: str) -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def _split_devices(text: str) -> list[str]:
    """``cuda:0,1,emulated:8xH200`` -> ``["cuda:0,1", "emulated:8xH200"]`` (a bare index continues cuda)."""
    groups: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if ":" not in token and token.isdigit() and groups and groups[-1].lower().startswith("cuda:"):
            groups[-1] += "," + token
        else:
            groups.append(token)
    return groups


def gpu_kind_of(name: str) -> str:
    """A CUDA device name as a cluster kind: ``NVIDIA H200`` -> ``H200`` (a known kind in the name
    wins, longest first, so ``H200`` is not read as ``H20``); otherwise its last word."""
    upper = name.upper()
    for kind in sorted(GPU_MEMORY_GIB, key=len, reverse=True):
        if re.search(rf"(^|[^A-Z0-9]){kind}([^0-9]|$)", upper):
            return kind
    return upper.split()[-1] if upper.split() else "GPU"


def _parse_cuda(text: str, rest: str) -> DeviceSpec:
    try:
        import torch
    except ImportError:
        raise SetupError([f"devices {text!r}: cuda devices need torch (pip install torch)"]) from None
    if not torch.cuda.is_available():
        raise SetupError([f"devices {text!r}: no CUDA device is visible (torch.cuda.is_available() is False)"])
    count = torch.cuda.device_count()
    if rest.strip().lower() == "all":
        indices = tuple(range(count))
    else:
        parts = [p.strip() for p in rest.split(",")]
        if not parts or not all(p.isdigit() for p in parts):
            raise SetupError([f"devices {text!r}: cuda:all or cuda:I[,J...] with device indices"])
        indices = tuple(int(p) for p in parts)
        bad = [i for i in indices if i >= count]
        if bad or len(set(indices)) != len(indices):
            raise SetupError([f"devices {text!r}: indices must be distinct and below {count} "
                              f"(the visible CUDA devices)"])
    names = {torch.cuda.get_device_name(i) for i in indices}
    if len(names) != 1:
        raise SetupError([f"devices {text!r}: the GPUs are of different kinds ({', '.join(sorted(names))}); "
                          f"name GPUs of one kind"])
    mem = min(torch.cuda.get_device_properties(i).total_memory for i in indices) / 2**30
    cluster = ClusterSpec(nodes=1, gpus_per_node=len(indices), kind=gpu_kind_of(names.pop()), mem_gib=round(mem, 3))
    return DeviceSpec("cuda", cluster, text, indices)


def _parse_one(text: str) -> DeviceSpec:
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
        # ASCII digits only, as a cluster's counts (outside test: `cpu:٢`, Arabic-Indic, started 2 workers)
        if not re.fullmatch(r"\s*[0-9]{1,9}\s*", rest) or not 1 <= int(rest) <= MAX_GPUS_PER_NODE:
            hint = "; separate kinds with ','" if re.search(r"[;|\s]\s*[a-z]+:", rest) else ""
            raise SetupError([f"devices {text!r}: cpu:N needs a worker count N in 1..{MAX_GPUS_PER_NODE}{hint}"])
        n = int(rest)
        cluster = ClusterSpec(nodes=1, gpus_per_node=n, kind="cpu", mem_gib=round(host_mem_gib() / n, 3))
        return DeviceSpec("cpu", cluster, text)
    if kind == "cuda":
        return _parse_cuda(text, rest)
    raise SetupError([f"devices {text!r}: unknown device kind {kind!r}; expected {DEVICE_FORMS}"])


def parse_devices(text: str) -> list[DeviceSpec]:
    """Every device group of ``--devices`` (one per kind), or a SetupError listing every problem."""
    problems: list[str] = []
    specs: list[DeviceSpec] = []
    for group in _split_devices(text.strip()):
        if not group:
            problems.append(f"devices {text!r}: an empty entry; expected {DEVICE_FORMS}")
            continue
        try:
            specs.append(_parse_one(group))
        except SetupError as exc:
            problems += exc.problems
    kinds = [d.kind for d in specs]
    for k in sorted(set(kinds)):
        if kinds.count(k) > 1:
            problems.append(f"devices {text!r}: {k} is named {kinds.count(k)} times; name each kind once")
    if problems:
        raise SetupError(problems)
    return specs


def parse_profiles(text: str | None, devices: list[DeviceSpec]) -> tuple[dict[str, str], list[str]]:
    """The profile of each device kind: defaults, one name for all (but cpu in a mixed run), or KIND=NAME."""
    out = {d.kind: d.default_profile for d in devices}
    problems: list[str] = []
    if not text:
        return out, problems
    if "=" not in text:
        for d in devices:
            if len(devices) == 1 or d.kind != "cpu":
                out[d.kind] = text.strip()
        return out, problems
    for pair in text.split(","):
        kind, sep, name = (x.strip() for x in pair.partition("="))
        if not sep or not name:
            problems.append(f"profile {pair!r}: expected NAME or KIND=NAME pairs (cpu=cpu,emulated=h200)")
        elif kind.lower() not in out:
            problems.append(f"profile {pair!r}: no {kind!r} devices in this run (it has {', '.join(out)})")
        else:
            out[kind.lower()] = name
    return out, problems
