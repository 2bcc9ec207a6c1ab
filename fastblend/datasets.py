"""Loading datasets and the docs/method.md §6 unlearning protocol: load_dataset, make_split and their seeded draws.

Two steps, both deterministic::

    train, test = load_dataset("animal-mnist")           # ImageData, ImageData (normalised)
    split = make_split(train, test, forget="uniform", seed=0)
    retain_x, retain_y = split.retain_tensors()

The datasets, and how their files are read, are in :mod:`fastblend.dataset_readers` (its names, e.g.
``DATASETS`` and :func:`dataset_info`, are importable from here too).

Pixels are scaled to [0, 1] and then normalised per channel, ``(x - mean) / std``. With
``normalization="auto"`` (default) CIFAR-10, SVHN and CINIC-10 use their standard constants (the
values of the dataset-condensation code the paper builds on), and the other datasets use the mean
and std of the train images returned (after ``per_class``/``limit``); ``"train"`` always uses the
train statistics; ``"none"`` keeps [0, 1] pixels. Test images use the train constants.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

# The dataset catalogue lives in readers; fastblend.datasets stays the public home of its names.
from .dataset_readers import (
    _CIFAR_NAMES,  # noqa: F401  (the tests read it here)
    _INFO,
    ANIMAL_MNIST_INSTALL,
    DATASETS,
    DEFAULT_DATASET,
    DatasetInfo,
    _first_per_class,
    _read_animal_mnist,
    _read_cifar10,
    _read_cinic10,
    _read_digits,
    _read_svhn,
    canonical_name,
    dataset_info,
    default_data_root,
)
from .labelled_images import ImageData, _check_indices
from .memmap import MemmapImages

__all__ = ["ANIMAL_MNIST_INSTALL", "DATASETS", "DEFAULT_DATASET", "NORMALIZATIONS", "DatasetInfo", "ImageData",
           "MemmapImages", "UnlearningSplit", "canonical_name", "dataset_info", "default_data_root", "load_dataset",
           "make_split"]

NORMALIZATIONS = ("auto", "train", "none")


def whole_classes(forget_labels: torch.Tensor, retain_labels: torch.Tensor) -> list[int]:
    """The forget classes no retain label holds (forgotten whole), sorted."""
    classes = forget_labels.detach().cpu().long().unique()
    return [int(c) for c in classes[~torch.isin(classes, retain_labels.detach().cpu().long())]]


@dataclass(eq=False)  # fields are tensors: compare them explicitly
class UnlearningSplit:
    """The docs/method.md §6 split of one dataset for one unlearning request.

    Attributes:
        train, test: the full train and test sets.
        forget: ``[F]`` int64 sorted indices into ``train`` (``D_f``).
        retain: ``[N - F]`` int64 sorted indices into ``train`` (``D_r``, the complement).
        unseen: sorted indices into ``test``: the unseen pool ``D_u`` (70% of each class by default).
        evaluation: sorted indices into ``test``: held out for test accuracy and the MIA (the rest).
        forget_mode: ``"uniform"``, ``"classwise"`` or ``"custom"`` (explicit indices).
        forget_class: the forgotten class in classwise mode, else ``None``.
        seed: the seed the split was drawn with.
    """

    train: ImageData
    test: ImageData
    forget: torch.Tensor
    retain: torch.Tensor
    unseen: torch.Tensor
    evaluation: torch.Tensor
    forget_mode: str
    forget_class: int | None
    seed: int

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def whole_class(self) -> bool:
        """True when no forget class has a retain image (a whole-class request; ``config.request`` "auto")."""
        labels = self.train.labels
        forget_classes = labels[self.forget].unique()
        return len(whole_classes(forget_classes, labels[self.retain])) == forget_classes.numel()

    @property
    def forget_mask(self) -> torch.Tensor:
        """``[N]`` bool over the train set, True for ``D_f``."""
        mask = torch.zeros(len(self.train), dtype=torch.bool)
        mask[self.forget] = True
        return mask

    def _take(self, data: ImageData, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return data.images[idx], data.labels[idx]

    def retain_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [R, C, H, W] float32, labels [R] int64)`` of the retain set."""
        return self._take(self.train, self.retain)

    def forget_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [F, C, H, W] float32, labels [F] int64)`` of the forget set."""
        return self._take(self.train, self.forget)

    def unseen_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of the unseen pool (the A-AMU regulariser's reference)."""
        return self._take(self.test, self.unseen)

    def eval_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of the held-out evaluation part of the test set."""
        return self._take(self.test, self.evaluation)

    def forget_rounds(self, rounds: int) -> list[torch.Tensor]:
        """Cumulative forget sets for multi-round unlearning (docs/method.md §1.4).

        The forget set is cut, in an order drawn from ``seed``, into ``rounds`` parts whose sizes
        differ by at most one; round ``r`` (0-based) forgets parts ``0..r``. Returns ``rounds``
        sorted int64 index tensors into ``train``, each containing the previous one; the last is
        ``forget``.
        """
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= self.forget.numel():
            raise ValueError(f"forget_rounds: rounds must be an int in [1, {self.forget.numel()}] (at most the "
                             f"forget set size), got {rounds!r}")
        order = self.forget[torch.randperm(self.forget.numel(), generator=_generator(self.seed, "rounds"))]
        bounds = [(r + 1) * order.numel() // rounds for r in range(rounds)]
        return [order[:b].sort().values for b in bounds]

    def summary(self) -> dict:
        """Sizes and settings as plain Python values (for reports)."""
        return {
            "dataset": self.train.name.split("/")[0],
            "train": len(self.train), "test": len(self.test),
            "retain": int(self.retain.numel()), "forget": int(self.forget.numel()),
            "unseen": int(self.unseen.numel()), "evaluation": int(self.evaluation.numel()),
            "forget_mode": self.forget_mode, "forget_class": self.forget_class,
            "num_classes": self.num_classes, "image_shape": list(self.train.image_shape), "seed": self.seed,
        }


# ----------------------------------------------------------------------------------------------
# Seeded helpers
# ----------------------------------------------------------------------------------------------

_STREAMS = {"test": 0, "forget": 1, "class": 2, "rounds": 3, "subset": 4}


def _generator(seed: int, stream: str) -> torch.Generator:
    """An independent generator per purpose, so e.g. the forget draw does not move the test split."""
    return torch.Generator().manual_seed(int(seed) * 8 + _STREAMS[stream])


def _split_per_class(labels: torch.Tensor, fraction: float, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split: in every class, a random ``round(fraction * n_c)`` go to the first part."""
    first, second = [], []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        k = math.floor(fraction * members.numel() + 0.5)
        first.append(members[:k])
        second.append(members[k:])
    cat = (lambda parts: torch.cat(parts).sort().values if parts else torch.zeros(0, dtype=torch.int64))
    return cat(first), cat(second)


