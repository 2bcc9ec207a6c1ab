"""The package's layering, checked from the source: what each module may import.

fastblend is a library and, on top of it, an experiment wing (``fastblend/experiments/``: the runs, their
settings, results, cache and plots, and the command line). Data flows one way (CONTRIBUTING.md):
leaves -> ops -> data -> grouping -> condense -> (aamu, tracking) -> methods -> dropin | the wing.

- Nothing in the library imports the wing (only ``fastblend/__main__.py``, the ``python -m fastblend``
  entry point, runs its command line).
- No import circle among fastblend's modules, at module granularity, counting every import statement:
  those inside functions and those under ``if TYPE_CHECKING:`` too (a circle dodged by a late import is
  still a circle). Importing ``a.b`` also runs ``a/__init__``; that parent-package edge is Python's,
  not the code's, and is not counted.
- :data:`LAYERS` is the floor of each unit (a library module or subpackage, or one module of the wing):
  one above the highest unit it imports, 0 for a unit that imports none. The map is computed and
  compared, so it cannot drift from the code.
- Nothing imports the kernels' oracle (``ops/reference.py``) or anything outside the package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastblend"
WING = "experiments"  # fastblend/experiments/: the experiment wing
ENTRY_POINTS = {"__main__"}  # may import the wing: `python -m fastblend` runs its command line

# The floor of each unit: a top-level module or subpackage of the library, or a module of the wing.
LAYERS = {
    "_batchnorm": 0, "_checks": 0, "_device": 0, "_io": 0, "_progress": 0, "_version": 0, "recipe": 0,
    "labelled_images": 0, "prefix": 0,
    "dataset_readers": 1, "distributed": 1, "models": 1, "kmeans": 1, "memmap": 1, "ops": 1,
    "data_adapter": 2, "datasets": 2,
    "features": 3, "metrics": 3,
    "aamu": 4, "difficulty": 4, "evaluation": 4, "grouping": 4,
    "condensation": 5, "tracking": 5,
    "autostop": 6,
    "methods": 7, "dropin": 8,
    "__init__": 9,
    # the wing
    f"{WING}.__init__": 0, f"{WING}.machine": 1, f"{WING}.cache": 6, f"{WING}.plots": 6, f"{WING}.settings": 8,
    f"{WING}.results": 9, f"{WING}.pipeline": 10, f"{WING}.cli": 11,
    "__main__": 12,
}

# Circles inside fastblend/condense/ are the condense branch's to remove (issue 21, "one condensing engine").
CONDENSE_CIRCLES_OPEN = False


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root`` (a package is its ``__init__``)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        parts = [root.name, *p.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _statements(path: Path, root: Path = PACKAGE) -> list[tuple[str, list[str], int]]:
    """Every import statement of ``path``, anywhere in it (module level, inside functions, under
    ``TYPE_CHECKING``): ``(absolute module name, imported names, line)``, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).parts
    pkg = [root.name, *rel[:-1]]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
    return found


def _targets(name: str, names: list[str], mods: dict[str, Path]) -> list[str]:
    """The package modules one statement imports: ``from a import b`` is module ``a.b`` where that
    is a module, else (a name defined in ``a``) module ``a``; ``import a.b`` is ``a.b``."""
    out = []
    for n in names or [None]:
        full = f"{name}.{n}" if n else name
        if full in mods:
            out.append(full)
            continue
        parts = name.split(".")
        while parts and ".".join(parts) not in mods:
            parts.pop()
        if parts:
            out.append(".".join(parts))
    return out


def _graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (every statement counted; no self edges)."""
    mods = _modules(root)
    graph = {}
    for mod, path in mods.items():
        graph[mod] = {t for name, names, _ in _statements(path, root) for t in _targets(name, names, mods)} - {mod}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _unit(module: str) -> str:
    """The layer-map unit of a dotted module name: ``experiments.<m>`` in the wing, else the top-level
    module or subpackage (``__init__`` for the package itself)."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    if parts[0] == WING:
        return f"{WING}.{parts[1] if len(parts) > 1 else '__init__'}"
    return parts[0]


def _floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each unit's floor: 1 + the highest floor among the units it imports (0 if none)."""
    units: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        units.setdefault(_unit(mod), set()).update(_unit(t) for t in targets)
    for u in units:
        units[u].discard(u)
    floor: dict[str, int] = {}

    def visit(u: str, seen: tuple[str, ...]) -> int:
        if u in floor:
            return floor[u]
        if u in seen:
            raise AssertionError(f"units import each other in a circle: {' -> '.join((*seen, u))}")
        floor[u] = 1 + max((visit(t, (*seen, u)) for t in units[u]), default=-1)
        return floor[u]

    for u in sorted(units):
        visit(u, ())
    return floor


