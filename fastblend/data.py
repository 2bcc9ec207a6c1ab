"""Datasets and the SPEC §6 unlearning protocol.

Two steps, both deterministic::

    train, test = load_dataset("animal-mnist")           # ImageData, ImageData (normalised)
    split = make_split(train, test, forget="uniform", seed=0)
    retain_x, retain_y = split.retain_tensors()

Datasets (``DATASETS``):

* ``animal-mnist`` (the default, built in): 10,000 real 28x28 grey silhouettes, 10 classes of 1000,
  read from the data files bundled in the ``animal-mnist`` package (install it with
  ``pip install --no-deps animal-mnist==0.4``; its loader module, which needs TensorFlow, is never
  imported). It has no official test split: a stratified 80/20 split seeded by ``split_seed``
  (800 train + 200 test images per class).
* ``digits``: scikit-learn's 1,797 8x8 digits (16 grey levels), stratified 80/20 split.
* ``cifar10``, ``svhn``, ``cinic10``: read from a local folder in torchvision's formats, never
  downloaded (see ``dataset_info(name).layout``). The folder is ``root``, else the environment
  variable ``FASTBLEND_DATA``, else ``./data``; each dataset is looked for in ``<root>`` and in
  ``<root>/<name>``. The CIFAR-10 batches are pickles and are unpickled: only point ``root`` at
  files you trust.

Pixels are scaled to [0, 1] and then normalised per channel, ``(x - mean) / std``. With
``normalization="auto"`` (default) CIFAR-10, SVHN and CINIC-10 use their standard constants (the
values of the dataset-condensation code the paper builds on), and the other datasets use the mean
and std of the train images returned (after ``per_class``/``limit``); ``"train"`` always uses the
train statistics; ``"none"`` keeps [0, 1] pixels. Test images use the train constants.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

DATASETS = ("animal-mnist", "digits", "cifar10", "svhn", "cinic10")
DEFAULT_DATASET = "animal-mnist"
ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"
NORMALIZATIONS = ("auto", "train", "none")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class DatasetInfo:
    """What fastblend knows about a dataset before loading it.

    ``paper_per_class`` and ``paper_ipc`` are the SPEC §6 settings (``None`` where the paper does
    not use the dataset); ``standard_mean``/``standard_std`` the constants ``normalization="auto"``
    uses (``None``: statistics of the train split).
    """

    name: str
    description: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    layout: str
    paper_per_class: int | None = None
    paper_ipc: int | None = None
    standard_mean: tuple[float, ...] | None = None
    standard_std: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def local(self) -> bool:
        """True when the dataset is read from a local folder (not bundled with an installed package)."""
        return self.name in ("cifar10", "svhn", "cinic10")


_DIGIT_NAMES = tuple(str(d) for d in range(10))
_CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_INFO = {
    "animal-mnist": DatasetInfo(
        "animal-mnist", "Animal-MNIST: 10,000 28x28 animal silhouettes (built in)", (1, 28, 28),
        ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"),
        f"bundled with the animal-mnist package ({ANIMAL_MNIST_INSTALL})"),
    "digits": DatasetInfo(
        "digits", "scikit-learn digits: 1,797 8x8 images, 16 grey levels (built in)", (1, 8, 8),
        _DIGIT_NAMES, "bundled with scikit-learn"),
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR-10: 50,000 + 10,000 32x32 colour images", (3, 32, 32), _CIFAR_NAMES,
        "<root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch} (torchvision's CIFAR10)",
        paper_per_class=5000, paper_ipc=1000,
        standard_mean=(0.4914, 0.4822, 0.4465), standard_std=(0.2023, 0.1994, 0.2010)),
    "svhn": DatasetInfo(
        "svhn", "SVHN: 73,257 + 26,032 32x32 house-number digits", (3, 32, 32), _DIGIT_NAMES,
        "<root>/{train_32x32.mat, test_32x32.mat} (torchvision's SVHN)",
        paper_per_class=4500, paper_ipc=100,
        standard_mean=(0.4377, 0.4438, 0.4728), standard_std=(0.1980, 0.2010, 0.1970)),
    "cinic10": DatasetInfo(
        "cinic10", "CINIC-10: 90,000 train + 90,000 valid + 90,000 test 32x32 colour images", (3, 32, 32),
        _CIFAR_NAMES, "<root>/{train,valid,test}/<class>/*.png (ImageFolder, as CINIC-10 is distributed)",
        paper_per_class=9000, paper_ipc=800,
        standard_mean=(0.47889522, 0.47227842, 0.43047404),
        standard_std=(0.24205776, 0.23828046, 0.25874835)),
}


def canonical_name(name: str) -> str:
    """``"CIFAR-10"``, ``"cifar_10"`` -> ``"cifar10"``; ``"animal_mnist"`` -> ``"animal-mnist"``."""
    if not isinstance(name, str):
        raise TypeError(f"load_dataset: name must be a str, got {type(name).__name__}")
    key = name.lower().replace("_", "").replace("-", "").replace(" ", "")
    for known in DATASETS:
        if known.replace("-", "") == key:
            return known
    raise ValueError(f"load_dataset: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (any spelling :func:`canonical_name` accepts)."""
    return _INFO[canonical_name(name)]


