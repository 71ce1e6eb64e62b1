"""Per-length evaluation and the metric definitions (docs/reference-system.md §2.2-2.3,
docs/design.md §3).

* Per-token accuracy pooled over a sub-batch, counting only masked-in positions; a length's
  accuracy is the unweighted mean over its sub-batches (the reference's aggregation).
* ``id_accuracy`` = mean over lengths 1..N, ``ood_accuracy`` = mean over N+1..M.

The evaluation data of length n depends only on (eval_seed, n), so every model of a comparison
sees the same sequences, and evaluating a subset of lengths gives the same numbers as the full
range. The model runs in eval mode (no dropout, docs/reference-system.md §8) under
``torch.inference_mode``; the forward passes are chunked to bound attention memory at long lengths,
which never changes the numbers because accuracy is aggregated per sequence first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from randpos.core.seeding import make_generator
from randpos.positions import PositionPlan, plan_positions
from randpos.tasks import Batch, Task, get_task
from randpos.workloads.config import TrainConfig

# Upper bound on attention-score elements (chunk * heads * T * T) held at once in evaluation.
ATTENTION_ELEMENT_BUDGET = 1 << 26


def model_inputs(batch: Batch, task: Task) -> torch.Tensor:
    """Append k blank tokens (id = input vocabulary size) to the inputs: (B, n' + k)."""
    k = batch.targets.shape[1]
    blanks = torch.full(
        (batch.inputs.shape[0], k),
        task.input_vocab_size,
        dtype=torch.long,
        device=batch.inputs.device,
    )
    return torch.cat([batch.inputs, blanks], dim=1)


def evaluation_batch(
    task: Task, length: int, eval_seed: int, sequences: int, device: torch.device | str = "cpu"
) -> Batch:
    """The evaluation sequences of one length: a function of (eval_seed, length) alone, drawn
    from their own stream, so every model of a comparison is scored on the same batch (and the
    report measures the task's chance level on it, randpos.results.report.chance)."""
    generator = make_generator(eval_seed, f"eval-data/{length}", device)
    return task.sample(sequences, length, generator)


def masked_correct(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence counts of correct masked positions and of masked positions: (..., B), (B,).

    ``logits`` is (B, k, C), or (M, B, k, C) for M models scored on the same batch."""
    correct = (logits.argmax(dim=-1) == batch.targets) & batch.mask  # (..., B, k)
    return correct.sum(dim=-1), batch.mask.sum(dim=-1)


def batch_accuracy(logits: torch.Tensor, batch: Batch) -> float:
    """The masked token accuracy of ``logits`` (B, k, C) on ``batch``: correct counted tokens over
    counted tokens, in [0, 1]."""
    correct, counted = masked_correct(logits, batch)
    return (correct.sum() / counted.sum().clamp(min=1)).item()


@dataclass
class EvalResult:
    """The per-size metric of one model, with the in-distribution / unseen split.

    ``per_length`` maps each evaluated size to the workload's metric. ``trained`` names the
    sizes seen in training when they are not 1..N (an image model trained at one resolution:
    every other resolution is unseen, smaller ones included). ``metrics`` holds the further
    per-size metrics a workload may report (``{size: {name: value}}``; empty for the
    algorithmic tasks).
    """

    per_length: dict[int, float]
    max_train_length: int
    trained: tuple[int, ...] | None = None
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    def _trained(self, n: int) -> bool:
        return n in self.trained if self.trained is not None else n <= self.max_train_length

    @property
    def id_accuracy(self) -> float:
        """The mean metric over the trained sizes (1..N, or ``trained``)."""
        if self.trained is None:
            return mean_over(self.per_length, 1, self.max_train_length)
        return _mean([v for n, v in self.per_length.items() if self._trained(n)])

    @property
    def ood_accuracy(self) -> float:
        """The mean metric over the unseen sizes (N+1..M, or every size not in ``trained``)."""
        if self.trained is None:
            return mean_over(self.per_length, self.max_train_length + 1, max(self.per_length))
        return _mean([v for n, v in self.per_length.items() if not self._trained(n)])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean_over(per_length: dict[int, float], first: int, last: int) -> float:
    """The mean of ``per_length`` over the lengths ``first..last`` it holds (NaN when it holds
    none)."""
    return _mean([per_length[n] for n in range(first, last + 1) if n in per_length])


def evaluate_length(
    model: torch.nn.Module, config: TrainConfig, task: Task, length: int, *, mode: str, device
) -> float:
    """Accuracy at one length: eval_batch_size sequences, mean over sub-batches."""

    def forward(tokens: torch.Tensor, plan: PositionPlan) -> torch.Tensor:
        return model(tokens, plan.positions, **plan.model_kwargs()).unsqueeze(0)  # (1, E', T, C)

    return evaluate_length_batched(forward, 1, config, task, length, mode=mode, device=device)[0]


def evaluate_length_batched(
    forward: Callable[[torch.Tensor, PositionPlan], torch.Tensor],
    copies: int,
    config: TrainConfig,
    task: Task,
    length: int,
    *,
    mode: str,
    device,
    replan: Callable[[PositionPlan, int, torch.Generator], PositionPlan] | None = None,
) -> list[float]:
    """Accuracies at one length of ``copies`` models scored on the same sequences and positions.

    ``forward(tokens (E', T), plan)`` returns logits (copies, E', T', C) whose last k entries
    are the output positions (an ensemble, :mod:`randpos.loop.ensemble`). Positions are drawn per
    chunk of the single-model size whatever ``copies`` is, so every model gets exactly the
    numbers a lone evaluation gives; a chunk is split further for the forward to keep
    ``copies`` models within the memory budget. ``replan(plan, k, generator)``, if given,
    rewrites each chunk's plan right after it is drawn, from the same position stream (the
    decoder places its generated tokens this way).
    """
    batch = evaluation_batch(task, length, config.eval_seed, config.eval_batch_size, device)
    pos_gen = make_generator(config.eval_seed, f"eval-positions/{length}", device)
    tokens = model_inputs(batch, task)  # (E, T)
    E, T = tokens.shape
    k = batch.targets.shape[1]
    scores = config.num_heads * T * T  # attention-score elements per sequence and model
    chunk = max(1, min(E, ATTENTION_ELEMENT_BUDGET // scores))
    piece = max(1, min(chunk, ATTENTION_ELEMENT_BUDGET // (copies * scores)))
    correct = torch.empty(copies, E, dtype=torch.long, device=device)
    counted = torch.empty(E, dtype=torch.long, device=device)
    for start in range(0, E, chunk):
        stop = min(E, start + chunk)
        plan = plan_positions(
            config.positions, config.num_layers, stop - start, T, pos_gen, mode=mode, device=device
        )
        if replan is not None:
            plan = replan(plan, k, pos_gen)
        for lo in range(start, stop, piece):
            hi = min(stop, lo + piece)
            logits = forward(tokens[lo:hi], slice_plan(plan, lo - start, hi - start))
            part = Batch(batch.inputs[lo:hi], batch.targets[lo:hi], batch.mask[lo:hi])
            correct[:, lo:hi], counted[lo:hi] = masked_correct(logits[:, :, -k:], part)
    sub = config.eval_sub_batch_size
    # (copies, S, sub): pool tokens within each sub-batch, then average the sub-batch accuracies.
    hits = correct.view(copies, -1, sub).sum(-1).double()
    sub_acc = hits / counted.view(-1, sub).sum(1).clamp(min=1)  # (copies, S)
    return sub_acc.mean(-1).tolist()


def slice_plan(plan: PositionPlan, lo: int, hi: int) -> PositionPlan:
    """Rows lo..hi-1 of a plan's batch axis (shared rows, batch size 1, stay as they are)."""
    if lo == 0 and hi >= plan.positions.shape[0]:
        return plan

    def rows(t: torch.Tensor | None, axis: int) -> torch.Tensor | None:
        return t if t is None or t.shape[axis] == 1 else t.narrow(axis, lo, hi - lo)

    return PositionPlan(
        rows(plan.positions, 0),
        plan.distances,
        rows(plan.layer_positions, 1),
        rows(plan.embed_positions, 0),
    )


def evaluate(
    model: torch.nn.Module,
    config: TrainConfig,
    *,
    lengths: Iterable[int] | None = None,
    mode: str | None = None,
    device: torch.device | str = "cpu",
    on_length: Callable[[int, float], None] | None = None,
) -> EvalResult:
    """Evaluate every length 1..M (or the given lengths); returns per-length accuracies."""
    task = get_task(config.task)
    mode = mode or config.positions.eval
    lengths = list(lengths) if lengths is not None else range(1, config.eval_max_length + 1)
    was_training = model.training
    model.eval()
    per_length: dict[int, float] = {}
    try:
        with torch.inference_mode():
            for n in lengths:
                per_length[n] = evaluate_length(model, config, task, n, mode=mode, device=device)
                if on_length is not None:
                    on_length(n, per_length[n])
    finally:
        model.train(was_training)
    return EvalResult(per_length, config.max_train_length)
