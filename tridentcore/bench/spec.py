"""One run spec: what a simulated or live run is, as one frozen value with one JSON form.

A :class:`RunSpec` names the cost profile, the cluster, the workload (a named mix or a trace;
arrival process, rate, duration, seed), the SLO scale, the policies, the backend and, for a live
run, the devices and the time scale. Its JSON (:meth:`RunSpec.config`) is the ``config_json`` a
run is stored with; ``trident bench --repeat`` reads it back (:meth:`RunSpec.from_config`, which
also reads the configs of runs stored before this spec existed), ``trident serve --spec FILE``
and the Locust file (``--spec FILE``) read it from a file (:func:`read_spec_file`).

This module is light (the Locust child imports it): the standard library, ``tridentcore.core``
and ``tridentcore.formats.bounded`` (a spec file is read within bounds) only. Validation of
untrusted input (a spec file, a stored config) happens at the edge, in
:mod:`tridentcore.bench.spec_schema` (pydantic), which converts to this value;
:meth:`RunSpec.problems` holds the checks both paths share. Defaults and bounds come from
:mod:`tridentcore.core.defaults`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.defaults import (DEFAULT_ARRIVAL, DEFAULT_CLUSTER, DEFAULT_DURATION_S, DEFAULT_MIX, DEFAULT_NOISE_SIGMA,
                             DEFAULT_PROFILE, DEFAULT_RATE, DEFAULT_SEED, DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE,
                             MAX_CONFIG_BYTES)
from ..core.errors import TridentError, brief, is_finite
from ..core.types import STAGES
from ..core.workload import ARRIVAL_FORMS, generated_size_problems, parse_arrival
from ..formats.bounded import InputRefused, load_json, read_bounded

__all__ = ["BACKENDS", "RunSpec", "RunSpecError", "TRACE_PREFIX", "read_spec_file", "write_spec_file"]

BACKENDS = ("sim", "live")
TRACE_PREFIX = "trace:"  # the Locust file's --arrival trace:FILE


class RunSpecError(TridentError, ValueError):
    """A run spec that cannot be used; ``problems`` lists every problem (``--option: message``)."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class RunSpec:
    profile: str = DEFAULT_PROFILE
    cluster: str = DEFAULT_CLUSTER
    mix: str | None = DEFAULT_MIX
    trace: str | None = None  # a trace file replaces the mix (and the arrival process and rate)
    trace_model: str | None = None  # model of a paper-format trace's requests
    arrival: str = DEFAULT_ARRIVAL
    rate: float = DEFAULT_RATE  # requests per workload second (a mix)
    duration_s: float = DEFAULT_DURATION_S  # workload seconds of arrivals (a mix)
    seed: int = DEFAULT_SEED
    slo_scale: float = DEFAULT_SLO_SCALE
    policies: tuple[str, ...] = ()
    backend: str = "sim"  # sim | live
    devices: str | None = None  # live: trident serve --devices
    time_scale: float = DEFAULT_TIME_SCALE  # live: wall seconds per workload second
    # sim: actual stage time = prediction x bias[stage] x lognormal(mean 1, log-spread noise_sigma)
    noise_sigma: float = DEFAULT_NOISE_SIGMA
    noise_bias: tuple[tuple[str, float], ...] = ()  # (stage, factor) pairs

    @property
    def workload_label(self) -> str:
        return self.mix if self.trace is None else f"trace:{Path(self.trace).name}"

    @property
    def arrival_spec(self) -> str:
        """``--arrival`` of the Locust file: the arrival process, or ``trace:FILE``."""
        return f"{TRACE_PREFIX}{self.trace}" if self.trace is not None else self.arrival

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)

    def problems(self) -> list[str]:
        """Problems with the numbers, the backend and the arrival form (files are read later)."""
        problems = []
        if self.trace is None:
            if not self.mix:
                problems.append("--mix: give a mix or a trace")
            if not _finite_positive(self.rate):
                problems.append(f"--rate: must be a number > 0 (requests per second), got {brief(self.rate)}")
            if not _finite_positive(self.duration_s):
                problems.append(f"--duration: must be a number of seconds > 0, got {brief(self.duration_s)}")
            problems.extend(f"--{key}: {msg}" for key, msg in generated_size_problems(self.rate, self.duration_s))
            try:
                parse_arrival(self.arrival)
            except ValueError as exc:
                problems.append(f"--arrival: {exc} (forms: {ARRIVAL_FORMS}, trace:FILE)")
        elif not self.trace:
            problems.append("--arrival: trace:FILE needs a file name")
        if not _finite_positive(self.time_scale):
            problems.append(f"--time-scale: must be a number > 0 (wall seconds per workload second), "
                            f"got {brief(self.time_scale)}")
        if not _finite_positive(self.slo_scale):
            problems.append(f"--slo-scale: must be a number > 0, got {brief(self.slo_scale)}")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and -2**63 <= self.seed < 2**63):
            problems.append(f"--seed: must be a 64-bit integer, got {brief(self.seed)}")
        if not (is_finite(self.noise_sigma) and 0.0 <= self.noise_sigma <= 2.0):
            problems.append(f"--noise: must be a number within [0, 2] (the log-spread), got {brief(self.noise_sigma)}")
        for stage, factor in self.noise_bias:
            if stage not in STAGES:
                problems.append(f"--bias: unknown stage {brief(stage)}; expected one of {', '.join(STAGES)}")
            elif not _finite_positive(factor):
                problems.append(f"--bias {stage}: the factor must be a number > 0, got {brief(factor)}")
        if self.backend not in BACKENDS:
            problems.append(f"--backend: unknown backend {brief(self.backend)}; valid: {', '.join(BACKENDS)}")
        return problems

    def check(self) -> RunSpec:
        """This spec, or :class:`RunSpecError` with every problem."""
        problems = self.problems()
        if problems:
            raise RunSpecError(problems)
        return self

    # ------------------------------------------------------------------ JSON
    def config(self, **extra: Any) -> dict[str, Any]:
        """The JSON-able dict stored as a run's ``config_json`` (``extra`` keys added).

        With one policy it also holds ``policy`` (the key runs stored before this spec used)."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out["policies"] = list(self.policies)
        if len(self.policies) == 1:
            out["policy"] = self.policies[0]
        out["arrival_spec"] = self.arrival_spec
        return {**out, **extra}

    def to_json(self, **extra: Any) -> str:
        return json.dumps(self.config(**extra), sort_keys=True, default=str)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSpec:
        """A spec from a stored ``config_json`` dict or a spec file, unchecked (see :meth:`check`).

        Unknown keys (a bench id, the server's config, live-only options) are ignored; a missing
        key takes its default; ``policy`` (one policy) and ``arrival_spec`` (``trace:FILE``) of
        older configs are understood."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        if "policies" not in kwargs and config.get("policy"):
            kwargs["policies"] = (config["policy"],)
        if isinstance(kwargs.get("policies"), str):
            kwargs["policies"] = (kwargs["policies"],)
        if "policies" in kwargs:
            kwargs["policies"] = tuple(kwargs["policies"] or ())
        spec_arrival = config.get("arrival_spec")
        if isinstance(spec_arrival, str) and spec_arrival.startswith(TRACE_PREFIX) and not kwargs.get("trace"):
            kwargs["trace"] = spec_arrival[len(TRACE_PREFIX):]
        if kwargs.get("trace"):
            kwargs.setdefault("mix", None)
            if str(kwargs.get("arrival") or "").startswith(TRACE_PREFIX):
                kwargs["arrival"] = DEFAULT_ARRIVAL
        if kwargs.get("rate") is None:
            kwargs.pop("rate", None)
        bias = kwargs.get("noise_bias")
        if isinstance(bias, Mapping):
            bias = list(bias.items())
        if bias is not None:
            kwargs["noise_bias"] = tuple((str(s), f) for s, f in bias)
        return cls(**kwargs)


def _finite_positive(value: object) -> bool:
    return is_finite(value) and value > 0  # type: ignore[operator]


def read_spec_file(path: str | os.PathLike[str]) -> RunSpec:
    """A spec from a JSON file (:meth:`RunSpec.config` form), unchecked; plain json, no pydantic.
    The file is read within bounds (at most ``MAX_CONFIG_BYTES``, ``MAX_NESTING`` deep)."""
    try:
        data = load_json(read_bounded(path, MAX_CONFIG_BYTES))
    except InputRefused as exc:
        raise RunSpecError([f"--spec: cannot read {os.fspath(path)}: {exc}"]) from None
    if not isinstance(data, dict):
        raise RunSpecError([f"--spec: {os.fspath(path)} does not hold a JSON object"])
    try:
        return RunSpec.from_config(data)
    except (TypeError, ValueError) as exc:  # a key of the wrong shape (bias pairs)
        raise RunSpecError([f"--spec: {os.fspath(path)}: {exc}"]) from None


def write_spec_file(spec: RunSpec, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write ``spec`` (and ``extra`` keys) as JSON to ``path``; returns the path."""
    out = Path(path)
    out.write_text(spec.to_json(**extra) + "\n", encoding="utf-8")
    return out
