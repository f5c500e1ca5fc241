"""The cluster a run serves on: nodes x GPUs of one kind (docs/design.md, "Core vocabulary").

Pure: no I/O. A cluster is written like ``8xH200`` (one node of eight H200s), ``2x8xH200`` (two
nodes of eight) or ``16x8xL20``; the YAML form (read by ``tridentcore.formats.mixes.load_cluster``) is a
mapping handed to :func:`cluster_from_dict`::

    nodes: 2
    gpus_per_node: 8
    kind: H200
    mem_gib: 141            # optional: defaults from GPU_MEMORY_GIB
    intra_link_gbps: 450    # optional: GPU to GPU inside a node (NVLink), GB/s one direction
    inter_link_gbps: 50     # optional: between nodes (400 Gb/s InfiniBand / RoCE), GB/s

GPU memory
----------
:data:`GPU_MEMORY_GIB` holds the vendors' advertised memory sizes (H200 "141 GB", L20 "48 GB",
...). We use those numbers **as GiB** (2**30 bytes), the unit of every memory figure in the cost
model and profiles, without converting GB to GiB. That is the closer reading of the hardware:
HBM and GDDR capacities are built in powers of two and the advertised figure is roughly what
``nvidia-smi`` reports as total memory in GiB (an H200 reports about 140 GiB); converting
141 GB to 131 GiB would under-state it. Totals are not all usable (CUDA context, allocator
fragmentation): leaving headroom is the planner's job, not this table's. Pass
``memory_overrides`` / ``mem_gib`` to use measured numbers or a kind the table lacks.

CPU workers
-----------
``cpu`` is a kind too (:data:`CPU_KIND`): ``2xcpu`` is one node of two CPU worker processes, the
cluster of ``trident serve --devices cpu:2``, priced by the shipped ``cpu`` profile. Its memory per
worker, :data:`CPU_WORKER_MEM_GIB`, is nominal (a live server gives each worker the host's memory
divided by the worker count; the tiny models need megabytes).

Size
----
A cluster holds at most :data:`~tridentcore.core.defaults.MAX_CLUSTER_GPUS` GPUs, at most
:data:`~tridentcore.core.defaults.MAX_GPUS_PER_NODE` on a node; both are checked before a GPU is
listed, so ``100000x1000xH200`` is one error, at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .defaults import MAX_CLUSTER_GPUS, MAX_GPUS_PER_NODE, MAX_NAME_CHARS
from .errors import brief, is_finite, is_name, listed
from .types import SpecError

__all__ = [
    "CLUSTER_FORMS",
    "CPU_KIND",
    "CPU_WORKER_MEM_GIB",
    "ClusterError",
    "ClusterSpec",
    "DEFAULT_INTER_LINK_GBPS",
    "DEFAULT_INTRA_LINK_GBPS",
    "GPU_MEMORY_GIB",
    "GpuSpec",
    "cluster_from_dict",
    "parse_cluster",
]

# Advertised memory per GPU, used as GiB (see the module docstring). Keys are upper case.
GPU_MEMORY_GIB: Mapping[str, float] = MappingProxyType(
    {
        "A100": 80.0,
        "A40": 48.0,
        "H100": 80.0,
        "H20": 96.0,
        "H200": 141.0,
        "L20": 48.0,
        "L40": 48.0,
    }
)

CPU_KIND = "cpu"  # a CPU worker process as a cluster kind (module docstring, "CPU workers")
CPU_WORKER_MEM_GIB = 8.0  # nominal memory of one CPU worker where none is given

# GB/s (1e9 bytes/s) one direction; the same nominal figures as costmodel.DEFAULT_LINKS_GBPS.
DEFAULT_INTRA_LINK_GBPS = 450.0
DEFAULT_INTER_LINK_GBPS = 50.0
# The slowest link a cluster may have, GB/s (10 MB/s, slower than any interconnect diffusion is served over):
# at 1e-12 a transfer took 10^10 simulated seconds and the simulation of them hours.
MIN_LINK_GBPS = 0.01

CLUSTER_FORMS = ("GPUSxKIND (one node, e.g. 8xH200; 2xcpu: two CPU workers) or NODESxGPUSxKIND "
                 "(e.g. 2x8xH200, 4x8xH200)")
_CLUSTER_RE = re.compile(r"^\s*(?:(\d+)\s*[xX*]\s*)?(\d+)\s*[xX*]\s*([A-Za-z][A-Za-z0-9_.-]*)\s*$", re.ASCII)  # (ASCII digits: ０-９ were taken)
_MAX_TEXT_CHARS = 64  # a cluster written out (2x8xH200) is a few characters; longer text is not parsed
_YAML_KEYS = ("nodes", "gpus_per_node", "kind", "mem_gib", "intra_link_gbps", "inter_link_gbps")
_REQUIRED_KEYS = ("nodes", "gpus_per_node", "kind")


class ClusterError(SpecError):
    """A cluster description that cannot be used; ``problems`` lists every problem found."""


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU: cluster-wide ``id`` (0..N-1, node-major), its ``node``, ``kind`` and memory."""

    id: int
    node: int
    kind: str
    mem_gib: float


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """``nodes`` x ``gpus_per_node`` GPUs of one ``kind``; validated on construction."""

    nodes: int
    gpus_per_node: int
    kind: str
    mem_gib: float
    intra_link_gbps: float = DEFAULT_INTRA_LINK_GBPS
    inter_link_gbps: float = DEFAULT_INTER_LINK_GBPS
    _gpus: tuple[GpuSpec, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        problems = _spec_problems(
            self.nodes, self.gpus_per_node, self.kind, self.mem_gib, self.intra_link_gbps, self.inter_link_gbps
        )
        if problems:
            raise ClusterError("invalid cluster", problems)
        gpus = tuple(
            GpuSpec(id=node * self.gpus_per_node + local, node=node, kind=self.kind, mem_gib=float(self.mem_gib))
            for node in range(self.nodes)
            for local in range(self.gpus_per_node)
        )
        object.__setattr__(self, "_gpus", gpus)

    @property
    def gpus(self) -> tuple[GpuSpec, ...]:
        """Every GPU, ids 0..N-1, node-major (node 0's GPUs first)."""
        return self._gpus

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def label(self) -> str:
        """``NODESxGPUSxKIND``, e.g. ``2x8xH200`` (``1x8xH200`` for one node); parses back."""
        return f"{self.nodes}x{self.gpus_per_node}x{self.kind}"

    @property
    def total_mem_gib(self) -> float:
        return self.num_gpus * float(self.mem_gib)

    def node_of(self, gpu_id: int) -> int:
        """The node holding GPU ``gpu_id``."""
        if not (_is_int(gpu_id) and 0 <= gpu_id < self.num_gpus):
            raise ValueError(f"gpu id must be an integer in 0..{self.num_gpus - 1} (got {gpu_id!r})")
        return gpu_id // self.gpus_per_node

    def gpus_on(self, node: int) -> tuple[GpuSpec, ...]:
        """The GPUs of one node, in id order."""
        if not (_is_int(node) and 0 <= node < self.nodes):
            raise ValueError(f"node must be an integer in 0..{self.nodes - 1} (got {node!r})")
        start = node * self.gpus_per_node
        return self._gpus[start : start + self.gpus_per_node]

    def link_gbps(self, gpu_a: int, gpu_b: int) -> float:
        """Bandwidth between two GPUs: ``intra_link_gbps`` on one node, else ``inter_link_gbps``."""
        return self.intra_link_gbps if self.node_of(gpu_a) == self.node_of(gpu_b) else self.inter_link_gbps

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (every key), accepted back by :func:`cluster_from_dict`."""
        return {
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "kind": self.kind,
            "mem_gib": float(self.mem_gib),
            "intra_link_gbps": float(self.intra_link_gbps),
            "inter_link_gbps": float(self.inter_link_gbps),
        }


def _spec_problems(
    nodes: Any, gpus_per_node: Any, kind: Any, mem_gib: Any, intra_link_gbps: Any, inter_link_gbps: Any
) -> list[str]:
    problems = []
    nodes_ok = _is_int(nodes) and 1 <= nodes <= MAX_CLUSTER_GPUS
    if not nodes_ok:
        problems.append(f"nodes must be an integer in 1..{MAX_CLUSTER_GPUS} (got {brief(nodes)})")
    per_node_ok = _is_int(gpus_per_node) and 1 <= gpus_per_node <= MAX_GPUS_PER_NODE
    if not per_node_ok:
        problems.append(f"gpus_per_node must be an integer in 1..{MAX_GPUS_PER_NODE} (got {brief(gpus_per_node)})")
    if nodes_ok and per_node_ok and nodes * gpus_per_node > MAX_CLUSTER_GPUS:
        problems.append(f"{nodes} nodes x {gpus_per_node} GPUs = {nodes * gpus_per_node} GPUs; "
                        f"a cluster has at most {MAX_CLUSTER_GPUS}")
    if not (is_name(kind, MAX_NAME_CHARS) and kind == kind.strip()):
        problems.append(f"kind must be a non-empty GPU name such as H200 (got {brief(kind)})")
    for name, value, least in (("mem_gib", mem_gib, 0.0), ("intra_link_gbps", intra_link_gbps, MIN_LINK_GBPS),
                               ("inter_link_gbps", inter_link_gbps, MIN_LINK_GBPS)):
        if not (is_finite(value) and value > 0):
            problems.append(f"{name} must be a positive finite number (got {brief(value)})")
        elif value < least:
            problems.append(f"{name} must be at least {least:g} GB/s (got {brief(value)})")
    return problems


def _memory_table(memory_overrides: Mapping[str, float] | None) -> dict[str, float]:
    """GPU_MEMORY_GIB and the CPU worker kind, with the overrides applied (an override of a known
    kind keeps its spelling)."""
    table = {**GPU_MEMORY_GIB, CPU_KIND: CPU_WORKER_MEM_GIB}
    for kind, gib in (memory_overrides or {}).items():
        table[_resolve_kind(str(kind), table) or str(kind)] = gib
    return table


def _known_kinds(table: Mapping[str, float]) -> str:
    return ", ".join(sorted(table))


def _resolve_kind(kind: str, table: Mapping[str, float]) -> str | None:
    """The table's spelling of ``kind`` (matched case-insensitively), or None if unknown."""
    if kind in table:
        return kind
    folded = kind.casefold()
    for known in table:
        if known.casefold() == folded:
            return known
    return None


def parse_cluster(text: str, memory_overrides: Mapping[str, float] | None = None) -> ClusterSpec:
    """Parse ``8xH200`` (one node of 8), ``2x8xH200`` (nodes x GPUs x kind), ``16x8xL20`` or ``2xcpu``.

    The kind is matched case-insensitively and spelled as in the table (``8xh200`` -> ``H200``,
    ``2xCPU`` -> ``cpu``; a kind added by ``memory_overrides`` keeps the override's spelling).
    Memory per GPU comes from :data:`GPU_MEMORY_GIB` (a CPU worker's from :data:`CPU_WORKER_MEM_GIB`),
    with ``memory_overrides`` (kind -> GiB) taking precedence and able to add kinds the table lacks.
    """
    origin = f"cluster {brief(text)}"
    if not isinstance(text, str):
        raise ClusterError(origin, [f"expected a string in the form {CLUSTER_FORMS}"])
    if len(text) > _MAX_TEXT_CHARS:
        raise ClusterError(origin, [f"{len(text)} characters; expected {CLUSTER_FORMS}"])
    table = _memory_table(memory_overrides)
    match = _CLUSTER_RE.match(text)
    if match is None:
        raise ClusterError(origin, [f"expected {CLUSTER_FORMS}; known GPU kinds: {_known_kinds(table)}"])
    nodes_text, gpus_text, kind_text = match.groups()
    nodes = int(nodes_text) if nodes_text is not None else 1
    gpus_per_node = int(gpus_text)
    problems = []
    if not 1 <= nodes <= MAX_CLUSTER_GPUS:
        problems.append(f"the node count must be in 1..{MAX_CLUSTER_GPUS} (got {nodes})")
    if not 1 <= gpus_per_node <= MAX_GPUS_PER_NODE:
        problems.append(f"the GPU count per node must be in 1..{MAX_GPUS_PER_NODE} (got {gpus_per_node})")
    elif 1 <= nodes <= MAX_CLUSTER_GPUS and nodes * gpus_per_node > MAX_CLUSTER_GPUS:
        problems.append(f"{nodes} nodes x {gpus_per_node} GPUs = {nodes * gpus_per_node} GPUs; "
                        f"a cluster has at most {MAX_CLUSTER_GPUS}")
    kind = _resolve_kind(kind_text, table)
    if kind is None:
        problems.append(
            f"unknown GPU kind {kind_text!r}; known GPU kinds: {_known_kinds(table)} "
            f"(another kind: a cluster YAML file with kind and mem_gib); forms: {CLUSTER_FORMS}"
        )
    if problems:
        raise ClusterError(origin, problems)
    assert kind is not None
    mem = table[kind]
    try:
        return ClusterSpec(nodes=nodes, gpus_per_node=gpus_per_node, kind=kind, mem_gib=mem)
    except ClusterError as exc:  # a bad override value
        raise ClusterError(origin, exc.problems) from None


def cluster_from_dict(
    data: Mapping[str, Any],
    memory_overrides: Mapping[str, float] | None = None,
    *,
    origin: str = "cluster",
) -> ClusterSpec:
    """The YAML form (module docstring) to a :class:`ClusterSpec`; every bad key is named.

    ``kind`` need not be in :data:`GPU_MEMORY_GIB` when ``mem_gib`` is given (it is then kept as
    written, e.g. ``cpu`` to match the cpu profile); a known kind takes the table's spelling.
    """
    if not isinstance(data, Mapping):
        raise ClusterError(origin, [f"expected a mapping with keys {', '.join(_YAML_KEYS)} (got {'an empty file' if data is None else type(data).__name__})"])
    problems = []
    unknown = [k for k in data if k not in _YAML_KEYS]
    if unknown:
        problems.append(f"unknown key(s) {listed(sorted(unknown, key=str))}; valid keys: {', '.join(_YAML_KEYS)}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        problems.append(f"missing key(s) {', '.join(missing)}")
    table = _memory_table(memory_overrides)
    kind = data.get("kind")
    if isinstance(kind, str) and kind.strip():
        kind = _resolve_kind(kind.strip(), table) or kind.strip()
    mem = data.get("mem_gib")
    if mem is None and "kind" in data:
        if isinstance(kind, str) and kind in table:
            mem = table[kind]
        elif isinstance(kind, str) and kind:
            problems.append(
                f"kind: unknown GPU kind {brief(kind)} and no mem_gib given; known GPU kinds: {_known_kinds(table)}"
            )
            mem = 1.0  # placeholder so the remaining checks still run
    values = {
        "nodes": data.get("nodes", 1),
        "gpus_per_node": data.get("gpus_per_node", 1),
        "kind": kind if "kind" in data else "?",
        "mem_gib": mem if mem is not None else 1.0,
        "intra_link_gbps": data.get("intra_link_gbps", DEFAULT_INTRA_LINK_GBPS),
        "inter_link_gbps": data.get("inter_link_gbps", DEFAULT_INTER_LINK_GBPS),
    }
    problems.extend(_spec_problems(**values))
    if problems:
        raise ClusterError(origin, problems)
    for key in ("mem_gib", "intra_link_gbps", "inter_link_gbps"):
        values[key] = float(values[key])
    return ClusterSpec(**values)
