"""prepare_unlearning: an existing loader-based fine-tune loop runs unmodified with the drop-in and
forgets; the index and content lookup of forget rows; AAMUStep on loaders and datasets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastblend

C = 4


def finetune(loaders: dict, model: nn.Module, criterion, optimizer, epochs: int) -> None:
    """The usual loop of a loader-based unlearning codebase (not to be edited for fastblend)."""
    for _ in range(epochs):
        model.train()
        for x, y in loaders["retain"]:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        out = float((model(x).argmax(1) == y).float().mean() * 100)
    model.train()
    return out


@pytest.fixture(scope="module")
def memorised():
    """A BatchNorm MLP that memorised a forget set with wrong labels (hard data: test accuracy ~75%)."""
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(C, 1, 8, 8, generator=gen)

    def make(n):
        y = torch.arange(n) % C
        return means[y] + 3.0 * torch.randn(n, 1, 8, 8, generator=gen), y

    (rx, ry), (fx, fy_true), (ux, uy), (tx, ty) = make(320), make(32), make(200), make(200)
    fy = (fy_true + 1 + torch.randint(0, C - 1, (32,), generator=gen)) % C  # wrong labels
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, C))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.cat([rx, fx]), torch.cat([ry, fy])
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, (rx, ry), (fx, fy), (ux, uy), (tx, ty)


def test_loader_loop_runs_unmodified_and_forgets(memorised):
    import copy

    trained, retain, forget, unseen, test = memorised
    model = copy.deepcopy(trained)
    before_forget, before_test = _accuracy(model, *forget), _accuracy(model, *test)
    assert before_forget == 100.0
    loaders = {"retain": DataLoader(TensorDataset(*retain), batch_size=16, shuffle=True),
               "forget": DataLoader(TensorDataset(*forget), batch_size=16),
               "unseen": DataLoader(TensorDataset(*unseen), batch_size=16)}
    prep = fastblend.prepare_unlearning(model, loaders["retain"], loaders["forget"], loaders["unseen"],
                                        batch_size=16, iterations=2, seed=0)
    assert len(prep.reduced) < len(retain[1]) and prep.timings["index"] > 0
    loaders["retain"] = prep.retain_loader
    finetune(loaders, model, prep.criterion, torch.optim.Adam(model.parameters(), lr=1e-3), epochs=2)
    after_forget, after_test = _accuracy(model, *forget), _accuracy(model, *test)
    assert after_forget <= before_forget - 10, (before_forget, after_forget)
    assert after_test >= before_test - 5, (before_test, after_test)
    assert prep.criterion.last is not None and not prep.criterion.last.main.requires_grad


def test_a_codebase_loader_keeps_its_batch_size(memorised):
    # a codebase passes its own retain loader of 128 and no batch_size: the reduced loader yields its batches, and
    # the criterion takes them (it was built for 64 and refused every batch of the codebase's loop)
    _, retain, forget, unseen, _ = memorised
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    loader = DataLoader(TensorDataset(*retain), batch_size=128, shuffle=True)
    prep = fastblend.prepare_unlearning(model, loader, forget, unseen, iterations=1, seed=0, stop=None)
    assert prep.retain_loader.batch_size == 128
    x, y = next(iter(DataLoader(TensorDataset(*retain), batch_size=128)))
    loss = prep.criterion(model(x), y)
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    # a smaller loader keeps 64 (as unlearn does), and a batch_size passed is the caller's
    small = fastblend.prepare_unlearning(model, DataLoader(TensorDataset(*retain), batch_size=16), forget, unseen,
                                         iterations=1, seed=0, stop=None)
    given = fastblend.prepare_unlearning(model, loader, forget, unseen, batch_size=64, iterations=1, seed=0,
                                         stop=None)
    assert small.retain_loader.batch_size == 64 and given.retain_loader.batch_size == 64
    # a batch sampler of its own (no batch_size attribute) is sized by its first batch; a loader of the whole set
    # yields the reduced set in one batch (the recipe's scaling follows that batch, not the loader's)

    class Chunks(torch.utils.data.Sampler):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter([list(range(s, min(s + 128, self.n))) for s in range(0, self.n, 128)])

        def __len__(self):
            return -(-self.n // 128)

    own = DataLoader(TensorDataset(*retain), batch_sampler=Chunks(len(retain[1])))
    whole = DataLoader(TensorDataset(*retain), batch_size=len(retain[1]))
    by_first = fastblend.prepare_unlearning(model, own, forget, unseen, iterations=1, seed=0, stop=None)
    capped = fastblend.prepare_unlearning(model, whole, forget, unseen, iterations=1, seed=0, stop=None)
    assert by_first.retain_loader.batch_size == 128
    assert 64 < capped.retain_loader.batch_size == len(capped.reduced) < len(retain[1])


def test_index_passed_in_and_forget_found_by_content(memorised):
    _, (rx, ry), (fx, fy), unseen, _ = memorised
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    train_x, train_y = torch.cat([fx, rx]), torch.cat([fy, ry])  # the forget rows first this time
    index = fastblend.BlendIndex.build(train_x, train_y, ipc=8, iterations=1)
    by_content = fastblend.prepare_unlearning(model, None, TensorDataset(fx, fy), unseen, index=index,
                                              batch_size=16)
    by_index = fastblend.prepare_unlearning(model, None, torch.arange(32), unseen, index=index, batch_size=16)
    assert torch.equal(by_content.reduced.source_index, by_index.reduced.source_index)
    assert by_content.timings["index"] == 0.0 and by_content.index is index
    assert not bool(torch.isin(by_content.reduced.source_index, torch.arange(32)).any())
    with pytest.raises(ValueError, match="^prepare_unlearning: 32 of the 32 forget rows are not in the index"):
        fastblend.prepare_unlearning(model, None, (fx + 1, fy), unseen, index=index)
    with pytest.raises(ValueError, match=r"^AAMUCriterion: retain_per_sample_loss has 32 samples"):
        by_index.criterion(torch.randn(32, C), torch.zeros(32, dtype=torch.long))


def test_aamu_step_takes_loaders_and_datasets(memorised):
    _, _, (fx, fy), (ux, uy), _ = memorised
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    a = fastblend.AAMUStep(model, DataLoader(TensorDataset(fx, fy), batch_size=7), TensorDataset(ux, uy),
                           batch_size=4, seed=2)
    b = fastblend.AAMUStep(model, (fx, fy), (ux, uy), batch_size=4, seed=2)
    assert torch.equal(a.forget.images, b.forget.images) and torch.equal(a.unseen.labels, b.unseen.labels)
    torch.testing.assert_close(a.loss(torch.rand(4)).mmd, b.loss(torch.rand(4)).mmd)


def test_a_memmap_retain_set_or_index_is_streamed(memorised, tmp_path):
    _, (rx, ry), (fx, fy), unseen, _ = memorised
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    kw = dict(ipc=8, iterations=1, batch_size=16, seed=0)
    # built here on a MemmapImages retain set: the index streams it, the loader reads residual rows from it
    retain = fastblend.MemmapImages.write(tmp_path / "retain.npy", rx, ry)
    streamed = fastblend.prepare_unlearning(model, retain, (fx, fy), unseen, **kw)
    ref = fastblend.prepare_unlearning(model, (rx, ry), (fx, fy), unseen, **kw)
    assert not streamed.reduced.in_memory and streamed.index.images is not retain
    assert torch.equal(streamed.reduced.source_index, ref.reduced.source_index)
    assert torch.equal(streamed.reduced.labels, ref.reduced.labels)
    torch.testing.assert_close(torch.cat([b[0] for b in DataLoader(streamed.reduced, batch_size=64)]),
                               ref.reduced.images, rtol=1e-5, atol=1e-6)
    x, y = next(iter(streamed.retain_loader))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64
    # an index built on a MemmapImages training set: forget found by index or by content
    train = fastblend.MemmapImages.write(tmp_path / "train.npy", torch.cat([fx, rx]), torch.cat([fy, ry]))
    index = fastblend.BlendIndex.build(train, ipc=8, iterations=1)
    by_index = fastblend.prepare_unlearning(model, None, torch.arange(32), unseen, index=index, batch_size=16)
    by_content = fastblend.prepare_unlearning(model, None, TensorDataset(fx, fy), unseen, index=index,
                                              batch_size=16)
    assert not by_index.reduced.in_memory and by_index.reduced.source is train
    assert torch.equal(by_content.reduced.source_index, by_index.reduced.source_index)
    assert torch.equal(by_index.criterion.step.forget.images, fx)
    with pytest.raises(ValueError, match="^prepare_unlearning: 32 of the 32 forget rows are not in the index"):
        fastblend.prepare_unlearning(model, None, (fx + 1, fy), unseen, index=index)


def _counting(model: nn.Module) -> list[int]:
    """Rows of every forward of ``model`` (a forward pre-hook appends each batch's size)."""
    rows: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: rows.append(int(args[0].shape[0])))
    return rows


