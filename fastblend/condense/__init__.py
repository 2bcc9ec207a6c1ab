"""Blend condensation of the retain set (docs/method.md §1.2–1.4).

After a forget request, every cluster of the grouping is either **touched** (at least one member is
forgotten) or **free**. Touched clusters keep their non-forgotten members as raw images (the
*residual*); each non-empty free cluster is condensed into one blended image
``x̃_i = Σ_j (w_ij / Σ_k w_ik) X_ij`` whose per-member scalar weights are optimised so that a
frozen random matcher network ``f_m`` sees the blend like the mean of its members (SGD with
momentum 0.5 and the reference learning rate ``lr(ipc)``, 12 iterations by default).

Modules, one concern each:

- :mod:`.core`: the :func:`condense` entry point, the round core, :func:`blend_lr`, :func:`matcher_seed`;
- :mod:`.blender`: multi-round unlearning (:class:`Blender`);
- :mod:`.blend`: the batched Blend optimisation (:func:`blend_clusters`, :func:`check_matcher`);
- :mod:`.chunked`: the Blend one chunk of clusters at a time (``member_chunk``) and sharded over the
  ranks of a ``torch.distributed`` process group, each term keeping the global ``1/K``;
- :mod:`.source`: training images as a tensor or a streamed map-style Dataset (rows, labels,
  fingerprint);
- :mod:`.split`: the split (F-sampling) into touched and free clusters;
- :mod:`.checks`: input checks;
- :mod:`.reduced`: :class:`ReducedRetainSet` and its save/load;
- :mod:`.index`: :class:`BlendIndex`, group and blend once, answer every request with a split.

``__all__`` below is the public API. The names each submodule lists in its own ``__all__`` are
fastblend-internal (shared between these modules and ``fastblend.condense_reference``), not a
stable API.
"""

from .blend import CPU_CHUNK as CPU_CHUNK
from .blend import MOMENTUM as MOMENTUM
from .blend import BlendResult, blend_clusters, check_matcher
from .blend import default_chunk_size as default_chunk_size
from .blender import BLENDER_MODES as BLENDER_MODES
from .blender import Blender
from .checks import NORMALIZE_MODES as NORMALIZE_MODES
from .core import blend_lr, condense, matcher_seed
from .index import BlendIndex
from .reduced import ReducedRetainSet

__all__ = [
    "BlendIndex",
    "BlendResult",
    "Blender",
    "ReducedRetainSet",
    "blend_clusters",
    "blend_lr",
    "check_matcher",
    "condense",
    "matcher_seed",
]
