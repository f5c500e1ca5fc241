"""Named mixes (``tridentcore/formats/data/mixes/*.yaml``) and cluster files: reading them from disk.

The parsing and validation are pure and live in ``tridentcore.core`` (:func:`mix_from_dict`,
:func:`cluster_from_dict`, :func:`parse_cluster`); this module only finds and reads the files,
within bounds (:mod:`.bounded`: at most ``MAX_CONFIG_BYTES``, YAML without aliases).
Imports only the standard library, ``yaml`` and ``tridentcore.core`` (Locust imports it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from tridentcore.core.cluster import ClusterError, ClusterSpec, cluster_from_dict, parse_cluster
from tridentcore.core.defaults import MAX_CONFIG_BYTES
from tridentcore.core.workload import Mix, WorkloadError, mix_from_dict

from .bounded import InputRefused, load_yaml, read_bounded

__all__ = ["list_mixes", "load_cluster", "load_mix", "mix_path"]

_PACKAGE = "tridentcore.formats"
_DATA_DIR = "data"
_MIX_DIR = "mixes"
_YAML_SUFFIXES = (".yaml", ".yml")


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
        return mix_from_dict(data, origin=origin)
    listed = ", ".join(shipped) if shipped else "(none)"
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text_name):
        raise WorkloadError(text_name, [f"no such file (shipped mixes: {listed})"])
    raise WorkloadError(text_name, [f"unknown mix {text_name!r}; shipped mixes: {listed}; or give a path to a YAML file"])


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
            raise ClusterError(origin, ["no such file (or write the cluster like 8xH200 / 2x8xH200)"])
        data = _parse_yaml(_read(path, origin, ClusterError), origin, ClusterError)
        if isinstance(data, Mapping) and set(data) == {"cluster"} and isinstance(data["cluster"], Mapping):
            data = data["cluster"]
        return cluster_from_dict(data, memory_overrides, origin=origin)  # type: ignore[arg-type]
    return parse_cluster(text, memory_overrides)
