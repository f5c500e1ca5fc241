"""One run spec: what a simulated or live run is, as one frozen value with one JSON form.

A :class:`RunSpec` names the cost profile, the cluster, the workload (a named mix or a trace;
arrival process, rate, duration, seed), the SLO scale, the policies, the backend and, for a live
run, the devices and the time scale. Its JSON (:meth:`RunSpec.config`) is the ``config_json`` a
run is stored with; ``trident bench --repeat`` reads it back (:meth:`RunSpec.from_config`, which
also reads the configs of runs stored before this spec existed), ``trident serve --spec FILE``
and the Locust file (``--spec FILE``) read it from a file (:func:`read_spec_file`: a key that is
neither the spec's nor one a stored config adds, :data:`CONFIG_KEYS`, is an error, and every
problem names the file and the key).

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
                             MAX_CONFIG_BYTES, MAX_SCALE, MAX_SEED)
from ..core.errors import TridentError, brief, is_finite, listed
from ..core.types import STAGES
from ..core.workload import ARRIVAL_FORMS, generated_size_problems, parse_arrival
from ..formats.bounded import InputRefused, load_json, read_bounded

__all__ = ["BACKENDS", "CONFIG_KEYS", "FILE_KEYS", "KEY_OF", "OPTION_OF", "SPEC_KEYS", "TRACE_PREFIX", "RunSpec", "RunSpecError",
           "changed_inputs", "file_input", "input_files", "read_spec_config", "read_spec_file", "unknown_keys", "write_spec_file"]

BACKENDS = ("sim", "live")
TRACE_PREFIX = "trace:"  # the Locust file's --arrival trace:FILE
# the command-line option of each spec key named otherwise (the rest: --KEY), and back
OPTION_OF = {"duration_s": "duration", "slo_scale": "slo-scale", "time_scale": "time-scale",
             "trace_model": "trace-model", "noise_sigma": "noise", "noise_bias": "bias"}
KEY_OF = {option: key for key, option in OPTION_OF.items()}
# The keys a stored run's config_json holds besides the spec's own, each written by the project. A
# run's config is a spec file too (the live bench hands its children one), so a spec file may hold
# them (they are ignored); any other key is an error (a misspelt key would silently take its default).
CONFIG_KEYS = (
    "policy", "arrival_spec",  # RunSpec.config: the forms configs were stored in before the spec
    "bench", "source", "default_comparison", "repeat_of",  # what it belongs to: a bench, the workbench, --repeat
    # a live bench (bench.live.LiveBenchSpec.config): the harness's options (LiveOptions), what the run saw
    "models", "max_queued", "users", "answer_timeout_s", "startup_timeout_s", "drain_timeout_s", "calibrate",
    "server_run_id", "server_config", "locust_exit", "server_exit", "client_states", "scheduled", "served_models",
    "lag_p50_ms", "lag_p99_ms",
    "slowdown", "calibration", "clock", "refused", "hung", "workers",  # a server's own run (trident serve --db: runtime.stored.run_meta)
    "stopping", "recovered",  # ... told to stop (a signal); closed by a recovery of its journal (store.recovery)
    "inputs",  # RunSpec.config: the files it read (path, sha256), checked by --repeat (changed_inputs)
)
FILE_KEYS = ("mix", "cluster", "trace", "profile")  # spec keys that may name a file rather than a shipped name


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
        """Problems with the numbers, the backend and the arrival form (files are read later), each
        named by its command-line option: ``--rate: message``."""
        return [f"{option}: {message}" for _, option, message in self._problems()]

    def file_problems(self, origin: str) -> list[str]:
        """:meth:`problems` as in a spec file ``origin``, each named by the file and its key:
        ``run.json: rate: message``."""
        return [f"{origin}: {key}: {message}" for key, _, message in self._problems()]

    def _problems(self) -> list[tuple[str, str, str]]:
        """(spec key, command-line option, message) of every problem."""
        problems = []
        for key, value in (("profile", self.profile), ("cluster", self.cluster), ("mix", self.mix),
                           ("trace", self.trace), ("trace_model", self.trace_model), ("arrival", self.arrival),
                           ("backend", self.backend), ("devices", self.devices)):
            if value is not None and not isinstance(value, str):  # (a spec file's [1] or 7: a traceback later)
                problems.append((key, f"--{OPTION_OF.get(key, key).replace('_', '-')}",
                                 f"must be a string, got {brief(value)}"))
        if problems:
            return problems
        for p in self.policies:
            if not (isinstance(p, str) and p.strip()):
                problems.append(("policies", "--policies", f"each must be a policy spec (a string), got {brief(p)}"))
        if self.trace is None:
            if not self.mix:
                problems.append(("mix", "--mix", "give a mix or a trace"))
            if not _finite_positive(self.rate):
                problems.append(("rate", "--rate",
                                 f"must be a number > 0 (requests per second), got {brief(self.rate)}"))
            if not _finite_positive(self.duration_s):
                problems.append(("duration_s", "--duration",
                                 f"must be a number of seconds > 0, got {brief(self.duration_s)}"))
            problems.extend((KEY_OF.get(option, option), f"--{option}", msg)
                            for option, msg in generated_size_problems(self.rate, self.duration_s, self.arrival))
            try:
                parse_arrival(self.arrival)
            except ValueError as exc:
                text = str(exc)  # (the forms once, trace:FILE with them)
                text = (text.replace(ARRIVAL_FORMS, f"{ARRIVAL_FORMS}, trace:FILE") if ARRIVAL_FORMS in text
                        else f"{text} (forms: {ARRIVAL_FORMS}, trace:FILE)")
                problems.append(("arrival", "--arrival", text))
        elif not self.trace:
            problems.append(("trace", "--arrival", "trace:FILE needs a file name"))
        if not (_finite_positive(self.time_scale) and self.time_scale <= MAX_SCALE):
            problems.append(("time_scale", "--time-scale", f"must be a number in (0, {MAX_SCALE:g}] (wall seconds per "
                                                           f"workload second), got {brief(self.time_scale)}"))
        if not (_finite_positive(self.slo_scale) and self.slo_scale <= MAX_SCALE):
            problems.append(("slo_scale", "--slo-scale", f"must be a number in (0, {MAX_SCALE:g}], got {brief(self.slo_scale)}"))
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED):
            # (as the options, traces and the API take them: a run a spec file starts can be replayed)
            problems.append(("seed", "--seed", f"must be an integer in 0..{MAX_SEED}, got {brief(self.seed)}"))
        if not (is_finite(self.noise_sigma) and 0.0 <= self.noise_sigma <= 2.0):
            problems.append(("noise_sigma", "--noise", "must be a number within [0, 2] (the log-spread), "
                                                       f"got {brief(self.noise_sigma)}"))
        seen_stages: set[str] = set()
        for stage, factor in self.noise_bias:
            if stage in seen_stages:  # (as --bias says it: one factor a stage)
                problems.append(("noise_bias", "--bias", f"stage {brief(stage)} given twice"))
                continue
            seen_stages.add(stage)
            if stage not in STAGES:
                problems.append(("noise_bias", "--bias",
                                 f"unknown stage {brief(stage)}; expected one of {', '.join(STAGES)}"))
            elif not (_finite_positive(factor) and factor <= MAX_SCALE):
                # (a factor of 1e8 made trident's simulation run for minutes, 1e308 for ever)
                problems.append((f"noise_bias: {stage}", f"--bias {stage}",
                                 f"the factor must be a number in (0, {MAX_SCALE:g}], got {brief(factor)}"))
        if self.backend not in BACKENDS:
            problems.append(("backend", "--backend",
                             f"unknown backend {brief(self.backend)}; valid: {', '.join(BACKENDS)}"))
        return problems

    def check(self, origin: str | None = None) -> RunSpec:
        """This spec, or :class:`RunSpecError` with every problem (named by file and key when it was
        read from the spec file ``origin``)."""
        problems = self.problems() if origin is None else self.file_problems(origin)
        if problems:
            raise RunSpecError(problems)
        return self

    # ------------------------------------------------------------------ JSON
    def config(self, **extra: Any) -> dict[str, Any]:
        """The JSON-able dict stored as a run's ``config_json`` (``extra`` keys added).

        With one policy it also holds ``policy`` (the key runs stored before this spec used)."""
        out: dict[str, Any] = dataclasses.asdict(self)
        files = input_files(self)
        if files:  # each by its absolute path (a run repeated from another folder finds it) and its digest
            out.update({key: f["path"] for key, f in files.items()})
            out["inputs"] = files
        out["policies"] = list(self.policies)
        if len(self.policies) == 1:
            out["policy"] = self.policies[0]
        out["arrival_spec"] = f"{TRACE_PREFIX}{out['trace']}" if self.trace is not None else self.arrival
        return {**out, **extra}

    def to_json(self, **extra: Any) -> str:
        return json.dumps(self.config(**extra), sort_keys=True, default=str)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSpec:
        """A spec from a stored ``config_json`` dict or a spec file, unchecked (see :meth:`check`).

        Other keys (a bench id, the server's config, live-only options) are ignored here (a spec
        file's keys are checked by :func:`read_spec_config`); a missing key takes its default;
        ``policy`` (one policy) and ``arrival_spec`` (``trace:FILE``) of older configs are understood.
        A value of the wrong shape is a ValueError naming its key."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        if "policies" not in kwargs and config.get("policy"):
            kwargs["policies"] = (config["policy"],)
        if isinstance(kwargs.get("policies"), str):
            kwargs["policies"] = (kwargs["policies"],)
        if "policies" in kwargs:
            try:
                kwargs["policies"] = tuple(kwargs["policies"] or ())
            except TypeError:
                raise ValueError(f"policies: expected a list of policy specs, got {brief(kwargs['policies'])}") from None
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
            try:
                kwargs["noise_bias"] = tuple((str(s), f) for s, f in bias)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"noise_bias: expected [stage, factor] pairs or {{stage: factor}}, got "
                                 f"{brief(config.get('noise_bias'))} ({exc})") from None
        return cls(**kwargs)


