"""The tasks' chance levels (randpos.results.report.chance) against closed forms and hand counts."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from randpos.core.seeding import make_generator
from randpos.positions import PositionPlan
from randpos.results.report.chance import (
    ChanceLevels,
    chance_at_length,
    majority_class,
    order_free_hits,
)
from randpos.tasks import get_task
from randpos.workloads.config import TrainConfig
from randpos.workloads.evaluation import evaluate_length_batched, evaluation_batch

S = 512  # sequences per length, the paper's evaluation batch


def majority_moments(n: int) -> tuple[float, float]:
    """Mean and variance of max(K, n - K) / n for K ~ Binomial(n, 1/2), exactly."""
    pmf = [math.comb(n, k) / 2**n for k in range(n + 1)]
    values = [max(k, n - k) / n for k in range(n + 1)]
    mean = sum(p * v for p, v in zip(pmf, values, strict=True))
    second = sum(p * v * v for p, v in zip(pmf, values, strict=True))
    return mean, second - mean * mean


def test_the_reverse_string_closed_form_averages_to_the_quoted_floor():
    # The per-token 50% is no floor: averaged over lengths 21..60 the order-free answer
    # scores 56.48%.
    mean = np.mean([majority_moments(n)[0] for n in range(21, 61)])
    assert round(mean, 4) == 0.5648


@pytest.mark.parametrize("n", [1, 2, 21, 40, 60, 200])
def test_reverse_string_chance_matches_the_binomial_closed_form(n):
    # Every sequence has n scored positions, so the sub-batch pooling is the plain mean of the
    # S per-sequence values max(K, n - K) / n: i.i.d. with the closed-form mean and variance,
    # hence a standard error sqrt(var / S). Five standard errors (a normal tail of 6e-7; the
    # draw is seeded, so the test is deterministic) is far below the gap to the 50% that a
    # per-token reading would give (at n = 200 the gap is 2.8%, 5 se are 0.5%).
    mean, var = majority_moments(n)
    measured = chance_at_length("reverse_string", n, 1, S, 64)
    assert abs(measured - mean) <= 5 * math.sqrt(var / S) + 1e-12


def test_reverse_string_chance_averaged_over_the_unseen_lengths():
    # Lengths draw from their own streams, so the 40 per-length means are independent: the
    # standard error of their average is sqrt(sum var_n / S) / 40.
    lengths = range(21, 61)
    moments = [majority_moments(n) for n in lengths]
    expected = np.mean([m for m, _ in moments])
    se = math.sqrt(sum(v for _, v in moments) / S) / len(lengths)
    measured = np.mean([chance_at_length("reverse_string", n, 1, S, 64) for n in lengths])
    assert abs(measured - expected) <= 5 * se
    assert abs(measured - 0.5648) < 0.005  # the floor the report prints, 56.5%


def test_parity_check_chance_is_one_half():
    # parity_check's label is a fair bit. The constant class is chosen on an independent draw, so
    # on each of the S scored sequences of a length it is right with probability 1/2: the
    # per-length level is Binomial(S, 1/2) / S, mean 0.5, variance 0.25 / S, and over L lengths
    # the mean has standard error sqrt(0.25 / (S L)) (0.0022 here). Choosing the class on the
    # scored sequences themselves would add E|K - S/2| / S ~ 0.4 / sqrt(S) = 0.0176.
    lengths = range(41, 141)
    measured = np.mean([chance_at_length("parity_check", n, 1, S, 64) for n in lengths])
    assert abs(measured - 0.5) <= 5 * math.sqrt(0.25 / (S * len(lengths)))


@pytest.mark.parametrize("task", ["stack_manipulation", "binary_addition", "cycle_navigation"])
def test_chance_is_the_hand_count_on_the_evaluation_sequences(task):
    """Masked sequence tasks and a 5-class task: count the best order-free answer by hand."""
    n, sequences, sub = 13, 48, 16
    batch = evaluation_batch(get_task(task), n, 1, sequences)
    targets, mask = batch.targets.tolist(), batch.mask.tolist()
    if get_task(task).is_classification:  # one class, the majority of an independent draw
        other = get_task(task).sample(sequences, n, make_generator(1, f"chance-choice/{n}"))
        counts = Counter(t[0] for t in other.targets.tolist())
        best = min(c for c in counts if counts[c] == max(counts.values()))  # a tie: the lower
        hits = [int(t[0] == best) for t in targets]
    else:
        hits = [
            max(Counter(x for x, m in zip(t, ms, strict=True) if m).values(), default=0)
            for t, ms in zip(targets, mask, strict=True)
        ]
    counted = [sum(ms) for ms in mask]
    subs = [
        sum(hits[i : i + sub]) / max(1, sum(counted[i : i + sub])) for i in range(0, sequences, sub)
    ]
    # the same integer counts, one float division per sub-batch and a mean of 3: within 1e-15
    assert chance_at_length(task, n, 1, sequences, sub) == pytest.approx(np.mean(subs), abs=1e-15)


@pytest.mark.parametrize("task", ["reverse_string", "duplicate_string"])
def test_a_model_answering_the_majority_bit_scores_the_chance_level(task):
    """Through the real evaluation: answering every output with the majority bit of the
    sequence's input (the targets are a rearrangement of the inputs) is the best order-free
    answer, so it scores the chance level, from the same integer counts."""
    config = TrainConfig(
        task=task, max_train_length=5, eval_max_length=30, eval_batch_size=64,
        eval_sub_batch_size=16,
    )  # fmt: skip
    n = 23

    def forward(tokens: torch.Tensor, plan: PositionPlan) -> torch.Tensor:
        bits = tokens[:, :n]
        majority = (2 * bits.sum(1) >= n).long()  # ties: either class gets n / 2 right
        k = get_task(task).output_length(n)
        logits = torch.nn.functional.one_hot(majority, 2).float()[:, None, :].expand(-1, k, 2)
        return logits.unsqueeze(0)  # (copies = 1, E', k, C)

    (accuracy,) = evaluate_length_batched(
        forward, 1, config, get_task(task), n, mode="contiguous", device="cpu"
    )
    assert accuracy == pytest.approx(chance_at_length(task, n, 1, 64, 16), abs=1e-15)


def test_order_free_hits_per_sequence_and_per_length():
    targets = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0], [1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    hits, counted = order_free_hits(targets, mask)
    assert hits.tolist() == [2, 2, 1] and counted.tolist() == [3, 4, 2]
    labels = torch.tensor([[3], [1], [3], [0]])
    everything = torch.ones_like(labels, dtype=torch.bool)
    assert majority_class(labels, everything) == 3
    assert majority_class(torch.tensor([[2], [0], [2], [0]]), everything) == 0  # tie: lower
    hits, counted = order_free_hits(labels, everything, constant=3)
    assert hits.tolist() == [1, 0, 1, 0] and counted.tolist() == [1, 1, 1, 1]
    # a sequence task at a length with one output: the answer is known
    hits, _ = order_free_hits(labels, everything)
    assert hits.tolist() == [1, 1, 1, 1]


def test_a_runs_chance_level_averages_over_its_unseen_lengths():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "workload": ["encoder", "decoder", "vit", "encoder"],
            "task": ["reverse_string", "reverse_string", "reverse_string", "not_a_task"],
            "max_train_length": [5, 7, 5, 5],
            "eval_max_length": [9, 9, 9, 9],
            "eval_seed": [1, 1, 1, 1],
            "eval_batch_size": [32, 32, 32, 32],
            "eval_sub_batch_size": [16, 16, 16, 16],
        }
    )
    levels = ChanceLevels()
    got = levels.of_runs(runs)
    per = {n: chance_at_length("reverse_string", n, 1, 32, 16) for n in range(6, 10)}
    assert got.iloc[0] == pytest.approx(np.mean([per[n] for n in (6, 7, 8, 9)]))
    assert got.iloc[1] == pytest.approx(np.mean([per[8], per[9]]))
    assert np.isnan(got.iloc[2]) and np.isnan(got.iloc[3])  # no task workload, unknown task
    # the lengths the run's score averages over are those of its per-length results above N
    stored = pd.DataFrame({"run_id": ["a"] * 3, "length": [4, 6, 9], "accuracy": [1.0] * 3})
    assert levels.of_runs(runs.iloc[:1], stored).iloc[0] == pytest.approx((per[6] + per[9]) / 2)
    table = levels.table()
    assert list(table.columns) == [
        "task",
        "length",
        "eval_seed",
        "sequences",
        "sub_batch",
        "chance",
    ]
    assert set(table["length"]) == {6, 7, 8, 9}
    fewer = ChanceLevels(sequences=8).of_runs(runs.iloc[:1]).iloc[0]  # 8 sequences, one pool
    expected = np.mean([chance_at_length("reverse_string", n, 1, 8, 8) for n in range(6, 10)])
    assert fewer == pytest.approx(expected)
