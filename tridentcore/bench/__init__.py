"""Benches: runs of the simulator and of the live runtime, configured by one run spec and stored.

Above both drivers (``sim`` and ``runtime``), below the entry points (``cli``, ``workbench``):

* :mod:`.spec` — :class:`~.spec.RunSpec`, the one run spec (and its JSON, the stored config);
  :mod:`.spec_schema` validates one at the edge (pydantic);
* :mod:`.scenario` — load a spec's inputs, simulate a policy, rate sweeps and goodput;
* :mod:`.runs` — stored runs: look up, report, compare, run a simulated one again;
* :mod:`.live` — a live bench: ``trident serve`` and Locust as child processes, stored as a run;
* :mod:`.provenance` — git commit, package versions, hardware.
* :mod:`.script` — what the benchmark scripts share: a bad input ends in one line.

Import the submodules; this package imports nothing (the Locust file imports :mod:`.spec`).
"""
