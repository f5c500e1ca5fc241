from . import pipeline, trident, trident_paper  # noqa: F401
