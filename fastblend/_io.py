"""Atomic writes and path-naming reads, shared by every module that persists something.

A file is written to a temporary sibling and renamed into place (``os.replace``), so a crash or a
full disk never leaves a truncated file under the final name. A read that fails names the file.
A leaf: imports torch and the standard library only.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "atomic_write", "atomic_write_text", "load_torch"]


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | Path) -> None:
    """``Path(path).write_text(text)``, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_torch(path: str | Path, fn: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a truncated or foreign file raises
    ``ValueError`` naming ``fn`` and the path (a missing one ``FileNotFoundError``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fn}: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"{fn}: cannot read {str(path)!r} (truncated or not a torch.save file): "
                         f"{type(exc).__name__}: {exc}") from exc
