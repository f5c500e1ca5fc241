"""The ``profile`` runner: measure what each stage of a pipeline costs on one device.

For every requested point it times ``encode`` (a batch of prompts), one ``diffuse`` step (the
median over ``repeats`` timed calls of ``steps`` steps each, divided by ``steps``, after
``warmup`` untimed calls) and ``decode``, and records memory:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; ``act_gib`` is the
  peak minus what was allocated before the call.
* CPU: the process's peak resident set (``VmHWM`` in ``/proc/self/status``, reset before each call
  by writing 5 to ``/proc/self/clear_refs``) minus the resident set before the call. During that
  one call glibc's mmap threshold is pinned at 64 KiB, so freed tensors go back to the OS and the
  resident set follows live tensors instead of the allocator's caches (``malloc_trim`` first hands
  the free pages the timed calls left in the heap back to the OS, so reusing them shows); afterwards it is set to
  32 MiB (and the trim threshold to 64 MiB), close to where glibc's own dynamic threshold settles,
  because the timed calls must not run pinned: every tensor then costs an mmap and its page faults
  (tiny-flux-xl's 256² step took 151 ms pinned against 101-109 ms unpinned). The timed calls of
  the first point run on glibc's defaults. Where ``clear_refs`` cannot be written the activation
  figure is recorded as 0 and the row's ``source`` says so.

``peak_gib`` is the stage's own weights plus its activations (other stages' weights may be
resident during profiling; they are not counted), matching the shipped profiles' meaning.

**Degrees.** With ``degrees`` beyond 1 the ``diffuse`` points are measured again at every degree
d > 1, sequence-parallel over d cooperating workers: a *group factory* (``groups(spec, d)``, a context
manager for an object with ``diffuse(pipe, call, embeddings)``, e.g.
:class:`tridentcore.runtime.local_group.LocalGroup`) is entered once per degree, and the lead's
call is timed as above (the median over ``repeats``), the memory on the lead (per device, as the
cost model means it). This module does not start processes itself: the caller passes the factory
(``trident profile`` passes K local processes, one torch thread each by default). ``encode`` and
``decode`` run on one device whatever the degree, so they are measured at degree 1 only. A degree
a model or shape cannot take (a UNet, tokens or heads it does not divide) is skipped with a note
(``on_note``), not an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..core.types import STAGES, ProfileRow, StageKind

logger = logging.getLogger(__name__)

GIB = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt options


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    model: str
    device: str = "cpu"
    dtype: str = "float32"
    sizes: tuple[tuple[int, int], ...] = ((64, 64), (128, 128), (256, 256))  # (height, width)
    frames: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (1, 2, 4)
    steps: int = 2
    repeats: int = 5
    warmup: int = 1
    stages: tuple[str, ...] = STAGES
    degrees: tuple[int, ...] = (1,)  # diffuse only beyond 1 (the module docstring)


GroupFactory = Callable[["ProfileSpec", int], AbstractContextManager[Any]]
"""``groups(spec, degree)``: a context manager giving an object with ``diffuse(pipe, call, embeddings)``."""


@dataclass
class _Meter:
    """Peak-memory measurement around one call, for the device kind at hand."""

    device: str
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cuda = self.device.startswith("cuda")
        self.can_reset = False
        self.libc = None
        if not self.cuda:
            try:
                self.libc = ctypes.CDLL("libc.so.6")
                self.libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)  # fixed, so frees unmap
            except (OSError, AttributeError):
                self.libc = None
                self.notes.append("mallopt unavailable")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.can_reset = True
            except OSError:
                self.notes.append("cannot reset peak RSS")

    @staticmethod
    def _status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def measure(self, fn: Callable[[], object]) -> tuple[object, float]:
        """Run ``fn`` once; return its result and the activation memory it needed, in GiB."""
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            out = fn()
            torch.cuda.synchronize(self.device)
            return out, max(0, torch.cuda.max_memory_allocated(self.device) - before) / GIB
        if not self.can_reset:
            return fn(), 0.0
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = self._status_kib("VmRSS")
        out = fn()
        peak = self._status_kib("VmHWM")
        return out, max(0, peak - before) * 1024 / GIB

    def unpin(self) -> None:
        """For the timed calls: glibc's thresholds near where its own dynamic ones settle (module docstring)."""
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
            self.libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


