"""Parsers for policy option values given as text (``trident:preempt=false``)."""

from __future__ import annotations

__all__ = ["parse_bool"]


def parse_bool(text: str) -> bool:
    """A boolean policy option: 1/true/yes/on or 0/false/no/off (any case); else ValueError."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


parse_bool.__name__ = "bool"
