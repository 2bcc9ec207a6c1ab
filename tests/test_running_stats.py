"""Running statistics under A-AMU (issue 24, items 6-8): the forget and unseen forwards leave every
buffer of a training-mode module untouched (not only BatchNorm's), also when the model checkpoints
activations, and an evaluation callback's ``model.eval()`` does not stick to training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import fastblend

C = 4


class Counter(nn.Module):
    """Counts the samples it sees in training mode, in a buffer (a module that updates state in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen += x.shape[0]
        return x


class Checkpointed(nn.Module):
    """Runs ``block``, under non-reentrant activation checkpointing in training mode when ``on``."""

    def __init__(self, block: nn.Module, on: bool) -> None:
        super().__init__()
        self.block, self.on = block, on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.on:
            return checkpoint(self.block, x, use_reentrant=False)
        return self.block(x)


def _net(seed: int = 0, instance: bool = True, checkpointed: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    block = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
    norm = nn.InstanceNorm2d(6, affine=True, track_running_stats=True) if instance else nn.Identity()
    return nn.Sequential(Checkpointed(block, checkpointed), norm, Counter(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 16, C))


def _data(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)

    def make(n: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 3, 8, 8, generator=gen) + shift, torch.randint(0, C, (n,), generator=gen)

    # forget and unseen batches with statistics far from the retain batches'
    return {"retain": make(24, 0.0), "forget": make(12, 3.0), "unseen": make(24, -3.0)}


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _assert_same_buffers(got: nn.Module, want: dict[str, torch.Tensor]) -> None:
    have = _buffers(got)
    assert have.keys() == want.keys() and have
    for key in want:
        assert torch.equal(have[key], want[key]), f"{key}: {have[key].flatten()[:4]} != {want[key].flatten()[:4]}"


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_dropin_criterion_keeps_every_running_statistic_to_the_retain_batch(checkpointed):
    """BatchNorm, tracked InstanceNorm and a custom buffer: after a criterion step the buffers are
    those the retain forward alone leaves (item 6); with a checkpointed BatchNorm block the backward
    runs and its recomputation adds nothing (item 8)."""
    d = _data(0)
    model = _net(checkpointed=checkpointed).train()
    prep = fastblend.prepare_unlearning(model, d["retain"], d["forget"], d["unseen"], batch_size=8, iterations=1)
    x, y = next(iter(prep.retain_loader))
    expected = _net(checkpointed=False).train()
    expected.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected(x)  # the retain forward alone, in training mode
    loss = prep.criterion(model(x), y)
    loss.backward()
    _assert_same_buffers(model, _buffers(expected))
    assert int(model[2].seen) == x.shape[0]
    assert all(p.grad is not None for p in model.parameters())


def test_checkpointed_model_gets_the_gradient_of_the_plain_one():
    """Checkpointing changes nothing the criterion computes: same loss, same gradients (item 8)."""
    d = _data(1)
    plain, ckpt = _net(1).train(), _net(1, checkpointed=True).train()
    grads = []
    for model in (plain, ckpt):
        prep = fastblend.prepare_unlearning(model, d["retain"], d["forget"], d["unseen"], batch_size=8,
                                            iterations=1, seed=2)
        x, y = next(iter(prep.retain_loader))
        loss = prep.criterion(model(x), y)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_accumulated_criterion_steps_keep_both_retain_updates():
    """Two criterion calls before one backward (gradient accumulation): both retain forwards' updates
    stay; neither forget batch's does, also when the model checkpoints."""
    d = _data(2)
    model = _net(2, checkpointed=True).train()
    prep = fastblend.prepare_unlearning(model, d["retain"], d["forget"], d["unseen"], batch_size=8, iterations=1)
    (x1, y1), (x2, y2) = list(prep.retain_loader)[:2]
    expected = _net(2).train()
    expected.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected(x1), expected(x2)
    loss = prep.criterion(model(x1), y1) + prep.criterion(model(x2), y2)
    loss.backward()
    _assert_same_buffers(model, _buffers(expected))


@pytest.mark.parametrize("method", ["a_finetune", "a_scrub", "a_neggrad_plus"])
def test_accelerated_methods_count_only_retain_samples(method):
    """The methods' forget and unseen forwards (and SCRUB's forget pass) leave a custom buffer and a
    tracked InstanceNorm alone: the counter sees each retain sample once per epoch (item 6)."""
    d = _data(3)
    res = fastblend.unlearn(method, _net(3).train(), d["retain"], d["forget"], d["unseen"],
                            config={"epochs": 2, "batch_size": 8}, seed=1)
    assert int(res.model[2].seen) == 2 * 24
    assert int(res.model[0].block[1].num_batches_tracked) == 2 * 3  # BatchNorm: one update per retain batch


def test_accelerated_method_trains_a_checkpointed_model():
    """``unlearn`` on a model that checkpoints a BatchNorm block: it runs, and matches the same model
    without checkpointing (item 8)."""
    d = _data(4)
    cfg = {"epochs": 1, "batch_size": 8}
    got = fastblend.unlearn("a_finetune", _net(4, checkpointed=True).train(), d["retain"], d["forget"], d["unseen"],
                            config=cfg, seed=0)
    want = fastblend.unlearn("a_finetune", _net(4).train(), d["retain"], d["forget"], d["unseen"], config=cfg, seed=0)
    assert got.losses == want.losses
    for (name, a), b in zip(got.model.state_dict().items(), want.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("method", ["finetune", "a_finetune"])
def test_a_callback_that_leaves_the_model_in_eval_mode_does_not_stick(method):
    """A Tracker-style callback evaluates in eval mode and does not switch back: training still runs
    in training mode (the counter counts every retain sample; item 7)."""
    d = _data(5)
    modes = []

    def evaluate(model: nn.Module, step: int, seconds: float) -> None:
        model.eval()
        with torch.no_grad():
            model(d["retain"][0][:2])
        modes.append(step)

    res = fastblend.unlearn(method, _net(5).train(), d["retain"], d["forget"], d["unseen"],
                            config={"epochs": 2, "batch_size": 8}, callback=evaluate, eval_every=2, seed=0)
    assert modes[0] == 0 and len(modes) >= 3
    assert int(res.model[2].seen) == 2 * 24


def test_frozen_running_stats_restores_buffers_and_keeps_their_version():
    """The snapshot-and-restore rule on its own: values restored, a reassigned buffer put back, and a
    graph that saved a buffer still differentiable (the restore does not bump its version)."""
    from fastblend._batchnorm import frozen_running_stats

    class Reassigns(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("state", torch.zeros(3))

        def forward(self, x):
            if self.training:
                self.state = self.state + x.detach().mean()
            return x

    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), Reassigns()).train()
    before = _buffers(model)
    original = model[2].state
    x = torch.randn(5, 3)
    with frozen_running_stats(model):
        out = model(x + 4.0)
    _assert_same_buffers(model, before)
    assert model[2].state is original
    out.sum().backward()  # BatchNorm saved its running statistics: still at their version
    assert model[0].weight.grad is not None
    eval_model = copy.deepcopy(model).eval()  # eval-mode modules keep using (and never move) their statistics
    with frozen_running_stats(eval_model):
        eval_model(x)
    _assert_same_buffers(eval_model, before)


def test_fuse_forward_is_refused_for_a_model_with_running_statistics():
    """A fused forward would put the forget samples into a tracked InstanceNorm's statistics."""
    d = _data(6)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4, track_running_stats=True),
                          nn.Flatten(), nn.Linear(4 * 64, C)).train()
    with pytest.warns(UserWarning, match="fuse_forward ignored"):
        fastblend.unlearn("a_finetune", model, d["retain"], d["forget"], d["unseen"],
                          config={"batch_size": 8, "fuse_forward": True})
    with pytest.warns(UserWarning, match="^AAMUStep: micro_batch ignored"):
        fastblend.AAMUStep(model, d["forget"], d["unseen"], micro_batch=2)


def test_custom_loop_step_keeps_running_statistics_with_fused_retain_forward():
    """``AAMUStep.forward`` (retain and forget forwards from the step) leaves only the retain batch's
    statistics, and its loss equals the two-call spelling's."""
    d = _data(7)
    a, b = _net(7).train(), _net(7).train()
    sa = fastblend.AAMUStep(a, d["forget"], d["unseen"], batch_size=8, seed=3)
    sb = fastblend.AAMUStep(b, d["forget"], d["unseen"], batch_size=8, seed=3)
    x, y = d["retain"][0][:8], d["retain"][1][:8]
    logits, forget = sa.forward(a, x)
    out_a = sa.loss(F.cross_entropy(logits, y, reduction="none"))
    out_b = sb.loss(F.cross_entropy(b(x), y, reduction="none"))
    assert forget.logits is not None and forget.size == 12 and forget.x.shape[0] == 12
    assert torch.equal(out_a.total.detach(), out_b.total.detach())
    _assert_same_buffers(a, _buffers(b))
