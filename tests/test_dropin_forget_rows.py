"""prepare_unlearning's forget rows (issue 24 items 2 and 3): forgetting by content forgets every
training row holding a forget image (duplicates included), and forget rows inside ``retain`` are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastblend

C = 3


def _data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    return torch.randn(n, 1, 8, 8, generator=gen) + y.view(-1, 1, 1, 1).float(), y


def _model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, C))


def _holds(reduced, image: torch.Tensor) -> bool:
    """Whether any row of the reduced set is bit-equal to ``image``."""
    x = torch.cat([b[0] for b in DataLoader(reduced, batch_size=64)])
    return bool((x.flatten(1) == image.flatten()).all(1).any())


def test_forget_by_content_forgets_every_duplicate_of_a_forget_image():
    x, y = _data()
    x[41], y[41] = x[7], y[7]  # row 41 duplicates row 7 (same image, same label)
    x[50] = x[8]  # row 50 holds row 8's image under another label
    unseen = _data(30, seed=1)
    index = fastblend.BlendIndex.build(x, y, ipc=4, iterations=1)
    forget = (x[[7, 8, 9]], y[[7, 8, 9]])
    prep = fastblend.prepare_unlearning(_model(), None, forget, unseen, index=index, batch_size=8)
    src = prep.reduced.source_index
    assert not bool(torch.isin(src, torch.tensor([7, 8, 9, 41, 50])).any())
    for i in (7, 8, 9):
        assert not _holds(prep.reduced, x[i])
    # the A-AMU forget set is what the caller passed: one row per forget image
    assert torch.equal(prep.criterion.step.forget.images, x[[7, 8, 9]])
    # the same image twice in the forget set is one image to forget
    twice = fastblend.prepare_unlearning(_model(), None, (x[[7, 7, 8, 9]], y[[7, 7, 8, 9]]), unseen, index=index,
                                         batch_size=8)
    assert torch.equal(twice.reduced.source_index, src)


def test_forget_indices_repeated_by_the_caller_are_named_as_passed():
    x, y = _data()
    index = fastblend.BlendIndex.build(x, y, ipc=4, iterations=1)
    with pytest.raises(ValueError, match=r"^prepare_unlearning: forget indices must be distinct; index 3 appears 2"):
        fastblend.prepare_unlearning(_model(), None, torch.tensor([3, 3, 5]), _data(30, 1), index=index)
    # a [N] bool mask names its rows (it was read as the indices 0 and 1)
    mask = torch.zeros(60, dtype=torch.bool)
    mask[[3, 5]] = True
    by_mask = fastblend.prepare_unlearning(_model(), None, mask, _data(30, 1), index=index, batch_size=8)
    by_index = fastblend.prepare_unlearning(_model(), None, torch.tensor([3, 5]), _data(30, 1), index=index,
                                            batch_size=8)
    assert torch.equal(by_mask.reduced.source_index, by_index.reduced.source_index)
    assert torch.equal(by_mask.criterion.step.forget.images, x[[3, 5]])


def test_forget_rows_inside_retain_are_refused():
    x, y = _data()
    retain, forget, unseen = (x[:50], y[:50]), (x[50:], y[50:]), _data(30, seed=1)
    with pytest.raises(ValueError, match=r"^prepare_unlearning: forget is retain"):
        fastblend.prepare_unlearning(_model(), retain, retain, unseen)
    leaky = (torch.cat([x[:50], x[[52, 55]]]), torch.cat([y[:50], y[[52, 55]]]))
    with pytest.raises(ValueError, match=r"^prepare_unlearning: 2 of the 10 forget rows are also in retain"):
        fastblend.prepare_unlearning(_model(), leaky, forget, unseen)
    with pytest.raises(ValueError, match=r"^prepare_unlearning: 2 of the 10 forget rows are also in retain"):
        fastblend.prepare_unlearning(_model(), DataLoader(TensorDataset(*leaky), batch_size=7), forget, unseen)


def test_forget_rows_inside_a_streamed_retain_are_refused(tmp_path):
    x, y = _data()
    leaky = fastblend.MemmapImages.write(tmp_path / "retain.npy", torch.cat([x[:50], x[[52]]]),
                                         torch.cat([y[:50], y[[52]]]))
    with pytest.raises(ValueError, match=r"^prepare_unlearning: 1 of the 10 forget rows are also in retain"):
        fastblend.prepare_unlearning(_model(), leaky, (x[50:], y[50:]), _data(30, seed=1))
    clean = fastblend.MemmapImages.write(tmp_path / "clean.npy", x[:50], y[:50])
    prep = fastblend.prepare_unlearning(_model(), clean, (x[50:], y[50:]), _data(30, seed=1), iterations=1)
    assert not bool((prep.reduced.source_index >= 50).any())
