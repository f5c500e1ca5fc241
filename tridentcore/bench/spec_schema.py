"""The run spec at the edge: a pydantic model that validates a spec file or a stored config and
converts to the frozen :class:`~tridentcore.bench.spec.RunSpec` at once.

Every problem is collected into one :class:`~tridentcore.bench.spec.RunSpecError` (pydantic's type
errors and :meth:`RunSpec.problems`), each as ``--option: message``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.defaults import (DEFAULT_ARRIVAL, DEFAULT_CLUSTER, DEFAULT_DURATION_S, DEFAULT_MIX, DEFAULT_NOISE_SIGMA,
                             DEFAULT_PROFILE, DEFAULT_RATE, DEFAULT_SEED, DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE)
from ..core.errors import brief
from .spec import RunSpec, RunSpecError, read_spec_file

__all__ = ["RunSpecModel", "load_spec", "validate_spec"]


class RunSpecModel(BaseModel):
    """The JSON form of :class:`RunSpec` (extra keys of a stored config are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=False)

    profile: str = DEFAULT_PROFILE
    cluster: str = DEFAULT_CLUSTER
    mix: str | None = DEFAULT_MIX
    trace: str | None = None
    trace_model: str | None = None
    arrival: str = DEFAULT_ARRIVAL
    rate: float = DEFAULT_RATE
    duration_s: float = DEFAULT_DURATION_S
    seed: int = DEFAULT_SEED
    slo_scale: float = DEFAULT_SLO_SCALE
    policies: tuple[str, ...] = ()
    backend: str = "sim"
    devices: str | None = None
    time_scale: float = DEFAULT_TIME_SCALE
    noise_sigma: float = DEFAULT_NOISE_SIGMA
    noise_bias: tuple[tuple[str, float], ...] = ()

    def to_spec(self) -> RunSpec:
        return RunSpec(**self.model_dump()).check()


_OPTION = {"duration_s": "duration", "slo_scale": "slo-scale", "time_scale": "time-scale",
           "trace_model": "trace-model", "noise_sigma": "noise", "noise_bias": "bias"}


def validate_spec(data: Mapping[str, Any] | RunSpec) -> RunSpec:
    """A checked :class:`RunSpec` from a dict (a spec file's, a stored config's) or a spec."""
    if isinstance(data, RunSpec):
        return data.check()
    try:
        plain = RunSpec.from_config(data)  # older key forms (policy, arrival_spec) first
    except (TypeError, ValueError) as exc:  # a key of the wrong shape (bias pairs)
        raise RunSpecError([str(exc)]) from None
    try:
        model = RunSpecModel.model_validate(plain.config())
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "spec"
            problems.append(f"--{_OPTION.get(field, field)}: {err['msg']} (got {brief(err.get('input'))})")
        raise RunSpecError(problems) from None
    return model.to_spec()


def load_spec(path: str | os.PathLike[str]) -> RunSpec:
    """A checked :class:`RunSpec` from a JSON spec file."""
    return validate_spec(read_spec_file(path))
