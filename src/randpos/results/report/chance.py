"""Chance levels of the algorithmic tasks, measured from their own outputs.

A per-token accuracy of 50% is no floor for the string tasks: an answer that only knows how
many 0s and 1s a sequence's output holds (not where they go) already scores about 56.5% on
reverse_string at lengths 21..60. The chance level of a length is therefore the accuracy of the
best answer that ignores the order of the output positions:

* a task with more than one scored output position (a sequence task): each sequence answered
  with the most frequent class among its own scored (masked-in) targets, so it gets the count
  of that class right (at a length with a single output that is the answer itself);
* a classification task (one output, ``Task.is_classification``): every sequence answered with
  one constant class, the most frequent class of that length. It is chosen on an independent
  draw of as many sequences (stream ``chance-choice/<length>``), not on the sequences it is
  scored on: choosing it there would add about 0.4 / sqrt(S) to a balanced task's 0.5.

The hits are pooled per token within each sub-batch and averaged over the sub-batches, as the
accuracy metric pools a model's (randpos.workloads.evaluation). The sequences are the runs' own
evaluation sequences (:func:`randpos.workloads.evaluation.evaluation_batch`: eval_seed, length,
eval_batch_size), unless a smaller number is asked for; a run's chance level is the mean over
the lengths its unseen-length score averages over.

Closed forms, for checking: on reverse_string (n uniform bits, targets the bits reversed) the
expectation at length n is E[max(K, n - K)] / n with K ~ Binomial(n, 1/2) (0.5648 averaged over
21..60); on parity_check (a fair bit per sequence) it is 0.5: whichever class the independent
draw picks, it is right on each scored sequence with probability 1/2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from randpos.core.seeding import make_generator
from randpos.results.report.architectures import (
    TASK_WORKLOADS,  # the others (images) have no chance
)
from randpos.tasks import TASK_NAMES, get_task
from randpos.workloads.config import TrainConfig
from randpos.workloads.evaluation import evaluation_batch


def majority_class(targets: torch.Tensor, mask: torch.Tensor) -> int:
    """The most frequent scored class of a batch's (B, k) targets (a tie: the lower class)."""
    classes = targets.clamp(min=0)[mask.bool()]
    return int(torch.bincount(classes).argmax()) if classes.numel() else 0


