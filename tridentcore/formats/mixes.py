"""Named mixes (``tridentcore/formats/data/mixes/*.yaml``) and cluster files: reading them from disk.

A shipped mix may be narrowed to some of its models: ``tiny:models=tiny-sd3`` is the ``tiny`` mix's
tiny-sd3 classes at their weights (models joined by ``+``). :func:`mix_for_models` picks the shipped
mix a server serving some models can take (the Locust file's default: ``GET /v1/models``).

The parsing and validation are pure and live in ``tridentcore.core`` (:func:`mix_from_dict`,
:func:`cluster_from_dict`, :func:`parse_cluster`); this module only finds and reads the files,
within bounds (:mod:`.bounded`: at most ``MAX_CONFIG_BYTES``, YAML without aliases).
Imports only the standard library, ``yaml`` and ``tridentcore.core`` (Locust imports it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from tridentcore.core.cluster import ClusterError, ClusterSpec, cluster_from_dict, parse_cluster
from tridentcore.core.defaults import DEFAULT_MIX, MAX_CONFIG_BYTES
from tridentcore.core.errors import listed
from tridentcore.core.workload import Mix, WorkloadError, mix_from_dict

from .bounded import InputRefused, load_yaml, read_bounded

__all__ = ["MODELS_OPTION", "list_mixes", "load_cluster", "load_mix", "mix_for_models", "mix_path"]

_PACKAGE = "tridentcore.formats"
_DATA_DIR = "data"
_MIX_DIR = "mixes"
_YAML_SUFFIXES = (".yaml", ".yml")
MODELS_OPTION = ":models="  # NAME:models=A+B narrows a shipped mix to those models


def _mix_dir():  # -> importlib.resources.abc.Traversable
    return resources.files(_PACKAGE).joinpath(_DATA_DIR, _MIX_DIR)


def list_mixes() -> tuple[str, ...]:
    """Names of the shipped mixes (``tridentcore/formats/data/mixes/NAME.yaml``)."""
    names = [
        entry.name.rsplit(".", 1)[0]
        for entry in _mix_dir().iterdir()
        if entry.is_file() and entry.name.endswith(_YAML_SUFFIXES)
    ]
    return tuple(sorted(names))


def mix_path(name: str) -> str:
    """Where a shipped mix lives (for messages and the results store's config)."""
    return f"tridentcore/formats/data/mixes/{name}.yaml"


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith(_YAML_SUFFIXES)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system
        return False


def _parse_yaml(text: str, origin: str, error: type[ValueError]) -> object:
    try:
        return load_yaml(text)
    except InputRefused as exc:
        raise error(origin, [str(exc)]) from None  # type: ignore[call-arg]


def _read(path: Path, origin: str, error: type[ValueError]) -> str:
    try:
        return read_bounded(path, MAX_CONFIG_BYTES)
    except InputRefused as exc:
        raise error(origin, [str(exc)]) from None  # type: ignore[call-arg]


def load_mix(name_or_path: str | os.PathLike[str]) -> Mix:
    """A shipped mix by name (``sd3-mixed``) or a mix YAML file by path, validated.

    Errors (:class:`~tridentcore.core.workload.WorkloadError`) name the file and, for a bad
    class, its index and field (``classes[2].height: ...``).
    """
    text_name = os.fspath(name_or_path)
    shipped = list_mixes()
    base, sep, models = text_name.partition(MODELS_OPTION)
    if sep and not isinstance(name_or_path, os.PathLike) and base in shipped:
        return _narrowed(load_mix(base), text_name, models)
    if not isinstance(name_or_path, os.PathLike) and text_name in shipped:
        for suffix in _YAML_SUFFIXES:
            resource = _mix_dir().joinpath(text_name + suffix)
            if resource.is_file():
                origin = f"mix {text_name} ({_MIX_DIR}/{resource.name})"
                data = _parse_yaml(resource.read_text(encoding="utf-8"), origin, WorkloadError)
                return mix_from_dict(data, origin=origin)
    path = Path(text_name)
    if _is_file(path):
        origin = str(path)
        data = _parse_yaml(_read(path, origin, WorkloadError), origin, WorkloadError)
        return mix_from_dict(data, origin=origin, default_name=path.stem[:128] or None)
    listed = ", ".join(shipped) if shipped else "(none)"
    if path.exists():  # a folder or a device: it said "no such file"
        raise WorkloadError(text_name, ["not a regular file (give a mix YAML file)"])
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text_name):
        raise WorkloadError(text_name, [f"no such file (shipped mixes: {listed})"])
    raise WorkloadError(text_name, [f"unknown mix {text_name!r}; shipped mixes: {listed}; or give a path to a YAML file"])


