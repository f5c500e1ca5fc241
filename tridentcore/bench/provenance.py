"""Run provenance: the git commit, package versions and hardware a run is stored with.

Used by both drivers' benches (simulated and live) and, through :func:`provenance`, by the server
when it stores a live run (the runtime below takes it as a parameter).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LIVE_PACKAGES", "SIM_PACKAGES", "git_sha", "hardware", "package_versions", "provenance"]

SIM_PACKAGES = ("tridentserve", "duckdb", "numpy", "scipy", "torch", "diffusers")
LIVE_PACKAGES = (*SIM_PACKAGES, "locust", "gevent", "geventhttpclient", "fastapi", "uvicorn", "ray")


def git_sha() -> str:
    """The commit of the checkout this package runs from ("" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def package_versions(names: Sequence[str] = SIM_PACKAGES) -> dict:
    """Installed versions of ``names`` (packages not installed are left out)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def hardware() -> dict:
    """The host: machine, processor, CPUs, Python, system and total memory."""
    info = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "system": platform.system()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return info


def provenance(packages: Sequence[str] = LIVE_PACKAGES) -> dict[str, str]:
    """A ``runs`` row's provenance columns: ``git_sha``, ``packages_json``, ``hardware_json``."""
    return {"git_sha": git_sha(), "packages_json": json.dumps(package_versions(packages), sort_keys=True),
            "hardware_json": json.dumps(hardware(), sort_keys=True)}
