"""The results store's errors (all :class:`~tridentcore.core.errors.TridentError`)."""

from __future__ import annotations

from tridentcore.core.errors import TridentError

from .schema import SchemaVersionError

__all__ = ["DuplicateRunError", "SchemaVersionError", "StoreError", "UnknownRunError"]


class StoreError(TridentError):
    """A results-store operation that cannot be done as asked."""


class DuplicateRunError(StoreError, ValueError):
    """``write_run`` was given a run_id the store already holds."""


class UnknownRunError(StoreError, KeyError):
    """A run_id the store does not hold."""