def _timed(fn: Callable[[], object], device: str, repeats: int, warmup: int) -> list[float]:
    import torch

    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def gpu_kind(device: str) -> str:
    """The ``gpu`` column for a device: ``cpu``, or the CUDA device's name (``H200``)."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(device)
    for prefix in ("NVIDIA ", "Tesla "):
        name = name.removeprefix(prefix)
    return name.split()[0] if name else "cuda"


def plan_points(spec: ProfileSpec, video: bool) -> list[tuple[str, int, int, int, int]]:
    """Every (stage, height, width, frames, batch) the spec asks for, in measuring order."""
    frames = spec.frames if video else (1,)
    points: list[tuple[str, int, int, int, int]] = []
    if StageKind.ENCODE in spec.stages:
        points += [(StageKind.ENCODE, 0, 0, 0, b) for b in spec.batches]
    for stage in (StageKind.DIFFUSE, StageKind.DECODE):
        if stage in spec.stages:
            points += [(stage, h, w, f, b) for (h, w) in spec.sizes for f in frames for b in spec.batches]
    return points


def run_profile(spec: ProfileSpec, progress: bool = True, on_row: Callable[[ProfileRow], None] | None = None,
                groups: GroupFactory | None = None, on_note: Callable[[str], None] | None = None) -> list[ProfileRow]:
    """Measure every point of ``spec`` and return profile rows (CSV format of docs/profiles.md).

    ``groups`` runs the diffuse points of ``spec.degrees`` beyond 1 (the module docstring);
    ``on_note`` hears every degree skipped and why.
    """
    return run_profiles([spec], progress, on_row, groups, on_note)


def run_profiles(specs: list[ProfileSpec], progress: bool = True, on_row: Callable[[ProfileRow], None] | None = None,
                 groups: GroupFactory | None = None, on_note: Callable[[str], None] | None = None) -> list[ProfileRow]:
    """:func:`run_profile` for several models in one process: every model's memory, then every model's timing.

    The memory of a model measured after another's timed calls would read the allocator's caches
    (the module docstring), so the pipelines are all loaded first and held until the end.
    """
    phases = [_prepare(spec, progress, groups, on_note) for spec in specs]
    for memory, _ in phases:
        memory()
    rows: list[ProfileRow] = []
    for _, timing in phases:
        rows += timing(on_row)
    return rows


def _prepare(spec: ProfileSpec, progress: bool, groups: GroupFactory | None, on_note):
    """Load ``spec``'s pipeline and plan its points; ``(memory(), timing(on_row) -> rows)``."""
    from tqdm import tqdm

    from . import MODELS, dtype_name, load_pipeline

    higher = sorted({d for d in spec.degrees if d > 1})
    if any(d < 1 for d in spec.degrees) or not spec.degrees:
        raise ValueError(f"degrees must be positive integers (got {spec.degrees!r})")
    if higher and StageKind.DIFFUSE in spec.stages and groups is None:
        raise ValueError(f"degrees {higher} need a group factory (groups=) to run the diffuse on")
    pipe = load_pipeline(spec.model, device=spec.device, dtype=spec.dtype)
    info = MODELS.get(spec.model)
    model_name = (info.profile_name if info and info.profile_name else spec.model)
    video = pipe.limits.video
    problems = [f"{h}x{w}x{f}: {p}" for (h, w) in spec.sizes for f in (spec.frames if video else (1,))
                for p in pipe.limits.check(h, w, f)]
    if problems:
        raise ValueError(f"{spec.model}: invalid profile points: " + "; ".join(problems))
    meter = _Meter(spec.device)
    kind = gpu_kind(spec.device)
    weights = {s: pipe.weights_bytes(s) / GIB for s in STAGES}
    # the dtype it ran in (outside test 133: a bfloat16 profile served float32 workers unsaid)
    source = "measured (" + ", ".join([f"dtype {dtype_name(spec.dtype)}", *meter.notes]) + ")"
    embeddings_cache: dict[int, dict] = {}

    def embeddings(batch: int):
        if batch not in embeddings_cache:
            embeddings_cache[batch] = pipe.encode([f"a photo of object {i}" for i in range(batch)])
        return embeddings_cache[batch]

    def local_call(stage: str, h: int, w: int, f: int, b: int) -> Callable[[], object]:
        prompts, seeds = [f"a photo of object {i}" for i in range(b)], list(range(b))
        if stage == StageKind.ENCODE:
            return lambda: pipe.encode(prompts)
        emb = embeddings(b)
        if stage == StageKind.DIFFUSE:
            return lambda: pipe.diffuse(emb, (h, w, f), seed=seeds, steps=spec.steps)
        latents = pipe.diffuse(emb, (h, w, f), seed=seeds, steps=spec.steps, end_step=1)
        return lambda: pipe.decode(latents)

    # (degree, points): degree 1 every stage, beyond it the diffuse points the degree can take
    plans: list[tuple[int, list[tuple[str, int, int, int, int]]]] = []
    if 1 in spec.degrees:
        plans.append((1, plan_points(spec, video)))
    if StageKind.DIFFUSE in spec.stages:
        for degree in higher:
            feasible = _feasible(pipe, spec, video, degree, embeddings, on_note)
            if feasible:
                plans.append((degree, [(StageKind.DIFFUSE, h, w, f, b) for h, w, f, b in feasible]))

    def run_plans(phase: str, each: Callable[[int, tuple, Callable[[], object]], None]) -> None:
        for degree, points in plans:
            bar = tqdm(points, desc=f"profile {spec.model}" + (f" degree {degree}" if degree > 1 else "") + f" ({phase})",
                       unit="point", disable=not progress)
            with contextlib.nullcontext() if degree == 1 else groups(spec, degree) as group:  # type: ignore[misc]
                for point in bar:
                    stage, h, w, f, b = point
                    bar.set_postfix_str(f"{stage} {w}x{h}" + (f"x{f}" if video else "") + f" b{b}" if h else f"{stage} b{b}")
                    call = (local_call(*point) if degree == 1
                            else _parallel_call(group, pipe, embeddings(b), h, w, f, b, spec.steps))
                    each(degree, point, call)

    acts: dict[tuple, float] = {}
    rows: list[ProfileRow] = []

    def measured(degree: int, point: tuple, call: Callable[[], object]) -> None:
        call()  # one untimed call first: one-time allocations (caches, tables) are not activations
        acts[(degree, point)] = meter.measure(call)[1]

    def timed(degree: int, point: tuple, call: Callable[[], object], on_row) -> None:
        stage, h, w, f, b = point
        times = _timed(call, spec.device, spec.repeats, spec.warmup)
        act = acts[(degree, point)]
        row = ProfileRow(
            gpu=kind, model=model_name, stage=StageKind(stage),
            height=h or None, width=w or None, frames=(f if h else None),
            batch=b, degree=degree,
            latency_ms=round(statistics.median(times) / (spec.steps if stage == StageKind.DIFFUSE else 1) * 1000, 3),
            peak_gib=round(weights[stage] + act, 4), act_gib=round(act, 4),
            weights_gib=round(weights[stage], 4), source=source,
        )
        rows.append(row)
        if on_row:
            on_row(row)

    def memory() -> None:
        run_plans("memory", measured)

    def timing(on_row: Callable[[ProfileRow], None] | None) -> list[ProfileRow]:
        meter.unpin()
        run_plans("timing", lambda degree, point, call: timed(degree, point, call, on_row))
        return rows

    return memory, timing


