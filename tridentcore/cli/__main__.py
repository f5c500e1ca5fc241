"""``python -m tridentcore.cli``: the ``trident`` command."""

from .main import app

if __name__ == "__main__":  # pragma: no cover
    app()
