from . import pipeline, trident  # noqa: F401