def _feasible(pipe, spec: ProfileSpec, video: bool, degree: int, embeddings, on_note) -> list[tuple[int, int, int, int]]:
    """The diffuse points ``pipe`` can run at ``degree``; the others are reported to ``on_note``, one line per reason."""
    from .parallel import degree_problems

    feasible, skipped = [], {}
    for h, w in spec.sizes:
        for f in spec.frames if video else (1,):
            for b in spec.batches:
                text = embeddings(b).get("prompt_embeds")
                problems = degree_problems(pipe, h, w, f, degree, None if text is None else int(text.shape[1]))
                if problems:
                    label = f"{w}x{h}" + (f"x{f}" if video else "") + f" b{b}"
                    skipped.setdefault("; ".join(problems), []).append(label)
                else:
                    feasible.append((h, w, f, b))
    for why, labels in skipped.items():
        text = f"{spec.model} diffuse at degree {degree} skipped ({', '.join(labels)}): {why}"
        logger.info("%s", text)
        if on_note:
            on_note(text)
    return feasible


def _parallel_call(group, pipe, emb, h: int, w: int, f: int, b: int, steps: int) -> Callable[[], object]:
    from .parallel import DiffuseCall

    call = DiffuseCall(height=h, width=w, frames=f, seed=tuple(range(b)), steps=steps)
    return lambda: group.diffuse(pipe, call, emb)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``64,128`` (squares) or ``832x480,1280x720`` (WIDTHxHEIGHT) into (height, width) pairs."""
    from ..core.types import parse_size

    out = []
    for item in _items(text, "sizes"):
        if item.isascii() and item.isdigit():  # (outside test 133: '٦٤' measured 64 x 64)
            if int(item) < 1:
                raise ValueError(f"sizes must be positive (got {item!r} in {text!r})")
            out.append((int(item), int(item)))
        else:
            w, h = parse_size(item)
            out.append((h, w))
    return tuple(dict.fromkeys(out))  # (each once)


def _items(text: str, what: str) -> list[str]:
    """The items of a comma list; none, or an empty one among them (``64,,128``), is an error."""
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise ValueError(f"no {what} given")
    if not all(items):
        raise ValueError(f"{what}: an empty item in {text!r}")
    return items


def parse_ints(text: str, what: str, most: int | None = None) -> tuple[int, ...]:
    """A comma list of integers in 1..``most``, each once (a point given twice was measured twice and
    written twice: a profile its own reader refuses)."""
    items = _items(text, what)
    try:
        values = tuple(dict.fromkeys(int(t) for t in items))
    except ValueError:
        raise ValueError(f"{what} must be a comma list of integers (got {text!r})") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive integers (got {text!r})")
    if most is not None and any(v > most for v in values):
        raise ValueError(f"{what} must be integers in 1..{most} (got {text!r})")
    return values

