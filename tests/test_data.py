"""Tests for fastblend.datasets: the built-in datasets, the local-folder loaders (on tiny fake files
written here in torchvision's formats) and the docs/method.md §6 split."""

import pickle

import numpy as np
import pytest
import torch

from fastblend import dataset_readers as readers
from fastblend import datasets as fd
from fastblend.datasets import ImageData, load_dataset, make_split

# ---------------------------------------------------------------------------------------------
# built-in datasets
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def animal():
    return load_dataset("animal-mnist")


def test_animal_mnist_loads(animal):
    train, test = animal
    assert len(train) + len(test) == 10_000
    assert train.image_shape == test.image_shape == (1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.num_classes == 10 and train.class_names[0] == "bear" and train.class_names[9] == "zebra"
    # 1000 images per class, split 800/200 per class
    assert train.class_counts().tolist() == [800] * 10
    assert test.class_counts().tolist() == [200] * 10
    assert torch.isfinite(train.images).all() and torch.isfinite(test.images).all()
    # normalised with the train split's own statistics
    assert abs(train.images.mean().item()) < 1e-3
    assert abs(train.images.std().item() - 1.0) < 1e-3
    assert train.name == "animal-mnist/train" and test.name == "animal-mnist/test"
    # the pixels are the original 8-bit levels
    pixels = train.denormalize() * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    assert pixels.min().item() > -1e-3 and pixels.max().item() < 255 + 1e-3
    assert pixels.round().max().item() == 255


def test_animal_mnist_split_is_fixed_by_split_seed(animal):
    train, test = animal
    train2, test2 = load_dataset("Animal_MNIST")
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)
    train3, _ = load_dataset("animal-mnist", split_seed=1)
    assert not torch.equal(train.images, train3.images)


def test_animal_mnist_missing_package_names_install_command(monkeypatch):
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps animal-mnist==0.4"):
        load_dataset("animal-mnist")


def test_digits_loads():
    train, test = load_dataset("digits")
    assert len(train) + len(test) == 1797
    assert train.image_shape == (1, 8, 8) and train.num_classes == 10
    counts = train.class_counts() + test.class_counts()
    # stratified 80/20 in every class
    assert torch.all((test.class_counts().double() - 0.2 * counts.double()).abs() <= 0.5)
    levels = train.denormalize() * 16
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.round().max().item() == 16
    assert abs(train.images.mean().item()) < 1e-4


def test_per_class_and_limit():
    train, _ = load_dataset("animal-mnist", per_class=30)
    assert train.class_counts().tolist() == [30] * 10
    # "first n per class": the same images as the first 30 of each class of the full train set
    full, _ = load_dataset("animal-mnist", normalization="none")
    sliced, _ = load_dataset("animal-mnist", per_class=30, normalization="none")
    for c in range(10):
        assert torch.equal(sliced.images[sliced.labels == c], full.images[full.labels == c][:30])
    train, test = load_dataset("digits", limit=101)
    assert len(train) == 101 and len(test) == 101
    assert train.class_counts().max() - train.class_counts().min() <= 2
    assert torch.equal(load_dataset("digits", limit=101)[0].images, train.images)


def test_normalization_modes():
    raw, _ = load_dataset("digits", normalization="none")
    assert raw.mean == (0.0,) and raw.std == (1.0,)
    assert raw.images.min().item() == 0.0 and raw.images.max().item() == 1.0
    train, test = load_dataset("digits", normalization="train")
    mean, std = raw.images.double().mean().item(), raw.images.double().std(correction=0).item()
    assert train.mean[0] == pytest.approx(mean) and train.std[0] == pytest.approx(std)
    raw_test, _ = load_dataset("digits", normalization="none")
    assert torch.allclose(train.denormalize(), raw_test.images, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# ImageData
# ---------------------------------------------------------------------------------------------


def _tiny(n=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    return ImageData(torch.randn(n, 1, 4, 4, generator=g), labels, classes, "tiny/train", (0.0,), (1.0,),
                     tuple("abc"[:classes]))


def test_image_data_protocol_and_subset():
    d = _tiny()
    x, y = d[5]
    assert x.shape == (1, 4, 4) and int(y) == 5 % 3
    sub = d.subset(torch.tensor([1, 4, 7]))
    assert len(sub) == 3 and sub.labels.tolist() == [1, 1, 1]
    assert torch.equal(d.subset(d.labels == 2).images, d.images[2::3])
    with pytest.raises(ValueError, match=r"ImageData.subset: indices must be in \[0, 12\), got 12"):
        d.subset([0, 12])


def test_image_data_validation():
    with pytest.raises(ValueError, match="ImageData: labels must be in"):
        ImageData(torch.zeros(2, 1, 2, 2), torch.tensor([0, 3]), 3, "x", (0.0,), (1.0,), ("a", "b", "c"))
    with pytest.raises(ValueError, match="ImageData: images must be a float"):
        ImageData(torch.zeros(2, 2, 2), torch.tensor([0, 1]), 2, "x", (0.0,), (1.0,), ("a", "b"))
    with pytest.raises(ValueError, match="one entry per channel"):
        ImageData(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]), 2, "x", (0.0,), (1.0,), ("a", "b"))