def default_data_root() -> Path:
    """``$FASTBLEND_DATA`` if set and non-empty, else ``./data``."""
    return Path(os.environ.get("FASTBLEND_DATA") or "data")


@dataclass(eq=False)  # fields are tensors: compare them explicitly
class ImageData:
    """A labelled image set, normalised, held in memory. A ``torch.utils.data.Dataset``.

    Attributes:
        images: ``[N, C, H, W]`` float32, normalised with ``mean``/``std``.
        labels: ``[N]`` int64 in ``[0, num_classes)``.
        num_classes: number of classes (may exceed the classes present after slicing).
        name: dataset name with the part, e.g. ``"animal-mnist/train"``.
        mean, std: per-channel constants the pixels (in [0, 1]) were normalised with.
        class_names: ``num_classes`` names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or not self.images.is_floating_point():
            raise ValueError(f"ImageData: images must be a float [N, C, H, W] tensor, got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64 or self.labels.numel() != self.images.shape[0]:
            raise ValueError(f"ImageData: labels must be int64 [{self.images.shape[0]}], got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"ImageData: class_names must have num_classes={self.num_classes} entries, "
                             f"got {len(self.class_names)}")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"ImageData: mean and std must have one entry per channel ({channels})")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(f"ImageData: labels must be in [0, {self.num_classes})")

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Height (= width for every built-in dataset)."""
        return int(self.images.shape[2])

    def class_counts(self) -> torch.Tensor:
        """``[num_classes]`` int64 number of images of each class."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: torch.Tensor | Sequence[int], name: str | None = None) -> ImageData:
        """The images at ``indices`` (int64 positions or an ``[N]`` bool mask), same constants."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = _check_indices(idx.to(torch.int64), len(self), "ImageData.subset", "indices")
        return ImageData(self.images[idx], self.labels[idx], self.num_classes, name or self.name,
                         self.mean, self.std, self.class_names)

    def denormalize(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """Undo the normalisation: pixels back in [0, 1] (up to blending), for plots.

        ``images``: ``[..., C, H, W]`` normalised with this set's constants (default: all of it).
        """
        x = self.images if images is None else images
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x * std + mean


@dataclass(eq=False)  # fields are tensors: compare them explicitly
class UnlearningSplit:
    """The SPEC §6 split of one dataset for one unlearning request.

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
        """Cumulative forget sets for multi-round unlearning (SPEC §1.4).

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


def _check_indices(idx: torch.Tensor, n: int, fn: str, arg: str) -> torch.Tensor:
    if idx.dim() != 1:
        raise ValueError(f"{fn}: {arg} must be 1-D, got shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise ValueError(f"{fn}: {arg} must be in [0, {n}), got {bad}")
    return idx


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


def _first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Sorted indices of the first ``per_class`` items of every class (all of a smaller class)."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel()) - starts[sorted_labels]
    return order[rank < per_class].sort().values


# ----------------------------------------------------------------------------------------------
# make_split
# ----------------------------------------------------------------------------------------------

def make_split(train: ImageData, test: ImageData, forget: str | torch.Tensor | Sequence[int] = "uniform",
               forget_fraction: float = 0.1, forget_class: int | None = None, unseen_fraction: float = 0.7,
               seed: int = 0) -> UnlearningSplit:
    """Split ``train`` into forget/retain and ``test`` into unseen pool/evaluation (SPEC §0, §6).

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
        forget_idx = torch.unique(_check_indices(idx.to(torch.int64).flatten(), n, fn, "forget indices"))
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
                 split_seed: int = 0, include_valid: bool = False, progress: bool = False
                 ) -> tuple[ImageData, ImageData]:
    """Load a dataset as normalised ``(train, test)`` :class:`ImageData`.

    Args:
        name: one of ``DATASETS`` (spelling is forgiving: ``"CIFAR-10"`` works).
        root: folder of the local datasets (default: :func:`default_data_root`); unused for the
            built-in ones.
        per_class: keep only the first ``per_class`` train images of each class in the dataset's
            order (SPEC §6; a class with fewer keeps all). The test set is not sliced.
        limit: keep at most ``limit`` train and at most ``limit`` test images, a stratified
            subset drawn with ``split_seed`` (applied after ``per_class``), for quick runs.
        normalization: ``"auto"``, ``"train"`` or ``"none"`` (see the module docstring).
        split_seed: seed of the 80/20 train/test split of the datasets without an official one,
            and of ``limit``; keep it fixed to keep a dataset's split fixed across experiments.
        include_valid: CINIC-10 only: append the ``valid`` part to the train set.
        progress: show a progress bar while decoding image files (CINIC-10).

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


def _labels_tensor(labels, source: str, num_classes: int = 10) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels).astype(np.int64).reshape(-1))
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"load_dataset: labels in {source} must be in [0, {num_classes}), got "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


