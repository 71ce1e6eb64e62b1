"""Comparing training trajectories and evaluations of the same runs along two code paths
(vmapped or compiled vs looped eager execution, another CPU's kernels), with tolerances derived
from the computation (docs/testing.md)."""

from __future__ import annotations

import torch
from numerics import EPS32, EPS64, f32_atol, magnitude

from randpos.loop.runs import StopFlag
from randpos.loop.trainer import Trainer
from randpos.tasks import get_task
from randpos.workloads.config import TrainConfig

# Two executions of the same runs (vmapped or compiled vs looped eager; another CPU) round in
# another order (other kernels, the math attention instead of the fused one). Rounding enters
# every forward and backward pass and Adam carries each step's differences into the next
# weights, so after s steps the outputs differ like those of a network num_layers x s deep
# (numerics.f32_atol): the losses to EPS32 x (num_layers x steps) x sqrt(width) x max|loss|,
# width the longest sum (the loss's mean over batch x outputs, or ff_width); the logits of the
# trained models to EPS32 x (num_layers x (steps + 1)) x sqrt(width) x max|logit|, width ff_width
# or T; the weights per element as adam_atol says. Accuracies count argmaxes: logits that differ
# by at most tol have the same argmax where the top-2 margin exceeds 2 tol, so two evaluations
# count the same hits but at predictions within 2 tol of a tie (EvalLogits, flip_bound).


def loss_width(config: TrainConfig) -> int:
    """The longest sum in a training step: the loss's mean over batch x outputs, or a layer."""
    outputs = get_task(config.task).output_length(config.max_train_length)
    return max(config.width, config.ff_width, config.batch_size * outputs)


def logit_width(config: TrainConfig) -> int:
    """The longest sum in an evaluation forward: a layer, or attention over T tokens."""
    return max(config.width, config.ff_width, config.longest_sequence())


def loss_atol(config: TrainConfig, losses: torch.Tensor) -> float:
    return f32_atol(losses, depth=config.num_layers * config.steps, width=loss_width(config))


def logit_atol(config: TrainConfig, scale: float | torch.Tensor) -> float:
    """The logits (of magnitude ``scale``) of one run trained and evaluated along two paths."""
    depth = config.num_layers * (config.steps + 1)
    return f32_atol(scale, depth=depth, width=logit_width(config))


def adam_atol(config: TrainConfig, weight: torch.Tensor, exp_avg_sq: torch.Tensor) -> torch.Tensor:
    """Per element, how far one weight of two executions of ``config.steps`` Adam steps may be.

    Adam moves a weight by lr x m/(sqrt(v) + eps) per step, at most about lr. A gradient error e
    changes that by about lr x e/(sqrt(v) + eps), at most 2 lr: near-zero gradients (a rarely
    used row) amplify float noise up to that. e is the rounding of the tensor's gradients,
    f32_atol(their scale, the largest sqrt(v) of the tensor, depth = forward and backward
    through the layers at every step, width = loss_width); each update also rounds |w| once."""
    steps = config.steps
    rms = (exp_avg_sq / (1 - config.adam_beta2**steps)).sqrt()  # per element, its |gradient|
    e = f32_atol(rms, depth=2 * config.num_layers * steps, width=loss_width(config))
    per_step = (e / (rms + config.adam_eps)).clamp(max=2.0)
    return steps * (config.learning_rate * per_step + EPS32 * weight.abs())


def assert_same_training(
    reference: Trainer, model: torch.nn.Module, history: list[dict], member: int = 0
) -> None:
    """A run trained along another path (its final ``model`` and ``history``) and ``member`` of
    ``reference``: losses step by step (one record per step) and final weights agree to the
    derived float32 tolerances (loss_atol, adam_atol)."""
    reference.sync()
    single = reference.members[member]
    cfg = single.config
    ref = torch.tensor([r["loss"] for r in single.history], dtype=torch.float64)
    got = torch.tensor([r["loss"] for r in history], dtype=torch.float64)
    assert len(ref) == len(got) == cfg.steps
    torch.testing.assert_close(got, ref, atol=loss_atol(cfg, ref), rtol=0)
    state = single.optimizer.state
    for (name, a), b in zip(single.model.named_parameters(), model.parameters(), strict=True):
        atol = adam_atol(cfg, a.detach(), state[a]["exp_avg_sq"])
        excess = ((b.detach() - a.detach()).abs() / atol).max()
        assert excess <= 1, f"{name}: {float(excess):.3g} x the derived tolerance"


