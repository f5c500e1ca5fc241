"""Import rules (STYLE.md): a light package import, and a pure ``tridentcore/core``."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tridentcore

CORE = Path(tridentcore.__file__).parent / "core"
HEAVY = ("torch", "diffusers", "transformers")
# Never imported anywhere under tridentcore/core (module level or inside functions).
FORBIDDEN_IN_CORE = {
    "torch", "asyncio", "time", "duckdb", "fastapi", "ray", "diffusers", "transformers", "requests",
    "httpx", "datetime", "os", "subprocess", "socket", "threading",
}  # fmt: skip
# Forbidden at module level only: randomness comes from an injected random.Random(seed).
FORBIDDEN_AT_MODULE_LEVEL = {"random"}
# The cost model is on the simulator's hot path and must stay stdlib-only (no numpy either).
STDLIB_ONLY = ("costmodel.py", "costtables.py", "scaling.py")


def test_light_imports_do_not_pull_heavy_libraries():
    code = (
        "import sys, json\n"
        "import tridentcore, tridentcore.core.costmodel, tridentcore.profiles, tridentcore.cli\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level module, line, at module level?) for every import in ``tree``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], child.lineno, module_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0 and child.module:
                    found.append((child.module.split(".")[0], child.lineno, module_level))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(ast.Module(body=child.orelse, type_ignores=[]), module_level)  # the body never runs
            else:
                visit(child, module_level)

    visit(tree, True)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert files, CORE
    return files


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_is_pure(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for module, line, module_level in _imports(tree):
        if module in FORBIDDEN_IN_CORE:
            problems.append(f"{path.name}:{line}: imports {module}")
        if module in FORBIDDEN_AT_MODULE_LEVEL and module_level:
            problems.append(f"{path.name}:{line}: imports {module} at module level (inject random.Random(seed))")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", STDLIB_ONLY)
def test_cost_model_is_stdlib_only(name: str):
    path = CORE / name
    tree = ast.parse(path.read_text(), filename=str(path))
    outside = [
        f"{name}:{line}: {module}"
        for module, line, _ in _imports(tree)
        if module not in sys.stdlib_module_names and module != "tridentcore"
    ]
    assert not outside, "\n".join(outside)


def test_the_scan_catches_violations():
    tree = ast.parse(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import random\n"
        "def f():\n    import random\n    from time import monotonic\n"
        "import random\n"
    )
    found = _imports(tree)
    assert ("os", 1, True) in found
    assert ("random", 6, False) in found and ("time", 7, False) in found
    assert ("random", 8, True) in found
    assert all(line != 4 for _, line, _ in found)  # TYPE_CHECKING-only imports never run


def test_only_the_locustfile_imports_locust():
    """Locust patches the standard library with gevent when imported; after requests, transformers or
    diffusers that deadlocks or crashes, so everything else starts it as a separate process."""
    root = Path(tridentcore.__file__).resolve().parent.parent
    offenders = []
    for folder in ("tridentcore", "workbench", "tests", "benchmarks", "workloads"):
        for path in (root / folder).rglob("*.py"):
            if path == root / "workloads" / "mixed.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("importorskip", "import_module")
                      and node.args and isinstance(node.args[0], ast.Constant)):
                    names = [str(node.args[0].value)]
                if any(n == "locust" or n.startswith("locust.") for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


def test_import_contracts_hold():
    """``lint-imports`` (import-linter, the contracts in pyproject.toml's ``[tool.importlinter]``):
    the layers, the pure core, the light Locust file, the independent CLI command modules."""
    root = Path(tridentcore.__file__).resolve().parent.parent
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        if os.environ.get("CI"):
            pytest.fail("CI runs the import contracts: import-linter must be installed (the dev extra)")
        pytest.skip("import-linter is not installed (pip install -e .[dev])")
    out = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
