"""Point citations of the old out-of-repo method contract (SPEC.md) at docs/method.md.

    python scripts/cite_method_doc.py [--check] [--doc docs/method.md] PATH [PATH ...]

Rewrites, in every text file under the given paths (files or folders, recursively):

* ``SPEC §n`` -> ``docs/method.md §n`` (also when a line break separates ``SPEC`` and ``§``);
* ``../shared/SPEC.md``, ``/work/shared/SPEC.md``, ``SPEC.md`` -> ``docs/method.md`` (dropping a
  following "(kept outside the repo)");
* ``the SPEC`` / ``The SPEC`` -> ``docs/method.md`` (so ``the SPEC's`` -> ``docs/method.md's``);
* any other standalone word ``SPEC`` -> ``docs/method.md`` (``TORCH_SPEC`` and the like are left
  alone: an underscore or letter next to it makes it part of another name).

Then every section a file cites as ``docs/method.md §n`` must exist in the doc as a heading
(``## §n ...``) or a labelled paragraph (``**§n**``). Lists and ranges after the citation are
checked too: ``§0, §6``, ``§1.2–1.3`` and ``§2.2-2.4`` (every section in the range).
If any cited number is missing, the script lists ``file:line: §n`` and exits 1 WITHOUT writing
anything. ``--check`` writes nothing either way and lists the files it would change.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TARGET = "docs/method.md"
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".rst", ".txt", ".cpp", ".cc", ".c", ".h", ".hpp", ".cu", ".toml",
                 ".cfg", ".ini", ".sh", ".yml", ".yaml", ".json"}
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}

NUM = r"\d+(?:\.\d+)*"
_OUTSIDE = re.compile(r"(SPEC\.md`?)\s*\(kept outside the repo\)")
_PATH = re.compile(r"(?:\.\./shared/|/work/shared/)?\bSPEC\.md\b")
_SECTION = re.compile(r"(?<![A-Za-z0-9_])SPEC(\s+)(?=§)")
_THE = re.compile(r"\b[Tt]he SPEC(?![A-Za-z0-9_])")
_BARE = re.compile(r"(?<![A-Za-z0-9_./])SPEC(?![A-Za-z0-9_])")
# a citation: the doc's name, then "§n", then more "§n" / ranges joined by commas, "and", dashes
_CITE = re.compile(re.escape(TARGET) + r"\s+§(" + NUM + r"(?:\s*(?:[–-]|,|and)\s*§?" + NUM + r")*)")
_HEADING = re.compile(r"^#{1,6}\s+§(" + NUM + r")\b", re.M)
_LABEL = re.compile(r"\*\*§(" + NUM + r")\b")


def rewrite(text: str) -> str:
    text = _OUTSIDE.sub(r"\1", text)
    text = _PATH.sub(TARGET, text)
    text = _SECTION.sub(TARGET + r"\1", text)
    text = _THE.sub(TARGET, text)
    return _BARE.sub(TARGET, text)


def sections(doc: str) -> set[str]:
    return set(_HEADING.findall(doc)) | set(_LABEL.findall(doc))


def _expand(lo: str, hi: str) -> list[str]:
    """``1.2``..``1.4`` -> 1.2, 1.3, 1.4 (same prefix); otherwise just the two ends."""
    a, b = lo.split("."), hi.split(".")
    if len(a) == len(b) and a[:-1] == b[:-1] and int(a[-1]) <= int(b[-1]):
        return [".".join(a[:-1] + [str(i)]) for i in range(int(a[-1]), int(b[-1]) + 1)]
    return [lo, hi]


def cited(text: str) -> list[tuple[int, str]]:
    """(line number, section number) of every section cited as ``docs/method.md §...``."""
    out = []
    for m in _CITE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        parts = re.split(r"\s*(,|and|[–-])\s*", m.group(1))
        nums = [p.lstrip("§") for p in parts[0::2]]
        seps = parts[1::2]
        out += [(line, nums[0])]
        for sep, prev, cur in zip(seps, nums, nums[1:]):
            out += [(line, n) for n in (_expand(prev, cur)[1:] if sep in "–-" else [cur])]
    return out


def files_under(paths: list[Path], skip: set[Path]) -> list[Path]:
    found = []
    for p in paths:
        if not p.exists():
            raise SystemExit(f"cite_method_doc: no such path: {p}")
        candidates = [p] if p.is_file() else sorted(
            f for f in p.rglob("*") if f.is_file() and not SKIP_DIRS.intersection(f.relative_to(p).parts))
        found += [f for f in candidates if f.suffix in TEXT_SUFFIXES and f.resolve() not in skip]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="files or folders to rewrite")
    ap.add_argument("--doc", type=Path, default=Path(__file__).resolve().parent.parent / TARGET,
                    help=f"the method document whose headings are checked (default: {TARGET} of this repo)")
    ap.add_argument("--check", action="store_true", help="write nothing; list files that would change")
    args = ap.parse_args(argv)

    known = sections(args.doc.read_text(encoding="utf-8"))
    skip = {Path(__file__).resolve(), args.doc.resolve()}
    changed, missing = {}, []
    for f in files_under(args.paths, skip):
        try:
            old = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite(old)
        if new != old:
            changed[f] = new
        missing += [f"{f}:{line}: §{n}" for line, n in cited(new) if n not in known]
    if missing:
        print(f"cite_method_doc: {len(missing)} cited section(s) have no heading in {args.doc}; nothing written:",
              file=sys.stderr)
        print("\n".join(missing), file=sys.stderr)
        return 1
    for f, text in changed.items():
        if args.check:
            print(f"would change {f}")
        else:
            f.write_text(text, encoding="utf-8")
            print(f"rewrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