# ---- built-in datasets ----------------------------------------------------------------------

def _read_animal_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"load_dataset: the default dataset animal-mnist needs its package: "
                                  f"{ANIMAL_MNIST_INSTALL} (--no-deps: its metadata pulls TensorFlow, which "
                                  f"the data files do not need)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    paths = [folder / "animal_data_version_3.gz", folder / "animal_label_version_3.gz"]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"load_dataset: animal-mnist: expected {path}; reinstall with "
                                    f"{ANIMAL_MNIST_INSTALL}")
    # gzipped pickles of numpy arrays: [10000, 28, 28] uint8 and [10000] int64 (0..9, sorted)
    with gzip.open(paths[0], "rb") as f:
        x = np.asarray(pickle.load(f))
    with gzip.open(paths[1], "rb") as f:
        y = np.asarray(pickle.load(f))
    if x.shape[1:] != (28, 28) or x.dtype != np.uint8 or y.shape != (x.shape[0],):
        raise ValueError(f"load_dataset: animal-mnist files hold images {x.shape} {x.dtype} and labels "
                         f"{y.shape}; expected [N, 28, 28] uint8 and [N]")
    return torch.from_numpy(x.copy()).unsqueeze(1), _labels_tensor(y, str(paths[1]))


def _read_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # integer levels 0..16
    return x, _labels_tensor(bunch.target, "sklearn digits")


# ---- local folders -------------------------------------------------------------------------

def _locate(base: Path, key: str, relative: Sequence[str]) -> Path | None:
    """The first of ``base``, ``base/<key>`` holding every path in ``relative``."""
    for folder in (base, base / key):
        if all((folder / r).exists() for r in relative):
            return folder
    return None


def _missing(key: str, base: Path, expected: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"load_dataset: {key}: expected {expected} under {base} (also looked in {base / key}); "
        f"fastblend never downloads it: download it elsewhere and pass --data-root (or root=, or set "
        f"FASTBLEND_DATA)")


def _read_cifar10(base: Path):
    sub = "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder = _locate(base, "cifar10", [f"{sub}/{f}" for f in files])
    if folder is None:
        raise _missing("cifar10", base, f"{sub}/data_batch_1 ... data_batch_5 and {sub}/test_batch "
                                        f"(torchvision's CIFAR10 layout)")
    folder = folder / sub

    def read(path: Path):
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        if "data" not in entry or "labels" not in entry:
            raise ValueError(f"load_dataset: cifar10: {path} must hold 'data' and 'labels' (a CIFAR-10 batch)")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(entry["labels"]):
            raise ValueError(f"load_dataset: cifar10: {path} holds data {data.shape} for "
                             f"{len(entry['labels'])} labels; expected [n, 3072]")
        return data.reshape(-1, 3, 32, 32), _labels_tensor(entry["labels"], str(path))

    parts = [read(folder / f) for f in files[:5]]
    xtr = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    ytr = torch.cat([p[1] for p in parts])
    xte, yte = read(folder / "test_batch")
    names = None
    meta = folder / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        label_names = entry.get("label_names")
        if label_names is not None and len(label_names) == 10:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in label_names)
    return (xtr, ytr), (torch.from_numpy(xte), yte), names