def test_large_batches_draw_at_most_the_cap_and_the_forget_set():
    gen = torch.Generator().manual_seed(0)
    fx, ux = torch.randn(300, 1, 8, 8, generator=gen), torch.randn(600, 1, 8, 8, generator=gen)
    fy, uy = torch.arange(300) % C, torch.arange(600) % C
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    rows = _counting(model)
    # a codebase's batch of 256: 256 forget and 256 unseen rows, not 4B = 1,024 of each
    prep = fastblend.prepare_unlearning(model, (ux[:200] + 5, uy[:200]), (fx, fy), (ux, uy), batch_size=256,
                                        ipc=2, iterations=1, stop=None, request="sample")
    rows.clear()  # the set-up's one-image probe of the model's output width
    prep.criterion(torch.randn(256, C), torch.zeros(256, dtype=torch.long))
    assert rows == [256, 256], rows
    # a forget set smaller than the cap: all of it, never more; the unseen draw still the recipe's 256
    rows.clear()
    fastblend.AAMUStep(model, (fx[:100], fy[:100]), (ux, uy), batch_size=256).loss(torch.rand(256))
    assert rows == [100, 256], rows
    # the recipe's batch of 64 draws its 4B, as before; max_draw=None restores 4B at any batch
    for kw, want in (({"batch_size": 64}, [256, 256]), ({"batch_size": 32, "max_draw": 64}, [64, 64]),
                     ({"batch_size": 256, "max_draw": None}, [300, 1024])):
        rows.clear()
        step = fastblend.AAMUStep(model, (fx, fy), (ux, uy), **kw)
        step.loss(torch.rand(kw["batch_size"]))
        assert rows == want and [step.forget_draw, step.unseen_draw] == want, (kw, rows)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="^AAMUStep: max_draw must be an int >= 1 or None"):
            fastblend.AAMUStep(model, (fx, fy), (ux, uy), max_draw=bad)
    with pytest.raises(ValueError, match="^unlearn: config.max_draw must be an int >= 1 or None"):
        fastblend.unlearn("a_finetune", model, (ux[:64], uy[:64]), (fx, fy), unseen=(ux, uy), config={"max_draw": 0})


