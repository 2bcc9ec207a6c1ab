"""Loaders of every kind through the one data adapter (fastblend.data_adapter).

Issue 24 item 1: an index or a condensed set built from a loader whose order is not its dataset's own
(any shuffling or subset sampler, a custom batch sampler) named other rows than forget asked for, so
forget images were kept; only ``shuffle=True`` was refused. Item 9: a pre-batched
``DataLoader(batch_size=None)`` and loaders over an ``IterableDataset`` were refused (or crashed)
where their order is defined.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import fastblend
from fastblend.data_adapter import indexed_rows, is_streamed_dataset, reads_in_dataset_order

N = 40
FORGET = [0, 1, 2, 3]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 1, 8, 8, generator=g), torch.arange(N) % 4


class _Batches(Dataset):
    """A pre-batched dataset: item ``i`` is rows ``[8i, 8i + 8)`` as one ``(images, labels)`` batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return N // 8

    def __getitem__(self, i: int):
        return self.x[8 * i:8 * i + 8], self.y[8 * i:8 * i + 8]


class _Stream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def _kept(images: torch.Tensor, x: torch.Tensor, rows: list[int]) -> list[int]:
    return [i for i in rows if bool((images.flatten(1) == x[i].flatten()).all(1).any())]


def _shuffling_loaders(x, y):
    ds = TensorDataset(x, y)
    g = torch.Generator().manual_seed(1)
    return {
        "shuffle": DataLoader(ds, batch_size=7, shuffle=True, generator=g),
        "subset_random_sampler": DataLoader(ds, batch_size=7, sampler=SubsetRandomSampler(range(N), generator=g)),
        "batch_sampler_random": DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds, generator=g), 7, False)),
        "weighted": DataLoader(ds, batch_size=7, sampler=WeightedRandomSampler([1.0] * N, N, replacement=False,
                                                                               generator=g)),
        "custom_batch_sampler": DataLoader(ds, batch_sampler=[list(range(20, N)), list(range(20))]),
        "prebatched_shuffled": DataLoader(_Batches(x, y), batch_size=None, shuffle=True, generator=g),
    }


@pytest.mark.parametrize("kind", sorted(_shuffling_loaders(*_data())))
@pytest.mark.parametrize("entry", ["condense", "BlendIndex.build"])
def test_loader_not_in_dataset_order_is_refused(kind, entry):
    x, y = _data()
    loader = _shuffling_loaders(x, y)[kind]
    with pytest.raises(ValueError, match=rf"^{entry}: the DataLoader reads its dataset through .*not in the "
                                         "dataset's own order"):
        if entry == "condense":
            fastblend.condense(loader, forget=FORGET, ipc=3, iterations=1, progress=False)
        else:
            fastblend.BlendIndex.build(loader, ipc=3, iterations=1, progress=False)


def test_extract_features_refuses_a_loader_not_in_dataset_order():
    x, y = _data()
    loader = _shuffling_loaders(x, y)["subset_random_sampler"]
    with pytest.raises(ValueError, match=r"^extract_features: the DataLoader reads its dataset through "
                                         r"BatchSampler\(SubsetRandomSampler\)"):
        fastblend.extract_features(loader, progress=False)


def _in_order_loaders(x, y):
    ds = TensorDataset(x, y)
    return {
        "default": DataLoader(ds, batch_size=7),
        "sequential_sampler": DataLoader(ds, batch_size=7, sampler=SequentialSampler(ds)),
        "batch_sampler_sequential": DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 7, False)),
        "prebatched": DataLoader(_Batches(x, y), batch_size=None),
    }


@pytest.mark.parametrize("kind", sorted(_in_order_loaders(*_data())))
def test_loader_in_dataset_order_forgets_exactly_the_requested_rows(kind):
    x, y = _data()
    loader = _in_order_loaders(x, y)[kind]
    want = fastblend.BlendIndex.build(x, y, ipc=3, iterations=1, progress=False).reduce(FORGET)
    got = fastblend.BlendIndex.build(loader, ipc=3, iterations=1, progress=False).reduce(FORGET)
    assert not _kept(got.images, x, FORGET)
    assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    red = fastblend.condense(loader, forget=FORGET, ipc=3, iterations=1, progress=False)
    assert not _kept(red.images, x, FORGET)
    assert torch.equal(red.images, fastblend.condense(x, y, FORGET, ipc=3, iterations=1, progress=False).images)


