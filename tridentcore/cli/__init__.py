"""The ``trident`` command: thin commands over library calls.

``python -m tridentcore.cli`` runs it too; both start in :mod:`.launch`, which must run before the
commands are imported, so ``app`` is imported from :mod:`.main` only when it is asked for. See
:mod:`.main` for where each command lives.
"""

__all__ = ["app"]


def __getattr__(name: str):
    if name == "app":
        from .main import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
