"""Atomic writes and path-naming reads, shared by every module that persists something.

Each write goes to a temporary file in the target's folder, is flushed to disk and then renamed over
the target (``os.replace``, atomic on POSIX and Windows), so a process killed mid-write never leaves a
truncated file under the final name. A read that fails names the file.
A leaf: imports torch and the standard library only.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

__all__ = ["atomic_save", "atomic_write_text", "load_torch"]


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; the folder must exist. Returns the path."""
    return _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically; the folder must exist. Returns the path."""
    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def load_torch(path: str | os.PathLike, fn: str) -> Any:
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
