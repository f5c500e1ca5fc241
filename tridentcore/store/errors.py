"""The results store's errors (all :class:`~tridentcore.core.errors.TridentError`)."""

from __future__ import annotations

from tridentcore.core.errors import TridentError

__all__ = ["DatabaseReplacedError", "DuplicateRunError", "NotADatabaseError", "RowsError", "SchemaVersionError", "StoreError", "UnknownRunError"]


class StoreError(TridentError):
    """A results-store operation that cannot be done as asked."""


class DuplicateRunError(StoreError, ValueError):
    """``write_run`` was given a run_id the store already holds."""


class UnknownRunError(StoreError, KeyError):
    """A run_id the store does not hold."""


class SchemaVersionError(StoreError, RuntimeError):
    """The database was written with a different schema version than this code's."""


class RowsError(StoreError, ValueError):
    """Rows (or a run status) the store cannot take; the message names every problem."""


class NotADatabaseError(StoreError, OSError):
    """An existing file that is not a DuckDB database (a JSON, CSV or text file given as ``--db``):
    refused before DuckDB opens it, since DuckDB would read some such files as data, read-only.
    ``reason`` is the message without the path."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DatabaseReplacedError(StoreError, RuntimeError):
    """The database file a journal was being ingested into was moved, deleted or replaced since (a
    rotation, ``rm``): nothing more is written at its path, which would split the run between two
    files; the journal keeps every line for a recovery."""
