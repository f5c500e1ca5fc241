"""Stage profiles: the file format, the shipped data and (in ``runner``) the measuring tool.

Importing this package is light (no torch): ``runner`` imports torch inside its functions and is
not imported here.
"""

from .format import (
    Profile,
    ProfileError,
    format_profile,
    load_profile,
    load_published_scaling,
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
    "parse_profile",
    "parse_published_scaling",
    "save_profile",
    "shipped_profiles",
]
