"""The documentation cannot rot: the README's Python runs, every public name has a docstring, and the API
reference (mkdocs + mkdocstrings, ``mkdocs.yml``) builds in strict mode, failing on a broken
cross-reference, a docstring naming an object that does not exist or a parameter the signature lacks."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import fastblend

ROOT = Path(__file__).resolve().parents[1]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


# ------------------------------------------------------------------------------------------------
# The README's code
# ------------------------------------------------------------------------------------------------

def readme_python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_quickstart_opens_the_python_examples():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = readme_python_blocks()
    assert blocks, "README.md has no ```python block"
    quickstart = text.index("## Quickstart")
    assert text.index("```python") > quickstart, "the first Python example of README.md is not under ## Quickstart"
    assert len(blocks[0].strip().splitlines()) <= 15, "the quickstart is meant to stay about ten lines"


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    """Every ```python block of README.md, run top to bottom in one namespace (later blocks reuse the
    quickstart's model and data), on the quickstart's tiny data; prints are not checked."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for number, block in enumerate(readme_python_blocks(), 1):
        code = compile(block, f"README.md python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the README's own examples
    # the drop-in example keeps the codebase's loaders["retain"] (what its own evaluation reads) the retain set
    retain = namespace["loaders"]["retain"]
    assert len(retain.dataset) == len(namespace["split"].retain), "the README's drop-in swapped loaders['retain']"


def readme_command_lines() -> list[list[str]]:
    """The arguments of every ``fastblend ...`` (or ``-m fastblend ...``) command in the README's bash blocks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#", 1)[0])
            for i, word in enumerate(words):
                if word.endswith("bin/fastblend") or (word == "fastblend" and (i == 0 or words[i - 1] == "-m")):
                    args = words[i + 1:]
                    commands.append(args[:args.index("&&")] if "&&" in args else args)
                    break
    return commands


def test_readme_command_lines_parse():
    """Every command line of the README parses with the installed command's own parser (the console
    script pyproject.toml names), so a renamed or removed flag or subcommand cannot stay in the README."""
    tomllib = pytest.importorskip("tomllib")
    target = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]["fastblend"]
    parser = importlib.import_module(target.split(":")[0]).build_parser()
    commands = readme_command_lines()
    assert ["demo"] in commands, "the README lost its `fastblend demo`"
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"README command `fastblend {shlex.join(args)}` does not parse (exit {exc.code})")


# ------------------------------------------------------------------------------------------------
# Names and paths the prose mentions
# ------------------------------------------------------------------------------------------------

PROSE = ["README.md", "CONTRIBUTING.md", "docs/*.md", "benchmarks/results-*/README.md"]
DOTTED_NAME = re.compile(r"(?<![\w/.-])fastblend(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:fastblend|tests|benchmarks|scripts|csrc|docs)/[\w./-]*\w)(?![\w{*<])")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def stale_mentions(root: Path) -> list[str]:
    """``file: name`` for every ``fastblend.x.y`` that does not resolve and every repository path
    (``tests/test_x.py``, ``fastblend/methods/...``) that does not exist, in the prose files."""
    stale = []
    for pattern in PROSE:
        for path in sorted(root.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(root)
            stale += [f"{rel}: {name}" for name in sorted(set(DOTTED_NAME.findall(text))) if not _resolves(name)]
            stale += [f"{rel}: {p}" for p in sorted(set(REPO_PATH.findall(text))) if not (root / p).exists()]
    return stale


def test_names_and_paths_the_docs_mention_exist():
    """After a rename or a move, the README, CONTRIBUTING.md, docs/ and the results notes must follow."""
    assert stale_mentions(ROOT) == []


def test_stale_mentions_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_here.py").write_text("", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "Use `fastblend.BlendIndex.build` and fastblend.segment_blend, not `fastblend.Gone` or\n"
        "fastblend.BlendIndex.vanished; see tests/test_here.py and tests/test_gone.py, fastblend-out/x.\n",
        encoding="utf-8")
    assert stale_mentions(tmp_path) == ["README.md: fastblend.BlendIndex.vanished", "README.md: fastblend.Gone",
                                        "README.md: tests/test_gone.py"]


# ------------------------------------------------------------------------------------------------
# Docstrings of the public API
# ------------------------------------------------------------------------------------------------

def _has_own_doc(obj: object) -> bool:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc or not doc.strip():
        return False
    if isinstance(obj, type):
        # dataclasses and NamedTuples write "Name(field, ...)" when a class has no docstring
        generated = re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc.strip(), re.S)
        if generated and (dataclasses.is_dataclass(obj) or hasattr(obj, "_fields")):
            return False
    return True


def undocumented(module: types.ModuleType) -> list[str]:
    """Names in ``module.__all__`` (and public methods/properties of its public classes, the ones the
    class defines or inherits from a class of the same package) that carry no docstring of their own.
    An override of a method a base class outside the package documents (``nn.Module.extra_repr``) is
    documented there."""
    missing = []
    package = module.__name__.split(".")[0]
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or callable(obj)):
            continue  # data such as __version__ cannot carry a docstring
        if not _has_own_doc(obj):
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        upstream = {attr for klass in obj.__mro__ if (klass.__module__ or "").split(".")[0] != package
                    for attr in vars(klass)}
        seen = set()
        for klass in obj.__mro__:
            if not (klass.__module__ or "").split(".")[0] == package:
                continue
            for attr, member in vars(klass).items():
                if attr.startswith("_") or attr in seen or attr in upstream:
                    continue
                seen.add(attr)
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property) or inspect.isfunction(member):
                    if not (member.__doc__ or "").strip():
                        missing.append(f"{name}.{attr}")
    return missing


def test_every_public_name_and_method_has_a_docstring():
    assert undocumented(fastblend) == []


def test_docstring_walk_finds_what_is_missing():
    fake = types.ModuleType("fakepkg")

    def documented():
        """Has one."""

    def bare():
        pass

    @dataclasses.dataclass
    class Record:
        x: int

        def method(self):
            pass

        @property
        def size(self):
            return 1

        def _private(self):
            pass

    class Fine:
        """Documented, and so is its method."""

        def run(self):
            """Runs."""

    for obj in (documented, bare, Record, Fine):
        obj.__module__ = "fakepkg"
    fake.documented, fake.bare, fake.Record, fake.Fine, fake.VERSION = documented, bare, Record, Fine, "1.0"
    fake.__all__ = ["documented", "bare", "Record", "Fine", "VERSION"]
    assert undocumented(fake) == ["bare", "Record", "Record.method", "Record.size"]


# ------------------------------------------------------------------------------------------------
# The API reference site
# ------------------------------------------------------------------------------------------------

def _mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs", reason="the docs extra (mkdocs, mkdocstrings[python]) is not installed")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(site)], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_api_reference_builds_in_strict_mode(tmp_path):
    got = _mkdocs_build(ROOT, tmp_path / "site")
    assert got.returncode == 0, got.stdout + got.stderr
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    not_rendered = [name for name in fastblend.__all__ if f'id="fastblend.{name}"' not in reference]
    assert not_rendered == [], f"in fastblend.__all__ but not in the API reference: {not_rendered}"
    assert (tmp_path / "site" / "method" / "index.html").is_file(), "docs/method.md is not in the site"


STAND_IN = '''
"""A stand-in for fastblend: two public names."""

__all__ = ["Thing", "good"]


def good(x: int, y: int = 0, z: int = 0) -> int:
    """Returns ``x``; see :class:`Thing` and [`Thing.run`][fastblend.Thing.run].

    Args:
        x: a number.
        y,
            z: two more, documented together.
    """
    return x


class Thing:
    """A thing; :meth:`run` runs it."""

    def run(self) -> None:
        """Runs."""
'''

BREAKS = {
    "role naming nothing": (":class:`Thing`", ":class:`Gone`", "`Gone`, which does not exist"),
    "markdown cross-reference to nothing": ("[fastblend.Thing.run]", "[fastblend.Thing.gone]",
                                            "Could not find cross-reference target"),
    "parameter the signature lacks": ("x: a number.", "w: a number.", "does not appear in the function signature"),
    "grouped parameter the signature lacks": ("z: two more", "q: two more",
                                              "does not appear in the function signature"),
}


@pytest.mark.parametrize("case", [None, *BREAKS])
def test_strict_build_fails_on_a_broken_reference(tmp_path, case):
    """The site's own configuration and docs over a stand-in package: clean, it builds; each defect fails it."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy2(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    source = textwrap.dedent(STAND_IN)
    if case is not None:
        old, new, _ = BREAKS[case]
        assert old in source
        source = source.replace(old, new)
    (project / "fastblend").mkdir()
    (project / "fastblend" / "__init__.py").write_text(source, encoding="utf-8")
    got = _mkdocs_build(project, tmp_path / "site")
    output = got.stdout + got.stderr
    if case is None:
        assert got.returncode == 0, output
    else:
        assert got.returncode != 0, output
        assert BREAKS[case][2] in output, output
