"""Parsers for policy option values given as text (``trident:preempt=false``)."""

from __future__ import annotations

from ..defaults import LATE_MODES

__all__ = ["parse_bool", "parse_late"]


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
