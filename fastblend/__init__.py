"""fastblend: fast kernels for approximate machine unlearning (Blend condensation + A-AMU)."""

from .aamu import AAMULoss, AAMULossOutput, Accelerator, ForgetSampler, UnseenSampler, accelerate, steepen
from .condense import Blender, ReducedRetainSet, blend_lr, condense, save_blend_grid
from .condense_reference import condense_reference
from .data import load_dataset
from .grouping import Clustering, extract_features, group
from .machine import package_version as _package_version
from .methods import UnlearnResult, available_methods, presets, train_model, unlearn
from .metrics import StageTimer, accuracy, mia_score, svc_mia
from .ops import quantile_mmd, quantile_transform, segment_blend
from .ops._dispatch import available_backends, explain

__version__ = _package_version()  # from the installed metadata: pyproject.toml is the one source

__all__ = [
    "AAMULoss",
    "AAMULossOutput",
    "Accelerator",
    "Blender",
    "Clustering",
    "ForgetSampler",
    "ReducedRetainSet",
    "StageTimer",
    "UnlearnResult",
    "UnseenSampler",
    "__version__",
    "accelerate",
    "accuracy",
    "available_backends",
    "available_methods",
    "blend_lr",
    "condense",
    "condense_reference",
    "explain",
    "extract_features",
    "group",
    "load_dataset",
    "mia_score",
    "presets",
    "quantile_mmd",
    "quantile_transform",
    "save_blend_grid",
    "segment_blend",
    "steepen",
    "svc_mia",
    "train_model",
    "unlearn",
]
