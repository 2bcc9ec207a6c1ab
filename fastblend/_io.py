"""Atomic writes and path-naming reads, shared by every module that persists something.

Each write goes to a temporary file in the target's folder, is flushed to disk and then renamed over
the target (``os.replace``, atomic on POSIX and Windows), so a process killed mid-write never leaves a
truncated file under the final name, and ends with the permissions a plain ``open()`` would give
(``0o666`` less the process umask; a bare temporary file would be ``0o600``). A write into a folder that
does not exist names the folder; a read that fails names the file.
A leaf: imports torch and the standard library only.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

__all__ = ["CHECKSUM_KEY", "FULL_HASH_BYTES", "LOAD_ERRORS", "SAMPLE_ROWS", "atomic_save", "atomic_write_text",
           "checksum_status", "hashed_rows", "load_torch", "make_temp", "payload_checksum", "plain_file_mode",
           "with_checksum"]

# What a content fingerprint of training images hashes (the model/index cache keys, a saved set's source check):
FULL_HASH_BYTES = 256 * 2**20  # images up to this many bytes are hashed whole
SAMPLE_ROWS = 8192  # else this many evenly spaced rows, the first and the last among them


def hashed_rows(n: int, row_bytes: int) -> torch.Tensor | None:
    """The rows a fingerprint hashes of ``n`` images of ``row_bytes`` each: ``None`` (every row) up to
    :data:`FULL_HASH_BYTES`, else ``[<= SAMPLE_ROWS]`` int64 evenly spaced rows, first and last included."""
    if n * row_bytes <= FULL_HASH_BYTES or n <= SAMPLE_ROWS:
        return None
    return torch.linspace(0, n - 1, SAMPLE_ROWS).round().to(torch.int64).unique()

# --------------------------------------------------------------------------------------------
# content checksums of what is saved (a saved BlendIndex, a ReducedRetainSet, a cache entry)
# --------------------------------------------------------------------------------------------
#: the key a checksummed file keeps its checksum under, beside the payload's own keys
CHECKSUM_KEY = "sha256"


def _digest(h: Any, value: Any) -> None:
    """Feed ``value`` (tensors, numbers, strings, ``None``, dicts, lists and tuples of them) to ``h`` in a
    canonical order: a dict by its keys sorted as strings, a tensor as its shape, dtype and bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        h.update(f"D{len(value)}|".encode())
        for key in sorted(value, key=lambda k: f"{type(k).__name__}:{k}"):
            _digest(h, key)
            _digest(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__[0]}{len(value)}|".encode())
        for item in value:
            _digest(h, item)
    elif isinstance(value, float) and math.isnan(value):
        h.update(b"f:nan|")
    else:
        h.update(f"{type(value).__name__}:{value!r}|".encode())


def payload_checksum(payload: Any) -> str:
    """SHA-256 (hex) of a payload of tensors, numbers, strings and ``None`` nested in dicts, lists and
    tuples: every tensor's shape, dtype and bytes and every other value, in a canonical order (a dict's
    keys sorted), so a flipped byte anywhere in the tensors or a changed setting changes it. Tensors may
    live on any device (hashed from a CPU copy)."""
    h = hashlib.sha256()
    _digest(h, payload)
    return h.hexdigest()


def with_checksum(blob: dict) -> dict:
    """``blob`` plus ``{CHECKSUM_KEY: payload_checksum(blob)}``: what a checksummed file saves."""
    if CHECKSUM_KEY in blob:
        raise ValueError(f"with_checksum: the payload already has a {CHECKSUM_KEY!r} key")
    return {**blob, CHECKSUM_KEY: payload_checksum(blob)}


def checksum_status(blob: dict) -> bool | None:
    """Whether a loaded ``blob`` matches the checksum saved in it (:func:`with_checksum`): ``True`` it
    does, ``False`` it does not (the file was altered after it was written), ``None`` it holds none (a
    file written before checksums, or not by fastblend)."""
    if not isinstance(blob, dict) or CHECKSUM_KEY not in blob:
        return None
    saved = blob[CHECKSUM_KEY]
    rest = {k: v for k, v in blob.items() if k != CHECKSUM_KEY}
    return isinstance(saved, str) and saved == payload_checksum(rest)


# what torch.load raises on a truncated or foreign file (a junk file: KeyError from the legacy unpickler)
LOAD_ERRORS = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, TypeError,
               AttributeError, IndexError, UnicodeDecodeError)


def plain_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666`` less the process umask."""
    try:  # Linux reports the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def make_temp(target: str | os.PathLike, suffix: str = ".tmp", fn: str | None = None) -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file next to ``target`` (what an atomic write renames over it)
    with :func:`plain_file_mode` permissions. A missing folder raises ``FileNotFoundError`` naming it
    (prefixed by ``fn``)."""
    target = Path(target)
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{fn + ': ' if fn else ''}cannot write {str(target)!r}: no such folder "
                                f"{str(folder)!r}")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=suffix)
    try:
        os.chmod(tmp, plain_file_mode())
    except OSError:
        pass  # a file system without permission bits keeps what it gives
    return fd, tmp


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], fn: str | None = None) -> Path:
    target = Path(path)
    fd, tmp = make_temp(target, fn=fn)
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


def atomic_write_text(path: str | os.PathLike, text: str, fn: str | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; the folder must exist (``fn`` prefixes the error
    that says it does not). Returns the path."""
    return _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), fn)


def atomic_save(obj: Any, path: str | os.PathLike, fn: str | None = None) -> Path:
    """``torch.save(obj, path)`` atomically; the folder must exist (``fn`` prefixes the error that
    says it does not). Returns the path."""
    return _atomic_write(path, lambda fh: torch.save(obj, fh), fn)


def load_torch(path: str | os.PathLike, fn: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a truncated or foreign file raises
    ``ValueError`` naming ``fn`` and the path (a missing one ``FileNotFoundError``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fn}: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        raise ValueError(f"{fn}: cannot read {str(path)!r} (truncated or not a torch.save file): "
                         f"{type(exc).__name__}: {exc}") from exc
