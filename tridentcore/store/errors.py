"""The results store's errors (all :class:`~tridentcore.core.errors.TridentError`)."""

from __future__ import annotations

from tridentcore.core.errors import TridentError

__all__ = ["DatabaseReplacedError", "DuplicateRunError", "NotADatabaseError", "RowsError", "SchemaVersionError", "StoreError", "UnknownRunError",
           "DamagedDatabaseError", "damage", "damaged"]


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


# DuckDB's words for a file whose blocks fail their checksums or end before their place (a disk error, a copy
# cut short, a file edited by hand), each said as the damage it is
_DAMAGE = (("Corrupt database file", "a block's checksum does not match"),
           ("Could not read enough bytes from file", "the file ends before its last block: cut short"))


def damage(exc: BaseException) -> str | None:
    """How a database file is damaged, if ``exc`` is DuckDB's error for a damaged file (or
    :class:`DamagedDatabaseError`; None: another error). Outside test 131: DuckDB's own text ("Corrupt
    database file: computed checksum ...") named no file and said nothing of what to do."""
    if isinstance(exc, DamagedDatabaseError):
        return exc.what
    text = str(exc)
    return next((what for words, what in _DAMAGE if words in text), None)


DAMAGED_ADVICE = "restore the file from a copy, and store new runs in another"
RECOVER_ADVICE = "restore it from a copy, then recover again"


def damaged(exc: BaseException, advice: str = DAMAGED_ADVICE) -> str | None:
    """``the database file is damaged (HOW): ADVICE`` if ``exc`` says a damaged file (None: another error)."""
    what = damage(exc)
    return None if what is None else f"the database file is damaged ({what}): {advice}"


class DamagedDatabaseError(StoreError, OSError):
    """A results database found damaged before anything was written to it (a file shorter than the
    blocks its header says are in use: cut short). ``what``: the damage, as :func:`damage` words it."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(f"{path}: {damaged(self)}")
