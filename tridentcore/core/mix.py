"""Request classes and mixes (docs/design.md, "Workloads"): a mix is a named set of request classes,
each a model at one output shape drawn with a relative weight. The YAML file format lives in
``tridentcore.formats.mixes``; :func:`mix_from_dict` validates its parsed form. A class asks for at
most ``MAX_SIDE_PX`` pixels a side, ``MAX_FRAMES`` frames and ``MAX_STEPS`` steps; a mix holds at
most ``MAX_MIX_CLASSES`` classes (``core/defaults.py``).

Pure: no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .defaults import MAX_FRAMES, MAX_MIX_CLASSES, MAX_NAME_CHARS, MAX_SIDE_PX, MAX_STEPS
from .errors import WorkloadError, brief, is_finite, is_int, is_name, listed
from .types import Shape, class_label

if TYPE_CHECKING:
    import random

# A class's weight at most (weights are relative: two of 1e308 added up to inf, and every request was
# drawn from the last class)
MAX_WEIGHT = 1e9

__all__ = ["Mix", "RequestClass", "cumulative_weights", "mix_from_dict", "shape_problems"]


@dataclass(frozen=True, slots=True)
class RequestClass:
    """One kind of request in a mix: a model at one output shape, drawn with relative ``weight``."""

    model: str
    height: int
    width: int
    frames: int = 1
    steps: int = 28
    weight: float = 1.0
    # the class's one Shape: requests, the expected mix and the policies' per-class tables share it, so
    # lookups keyed on it compare by identity
    _shape: Shape = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = _class_problems(self.model, self.height, self.width, self.frames, self.steps, self.weight)
        if problems:
            raise WorkloadError("invalid request class", [f"{k}: {msg}" for k, msg in problems])
        object.__setattr__(self, "_shape", Shape(self.height, self.width, self.frames, self.steps))

    @property
    def shape(self) -> Shape:
        return self._shape

    @property
    def label(self) -> str:
        """``sd3-medium 1024x1024``, ``wan2.1-1.3b 832x480x81`` (WIDTHxHEIGHT[xFRAMES])."""
        return class_label(self.model, self.shape)


_SHAPE_BOUNDS = (("height", MAX_SIDE_PX), ("width", MAX_SIDE_PX), ("frames", MAX_FRAMES), ("steps", MAX_STEPS))


def shape_problems(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for each of height, width, frames and steps in ``fields`` that is not an
    integer in 1..its bound (a mix's class, a trace's entry)."""
    problems = []
    for key, bound in _SHAPE_BOUNDS:
        value = fields[key]
        if not (is_int(value) and 1 <= value <= bound):
            problems.append((key, f"must be an integer in 1..{bound} (got {brief(value)})"))
    return problems


def _class_problems(model: Any, height: Any, width: Any, frames: Any, steps: Any, weight: Any) -> list[tuple[str, str]]:
    problems = []
    if not is_name(model, MAX_NAME_CHARS):
        problems.append(("model", f"must be a model name of 1..{MAX_NAME_CHARS} characters, none of them control "
                                  f"characters (got {brief(model)})"))
    problems.extend(shape_problems({"height": height, "width": width, "frames": frames, "steps": steps}))
    if not (is_finite(weight) and 0 < weight <= MAX_WEIGHT):
        problems.append(("weight", f"must be a number in (0, {MAX_WEIGHT:g}] (got {brief(weight)})"))
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
                    problems.append(f"classes[{i}]: duplicate class {brief(cls.label)} (also classes[{seen[cls.label]}])")
                else:
                    seen[cls.label] = i
        if not isinstance(self.description, str):
            problems.append(f"description must be a string (got {type(self.description).__name__})")
        if problems:
            raise WorkloadError(f"mix {brief(self.name)}", problems)

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
        cumulative = cumulative_weights(self.classes)
        x = rng.random() * cumulative[-1]
        return self.classes[min(bisect.bisect_right(cumulative, x), len(self.classes) - 1)]


def cumulative_weights(classes: Sequence[RequestClass]) -> list[float]:
    out, total = [], 0.0
    for c in classes:
        total += c.weight
        out.append(total)
    return out


_CLASS_KEYS = ("model", "height", "width", "frames", "steps", "weight")
_MIX_KEYS = ("name", "description", "classes")


def mix_from_dict(data: Any, *, origin: str = "mix", default_name: str | None = None) -> Mix:
    """The YAML form of a mix to a :class:`Mix`; every problem is named by entry index and field.

    ``{name, description?, classes: [{model, height, width, frames? (1), steps, weight? (1.0)}]}``;
    ``name`` may be left out when ``default_name`` is given (a file's: its stem).
    """
    if not isinstance(data, Mapping):
        raise WorkloadError(origin, [f"expected a mapping with keys {', '.join(_MIX_KEYS)} (got {type(data).__name__})"])
    problems: list[str] = []
    unknown = [k for k in data if k not in _MIX_KEYS]
    if unknown:
        problems.append(f"unknown key(s) {listed(sorted(unknown, key=str))}; valid keys: {', '.join(_MIX_KEYS)}")
    name = data.get("name", default_name)
    if not is_name(name, MAX_NAME_CHARS):
        problems.append(f"name: must be a string of 1..{MAX_NAME_CHARS} characters, none of them control characters "
                        f"(got {brief(name)})")
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        problems.append(f"description: must be a string (got {type(description).__name__})")
    raw_classes = data.get("classes")
    classes: list[RequestClass] = []
    if not isinstance(raw_classes, list) or not raw_classes:
        problems.append(f"classes: must be a non-empty list of {{{', '.join(_CLASS_KEYS)}}} (got {brief(raw_classes)})")
    elif len(raw_classes) > MAX_MIX_CLASSES:
        problems.append(f"classes: {len(raw_classes)} classes; a mix has at most {MAX_MIX_CLASSES}")
    else:
        for i, entry in enumerate(raw_classes):
            where = f"classes[{i}]"
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: expected a mapping with keys {', '.join(_CLASS_KEYS)} (got {brief(entry)})")
                continue
            bad = [k for k in entry if k not in _CLASS_KEYS]
            if bad:
                problems.append(f"{where}: unknown key(s) {listed(sorted(bad, key=str))}; valid keys: {', '.join(_CLASS_KEYS)}")
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