_digests: dict[tuple[str, int, int], str] = {}  # (path, mtime, size) -> sha256: a file is hashed once


def _sha256(path: str) -> str:
    import hashlib

    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digests[key] = h.hexdigest()
    return _digests[key]


def file_input(path: str) -> dict[str, str]:
    """A file a run read, as its config's ``inputs`` name it: its absolute path and the SHA-256 of
    its bytes (what :func:`changed_inputs` checks it against later)."""
    path = os.path.abspath(path)
    return {"path": path, "sha256": _sha256(path)}


def input_files(spec: RunSpec) -> dict[str, dict[str, str]]:
    """The files ``spec`` reads (a mix, cluster, trace or profile given as a path to a regular file;
    not a shipped name, not a pipe): each key's absolute path and the SHA-256 of its bytes."""
    return {key: file_input(value) for key in FILE_KEYS
            if isinstance(value := getattr(spec, key), str) and os.path.isfile(value)}


def changed_inputs(config: Mapping[str, Any]) -> list[str]:
    """What of the files a stored run read (its config's ``inputs``) is gone or differs now: a repeat
    would run other requests (or another cluster, other costs) under the same name."""
    problems = []
    inputs = config.get("inputs")
    for key, f in (inputs.items() if isinstance(inputs, Mapping) else ()):
        if not (isinstance(f, Mapping) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)):
            continue
        path, was = f["path"], f["sha256"]
        try:
            now = _sha256(path)
        except OSError as exc:
            problems.append(f"its {key} {path} cannot be read ({exc.strerror or exc})")
            continue
        if now != was:
            problems.append(f"its {key} {path} has changed since it was stored (sha256 {was[:12]}..., now {now[:12]}...)")
    return problems