def _narrowed(mix: Mix, name: str, models_text: str) -> Mix:
    """``mix``'s classes of the models in ``models_text`` (``A+B``), named ``name``."""
    wanted = [m.strip() for m in models_text.split("+") if m.strip()]
    have = sorted({c.model for c in mix.classes})
    unknown = [m for m in wanted if m not in have]
    if not wanted or unknown:
        found = f"{', '.join(map(repr, unknown))} not among" if unknown else "no models named; give some of"
        raise WorkloadError(name, [f"{found} the models of mix {mix.name!r} ({', '.join(have)}): "
                                   f"NAME{MODELS_OPTION}MODEL[+MODEL]"])
    classes = tuple(c for c in mix.classes if c.model in wanted)
    return dataclasses.replace(mix, name=name, classes=classes)


def mix_for_models(models: Iterable[str]) -> str | None:
    """The shipped mix a server serving ``models`` can take, named as :func:`load_mix` reads it.

    The default mix when every one of its models is served; else the shipped mix whose models are
    all served and cover the most of them (then the most classes; then by name); else the shipped
    mix with the most served models and classes, narrowed to those (``tiny:models=tiny-sd3``).
    None when no shipped mix has a served model."""
    served = set(models)
    best: tuple[tuple[bool, int, int], str] | None = None
    for name in list_mixes():
        classes = load_mix(name).classes
        mine = {c.model for c in classes} & served
        if not mine:
            continue
        whole = all(c.model in served for c in classes)
        if whole and name == DEFAULT_MIX:
            return name
        key = (whole, len(mine), sum(1 for c in classes if c.model in served))
        label = name if whole else f"{name}{MODELS_OPTION}{'+'.join(sorted(mine))}"
        if best is None or key > best[0]:
            best = (key, label)
    return None if best is None else best[1]


def load_cluster(
    text_or_yaml_path: str | os.PathLike[str], memory_overrides: Mapping[str, float] | None = None
) -> ClusterSpec:
    """A cluster written like ``2x8xH200`` / ``8xH200``, or a YAML file (a path: ends in
    .yaml/.yml or contains a directory separator) holding the mapping of
    :func:`cluster_from_dict`, optionally under a top-level ``cluster:`` key."""
    text = os.fspath(text_or_yaml_path)
    path = Path(text)
    if isinstance(text_or_yaml_path, os.PathLike) or _looks_like_path(text):
        origin = str(path)
        if not _is_file(path):
            raise ClusterError(origin, ["not a regular file (give a cluster YAML file)" if path.exists() else
                                        "no such file (or write the cluster like 8xH200 / 2x8xH200)"])
        data = _parse_yaml(_read(path, origin, ClusterError), origin, ClusterError)
        if isinstance(data, Mapping) and "cluster" in data and len(data) > 1:  # (read as "unknown key(s) cluster, extra")
            others = [k for k in data if k != "cluster"]
            raise ClusterError(origin, [f"unknown key(s) beside cluster: {listed(sorted(others, key=str))} (a file "
                                        "that holds cluster: holds nothing else: nodes, gpus_per_node, kind, ... go under it)"])
        if isinstance(data, Mapping) and set(data) == {"cluster"}:
            if not isinstance(data["cluster"], Mapping):  # (it read as "unknown key(s) cluster": outside test)
                raise ClusterError(origin, [
                    f"cluster: expected one mapping (nodes, gpus_per_node, kind, ...), got "
                    f"{'a list: a cluster is of one GPU kind' if isinstance(data['cluster'], list) else type(data['cluster']).__name__}"])
            data = data["cluster"]
        return cluster_from_dict(data, memory_overrides, origin=origin)  # type: ignore[arg-type]
    return parse_cluster(text, memory_overrides)
