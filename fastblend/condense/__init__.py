"""Blend condensation of the retain set (SPEC §1.2–1.4); see :mod:`fastblend.condense.blend`."""

from ..plots import save_blend_grid
from .blend import CPU_CHUNK as CPU_CHUNK
from .blend import MOMENTUM as MOMENTUM
from .blend import (
    BlendResult,
    blend_clusters,
    blend_lr,
    check_matcher,
    condense,
    matcher_seed,
)
from .blend import _embed_fn as _embed_fn
from .blend import _make_matcher as _make_matcher
from .blend import _matcher_dtype as _matcher_dtype
from .blend import default_chunk_size as default_chunk_size
from .blender import BLENDER_MODES as BLENDER_MODES
from .blender import Blender
from .checks import NORMALIZE_MODES as NORMALIZE_MODES
from .reduced import ReducedRetainSet

__all__ = [
    "BlendResult",
    "Blender",
    "ReducedRetainSet",
    "blend_clusters",
    "blend_lr",
    "check_matcher",
    "condense",
    "matcher_seed",
    "save_blend_grid",
]
