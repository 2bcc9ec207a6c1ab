"""The difficulty-matched unseen target (fastblend.difficulty, docs/method.md §7.7)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fastblend.difficulty import match_by_rank, matched_unseen

from ._support import class_images


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_a_forget_image_is_matched_with_the_unseen_image_at_its_rank():
    ref = _t(0.1, 0.2, 0.3, 0.4)  # members of class 0, ranked by loss
    pool = _t(5.0, 1.0, 3.0, 2.0, 4.0)  # non-members of class 0 (sorted: 1, 2, 3, 4, 5)
    zeros = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
    # the easiest member-like image -> the easiest unseen image; beyond the hardest member -> the hardest
    idx = match_by_rank(ref, zeros(4), _t(0.05, 0.5, 0.25), zeros(3), pool, zeros(5))
    assert pool[idx].tolist() == [1.0, 5.0, 3.0]


def test_uniform_forget_images_get_a_resample_of_the_pool_and_atypical_ones_its_hard_tail():
    g = torch.Generator().manual_seed(0)
    members = torch.rand(2000, generator=g, dtype=torch.float64)
    pool = torch.rand(1000, generator=g, dtype=torch.float64) * 10
    y = lambda n: torch.arange(n) % 2  # noqa: E731
    typical = torch.rand(400, generator=g, dtype=torch.float64)
    atypical = 0.9 + 0.1 * torch.rand(400, generator=g, dtype=torch.float64)  # the top 10% of members
    i_typ = match_by_rank(members, y(2000), typical, y(400), pool, y(1000))
    i_aty = match_by_rank(members, y(2000), atypical, y(400), pool, y(1000))
    assert abs(float(pool[i_typ].mean()) - float(pool.mean())) < 0.5
    assert float(pool[i_aty].min()) >= float(pool.quantile(0.85))
    # classes are kept: each forget row is matched within its own class
    assert torch.equal(y(1000)[i_aty], y(400))


def test_a_whole_class_and_a_class_without_unseen_images():
    ref, ref_y = _t(0.1, 0.2), torch.tensor([0, 0])
    f, f_y = _t(0.3, 0.1, 0.2, 0.9), torch.tensor([1, 1, 1, 2])  # class 1 whole; class 2 has no pool rows
    pool, pool_y = _t(1.0, 2.0, 3.0, 4.0), torch.tensor([1, 1, 1, 0])
    idx = match_by_rank(ref, ref_y, f, f_y, pool, pool_y)
    assert pool[idx].tolist() == [3.0, 1.0, 2.0]  # spread over class 1's pool, hardest to hardest; class 2 left out


@pytest.mark.parametrize("bad, match", [
    ({"forget_loss": _t(float("nan"))}, "forget_loss must be finite"),
    ({"pool_labels": torch.tensor([0, 0])}, "pool_loss and pool_labels must have the same length"),
    ({"reference_loss": [0.1]}, "reference_loss must be a 1-D tensor"),
])
def test_bad_inputs_are_named(bad, match):
    args = {"reference_loss": _t(0.1), "reference_labels": torch.tensor([0]), "forget_loss": _t(0.2),
            "forget_labels": torch.tensor([0]), "pool_loss": _t(1.0), "pool_labels": torch.tensor([0])}
    args.update(bad)
    with pytest.raises((TypeError, ValueError), match=match):
        match_by_rank(**args)


def test_matched_unseen_ranks_under_the_model():
    # a model whose loss on an image is its first feature: hard images are the ones with a large feature
    class Loss(nn.Module):
        def forward(self, x):
            return torch.stack([-x[:, 0], x[:, 0]], 1)  # class 0's logit falls as x grows

    g = torch.Generator().manual_seed(1)
    members = torch.rand(300, 1, generator=g)
    unseen = torch.rand(300, 1, generator=g)
    hard = 0.95 + 0.05 * torch.rand(40, 1, generator=g)
    zeros = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
    idx = matched_unseen(Loss(), (members, zeros(300)), (hard, zeros(40)), (unseen, zeros(300)))
    assert idx.numel() == 40 and float(unseen[idx].min()) > float(unseen.quantile(0.85))
    with pytest.raises(ValueError, match="unseen holds no image of any forget class"):
        matched_unseen(Loss(), (members, zeros(300)), (hard, zeros(40)), (unseen, torch.ones(300, dtype=torch.long)))
    with pytest.raises(ValueError, match="max_reference"):
        matched_unseen(Loss(), (members, zeros(300)), (hard, zeros(40)), (unseen, zeros(300)), max_reference=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        matched_unseen("net", (members, zeros(300)), (hard, zeros(40)), (unseen, zeros(300)))


def _blobs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])[y] + torch.randn(n, 2, generator=g)
    return x, y


def _net():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_unlearn_with_the_matched_target():
    from fastblend import unlearn

    x, y = _blobs(240, 0)
    unseen = _blobs(120, 1)
    far = (x - torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])[y]).norm(dim=1)
    forget = far >= far.quantile(0.9)  # the most atypical tenth: far from their class centres
    args = (_net(), (x[~forget], y[~forget]), (x[forget], y[forget]), unseen)
    res = unlearn("a_finetune", *args, config={"batch_size": 16, "target": "matched"}, seed=0, stop="auto")
    t = res.info["target"]
    assert t == {"kind": "matched", "rows": int(forget.sum()), "distinct": t["distinct"],
                 "reference_rows": int((~forget).sum()), "odds_pairing": "quantile"}
    assert 1 <= t["distinct"] <= t["rows"]
    assert res.info["auto_stop"]["compared_with"] == "matched_heldout"
    plain = unlearn("a_finetune", *args, config={"batch_size": 16, "request": "sample"}, seed=0, stop="auto")
    assert "target" not in plain.info and plain.info["auto_stop"]["compared_with"] == "heldout"
    with pytest.raises(ValueError, match="config.target must be one of"):
        unlearn("a_finetune", *args, config={"target": "hardest"})


def test_the_auto_stop_compares_the_forget_set_with_the_reference():
    from fastblend import AutoStop

    class Sign(nn.Module):  # predicts class 1 where the feature is positive
        def forward(self, x):
            return torch.cat([-x, x], 1)

    def images(n, positive):
        x = torch.full((n, 1), -1.0)
        x[:positive] = 1.0
        return x, torch.ones(n, dtype=torch.long)

    forget, heldout, hard = images(100, 90), images(200, 184), images(100, 50)
    typical = AutoStop(forget, heldout, kind="sample").check(Sign())
    matched = AutoStop(forget, heldout, kind="sample", matched_heldout=hard).check(Sign())
    # against typical held-out images (92% right) a forget set at 90% looks unseen; against held-out images
    # as hard as it (50% right) it is still remembered
    assert typical.conditions["forget_acc_like_heldout"] and not matched.conditions["forget_acc_like_heldout"]
    assert matched.heldout_same_class_acc == 50.0 and typical.heldout_same_class_acc == 92.0
    assert matched.conditions["heldout_kept"]  # (c) still reads heldout
    with pytest.raises(ValueError, match="matched_heldout has no images of the forget classes"):
        AutoStop(forget, heldout, kind="sample", matched_heldout=(hard[0], torch.zeros(100, dtype=torch.long)))


def test_a_parameterless_model_is_evaluated_on_the_cpu():
    # AutoStop and Tracker found the device from the first parameter: StopIteration from deep inside
    from fastblend.tracking import Tracker

    x = torch.randn(40, 3)
    y = torch.arange(40) % 3
    tracker = Tracker((x, y), (x, y), max_samples=None, seed=0, heldout=(x, y))
    out = tracker.evaluate(nn.Identity())
    assert set(out) >= {"forget_acc", "test_acc", "mia"}


def _flat_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def _matched_on_its_source(model, reduced, forget, unseen):
    """``a_finetune`` with the matched target on a reduced set, which must be ranked against the training images
    of its source (no "has no source" warning); its result."""
    from fastblend import unlearn

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = unlearn("a_finetune", model, reduced, forget, unseen, config={"batch_size": 8, "target": "matched"},
                      seed=0)
    assert not [w for w in seen if "has no source" in str(w.message)]
    return res


def test_a_reduced_retain_set_is_ranked_against_the_images_it_keeps():
    # a Blend-reduced set's rows are blends and the forget images' neighbours; the reference is every training
    # image it keeps (its blends' members and its residual rows), read from its source
    from fastblend import condense, unlearn

    g = torch.Generator().manual_seed(0)
    x, y = class_images(150, g)
    forget = torch.arange(0, 150, 10)
    reduced = condense(x, y, forget, ipc=4, iterations=1)
    keep = torch.ones(150, dtype=torch.bool)
    keep[forget] = False
    ux, uy = class_images(60, g)
    model = _flat_model()
    res = _matched_on_its_source(model, reduced, (x[forget], y[forget]), (ux, uy))
    assert len(reduced) < int(keep.sum())
    assert res.info["target"]["reference_rows"] == int(keep.sum()) and res.info["target"]["rows"] == forget.numel()
    # without its source (materialised) the set can only be ranked against its own rows: said, not silent
    with pytest.warns(UserWarning, match="reduced retain set has no source"):
        unlearn("a_finetune", model, reduced.materialise(), (x[forget], y[forget]), (ux, uy),
                config={"batch_size": 8, "target": "matched"}, seed=0)


def test_the_drop_in_takes_the_matched_target():
    from fastblend import prepare_unlearning

    g = torch.Generator().manual_seed(0)
    x, y = class_images(150, g)
    ux, uy = class_images(60, g)
    forget = torch.zeros(150, dtype=torch.bool)
    forget[::10] = True
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    kw = {"batch_size": 8, "ipc": 4, "iterations": 1}
    prep = prepare_unlearning(model, (x[~forget], y[~forget]), (x[forget], y[forget]), (ux, uy), target="matched",
                              **kw)
    assert prep.criterion.step.unseen.labels.numel() == int(forget.sum())  # one matched image per forget image
    assert prep.reduced._images is None  # ranked against the source's rows: the reduced set is not materialised
    assert prep.auto_stop.summary()["compared_with"] == "matched_heldout"
    plain = prepare_unlearning(model, (x[~forget], y[~forget]), (x[forget], y[forget]), (ux, uy), request="sample",
                               **kw)
    assert plain.criterion.step.unseen.labels.numel() == 60 and plain.auto_stop.summary()["compared_with"] == "heldout"
    fixed = prepare_unlearning(model, (x[~forget], y[~forget]), (x[forget], y[forget]), (ux, uy),
                               target="matched_fixed", **kw)
    assert fixed.criterion.step.unseen_logits.shape == (int(forget.sum()), 3)
    with pytest.raises(ValueError, match="target must be one of"):
        prepare_unlearning(model, (x[~forget], y[~forget]), (x[forget], y[forget]), (ux, uy), target="hard", **kw)
    whole = y == 2
    with pytest.raises(ValueError, match=r"target='matched_fixed' .* forget classes \[2\] have no retain image"):
        prepare_unlearning(model, (x[~whole], y[~whole]), (x[whole], y[whole]), (ux, uy), target="matched_fixed",
                           **kw)


def test_a_fixed_target_is_not_forwarded_and_does_not_move():
    from fastblend import AAMUStep

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)
            self.rows = 0

        def forward(self, x):
            self.rows += x.shape[0]
            return self.lin(x)

    x, y = _blobs(60, 0)
    ux, uy = _blobs(30, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Counting()
    fixed = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    step = AAMUStep(net, (x, y), (ux, uy), batch_size=4, unseen_logits=fixed)
    free = AAMUStep(net, (x, y), (ux, uy), batch_size=4)
    retain = torch.ones(4, requires_grad=True)
    net.rows = 0
    out = step.loss(retain)
    assert net.rows == step.forget_draw  # the forget batch only
    net.rows = 0
    free.loss(retain)
    assert net.rows == free.forget_draw + free.unseen_draw
    with torch.no_grad():
        net.lin.weight.mul_(3.0)  # the model moves; the fixed target must not
    logits_u, _ = step._unseen_part(y[:4], torch.device("cpu"))
    assert all(any(torch.equal(row, f) for f in fixed) for row in logits_u)
    assert torch.isfinite(out.total)
    for bad in (torch.randn(29, 3), torch.randn(30), torch.full((30, 3), float("nan"))):
        with pytest.raises(ValueError, match="unseen_logits must be"):
            AAMUStep(net, (x, y), (ux, uy), batch_size=4, unseen_logits=bad)
    with pytest.raises(TypeError, match="unseen_logits must be a floating"):
        AAMUStep(net, (x, y), (ux, uy), batch_size=4, unseen_logits=fixed.tolist())
    # too narrow for the labels: checked at construction (the data-parallel path never reaches the loss's check)
    with pytest.raises(ValueError, match="unseen_logits has 2 columns but the unseen labels go up to 2"):
        AAMUStep(net, (x, y), (ux, uy), batch_size=4, unseen_logits=fixed[:, :2])
    # wider than the model's logits: the fixed losses would be over other classes (was accepted silently)
    wide = AAMUStep(net, (x, y), (ux, uy), batch_size=4, unseen_logits=torch.cat([fixed, fixed[:, :2]], 1))
    with pytest.raises(ValueError, match="unseen_logits has 5 columns but the model gives 3 logits per image"):
        wide.loss(torch.rand(4))


def test_unlearn_with_the_fixed_matched_target():
    from fastblend import unlearn

    x, y = _blobs(240, 0)
    unseen = _blobs(120, 1)
    forget = torch.arange(240) % 10 == 0
    res = unlearn("a_finetune", _net(), (x[~forget], y[~forget]), (x[forget], y[forget]), unseen,
                  config={"batch_size": 16, "target": "matched_fixed"}, seed=0)
    assert res.info["target"]["kind"] == "matched_fixed" and res.info["target"]["rows"] == int(forget.sum())


def test_a_fixed_target_refuses_a_class_forgotten_whole():
    from fastblend import unlearn

    x, y = _blobs(240, 0)
    whole = y == 2
    with pytest.raises(ValueError, match=r"target='matched_fixed' .* forget classes \[2\] have no retain image"):
        unlearn("a_finetune", _net(), (x[~whole], y[~whole]), (x[whole], y[whole]), _blobs(120, 1),
                config={"batch_size": 16, "target": "matched_fixed"}, seed=0)
    res = unlearn("a_finetune", _net(), (x[~whole], y[~whole]), (x[whole], y[whole]), _blobs(120, 1),
                  config={"batch_size": 16, "target": "matched"}, seed=0)
    assert res.info["target"]["kind"] == "matched" and res.info["request"] == "class"


def test_the_matched_target_reads_a_retain_loader_and_dataset():
    from torch.utils.data import DataLoader, TensorDataset

    from fastblend import unlearn

    x, y = _blobs(240, 0)
    forget = torch.arange(240) % 10 == 0
    retain = TensorDataset(x[~forget], y[~forget])
    for data in (retain, DataLoader(retain, batch_size=16)):
        res = unlearn("a_finetune", _net(), data, (x[forget], y[forget]), _blobs(120, 1),
                      config={"batch_size": 16, "target": "matched"}, seed=0)
        assert res.info["target"]["reference_rows"] == int((~forget).sum())


def test_the_auto_stop_falls_back_to_heldout_for_a_class_the_matched_images_lack():
    # a mixed request whose matched images lost the partly forgotten class (e.g. to AutoStop's subset): a
    # ZeroDivisionError before; that class is now compared with its held-out images
    from fastblend import AutoStop

    g = torch.Generator().manual_seed(0)
    fx, fy = torch.randn(30, 2, generator=g), torch.tensor([0] * 20 + [1] * 10)
    hx, hy = torch.randn(60, 2, generator=g), torch.arange(60) % 2
    # class 0 forgotten whole (the retain set holds only class 1), class 1 in part; matched images of class 0 only
    stop = AutoStop((fx, fy), (hx, hy), torch.ones(5, dtype=torch.long), matched_heldout=(hx[hy == 0], hy[hy == 0]))
    check = stop.check(nn.Linear(2, 2))
    assert "forget_acc_like_heldout" in check.conditions
    assert check.heldout_same_class_acc == check.heldout_same_class_acc  # a number, not NaN


def test_the_ranking_reads_only_the_forget_classes():
    from fastblend import unlearn

    x, y = _blobs(240, 0)
    forget = (y == 1) & (torch.arange(240) % 4 == 1)  # part of class 1 only
    res = unlearn("a_finetune", _net(), (x[~forget], y[~forget]), (x[forget], y[forget]), _blobs(120, 1),
                  config={"batch_size": 16, "target": "matched"}, seed=0)
    assert res.info["target"]["reference_rows"] == int(((y == 1) & ~forget).sum())


def test_a_retain_loader_is_sampled_from_its_dataset_without_touching_its_shuffle():
    # a DataLoader's first batches are not a sample (here: sorted by class, the first 192 rows hold no class 2),
    # and iterating a shuffling loader draws from the global RNG
    from torch.utils.data import DataLoader, TensorDataset

    from fastblend.methods import retained_reference

    x, y = _blobs(300, 0)
    order = y.argsort(stable=True)
    data = TensorDataset(x[order], y[order])
    for shuffle in (False, True):
        loader = DataLoader(data, batch_size=16, shuffle=shuffle)
        state = torch.get_rng_state()
        rx, ry = retained_reference(loader, None, 0, torch.device("cpu"), torch.float32, "test",
                                    classes=torch.tensor([0, 1, 2]), limit=192)
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.bincount(ry, minlength=3).tolist() == [64, 64, 64]
        assert rx.shape == (192, 2)
    # a loader with a sampler of its own reads only its rows (here: no class 2 at all), the global RNG untouched
    from torch.utils.data import SubsetRandomSampler

    subset = DataLoader(data, batch_size=16, sampler=SubsetRandomSampler(torch.arange(150).tolist()))
    state = torch.get_rng_state()
    rx, ry = retained_reference(subset, None, 0, torch.device("cpu"), torch.float32, "test",
                                classes=torch.tensor([0, 1, 2]), limit=192)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(ry.tolist()) <= {0, 1} and rx.shape[0] == 150


def test_a_loader_over_a_reduced_set_is_ranked_as_the_set():
    from torch.utils.data import DataLoader

    from fastblend import condense
    from fastblend.methods import retained_reference

    g = torch.Generator().manual_seed(0)
    x, y = class_images(150, g)
    forget = torch.arange(0, 150, 10)
    reduced = condense(x, y, forget, ipc=4, iterations=1)
    direct = retained_reference(reduced, None, 0, torch.device("cpu"), torch.float32, "test")
    loader = retained_reference(DataLoader(reduced, batch_size=8), None, 0, torch.device("cpu"), torch.float32, "test")
    assert direct[0].shape[0] == 150 - forget.numel() > len(reduced)  # every kept training image, not the set's rows
    assert torch.equal(direct[0], loader[0]) and torch.equal(direct[1], loader[1])


def test_matched_unseen_refuses_an_unseen_loader_with_its_own_sampler():
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    x, y = _blobs(90, 0)
    ux, uy = _blobs(60, 1)
    net = _net()
    direct = matched_unseen(net, (x, y), (x[:9], y[:9]), (ux, uy))
    ordered = matched_unseen(net, (x, y), (x[:9], y[:9]), DataLoader(TensorDataset(ux, uy), batch_size=8))
    assert torch.equal(direct, ordered)
    # a loader that only shuffles is read in its dataset's order: the indices name the same rows
    shuffled = matched_unseen(net, (x, y), (x[:9], y[:9]),
                              DataLoader(TensorDataset(ux, uy), batch_size=8, shuffle=True))
    assert torch.equal(direct, shuffled)
    with pytest.raises(ValueError, match="matched_unseen: the DataLoader reads its dataset through .*shuffle=False"):
        sampler = RandomSampler(TensorDataset(ux, uy), replacement=True)
        matched_unseen(net, (x, y), (x[:9], y[:9]), DataLoader(TensorDataset(ux, uy), batch_size=8, sampler=sampler))
    # the forget side: one index per forget row, so its rows must be the forget set's, in order
    forget = TensorDataset(x[:9], y[:9])
    shuffled = matched_unseen(net, (x, y), DataLoader(forget, batch_size=4, shuffle=True), (ux, uy))
    assert torch.equal(direct, shuffled)
    with pytest.raises(ValueError, match="matched_unseen: .*one per forget row, would follow one random pass"):
        matched_unseen(net, (x, y), DataLoader(forget, batch_size=4, sampler=RandomSampler(forget, replacement=True)),
                       (ux, uy))
    with pytest.warns(UserWarning, match="matched_unseen: the forget DataLoader yielded 8 rows for its dataset's 9"):
        matched_unseen(net, (x, y), DataLoader(forget, batch_size=4, drop_last=True), (ux, uy))


def test_a_saved_set_without_residual_rows_keeps_its_source_for_the_ranking(tmp_path):
    # a whole class forgotten leaves no residual row; the file without residual images kept no fingerprint
    # and load dropped the source it was given, so the matched target ranked against the blends themselves
    from fastblend import ReducedRetainSet, condense

    g = torch.Generator().manual_seed(0)
    x, y = class_images(150, g)
    forget = torch.nonzero(y == 2).flatten()
    reduced = condense(x, y, forget, ipc=4, iterations=1)
    assert reduced.num_residual == 0 and reduced.source is not None
    path = tmp_path / "reduced.pt"
    reduced.save(path, with_residual=False)
    back = ReducedRetainSet.load(path, source=x)
    assert back.source is not None
    assert torch.equal(back.blend_members, reduced.blend_members)
    with pytest.raises(ValueError, match=r"^ReducedRetainSet.load: .*: source does not match"):
        ReducedRetainSet.load(path, source=x + 1)
    assert ReducedRetainSet.load(path).source is None  # no source needed to serve its rows
    res = _matched_on_its_source(_flat_model(), back, (x[forget], y[forget]), class_images(60, g))
    assert res.info["target"]["reference_rows"] > len(back)  # the blends' members, not the set's own rows


def test_unreadable_retain_labels_name_what_needed_them(monkeypatch):
    # the error read "stop='auto' needs the retain set's labels" also when the matched target asked for them
    from torch.utils.data import Dataset

    import fastblend.condensation.source as source
    from fastblend import unlearn

    class Pairs(Dataset):  # a map-style Dataset with no labels attribute: its labels are read by a pass
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    def unreadable(data, caller):
        raise RuntimeError("this dataset's labels cannot be read")

    monkeypatch.setattr(source, "source_labels", unreadable)
    x, y = _blobs(120, 0)
    forget = torch.arange(120) % 10 == 0
    args = (_net(), Pairs(x[~forget], y[~forget]), (x[forget], y[forget]), _blobs(60, 1))
    with pytest.raises(ValueError, match=r"^unlearn: the matched target \(target='matched' or 'matched_fixed'\) "
                                         r"needs the retain set's labels.*cannot be read.*target='unseen'"):
        unlearn("a_finetune", *args, config={"batch_size": 16, "target": "matched_fixed", "request": "sample"})
    with pytest.raises(ValueError, match=r"^unlearn: stop='auto' needs the retain set's labels"):
        unlearn("a_finetune", *args, config={"batch_size": 16, "request": "sample"}, stop="auto")
    retain = Pairs(x[~forget], y[~forget])
    retain.targets = y[:5]  # an attribute with the wrong length: not the labels, and "auto" reads nothing more
    with pytest.warns(UserWarning, match="cannot read the retain set's labels without a pass"):
        res = unlearn("a_finetune", args[0], retain, *args[2:], config={"batch_size": 16})
    assert res.info["request"] == "sample" and "labels/targets attribute" in res.info["request_reason"]
