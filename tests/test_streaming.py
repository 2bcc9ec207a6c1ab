"""Data larger than memory: MemmapImages, and map-style Datasets streamed (never read whole) by
extract_features, unlearn's retain set and the metrics, with the results of the same data as tensors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, WeightedRandomSampler

import fastblend
from fastblend.data_adapter import as_data
from fastblend.metrics import accuracy, mia_score, predict_logits, svc_mia


class Rows(Dataset):
    """A generic map-style dataset over tensors (not a TensorDataset: fastblend must stream it);
    records every batch of indices it is asked for."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y, self.reads = x, y, []

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads.append(1)
        return self.x[i], int(self.y[i])


def _images(n=40, c=1, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, s, s, generator=g), torch.arange(n) % 3


# ---------------------------------------------------------------------------------------------
# extract_features


def test_extract_features_dataset_and_loader_equal_tensors():
    x, y = _images(37)
    ref = fastblend.extract_features(x, batch_size=8, seed=3)
    ds = Rows(x, y)
    assert torch.equal(fastblend.extract_features(ds, batch_size=8, seed=3), ref)
    assert max(len(ds.reads), 1) == 37  # each image read once
    loader = DataLoader(ds, batch_size=8, shuffle=False)
    assert torch.equal(fastblend.extract_features(loader, batch_size=8, seed=3), ref)
    # a DataLoader of bare images, dropping its last partial batch: the features are trimmed to what came
    bare = DataLoader(x, batch_size=8, drop_last=True)
    assert torch.equal(fastblend.extract_features(bare, batch_size=8, seed=3), ref[:32])


def test_extract_features_refuses_a_shuffled_loader_and_bad_items():
    x, y = _images(8)
    with pytest.raises(ValueError, match="^extract_features: the DataLoader reads its dataset through .*not in the "
                                         "dataset's own order"):
        fastblend.extract_features(DataLoader(Rows(x, y), shuffle=True))
    with pytest.raises(TypeError, match="^extract_features: images must be a floating-point tensor .* in a batch"):
        fastblend.extract_features(Rows(x.long(), y))
    with pytest.raises(ValueError, match="^extract_features: images must hold at least one image"):
        fastblend.extract_features(Rows(x[:0], y[:0]))
    with pytest.raises(ValueError, match="^extract_features: num_workers must be an int >= 0"):
        fastblend.extract_features(x, num_workers=-1)


# ---------------------------------------------------------------------------------------------
# MemmapImages


