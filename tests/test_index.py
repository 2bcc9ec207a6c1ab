"""BlendIndex (docs/method.md §1.4): condense is build + reduce; blends equal the research code's
post-request Blend at lr·K_free/K_all; classwise requests, save/load; row-order invariance of the
reduced set; condense on datasets and loaders; ipc and repr."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fastblend
from fastblend import BlendIndex, condense
from fastblend.condensation import blend_lr
from fastblend.condensation.reference import condense_reference

IPC = 4


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    images = torch.randn(90, 1, 12, 12, generator=gen) * 0.5 + labels.view(-1, 1, 1, 1).float()
    return images, labels


@pytest.fixture(scope="module")
def index(data):
    return BlendIndex.build(*data, ipc=IPC, seed=3)


def _same_rows(a, b, atol=1e-6):
    assert torch.equal(a.labels, b.labels) and torch.equal(a.is_blended, b.is_blended)
    assert torch.equal(a.source_index, b.source_index) and torch.equal(a.source_cluster, b.source_cluster)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=atol)


def test_blends_equal_a_post_request_research_blend(data, index):
    images, labels = data
    forget = torch.tensor([0, 7, 31, 50, 88])
    reduced = index.reduce(forget)
    k_all = index.num_blends
    k_free = int(reduced.is_blended.sum())
    assert 0 < k_free < k_all and reduced.num_residual > 0
    # condense is the same engine in one call: the same rows, bit for bit
    once = condense(images, labels, forget, ipc=IPC, seed=3, progress=False)
    assert torch.equal(once.images, reduced.images) and torch.equal(once.blend_weights, reduced.blend_weights)
    assert once.timings["blend"] > 0 and "index" not in once.timings
    # the research code blends after the request, same clustering and matcher; its loss averages over
    # K_free clusters, the index's over K_all: the same step per cluster needs lr * K_free / K_all
    after = condense_reference(images, labels, forget, index.clustering, seed=3, lr=blend_lr(IPC) * k_free / k_all)
    _same_rows(reduced, after, atol=1e-5)
    torch.testing.assert_close(reduced.blend_weights, after.blend_weights, rtol=0, atol=1e-5)
    assert torch.equal(reduced.blend_members, after.blend_members)
    assert reduced.timings["blend"] == 0.0 and reduced.timings["index"] > 0


def test_classwise_request_leaves_no_residual_and_no_blend_of_the_class(data, index):
    _, labels = data
    reduced = index.reduce(labels == 1)
    assert reduced.num_residual == 0
    assert not bool((reduced.labels == 1).any())
    assert reduced.num_blended == int((index.clustering.sizes[index.clustering.cluster_class != 1] > 0).sum())


def test_save_load_roundtrip_and_errors(tmp_path, data, index):
    path = tmp_path / "train.index"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["train.index"]  # no temporary file left
    loaded = BlendIndex.load(path)
    forget = torch.arange(0, 90, 9)
    _same_rows(loaded.reduce(forget), index.reduce(forget), atol=0)
    assert "BlendIndex(N=90" in repr(loaded)
    bad = tmp_path / "bad.index"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"^BlendIndex.load: cannot read .*bad.index"):
        BlendIndex.load(bad)
    blob = torch.load(path, weights_only=True)
    blob["fields"]["blends"] = blob["fields"]["blends"][:-1]
    torch.save(blob, bad)
    with pytest.raises(ValueError, match=r"^BlendIndex.load: .*bad.index holds an inconsistent index: blends"):
        BlendIndex.load(bad)
    with pytest.raises(ValueError, match=r"^BlendIndex.reduce: forget indices must be in \[0, 90\)"):
        index.reduce([90])


def test_reduced_set_does_not_depend_on_row_order(data):
    images, labels = data
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(5))
    forget = torch.tensor([3, 4, 40, 77])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(90)
    a = condense(images, labels, forget, ipc=IPC, seed=1, progress=False)
    b = condense(images[perm], labels[perm], inv[forget], ipc=IPC, seed=1, progress=False)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.is_blended, b.is_blended)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    res = ~a.is_blended
    assert torch.equal(a.source_index[res], perm[b.source_index[res]])


def test_condense_and_build_take_datasets_and_loaders(data, index):
    images, labels = data
    forget = [1, 2, 60]
    ref = condense(images, labels, forget, ipc=IPC, seed=0, progress=False)
    from_ds = condense(TensorDataset(images, labels), forget, ipc=IPC, seed=0, progress=False)
    from_loader = condense(DataLoader(TensorDataset(images, labels), batch_size=32), forget, ipc=IPC, seed=0,
                           progress=False)
    _same_rows(from_ds, ref, atol=0)
    _same_rows(from_loader, ref, atol=0)
    with pytest.raises(ValueError, match="^condense: the DataLoader reads its dataset through .*RandomSampler"):
        condense(DataLoader(TensorDataset(images, labels), shuffle=True), forget, ipc=IPC)
    pair = BlendIndex.build((images, labels), ipc=IPC, seed=3)
    _same_rows(pair.reduce(forget), index.reduce(forget), atol=0)


def test_ipc_larger_than_a_class_warns_naming_it():
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(25, 4, generator=gen), torch.tensor([0] * 20 + [1] * 5)
    with pytest.warns(UserWarning, match=r"^group: ipc=8 is larger than 1 class\(es\): class 1 \(5 images\)"):
        fastblend.group(feats, labels, 8, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastblend.group(feats, labels, 4, backend="torch")


def test_reduced_set_repr_is_short(index):
    text = repr(index.reduce([0, 1]))
    assert text.startswith("ReducedRetainSet(rows=") and "compression=" in text and "tensor" not in text
    assert len(text) < 300


def test_unlearn_warns_when_a_plain_method_gets_a_reduced_set(index):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 3))
    reduced = index.reduce([0, 1, 2])
    forget = (index.images[:3], index.labels[:3])
    with pytest.warns(UserWarning, match=r"^unlearn: method 'finetune' is not accelerated .*use 'a_finetune'"):
        fastblend.unlearn("FT", model, reduced, forget, config={"epochs": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastblend.unlearn("a_finetune", model, reduced, forget, unseen=forget)
    # a DataLoader over the reduced set is one too (it was taken for a plain retain set: no warning, and
    # info["reduced_retain"] False)
    loader = torch.utils.data.DataLoader(reduced, batch_size=16, shuffle=True)
    with pytest.warns(UserWarning, match=r"^unlearn: method 'finetune' is not accelerated"):
        fastblend.unlearn("FT", model, loader, forget, config={"epochs": 1})
    assert fastblend.unlearn("a_finetune", model, loader, forget, unseen=forget).info["reduced_retain"] is True
