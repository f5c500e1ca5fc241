"""Imported once, by the forkserver of the workbench's child processes (:mod:`workbench.child`): the
workbench, and what a simulation imports at its first run (the policies, the simulator, SciPy's
solvers), so that no child pays for them again (about 0.3 s a simulation otherwise)."""

from __future__ import annotations

import logging
import os
import sys
import types
from dataclasses import replace

from workbench import data

# Streamlit runs the page as the module __main__, whose file is app.py, and multiprocessing prepares a
# child by running its parent's main file again unless the child's own __main__ is that file: every
# child started from a page ran all of app.py in bare mode (a warning per Streamlit call) before its
# call. A __main__ of that name here, inherited by every child, makes them skip it.
_app = types.ModuleType("__mp_main__")
_app.__file__ = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "app.py"))
sys.modules["__main__"] = sys.modules["__mp_main__"] = _app

try:  # a short run of every default policy: its imports, and the default scenario loaded
    for _policy in data.DEFAULT_POLICIES:
        data.simulate_frames(replace(data.DEFAULT_SCENARIO, duration_s=20.0), _policy, data.DEFAULT_RATE)
except Exception:  # noqa: BLE001 - only a warm-up: the children import what they need anyway
    logging.getLogger(__name__).exception("warming the workbench's forkserver failed")