def test_memmap_uint8_roundtrip_scaling_and_batched_reads(tmp_path):
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(10) % 4
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ds = fastblend.MemmapImages.write(tmp_path / "train.npy", raw, labels, mean=mean, std=std)
    assert (tmp_path / "train.labels.npy").is_file() and len(ds) == 10 and ds.shape == (10, 3, 8, 8)
    expect = (raw.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    x3, y3 = ds[3]
    assert x3.dtype == torch.float32 and isinstance(y3, int) and y3 == 3
    assert torch.equal(x3, expect[3])
    for idx in ([7, 2, 2, 9], [4, 5, 6], [0]):  # unsorted with a repeat, contiguous, single
        xb, yb = ds.take(idx)
        assert torch.equal(xb, expect[idx]) and torch.equal(yb, labels[idx])
    assert torch.equal(torch.stack([s[0] for s in ds.__getitems__([8, 1])]), expect[[8, 1]])
    batch = next(iter(DataLoader(ds, batch_size=4)))  # the DataLoader's batched fetch
    assert torch.equal(batch[0], expect[:4]) and torch.equal(batch[1], labels[:4])
    # labels are read from the sidecar; a worker gets the path, not a copy of the data
    again = pickle.loads(pickle.dumps(ds))
    assert again._array is None and torch.equal(again.take([5])[0], expect[[5]])
    with pytest.raises(IndexError, match="MemmapImages.take: indices must be in"):
        ds.take([10])


def test_memmap_float_and_raw_files(tmp_path):
    x, y = _images(6, c=1)
    ds = fastblend.MemmapImages.write(tmp_path / "f.npy", x, y)
    assert torch.equal(ds.take(range(6))[0], x)  # float files are read as is
    raw = (torch.arange(6 * 64) % 251).to(torch.uint8).numpy()
    path = tmp_path / "images.bin"
    path.write_bytes(b"HEADER" + raw.tobytes())
    rd = fastblend.MemmapImages(path, y, shape=(6, 1, 8, 8), offset=6, divide_by=1.0)
    assert torch.equal(rd.take(range(6))[0], torch.from_numpy(raw).float().view(6, 1, 8, 8))
    with pytest.raises(ValueError, match="MemmapImages: .* has 390 bytes, .* needs 391"):
        fastblend.MemmapImages(path, y, shape=(6, 1, 8, 8), offset=7)
    np.save(tmp_path / "nolabels.npy", x.numpy())
    with pytest.raises(FileNotFoundError, match="MemmapImages: labels not given and no labels file"):
        fastblend.MemmapImages(tmp_path / "nolabels.npy")


def _mapped_kib(path) -> int | None:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``), None off Linux."""
    try:
        text = open("/proc/self/smaps").read()
    except OSError:
        return None
    total, inside = 0, False
    for line in text.splitlines():
        if line[:1].isalnum() and "-" in line.split(" ", 1)[0] and ":" not in line.split(" ", 1)[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_memmap_reads_do_not_stay_resident(tmp_path):
    """A pass over the file leaves about nothing of it in the process's resident set (the pages
    are unmapped again once a batch is copied out), whatever the batch pattern."""
    x = torch.randn(512, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # 1.5 MiB
    ds = fastblend.MemmapImages.write(tmp_path / "big.npy", x, torch.arange(512) % 3)
    if _mapped_kib(ds.path) is None:
        pytest.skip("needs /proc/self/smaps")
    for s in range(0, 512, 64):
        assert torch.equal(ds.take(range(s, s + 64))[0], x[s:s + 64])
    assert torch.equal(ds.take([500, 3, 77])[0], x[[500, 3, 77]]) and torch.equal(ds[9][0], x[9])
    assert _mapped_kib(ds.path) <= 64, _mapped_kib(ds.path)  # 1536 KiB without the release


def test_memmap_pipeline_features_group_metrics(tmp_path):
    """The whole Dataset path on a file: features, grouping, an unlearning run and the metrics."""
    g = torch.Generator().manual_seed(2)
    raw = torch.randint(0, 256, (48, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(48) % 3
    ds = fastblend.MemmapImages.write(tmp_path / "d.npy", raw, labels)
    x = ds.take(range(48))[0]
    feats = fastblend.extract_features(ds, batch_size=16)
    assert torch.equal(feats, fastblend.extract_features(x, batch_size=16))
    clus = fastblend.group(feats, ds.labels, ipc=2, backend="torch")
    assert torch.equal(clus.assignment, fastblend.group(feats, labels, ipc=2, backend="torch").assignment)
    model = fastblend.random_convnet(1, 8, 0, num_classes=3)
    assert accuracy(model, ds) == accuracy(model, x, labels)
    forget, test = Subset(ds, range(0, 20)), Subset(ds, range(20, 48))
    assert mia_score(model, forget, test) == mia_score(model, (x[:20], labels[:20]), (x[20:], labels[20:]))


# ---------------------------------------------------------------------------------------------
# unlearn and the metrics on a streamed Dataset


C, D = 3, 12


def _task(seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(C, D, generator=g) * 2
    def blobs(n):
        y = torch.randint(0, C, (n,), generator=g)
        return centers[y] + torch.randn(n, D, generator=g), y
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, C))
    return model, blobs(90), blobs(20), blobs(60)


def test_dataset_is_streamed_not_materialised():
    _, (xr, yr), _, _ = _task()
    ds = Rows(xr, yr)
    view = as_data(ds, "retain", "unlearn")
    assert not view.in_memory and len(view) == 90 and view.num_batches(32) == 3
    sub = as_data(Subset(ds, [5, 6, 7]), "retain", "unlearn")
    assert not sub.in_memory and sub.indices.tolist() == [5, 6, 7]
    mem = as_data((xr, yr), "retain", "unlearn")
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for (a, ya), (b, yb) in zip(view.batches(32, g1, torch.device("cpu"), "t"),
                                mem.batches(32, g2, torch.device("cpu"), "t"), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


class LabelledRows(Rows):
    """:class:`Rows` with a ``labels`` attribute: its labels cost no pass over the images."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(x, y)
        self.labels = y


@pytest.mark.parametrize("method, cfg, rows", [("finetune", dict(epochs=2, lr=0.05), Rows),
                                               ("neggrad_plus", dict(epochs=2, lr=0.05), Rows),
                                               ("a_finetune", dict(epochs=2, lr=0.05, request="sample"), Rows),
                                               ("a_finetune", dict(epochs=2, lr=0.05), LabelledRows),
                                               ("ssd", None, Rows)])