def test_prepared_unlearning_hands_over_the_recipe_budget(memorised):
    _, retain, forget, unseen, _ = memorised
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    prep = fastblend.prepare_unlearning(model, retain, forget, unseen, batch_size=16, iterations=1, seed=0,
                                        request="sample")
    assert prep.epochs == fastblend.recipe.RECIPE.epochs == 1
    assert prep.steps == len(prep.retain_loader) == -(-len(prep.reduced) // 16)
    prep = fastblend.prepare_unlearning(model, retain, forget, unseen, batch_size=16, iterations=1, seed=0)
    assert prep.request == "matched" and prep.epochs == 3  # the default on scattered samples (method.md §7.10)
    assert prep.steps == 3 * len(prep.retain_loader)


def test_auto_stop_ends_the_codebase_loop_once_forget_looks_unseen(memorised):
    import copy

    trained, retain, forget, unseen, _ = memorised
    model = copy.deepcopy(trained)
    prep = fastblend.prepare_unlearning(model, retain, forget, unseen, batch_size=16, iterations=2, seed=0)
    stop = prep.auto_stop
    assert stop.baseline is not None and stop.kind == "sample"  # started on the untouched model, at prepare
    assert not stop(model, 0, 0.0)  # the memorised forget set: not done before a step
    assert not stop.history[-1].conditions["forget_acc_like_heldout"]
    # an AutoStop of one's own (5 points of slack for this toy), started at prepare on the untouched model
    mine = fastblend.AutoStop(forget, unseen, retain[1], slack=5.0)
    prep = fastblend.prepare_unlearning(model, retain, forget, unseen, batch_size=16, iterations=2, seed=0, stop=mine)
    stop = prep.auto_stop
    assert stop is mine and stop.baseline is not None and not stop.history
    loaders = {"retain": DataLoader(TensorDataset(*retain), batch_size=16), "unlearn": prep.retain_loader}
    optimizer, step = torch.optim.Adam(model.parameters(), lr=1e-3), 0
    for _ in range(10):  # the codebase's epochs; the stop ends the loop sooner
        for x, y in loaders["unlearn"]:
            loss = prep.criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 2 == 0 and stop(model, step, float(step)):
                break
        if stop.stopped:
            break
    assert stop.stopped and stop.stop_step == step < 10 * len(prep.retain_loader), stop.reason
    last = stop.history[-1]
    assert last.done and last.forget_acc <= 100 - 10 and all(last.conditions.values())
    assert stop.summary()["step"] == step
    # no stop asked for, or data it cannot judge (fewer than 5 forget rows): prep.auto_stop says why
    none = fastblend.prepare_unlearning(model, retain, forget, unseen, batch_size=16, iterations=1, stop=None)
    with pytest.raises(ValueError, match="^PreparedUnlearning.auto_stop: no auto stop: prepare_unlearning was "
                                         "called with stop=None"):
        none.auto_stop  # noqa: B018 - the property raises
    tiny = fastblend.prepare_unlearning(model, retain, (forget[0][:3], forget[1][:3]), unseen, batch_size=16,
                                        iterations=1)
    with pytest.raises(ValueError, match="no auto stop: AutoStop: forget must hold at least 5 samples"):
        tiny.auto_stop  # noqa: B018
    with pytest.raises(ValueError, match="^prepare_unlearning: stop must be 'auto', a fastblend.AutoStop or None"):
        fastblend.prepare_unlearning(model, retain, forget, unseen, stop="yes")


def test_a_stop_of_the_callers_starts_a_new_run_in_each_prepare(memorised):
    # a stop reused for a second request judged the second run with the first one's history and stop (it said
    # "stopped" before any step); prepare_unlearning now starts it, as unlearn does
    import copy

    trained, retain, forget, unseen, _ = memorised
    prep = fastblend.prepare_unlearning(copy.deepcopy(trained), retain, forget, unseen, batch_size=16, iterations=2,
                                        seed=0)
    stop = prep.auto_stop
    stop(trained, 1, 0.0)
    stop._run, stop.stopped, stop.stop_step = 1, True, 1  # as after a first run that stopped
    again = fastblend.prepare_unlearning(copy.deepcopy(trained), retain, forget, unseen, batch_size=16, iterations=2,
                                         seed=0, stop=stop)
    assert again.auto_stop is stop and not stop.stopped and stop.history == [] and stop.baseline is not None


def test_a_forget_loader_that_drops_rows_warns(memorised):
    import copy

    trained, retain, forget, unseen, _ = memorised
    loader = DataLoader(TensorDataset(*forget), batch_size=7, shuffle=True, drop_last=True)
    assert len(forget[1]) % 7  # some rows are dropped
    with pytest.warns(UserWarning, match="forget DataLoader yielded .* rows for its dataset's"):
        fastblend.prepare_unlearning(copy.deepcopy(trained), retain, loader, unseen, batch_size=16, iterations=2,
                                     seed=0)


def test_a_collapse_under_an_optimiser_that_steps_by_the_gradients_size_is_said(memorised):
    # SGD at a codebase's learning rate takes this loss's large gradient as it is: the model collapses within a few
    # steps, and the criterion says so once (it was silent); the recipe's own optimiser does not collapse it
    import copy
    import warnings

    trained, retain, forget, unseen, test = memorised

    def run(make_optimiser):
        model = copy.deepcopy(trained)
        loaders = {"retain": DataLoader(TensorDataset(*retain), batch_size=16, shuffle=True),
                   "forget": DataLoader(TensorDataset(*forget), batch_size=16),
                   "unseen": DataLoader(TensorDataset(*unseen), batch_size=16)}
        prep = fastblend.prepare_unlearning(model, loaders["retain"], loaders["forget"], loaders["unseen"],
                                            batch_size=16, iterations=2, seed=0, stop=None)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            finetune({"retain": prep.retain_loader}, model, prep.criterion, make_optimiser(model, prep), epochs=1)
        return prep, [w for w in seen if "has collapsed" in str(w.message)]

    prep, said = run(lambda m, p: torch.optim.SGD(m.parameters(), lr=5.0, momentum=0.9))
    assert len(said) == 1 and prep.criterion.collapsed_at is not None
    assert "use prep.optimizer(model)" in str(said[0].message) and said[0].filename == __file__
    prep, said = run(lambda m, p: p.optimizer(m))
    assert said == [] and prep.criterion.collapsed_at is None


def test_a_larger_batch_scales_the_matched_recipes_lr_and_epochs(memorised):
    # a codebase's batch of 256 took the batch-64 recipe's 3 epochs at lr 1e-3: 9 steps, the MIA above the band on
    # the matrix's hard cell; the recipe scales both by sqrt(B / 64) (docs/method.md §7.10), in the drop-in and unlearn
    _, retain, forget, unseen, _ = memorised
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    for batch, lr, epochs in ((256, 2e-3, 6), (128, 1e-3 * 2 ** 0.5, 4), (64, 1e-3, 3), (16, 1e-3, 3)):
        prep = fastblend.prepare_unlearning(model, retain, forget, unseen, batch_size=batch, iterations=1, seed=0,
                                            stop=None)
        assert prep.request == "matched" and prep.lr == pytest.approx(lr) and prep.epochs == epochs, batch
    res = fastblend.unlearn("a_finetune", model, retain, forget, unseen, config={"batch_size": 256})
    assert res.info["recipe"]["lr"] == pytest.approx(2e-3) and res.config.epochs == 6
    # what the caller set is kept, and A-SCRUB (its own SGD recipe, not measured at other batches) is not scaled
    res = fastblend.unlearn("a_finetune", model, retain, forget, unseen, config={"batch_size": 256, "lr": 5e-4})
    assert res.config.lr == 5e-4 and res.config.epochs == 6
    res = fastblend.unlearn("a_scrub", model, retain, forget, unseen, config={"batch_size": 256, "epochs": 1})
    assert res.config.lr == fastblend.matched_recipe("a_scrub")["lr"]


def test_unlearn_on_a_retain_loader_takes_its_batch(memorised):
    # a codebase's retain DataLoader of 256 passed to an accelerated method without a config batch size failed at the
    # first step ("retain_per_sample_loss has 256 samples but the step was built with batch_size=64"): the step sized
    # its draws for the default 64. It takes the loader's batch now, and the matched recipe scales with it
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
    _, retain, forget, unseen, _ = memorised
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    data = TensorDataset(*retain)
    loader = DataLoader(data, batch_size=256, shuffle=True)
    res = fastblend.unlearn("a_finetune", model, loader, forget, unseen)
    assert res.config.batch_size == 256 and res.config.lr == pytest.approx(2e-3) and res.config.epochs == 6
    assert res.steps == 6 * len(loader)
    # a custom batch sampler's batches count the same (its loader's batch_size is None)
    custom = DataLoader(data, batch_sampler=BatchSampler(RandomSampler(data), 256, False))
    assert fastblend.unlearn("a_finetune", model, custom, forget, unseen).config.batch_size == 256
    # smaller batches keep the default B (the step takes retain batches up to it): nothing changes for them
    small = DataLoader(data, batch_size=16, shuffle=True)
    res = fastblend.unlearn("a_finetune", model, small, forget, unseen, config={"epochs": 1})
    assert res.config.batch_size == 64 and res.steps == len(small)
    # the auto stop spreads its 8 evaluations over the 20 steps the loader gives: it planned len(retain) / 64 = 5 steps
    # (and, re-reading the caller's epochs=1 as the recipe's 3, evaluated every 8 steps once the loader was counted)
    stop = fastblend.AutoStop(forget, unseen, retain[1], min_steps=10**6, evaluations=8)
    res = fastblend.unlearn("a_finetune", model, small, forget, unseen, config={"epochs": 1, "anchor_weight": 0.0},
                            stop=stop)
    assert res.steps == 20 and [h.step for h in stop.history] == [0, 3, 6, 9, 12, 15, 18, 20]
    # the caller's own batch size is kept above the loader's (with a warning), refused below it (it was refused from
    # inside the A-AMU step, naming retain_per_sample_loss)
    with pytest.warns(UserWarning, match="config.batch_size is 320 and the retain DataLoader yields batches of 256"):
        res = fastblend.unlearn("a_finetune", model, loader, forget, unseen, config={"batch_size": 320, "epochs": 1})
    assert res.config.batch_size == 320
    for config in ({"batch_size": 32}, fastblend.methods.AFinetuneConfig(batch_size=128)):
        with pytest.raises(ValueError, match=r"unlearn: config.batch_size is (32|128) but the retain DataLoader "
                                             r"yields batches of 256"):
            fastblend.unlearn("a_finetune", model, loader, forget, unseen, config=config)
    # a batch size at the default counts as not set (a config instance's, or a dict of every field such as presets'
    # gives): the loader's is taken
    for config in (fastblend.methods.AFinetuneConfig(), fastblend.presets("cifar10-resnet18", "a_finetune")):
        assert fastblend.unlearn("a_finetune", model, loader, forget, unseen, config=config).config.batch_size == 256
    # a loader batch beyond the set's rows is the set (its nominal 2000 would scale lr and epochs by sqrt(2000/64))
    whole = DataLoader(data, batch_size=2000)
    assert fastblend.unlearn("a_finetune", model, whole, forget, unseen).config.batch_size == len(data)
    # a loader that declares no batch size (pre-batched items) is sized by its first batch
    batches = [(retain[0][i:i + 100], retain[1][i:i + 100]) for i in range(0, len(data), 100)]
    prebatched = DataLoader(batches, batch_size=None)
    with pytest.warns(UserWarning, match="cannot read the retain set's labels"):  # a list of batches: no labels
        assert fastblend.unlearn("a_finetune", model, prebatched, forget, unseen).config.batch_size == 100
    # a whole-class request takes it too (A-SCRUB's forget pass included)
    keep = retain[1] != 0
    res = fastblend.unlearn("a_scrub", model, DataLoader(TensorDataset(retain[0][keep], retain[1][keep]),
                                                         batch_size=128), (retain[0][~keep], retain[1][~keep]),
                            unseen, config={"epochs": 1})
    assert res.info["request"] == "class" and res.config.batch_size == 128
    # a base method keeps its own config (the loader streams as is)
    res = fastblend.unlearn("finetune", model, loader, forget, config={"epochs": 1})
    assert res.config.batch_size == fastblend.methods.FinetuneConfig().batch_size