def _stratified_subset(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Exactly ``size`` sorted indices with class proportions kept (to within one per class)."""
    n = labels.numel()
    if size >= n:
        return torch.arange(n)
    shuffled = torch.randperm(n, generator=generator)
    lab = labels[shuffled]
    counts = torch.bincount(lab).to(torch.float64)
    # rank of each shuffled item within its class, as a fraction of the class size: taking the
    # smallest fractions takes every class in proportion
    by_class = torch.sort(lab, stable=True).indices
    rank = torch.empty(n, dtype=torch.float64)
    starts = torch.cumsum(counts, 0) - counts
    rank[by_class] = torch.arange(n, dtype=torch.float64) - starts[lab[by_class]]
    key = (rank + 0.5) / counts[lab]
    chosen = shuffled[torch.sort(key, stable=True).indices[:size]]
    return chosen.sort().values




# ----------------------------------------------------------------------------------------------
# make_split
# ----------------------------------------------------------------------------------------------

def make_split(train: ImageData, test: ImageData, forget: str | torch.Tensor | Sequence[int] = "uniform",
               forget_fraction: float = 0.1, forget_class: int | None = None, unseen_fraction: float = 0.7,
               seed: int = 0) -> UnlearningSplit:
    """Split ``train`` into forget/retain and ``test`` into unseen pool/evaluation (docs/method.md §0, §6).

    Args:
        train, test: from :func:`load_dataset`.
        forget: ``"uniform"``: a uniformly random ``round(forget_fraction * N)`` train images (not
            stratified); ``"classwise"``: every train image of ``forget_class`` (drawn from the
            classes present when ``None``); or explicit train indices or an ``[N]`` bool mask
            (``forget_mode="custom"``).
        forget_fraction: in (0, 1); uniform mode only.
        forget_class: classwise mode only.
        unseen_fraction: in (0, 1); share of each class of ``test`` that goes to the unseen pool,
            stratified (rounded per class), the rest being the evaluation set.
        seed: every draw uses its own ``torch.Generator`` derived from it; the test split depends
            only on ``seed`` and ``test``, never on the forget settings.
    """
    fn = "make_split"
    if not isinstance(train, ImageData) or not isinstance(test, ImageData):
        raise TypeError(f"{fn}: train and test must be ImageData (from load_dataset), got "
                        f"{type(train).__name__} and {type(test).__name__}")
    if train.image_shape != test.image_shape or train.num_classes != test.num_classes:
        raise ValueError(f"{fn}: train and test must have the same image shape and classes, got "
                         f"{train.image_shape}/{train.num_classes} and {test.image_shape}/{test.num_classes}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{fn}: seed must be an int, got {type(seed).__name__}")
    if len(train) < 2:
        raise ValueError(f"{fn}: train must hold at least 2 images, got {len(train)}")
    for arg, value in (("unseen_fraction", unseen_fraction), ("forget_fraction", forget_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{fn}: {arg} must be in (0, 1), got {value!r}")

    unseen, evaluation = _split_per_class(test.labels, float(unseen_fraction), _generator(seed, "test"))

    n = len(train)
    chosen_class = None
    if isinstance(forget, str):
        mode = forget
        if mode not in ("uniform", "classwise"):
            raise ValueError(f"{fn}: forget must be 'uniform', 'classwise' or train indices, got {forget!r}")
        if mode == "uniform":
            if forget_class is not None:
                raise ValueError(f"{fn}: forget_class is only used with forget='classwise', got "
                                 f"forget_class={forget_class!r} with forget='uniform'")
            k = min(max(math.floor(forget_fraction * n + 0.5), 1), n - 1)
            forget_idx = torch.randperm(n, generator=_generator(seed, "forget"))[:k].sort().values
        else:
            present = torch.unique(train.labels)
            if forget_class is None:
                pick = torch.randint(present.numel(), (1,), generator=_generator(seed, "class"))
                chosen_class = int(present[pick])
            else:
                if isinstance(forget_class, bool) or not isinstance(forget_class, (int, np.integer)):
                    raise TypeError(f"{fn}: forget_class must be an int, got {type(forget_class).__name__}")
                chosen_class = int(forget_class)
                if not 0 <= chosen_class < train.num_classes:
                    raise ValueError(f"{fn}: forget_class must be in [0, {train.num_classes}), got {chosen_class}")
                if not bool((present == chosen_class).any()):
                    raise ValueError(f"{fn}: forget_class {chosen_class} has no train images")
            forget_idx = (train.labels == chosen_class).nonzero().flatten()
            if forget_idx.numel() == n:
                raise ValueError(f"{fn}: forgetting class {chosen_class} would leave an empty retain set")
    else:
        mode = "custom"
        if forget_class is not None:
            raise ValueError(f"{fn}: forget_class is only used with forget='classwise'")
        idx = torch.as_tensor(forget)
        if idx.numel() == 0:
            idx = idx.to(torch.int64)  # an empty list arrives as float32
        if idx.dtype == torch.bool and idx.shape == (n,):
            idx = idx.nonzero().flatten()
        if idx.dtype == torch.bool or idx.is_floating_point():
            raise TypeError(f"{fn}: forget indices must be integers, got {idx.dtype}")
        if idx.dim() > 1:
            raise ValueError(f"{fn}: forget indices must be 1-D (or a [N] bool mask), got shape {list(idx.shape)}")
        idx = _check_indices(idx.to(torch.int64).reshape(-1), n, fn, "forget indices")
        forget_idx = torch.unique(idx)
        if forget_idx.numel() != idx.numel():
            raise ValueError(f"{fn}: forget indices must be distinct, got {idx.numel() - forget_idx.numel()} "
                             "duplicates (as condense requires)")
        if not 0 < forget_idx.numel() < n:
            raise ValueError(f"{fn}: forget indices must select between 1 and {n - 1} train images, got "
                             f"{forget_idx.numel()}")

    mask = torch.zeros(n, dtype=torch.bool)
    mask[forget_idx] = True
    retain_idx = (~mask).nonzero().flatten()
    return UnlearningSplit(train, test, forget_idx, retain_idx, unseen, evaluation, mode, chosen_class, seed)


# ----------------------------------------------------------------------------------------------
# load_dataset
# ----------------------------------------------------------------------------------------------

def load_dataset(name: str = DEFAULT_DATASET, root: str | os.PathLike | None = None, *,
                 per_class: int | None = None, limit: int | None = None, normalization: str = "auto",
                 split_seed: int = 0, include_valid: bool = False, progress: bool | None = None
                 ) -> tuple[ImageData, ImageData]:
    """Load a dataset as normalised ``(train, test)`` :class:`ImageData`.

    Args:
        name: one of ``DATASETS`` (spelling is forgiving: ``"CIFAR-10"`` works).
        root: folder of the local datasets (default: :func:`default_data_root`); unused for the
            built-in ones.
        per_class: keep only the first ``per_class`` train images of each class in the dataset's
            order (docs/method.md §6; a class with fewer keeps all). The test set is not sliced.
        limit: keep at most ``limit`` train and at most ``limit`` test images, a stratified
            subset drawn with ``split_seed`` (applied after ``per_class``), for quick runs.
        normalization: ``"auto"``, ``"train"`` or ``"none"`` (see the module docstring).
        split_seed: seed of the 80/20 train/test split of the datasets without an official one,
            and of ``limit``; keep it fixed to keep a dataset's split fixed across experiments.
        include_valid: CINIC-10 only: append the ``valid`` part to the train set.
        progress: show a progress bar while decoding image files (CINIC-10); ``None``: off unless
            ``FASTBLEND_PROGRESS=1`` (``fastblend._progress``).

    Raises:
        ValueError: unknown name, bad argument.
        FileNotFoundError: a local dataset is not where it is expected (the message says where).
        ModuleNotFoundError: animal-mnist is not installed (the message gives the command).
    """
    fn = "load_dataset"
    key = canonical_name(name)
    for arg, value in (("per_class", per_class), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{fn}: {arg} must be a positive int or None, got {value!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"{fn}: normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise TypeError(f"{fn}: split_seed must be an int, got {type(split_seed).__name__}")
    if include_valid and key != "cinic10":
        raise ValueError(f"{fn}: include_valid applies to cinic10 only, got name={name!r}")
    info = _INFO[key]
    base = Path(root) if root is not None else default_data_root()

    if key == "animal-mnist":
        x, y = _read_animal_mnist()
        (xtr, ytr), (xte, yte) = _holdout(x, y, 0.2, split_seed)
    elif key == "digits":
        x, y = _read_digits()
        (xtr, ytr), (xte, yte) = _holdout(x, y, 0.2, split_seed)
    elif key == "cifar10":
        (xtr, ytr), (xte, yte), names = _read_cifar10(base)
        info = _with_names(info, names)
    elif key == "svhn":
        (xtr, ytr), (xte, yte) = _read_svhn(base)
    else:
        (xtr, ytr), (xte, yte), names = _read_cinic10(base, include_valid, per_class, progress)
        info = _with_names(info, names)

    if per_class is not None:
        keep = _first_per_class(ytr, per_class)
        xtr, ytr = xtr[keep], ytr[keep]
    if limit is not None:
        keep = _stratified_subset(ytr, limit, _generator(split_seed, "subset"))
        xtr, ytr = xtr[keep], ytr[keep]
        keep = _stratified_subset(yte, limit, _generator(split_seed, "subset"))
        xte, yte = xte[keep], yte[keep]

    train_images = _to_unit_float(xtr, key)
    test_images = _to_unit_float(xte, key)
    channels = train_images.shape[1]
    if normalization == "none":
        mean, std = (0.0,) * channels, (1.0,) * channels
    elif normalization == "auto" and info.standard_mean is not None:
        mean, std = info.standard_mean, info.standard_std
    else:
        mean, std = _channel_stats(train_images)
    for images in (train_images, test_images):
        images.sub_(torch.tensor(mean).view(-1, 1, 1)).div_(torch.tensor(std).view(-1, 1, 1))
    make = (lambda images, labels, part: ImageData(images, labels, info.num_classes, f"{key}/{part}",
                                                   tuple(mean), tuple(std), info.class_names))
    return make(train_images, ytr, "train"), make(test_images, yte, "test")


def _with_names(info: DatasetInfo, names: tuple[str, ...] | None) -> DatasetInfo:
    return replace(info, class_names=tuple(names)) if names else info


def _holdout(x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int):
    test_idx, train_idx = _split_per_class(y, test_fraction, _generator(seed, "test"))
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def _to_unit_float(x: torch.Tensor, key: str) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 in [0, 1] (digits: 0..16 levels)."""
    scale = 16.0 if key == "digits" else 255.0
    return x.to(torch.float32).div_(scale)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std in float64; a constant channel gets std 1."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64)
    mean = flat.mean(1)
    std = flat.std(1, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())
