"""BatchNorm safety of A-AMU (docs/method.md §2.4): the forget and unseen forwards leave a model's
running statistics untouched, in ``AAMUStep``, the packaged accelerated methods and the drop-in.

The ResNet-18 tests need torchvision (the dev extra installs it); the probe tests (every packaged
training method, SCRUB's forget pass) use a small model and run without it."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblend


def _stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _assert_same_stats(got: nn.Module, want: nn.Module, exact: bool = True) -> None:
    a, b = _stats(got), _stats(want)
    assert a.keys() == b.keys() and a
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), f"{key} differs from the retain-only statistics"
        else:  # the same samples in another order: equal up to float reassociation
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _data(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen) + shift, torch.randint(0, 10, (n,), generator=gen)


@pytest.fixture(scope="module")
def resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).train()


def test_aamu_step_keeps_only_retain_statistics(resnet):
    model = copy.deepcopy(resnet)
    rx, ry = _data(4, 0)
    fx, fy = _data(16, 1, shift=3.0)  # forget/unseen batches with very different statistics
    ux, uy = _data(16, 2, shift=-3.0)
    expected = copy.deepcopy(resnet)
    with torch.no_grad():
        expected(rx)  # the retain forward alone, in training mode
    acc = fastblend.AAMUStep(model, (fx, fy), (ux, uy), batch_size=4, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = acc.loss(F.cross_entropy(model(rx), ry, reduction="none"))
    opt.zero_grad()
    out.total.backward()
    opt.step()
    _assert_same_stats(model, expected)
    assert model.training and all(m.track_running_stats for m in model.modules()
                                  if isinstance(m, nn.BatchNorm2d))
    # the forget forward still carries gradient into the model (batch statistics, train mode)
    assert model.conv1.weight.grad is not None and torch.isfinite(out.total)


def test_frozen_running_stats_normalises_with_batch_statistics(resnet):
    from fastblend._batchnorm import frozen_running_stats

    model = copy.deepcopy(resnet)
    x, _ = _data(6, 3, shift=2.0)
    before = _stats(model)
    with torch.no_grad():
        with frozen_running_stats(model):
            frozen = model(x)
        _assert_same_stats_dict(_stats(model), before)
        plain = copy.deepcopy(resnet)(x)  # train mode: batch statistics (and a stats update)
    torch.testing.assert_close(frozen, plain)


def _assert_same_stats_dict(a: dict, b: dict) -> None:
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_unlearn_a_finetune_keeps_only_retain_statistics(resnet):
    rx, ry = _data(8, 4)
    fx, fy = _data(8, 5, shift=3.0)
    ux, uy = _data(16, 6, shift=-3.0)
    cfg = {"batch_size": 8, "epochs": 1}
    res = fastblend.unlearn("a_finetune", resnet, (rx, ry), (fx, fy), unseen=(ux, uy), config=cfg)
    expected = copy.deepcopy(resnet)
    with torch.no_grad():
        expected(rx)  # one retain batch of 8: the whole retain set (unlearn shuffles it)
    _assert_same_stats(res.model, expected, exact=False)


def test_dropin_criterion_keeps_only_retain_statistics(resnet):
    model = copy.deepcopy(resnet)
    rx, ry = _data(12, 7)
    fx, fy = _data(6, 8, shift=3.0)
    ux, uy = _data(16, 9, shift=-3.0)
    prep = fastblend.prepare_unlearning(model, (rx, ry), (fx, fy), (ux, uy), ipc=1, batch_size=4, iterations=1)
    x, y = next(iter(prep.retain_loader))
    expected = copy.deepcopy(resnet)
    with torch.no_grad():
        expected(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = prep.criterion(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    _assert_same_stats(model, expected)


# --------------------------------------------------------------------------------------------
# every packaged training method, and SCRUB's forget pass: only retain batches reach the statistics
# --------------------------------------------------------------------------------------------
def _probe_model() -> nn.Module:
    """A BatchNorm on the raw input (its statistics depend on the images alone, not on the weights the
    method changes) in front of a small conv net with BatchNorm inside."""
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).train()


_TRAINING_METHODS = ["finetune", "neggrad_plus", "scrub", "l1_sparse", "bad_teacher", "prune",
                     "a_finetune", "a_sparse", "a_scrub", "a_neggrad_plus", "a_bad_teacher", "a_prune"]


@pytest.mark.parametrize("method", _TRAINING_METHODS)
def test_every_training_method_keeps_only_retain_statistics(method):
    assert set(_TRAINING_METHODS) <= set(fastblend.available_methods())
    rx, ry = _data(8, 10)
    fx, fy = _data(8, 11, shift=3.0)  # forget and unseen images far from the retain images
    ux, uy = _data(16, 12, shift=-3.0)
    model = _probe_model()
    expected = copy.deepcopy(model[0])
    with torch.no_grad():
        expected(rx)  # one retain batch (the whole retain set), in training mode
    unseen = (ux, uy) if method.startswith("a_") else None
    res = fastblend.unlearn(method, model, (rx, ry), (fx, fy), unseen=unseen, config={"batch_size": 8, "epochs": 1})
    got = res.model[0]
    assert int(got.num_batches_tracked) == 1, "a forget or unseen forward updated the statistics"
    torch.testing.assert_close(got.running_mean, expected.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.running_var, expected.running_var, rtol=1e-5, atol=1e-6)


def test_scrub_forget_pass_alone_leaves_the_statistics_untouched():
    """SCRUB's max-steps (the forget pass, docs/method.md §2.4) run without any retain forward in
    between: the statistics after them are the model's own."""
    from fastblend.methods.scrub import Scrub

    rx, ry = _data(8, 13)
    fx, fy = _data(8, 14, shift=3.0)
    model = _probe_model()
    before = _stats(model)
    seen = []
    real = Scrub.before_epoch

    def before_epoch(self, m, *args, **kwargs):  # the forget pass, before the epoch's retain steps
        out = real(self, m, *args, **kwargs)
        seen.append((out[1], _stats(m)))
        return out

    Scrub.before_epoch = before_epoch
    try:
        fastblend.unlearn("scrub", model, (rx, ry), (fx, fy), config={"batch_size": 8, "epochs": 1})
    finally:
        Scrub.before_epoch = real
    assert seen and seen[0][0] > 0, "SCRUB ran no forget step"
    _assert_same_stats_dict(seen[0][1], before)
