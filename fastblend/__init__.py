"""fastblend: fast kernels for approximate machine unlearning (Blend condensation + A-AMU).

The public API, in the groups the README follows:

- **Condense the retain set (Blend)**: :class:`BlendIndex` (group and blend once, ``.reduce(forget)``
  per request -> :class:`ReducedRetainSet`; multi-round: the cumulative forget set), :func:`condense`
  (build and reduce in one call), :func:`extract_features`, :func:`group` -> :class:`Clustering`.
- **Accelerate unlearning (A-AMU)**, ranked from most packaged to most manual: :func:`unlearn` with an
  ``a_*`` method, :func:`prepare_unlearning` (drop-in for a loader-based loop), :class:`AAMUStep` (the one
  step, for a hand-written loop), and its parts :class:`AAMULoss`, :func:`steepen`, :class:`ForgetSampler`,
  :class:`UnseenSampler`; the paper's recipe is ``fastblend.recipe.RECIPE``, the recipes ``config.request`` picks in
  its place (whole class, difficulty-matched) ``fastblend.methods.aamu_configs``.
- **Unlearning methods**: :func:`unlearn` -> :class:`UnlearnResult`, :func:`train_model`,
  :func:`available_methods`, :func:`presets`; :class:`AutoStop` ends a run when the forget set behaves like
  held-out data (``unlearn(..., stop="auto")``), without Retrain; :func:`matched_recipe` gives the
  difficulty-matched recipe for scattered-sample requests (``config=matched_recipe("a_finetune")``, docs/method.md
  §7.10), the one measured inside Retrain's band on atypical forget images.
- **Evaluation**: :func:`accuracy`, :func:`mia_score`, :func:`svc_mia`.
- **Data and models**: :func:`load_dataset`, :func:`make_split`, :class:`MemmapImages` (images larger than
  memory, streamed), :func:`random_convnet`.
- **Kernels**: :func:`segment_blend`, :func:`quantile_transform`, :func:`quantile_mmd`, and which
  backend runs them: :func:`available_backends`, :func:`explain`.

Everything else lives in its module: timing (``fastblend.metrics.StageTimer``), plots
(``fastblend.experiments.plots``), the Blend's internals (``fastblend.condensation``), the end-to-end runs
(``fastblend.experiments``: runs, settings, results, cache, plots and the command line, built on this
library; nothing here imports it), and the two oracles of the tests and benchmarks, imported by no module
of the package: the literal research-code Blend (``fastblend.condensation.reference``) and the kernels'
plain-PyTorch versions (``fastblend.ops.reference``).
"""

from ._version import package_version as _package_version
from .aamu import AAMULoss, AAMULossOutput, AAMUStep, ForgetSampler, UnseenSampler, steepen
from .autostop import AutoStop
from .condensation import BlendIndex, ReducedRetainSet, condense
from .datasets import load_dataset, make_split
from .difficulty import matched_unseen
from .dropin import prepare_unlearning
from .grouping import Clustering, extract_features, group
from .memmap import MemmapImages
from .methods import UnlearnResult, available_methods, matched_recipe, presets, train_model, unlearn
from .metrics import accuracy, mia_score, svc_mia
from .models import random_convnet
from .ops import quantile_mmd, quantile_transform, segment_blend
from .ops._dispatch import available_backends, explain

__version__ = _package_version()  # from the installed metadata: pyproject.toml is the one source

__all__ = [
    # Blend
    "BlendIndex",
    "Clustering",
    "ReducedRetainSet",
    "condense",
    "extract_features",
    "group",
    # A-AMU
    "AAMULoss",
    "AAMULossOutput",
    "AAMUStep",
    "ForgetSampler",
    "UnseenSampler",
    "prepare_unlearning",
    "steepen",
    # methods
    "AutoStop",
    "UnlearnResult",
    "matched_unseen",
    "matched_recipe",
    "available_methods",
    "presets",
    "train_model",
    "unlearn",
    # evaluation
    "accuracy",
    "mia_score",
    "svc_mia",
    # data and models
    "MemmapImages",
    "load_dataset",
    "make_split",
    "random_convnet",
    # kernels and backends
    "available_backends",
    "explain",
    "quantile_mmd",
    "quantile_transform",
    "segment_blend",
    "__version__",
]
