"""``python -m tridentcore.cli``: the ``trident`` command."""

from .launch import main

if __name__ == "__main__":  # pragma: no cover
    main()
