"""Reading input files within bounds (issue 12): what every reader of a trace, mix, cluster or
run-spec file goes through before it looks at the contents.

* :func:`read_bounded`: at most ``max_bytes`` are read (a larger file, ``/dev/zero`` or a pipe
  that never ends is refused after ``max_bytes + 1``), then decoded as UTF-8.
* :func:`load_yaml`: YAML without aliases (``*name``, and so ``<<: *name`` merges): a
  "billion laughs" document is refused where the first alias stands, so nothing is ever expanded,
  not even into an error message; lists and mappings nested at most ``MAX_NESTING`` deep.
* :func:`load_json`: JSON nested at most ``MAX_NESTING`` deep (deeper documents end Python's
  decoder with a RecursionError, reported as the same one-line problem), numbers as Python reads
  them (``NaN``/``Infinity`` are left to the field checks, which want finite numbers).

Each raises :class:`InputRefused` with one short problem; the callers re-raise it as their own
error (``TraceError``, ``WorkloadError``, ``ClusterError``, ``RunSpecError``) naming the file.
Imports only the standard library, ``yaml`` and ``tridentcore.core`` (Locust imports it).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import yaml

from tridentcore.core.defaults import MAX_NESTING
from tridentcore.core.errors import TridentError

__all__ = ["InputRefused", "load_json", "load_yaml", "nesting_over", "read_bounded"]


class InputRefused(TridentError, ValueError):
    """One problem with an input file, found before its contents were used."""


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> str:
    """The text of ``path`` (UTF-8), or :class:`InputRefused` if it is longer than ``max_bytes``
    or cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputRefused(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        if not os.path.isfile(path):  # a device or a pipe (/dev/zero, <(cmd)): it may never end
            raise InputRefused(f"not a regular file, and more than the limit of {max_bytes} bytes came from it")
        raise InputRefused(f"larger than the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if data.startswith(b"\x1f\x8b"):
            raise InputRefused("gzip-compressed, not text: give it uncompressed (a shell can pass it "
                               "through a pipe: <(gunzip -c FILE))") from None
        raise InputRefused(f"not UTF-8 text (byte {exc.start})") from None


def nesting_over(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists/dicts in ``value`` nest deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_deep() -> InputRefused:
    return InputRefused(f"lists or mappings nested more than {MAX_NESTING} deep")


def _too_long_int(kind: str, exc: ValueError) -> InputRefused:
    """An integer of more than 4300 digits (Python's int limit), in a few words."""
    return InputRefused(f"not valid {kind} ({' '.join(str(exc).split()[:8])})")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict, refusing a key given twice (``json.loads`` keeps the last
    silently: a trace line's ``"steps"`` given twice ran with the second)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_json(text: str) -> Any:
    """``json.loads`` within bounds, each object's keys given once; :class:`InputRefused` with the
    decoder's reason otherwise."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise InputRefused(f"the key {_cut(json.dumps(exc.args[0]), 60)} is given twice in one object") from None
    except json.JSONDecodeError as exc:
        raise InputRefused(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise _too_long_int("JSON", exc) from None
    if nesting_over(value):
        raise _too_deep()
    return value


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses aliases and deep nesting while composing the document
    (before anything is constructed)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise InputRefused(f"line {event.start_mark.line + 1}: YAML aliases (*{_cut(str(event.anchor), 40)}) "
                               "are not accepted; write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _too_deep()
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A mapping whose keys are each given once (PyYAML keeps the last silently: a mix class's
        second ``height``, a second ``classes:`` list dropping the first)."""
        seen: set = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise InputRefused(f"line {key_node.start_mark.line + 1}: the key "
                                       f"{_cut(key_node.value, 60)!r} is given twice in one mapping")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Numbers with an exponent are floats as YAML 1.2 reads them (1e9, 1.0e3, 2E-4); PyYAML follows YAML 1.1,
# which reads them as text unless they have a dot and a signed exponent (1.0e+3). The table is copied
# (its lists too): adding to it in place would change every SafeLoader in the process.
_BoundedLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
for _first in "-+.0123456789":
    _BoundedLoader.yaml_implicit_resolvers.setdefault(_first, []).append(("tag:yaml.org,2002:float", _EXP_FLOAT))


_PLAIN_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*|0x[0-9a-fA-F]+)$")


def _yaml_int(loader: yaml.SafeLoader, node: Any) -> int:
    """An integer as YAML 1.2 reads it; YAML 1.1's other forms, which PyYAML still reads, are refused
    rather than read as another number (outside test: ``nodes: 1_0`` made 10 nodes; ``010`` is 8,
    ``1:0`` is 60)."""
    text = str(node.value)
    if not _PLAIN_INT.match(text):
        raise InputRefused(f"line {node.start_mark.line + 1}: {_cut(text, 40)!r} is an integer only in YAML 1.1 "
                           "(underscores, a leading 0 for octal, 0b, or base 60 with ':'); write it in decimal")
    return loader.construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _yaml_int)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases and deep nesting; :class:`InputRefused` otherwise."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except InputRefused:
        raise
    except yaml.YAMLError as exc:
        raise InputRefused(f"not valid YAML: {_cut(' '.join(str(exc).split()))}") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise _too_long_int("YAML", exc) from None