def test_loader_that_skips_rows_is_refused():
    x, y = _data()
    short = DataLoader(_Batches(x, y), batch_size=None, sampler=SequentialSampler(range(3)))
    with pytest.raises(ValueError, match=r"^condense: the DataLoader reads 3 of its dataset's 5 items"):
        fastblend.condense(short, forget=FORGET, ipc=3, iterations=1, progress=False)
    dropping = DataLoader(TensorDataset(x, y), batch_size=7, drop_last=True)
    with pytest.raises(ValueError, match=r"yielded 35 of its dataset's 40 rows"):
        fastblend.BlendIndex.build(dropping, ipc=3, iterations=1, progress=False)


@pytest.mark.parametrize("entry", ["condense", "BlendIndex.build"])
def test_iterable_dataset_is_refused_where_forget_names_rows(entry):
    """Decided: forget indices name rows by index, and an IterableDataset has none (nor a length to
    check that every row was read), so condense and the index refuse it with a clear message."""
    x, y = _data()
    for data in (DataLoader(_Stream(x, y), batch_size=8), _Stream(x, y)):
        with pytest.raises(ValueError, match=rf"^{entry}: data is .*IterableDataset, whose rows have no index"):
            if entry == "condense":
                fastblend.condense(data, forget=FORGET, ipc=3, iterations=1, progress=False)
            else:
                fastblend.BlendIndex.build(data, ipc=3, iterations=1, progress=False)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))


def test_iterable_dataset_loader_is_read_once_where_no_row_is_named():
    """unlearn, AAMUStep, prepare_unlearning and the metrics take a DataLoader over an IterableDataset
    (read once, in the order it yields): the same numbers as the same rows given as tensors."""
    x, y = _data()
    stream = DataLoader(_Stream(x, y), batch_size=8)
    model = _model()
    assert fastblend.accuracy(model, stream) == fastblend.accuracy(model, (x, y))
    acc_a = fastblend.AAMUStep(model, stream, stream, batch_size=4)
    acc_b = fastblend.AAMUStep(model, (x, y), (x, y), batch_size=4)
    assert torch.equal(acc_a.forget.images, acc_b.forget.images)
    assert torch.equal(acc_a.unseen.labels, acc_b.unseen.labels)
    runs = []
    for retain in (DataLoader(_Stream(x[4:], y[4:]), batch_size=8), (x[4:], y[4:])):
        m = _model()
        fastblend.unlearn("finetune", m, retain, (x[:4], y[:4]), config={"epochs": 1, "batch_size": 8}, seed=0)
        runs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(runs[0], runs[1])
    prep = fastblend.prepare_unlearning(_model(), DataLoader(_Stream(x[4:], y[4:]), batch_size=8),
                                        (x[:4], y[:4]), stream, ipc=2, iterations=1)
    assert len(prep.reduced) > 0 and not _kept(prep.reduced.images, x, FORGET)


def test_the_predicates():
    x, y = _data()
    ds = TensorDataset(x, y)
    assert reads_in_dataset_order(DataLoader(ds, batch_size=3))
    assert reads_in_dataset_order(DataLoader(_Batches(x, y), batch_size=None))
    assert reads_in_dataset_order(DataLoader(_Stream(x, y), batch_size=3))
    assert not reads_in_dataset_order(DataLoader(_Stream(x, y), batch_size=3, num_workers=2))
    assert not any(reads_in_dataset_order(dl) for dl in _shuffling_loaders(x, y).values())
    assert not is_streamed_dataset(ds) and not is_streamed_dataset(_Stream(x, y)) and not is_streamed_dataset(x)
    assert is_streamed_dataset(_Batches(x, y))
    rows = indexed_rows(DataLoader(ds, batch_size=6), "f")
    assert torch.equal(rows[0], x) and torch.equal(rows[1], y)


def test_a_loader_of_single_items_is_refused_with_what_to_do():
    # batch_size=None yields (image, scalar label) one at a time: the message said "int64 is not an integer"
    x, y = torch.randn(12, 1, 4, 4), torch.arange(12) % 3
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="unlearn: forget's DataLoader yields one image and one scalar label at a "
                                         "time, not batches .*give it a batch_size"):
        fastblend.unlearn("finetune", net, (x[:8], y[:8]), DataLoader(TensorDataset(x[8:], y[8:]), batch_size=None),
                          config={"epochs": 1})