def test_unlearn_on_a_dataset_equals_tensors(method, cfg, rows):
    model, (xr, yr), (xf, yf), (xu, yu) = _task()
    ref = fastblend.unlearn(method, model, (xr, yr), (xf, yf), (xu, yu), config=cfg, seed=5)
    got = fastblend.unlearn(method, model, rows(xr, yr), rows(xf, yf), rows(xu, yu), config=cfg, seed=5)
    assert got.losses == ref.losses and got.steps == ref.steps
    assert got.info.get("request") == ref.info.get("request")
    for pa, pb in zip(ref.model.parameters(), got.model.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("method", ["a_finetune", "neggrad_plus"])
def test_shuffling_forget_and_unseen_loaders_do_not_change_a_rerun(method):
    # the forget and unseen sets are read once into memory; a loader that only shuffles is read in its dataset's
    # order, so the same seed gives the same model whatever the global RNG (it used to follow the shuffle)
    model, (xr, yr), (xf, yf), (xu, yu) = _task()
    ref = fastblend.unlearn(method, model, (xr, yr), (xf, yf), (xu, yu), config=dict(epochs=2, lr=0.05), seed=5)
    for rng in (1, 2):
        torch.manual_seed(rng)
        got = fastblend.unlearn(method, model, (xr, yr), DataLoader(Rows(xf, yf), batch_size=4, shuffle=True),
                                DataLoader(Rows(xu, yu), batch_size=4, shuffle=True), config=dict(epochs=2, lr=0.05),
                                seed=5)
        assert got.losses == ref.losses
        for pa, pb in zip(ref.model.parameters(), got.model.parameters()):
            assert torch.equal(pa, pb)
    # a loader with a sampler of its own (here: dropping a random few) keeps its own reading, and unlearn says
    # that the rows it dropped are neither forgotten nor retained
    loader = DataLoader(Rows(xf, yf), batch_size=7, shuffle=True, drop_last=True)
    assert as_data(loader, "forget", "t").materialise("t").labels.numel() == len(yf) // 7 * 7 < len(yf)
    with pytest.warns(UserWarning, match=f"forget DataLoader yielded {len(yf) // 7 * 7} rows for its dataset's"):
        fastblend.unlearn(method, model, (xr, yr), loader, (xu, yu), config=dict(epochs=1, lr=0.05), seed=5)
    # a sampler drawing with replacement yields as many rows as the dataset but repeats some and misses others
    for sampler in (RandomSampler(Rows(xf, yf), replacement=True),
                    WeightedRandomSampler(torch.ones(len(yf)), len(yf))):
        loader = DataLoader(Rows(xf, yf), batch_size=7, sampler=sampler)
        with pytest.warns(UserWarning, match=f"forget DataLoader's {type(sampler).__name__} draws with replacement") \
                as said:
            fastblend.unlearn(method, model, (xr, yr), loader, (xu, yu), config=dict(epochs=1, lr=0.05), seed=5)
        assert {w.filename for w in said if "replacement" in str(w.message)} == {__file__}  # the caller's line
        with pytest.warns(UserWarning, match="draws with replacement"):
            fastblend.data_adapter.as_tensors(loader, "forget", "t")


def test_a_streamed_retain_set_without_labels_gets_the_papers_recipe_and_says_why():
    """``request="auto"`` never reads a streamed set whole just to choose its recipe."""
    model, (xr, yr), (xf, yf), (xu, yu) = _task()
    retain = Rows(xr, yr)
    with pytest.warns(UserWarning, match="cannot read the retain set's labels without a pass"):  # and says so
        res = fastblend.unlearn("a_finetune", model, retain, (xf, yf), (xu, yu), config=dict(epochs=1), seed=5)
    assert res.info["request"] == "sample" and "labels are neither in memory" in res.info["request_reason"]
    assert len(retain.reads) == len(yr) + 1  # one epoch of batches and the shape probe: no pass for the labels


def test_streamed_retain_checks_labels_and_disjointness():
    model, (xr, yr), (xf, yf), _ = _task()
    with pytest.raises(ValueError, match=r"unlearn: retain labels must be in \[0, 3\)"):
        fastblend.unlearn("finetune", model, Rows(xr, yr + 3), (xf, yf), config=dict(epochs=1))
    both = Rows(torch.cat([xr, xf]), torch.cat([yr, yf]))
    with pytest.raises(ValueError, match="unlearn: retain and forget must be disjoint"):
        fastblend.unlearn("finetune", model, Subset(both, range(0, 91)), Subset(both, range(90, 110)))


def test_metrics_on_a_dataset_equal_tensors():
    model, (xr, yr), (xf, yf), (xu, yu) = _task()
    assert accuracy(model, Rows(xu, yu), batch_size=16) == accuracy(model, xu, yu, batch_size=16)
    assert torch.equal(predict_logits(model, Rows(xu, yu), 16), predict_logits(model, xu, 16))
    assert mia_score(model, Rows(xf, yf), Rows(xu, yu)) == mia_score(model, (xf, yf), (xu, yu))
    assert svc_mia(model, Rows(xr, yr), Rows(xf, yf), Rows(xu, yu)) == svc_mia(model, (xr, yr), (xf, yf), (xu, yu))
    with pytest.raises(ValueError, match="^accuracy: batch_size must be >= 1"):
        accuracy(model, Rows(xu, yu), batch_size=0)


def test_memmap_refuses_raw_settings_for_a_npy_file_and_names_a_garbage_one(tmp_path):
    x, y = _images(6, c=1)
    fastblend.MemmapImages.write(tmp_path / "a.npy", x, y)
    with pytest.raises(ValueError, match="MemmapImages: .*a.npy' is a .npy file .* leave them out"):
        fastblend.MemmapImages(tmp_path / "a.npy", shape=(6, 1, 8, 8))
    garbage = tmp_path / "g.npy"
    garbage.write_bytes(b"hello world garbage" * 10)
    with pytest.raises(ValueError, match="MemmapImages: shape must be .* of ints"):
        fastblend.MemmapImages(garbage, y, shape=(6, 1, 8, 8.5))
    with pytest.raises(ValueError, match="^MemmapImages: cannot map .*g.npy' \\(not a .npy file"):
        fastblend.MemmapImages(garbage, labels=[0])


def test_memmap_take_counts_negative_indices_from_the_end(tmp_path):
    x, y = _images(6, c=1)
    ds = fastblend.MemmapImages.write(tmp_path / "a.npy", x, y)
    images, labels = ds.take([1, -1, -6])
    assert torch.equal(images, x[[1, 5, 0]]) and torch.equal(labels, y[[1, 5, 0]])
    with pytest.raises(IndexError, match=r"MemmapImages.take: indices must be in \[-6, 6\), got -7"):
        ds.take([-7])
    batch = next(iter(DataLoader(Subset(ds, [5, -1]), batch_size=2)))
    assert torch.equal(batch[0], x[[5, 5]])
    ds_np = fastblend.MemmapImages.write(tmp_path / "b.npy", x, y, chunk_size=np.int64(2))
    assert torch.equal(ds_np.take(range(6))[0], x)


def test_reading_a_loader_in_dataset_order_keeps_its_batch_sampler_and_worker_seeds():
    from torch.utils.data import BatchSampler, RandomSampler, TensorDataset

    from fastblend.data_adapter import _only_shuffles

    ds = TensorDataset(torch.randn(10, 3), torch.arange(10) % 2)
    own = DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 4, drop_last=False))
    assert not _only_shuffles(own)  # the caller's own batch sampler: read as it is
    assert as_data(own, "forget", "t").materialise("t").labels.numel() == 10
    dropping = DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 4, drop_last=True))
    assert not _only_shuffles(dropping)
    assert as_data(dropping, "forget", "t").materialise("t").labels.numel() == 8

    class PreBatched(torch.utils.data.Dataset):  # each item holds 5 rows: no partial-read warning for it
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.randn(5, 3), torch.arange(5) % 2

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, _ = fastblend.data_adapter.as_tensors(DataLoader(PreBatched(), batch_size=None), "forget", "t")
    assert x.shape[0] == 10


def test_reading_in_dataset_order_keeps_the_loaders_worker_seeds():
    class Noisy(torch.utils.data.Dataset):  # a random transform: in a worker, seeded from the loader's generator
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.rand(3), i % 2

    reads = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        loader = DataLoader(Noisy(), batch_size=3, shuffle=True, num_workers=1,
                            generator=torch.Generator().manual_seed(0))
        reads.append(fastblend.data_adapter.as_tensors(loader, "unseen", "t")[0])
    assert torch.equal(reads[0], reads[1])
