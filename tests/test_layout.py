"""The package's layering, checked from the source: what each module may import.

Data flows one way (CONTRIBUTING.md): leaves -> ops -> data -> grouping -> condense -> (methods + aamu)
-> metrics -> pipeline / cli. A module may import modules of its own layer or lower ones, never higher
ones; nothing imports the kernels' oracle (``ops/reference.py``) or anything outside the package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastblend"

# Layer of each top-level module or subpackage of fastblend (lower numbers are lower layers).
LAYERS = {
    "_batchnorm": 0, "_device": 0, "_io": 0, "_progress": 0, "machine": 0, "ops": 0, "plots": 0,
    "models": 1, "imagedata": 1, "dataview": 1, "readers": 1, "memmap": 1,
    "data": 2, "kmeans": 2, "features": 2,
    "grouping": 3, "distributed": 0,
    "condense": 4, "condense_reference": 5, "aamu": 4, "experiment": 6, "results": 7,
    "methods": 5, "metrics": 5, "evaluation": 5, "tracking": 5, "dropin": 6, "cache": 6,
    "pipeline": 7,
    "cli": 8, "__main__": 9, "__init__": 9,
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0][:-3] if len(rel) == 1 else rel[0]


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute dotted names of the fastblend modules ``path`` imports (relative imports resolved),
    and foreign top-level names, each with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ["fastblend", *path.relative_to(PACKAGE).parts[:-1]]
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no import at run time
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x
                    found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
                    continue
            else:
                name = node.module or ""
            found.append((name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return found


def test_every_module_has_a_layer():
    missing = sorted({_top(p) for p in _modules()} - set(LAYERS))
    assert not missing, f"give these modules a layer in tests/test_layout.py: {missing}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_respect_the_layers(path):
    here = _top(path)
    for name, line in _imports(path):
        parts = name.split(".")
        if parts[0] == "benchmarks" or parts[0] == "tests":
            pytest.fail(f"{path.name}:{line} imports {name} from outside the package")
        if parts[0] != "fastblend" or len(parts) == 1:
            continue
        if parts[1:3] == ["ops", "reference"]:
            pytest.fail(f"{path.name}:{line} imports the oracle {name}: only tests and benchmarks may")
        if here == "ops" and parts[1] != "ops":
            pytest.fail(f"{path.name}:{line}: ops/ imports nothing from the rest of the package, got {name}")
        target = parts[1]
        if target in LAYERS and here in LAYERS and LAYERS[target] > LAYERS[here] and here != "__init__":
            pytest.fail(f"{path.name}:{line}: {here} (layer {LAYERS[here]}) imports the higher {name} "
                        f"(layer {LAYERS[target]})")


def test_no_module_edits_sys_path():
    offenders = [str(p.relative_to(PACKAGE)) for p in _modules() if "sys.path" in p.read_text()]
    assert not offenders, f"modules that edit sys.path: {offenders}"


def test_import_loads_nothing_from_outside_the_package():
    code = (
        "import sys, fastblend, pathlib\n"
        "root = pathlib.Path(fastblend.__file__).resolve().parent.parent\n"
        "outside = [root / d for d in ('benchmarks', 'tests', 'scripts', 'docs')]\n"
        "bad = sorted(n for n, m in list(sys.modules.items())\n"
        "             if (f := getattr(m, '__file__', None))\n"
        "             and any(pathlib.Path(f).resolve().is_relative_to(d) for d in outside))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
