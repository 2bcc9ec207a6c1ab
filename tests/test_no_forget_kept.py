"""Property (issue 24, "Must hold"): for random small data sets (duplicate images included), every
input form (tensors, a TensorDataset, a sequential DataLoader, a streamed Dataset, a memory map) and
every form of forget request (indices, a tensor of indices, a boolean mask, images found by content),
the reduced retain set

- never holds a forgotten row: no residual row is a forgotten training row and no blend has one
  among its members; a residual row bit-equal to a forget image is only allowed when a retained row
  holds the same image (a duplicate that was not asked for);
- holds every retained row's data exactly once: as a residual row (bit-equal to its training image)
  or as a member of one blend.

Tiny sizes and few examples keep it fast (one Blend iteration, 8x8 images)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fastblend

FORMS = ("tensors", "tensor_dataset", "loader", "streamed", "memmap")


class _Streamed(Dataset):
    """A map-style Dataset with no image tensor attribute: read row by row (streamed)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self._x, self._y = x, y

    def __len__(self) -> int:
        return self._x.shape[0]

    def __getitem__(self, i: int):
        return self._x[i], int(self._y[i])


@st.composite
def _cases(draw):
    n = draw(st.integers(8, 20))
    classes = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 8, 8, generator=g)
    # duplicates: some rows take another row's image (same class, or another class)
    for _ in range(draw(st.integers(0, 3))):
        src, dst = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        x[dst] = x[src]
    forget = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1)))
    request = draw(st.sampled_from(["list", "tensor", "mask", "content"]))
    form = draw(st.sampled_from(FORMS))
    engine = draw(st.sampled_from(["index", "condense"]))
    ipc = draw(st.integers(1, 3))
    return x, y, forget, request, form, engine, ipc


def _data_form(form: str, x: torch.Tensor, y: torch.Tensor, folder: Path):
    if form == "tensors":
        return (x, y)
    if form == "tensor_dataset":
        return TensorDataset(x, y)
    if form == "loader":
        return DataLoader(TensorDataset(x, y), batch_size=3)  # sequential sampler, a short last batch
    if form == "streamed":
        return _Streamed(x, y)
    return fastblend.MemmapImages.write(folder / "x.npy", x, y)  # float32 stored, read back bit-equal


def _rows_of_content(x: torch.Tensor) -> list[bytes]:
    return [row.numpy().tobytes() for row in x]


def _check(reduced, x: torch.Tensor, forgotten: set[int], request_images: torch.Tensor) -> None:
    n = x.shape[0]
    retained = set(range(n)) - forgotten
    residual = ~reduced.is_blended
    src = reduced.source_index[residual].tolist()
    members = reduced.blend_members.tolist() if reduced.blend_members is not None else []
    # no forgotten row, as a residual row or inside a blend
    assert not (set(src) & forgotten), ("a forgotten row is a residual row", sorted(set(src) & forgotten))
    assert not (set(members) & forgotten), ("a forgotten row is blended", sorted(set(members) & forgotten))
    # every retained row exactly once
    assert len(src) + len(members) == len(retained), (len(src), len(members), len(retained))
    assert set(src) | set(members) == retained
    # residual rows are their training images, bit for bit; a forget image only where a retained row has it
    images = reduced.materialise().images if not reduced.in_memory else reduced.images
    residual_images = images[residual.to(images.device)].cpu()
    assert torch.equal(residual_images, x[torch.tensor(src, dtype=torch.long)])
    content = _rows_of_content(x)
    kept = {content[r] for r in retained}
    for img in _rows_of_content(residual_images):
        if img in {c for c in _rows_of_content(request_images)}:
            assert img in kept, "a forget image is served without a retained duplicate"
    # each blend is built from its members only (one blend per free cluster, members in CSR order)
    if reduced.blend_indptr is not None:
        assert int(reduced.blend_indptr[-1]) == len(members)
        assert reduced.blend_indptr.numel() - 1 == int(reduced.is_blended.sum())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases())
def test_reduced_retain_set_keeps_no_forget_row_and_every_retained_row(case):
    x, y, forget, request, form, engine, ipc = case
    n = x.shape[0]
    with tempfile.TemporaryDirectory() as folder:
        data = _data_form(form, x, y, Path(folder))
        labels = data[1] if isinstance(data, tuple) else None
        data = data[0] if isinstance(data, tuple) else data
        forget_t = torch.tensor(forget, dtype=torch.long)
        if request == "content":
            # by content (the drop-in finds the rows of the forget images in the index): distinct images only,
            # each stands for the rows that hold it; which of a duplicate group is forgotten is the index's
            distinct = {}
            for r in forget:
                distinct.setdefault(x[r].numpy().tobytes(), r)
            forget_t = torch.tensor(sorted(distinct.values()), dtype=torch.long)
            index = fastblend.BlendIndex.build(data, labels, ipc=ipc, iterations=1, seed=0)
            model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
            unseen = (torch.randn(6, 1, 8, 8), torch.arange(6) % 3)
            prep = fastblend.prepare_unlearning(model, None, (x[forget_t], y[forget_t]), unseen, index=index,
                                                batch_size=4)
            reduced = prep.reduced
            residual = ~reduced.is_blended
            kept = set(reduced.source_index[residual].tolist()) | set(reduced.blend_members.tolist())
            forgotten = set(range(n)) - kept
            content = _rows_of_content(x)
            asked = {content[r] for r in forget_t.tolist()}
            assert forgotten, "nothing was forgotten"
            assert all(content[r] in asked for r in forgotten), "a row that was not asked for was forgotten"
            assert len(forgotten) >= forget_t.numel()
            _check(reduced, x, forgotten, x[forget_t])
            return
        req = {"list": forget, "tensor": forget_t,
               "mask": torch.zeros(n, dtype=torch.bool).index_fill_(0, forget_t, True)}[request]
        if engine == "index":
            reduced = fastblend.BlendIndex.build(data, labels, ipc=ipc, iterations=1, seed=0).reduce(req)
        else:
            reduced = fastblend.condense(data, labels, req, ipc=ipc, iterations=1, seed=0)
        _check(reduced, x, set(forget), x[forget_t])


@pytest.mark.parametrize("form", FORMS)
def test_every_input_form_gives_the_same_rows(tmp_path, form):
    """The forms are one engine's input: the same rows (and blends) whatever form the data came in."""
    g = torch.Generator().manual_seed(5)
    y = torch.arange(18) % 3
    x = torch.randn(18, 1, 8, 8, generator=g)
    data = _data_form(form, x, y, tmp_path)
    labels = data[1] if isinstance(data, tuple) else None
    data = data[0] if isinstance(data, tuple) else data
    got = fastblend.BlendIndex.build(data, labels, ipc=2, iterations=1, seed=0).reduce([1, 4, 9])
    want = fastblend.BlendIndex.build(x, y, ipc=2, iterations=1, seed=0).reduce([1, 4, 9])
    assert torch.equal(got.source_index, want.source_index) and torch.equal(got.blend_members, want.blend_members)
    got_images = got.materialise().images if not got.in_memory else got.images
    torch.testing.assert_close(got_images, want.images, rtol=0, atol=1e-6)
