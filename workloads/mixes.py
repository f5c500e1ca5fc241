"""Moved to :mod:`tridentcore.formats.mixes` (issue 10); this name stays for a few importers.

TODO(issue 10): remove once ``workbench/data.py``, ``tests/test_sim.py`` and
``tests/test_trident_paper.py`` import ``tridentcore.formats.mixes``.
"""

from tridentcore.formats.mixes import list_mixes, load_cluster, load_mix, mix_path

__all__ = ["list_mixes", "load_cluster", "load_mix", "mix_path"]
