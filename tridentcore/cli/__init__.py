"""The ``trident`` command (``tridentcore.cli:app``): thin commands over library calls.

``python -m tridentcore.cli`` runs it too. See :mod:`.main` for where each command lives.
"""

from .main import app

__all__ = ["app"]
