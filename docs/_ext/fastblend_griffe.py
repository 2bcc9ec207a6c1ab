"""Griffe extension for fastblend's API reference (loaded by mkdocs.yml; not part of the package).

fastblend's docstrings are Google style with Sphinx roles (``:func:`condense```). mkdocstrings reads
Markdown cross-references (``[`condense`][fastblend.condense]``), so, once the package is loaded, this
extension rewrites every docstring of the package:

- A role whose target is part of the public API (``fastblend.__all__`` and the members of its classes)
  becomes a cross-reference to it; the site then links it, and ``mkdocs build --strict`` fails if the
  target is not rendered. A role naming a private or external object becomes plain code.
- A role naming nothing that exists is a warning (so a strict build fails): after a rename, every
  docstring that still names the old object is reported by file and line.
- A Google ``Args:`` entry that documents several parameters at once (``lam, k, kappa: ...``) becomes
  one entry per parameter, so griffe checks each name against the signature.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")
_ARGS_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments"
                           r"|Other Parameters):\s*$")
_WRAPPED_NAMES = re.compile(r"^\s+\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*\s*,\s*$")  # "a, b," and the rest below
_GROUPED_ENTRY = re.compile(r"^(\s+)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*\([^)]*\))?:(.*)$")
# Top-level names that a role may name without fastblend knowing them: rendered as code, never warned.
_EXTERNAL = ("torch", "numpy", "np", "faiss", "triton", "sklearn", "tqdm", "matplotlib", "scipy", "PIL", "typing")


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_grouped_params(text: str) -> str:
    """``a, b: text`` entries of an ``Args:`` section (the names may wrap onto a second line) ->
    ``a: text`` and ``b: text``."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent = None
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _ARGS_SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
        elif section_indent is not None and line.strip() and _indent(line) <= section_indent:
            section_indent = None
        if section_indent is not None and not header and _WRAPPED_NAMES.match(line) and i + 1 < len(lines):
            line = lines[i] = line.rstrip() + " " + lines[i + 1].strip()
            del lines[i + 1]
        entry = _GROUPED_ENTRY.match(line) if section_indent is not None and not header else None
        if entry is None:
            out.append(line)
            i += 1
            continue
        body = [entry.group(4)]
        i += 1
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > _indent(line):
            body.append("\n" + lines[i])
            i += 1
        for name in (n.strip() for n in entry.group(2).split(",")):
            out.append(f"{entry.group(1)}{name}{entry.group(3) or ''}:{''.join(body)}")
    return "\n".join(out)


class _External(Exception):
    """A role names an object outside fastblend (torch, numpy, ...): rendered as code."""


def _final(obj):
    if not obj.is_alias:
        return obj
    try:
        return obj.final_target
    except (griffe.AliasResolutionError, griffe.CyclicAliasError) as exc:
        raise _External from exc


class FastblendDocstrings(griffe.Extension):
    """Rewrites roles into checked cross-references and splits grouped ``Args:`` entries."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "fastblend":
            return
        objects = list(_walk(pkg))
        self._shadowed: dict[str, griffe.Object] = {}
        public = self._public(pkg)
        for obj in objects:
            if obj.docstring is None:
                continue
            text = _split_grouped_params(obj.docstring.value)
            obj.docstring.value = _ROLE.sub(lambda m, o=obj: self._rewrite(m, o, pkg, public), text)

    def _public(self, pkg: griffe.Module) -> dict[int, str]:
        """``id(object) -> rendered path`` for every name of ``fastblend.__all__`` and its classes' members.

        A function exported under the name of the module that defines it (``ops/segment_blend.py``'s
        ``segment_blend``) reads to griffe as the module; the export is pointed at the function, as
        Python's own import does."""
        public: dict[int, str] = {}
        for name in pkg.exports or []:
            name = name if isinstance(name, str) else name.name
            member = pkg.members.get(name)
            if member is None:
                continue
            try:
                target = _final(member)
            except _External:
                continue
            inner = target.members.get(name) if target.is_module else None
            if inner is not None and not inner.is_module:
                try:
                    target = _final(inner)
                except _External:
                    continue
                self._shadowed[name] = member
                pkg.set_member(name, griffe.Alias(name, target, parent=pkg))
            public[id(target)] = f"{pkg.name}.{name}"
            if target.is_class:
                for sub_name, sub in target.all_members.items():
                    if not sub_name.startswith("_"):
                        try:
                            public.setdefault(id(_final(sub)), f"{pkg.name}.{name}.{sub_name}")
                        except _External:
                            pass
        return public

    def _rewrite(self, match: re.Match, obj: griffe.Object, pkg: griffe.Module, public: dict[int, str]) -> str:
        tilde, name = match.group(1), match.group(2).strip()
        shown = name.rsplit(".", 1)[-1] if tilde else name
        if name.split(".")[0] in _EXTERNAL:
            return f"`{shown}`"
        try:
            target = self._lookup(obj, name, pkg)
        except _External:
            return f"`{shown}`"
        if target is None:
            lineno = obj.docstring.lineno if obj.docstring is not None else obj.lineno
            griffe.logger.warning(f"{obj.relative_filepath}:{lineno}: docstring of {obj.path} names "
                                  f"`{name}`, which does not exist")
            return f"`{shown}`"
        path = public.get(id(target))
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    def _lookup(self, obj: griffe.Object, name: str, pkg: griffe.Module):
        """The object ``name`` means in ``obj``'s docstring (aliases followed), or None if there is none."""
        if name.startswith("."):
            base = obj.module if obj.module.is_init_module else obj.module.parent
            for _ in range(len(name) - len(name.lstrip(".")) - 1):
                base = base.parent
            parts = name.lstrip(".").split(".")
        else:
            head, *parts = name.split(".")
            base = pkg if head == pkg.name else None
            scope = obj
            while base is None and scope is not None:
                if head in scope.members:
                    base = scope.members[head]
                elif scope.name == head and not scope.is_module:
                    base = scope
                scope = scope.parent
            if base is None:
                return None
        if base is pkg and parts and parts[0] in self._shadowed and len(parts) > 1:
            base, parts = self._shadowed[parts[0]], parts[1:]  # fastblend.condense.x: the subpackage's x
        current = _final(base)
        for part in parts:
            members = current.all_members if current.is_class else current.members
            if part not in members:
                return None
            current = _final(members[part])
        return current
