"""The trainer's update: per-member clipping, then one Adam call over the stacked tensors.

The oracle is a plain module trained by ``clip_grad_norm_`` and ``torch.optim.Adam`` (torch's
own code, its default implementation for the device) on the batches the trainer draws, so the
update is checked against what a user of torch would write, not against itself.
"""

from __future__ import annotations

import pytest
import torch
from numerics import EPS32
from tiny import TINY_BASE

import randpos.loop.trainer as trainer_module
from randpos.core.seeding import make_generator
from randpos.loop.training import Trainer
from randpos.workloads import build_workload, resolve_config

TINY = dict(TINY_BASE, steps=5, batch_size=8, dropout=0.1, log_every=1)
CASES = [
    pytest.param(dict(pe="none"), id="none"),
    pytest.param(
        dict(pe="rope", randomized=True, max_position=64, randomize="distances"), id="rope"
    ),
    pytest.param(dict(pe="learned", randomized=True, max_position=64), id="learned"),
]


def plain_run(config):
    """One run the way a torch user writes it: module, clip_grad_norm_, torch.optim.Adam, on the
    batches, positions and dropout the trainer's member draws from the same streams. Returns
    the losses, the module and its optimizer."""
    workload = build_workload(config)
    model = workload.build_model(make_generator(config.seed, "init")).train()
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
    )
    generators = {s: make_generator(config.seed, s, "cpu") for s in workload.streams}
    curriculum = make_generator(config.curriculum_seed, "curriculum", "cpu")
    losses = []
    for _ in range(config.steps):
        size = workload.next_size(curriculum)
        batch = workload.draw_batch(model, size, generators, "cpu")
        loss, _ = workload.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, model, optimizer


def step_losses(trainer: Trainer, member: int = 0) -> list[float]:
    return [r["loss"] for r in trainer.members[member].history]