def _finite_positive(value: object) -> bool:
    return is_finite(value) and value > 0  # type: ignore[operator]


SPEC_KEYS = tuple(f.name for f in dataclasses.fields(RunSpec))


def unknown_keys(config: Mapping[str, Any], origin: str) -> list[str]:
    """The problem (one, or none) of a spec file's keys that are neither the spec's nor a stored
    config's (:data:`CONFIG_KEYS`): each named, with the closest valid key where one is close."""
    import difflib

    unknown = [k for k in config if k not in SPEC_KEYS and k not in CONFIG_KEYS]
    if not unknown:
        return []
    named = []
    for key in unknown[:8]:  # the most listed() shows: a hostile file's many keys cost nothing more
        close = difflib.get_close_matches(key, SPEC_KEYS + CONFIG_KEYS, n=1) if len(key) <= 80 else []
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return [f"{origin}: unknown key(s) {listed(named + unknown[8:])}; valid keys: {', '.join(SPEC_KEYS)} "
            "(and those a stored run's config_json adds)"]


def read_spec_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a spec file, read within bounds (at most ``MAX_CONFIG_BYTES``,
    ``MAX_NESTING`` deep), its keys checked (:func:`unknown_keys`)."""
    origin = os.fspath(path)
    try:
        data = load_json(read_bounded(path, MAX_CONFIG_BYTES).removeprefix("\ufeff"))  # (a BOM: as traces, mixes)
    except InputRefused as exc:
        raise RunSpecError([f"--spec: {origin}: {exc}"]) from None
    if not isinstance(data, dict):
        raise RunSpecError([f"--spec: {origin} does not hold a JSON object"])
    problems = unknown_keys(data, origin)
    if problems:
        raise RunSpecError(problems)
    return data


def read_spec_file(path: str | os.PathLike[str]) -> RunSpec:
    """A checked spec from a JSON file (:meth:`RunSpec.config` form); plain json, no pydantic. Every
    problem names the file and the key (``run.json: rate: must be a number > 0 ...``)."""
    origin, config = os.fspath(path), read_spec_config(path)
    try:
        spec = RunSpec.from_config(config)
    except (TypeError, ValueError) as exc:  # a key of the wrong shape (bias pairs)
        raise RunSpecError([f"{origin}: {exc}"]) from None
    return spec.check(origin)


def write_spec_file(spec: RunSpec, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write ``spec`` (and ``extra`` keys) as JSON to ``path``; returns the path."""
    out = Path(path)
    out.write_text(spec.to_json(**extra) + "\n", encoding="utf-8")
    return out