class EvalLogits:
    """Records what evaluations score, per size: the logits (copies, E, k, C) and the mask
    (E, k) handed to randpos.workloads.evaluation.masked_correct, in the order of the sequences."""

    def __init__(self) -> None:
        self.logits: dict[int, list[torch.Tensor]] = {}
        self.masks: dict[int, list[torch.Tensor]] = {}

    def __enter__(self) -> EvalLogits:
        import randpos.workloads.evaluation as evaluation

        self._module = evaluation
        self._saved = evaluation.evaluation_batch, evaluation.masked_correct
        batch_fn, correct_fn = self._saved
        size = [None]

        def evaluation_batch(task, length, *args, **kwargs):
            size[0] = length
            self.logits[length], self.masks[length] = [], []
            return batch_fn(task, length, *args, **kwargs)

        def masked_correct(logits, batch):
            self.logits[size[0]].append(logits.detach().clone())
            self.masks[size[0]].append(batch.mask.clone())
            return correct_fn(logits, batch)

        evaluation.evaluation_batch, evaluation.masked_correct = evaluation_batch, masked_correct
        return self

    def __exit__(self, *exc) -> None:
        self._module.evaluation_batch, self._module.masked_correct = self._saved

    def at(self, size: int, copy: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (E, k, C) of one model at ``size`` and the mask (E, k)."""
        logits = torch.cat([t[copy] for t in self.logits[size]])
        return logits, torch.cat(self.masks[size])

    def scale(self) -> float:
        return magnitude(*(t for ts in self.logits.values() for t in ts))


def near_ties(logits: torch.Tensor, mask: torch.Tensor, tol: float) -> torch.Tensor:
    """Per sequence (E,), the scored predictions whose top-2 margin is at most 2 tol."""
    top = logits.topk(2, dim=-1).values
    return (((top[..., 0] - top[..., 1]) <= 2 * tol) & mask).sum(-1)


def flip_bound(logits, mask, tol: float, sub_batch: int) -> float:
    """How far the accuracy (mean over sub-batches of hits / counted) of logits within tol of
    these may be: each near tie may flip one hit of its sub-batch."""
    near = near_ties(logits, mask, tol).view(-1, sub_batch).sum(1).double()
    counted = mask.sum(-1).view(-1, sub_batch).sum(1).clamp(min=1)
    return float((near / counted).mean())


def assert_same_accuracies(
    got: dict, want: dict, seen: EvalLogits, tol: float, sub_batch: int, copy: int = 0
) -> None:
    """Accuracies per size equal but for the hits of near ties (flip_bound) of the logits of
    model ``copy`` in ``seen``, ``tol`` the difference of the compared evaluations' logits."""
    assert set(got) == set(want)
    for n in want:
        bound = flip_bound(*seen.at(int(n), copy), tol, sub_batch)
        bound += 4 * EPS64 if bound else 0.0  # a flipped hit: the float64 mean then rounds
        assert abs(got[n] - want[n]) <= bound, (n, got[n], want[n], bound)


def assert_same_evaluation(
    config: TrainConfig, got: dict, want: dict, got_seen: EvalLogits, want_seen: EvalLogits,
    copy: int = 0, want_copy: int = 0, tol: float | None = None,
) -> None:  # fmt: skip
    """Two evaluations (per-size accuracies, recorded logits) of one run, model ``copy`` of
    ``got_seen`` and ``want_copy`` of ``want_seen``: the logits agree to ``tol`` (default
    logit_atol: trained along two paths), the accuracies but for near ties. Sequences with a
    near tie are left out of the logits' comparison (a decoder feeds a flipped token back)."""
    tol = logit_atol(config, want_seen.scale()) if tol is None else tol
    for n in want:
        logits, mask = want_seen.at(int(n), want_copy)
        clear = near_ties(logits, mask, tol) == 0
        other = got_seen.at(int(n), copy)[0]
        torch.testing.assert_close(other[clear], logits[clear], atol=tol, rtol=0)
    assert_same_accuracies(got, want, want_seen, tol, config.eval_sub_batch_size, want_copy)


# ----------------------------------------------------------------------------- grouping


class StopAt(StopFlag):
    """A stop request that arrives once the trainer reaches a given step (an interruption at a
    chosen step, for the resume tests)."""

    def __init__(self, trainer: Trainer, step: int) -> None:
        super().__init__()
        self.trainer, self.at = trainer, step

    def __bool__(self) -> bool:
        return self.trainer.step >= self.at
