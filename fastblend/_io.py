"""Atomic file writes: a file either keeps its old content or holds the whole new one.

Each write goes to a temporary file in the target's folder, is flushed to disk and then renamed
over the target (``os.replace``, atomic on POSIX and Windows), so a process killed mid-write never
leaves a truncated file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically; the folder must exist. Returns the path."""
    return _atomic_write(path, lambda fh: torch.save(obj, fh))
