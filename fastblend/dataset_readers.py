"""The dataset catalogue and its file readers: what each dataset is and how its files become tensors.

Datasets (``DATASETS``; :func:`dataset_info` describes each):

* ``animal-mnist`` (the default, built in): 10,000 real 28x28 grey silhouettes, 10 classes of 1000,
  read from the data files bundled in the ``animal-mnist`` package (install it with
  ``pip install --no-deps animal-mnist==0.4``; its loader module, which needs TensorFlow, is never
  imported). It has no official test split: a stratified 80/20 split seeded by ``split_seed``
  (800 train + 200 test images per class).
* ``digits``: scikit-learn's 1,797 8x8 digits (16 grey levels), stratified 80/20 split.
* ``cifar10``, ``svhn``, ``cinic10``: read from a local folder in torchvision's formats, never
  downloaded (see ``dataset_info(name).layout``). The folder is ``root``, else the environment
  variable ``FASTBLEND_DATA``, else ``./data``; each dataset is looked for in ``<root>`` and in
  ``<root>/<name>``. The CIFAR-10 batches are pickles, read with a restricted unpickler that
  admits only builtin containers and numpy arrays (a pickle naming any other global is refused).

The readers return raw ``uint8 [N, C, H, W]`` images and ``int64 [N]`` labels;
:func:`fastblend.datasets.load_dataset` splits, slices and normalises them.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("animal-mnist", "digits", "cifar10", "svhn", "cinic10")
DEFAULT_DATASET = "animal-mnist"
ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class DatasetInfo:
    """What fastblend knows about a dataset before loading it.

    ``paper_per_class`` and ``paper_ipc`` are the docs/method.md §6 settings (``None`` where the paper does
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


def _first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Sorted indices of the first ``per_class`` items of every class (all of a smaller class)."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel()) - starts[sorted_labels]
    return order[rank < per_class].sort().values


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


# the globals a numpy array's pickle needs (numpy 1.x and 2.x module paths); nothing else is loaded
_PICKLE_GLOBALS = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, strings, numbers and numpy arrays only."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays are allowed)")


def _read_pickle(path: Path, key: str):
    """A CIFAR pickle (latin1 strings) through :class:`_ArrayUnpickler`; errors name the file."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"load_dataset: {key}: cannot read {path} (truncated or not a CIFAR pickle): "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(entry, dict):
        raise ValueError(f"load_dataset: {key}: {path} must hold a dict, got {type(entry).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_cifar10(base: Path):
    sub = "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder = _locate(base, "cifar10", [f"{sub}/{f}" for f in files])
    if folder is None:
        raise _missing("cifar10", base, f"{sub}/data_batch_1 ... data_batch_5 and {sub}/test_batch "
                                        f"(torchvision's CIFAR10 layout)")
    folder = folder / sub

    def read(path: Path):
        entry = _read_pickle(path, "cifar10")
        if "data" not in entry or "labels" not in entry:
            raise ValueError(f"load_dataset: cifar10: {path} must hold 'data' and 'labels' (a CIFAR-10 batch)")
        data = np.asarray(entry["data"])
        if data.dtype != np.uint8:
            if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
                raise ValueError(f"load_dataset: cifar10: {path} holds data of dtype {data.dtype} (range "
                                 f"{data.min() if data.size else '-'}..{data.max() if data.size else '-'}); "
                                 "expected uint8 pixels 0..255")
            data = data.astype(np.uint8)
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
        entry = _read_pickle(meta, "cifar10")
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
        try:
            mat = loadmat(str(path))
        except (ValueError, OSError, TypeError) as exc:
            raise ValueError(f"load_dataset: svhn: cannot read {path} (truncated or not a .mat file): {exc}") from exc
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


def _read_cinic10(base: Path, include_valid: bool, per_class: int | None, progress: bool | None):
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
            if not files:
                raise ValueError(f"load_dataset: cinic10: {folder / part / cls} holds no images "
                                 f"({', '.join(sorted(_IMAGE_SUFFIXES))})")
            files = files[:limit_per_class] if limit_per_class is not None else files
            paths += files
            labels += [label] * len(files)
        return paths, labels

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # a few CINIC-10 images are grey
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for truncated/foreign files
            raise ValueError(f"load_dataset: cinic10: cannot decode {path}: {exc}") from exc
        if arr.shape != (32, 32, 3):
            raise ValueError(f"load_dataset: cinic10: {path} is {arr.shape[1]}x{arr.shape[0]}; expected 32x32")
        return arr

    def read(paths: list[Path], labels: list[int], desc: str):
        from ._progress import bar as progress_bar

        x = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i, arr in enumerate(progress_bar(pool.map(decode, paths), total=len(paths), desc=desc,
                                                 progress=progress)):
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
