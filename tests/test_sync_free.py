"""A-AMU step without host synchronisation: fixed-size sampler outputs from a device-side random stream,
validation once before the loop, and the CPU proxy of "never waits for the host": the whole step
(samplers, forward of the forget/unseen batches, loss) compiles under torch.compile(fullgraph=True),
which refuses .item(), .tolist(), nonzero, data-dependent shapes and torch.Generator calls."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastblend

ROOT = Path(__file__).resolve().parents[1]

# aot_eager: the same Dynamo trace and AOT-autograd graph as inductor, without inductor's C++ codegen
# (minutes on two cores); fullgraph=True turns any graph break into an error
FULLGRAPH_STEP = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    import fastblend
    from fastblend.models import ConvNet3

    gen = torch.Generator().manual_seed(0)
    fx, fy = torch.randn(12, 3, 8, 8, generator=gen), torch.randint(0, 2, (12,), generator=gen)
    ux, uy = torch.randn(30, 3, 8, 8, generator=gen), torch.randint(0, 4, (30,), generator=gen)
    rx, ry = torch.randn(2, 3, 8, 8, generator=gen), torch.randint(0, 4, (2,), generator=gen)

    def accelerator():
        torch.manual_seed(0)
        return fastblend.AAMUStep(ConvNet3(3, 4, 8, width=8), (fx, fy), (ux, uy), batch_size=2, seed=3)

    def step(acc):
        return acc.loss(F.cross_entropy(acc.model(rx), ry, reduction="none")).total

    eager, comp = accelerator(), accelerator()
    step(eager), step(comp)  # the first step checks the labels against the logits on the host
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        want, got = step(eager), compiled(comp)
        got.backward()
        assert torch.equal(want.detach(), got.detach()), (float(want), float(got))
    assert all(p.grad is not None for p in comp.model.parameters())
    print("fullgraph ok")
""")


@pytest.mark.slow
def test_aamu_step_compiles_fullgraph_in_a_fresh_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", FULLGRAPH_STEP], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "fullgraph ok" in done.stdout, done.stderr[-6000:]


def test_samplers_trace_fullgraph_in_process():
    forget = fastblend.ForgetSampler(torch.arange(10, 20), 4, seed=1)
    unseen = fastblend.UnseenSampler(torch.tensor([0, 1, 1, 2, 0, 2, 1]), 5, seed=2)

    def draw(fl):
        fi = forget.sample()
        return fi, unseen.sample(fl[fi - 10], validate=False)

    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    fi, ui = torch.compile(draw, fullgraph=True, backend="eager")(labels)
    assert fi.shape == (4,) and ui.shape == (5,)


def test_unseen_sampler_output_size_never_depends_on_the_data():
    pool = torch.tensor([0, 1, 1, 3, 0, 1, 2, 2, 2, 2])
    s = fastblend.UnseenSampler(pool, 8, seed=0)
    for forget in ([1], [0, 3], [2], [0, 1, 2, 3]):
        assert s.sample(torch.tensor(forget)).shape == (8,)


def test_unseen_sampler_fewer_allowed_than_batch_cycles_a_shuffle():
    pool = torch.tensor([0, 1, 1, 3, 0, 1])
    got = fastblend.UnseenSampler(pool, 7, seed=4).sample(torch.tensor([1]))
    # the 3 allowed samples once each in random order, then the same order again: j -> draw j mod 3
    assert sorted(got[:3].tolist()) == [1, 2, 5]
    assert torch.equal(got[3:6], got[:3]) and got[6] == got[0]


def test_unseen_sampler_without_validation_falls_back_to_the_whole_pool():
    pool = torch.tensor([0, 1, 1, 3, 0, 1])
    s = fastblend.UnseenSampler(pool, 4, num_classes=5, seed=0)
    with pytest.raises(ValueError, match="^UnseenSampler.sample: the unseen pool holds none of the forget classes"):
        s.sample(torch.tensor([2, 4]))
    got = s.sample(torch.tensor([2, 4]), validate=False)
    assert got.shape == (4,) and got.unique().numel() == 4 and bool((got < 6).all())


def test_unseen_sampler_draws_uniformly_without_replacement():
    pool = torch.arange(20) % 2  # ten samples of each class
    s = fastblend.UnseenSampler(pool, 5, seed=0)
    counts = torch.zeros(20)
    for _ in range(400):
        idx = s.sample(torch.tensor([1]), validate=False)
        assert idx.unique().numel() == 5 and bool((pool[idx] == 1).all())
        counts[idx] += 1
    odd = counts[1::2]  # 400 draws x 5 of 10 samples: 200 each; a fair coin's spread is ~±11
    assert bool((odd - 200).abs().max() < 60) and counts[0::2].sum() == 0


def test_forget_sampler_draws_uniformly_and_is_seeded():
    s = fastblend.ForgetSampler(10, 3, seed=7)
    draws = torch.stack([s.sample() for _ in range(500)])
    assert all(row.unique().numel() == 3 for row in draws)
    freq = torch.bincount(draws.flatten(), minlength=10)  # 150 expected each
    assert bool((freq - 150).abs().max() < 50)
    again = fastblend.ForgetSampler(10, 3, seed=7)
    assert torch.equal(torch.stack([again.sample() for _ in range(500)]), draws)
    assert not torch.equal(fastblend.ForgetSampler(10, 3, seed=8).sample(), draws[0]) or not torch.equal(
        fastblend.ForgetSampler(10, 3, seed=9).sample(), draws[0])


def test_aamu_step_checks_forget_labels_once_up_front():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"^AAMUStep: forget labels must be in \[0, 3\), got 5"):
        fastblend.AAMUStep(model, (x, torch.tensor([0, 1, 5, 0, 1, 2])), (x, torch.tensor([0, 1, 2, 0, 1, 2])))
