"""Moved (issue 10): bench orchestration to :mod:`tridentcore.bench.scenario`, run provenance to
:mod:`tridentcore.bench.provenance`. This thin re-export keeps the old import path working for the
modules that still use it.

TODO(issue 10): removed by the driver-core refactor (``runtime/engine.py``'s ``run_meta``,
``workbench/data.py``, ``benchmarks/parity.py``, ``tests/test_sim.py`` import from here); the
simulator package must not import the bench package above it (see ``[tool.importlinter]``).
"""

from ..bench.provenance import git_sha, hardware, package_versions
from ..bench.scenario import (Goodput, Loaded, RatePoint, Scenario, capacity_rps, evaluate, finite, load_scenario,
                              run_meta, run_one, sweep_goodput)

__all__ = ["Goodput", "Loaded", "RatePoint", "Scenario", "capacity_rps", "evaluate", "finite", "git_sha", "hardware",
           "load_scenario", "package_versions", "run_meta", "run_one", "sweep_goodput"]
