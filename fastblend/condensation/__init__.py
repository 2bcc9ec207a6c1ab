"""Blend condensation of the retain set (docs/method.md §1.2–1.4): one engine, :class:`BlendIndex`.

The training set is grouped into clusters once and every non-empty cluster is condensed into one
blended image ``x̃_i = Σ_j (w_ij / Σ_k w_ik) X_ij`` whose per-member scalar weights are optimised so
that a frozen random matcher network ``f_m`` sees the blend like the mean of its members (SGD with
momentum 0.5 and the reference learning rate ``lr(ipc)``, 12 iterations by default). A forget
request is then a split: every cluster is either **touched** (at least one member forgotten: its
non-forgotten members stay as raw images, the *residual*) or **free** (its blend is a row).

- :class:`BlendIndex`: ``BlendIndex.build(train)`` once, ``index.reduce(forget)`` per request (for
  multi-round unlearning, the cumulative forget set); :func:`condense` is both in one call.
- :class:`ReducedRetainSet`: what a request returns (a ``torch`` Dataset), with save/load.
- :func:`blend_clusters`: the batched Blend optimisation itself; :func:`check_matcher`,
  :func:`blend_lr`, :func:`matcher_seed`, :func:`default_ipc`: its checks and settings.

Modules, one concern each: :mod:`.index` (the engine and :func:`condense`), :mod:`.content_grouping`
(features and grouping in content order), :mod:`.split` (touched and free clusters), :mod:`.blend`
(the Blend, whole or one chunk of clusters at a time), :mod:`.sharded` (over the ranks of a
``torch.distributed`` group), :mod:`.recipe` (learning rate, ipc, matcher), :mod:`.source` (tensor or
streamed Dataset rows, content keys, fingerprint), :mod:`.checks` (input checks only), :mod:`.reduced`.
``__all__`` below is the public API; what the submodules list in their own ``__all__`` is internal.
``fastblend.condensation.reference`` is the literal research-code Blend: the oracle of the tests and
the baseline of the benchmarks, imported by no module of the package (like ``fastblend.ops.reference``).
"""

from .blend import CPU_CHUNK as CPU_CHUNK
from .blend import MOMENTUM as MOMENTUM
from .blend import BlendResult, blend_clusters, check_matcher
from .blend import default_chunk_size as default_chunk_size
from .checks import NORMALIZE_MODES as NORMALIZE_MODES
from .index import BlendIndex, condense
from .recipe import blend_lr, default_ipc, matcher_seed
from .reduced import ReducedRetainSet

__all__ = [
    "BlendIndex",
    "BlendResult",
    "ReducedRetainSet",
    "blend_clusters",
    "blend_lr",
    "check_matcher",
    "condense",
    "default_ipc",
    "matcher_seed",
]
