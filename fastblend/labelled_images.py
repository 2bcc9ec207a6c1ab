""":class:`ImageData`: a labelled, normalised image set held in memory (a torch ``Dataset``).

What :func:`fastblend.datasets.load_dataset` returns and :func:`fastblend.datasets.make_split` splits; it
knows its normalisation constants (:meth:`ImageData.denormalize` undoes them for plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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


def _check_indices(idx: torch.Tensor, n: int, fn: str, arg: str) -> torch.Tensor:
    if idx.dim() != 1:
        raise ValueError(f"{fn}: {arg} must be 1-D, got shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise ValueError(f"{fn}: {arg} must be in [0, {n}), got {bad}")
    return idx
