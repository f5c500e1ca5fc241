"""What the benchmark scripts (``benchmarks/*.py``) share: a bad input ends in one line, not a traceback.

Their runs go to worker processes; an error raised there comes back as itself (the project's errors
pickle whole, :class:`~tridentcore.core.errors.TridentError`), and is printed here as
``SCRIPT: message`` with exit status 1, as a bad value given to any of the CLI's commands is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ..core.errors import TridentError, one_line

__all__ = ["run_script"]


def run_script(main: Callable[[], None]) -> None:
    """``main()``; a bad input (a project error, ``ValueError``, ``LookupError``) from it or from its
    worker processes ends the script in one line naming it."""
    try:
        main()
    except (TridentError, ValueError, LookupError) as exc:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {one_line(str(exc))}") from None
