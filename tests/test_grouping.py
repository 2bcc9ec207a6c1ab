"""Tests of fastblend.grouping: extract_features, group (faiss and torch backends), Clustering."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fastblend import Clustering, extract_features, group, load_dataset
from fastblend.models import random_convnet

from ._support import FP32_MULTISTEP, HAS_FAISS, Tol, assert_close, backend_params, needs_cuda

BACKENDS = backend_params("torch", "faiss")
CUDA_FEATURES = Tol(rtol=1e-3, atol=1e-3)  # cuDNN's convolutions against the CPU's, float32


def _animal_mnist(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``per_class`` training images of each class of the real animal-mnist data, normalised."""
    train, _ = load_dataset("animal-mnist", per_class=per_class)
    return train.images, train.labels


@pytest.fixture(scope="module")
def animal_features() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _animal_mnist(per_class=120)
    return extract_features(images, seed=0, progress=False), labels


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target, dtype=torch.int64)


def _wcss(x: np.ndarray, assign: np.ndarray) -> float:
    total = 0.0
    for a in np.unique(assign):
        pts = x[assign == a].astype(np.float64)
        total += float(((pts - pts.mean(0)) ** 2).sum())
    return total


def _check_clustering(c: Clustering, labels: torch.Tensor, ipc: int, num_classes: int) -> None:
    n = labels.numel()
    k = num_classes * ipc
    c.validate()
    assert c.assignment.dtype == c.perm.dtype == c.indptr.dtype == torch.int64
    assert c.assignment.shape == (n,) and c.indptr.shape == (k + 1,) and c.num_clusters == k
    # every sample assigned exactly once; perm is a permutation sorted by cluster, stable
    assert torch.equal(torch.sort(c.perm).values, torch.arange(n))
    assert torch.equal(c.assignment[c.perm], torch.repeat_interleave(torch.arange(k), c.sizes))
    for cl in range(min(k, 50)):
        m = c.members(cl)
        assert torch.all(m[1:] > m[:-1])
    assert int(c.sizes.sum()) == n
    # clusters never mix classes
    assert torch.equal(c.cluster_class[c.assignment], labels)
    assert torch.equal(c.assignment // ipc, labels)
    assert c.objective.dtype == torch.float64 and c.objective.shape == (num_classes,)


# ------------------------------------------------------------------------------------------------
# group: invariants, determinism, quality
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ipc", [1, 7])
def test_group_invariants(animal_features, backend, ipc):
    feats, labels = animal_features
    c = group(feats, labels, ipc, backend=backend, seed=1)
    _check_clustering(c, labels, ipc, 10)
    assert c.backend.startswith(backend)
    assert c.seconds > 0
    # objective matches a direct float64 computation of the returned partition
    for cl in range(10):
        sel = (labels == cl).numpy()
        assert c.objective[cl].item() == pytest.approx(_wcss(feats.numpy()[sel], c.assignment.numpy()[sel]), rel=1e-9)
    if ipc > 1:
        assert bool((c.sizes > 0).all())  # 120 distinct images per class: no empty cluster


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_deterministic_for_a_seed(animal_features, backend):
    feats, labels = animal_features
    a = group(feats, labels, 6, backend=backend, seed=5)
    b = group(feats, labels, 6, backend=backend, seed=5)
    assert torch.equal(a.assignment, b.assignment) and torch.equal(a.objective, b.objective)
    other = group(feats, labels, 6, backend=backend, seed=6)
    assert not torch.equal(a.assignment, other.assignment)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data, ipc", [("animal", 10), ("digits", 8)])
def test_objective_close_to_sklearn(animal_features, backend, data, ipc):
    """Mean (over 3 seeds) of the summed per-class objective within 1% of scikit-learn's KMeans
    (k-means++, n_init=1). Both are local optima, so single runs differ by a few percent either way;
    the mean over seeds and classes is what is compared. Measured: 0.3-0.8% apart, either side."""
    from sklearn.cluster import KMeans

    feats, labels = animal_features if data == "animal" else _digits()
    x, y = feats.numpy(), labels.numpy()
    ours = np.mean([group(feats, labels, ipc, backend=backend, seed=s).objective.sum().item() for s in range(3)])
    ref = np.mean([
        sum(_wcss(x[y == cl], KMeans(ipc, init="k-means++", n_init=1, random_state=s).fit(x[y == cl]).labels_)
            for cl in np.unique(y))
        for s in range(3)
    ])
    assert ours <= 1.01 * ref


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_kmeanspp_init(animal_features, backend):
    feats, labels = animal_features
    c = group(feats, labels, 5, backend=backend, init="k-means++", seed=0)
    _check_clustering(c, labels, 5, 10)
    assert c.meta["init"] == "k-means++"


def test_torch_stopping_rule_and_niter(animal_features):
    feats, labels = animal_features
    one = group(feats, labels, 5, backend="torch", niter=1)
    assert one.meta["iterations"] == [1] * 10
    full = group(feats, labels, 5, backend="torch", niter=100)
    assert all(1 <= it <= 100 for it in full.meta["iterations"])
    assert full.objective.sum() < one.objective.sum()
    # tol = 0 runs until the centroids stop moving exactly (converged): never more than niter
    exact = group(feats, labels, 5, backend="torch", tol=0.0, niter=100)
    assert exact.objective.sum() <= full.objective.sum() * (1 + 1e-6)


def test_backends_agree_in_quality(animal_features):
    feats, labels = animal_features
    t = group(feats, labels, 8, backend="torch").objective.sum()
    if HAS_FAISS:
        f = group(feats, labels, 8, backend="faiss").objective.sum()
        assert abs(float(t / f) - 1) < 0.03


def test_auto_backend_reports_choice(animal_features):
    feats, labels = animal_features
    c = group(feats, labels, 3)
    assert c.backend == ("faiss" if HAS_FAISS else "torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_balanced_bounds_sizes(animal_features, backend):
    feats, labels = animal_features
    ipc = 7
    c = group(feats, labels, ipc, backend=backend, balanced=True)
    _check_clustering(c, labels, ipc, 10)
    assert c.backend == backend + "+balanced"
    cap = -(-120 // ipc)
    assert int(c.sizes.max()) <= cap
    unbalanced = group(feats, labels, ipc, backend=backend)
    assert int(unbalanced.sizes.max()) > cap  # the constraint is active on this data
    assert float(c.objective.sum()) >= float(unbalanced.objective.sum()) * 0.99


# ------------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_small_class_each_image_own_cluster(backend):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(23, 6, generator=g)
    labels = torch.tensor([0] * 15 + [1] * 3 + [2] * 5)
    with pytest.warns(UserWarning, match="group: ipc=5 is larger than 1 class"):
        c = group(feats, labels, 5, backend=backend)
    _check_clustering(c, labels, 5, 3)
    sizes = c.sizes.view(3, 5)
    assert torch.equal(sizes[1], torch.tensor([1, 1, 1, 0, 0]))  # 3 images < ipc
    assert torch.equal(sizes[2], torch.ones(5, dtype=torch.int64))  # 5 images = ipc
    assert bool((sizes[0] > 0).all())
    assert torch.equal(c.assignment[15:18], torch.tensor([5, 6, 7]))  # local ids in index order
    assert c.objective[1] == 0 and c.objective[2] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_absent_classes_and_num_classes(backend):
    feats = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0] * 10 + [3] * 20)
    c = group(feats, labels, 4, backend=backend)
    assert c.num_classes == 4 and c.num_clusters == 16
    _check_clustering(c, labels, 4, 4)
    assert int(c.sizes[4:12].sum()) == 0 and c.objective[1] == 0 and c.objective[2] == 0
    c6 = group(feats, labels, 4, backend=backend, num_classes=6)
    assert c6.num_clusters == 24 and int(c6.sizes[16:].sum()) == 0
    with pytest.raises(ValueError, match="group: num_classes"):
        group(feats, labels, 4, backend=backend, num_classes=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates(backend):
    """3 distinct vectors repeated in a class of 30 with ipc 5: duplicates share a cluster, the
    surplus clusters stay empty, the objective is 0, nothing crashes."""
    base = torch.tensor([[0.0, 0.0], [5.0, 1.0], [-3.0, 4.0]])
    feats = base.repeat(10, 1)
    labels = torch.zeros(30, dtype=torch.int64)
    c = group(feats, labels, 5, backend=backend)
    _check_clustering(c, labels, 5, 1)
    assert int((c.sizes > 0).sum()) == 3
    for cl in torch.nonzero(c.sizes).flatten().tolist():
        m = c.members(int(cl))
        assert bool((feats[m] == feats[m[0]]).all())
    assert float(c.objective[0]) == pytest.approx(0.0, abs=1e-9)
    # partially duplicated data: duplicates still end in the same cluster
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(40, 3, generator=g)
    feats2 = torch.cat([pts, pts[:10]])
    c2 = group(feats2, torch.zeros(50, dtype=torch.int64), 6, backend=backend)
    assert torch.equal(c2.assignment[40:], c2.assignment[:10])


def test_ipc_one_is_class_partition():
    feats = torch.randn(12, 3, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 1, 2, 2])
    c = group(feats, labels, 1, backend="torch")
    assert torch.equal(c.assignment, labels)
    assert torch.equal(c.sizes, torch.bincount(labels))
    for cl in range(3):
        x = feats[labels == cl].double()
        assert c.objective[cl].item() == pytest.approx(float(((x - x.mean(0)) ** 2).sum()), rel=1e-9)


def test_accepts_other_dtypes_and_numpy():
    feats = torch.randn(40, 5, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(40) % 2
    ref = group(feats, labels, 3, backend="torch")
    c = group(feats.double().numpy(), labels.int().numpy(), 3, backend="torch")
    assert torch.equal(c.assignment, ref.assignment)


@pytest.mark.parametrize(
    "features, labels, kwargs, exc, match",
    [
        (torch.randn(5, 3), torch.zeros(4, dtype=torch.int64), {}, ValueError, "group: labels must be"),
        (torch.randn(5, 3), torch.zeros(5), {}, TypeError, "group: labels must be an integer"),
        (torch.randn(5, 3), torch.tensor([0, 1, -1, 0, 1]), {}, ValueError, "group: labels must be >= 0"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), {"ipc": 0}, ValueError, "group: ipc"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), {"ipc": 2.0}, ValueError, "group: ipc"),
        (torch.tensor([[0.0, float("nan")]] * 3), torch.zeros(3, dtype=torch.int64), {}, ValueError, "finite"),
        (torch.tensor([[0.0, float("inf")]] * 3), torch.zeros(3, dtype=torch.int64), {}, ValueError, "finite"),
        (torch.empty(0, 3), torch.zeros(0, dtype=torch.int64), {}, ValueError, "group: features must be non-empty"),
        (torch.randn(5), torch.zeros(5, dtype=torch.int64), {}, ValueError, "group: features must be 2-D"),
        (torch.ones(5, 3, dtype=torch.int64), torch.zeros(5, dtype=torch.int64), {}, TypeError, "floating"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), {"backend": "sklearn"}, ValueError, "group: backend"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), {"niter": 0}, ValueError, "group: niter"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), {"tol": -1.0}, ValueError, "group: tol"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), {"init": "random"}, ValueError, "group: init"),
    ],
)
def test_group_errors(features, labels, kwargs, exc, match):
    kwargs = {"ipc": 2, **kwargs}
    with pytest.raises(exc, match=match):
        group(features, labels, **kwargs)


