"""fastblend: fast kernels for approximate machine unlearning (Blend condensation + A-AMU).

The public API, in the groups the README follows:

- **Condense the retain set (Blend)**: :func:`extract_features`, :func:`group` -> :class:`Clustering`,
  :func:`condense` -> :class:`ReducedRetainSet`, :class:`Blender` (multi-round), :class:`BlendIndex`
  (group and blend once, ``.reduce(forget)`` per request).
- **Accelerate unlearning (A-AMU)**: :func:`prepare_unlearning` (drop-in for a loader-based loop),
  :func:`accelerate` / :class:`Accelerator`, :class:`AAMULoss`, :func:`steepen`, :class:`ForgetSampler`,
  :class:`UnseenSampler`.
- **Unlearning methods**: :func:`unlearn` -> :class:`UnlearnResult`, :func:`train_model`,
  :func:`available_methods`, :func:`presets`.
- **Evaluation**: :func:`accuracy`, :func:`mia_score`, :func:`svc_mia`.
- **Data and models**: :func:`load_dataset`, :func:`make_split`, :class:`MemmapImages` (images larger than
  memory, streamed), :func:`random_convnet`.
- **Kernels**: :func:`segment_blend`, :func:`quantile_transform`, :func:`quantile_mmd`, and which
  backend runs them: :func:`available_backends`, :func:`explain`.

Everything else lives in its module: timing (``fastblend.metrics.StageTimer``), the literal
research-code Blend (``fastblend.condense_reference``) and the kernels' plain-PyTorch oracle
(``fastblend.ops.reference``). The experiment wing, ``fastblend.experiments`` (the end-to-end runs,
their settings, results, cache and plots, and the command line), is built on this library; nothing
here imports it.
"""

from ._version import package_version as _package_version
from .aamu import AAMULoss, AAMULossOutput, Accelerator, ForgetSampler, UnseenSampler, accelerate, steepen
from .condense import Blender, BlendIndex, ReducedRetainSet, condense
from .datasets import load_dataset, make_split
from .dropin import prepare_unlearning
from .grouping import Clustering, extract_features, group
from .memmap import MemmapImages
from .methods import UnlearnResult, available_methods, presets, train_model, unlearn
from .metrics import accuracy, mia_score, svc_mia
from .models import random_convnet
from .ops import quantile_mmd, quantile_transform, segment_blend
from .ops._dispatch import available_backends, explain

__version__ = _package_version()  # from the installed metadata: pyproject.toml is the one source

__all__ = [
    # Blend
    "BlendIndex",
    "Blender",
    "Clustering",
    "ReducedRetainSet",
    "condense",
    "extract_features",
    "group",
    # A-AMU
    "AAMULoss",
    "AAMULossOutput",
    "Accelerator",
    "ForgetSampler",
    "UnseenSampler",
    "accelerate",
    "prepare_unlearning",
    "steepen",
    # methods
    "UnlearnResult",
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