def _read_svhn(base: Path):
    files = ("train_32x32.mat", "test_32x32.mat")
    folder = _locate(base, "svhn", files)
    if folder is None:
        raise _missing("svhn", base, f"{files[0]} and {files[1]} (torchvision's SVHN layout)")
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ModuleNotFoundError("load_dataset: svhn needs scipy: pip install 'fastblend[datasets]'") from err

    def read(path: Path):
        mat = loadmat(str(path))
        if "X" not in mat or "y" not in mat:
            raise ValueError(f"load_dataset: svhn: {path} must hold 'X' and 'y' (an SVHN .mat file)")
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
            raise ValueError(f"load_dataset: svhn: {path} holds X {x.shape} for {y.shape[0]} labels; "
                             f"expected [32, 32, 3, n]")
        y[y == 10] = 0  # SVHN stores digit 0 as label 10
        x = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8)  # -> [n, 3, 32, 32]
        return torch.from_numpy(x), _labels_tensor(y, str(path))

    return read(folder / files[0]), read(folder / files[1])


def _read_cinic10(base: Path, include_valid: bool, per_class: int | None, progress: bool):
    parts = ("train", "test") + (("valid",) if include_valid else ())
    folder = _locate(base, "cinic10", parts)
    expected = "{" + ",".join(parts) + "}/<class>/*.png (the ImageFolder layout CINIC-10 is distributed in)"
    if folder is None:
        raise _missing("cinic10", base, expected)
    try:
        from PIL import Image
    except ImportError as err:
        raise ModuleNotFoundError("load_dataset: cinic10 needs pillow: pip install 'fastblend[datasets]'") from err

    classes = sorted(d.name for d in (folder / "train").iterdir() if d.is_dir())
    if len(classes) != 10:
        raise ValueError(f"load_dataset: cinic10: {folder / 'train'} has {len(classes)} class folders; "
                         f"expected 10 ({expected})")

    def listing(part: str, limit_per_class: int | None) -> tuple[list[Path], list[int]]:
        part_classes = sorted(d.name for d in (folder / part).iterdir() if d.is_dir())
        if part_classes != classes:
            raise ValueError(f"load_dataset: cinic10: {folder / part} has classes {part_classes}, but "
                             f"{folder / 'train'} has {classes}")
        paths, labels = [], []
        for label, cls in enumerate(classes):
            files = sorted(p for p in (folder / part / cls).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            files = files[:limit_per_class] if limit_per_class is not None else files
            paths += files
            labels += [label] * len(files)
        return paths, labels

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # a few CINIC-10 images are grey
        if arr.shape != (32, 32, 3):
            raise ValueError(f"load_dataset: cinic10: {path} is {arr.shape[1]}x{arr.shape[0]}; expected 32x32")
        return arr

    def read(paths: list[Path], labels: list[int], desc: str):
        from tqdm.auto import tqdm

        x = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i, arr in enumerate(tqdm(pool.map(decode, paths), total=len(paths), desc=desc,
                                         disable=not progress)):
                x[i] = arr
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.int64)

    # train (+ valid) is sliced per class before decoding, so a small per_class reads few files
    train_paths, train_labels = listing("train", None)
    if include_valid:
        valid_paths, valid_labels = listing("valid", None)
        train_paths, train_labels = train_paths + valid_paths, train_labels + valid_labels
    if per_class is not None:
        keep = _first_per_class(torch.tensor(train_labels, dtype=torch.int64), per_class).tolist()
        train_paths = [train_paths[i] for i in keep]
        train_labels = [train_labels[i] for i in keep]
    test_paths, test_labels = listing("test", None)
    return (read(train_paths, train_labels, "cinic10 train"), read(test_paths, test_labels, "cinic10 test"),
            tuple(classes))
