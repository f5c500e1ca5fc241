"""What the tests that signal a child process they started share.

A shell that runs a job in the background without job control (``make test &`` in a script) starts
it with SIGINT ignored, and an ignored signal stays ignored across fork and exec: a child that a
test means to stop with SIGINT (a Ctrl-C) would never see it. Such children are started with
``preexec_fn=default_sigint``.
"""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``subprocess.Popen(preexec_fn=...)``: the child takes SIGINT at its default action (Python's
    KeyboardInterrupt), whatever this process does with it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