# ---------------------------------------------------------------------------------------------
# make_split
# ---------------------------------------------------------------------------------------------


def _assert_partition(a: torch.Tensor, b: torch.Tensor, n: int):
    assert a.dtype == b.dtype == torch.int64
    assert torch.equal(torch.cat([a, b]).sort().values, torch.arange(n))
    assert torch.equal(a, a.sort().values) and torch.equal(b, b.sort().values)


def test_uniform_split(animal):
    train, test = animal
    s = make_split(train, test, seed=3)
    _assert_partition(s.forget, s.retain, len(train))
    _assert_partition(s.unseen, s.evaluation, len(test))
    assert s.forget.numel() == 800 and s.forget_mode == "uniform" and s.forget_class is None
    # the forget set is drawn from every class (uniformly, not one class)
    assert (torch.bincount(train.labels[s.forget], minlength=10) > 0).all()
    # 70/30 in every class of the test set
    assert torch.bincount(test.labels[s.unseen], minlength=10).tolist() == [140] * 10
    assert torch.bincount(test.labels[s.evaluation], minlength=10).tolist() == [60] * 10
    rx, ry = s.retain_tensors()
    fx, fy = s.forget_tensors()
    ux, uy = s.unseen_tensors()
    ex, ey = s.eval_tensors()
    assert rx.shape == (7200, 1, 28, 28) and fx.shape[0] == fy.shape[0] == 800
    assert torch.equal(fx[7], train.images[s.forget[7]]) and torch.equal(ey, test.labels[s.evaluation])
    assert ux.shape[0] == uy.shape[0] == 1400 and ex.shape[0] == 600 and ry.shape[0] == 7200
    assert s.forget_mask.sum().item() == 800 and s.forget_mask[s.forget].all()
    assert s.summary()["retain"] == 7200 and s.summary()["dataset"] == "animal-mnist"


def test_split_is_deterministic_per_seed(animal):
    train, test = animal
    a, b, c = (make_split(train, test, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.forget, b.forget) and torch.equal(a.unseen, b.unseen)
    assert not torch.equal(a.forget, c.forget) and not torch.equal(a.unseen, c.unseen)
    # the test split depends on the seed only, not on the forget request
    d = make_split(train, test, forget="classwise", seed=5)
    e = make_split(train, test, forget_fraction=0.3, seed=5)
    assert torch.equal(a.unseen, d.unseen) and torch.equal(a.evaluation, e.evaluation)
    assert e.forget.numel() == 2400
    # the global RNG is not used: reseeding it changes nothing, drawing from it is unaffected
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    f = make_split(train, test, seed=5)
    assert torch.equal(torch.rand(3), before) and torch.equal(f.forget, a.forget)


def test_classwise_split(animal):
    train, test = animal
    s = make_split(train, test, forget="classwise", forget_class=4, seed=0)
    assert s.forget_mode == "classwise" and s.forget_class == 4
    assert torch.equal(s.forget, (train.labels == 4).nonzero().flatten())
    assert (train.labels[s.retain] != 4).all()
    _assert_partition(s.forget, s.retain, len(train))
    drawn = [make_split(train, test, forget="classwise", seed=k).forget_class for k in range(12)]
    assert drawn == [make_split(train, test, forget="classwise", seed=k).forget_class for k in range(12)]
    assert len(set(drawn)) > 1 and all(0 <= c < 10 for c in drawn)
    for k in range(3):
        t = make_split(train, test, forget="classwise", seed=k)
        assert torch.unique(train.labels[t.forget]).tolist() == [t.forget_class]
        assert t.forget.numel() == 800


def test_custom_forget_indices_and_rounds(animal):
    train, test = animal
    s = make_split(train, test, forget=[10, 3, 7999], seed=0)  # duplicates are refused (tests/test_safety.py)
    assert s.forget_mode == "custom" and s.forget.tolist() == [3, 10, 7999]
    assert torch.equal(make_split(train, test, forget=s.forget_mask).forget, s.forget)
    u = make_split(train, test, seed=2)
    rounds = u.forget_rounds(3)
    assert [r.numel() for r in rounds] == [266, 533, 800]
    assert torch.equal(rounds[-1], u.forget)
    for prev, cur in zip(rounds, rounds[1:]):
        assert torch.isin(prev, cur).all()
    assert all(torch.equal(r, q) for r, q in zip(rounds, u.forget_rounds(3)))
    assert len(u.forget_rounds(1)) == 1 and torch.equal(u.forget_rounds(1)[0], u.forget)


def test_split_rounding_small_classes():
    d = _tiny(n=10, classes=3)  # class sizes 4, 3, 3
    s = make_split(d, d, unseen_fraction=0.7, forget_fraction=0.25, seed=0)
    # per class round-half-up: 0.7 * 4 = 2.8 -> 3, 0.7 * 3 = 2.1 -> 2
    assert torch.bincount(d.labels[s.unseen], minlength=3).tolist() == [3, 2, 2]
    assert s.forget.numel() == 3  # 0.25 * 10 = 2.5 -> 3
    assert make_split(d, d, forget_fraction=0.01).forget.numel() == 1  # never empty


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="load_dataset: unknown dataset 'mnist'; expected one of animal-mnist, "
                                         "digits, cifar10, svhn, cinic10"):
        load_dataset("mnist")
    assert fd.canonical_name("CIFAR-10") == "cifar10" and fd.dataset_info("cinic_10").paper_ipc == 800


