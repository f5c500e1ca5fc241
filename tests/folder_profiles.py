"""A profile that prices a saved pipeline folder: the shipped ``cpu`` profile's tiny-sd3 rows under the
folder's name (a folder is served only where a profile names it, as it is written on the command line)."""

from __future__ import annotations

from pathlib import Path

_CPU_ROWS = Path(__file__).resolve().parents[1] / "tridentcore" / "profiles" / "data" / "cpu.csv"


def tiny_sd3_profile_as(name: str, out: Path) -> Path:
    """Write the ``cpu`` profile's tiny-sd3 rows with the model named ``name`` (a saved tiny-sd3 folder,
    as the command line writes it) to ``out``; returns ``out``."""
    lines = _CPU_ROWS.read_text().splitlines()
    out.write_text("\n".join([lines[0]] + [line.replace("cpu,tiny-sd3,", f"cpu,{name},", 1)
                                           for line in lines if line.startswith("cpu,tiny-sd3,")]) + "\n")
    return out
