"""Blend condensation: the engine (BlendIndex, and condense over it) vs the literal per-cluster loop of the
research code, split invariants, multi-round (cumulative) requests, matcher refusal, errors, persistence."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fastblend
import fastblend.experiments.plots
from fastblend import BlendIndex, Clustering, ReducedRetainSet, condense
from fastblend._device import cpu_lacks_native
from fastblend.condensation import blend_clusters, blend_lr, check_matcher, matcher_seed
from fastblend.condensation.content_grouping import group_in_content_order
from fastblend.condensation.reference import blend_clusters_reference, condense_reference
from fastblend.models import ConvNet3

from ._support import CPU_BACKENDS, FP32_MULTISTEP, Tol, assert_close, backend_params, needs_cuda, tolerance

F64 = tolerance(torch.float64)
# Deliberately different from the float64 row: the matching-loss terms are sums of squares of small
# differences (relative error only, almost no absolute floor); a chunked run or a cluster mean does
# the same arithmetic in another order; CUDA's float64 kernels round differently from the CPU's.
LOSS_TERMS = Tol(rtol=1e-9, atol=1e-15)
REORDERED = Tol(rtol=1e-12, atol=1e-13)
CUDA_VS_CPU = Tol(rtol=1e-9, atol=1e-10)
# The research code given lr·K_free/K_all takes fastblend's steps in another rounding (the lr scaled, not
# the loss), and with nothing forgotten it also blends the layout's 20-member cluster, whose weights a
# few large steps (lr 300) move far: float64 agreement is ~1e-9 relative there, not the last bits.
LR_SCALED = Tol(rtol=1e-7, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Fixtures: hand-built clusterings (no k-means involved)
# --------------------------------------------------------------------------------------------
def make_clustering(local: torch.Tensor, labels: torch.Tensor, ipc: int, num_classes: int) -> Clustering:
    """Clustering with global id ``label * ipc + local``; clusters no one is assigned to stay empty."""
    assignment = labels * ipc + local
    k = ipc * num_classes
    sizes = torch.bincount(assignment, minlength=k)
    indptr = torch.zeros(k + 1, dtype=torch.int64)
    indptr[1:] = sizes.cumsum(0)
    return Clustering(assignment=assignment, perm=torch.argsort(assignment, stable=True), indptr=indptr,
                      cluster_class=torch.arange(k) // ipc, ipc=ipc, num_classes=num_classes,
                      objective=torch.zeros(num_classes, dtype=torch.float64))


def mixed_layout(seed: int = 0):
    """3 classes x ipc 5 over 72 images of 1x8x8: one 20-image cluster, several size-1 clusters, one
    empty cluster per class, the rest random."""
    g = torch.Generator().manual_seed(seed)
    n, ipc = 72, 5
    labels = torch.arange(n) % 3
    local = torch.randint(1, 4, (n,), generator=g)  # clusters 1..3 random, 4 empty
    by_class = [torch.nonzero(labels == c).flatten() for c in range(3)]
    local[by_class[0][:20]] = 0  # one big cluster
    local[by_class[1][0]] = 0  # size-1 clusters
    local[by_class[2][0]] = 0
    local[by_class[1][1:]] = torch.where(local[by_class[1][1:]] == 0, 1, local[by_class[1][1:]])
    local[by_class[2][1:]] = torch.where(local[by_class[2][1:]] == 0, 1, local[by_class[2][1:]])
    images = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return images, labels, make_clustering(local, labels, ipc, 3)


def small_matcher(dtype=torch.float64, channels: int = 1, size: int = 8, seed: int = 3) -> ConvNet3:
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = ConvNet3(channels, 10, size, width=8)
    torch.random.set_rng_state(gen_state)
    return net.to(dtype).eval().requires_grad_(False)


def research(images, labels, forget, clustering, fast: ReducedRetainSet, **kw) -> ReducedRetainSet:
    """The research code's post-request Blend of ``forget`` stepping each free cluster as fastblend's
    ``fast`` did: fastblend's Blend steps by ``lr / K_all`` (all non-empty clusters, docs/method.md §1.4),
    the research code by ``lr / K_free``, so it gets ``lr · K_free / K_all``."""
    k_all, k_free = int((clustering.sizes > 0).sum()), int(fast.is_blended.sum())
    lr = kw.pop("lr", "reference")
    lr = (blend_lr(clustering.ipc) if lr == "reference" else lr) * k_free / k_all
    return condense_reference(images, labels, forget, clustering, lr=lr, **kw)


def rows(r: ReducedRetainSet) -> list[tuple]:
    return list(zip(r.is_blended.tolist(), r.source_cluster.tolist(), r.source_index.tolist(), r.labels.tolist()))


# --------------------------------------------------------------------------------------------
# lr formula
# --------------------------------------------------------------------------------------------
def test_blend_lr_reference_values():
    assert blend_lr(2) == pytest.approx(1.0, abs=1e-3)
    assert blend_lr(10) == pytest.approx(0.1656, abs=1e-4)
    assert blend_lr(100) == pytest.approx(99.98, abs=1e-2)
    assert blend_lr(1000) == pytest.approx(9998.66, abs=1e-2)
    with pytest.raises(ValueError, match="blend_lr: ipc"):
        blend_lr(0)
    with pytest.raises(ValueError, match="pass lr="):
        blend_lr(6000)


def test_matcher_seed_differs_from_grouping_seed_and_per_round():
    for s in (0, 1, 7, 123456):
        seeds = {matcher_seed(s, r) for r in range(4)}
        assert s not in seeds and len(seeds) == 4


# --------------------------------------------------------------------------------------------
# Batched == literal per-cluster loop (float64, tight)
# --------------------------------------------------------------------------------------------
def _layout(name: str):
    images, labels, clustering = mixed_layout()
    if name == "uniform":
        forget = torch.tensor([2, 9, 30, 31, 50])
    elif name == "classwise":
        forget = torch.nonzero(labels == 1).flatten()
    elif name == "size1":  # ipc = class size: every cluster holds one image
        labels = torch.arange(24) % 3
        local = torch.arange(24) // 3
        clustering = make_clustering(local, labels, 8, 3)
        images = images[:24]
        forget = torch.tensor([4, 11])
    else:
        raise AssertionError(name)
    return images, labels, clustering, forget


@pytest.mark.parametrize("layout", ["uniform", "classwise", "size1"])
@pytest.mark.parametrize("normalize", ["sum", "softmax"])
def test_condense_matches_literal_loop(layout, normalize):
    images, labels, clustering, forget = _layout(layout)
    m = small_matcher()
    kw = dict(iterations=6, lr=300.0, normalize=normalize, matcher=m)
    fast = condense(images, labels, forget, clustering=clustering, progress=False, **kw)
    ref = research(images, labels, forget, clustering, fast, **kw)
    assert rows(fast) == rows(ref)
    assert torch.equal(fast.blend_members, ref.blend_members)
    assert torch.equal(fast.blend_indptr, ref.blend_indptr)
    assert_close(fast.blend_weights, ref.blend_weights, tol=LR_SCALED)
    assert_close(fast.images, ref.images, tol=LR_SCALED)
    assert fast.final_loss == pytest.approx(ref.final_loss, rel=LR_SCALED.rtol)
    # with nothing forgotten the research code blends every non-empty cluster, as the index does: the
    # same lr, the same blends, the same loss history (the index's, which every request reports)
    index = BlendIndex.build(images, labels, clustering=clustering, progress=False, **kw)
    whole = condense_reference(images, labels, [], clustering, **kw)
    blended = whole.source_cluster[whole.is_blended]
    assert_close(index.blends[blended], whole.images[whole.is_blended], tol=LR_SCALED)
    assert fast.loss_history == index.loss_history
    assert index.loss_history == pytest.approx(whole.loss_history, rel=LR_SCALED.rtol)
    sizes = fast.blend_indptr.diff()
    if layout == "size1":  # a one-image cluster is its own blend: nothing to optimise
        assert fast.final_loss == 0.0 and torch.equal(fast.blend_weights, torch.ones_like(fast.blend_weights))
    else:  # the optimisation moved the weights away from 1/n and lowered the matching loss
        assert fast.final_loss < fast.initial_loss
        uniform = torch.repeat_interleave(1.0 / sizes.double(), sizes)
        assert (fast.blend_weights - uniform).abs().max() > 1e-6


def test_blend_clusters_raw_weights_match_loop_with_chunks():
    images, _, clustering = mixed_layout(1)
    sizes = clustering.sizes[clustering.sizes > 0]
    indptr = torch.zeros(sizes.numel() + 1, dtype=torch.int64)
    indptr[1:] = sizes.cumsum(0)
    x = images[clustering.perm]
    m = small_matcher()
    ref = blend_clusters_reference(x, indptr, m, lr=500.0, iterations=8)
    for chunk in (None, 1, 4, 100):
        fast = blend_clusters(x, indptr, m, lr=500.0, iterations=8, chunk_size=chunk, backend="torch")
        assert_close(fast.weights, ref.weights)
        assert_close(fast.final_terms, ref.final_terms, tol=LOSS_TERMS)
        assert_close(fast.initial_terms, ref.initial_terms, tol=LOSS_TERMS)


def test_chunk_size_gives_same_reduced_set():
    images, labels, clustering, forget = _layout("uniform")
    m = small_matcher()
    a = condense(images, labels, forget, clustering=clustering, matcher=m, iterations=4, lr=200.0, progress=False)
    b = condense(images, labels, forget, clustering=clustering, matcher=m, iterations=4, lr=200.0, progress=False,
                 chunk_size=2)
    assert_close(a.images, b.images, tol=REORDERED)
    assert a.final_loss == pytest.approx(b.final_loss, rel=REORDERED.rtol)


@pytest.mark.parametrize("backend", backend_params(*CPU_BACKENDS))
def test_float32_default_matcher_agrees_with_loop(backend):
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(40) % 2
    local = torch.randint(0, 4, (40,), generator=g)
    clustering = make_clustering(local, labels, 4, 2)
    images = torch.randn(40, 3, 8, 8, generator=g)
    forget = torch.tensor([0, 1, 2])
    kw = dict(iterations=5, lr=20.0, seed=4)
    fast = condense(images, labels, forget, clustering=clustering, progress=False, backend=backend, **kw)
    ref = research(images, labels, forget, clustering, fast, **kw)
    assert fast.settings["matcher_seed"] == matcher_seed(4)
    assert_close(fast.images, ref.images, tol=FP32_MULTISTEP)
    assert fast.final_loss == pytest.approx(ref.final_loss, rel=1e-3)


# --------------------------------------------------------------------------------------------
# Invariants of the split
# --------------------------------------------------------------------------------------------
def test_iteration_zero_blend_is_cluster_mean():
    images, labels, clustering, forget = _layout("uniform")
    r = condense(images, labels, forget, clustering=clustering, iterations=0, matcher=small_matcher(),
                 progress=False)
    assert r.num_blended > 0
    for row in torch.nonzero(r.is_blended).flatten().tolist():
        members = clustering.members(int(r.source_cluster[row]))
        assert_close(r.images[row], images[members].mean(0), tol=REORDERED)
    assert r.final_loss == r.initial_loss and r.loss_history == []


def _check_split(r: ReducedRetainSet, images, labels, clustering: Clustering, forget_set: set[int]):
    touched, free, residual = set(), [], []
    for c in range(clustering.num_clusters):
        members = clustering.members(c).tolist()
        if any(i in forget_set for i in members):
            touched.add(c)
            residual += [i for i in members if i not in forget_set]
        elif members:
            free.append(c)
    res = ~r.is_blended
    assert r.source_index[res].tolist() == residual  # exactly, in CSR order
    assert r.source_cluster[r.is_blended].tolist() == free
    assert set(r.touched_clusters.tolist()) == touched
    assert torch.equal(r.free_clusters, torch.tensor(free, dtype=torch.int64))
    assert (r.source_cluster[res] == -1).all() and (r.source_index[r.is_blended] == -1).all()
    # no forgotten image anywhere: not as a residual row, not as a blend member
    assert not (set(r.source_index.tolist()) & forget_set)
    assert not (set(r.blend_members.tolist()) & forget_set)
    assert torch.equal(r.images[res], images[r.source_index[res]])
    assert torch.equal(r.labels[res], labels[r.source_index[res]])
    assert torch.equal(r.labels[r.is_blended], clustering.cluster_class[r.source_cluster[r.is_blended]])
    retain = labels.numel() - len(forget_set)
    assert r.compression == pytest.approx(retain / len(r))
    assert r.labels.dtype == torch.int64 and r.is_blended.dtype == torch.bool


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_split_invariants_random_layouts(data):
    n = data.draw(st.integers(4, 40))
    num_classes = data.draw(st.integers(1, 3))
    ipc = data.draw(st.integers(1, 6))
    labels = torch.tensor(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    local = torch.tensor(data.draw(st.lists(st.integers(0, ipc - 1), min_size=n, max_size=n)))
    clustering = make_clustering(local, labels, ipc, num_classes)
    forget = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    images = torch.arange(n * 16, dtype=torch.float64).reshape(n, 1, 4, 4)
    r = condense(images, labels, forget, clustering=clustering, iterations=0, matcher=nn.Flatten(),
                 progress=False)
    _check_split(r, images, labels, clustering, set(forget))


def test_classwise_forgetting_touches_every_cluster_of_the_class():
    images, labels, clustering, forget = _layout("classwise")
    r = condense(images, labels, forget, clustering=clustering, iterations=1, lr=1.0, matcher=small_matcher(),
                 progress=False)
    _check_split(r, images, labels, clustering, set(forget.tolist()))
    class1 = torch.nonzero((clustering.cluster_class == 1) & (clustering.sizes > 0)).flatten()
    assert set(class1.tolist()) == set(r.touched_clusters.tolist())
    assert not (r.labels == 1).any()


def test_forget_as_mask_equals_indices():
    images, labels, clustering, forget = _layout("uniform")
    mask = torch.zeros(labels.numel(), dtype=torch.bool)
    mask[forget] = True
    kw = dict(clustering=clustering, iterations=2, lr=10.0, matcher=small_matcher(), progress=False)
    a, b = condense(images, labels, forget, **kw), condense(images, labels, mask, **kw)
    c = condense(images, labels, forget.tolist(), **kw)
    assert rows(a) == rows(b) == rows(c)
    assert torch.equal(a.images, b.images)


def test_no_forget_blends_everything():
    images, labels, clustering, _ = _layout("uniform")
    r = condense(images, labels, [], clustering=clustering, iterations=1, lr=1.0, matcher=small_matcher(),
                 progress=False)
    assert r.num_residual == 0 and r.num_blended == int((clustering.sizes > 0).sum())


# --------------------------------------------------------------------------------------------
# Multi-round
# --------------------------------------------------------------------------------------------
def test_cumulative_requests_keep_the_blends_of_clusters_that_stay_free():
    """Multi-round unlearning is a cumulative request to the index (what Blender(mode="cached") did)."""
    images, labels, clustering = mixed_layout(2)
    kw = dict(clustering=clustering, iterations=3, lr=100.0, matcher=small_matcher(), progress=False)
    index = BlendIndex.build(images, labels, **kw)
    first, second = [1, 2, 40], [3, 41, 60, 61]
    r1 = index.reduce(first)
    once = condense(images, labels, first, **kw)
    assert rows(r1) == rows(once) and torch.equal(r1.images, once.images)  # condense is build + reduce
    r2 = index.reduce(torch.tensor(first + second))
    _check_split(r2, images, labels, clustering, set(first + second))
    # blends of clusters that stayed free are the same rows as in round 1
    row1 = {c: i for i, c in enumerate(r1.source_cluster.tolist()) if c >= 0}
    for i, c in enumerate(r2.source_cluster.tolist()):
        if c >= 0:
            assert torch.equal(r2.images[i], r1.images[row1[c]])
    assert r2.num_blended < r1.num_blended
    assert math.isfinite(r2.final_loss)
    # a round's request may repeat what earlier rounds forgot: a mask of the union is the same request
    union = torch.zeros(labels.numel(), dtype=torch.bool)
    union[first + second] = True
    assert rows(index.reduce(union)) == rows(r2)
    with pytest.raises(ValueError, match="BlendIndex.reduce: forget indices must be in"):
        index.reduce([5, 999])
    with pytest.raises(ValueError, match="covers all"):
        index.reduce(torch.ones(labels.numel(), dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# Matcher refusal
# --------------------------------------------------------------------------------------------
class _BatchCentered(nn.Module):
    def forward(self, x):
        return (x - x.mean(0, keepdim=True)).flatten(1)


def test_refuses_batchnorm_in_training_mode():
    images, labels, clustering, forget = _layout("uniform")
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).double()
    state = bn[1].running_mean.clone()
    with pytest.raises(ValueError, match="BatchNorm in training mode.*batch statistics"):
        condense(images, labels, forget, clustering=clustering, matcher=bn.train(), progress=False)
    assert torch.equal(bn[1].running_mean, state)  # refused before running it
    r = condense(images, labels, forget, clustering=clustering, matcher=bn.eval().requires_grad_(False),
                 iterations=1, lr=1.0, progress=False)
    assert r.num_blended > 0


def test_refuses_batch_dependent_matcher():
    images, labels, clustering, forget = _layout("uniform")
    with pytest.raises(ValueError, match="depends on the rest of its batch"):
        condense(images, labels, forget, clustering=clustering, matcher=_BatchCentered(), progress=False)
    with pytest.raises(ValueError, match="check_matcher: the matcher's output"):
        check_matcher(_BatchCentered(), images[:1])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("forget, match", [
    ([0, 72], r"condense: forget indices must be in \[0, 72\), got 72"),
    ([-1, 3], r"condense: forget indices must be in \[0, 72\), got -1"),
    ([3, 4, 3], "condense: forget indices must be distinct; index 3"),
    (list(range(72)), "condense: forget covers all 72 images"),
    (torch.zeros(5, dtype=torch.bool), r"condense: a boolean forget mask must have shape \[72\]"),
])
def test_bad_forget(forget, match):
    images, labels, clustering = mixed_layout()
    with pytest.raises(ValueError, match=match):
        condense(images, labels, forget, clustering=clustering, matcher=small_matcher(), progress=False)


def test_bad_inputs():
    images, labels, clustering = mixed_layout()
    m = small_matcher()
    with pytest.raises(ValueError, match="condense: images and labels must have the same length"):
        condense(images, labels[:-1], [0], clustering=clustering, matcher=m)
    with pytest.raises(ValueError, match="condense: ipc=4 disagrees with the clustering's ipc=5"):
        condense(images, labels, [0], ipc=4, clustering=clustering, matcher=m)
    with pytest.raises(ValueError, match="condense: pass ipc"):
        condense(images, labels, [0], matcher=m)
    with pytest.raises(ValueError, match="condense: clustering does not match labels"):
        condense(images, (labels + 1) % 3, [0], clustering=clustering, matcher=m)
    with pytest.raises(TypeError, match="condense: images must be a floating tensor"):
        condense(images.long(), labels, [0], clustering=clustering, matcher=m)
    with pytest.raises(TypeError, match="condense: forget indices must be integers"):
        condense(images, labels, [0.5], clustering=clustering, matcher=m)
    # a data form condense takes, with bad contents: the underlying reason, not "data must be ... a Dataset"
    uint8 = torch.utils.data.TensorDataset(torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8),
                                           torch.arange(20) % 2)
    with pytest.raises(TypeError, match="^condense: data images must be a floating-point tensor, got torch.uint8"):
        condense(uint8, [0], ipc=2)
    with pytest.raises(TypeError, match="^condense: data must be an images tensor with labels"):
        condense(object(), [0], ipc=2)
    with pytest.raises(TypeError, match=r"^condense: data: images and labels must be tensors; got Tensor and list"):
        condense((images, [0] * len(labels)), [0], ipc=2)
    for kw, match in [(dict(iterations=-1), "iterations"), (dict(lr="fast"), "lr must be"), (dict(lr=-1.0), "lr"),
                      (dict(normalize="none"), "normalize"), (dict(chunk_size=0), "chunk_size")]:
        with pytest.raises(ValueError, match=f"condense: {match}"):
            condense(images, labels, [0], clustering=clustering, matcher=m, **kw)
    with pytest.raises(ValueError, match="condense: matcher parameters are on"):
        condense(images, labels, [0], clustering=clustering, matcher=copy.deepcopy(m).to("meta"))
    with pytest.raises(ValueError, match="condense: device 'meta' holds no data"):  # issue 24.9
        condense(images, labels, [0], clustering=clustering, matcher=m, device="meta")


# --------------------------------------------------------------------------------------------
# Dataset, persistence, grouping path, visual check
# --------------------------------------------------------------------------------------------
def test_dataset_save_load(tmp_path):
    images, labels, clustering, forget = _layout("uniform")
    r = condense(images, labels, forget, clustering=clustering, iterations=2, lr=10.0, matcher=small_matcher(),
                 progress=False)
    x, y = r[0]
    assert torch.equal(x, r.images[0]) and int(y) == int(r.labels[0])
    loader = torch.utils.data.DataLoader(r, batch_size=7)
    assert sum(b[0].shape[0] for b in loader) == len(r)
    assert r.tensors()[0] is r.images
    path = tmp_path / "reduced.pt"
    r.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["reduced.pt"]  # no temporary file left behind
    back = ReducedRetainSet.load(path)
    assert rows(back) == rows(r) and torch.equal(back.images, r.images)
    assert back.timings == r.timings and back.final_loss == r.final_loss and back.settings == r.settings
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="ReducedRetainSet.load"):
        ReducedRetainSet.load(tmp_path / "other.pt")


def test_condense_groups_when_no_clustering_given(tmp_path):
    data, _ = fastblend.load_dataset("animal-mnist", per_class=12)
    images, labels = data.images, data.labels
    forget = torch.arange(0, labels.numel(), 10)
    r = condense(images, labels, forget, ipc=3, iterations=3, seed=1, progress=False)
    assert r.timings["features"] > 0 and r.timings["grouping"] > 0 and r.timings["blend"] > 0
    assert r.settings["ipc"] == 3 and r.settings["lr"] == pytest.approx(blend_lr(3))
    assert r.images.shape[1:] == images.shape[1:]
    # condense groups with the rows in an order fixed by their content (row-order invariance)
    clustering, _, _, _ = group_in_content_order(images, labels, 3, 1, None,
                                                 lambda x: fastblend.extract_features(x, seed=1, progress=False))
    again = condense(images, labels, forget, clustering=clustering, iterations=3, seed=1, progress=False)
    assert rows(r) == rows(again)
    _check_split(again, images, labels, clustering, set(forget.tolist()))
    from fastblend.experiments.plots import save_blend_grid

    png = save_blend_grid(again, images, clustering, tmp_path / "grid.png", n=3)
    assert png.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_share_network_uses_one_extraction_for_grouping_and_targets():
    data, _ = fastblend.load_dataset("animal-mnist", per_class=12)
    images, labels = data.images, data.labels
    forget = torch.arange(0, labels.numel(), 7)
    net = fastblend.models.random_convnet(1, 28, seed=matcher_seed(2))
    clustering, feats, _, _ = group_in_content_order(
        images, labels, 3, 2, None, lambda x: fastblend.extract_features(x, extractor=net, progress=False))
    # the reference route with that one network as matcher: targets from a fresh forward pass
    expect = condense(images, labels, forget, clustering=clustering, matcher=net, iterations=3, seed=2,
                      progress=False)
    shared = condense(images, labels, forget, ipc=3, share_network=True, iterations=3, seed=2, progress=False)
    given = condense(images, labels, forget, clustering=clustering, share_network=True, features=feats,
                     iterations=3, seed=2, progress=False)
    without = condense(images, labels, forget, clustering=clustering, share_network=True, iterations=3, seed=2,
                       progress=False)
    for r in (shared, given, without):
        assert rows(r) == rows(expect)
        assert r.settings["shared_network"] is True
        assert_close(r.images, expect.images, tol=FP32_MULTISTEP)
    assert shared.timings["features"] > 0 and given.timings["features"] == 0 == without.timings["features"]
    with pytest.raises(ValueError, match="share_network"):
        condense(images, labels, forget, clustering=clustering, features=feats, progress=False)
    with pytest.raises(ValueError, match="features must be"):
        condense(images, labels, forget, clustering=clustering, share_network=True, features=feats[:5],
                 progress=False)


def test_amp_blend_is_close_to_float32():
    data, _ = fastblend.load_dataset("animal-mnist", per_class=12)
    images, labels = data.images, data.labels
    forget = torch.arange(0, labels.numel(), 9)
    clustering = fastblend.group(fastblend.extract_features(images, seed=4, progress=False), labels, 3, seed=4)
    # a width-8 matcher: the default one's bfloat16 is emulated on a CPU without AVX512-BF16 (20 s here, not 2)
    def matcher():
        return small_matcher(torch.float32, channels=images.shape[1], size=images.shape[-1])

    exact = condense(images, labels, forget, clustering=clustering, matcher=matcher(), iterations=4, seed=4,
                     progress=False)
    slow = pytest.warns(UserWarning, match="amp=True .* runs bfloat16 on a CPU without native instructions") \
        if cpu_lacks_native(torch.bfloat16) else contextlib.nullcontext()
    with slow:  # such a CPU is told that the option costs time there
        mixed = condense(images, labels, forget, clustering=clustering, matcher=matcher(), iterations=4, seed=4,
                         progress=False, amp=True)
    assert rows(mixed) == rows(exact) and mixed.settings["amp"] is True
    assert mixed.images.dtype == exact.images.dtype == torch.float32
    assert mixed.final_loss == pytest.approx(exact.final_loss, rel=0.05)
    assert mixed.final_loss < mixed.initial_loss
    scale = exact.images.abs().max()
    assert (mixed.images - exact.images).abs().max() < 0.05 * scale
    assert not torch.equal(mixed.images, exact.images)


@needs_cuda
def test_cuda_matches_cpu():
    images, labels, clustering, forget = _layout("uniform")
    m = small_matcher()
    cpu = condense(images, labels, forget, clustering=clustering, matcher=m, iterations=4, lr=200.0, progress=False)
    gpu = condense(images, labels, forget, clustering=clustering, matcher=small_matcher().cuda(), iterations=4,
                   lr=200.0, device="cuda", progress=False)
    assert_close(gpu.images, cpu.images, tol=CUDA_VS_CPU)