@pytest.mark.parametrize("kwargs, message", [
    ({"per_class": 0}, "load_dataset: per_class must be a positive int"),
    ({"limit": 2.5}, "load_dataset: limit must be a positive int"),
    ({"normalization": "imagenet"}, "load_dataset: normalization must be one of auto, train, none"),
    ({"include_valid": True}, "load_dataset: include_valid applies to cinic10 only"),
])
def test_load_dataset_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"forget_fraction": 0.0}, r"make_split: forget_fraction must be in \(0, 1\), got 0.0"),
    ({"forget_fraction": 1.5}, r"make_split: forget_fraction must be in \(0, 1\), got 1.5"),
    ({"unseen_fraction": 1.0}, r"make_split: unseen_fraction must be in \(0, 1\), got 1.0"),
    ({"forget": "classwise", "forget_class": 10}, r"make_split: forget_class must be in \[0, 10\), got 10"),
    ({"forget": "classwise", "forget_class": -1}, r"make_split: forget_class must be in \[0, 10\), got -1"),
    ({"forget_class": 3}, "make_split: forget_class is only used with forget='classwise'"),
    ({"forget": "random"}, "make_split: forget must be 'uniform', 'classwise' or train indices"),
    ({"forget": [0, 8000]}, r"make_split: forget indices must be in \[0, 8000\), got 8000"),
    ({"forget": []}, "make_split: forget indices must select between 1 and 7999"),
])
def test_make_split_bad_arguments(animal, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(*animal, **kwargs)


def test_make_split_type_errors(animal):
    train, test = animal
    with pytest.raises(TypeError, match="make_split: train and test must be ImageData"):
        make_split(train.images, test)
    with pytest.raises(TypeError, match="make_split: forget indices must be integers, got torch.float32"):
        make_split(train, test, forget=torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="make_split: forget_class must be an int"):
        make_split(train, test, forget="classwise", forget_class=2.0)
    with pytest.raises(ValueError, match="forget_rounds: rounds must be an int in"):
        make_split(train, test).forget_rounds(0)
    with pytest.raises(ValueError, match="make_split: train and test must have the same image shape"):
        make_split(train, load_dataset("digits")[1])


# ---------------------------------------------------------------------------------------------
# local-folder datasets, on tiny fake files in torchvision's formats
# ---------------------------------------------------------------------------------------------


def _write_cifar(folder, per_batch=20, seed=0):
    """CIFAR-10 python batches: dicts with 'data' [n, 3072] uint8 and 'labels' (written with bytes
    keys, as in the real files), plus batches.meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in fd._CIFAR_NAMES]}, f)
    return batches


def test_cifar10_loader(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    train, test = load_dataset("cifar10", tmp_path)
    assert len(train) == 100 and len(test) == 20 and train.image_shape == (3, 32, 32)
    assert train.class_names == fd._CIFAR_NAMES
    assert train.mean == fd.dataset_info("cifar10").standard_mean  # "auto": the standard constants
    x2 = batches["data_batch_2"]
    pixels = (train.denormalize(train.images[20:40]) * 255).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(x2[b"data"]).view(20, 3, 32, 32))
    assert train.labels[20:40].tolist() == x2[b"labels"]
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    # per_class keeps the first n of each class, in file order
    sliced, _ = load_dataset("cifar10", tmp_path, per_class=2, normalization="train")
    assert sliced.class_counts().tolist() == [2] * 10
    first = torch.cat([(train.labels == c).nonzero().flatten()[:2] for c in range(10)]).sort().values
    assert torch.equal(sliced.labels, train.labels[first])
    assert abs(sliced.images.mean().item()) < 1e-4


def test_cifar10_found_in_named_subfolder_and_env_root(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    assert len(load_dataset("cifar10", tmp_path)[0]) == 100
    monkeypatch.setenv("FASTBLEND_DATA", str(tmp_path))
    assert fd.default_data_root() == tmp_path
    assert len(load_dataset("CIFAR-10")[1]) == 20


def test_cifar10_missing_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"cifar10: expected cifar-10-batches-py/data_batch_1 \.\.\. "
                                                r"data_batch_5 and cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", tmp_path)
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="torchvision's CIFAR10 layout.*--data-root"):
        load_dataset("cifar10", tmp_path)
    monkeypatch.delenv("FASTBLEND_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="under data "):
        load_dataset("cifar10")


def test_svhn_loader(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(1)
    mats = {}
    for name, n in (("train_32x32.mat", 30), ("test_32x32.mat", 12)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # digits 1..10, 10 meaning 0
        scipy_io.savemat(tmp_path / name, {"X": x, "y": y})
        mats[name] = (x, y)
    train, test = load_dataset("svhn", tmp_path)
    assert len(train) == 30 and len(test) == 12 and train.class_names[0] == "0"
    x, y = mats["train_32x32.mat"]
    assert train.labels.tolist() == [int(v) % 10 for v in y.flatten()]
    pixels = (train.denormalize() * 255).round().to(torch.uint8)
    # image i, channel c, row h, column w  <-  X[h, w, c, i]
    assert torch.equal(pixels, torch.from_numpy(x).permute(3, 2, 0, 1))
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(FileNotFoundError, match="svhn: expected train_32x32.mat and test_32x32.mat"):
        load_dataset("svhn", tmp_path)


def _write_cinic(root, per_class=3, parts=("train", "valid", "test")):
    from PIL import Image

    rng = np.random.default_rng(2)
    images = {}
    for part in parts:
        for c, cls in enumerate(fd._CIFAR_NAMES):
            (root / part / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                path = root / part / cls / f"{part}-{i:02d}.png"
                if c == 0 and i == 0:  # CINIC-10 holds a few greyscale images
                    arr = np.repeat(arr[..., :1], 3, axis=2)
                    Image.fromarray(arr[..., 0], mode="L").save(path)
                else:
                    Image.fromarray(arr).save(path)
                images[(part, cls, i)] = arr
    return images


def test_cinic10_loader(tmp_path):
    pytest.importorskip("PIL")
    images = _write_cinic(tmp_path / "cinic10")
    train, test = load_dataset("cinic10", tmp_path)
    assert len(train) == 30 and len(test) == 30 and train.class_counts().tolist() == [3] * 10
    assert train.class_names == tuple(sorted(fd._CIFAR_NAMES))
    # ImageFolder order: classes sorted by name, files sorted by name
    cls = train.class_names[1]
    pixels = (train.denormalize(train.images[3:6]) * 255).round().to(torch.uint8)
    expected = torch.stack([torch.from_numpy(images[("train", cls, i)]).permute(2, 0, 1) for i in range(3)])
    assert torch.equal(pixels, expected)
    grey = (train.denormalize(train.images[0]) * 255).round()
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    both, _ = load_dataset("cinic10", tmp_path, include_valid=True)
    assert len(both) == 60
    sliced, _ = load_dataset("cinic10", tmp_path, per_class=1, include_valid=True)
    assert torch.equal(sliced.images, train.images[::3])


def test_cinic10_missing_and_malformed(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(FileNotFoundError, match=r"cinic10: expected \{train,test\}/<class>/\*\.png"):
        load_dataset("cinic10", tmp_path)
    _write_cinic(tmp_path, per_class=1, parts=("train", "test"))
    with pytest.raises(FileNotFoundError, match=r"\{train,test,valid\}"):
        load_dataset("cinic10", tmp_path, include_valid=True)
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "test" / "cat" / "small.png")
    with pytest.raises(ValueError, match="small.png is 16x16; expected 32x32"):
        load_dataset("cinic10", tmp_path)
