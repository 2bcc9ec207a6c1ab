"""Cluster-chunked Blend (member_chunk), Dataset sources streamed, and the reduced set that serves its
residual rows from the source (no copy), with its save/load."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import fastblend
from fastblend.condensation import BlendIndex, ReducedRetainSet, blend_clusters, condense
from fastblend.condensation.blend import blend_chunked, plan_chunks

N, IPC, IT = 96, 4, 3


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % 3


class RowsDataset(Dataset):
    """A map-style dataset with a batched fetch, no labels attribute; records the largest read."""

    def __init__(self, x, y, batched=True):
        self.x, self.y, self.largest = x, y, 0
        if not batched:
            self.__getitems__ = None

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i].clone(), int(self.y[i])

    def __getitems__(self, rows):
        self.largest = max(self.largest, len(rows))
        return [(self.x[i].clone(), int(self.y[i])) for i in rows]


FORGET = torch.arange(0, N, 11)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_plan_chunks_hold_at_most_member_chunk():
    sizes = torch.tensor([3, 4, 9, 1, 1, 2])
    assert plan_chunks(sizes, None) == [(0, 6)]
    assert plan_chunks(sizes, 7) == [(0, 2), (2, 3), (3, 6)]  # the 9-member cluster is a chunk alone
    assert plan_chunks(sizes, 100) == [(0, 6)]
    assert plan_chunks(torch.zeros(0, dtype=torch.long), 4) == []


@pytest.mark.parametrize("member_chunk", [1, 8, 15])
def test_blend_clusters_in_chunks_equals_all_at_once(member_chunk):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, 16, 16, generator=g)
    indptr = torch.tensor([0, 3, 10, 11, 20, 25, 33, 40])
    net = fastblend.random_convnet(3, 16, 5)
    whole = blend_clusters(x, indptr, net, lr=0.5, iterations=IT)
    parts = blend_clusters(x, indptr, net, lr=0.5, iterations=IT, member_chunk=member_chunk)
    for name in ("weights", "normalized_weights", "blended", "initial_terms", "final_terms"):
        _close(getattr(parts, name), getattr(whole, name))
    assert parts.loss_history == pytest.approx(whole.loss_history, rel=1e-5)
    assert parts.final_loss == pytest.approx(whole.final_loss, rel=1e-5)


def test_blend_chunked_reads_one_chunk_at_a_time():
    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    indptr = torch.tensor([0, 3, 10, 11, 20, 25, 33, 40])
    reads = []

    def fetch(pos):
        reads.append(pos.clone())
        return x[pos]

    net = fastblend.random_convnet(3, 16, 5)
    blend_chunked(fetch, indptr, net, member_chunk=12, loss_clusters=7, device=torch.device("cpu"), lr=0.5,
                  iterations=1)
    assert max(r.numel() for r in reads) <= 12
    assert torch.equal(torch.cat(reads), torch.arange(40))  # every member read exactly once


def test_blend_clusters_refuses_bad_chunk_and_loss_clusters():
    x, indptr = torch.randn(4, 3, 16, 16), torch.tensor([0, 2, 4])
    net = fastblend.random_convnet(3, 16, 5)
    with pytest.raises(ValueError, match="^blend_clusters: member_chunk must be None or an int >= 1"):
        blend_clusters(x, indptr, net, lr=0.5, member_chunk=0)
    with pytest.raises(ValueError, match="^blend_clusters: loss_clusters must be an int >= K = 2"):
        blend_clusters(x, indptr, net, lr=0.5, loss_clusters=1)
    with pytest.raises(ValueError, match="^condense: member_chunk must be None or an int >= 1"):
        condense(x, torch.tensor([0, 0, 1, 1]), [0], ipc=1, member_chunk=2.5)


@pytest.fixture(scope="module")
def runs():
    x, y = _data()
    kw = dict(ipc=IPC, iterations=IT, seed=0, progress=False)
    whole = condense(x, y, FORGET, **kw)
    chunked = condense(x, y, FORGET, member_chunk=10, **kw)
    ds = RowsDataset(x, y)
    streamed = condense(ds, FORGET, member_chunk=10, **kw)
    return x, y, ds, whole, chunked, streamed


def _same_result(a: ReducedRetainSet, b: ReducedRetainSet):
    for name in ("labels", "is_blended", "source_cluster", "source_index", "blend_members", "blend_indptr"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    _close(a.blends, b.blends)
    _close(a.blend_weights, b.blend_weights)
    assert a.loss_history == pytest.approx(b.loss_history, rel=1e-5)
    assert a.final_loss == pytest.approx(b.final_loss, rel=1e-5)


def test_chunked_condense_equals_in_memory(runs):
    x, y, _, whole, chunked, _ = runs
    assert whole.num_blended >= 2 and whole.num_residual > 0
    _same_result(chunked, whole)
    assert chunked.settings["member_chunk"] == 10
    torch.testing.assert_close(chunked.images, whole.images, rtol=1e-5, atol=1e-6)


def test_dataset_source_equals_tensor_path_and_serves_residual_rows_from_it(runs):
    x, y, ds, whole, _, streamed = runs
    _same_result(streamed, whole)
    assert streamed.source is ds and streamed.blends.shape[0] == streamed.num_blended
    assert streamed._images is None and not streamed.in_memory  # no residual image tensor is held
    with pytest.raises(AttributeError, match="ReducedRetainSet.images: .* residual rows from a RowsDataset"):
        streamed.images  # noqa: B018
    rows = torch.cat([b[0] for b in DataLoader(streamed, batch_size=16)])
    torch.testing.assert_close(rows, whole.images, rtol=1e-5, atol=1e-6)
    res = int(torch.nonzero(~streamed.is_blended)[0])
    assert torch.equal(streamed[res][0], x[int(streamed.source_index[res])])
    torch.testing.assert_close(streamed.materialise().images, whole.images, rtol=1e-5, atol=1e-6)


def test_tensor_source_is_not_copied_until_images_is_asked_for():
    x, y = _data()
    reduced = condense(x, y, FORGET, ipc=IPC, iterations=1, progress=False)
    assert reduced._images is None and reduced.source is x and reduced.in_memory
    res = int(torch.nonzero(~reduced.is_blended)[0])
    assert torch.equal(reduced[res][0], x[int(reduced.source_index[res])])
    assert reduced.images.shape == (len(reduced), 3, 16, 16)


def test_dataset_labels_from_targets_or_one_pass():
    x, y = _data(48)
    plain = RowsDataset(x, y, batched=False)
    with_targets = RowsDataset(x, y)
    with_targets.targets = y.tolist()
    a = condense(plain, [0, 5], ipc=2, iterations=1, progress=False)
    b = condense(with_targets, [0, 5], ipc=2, iterations=1, progress=False)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.source_index, b.source_index)
    with pytest.raises(TypeError, match="^condense: labels must be None when the data is a RowsDataset"):
        condense(plain, y, [0], ipc=2)


def test_save_load_without_residual_images(tmp_path, runs):
    x, y, ds, whole, _, streamed = runs
    path = tmp_path / "reduced.pt"
    streamed.save(path)
    state = torch.load(path, weights_only=True)
    assert "images" not in state and state["blends"].shape[0] == streamed.num_blended
    with pytest.raises(ValueError, match=r"^ReducedRetainSet.load: .* holds no residual images .* pass source="):
        ReducedRetainSet.load(path)
    other = RowsDataset(x + 1, y)
    with pytest.raises(ValueError, match=r"^ReducedRetainSet.load: .*: source does not match .* content hash"):
        ReducedRetainSet.load(path, source=other)
    with pytest.raises(ValueError, match="source does not match .* rows"):
        ReducedRetainSet.load(path, source=RowsDataset(x[:50], y[:50]))
    back = ReducedRetainSet.load(path, source=x)  # a tensor holding the same images serves too
    torch.testing.assert_close(back.images, whole.images, rtol=1e-5, atol=1e-6)
    assert back.loss_history == streamed.loss_history
    back_ds = ReducedRetainSet.load(path, source=ds)
    assert torch.equal(back_ds[len(back_ds) - 1][0], streamed[len(streamed) - 1][0])


def test_save_load_in_memory_stays_self_contained(tmp_path, runs):
    _, _, _, whole, _, streamed = runs
    path = tmp_path / "whole.pt"
    whole.save(path)  # default for a tensor source: every row's image, the format of older files
    state = torch.load(path, weights_only=True)
    assert "images" in state and "blends" not in state and "source" not in state
    back = ReducedRetainSet.load(path)
    assert torch.equal(back.images, whole.images) and back.in_memory
    # an older file: the dataclass fields with images, no blends
    old = {k: v for k, v in state.items()}
    torch.save(old, tmp_path / "old.pt")
    assert torch.equal(ReducedRetainSet.load(tmp_path / "old.pt").images, whole.images)
    # a Dataset-backed set saved with its residual rows is self-contained
    streamed.save(tmp_path / "full.pt", with_residual=True)
    torch.testing.assert_close(ReducedRetainSet.load(tmp_path / "full.pt").images, whole.images,
                               rtol=1e-5, atol=1e-6)
    # a tensor-backed set saved without them reopens with the tensor
    x = whole.source
    whole.save(tmp_path / "lean.pt", with_residual=False)
    assert torch.equal(ReducedRetainSet.load(tmp_path / "lean.pt", source=x).images, whole.images)


def test_blend_index_from_a_dataset(tmp_path):
    x, y = _data(72)
    ds = RowsDataset(x, y)
    kw = dict(ipc=3, iterations=2, seed=0, progress=False)
    ref = BlendIndex.build(x, y, **kw)
    idx = BlendIndex.build(ds, member_chunk=9, **kw)
    assert idx.images is ds
    torch.testing.assert_close(idx.blends, ref.blends, rtol=1e-5, atol=1e-6)
    assert idx.loss_history == pytest.approx(ref.loss_history, rel=1e-5)
    forget = [1, 2, 40]
    r_ref, r = ref.reduce(forget), idx.reduce(forget)
    assert r.source is ds and torch.equal(r.source_index, r_ref.source_index)
    torch.testing.assert_close(torch.cat([b[0] for b in DataLoader(r, batch_size=8)]), r_ref.images,
                               rtol=1e-5, atol=1e-6)
    path = tmp_path / "index.pt"
    idx.save(path)
    with pytest.raises(ValueError, match=r"^BlendIndex.load: .* built from a Dataset .* pass source="):
        BlendIndex.load(path)
    with pytest.raises(ValueError, match="source does not match"):
        BlendIndex.load(path, source=RowsDataset(x.flip(0), y))
    back = BlendIndex.load(path, source=ds)
    assert back.images is ds and torch.equal(back.blends, idx.blends)


def _memmap_index(tmp_path):
    x, y = _data(30)
    ds = fastblend.MemmapImages.write(tmp_path / "src.npy", x, y)
    index = BlendIndex.build(ds, ipc=2, iterations=1, seed=0, progress=False)
    index.save(tmp_path / "i.index")
    reduced = index.reduce([0, 1])
    reduced.save(tmp_path / "r.pt")
    return x, y, ds, reduced


@pytest.mark.parametrize("change", ["pixel", "label"])
def test_load_refuses_a_source_with_one_pixel_or_one_label_changed(tmp_path, change):
    x, y, ds, reduced = _memmap_index(tmp_path)
    x2, y2 = x.clone(), y.clone()
    if change == "pixel":
        x2[3, 0, 5, 7] += 0.25
    else:
        y2[3] = (y2[3] + 1) % 3
    modified = fastblend.MemmapImages.write(tmp_path / "mod.npy", x2, y2)
    for load in (BlendIndex.load, ReducedRetainSet.load):
        path = tmp_path / ("i.index" if load == BlendIndex.load else "r.pt")
        with pytest.raises(ValueError, match="source does not match .* (content|labels) hash"):
            load(path, source=modified)
    assert BlendIndex.load(tmp_path / "i.index", source=ds).images is ds
    assert len(ReducedRetainSet.load(tmp_path / "r.pt", source=ds)) == len(reduced)


def test_fingerprint_streams_a_sample_of_a_large_source_and_reads_old_fingerprints(monkeypatch):
    from fastblend.condensation import source as src

    x, y = _data(40)
    ds = RowsDataset(x, y)
    whole = src.fingerprint(ds)
    assert whole["rows"] == "all" and whole["label_rows"] == "all" and whole == src.fingerprint(RowsDataset(x, y))
    assert src.fingerprint(x)["images"] == whole["images"] and src.fingerprint(x)["labels"] is None
    monkeypatch.setattr("fastblend._io.FULL_HASH_BYTES", 1024)
    monkeypatch.setattr("fastblend._io.SAMPLE_ROWS", 5)
    monkeypatch.setattr(src, "_READ", 2)
    ds.largest = 0
    sampled = src.fingerprint(ds)
    assert sampled["rows"] == "sample" and ds.largest == 2  # streamed two rows at a time
    for row in (0, 39):  # the first and the last row are always hashed
        x2 = x.clone()
        x2[row] += 1
        with pytest.raises(ValueError, match="content hash"):
            src.check_fingerprint(RowsDataset(x2, y), sampled, "t")
    # a fingerprint without a kind (none was ever released) is refused, as is an unknown kind
    with pytest.raises(ValueError, match="missing or unreadable; rebuild"):
        src.check_fingerprint(ds, {"length": 40, "shape": [3, 16, 16], "dtype": "float32", "hash": 1}, "t")
    with pytest.raises(ValueError, match="kind 3.*rebuild"):
        src.check_fingerprint(ds, dict(whole, kind=3), "t")


def test_numpy_integers_are_accepted_and_saved_as_python_ints(tmp_path):
    import numpy as np

    from fastblend.condensation.blend import check_member_chunk

    assert check_member_chunk("t", np.int64(5)) == 5 and type(check_member_chunk("t", np.int64(5))) is int
    for bad in (True, 2.5, "8", 0):
        with pytest.raises(ValueError, match="t: member_chunk must be None or an int >= 1"):
            check_member_chunk("t", bad)
    x, y = _data(36)
    clustering = fastblend.group(torch.randn(36, 4), y, ipc=np.int64(2), niter=np.int64(5))
    assert type(clustering.ipc) is int
    index = BlendIndex.build(x, y, ipc=np.int64(2), iterations=np.int64(1), member_chunk=np.int64(7), progress=False)
    assert index.settings["member_chunk"] == 7 and type(index.settings["member_chunk"]) is int
    index.save(tmp_path / "i.index")
    BlendIndex.load(tmp_path / "i.index")
    reduced = condense(x, y, [0], clustering=index.clustering, iterations=1, member_chunk=np.int64(7))
    grouped = condense(x, y, [0], ipc=np.int64(2), iterations=np.int32(1), chunk_size=np.int64(4), progress=False)
    assert grouped.settings["iterations"] == 1 and type(grouped.settings["chunk_size"]) is int
    assert torch.equal(grouped.source_index, condense(x, y, [0], ipc=2, iterations=1, progress=False).source_index)
    with pytest.raises(ValueError, match="^condense: ipc must be a positive int, got True"):
        condense(x, y, [0], ipc=True)
    reduced.save(tmp_path / "r.pt", with_residual=True)  # a numpy member_chunk in settings loads back safely
    assert ReducedRetainSet.load(tmp_path / "r.pt").settings["member_chunk"] == 7


def test_reduced_set_row_index_must_be_an_integer(runs):
    import numpy as np

    _, _, _, whole, _, streamed = runs
    for reduced in (whole, streamed, whole.materialise()):
        for bad in (1.5, True, "1"):
            with pytest.raises(TypeError, match="ReducedRetainSet: row index must be an int"):
                reduced[bad]
        assert torch.equal(reduced[np.int64(2)][0], reduced[2][0]) and torch.equal(reduced[-1][0],
                                                                                    reduced[len(reduced) - 1][0])


def test_a_dataset_row_of_another_shape_is_named():
    x, y = _data(24)

    class Odd(RowsDataset):
        def __getitems__(self, rows):
            return [(self.x[i, :, :8] if i == 5 else self.x[i], int(self.y[i])) for i in rows]

    for fn, call in (("condense", lambda: condense(Odd(x, y), [0], ipc=2, iterations=1, progress=False)),
                     ("BlendIndex.build", lambda: BlendIndex.build(Odd(x, y), ipc=2, iterations=1))):
        with pytest.raises(ValueError, match=rf"^{fn}: every dataset row must hold an image of one shape; row 5 "
                                             r"has \[3, 8, 16\], expected \[3, 16, 16\]"):
            call()

# ---------------------------------------------------------------------------------------------
# a Dataset-backed reduced set as unlearn's retain set; what condense keeps alive


def test_unlearn_on_a_dataset_backed_reduced_set_streams_it_and_equals_the_tensor_source(runs):
    from dataclasses import fields

    from torch import nn

    from fastblend.data_adapter import as_data

    x, y, ds, _, _, streamed = runs
    assert not streamed.in_memory
    view = as_data(streamed, "retain", "unlearn")
    assert view.reduced and not view.in_memory and torch.equal(view.indices, streamed.source_index)
    state = {f.name: getattr(streamed, f.name) for f in fields(streamed) if f.name != "source"}
    tensor_source = ReducedRetainSet(images=None, source=x, **state)  # the same rows, served from a tensor
    assert tensor_source.in_memory
    forget = (x[FORGET], y[FORGET])
    unseen = _data(30, seed=5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    cfg = dict(epochs=2, lr=0.05)
    got = fastblend.unlearn("a_finetune", model, streamed, forget, unseen, config=cfg, seed=3)
    ref = fastblend.unlearn("a_finetune", model, tensor_source, forget, unseen, config=cfg, seed=3)
    assert got.info["reduced_retain"] and got.losses == ref.losses and got.steps == ref.steps
    for pa, pb in zip(ref.model.parameters(), got.model.parameters()):
        assert torch.equal(pa, pb)
    # the residual rows' training indices are kept: a forget row in retain is caught
    with pytest.raises(ValueError, match="unlearn: retain and forget must be disjoint"):
        fastblend.unlearn("a_finetune", model, streamed, (x, y, torch.arange(N)), unseen, config=cfg)


def test_condense_holds_no_feature_matrix_during_the_blend(monkeypatch):
    """The grouping's [N, D] features are freed once the clustering exists (none is alive in the
    Blend); with share_network they are kept once, in content order, not copied back to row order."""
    import gc
    import importlib

    core = importlib.import_module("fastblend.condensation.index")

    x, y = _data()
    ds = RowsDataset(x, y)
    alive = []
    real = core.blend_chunked

    def spy(*args, **kwargs):
        gc.collect()
        alive.append(sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor) and o.dim() == 2
                         and o.shape[0] == N and o.shape[1] > 3))
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "blend_chunked", spy)
    kw = dict(ipc=IPC, iterations=1, seed=0, progress=False)
    condense(ds, FORGET, member_chunk=10, **kw)
    condense(x, y, FORGET, **kw)
    shared = condense(x, y, FORGET, share_network=True, **kw)
    assert alive == [0, 0, 1]
    monkeypatch.setattr(core, "blend_chunked", real)
    assert shared.settings["shared_network"] is True


def test_distributed_must_be_a_bool():
    x, y = torch.randn(12, 1, 8, 8), torch.arange(12) % 2
    with pytest.raises(TypeError, match="condense: distributed must be a bool, got int"):
        condense(x, y, [0], ipc=2, distributed=1)
    with pytest.raises(TypeError, match="BlendIndex.build: distributed must be a bool, got str"):
        BlendIndex.build(x, y, ipc=2, distributed="yes")
