"""Per-class grouping of SPEC §1.1: k-means per class -> CSR clusters.

(The k-means backends and ``group``/``extract_features`` are being built; ``Clustering`` is the
contract the rest of the package relies on.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Clustering:
    """A per-class clustering in CSR form.

    Attributes:
        assignment: ``[N]`` int64 global cluster id of each sample, ``class * ipc + local id``.
        perm: ``[N]`` int64 permutation that sorts samples by cluster (stable within a cluster).
        indptr: ``[K+1]`` int64 offsets into ``perm``; cluster ``c`` holds samples
            ``perm[indptr[c]:indptr[c+1]]``. ``K = num_classes * ipc``; empty clusters are allowed.
        cluster_class: ``[K]`` int64 class of each cluster (``c // ipc``).
        ipc: clusters per class.
        num_classes: number of classes (``K / ipc``).
        objective: ``[num_classes]`` float64 k-means objective (sum of squared distances) per class.
        seconds: wall time of the grouping.
        backend: which k-means backend produced it.
    """

    assignment: torch.Tensor
    perm: torch.Tensor
    indptr: torch.Tensor
    cluster_class: torch.Tensor
    ipc: int
    num_classes: int
    objective: torch.Tensor
    seconds: float = 0.0
    backend: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        return int(self.indptr.numel() - 1)

    @property
    def sizes(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def save(self, path: str | Path) -> None:
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Clustering:
        return cls(**torch.load(Path(path), weights_only=False))
