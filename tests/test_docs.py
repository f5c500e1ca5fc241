"""The documentation a newcomer reads: every link and path it names lies inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "results" / "README.md", *(ROOT / "docs").glob("*.md"),
               ROOT / "tridentcore" / "profiles" / "data" / "README.md"])
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL (the papers, the PyTorch index) or an anchor
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} points outside the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_nothing_points_at_the_shared_folder_outside_the_repository():
    """The design and the profile format live in docs/; nothing refers to ../shared/ any more."""
    files = [*DOCS, ROOT / "pyproject.toml", ROOT / "Makefile",
             *(p for d in ("tridentcore", "workbench", "workloads", "benchmarks") for p in (ROOT / d).rglob("*.py"))]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\.\./shared|\bshared/(profiles|DESIGN)|DESIGN\.md", line)]
    assert not hits, hits
