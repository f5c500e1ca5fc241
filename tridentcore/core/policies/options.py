"""Parsers for policy option values given as text (``trident:preempt=false``)."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..defaults import LATE_MODES

__all__ = ["choice", "number", "parse_bool", "parse_late"]


def parse_bool(text: str) -> bool:
    """A boolean policy option: 1/true/yes/on or 0/false/no/off (any case); else ValueError."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


parse_bool.__name__ = "bool"


def parse_late(text: str) -> str:
    """The ``late`` option: ``serve`` (a request that can no longer meet its deadline runs last and
    counts as an SLO miss) or ``reject`` (a request that could not meet its deadline is turned away on
    arrival; what is admitted is served)."""
    value = str(text).strip().lower()
    if value not in LATE_MODES:
        raise ValueError(text)
    return value


parse_late.__name__ = "late mode (" + " or ".join(LATE_MODES) + ")"


def number(lo: float = -math.inf, hi: float = math.inf, *, integer: bool = False, above: bool = False,
           or_zero: bool = False) -> Callable[[object], float]:
    """A numeric policy option: finite, at least ``lo`` (more than it with ``above``) and at most ``hi``,
    or exactly 0 with ``or_zero`` (0 turning a feature off); an integer with ``integer``. Else
    ValueError; its ``__name__`` says what is valid (the error message names it)."""
    def parse(text: object) -> float:
        if isinstance(text, bool):
            raise ValueError(text)
        if integer and isinstance(text, str):  # as written, not through a float (20 digits came back rounded)
            digits = text.strip().removeprefix("-").removeprefix("+")
            if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
                raise ValueError(text)
            value = int(text.strip())
        else:
            value = float(str(text).strip()) if isinstance(text, str) else float(text)  # type: ignore[arg-type]
        if integer and not isinstance(value, int):
            if not value.is_integer():
                raise ValueError(text)
            value = int(value)
        if or_zero and value == 0:
            return value
        if not math.isfinite(value) or value < lo or value > hi or (above and value == lo):
            raise ValueError(text)
        return value

    low = f"> {lo:g}" if above else f">= {lo:g}"
    parts = [p for p in (low if lo > -math.inf else "", f"<= {hi:g}" if hi < math.inf else "") if p]
    parse.__name__ = ("integer" if integer else "number") + (" " + " and ".join(parts) if parts else " (finite)") + (
        " (or 0)" if or_zero else "")
    return parse


def choice(*values: str) -> Callable[[object], str]:
    """An option that is one of ``values`` (any case); else ValueError."""
    def parse(text: object) -> str:
        value = str(text).strip().lower()
        if value not in values:
            raise ValueError(text)
        return value

    parse.__name__ = "choice (" + " or ".join(values) + ")"
    return parse
