"""The project's error base classes (one root: :class:`TridentError`).

Every error the project raises on purpose derives from :class:`TridentError`, so an entry point
can tell "our error, show its message" from a bug with one ``except``. Each subclass also keeps
the builtin base it had before (``ValueError``, ``KeyError``, ``LookupError``...), so existing
``except ValueError`` clauses keep catching it.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["SpecError", "TridentError", "WorkloadError", "is_int", "is_number"]


class TridentError(Exception):
    """Root of the project's errors."""


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


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