# ------------------------------------------------------------------------------------------------
# Clustering save/load
# ------------------------------------------------------------------------------------------------
def test_save_load_roundtrip(tmp_path, animal_features):
    feats, labels = animal_features
    c = group(feats, labels, 4, backend="torch", num_classes=12)
    path = tmp_path / "clusters.pt"
    c.save(path)
    back = Clustering.load(path)
    for name in ("assignment", "perm", "indptr", "cluster_class", "objective"):
        assert torch.equal(getattr(back, name), getattr(c, name))
    assert (back.ipc, back.num_classes, back.backend, back.seconds) == (c.ipc, c.num_classes, c.backend, c.seconds)
    assert back.meta == c.meta
    assert torch.equal(back.sizes, c.sizes)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="Clustering.load: .* not a saved fastblend Clustering"):
        Clustering.load(path)


def test_validate_detects_inconsistency():
    c = group(torch.randn(20, 3, generator=torch.Generator().manual_seed(5)), torch.arange(20) % 2, 3,
              backend="torch")
    c.validate()
    c.perm = c.perm.flip(0)
    with pytest.raises(ValueError, match="Clustering: inconsistent"):
        c.validate()


# ------------------------------------------------------------------------------------------------
# faiss / torch import order
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
@pytest.mark.parametrize("first", ["faiss", "torch"])
def test_faiss_torch_import_order(first):
    second = "torch" if first == "faiss" else "faiss"
    code = (
        f"import {first}, {second}\n"
        "import fastblend\n"
        "x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))\n"
        "c = fastblend.group(x, torch.arange(300) % 3, 4, backend='faiss')\n"
        "assert c.backend == 'faiss' and int(c.sizes.sum()) == 300\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_does_not_load_faiss():
    code = "import sys, fastblend\nassert 'faiss' not in sys.modules\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------------------------
# extract_features
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_extract_features_matches_network(channels, size):
    x = torch.randn(13, channels, size, size, generator=torch.Generator().manual_seed(0))
    feats = extract_features(x, batch_size=5, seed=3, progress=False)
    with torch.no_grad():
        ref = random_convnet(channels, size, 3).embed(x)
    assert feats.dtype == torch.float32 and feats.shape == (13, 2048)
    assert_close(feats, ref, tol=FP32_MULTISTEP)
    assert not feats.is_inference() and not feats.requires_grad
    again = extract_features(x, batch_size=13, seed=3, progress=False)
    assert_close(again, feats, tol=FP32_MULTISTEP)
    other = extract_features(x, batch_size=13, seed=4, progress=False)
    assert not torch.allclose(other, feats)


def test_extract_features_three_dim_input():
    x = torch.randn(4, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(extract_features(x, progress=False), extract_features(x[:, None], progress=False))


def test_extract_features_custom_extractors():
    x = torch.randn(9, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    out = extract_features(x, extractor=conv, batch_size=4, progress=False)  # no embed: plain call
    with torch.no_grad():
        torch.testing.assert_close(out, conv(x).flatten(1))

    class WithEmbed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 8 * 8, 5)

        def embed(self, inp):
            return self.lin(inp.flatten(1))

        def forward(self, inp):
            raise AssertionError("embed must be used")

    m = WithEmbed()
    out = extract_features(x, extractor=m, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(out, m.embed(x))
    out64 = extract_features(x.double(), extractor=m.double(), progress=False)
    assert out64.dtype == torch.float32


def test_extract_features_errors():
    with pytest.raises(TypeError, match="extract_features: images must be a torch.Tensor"):
        extract_features(np.zeros((2, 1, 28, 28)))
    with pytest.raises(TypeError, match="extract_features: images must be a floating-point"):
        extract_features(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="extract_features: images must be \\[N, C, H, W\\]"):
        extract_features(torch.zeros(2, 28))
    with pytest.raises(ValueError, match="extract_features: images must hold at least one"):
        extract_features(torch.zeros(0, 1, 28, 28))
    with pytest.raises(ValueError, match="extract_features: the default extractor"):
        extract_features(torch.zeros(2, 2, 28, 28))
    with pytest.raises(ValueError, match="extract_features: the default extractor"):
        extract_features(torch.zeros(2, 1, 4, 4))
    assert extract_features(torch.zeros(2, 1, 8, 8), progress=False).shape == (2, 128)  # e.g. sklearn digits
    with pytest.raises(ValueError, match="extract_features: batch_size"):
        extract_features(torch.zeros(2, 1, 28, 28), batch_size=0)
    with pytest.raises(TypeError, match="extract_features: extractor"):
        extract_features(torch.zeros(2, 1, 28, 28), extractor=3)


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------
@needs_cuda
def test_gpu_paths(animal_features):
    feats, labels = animal_features
    cpu = group(feats, labels, 6, backend="torch", seed=0)
    gpu = group(feats.cuda(), labels.cuda(), 6, backend="torch", seed=0)
    _check_clustering(gpu, labels, 6, 10)
    assert gpu.meta["device"].startswith("cuda")
    again = group(feats.cuda(), labels.cuda(), 6, backend="torch", seed=0)
    assert torch.equal(gpu.assignment, again.assignment)  # deterministic on the GPU too
    assert abs(float(gpu.objective.sum() / cpu.objective.sum()) - 1) < 0.03
    bal = group(feats.cuda(), labels, 6, backend="torch", balanced=True)
    assert int(bal.sizes.max()) <= 20
    auto = group(feats.cuda(), labels, 6)
    assert auto.backend in ("torch", "faiss-gpu")
    if HAS_FAISS:
        fg = group(feats.cuda(), labels, 6, backend="faiss")
        _check_clustering(fg, labels, 6, 10)
    images = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    f_gpu = extract_features(images.cuda(), progress=False)
    f_cpu = extract_features(images, progress=False)
    assert f_gpu.is_cuda
    assert_close(f_gpu.cpu(), f_cpu, tol=CUDA_FEATURES)


def test_group_under_a_process_group_communicates_whatever_the_data(monkeypatch):
    """A collective: with nothing to cluster (every class <= ipc) it still gathers, so a call on one
    rank alone fails the same way (waits for the others) at every data size; distributed=False does not."""
    import fastblend.grouping as grouping

    calls = []
    monkeypatch.setattr(grouping.dist, "is_distributed", lambda: True)
    monkeypatch.setattr(grouping.dist, "world_size", lambda: 2)
    monkeypatch.setattr(grouping.dist, "rank", lambda: 0)
    monkeypatch.setattr(grouping.dist, "all_gather_objects", lambda obj: calls.append(obj) or [obj, {}])
    feats, labels = torch.randn(6, 3), torch.arange(6) % 3  # two images per class, ipc 2: no k-means
    c = group(feats, labels, ipc=2, backend="torch")
    assert len(calls) == 1 and c.sizes.tolist() == [1] * 6
    group(feats, labels, ipc=2, backend="torch", distributed=False)
    assert len(calls) == 1
