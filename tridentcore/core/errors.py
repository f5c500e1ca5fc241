"""The project's error base classes (one root: :class:`TridentError`).

Every error the project raises on purpose derives from :class:`TridentError`, so an entry point
can tell "our error, show its message" from a bug with one ``except``. Each subclass also keeps
the builtin base it had before (``ValueError``, ``KeyError``, ``LookupError``...), so existing
``except ValueError`` clauses keep catching it.

Pure: no I/O.
"""

from __future__ import annotations

import reprlib
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["SpecError", "TridentError", "WorkloadError", "brief", "is_finite", "is_int", "is_number", "listed",
           "one_line"]

_BRIEF_CHARS = 80  # the longest a value is quoted in an error message
_LISTED = 8  # the most names an error message lists


class TridentError(Exception):
    """Root of the project's errors.

    Pickled (a worker process of a benchmark hands one back) as its class, arguments and attributes,
    not by calling ``__init__`` again: subclasses take other arguments than their message
    (``SpecError(origin, problems)``), which the default pickling would pass wrong or not at all."""

    def __reduce__(self):
        return _rebuilt, (type(self), self.args, dict(getattr(self, "__dict__", {})))


def _rebuilt(cls: type[TridentError], args: tuple, state: dict) -> TridentError:
    """A :class:`TridentError` as it was pickled (without calling its ``__init__``)."""
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class SpecError(TridentError, ValueError):
    """A description (cluster, mix, workload...) that cannot be used; ``problems`` lists every
    problem found, so one error reports them all."""

    def __init__(self, origin: str, problems: Iterable[str]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"{origin}: {self.problems[0]}"
        else:
            message = f"{origin}: {len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


class WorkloadError(SpecError):
    """A workload description that cannot be used; ``problems`` lists every problem found."""


def one_line(text: str) -> str:
    """A multi-problem error (``origin: 3 problems:\\n  a\\n  b``) as one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} " + "; ".join(lines[1:])


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A number (:func:`is_number`) that is a finite float or converts to one: not nan or inf, and
    not an int too large for a float (where ``math.isfinite`` would raise OverflowError)."""
    return is_number(value) and -sys.float_info.max <= value <= sys.float_info.max


def is_name(value: Any, most: int) -> bool:
    """A name (a model's, a mix's, a GPU kind's): a string of 1..``most`` characters, not all blank,
    without control characters (outside test 99: a mix named ``ESC ] 0 ; ... BEL`` retitled the
    terminal that printed it, and a model name with a newline split a message over two lines)."""
    return (isinstance(value, str) and bool(value.strip()) and len(value) <= most
            and not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in value))


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 2, 4, 4, 4, 4
_repr.maxstring = _repr.maxother = _repr.maxlong = _BRIEF_CHARS


def brief(value: Any) -> str:
    """``repr(value)`` cut to at most 80 characters, for an error message: a value read from a file
    (a long string, a large nested structure, one list shared many times over) is never written out
    in full, so building the message costs little whatever the input."""
    try:
        text = _repr.repr(value)
    except ValueError:  # an int past Python's 4300-digit limit has no repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _BRIEF_CHARS else text[: _BRIEF_CHARS - 3] + "..."


def listed(names: Iterable[Any]) -> str:
    """Up to eight names, comma-separated, each cut by :func:`brief` if long (``a, b, ... (12 in all)``)."""
    items = list(names)
    shown = [n if isinstance(n, str) and len(n) <= _BRIEF_CHARS else brief(n) for n in items[:_LISTED]]
    more = f", ... ({len(items)} in all)" if len(items) > _LISTED else ""
    return ", ".join(shown) + more