@pytest.mark.parametrize("changes", CASES)
def test_one_member_is_clip_grad_norm_and_torch_adam_bit_for_bit(changes):
    """K = 1: the same forward and backward on the same values, the norm by clip_grad_norm_'s
    own ops on tensors of the same layout, and Adam's elementwise kernels on the same elements:
    equal bit for bit (the same code path, so exact)."""
    config = resolve_config(TINY, seed=3, learning_rate=3e-3, grad_clip=0.05, **changes)
    losses, model, optimizer = plain_run(config)
    trainer = Trainer(config)
    trainer.fit(progress=False)
    assert step_losses(trainer) == losses  # one log record per step: each step's loss
    member = trainer.members[0]
    ours = dict(member.model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(ours[name], p), name
        mine, theirs = member.optimizer.state[ours[name]], optimizer.state[p]
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(mine[key], theirs[key]), (name, key)


def test_clipping_was_active():
    """The case above clips (grad_clip 0.05 is below the tiny model's gradient norms), so the
    per-member scaling is exercised, not bypassed."""
    config = resolve_config(TINY, seed=3, grad_clip=0.05)
    workload = build_workload(config)
    model = workload.build_model(make_generator(config.seed, "init")).train()
    generators = {s: make_generator(config.seed, s, "cpu") for s in workload.streams}
    size = workload.next_size(make_generator(config.curriculum_seed, "curriculum", "cpu"))
    loss, _ = workload.loss(model, workload.draw_batch(model, size, generators, "cpu"))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    assert float(norm) > 2 * config.grad_clip


def count_adam_calls(monkeypatch) -> list[int]:
    """Counts the trainer's torch.optim.adam.adam calls (and how many tensors each updates)."""
    calls: list[int] = []
    real = trainer_module.adam

    def counted(params, *args, **kwargs):
        calls.append(len(params))
        return real(params, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "adam", counted)
    return calls


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_one_adam_call_per_learning_rate_whatever_k(monkeypatch, execution):
    calls = count_adam_calls(monkeypatch)
    lrs = [1e-3, 3e-3, 1e-3, 3e-3, 1e-3, 1e-3]  # K = 6, two learning rates, interleaved
    configs = [resolve_config(TINY, seed=s, learning_rate=lr) for s, lr in enumerate(lrs)]
    trainer = Trainer(configs, execution=execution)
    params = len(trainer.names)
    for _ in range(3):
        trainer.train_step()
    assert calls == [params, params] * 3  # two calls per step, each over every stacked tensor
    calls.clear()
    Trainer([c.replace(learning_rate=1e-3) for c in configs], execution=execution).train_step()
    assert calls == [params]


@pytest.mark.numerics
def test_stacked_update_equals_separate_clip_and_adam():
    """One update of K = 5 members (learning rates interleaved, so one group is gathered and
    written back) against each member's own clip_grad_norm_ + torch.optim.Adam step on copies
    of its slices, from the same gradients and Adam state.

    Not exact in general: torch's elementwise kernels may round an element in a vector lane
    (lerp uses a fused multiply-add there) and in the scalar tail differently, and a member's
    element can fall in either depending on K; the per-member norms are the same per-tensor
    norms (foreach_norm on the same slices) reduced as the rows of a (K, P) table instead of K
    vectors of P (the same sums in the kernels seen so far, but not by contract). (On the
    Intel CPU this was written on, every kernel set gave equal bits.) Bounds, P the number of
    tensors: the clip coefficient to (P + 2) EPS32 relative (a sum
    of P squares, a sqrt, a division); m = lerp(m0, g, 0.1) to (P + 4) EPS32 x (|m0| + |g|)
    (the clipped gradient's error plus a few roundings of terms of those sizes); the
    denominator sqrt(v / bc2) + eps to (P + 6) EPS32 relative (v sums positive terms); the
    update lr / bc1 x m / denom then to its error in m over denom plus (2 P + 12) EPS32 of
    its size, and the final addition rounds |w| once more (2 EPS32 |w|)."""
    generator = torch.Generator().manual_seed(0)
    lrs = [1e-3, 3e-3, 1e-3, 1e-3, 3e-3]
    configs = [resolve_config(TINY, seed=i, learning_rate=lr) for i, lr in enumerate(lrs)]
    trainer = Trainer(configs)
    names = trainer.names
    P = len(names)
    with torch.no_grad():
        for n in names:  # a mid-run state: moments of plausible size, at step 7
            m0 = torch.randn(trainer.params[n].shape, generator=generator) * 1e-2
            trainer.exp_avg[n].copy_(m0)
            trainer.exp_avg_sq[n].copy_(m0.square() * 2)
        for group in trainer._adam_groups:
            for s in group.steps:
                s.fill_(7.0)
    grads = [0.3 * torch.randn(trainer.params[n].shape, generator=generator) for n in names]
    before = {n: trainer.params[n].detach().clone() for n in names}
    state = {n: (trainer.exp_avg[n].clone(), trainer.exp_avg_sq[n].clone()) for n in names}
    with torch.no_grad():
        trainer._update([g.clone() for g in grads])
    assert all(float(s) == 8.0 for g in trainer._adam_groups for s in g.steps)
    bc1, bc2 = 1 - 0.9**8, 1 - 0.999**8
    for i, config in enumerate(configs):
        weights = [torch.nn.Parameter(before[n][i].clone()) for n in names]
        for w, g in zip(weights, grads, strict=True):
            w.grad = g[i].clone()
        norm = torch.nn.utils.clip_grad_norm_(weights, config.grad_clip)
        assert float(norm) > config.grad_clip  # clipping acts
        adam = torch.optim.Adam(weights, lr=config.learning_rate, eps=config.adam_eps)
        adam.load_state_dict(
            {
                "state": {
                    j: {
                        "step": torch.tensor(7.0),
                        "exp_avg": state[n][0][i].clone(),
                        "exp_avg_sq": state[n][1][i].clone(),
                    }
                    for j, n in enumerate(names)
                },
                "param_groups": [{**adam.param_groups[0], "params": list(range(P))}],
            }
        )
        adam.step()
        for n, w, g in zip(names, weights, grads, strict=True):
            m, v = adam.state[w]["exp_avg"], adam.state[w]["exp_avg_sq"]
            atol_m = (P + 4) * EPS32 * (state[n][0][i].abs() + g[i].abs())
            assert ((trainer.exp_avg[n][i] - m).abs() <= atol_m).all(), (i, n)
            denom = (v / bc2).sqrt() + config.adam_eps
            size = config.learning_rate / bc1 * m.abs() / denom
            atol_w = config.learning_rate / bc1 * atol_m / denom
            atol_w = atol_w + (2 * P + 12) * EPS32 * size + 2 * EPS32 * w.detach().abs()
            got = trainer.params[n][i].detach()
            assert ((got - w.detach()).abs() <= atol_w).all(), (i, n)


def test_members_whose_adam_step_counts_differ_update_apart():
    """A checkpoint may hold other per-parameter step counts than its run's step (torch's Adam
    does not count a step for a parameter without a gradient): such members get their own Adam
    call, and each member's counts go on from its own."""
    configs = [resolve_config(TINY, seed=s, steps=3) for s in (0, 1)]
    first = Trainer(configs[0])
    first.train_step()
    first.train_step()
    first.sync()
    state = first.members[0].state()
    state["optimizer"]["state"][0]["step"] = torch.tensor(1.0)  # parameter 0 missed a step
    second = Trainer(configs[1])
    second.train_step()
    second.train_step()
    second.sync()
    ensemble = Trainer(configs)
    ensemble.load_states([state, second.members[0].state()])
    assert len(ensemble._adam_groups) == 2
    ensemble.train_step()
    ensemble.sync()
    steps = [
        [float(m.optimizer.state[p]["step"]) for p in m.model.parameters()]
        for m in ensemble.members
    ]
    assert steps[0] == [2.0] + [3.0] * (len(steps[0]) - 1)
    assert steps[1] == [3.0] * len(steps[1])
