"""Stage profiles: the file format and the shipped data.

The measuring tool (``trident profile``) runs pipelines, so it lives with them:
``tridentcore.pipelines.profiling``. Importing this package is light (no torch).
"""

from .format import (
    Profile,
    ProfileError,
    format_profile,
    load_profile,
    load_published_scaling,
    measured_dtype,
    parse_profile,
    parse_published_scaling,
    save_profile,
    shipped_profiles,
)

__all__ = [
    "Profile",
    "ProfileError",
    "format_profile",
    "load_profile",
    "load_published_scaling",
    "measured_dtype",
    "parse_profile",
    "parse_published_scaling",
    "save_profile",
    "shipped_profiles",
]
