"""Imported once, by the forkserver of the workbench's child processes (:mod:`workbench.child`): the
workbench, and what a simulation imports at its first run (the policies, the simulator, SciPy's
solvers), so that no child pays for them again (about 0.3 s a simulation otherwise)."""

from __future__ import annotations

import logging
from dataclasses import replace

from workbench import data

try:  # a short run of every default policy: its imports, and the default scenario loaded
    for _policy in data.DEFAULT_POLICIES:
        data.simulate_frames(replace(data.DEFAULT_SCENARIO, duration_s=20.0), _policy, data.DEFAULT_RATE)
except Exception:  # noqa: BLE001 - only a warm-up: the children import what they need anyway
    logging.getLogger(__name__).exception("warming the workbench's forkserver failed")