def _is_library(module: str) -> bool:
    parts = module.split(".")
    return len(parts) < 2 or (parts[1] != WING and parts[1] not in ENTRY_POINTS)


def _wing_imports() -> list[str]:
    mods = _modules()
    bad = []
    for mod, path in mods.items():
        if not _is_library(mod):
            continue
        for name, names, line in _statements(path):
            for t in _targets(name, names, mods):
                if not _is_library(t) and t.split(".")[1] == WING:
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {t}")
    return bad


# ------------------------------------------------------------------------------------------------
# the library never imports the wing
# ------------------------------------------------------------------------------------------------
def test_the_library_never_imports_the_wing():
    bad = _wing_imports()
    assert not bad, "the library imports the experiment wing:\n" + "\n".join(bad)


def test_importing_the_library_loads_nothing_of_the_wing():
    library = sorted(m for m in _modules() if _is_library(m) and m != "fastblend.ops.reference")
    code = ("import importlib, sys\n"
            f"for m in {library!r}:\n"
            "    importlib.import_module(m)\n"
            f"wing = sorted(m for m in sys.modules if m.startswith('fastblend.{WING}'))\n"
            "assert not wing, wing\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_dash_m_runs_the_wings_command_line():
    proc = subprocess.run([sys.executable, "-m", "fastblend", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("fastblend "), proc.stdout + proc.stderr


def test_the_console_script_is_the_wings_command_line():
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'fastblend = "fastblend.{WING}.cli:main"' in text


# ------------------------------------------------------------------------------------------------
# no import circles
# ------------------------------------------------------------------------------------------------
def _in_condense(circle: list[str]) -> bool:
    """A circle among the condensing engine's own modules (``condense/``, or ``condensation/`` as the
    condense branch renames it)."""
    return all(m.startswith(("fastblend.condense.", "fastblend.condensation.")) for m in circle)


def test_no_import_circles():
    circles = [c for c in _circles(_graph()) if not _in_condense(c)]
    assert not circles, "modules that import each other (counting imports inside functions and under " \
                        "TYPE_CHECKING):\n" + "\n".join(" <-> ".join(c) for c in circles)


@pytest.mark.xfail(CONDENSE_CIRCLES_OPEN, strict=True,
                   reason="condense/blend <-> condense/chunked and condense/checks <-> condense/source are "
                          "removed on the condense branch (issue 21, one condensing engine); set "
                          "CONDENSE_CIRCLES_OPEN = False once it is merged")
def test_no_import_circles_inside_condense():
    circles = [c for c in _circles(_graph()) if _in_condense(c)]
    assert not circles, "condense modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_circle_detector_sees_late_and_type_checking_imports(tmp_path):
    """The detector itself: circles closed only by a function-local import or a TYPE_CHECKING import
    are found; a one-way import and a submodule's import of its parent package are not circles."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\ng = 1\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "sub" / "__init__.py").write_text("from .d import h\n")
    (pkg / "sub" / "d.py").write_text("from .. import c\nh = 2\n")
    (pkg / "sub" / "e.py").write_text("import pkg.sub.d\nfrom pkg.c import a\n")
    graph = _graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.sub.e"] == {"pkg.sub.d", "pkg.c"}
    assert _circles(graph) == [["pkg.a", "pkg.b"]]


# ------------------------------------------------------------------------------------------------
# the layer map
# ------------------------------------------------------------------------------------------------
def test_the_layer_map_is_the_code():
    computed = _floors(_graph())
    assert computed == LAYERS, ("LAYERS in tests/test_layout.py differs from the imports; the code's floors: "
                                f"{dict(sorted(computed.items(), key=lambda kv: (kv[1], kv[0])))}")


@pytest.mark.parametrize("path", sorted(_modules().values()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_stay_inside_the_package_and_off_the_oracle(path):
    here = _unit(".".join(["fastblend", *path.relative_to(PACKAGE).with_suffix("").parts]))
    for name, _, line in _statements(path):
        parts = name.split(".")
        if parts[0] in ("benchmarks", "tests"):
            pytest.fail(f"{path.name}:{line} imports {name} from outside the package")
        if parts[0] != "fastblend" or len(parts) == 1:
            continue
        if parts[1:3] in (["ops", "reference"], ["condensation", "reference"]):
            pytest.fail(f"{path.name}:{line} imports the oracle {name}: only tests and benchmarks may")
        # ops/ reads only the recipe's constants (fastblend.recipe imports nothing): its defaults live in one place
        if here == "ops" and parts[1] not in ("ops", "recipe"):
            pytest.fail(f"{path.name}:{line}: ops/ imports nothing from the rest of the package, got {name}")


def test_no_module_edits_sys_path():
    offenders = [str(p.relative_to(PACKAGE)) for p in _modules().values() if "sys.path" in p.read_text()]
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