def order_free_hits(
    targets: torch.Tensor, mask: torch.Tensor, constant: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, the scored positions the best order-free answer gets right, and the scored
    positions: LongTensor[B] each. ``targets``/``mask`` are a batch's (B, k). ``constant``:
    every position answered with this class (a classification task's answer, chosen
    elsewhere: :func:`majority_class` of an independent draw); None: each sequence answered
    with its own most frequent scored class (a sequence task; at a length with one output,
    knowing that class is knowing the answer)."""
    mask = mask.bool()
    counted = mask.sum(dim=1)
    classes = targets.clamp(min=0)  # unscored positions may hold any id; they weigh 0 below
    if constant is not None:
        return ((classes == constant) & mask).sum(dim=1), counted
    num_classes = int(classes.max()) + 1 if classes.numel() else 1
    counts = torch.zeros(targets.shape[0], num_classes, dtype=torch.long, device=targets.device)
    counts.scatter_add_(1, classes, mask.long())
    return counts.max(dim=1).values, counted


def pooled_accuracy(hits: torch.Tensor, counted: torch.Tensor, sub_batch: int) -> float:
    """Hits pooled per token within sub-batches of ``sub_batch`` sequences, then the mean over
    sub-batches (the metric's aggregation, randpos.workloads.evaluation.evaluate_length_batched)."""
    if hits.numel() % sub_batch:
        sub_batch = hits.numel()
    pooled = hits.view(-1, sub_batch).sum(1).double() / counted.view(-1, sub_batch).sum(1).clamp(
        min=1
    )
    return float(pooled.mean())


@functools.cache
def chance_at_length(
    task: str, length: int, eval_seed: int = 1, sequences: int = 512, sub_batch: int = 64
) -> float:
    """The chance level of ``task`` at ``length`` on ``sequences`` evaluation sequences of
    ``eval_seed`` (cached: a pure function of its arguments)."""

    spec = get_task(task)
    batch = evaluation_batch(spec, length, eval_seed, sequences)
    constant = None
    if spec.is_classification:  # the class is chosen on other sequences of the same length
        stream = make_generator(eval_seed, f"chance-choice/{length}")
        choice = spec.sample(sequences, length, stream)
        constant = majority_class(choice.targets, choice.mask)
    hits, counted = order_free_hits(batch.targets, batch.mask, constant)
    return pooled_accuracy(hits, counted, sub_batch)


def _setting(runs: pd.DataFrame, column: str) -> pd.Series:
    default = getattr(TrainConfig, column)
    if column not in runs:
        return pd.Series(default, index=runs.index)
    return runs[column].fillna(default).astype(int)


@dataclass
class ChanceLevels:
    """The chance levels one report uses, and every per-length value measured for it.

    ``sequences``: sequences per length; None measures on each run's own evaluation sequences
    (its eval_batch_size), a number on that many from the same evaluation stream (pooled in
    the run's sub-batches when they divide it, else all at once).
    """

    sequences: int | None = None
    values: dict[tuple[str, int, int, int, int], float] = field(default_factory=dict)

    def at(self, task: str, length: int, eval_seed: int, batch: int, sub_batch: int) -> float:
        """The chance level of ``task`` at ``length`` on the evaluation data of (``eval_seed``,
        ``batch`` sequences, ``sub_batch``), computed once and remembered; an accuracy in [0, 1]."""
        sequences = self.sequences or batch
        sub = sub_batch if sequences % sub_batch == 0 else sequences
        key = (task, int(length), int(eval_seed), int(sequences), int(sub))
        if key not in self.values:
            self.values[key] = chance_at_length(*key)
        return self.values[key]

    def of_runs(self, runs: pd.DataFrame, per_length: pd.DataFrame | None = None) -> pd.Series:
        """Each run's chance level (index of ``runs``): the mean over the lengths its
        unseen-length score averages over (those of ``per_length`` above N when given, else
        N+1..M); NaN for runs of workloads without a task, or of an unknown task."""

        out = pd.Series(np.nan, index=runs.index, dtype=float)
        if runs.empty or "task" not in runs:
            return out
        workload = runs["workload"].fillna("encoder") if "workload" in runs else None
        seeds = _setting(runs, "eval_seed")
        batches = _setting(runs, "eval_batch_size")
        subs = _setting(runs, "eval_sub_batch_size")
        lengths = _unseen_lengths(runs, per_length)
        for index, row in runs.iterrows():
            if workload is not None and workload[index] not in TASK_WORKLOADS:
                continue
            if row["task"] not in TASK_NAMES or not lengths.get(index):
                continue
            levels = [
                self.at(row["task"], n, seeds[index], batches[index], subs[index])
                for n in lengths[index]
            ]
            out[index] = float(np.mean(levels))
        return out

    def curve(self, runs: pd.DataFrame, task: str, lengths) -> pd.Series:
        """Chance per length for ``task``, with the evaluation settings most of its runs use."""
        mine = runs[runs["task"] == task]
        settings = pd.DataFrame(
            {c: _setting(mine, c) for c in ("eval_seed", "eval_batch_size", "eval_sub_batch_size")}
        )
        seed, batch, sub = settings.value_counts().index[0]
        return pd.Series({n: self.at(task, n, seed, batch, sub) for n in lengths}, dtype=float)

    def table(self) -> pd.DataFrame:
        """Every per-length chance level measured, one row each (the report's chance.csv)."""
        columns = ["task", "length", "eval_seed", "sequences", "sub_batch", "chance"]
        rows = [(*key, value) for key, value in sorted(self.values.items())]
        return pd.DataFrame(rows, columns=columns)


def _unseen_lengths(runs: pd.DataFrame, per_length: pd.DataFrame | None) -> dict:
    """Index of ``runs`` -> the sorted unseen lengths its score averages over."""
    n = runs["max_train_length"] if "max_train_length" in runs else None
    m = runs["eval_max_length"] if "eval_max_length" in runs else None
    stored: dict[str, list[int]] = {}
    if per_length is not None and not per_length.empty:
        mine = per_length[per_length["run_id"].isin(runs["run_id"])]
        stored = {rid: sorted(g["length"].astype(int)) for rid, g in mine.groupby("run_id")}
    out = {}
    for index in runs.index:
        if n is None or pd.isna(n[index]):
            continue
        first = int(n[index]) + 1
        found = [x for x in stored.get(runs.at[index, "run_id"], []) if x >= first]
        if found:
            out[index] = found
        elif m is not None and pd.notna(m[index]):
            out[index] = list(range(first, int(m[index]) + 1))
    return out


__all__ = [
    "TASK_WORKLOADS",
    "ChanceLevels",
    "chance_at_length",
    "majority_class",
    "order_free_hits",
    "pooled_accuracy",
]
