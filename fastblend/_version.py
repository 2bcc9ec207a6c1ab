"""The installed version of a distribution (fastblend's own or an optional dependency's)."""

from __future__ import annotations

import importlib.metadata


def package_version(distribution: str = "fastblend") -> str | None:
    """Installed version of ``distribution`` from its package metadata; for fastblend itself an
    uninstalled source tree gives ``"0+unknown"``, any other missing distribution ``None``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown" if distribution == "fastblend" else None
