"""The run spec at the edge: a pydantic model that validates a spec file or a stored config and
converts to the frozen :class:`~tridentcore.bench.spec.RunSpec` at once.

Every problem is collected into one :class:`~tridentcore.bench.spec.RunSpecError` (pydantic's type
errors and :meth:`RunSpec.problems`), each as ``--option: message``, or, for a spec file, as
``FILE: key: message``. Keys other than the spec's are ignored here (a stored config holds more:
a bench id, a live bench's options); a spec file's are checked as it is read
(:func:`~tridentcore.bench.spec.read_spec_config`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.defaults import (DEFAULT_ARRIVAL, DEFAULT_CLUSTER, DEFAULT_DURATION_S, DEFAULT_MIX, DEFAULT_NOISE_SIGMA,
                             DEFAULT_PROFILE, DEFAULT_RATE, DEFAULT_SEED, DEFAULT_SLO_SCALE, DEFAULT_TIME_SCALE)
from ..core.errors import brief
from .spec import OPTION_OF, RunSpec, RunSpecError, read_spec_file

__all__ = ["RunSpecModel", "load_spec", "validate_spec"]


class RunSpecModel(BaseModel):
    """The JSON form of :class:`RunSpec` (the other keys of a stored config are ignored; a spec
    file's unknown keys are refused before it gets here)."""

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

    def to_spec(self, origin: str | None = None) -> RunSpec:
        return RunSpec(**self.model_dump()).check(origin)


def validate_spec(data: Mapping[str, Any] | RunSpec, *, origin: str | None = None) -> RunSpec:
    """A checked :class:`RunSpec` from a dict (a spec file's, a stored config's) or a spec;
    ``origin``: the spec file it was read from (problems then name it and the key, not the option)."""
    if isinstance(data, RunSpec):
        return data.check(origin)
    try:
        plain = RunSpec.from_config(data)  # older key forms (policy, arrival_spec) first
    except (TypeError, ValueError) as exc:  # a key of the wrong shape (bias pairs)
        raise RunSpecError([f"{origin}: {exc}" if origin else str(exc)]) from None
    try:
        model = RunSpecModel.model_validate(plain.config())
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "spec"
            name = f"{origin}: {field}" if origin else f"--{OPTION_OF.get(field, field)}"
            problems.append(f"{name}: {err['msg']} (got {brief(err.get('input'))})")
        raise RunSpecError(problems) from None
    return model.to_spec(origin)


def load_spec(path: str | os.PathLike[str]) -> RunSpec:
    """A checked :class:`RunSpec` from a JSON spec file: an unknown key, or a value that cannot be,
    is an error naming the file and the key (:func:`~tridentcore.bench.spec.read_spec_file`)."""
    return validate_spec(read_spec_file(path), origin=os.fspath(path))
