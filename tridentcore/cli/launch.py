"""The ``trident`` command's entry point (``pyproject.toml``'s script, ``python -m tridentcore.cli``).

Before the commands are imported, a command line that runs ``trident serve`` has its SIGTERM and
SIGHUP held (:func:`~tridentcore.runtime.sigint.hold_stops`): Python takes 0.2-0.4 s (more on a busy
host) to import the command, and a stop in that time killed the server where it stood (exit -15, an
empty log). ``serve`` acts on a stop held here as soon as it takes the signals itself: the start ends
as after a Ctrl-C. Other commands keep the default actions. (SIGINT needs no holding: Python raises
``KeyboardInterrupt`` from the start.)
"""

from __future__ import annotations

import sys
import threading

__all__ = ["main"]


def _runs_serve(argv: list[str]) -> bool:
    """Whether the command line's first word that is not an option is ``serve`` (the ``trident``
    command has no options of its own that take a value)."""
    return next((word for word in argv if not word.startswith("-")), None) == "serve"


def main():
    if _runs_serve(sys.argv[1:]) and threading.current_thread() is threading.main_thread():
        from ..runtime.sigint import hold_stops

        hold_stops()
    from .main import app

    return app()


if __name__ == "__main__":  # `python -m tridentcore.cli.launch` (outside tests 119, 120: it did nothing, exit 0)
    main()
