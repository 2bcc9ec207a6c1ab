"""The package's one progress switch.

Every function with a ``progress`` argument takes ``True`` (show tqdm bars), ``False`` (never) or
``None``, the default: off, unless the environment variable ``FASTBLEND_PROGRESS=1`` turns bars on
for the whole package. A library call is therefore quiet; the ``fastblend`` command turns bars on
(``--quiet`` off). When bars are on, tqdm's own environment (``TQDM_DISABLE=1``, ``TQDM_MININTERVAL``,
...) still applies, because fastblend passes no ``disable=`` then.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

ENV = "FASTBLEND_PROGRESS"


def progress_enabled(progress: bool | None) -> bool:
    """``progress`` if given, else whether ``FASTBLEND_PROGRESS`` is set to something other than 0."""
    if progress is None:
        return os.environ.get(ENV, "").strip() not in ("", "0")
    return bool(progress)


def bar(iterable: Iterable | None = None, *, progress: bool | None, **kwargs: Any):
    """A ``tqdm.auto.tqdm`` over ``iterable`` (or a manual bar with ``total=``), disabled unless
    :func:`progress_enabled`."""
    from tqdm.auto import tqdm

    if not progress_enabled(progress):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
