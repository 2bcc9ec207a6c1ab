"""The cache of trained original models and Blend indexes behind ``fastblend run``/``demo``.

Location: ``cache_dir`` if given, else ``$FASTBLEND_CACHE``, else ``$XDG_CACHE_HOME/fastblend``, else
``~/.cache/fastblend``; models live in its ``models/`` folder, :class:`fastblend.BlendIndex` files (what
is built once per training set) in ``indexes/``. An entry's key hashes the training
settings together with a fingerprint of the training data itself (:func:`data_fingerprint`), so two
data sets of the same size never share a model. Entries are written atomically; an entry that cannot
be read is reported (a ``RuntimeWarning`` naming the file) and treated as a miss, and the caller's
retrained model replaces it. Every entry carries a SHA-256 checksum of its content
(:func:`fastblend._io.with_checksum`), verified on load: an entry altered after it was written (flipped
bytes, changed weights), or one written before checksums, is such an unreadable entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_save, checksum_status, hashed_rows, with_checksum

KEY_VERSION = 3
_MODEL_FORMAT = "fastblend.model-cache"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, ``$FASTBLEND_CACHE``, ``$XDG_CACHE_HOME/fastblend`` or
    ``~/.cache/fastblend``, the first that is set."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("FASTBLEND_CACHE"):
        return Path(os.environ["FASTBLEND_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fastblend"
    return Path.home() / ".cache" / "fastblend"


def _update(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
    if t.numel():
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 (hex) of a training set: shapes, dtypes, every label, and the image bytes — all of them
    when ``images`` holds at most ``FULL_HASH_BYTES``, else ``SAMPLE_ROWS`` evenly spaced rows (always
    the first and the last).

    Args:
        images: ``[N, ...]`` tensor, any dtype and device.
        labels: ``[N]`` tensor.
    """
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"data_fingerprint: images and labels must be tensors, got {type(images).__name__} "
                        f"and {type(labels).__name__}")
    h = hashlib.sha256()
    _update(h, labels)
    n = images.shape[0] if images.dim() else 0
    rows = hashed_rows(n, images[0].numel() * images.element_size()) if n else None
    if rows is not None:
        h.update(f"sample{tuple(images.shape)}|".encode())
        images = images[rows.to(images.device)]
    _update(h, images)
    return h.hexdigest()


def model_path(root: Path, settings: dict, fingerprint: str, stem: str, kind: str = "models") -> Path:
    """``root/<kind>/<stem>-<key>.pt``, ``key`` a hash of the JSON of ``settings`` and the data
    ``fingerprint``; ``kind`` is ``"models"`` or ``"indexes"``."""
    src = json.dumps({**settings, "data": fingerprint, "version": KEY_VERSION}, sort_keys=True, default=str)
    return root / kind / f"{stem}-{hashlib.sha256(src.encode()).hexdigest()[:16]}.pt"


def load_model(model: nn.Module, path: Path) -> bool:
    """Load the cached weights at ``path`` into ``model``: ``True`` on success, ``False`` if there is no
    entry, or if it cannot be read, fails its checksum or does not fit ``model`` (then a ``RuntimeWarning``
    names the file)."""
    if not path.exists():
        return False
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != _MODEL_FORMAT:
            raise ValueError("not a checksummed model cache entry (written by an earlier fastblend?)")
        if not checksum_status(blob):
            raise ValueError("its content checksum does not match: the file changed after it was written")
        model.load_state_dict(blob["state"])
    except Exception as exc:  # a truncated zip, a foreign file, a state dict of another model
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        warnings.warn(f"model cache entry {path} is unreadable ({why}); retraining and replacing it",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def save_model(model: nn.Module, path: Path) -> bool:
    """Write ``model``'s weights (on CPU) to ``path`` atomically. A cache that cannot be written is
    not an error: a ``RuntimeWarning`` says so and ``False`` is returned."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_save(with_checksum({"format": _MODEL_FORMAT, "state": state}), path)
    except OSError as exc:
        warnings.warn(f"could not write the model cache entry {path} ({exc}); the run goes on without it",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def load_index(path: Path) -> Any:
    """The :class:`fastblend.BlendIndex` cached at ``path``, or ``None`` if there is no entry or it
    cannot be read or fails its checksum (then a ``RuntimeWarning`` names the file and the caller
    rebuilds it)."""
    if not path.exists():
        return None
    from ..condensation import BlendIndex

    try:
        return BlendIndex._load(path, old_files="refuse")  # an entry without a checksum is rebuilt too
    except (ValueError, OSError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        warnings.warn(f"index cache entry {path} is unreadable ({why}); rebuilding and replacing it",
                      RuntimeWarning, stacklevel=2)
        return None


def save_index(index: Any, path: Path) -> bool:
    """Write ``index`` to ``path`` atomically (:meth:`fastblend.BlendIndex.save`); a cache that cannot be
    written is not an error: a ``RuntimeWarning`` says so and ``False`` is returned."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        index.save(path)
    except OSError as exc:
        warnings.warn(f"could not write the index cache entry {path} ({exc}); the run goes on without it",
                      RuntimeWarning, stacklevel=2)
        return False
    return True
