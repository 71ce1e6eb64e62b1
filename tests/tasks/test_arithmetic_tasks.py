"""The arithmetic tasks (randpos.tasks.arithmetic) against Python integers: every sampled
example reads back (an independent parser of the format) as a, b and a + b or a * b; operands
have exactly the digits asked for; the formats (zero padding, index hints) place what they say."""

from __future__ import annotations

import pytest
import torch

from randpos.core.fields import ConfigError
from randpos.tasks.arithmetic import (
    ARITHMETIC_TASKS,
    EOS,
    EQUALS,
    HINT_BASE,
    PAD,
    ArithmeticFormat,
    ArithmeticTask,
    add_digits,
    multiply_digits,
)

FORMATS = [
    ArithmeticFormat(),
    ArithmeticFormat(zero_pad=True),
    ArithmeticFormat(index_hints=True, hint_vocab=7),
    ArithmeticFormat(index_hints=True, zero_pad=True, hint_vocab=102),
]


def parse(tokens: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Digits (least significant first) of a, b, c and the hints of the answer, read token by
    token: an oracle independent of the task's vectorized encoder."""
    parts: list[list[int]] = [[]]
    hints: list[list[int]] = [[]]
    for t in tokens:
        if t == EOS:
            break
        if t < 10:
            parts[-1].append(t)
        elif t >= HINT_BASE:
            hints[-1].append(t)
        else:
            parts.append([])
            hints.append([])
    a, b, c = parts
    return a, b, c, hints


def value(digits: list[int]) -> int:
    return int("".join(str(d) for d in reversed(digits)))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("name", ARITHMETIC_TASKS)
def test_examples_are_correct_against_python_integers(name, fmt):
    task = ArithmeticTask(name, fmt)
    g = torch.Generator().manual_seed(3)
    batch = task.sample(64, 12, g)
    assert batch.tokens.shape == (64, task.longest_sequence(12))
    for row, start, length in zip(
        batch.tokens.tolist(), batch.answer_start.tolist(), batch.length.tolist(), strict=True
    ):
        a, b, c, hints = parse(row)
        expected = value(a) + value(b) if name == "addition" else value(a) * value(b)
        assert value(c) == expected
        assert row[start - 1] == EQUALS and row[length - 1] == EOS
        assert all(t == PAD for t in row[length:])
        if fmt.zero_pad:
            D = max(len(a), len(b))
            assert len(a) == len(b) == D
            assert len(c) == (D + 1 if name == "addition" else 2 * D)
        else:  # no leading zeros in the answer (zero itself is one digit)
            assert len(c) == len(str(expected))
        if fmt.index_hints:  # one hint before every digit, the same one for equal significance
            for part, digits in zip(hints, (a, b, c), strict=True):
                assert len(part) == len(digits)
            width = max(len(h) for h in hints)
            for i in range(width):
                assert len({h[i] for h in hints if len(h) > i}) == 1
            first = hints[0][0] - HINT_BASE
            assert [h - HINT_BASE for h in hints[2]] == [
                (first + i) % fmt.hint_vocab for i in range(len(c))
            ]


@pytest.mark.parametrize("name", ARITHMETIC_TASKS)
def test_cells_have_exactly_the_digits_asked_for(name):
    task = ArithmeticTask(name)
    g = torch.Generator().manual_seed(0)
    for n, m in [(1, 1), (1, 7), (5, 2), (23, 23), (40, 31)]:
        batch = task.sample_cell(32, n, m, g)
        lengths = set()
        for row in batch.tokens.tolist():
            a, b, c, _ = parse(row)
            lengths.add((len(a), len(b)))
            assert len(str(value(a))) == n and len(str(value(b))) == m  # no leading zero
            assert value(c) == (value(a) + value(b) if name == "addition" else value(a) * value(b))
        assert lengths == {(n, m)}
        assert batch.tokens.shape[1] == task.sequence_length(n, m)


def test_training_lengths_cover_1_to_n_uniformly():
    task = ArithmeticTask("addition")
    batch = task.sample(4000, 5, torch.Generator().manual_seed(1))
    counts = torch.bincount(batch.n, minlength=6)[1:].double()
    # 4000 draws over 5 values: each count is 800 +- 4 standard deviations (sqrt(4000 * .2 * .8))
    assert (counts - 800).abs().max() < 4 * (4000 * 0.2 * 0.8) ** 0.5
    assert set(batch.m.tolist()) == {1, 2, 3, 4, 5}


def test_one_digit_operands_include_zero_and_longer_ones_have_no_leading_zero():
    task = ArithmeticTask("addition")
    batch = task.sample_cell(2000, 1, 3, torch.Generator().manual_seed(2))
    firsts = {parse(row)[0][0] for row in batch.tokens.tolist()}
    assert firsts == set(range(10))
    leads = {parse(row)[1][-1] for row in batch.tokens.tolist()}
    assert leads == set(range(1, 10))


def test_digit_arithmetic_on_long_operands_matches_python():
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, 10, (50, 60), generator=g)
    b = torch.randint(0, 10, (50, 60), generator=g)
    for row_a, row_b, s, p in zip(a, b, add_digits(a, b), multiply_digits(a, b), strict=True):
        x, y = value(row_a.tolist()), value(row_b.tolist())
        assert value(s.tolist()) == x + y
        assert value(p.tolist()) == x * y


def test_loss_mask_covers_the_answer_and_eos_predictions():
    task = ArithmeticTask("addition")
    batch = task.sample_cell(4, 3, 2, torch.Generator().manual_seed(0))
    mask = batch.loss_mask()
    for row, m, start, length in zip(
        batch.tokens, mask, batch.answer_start, batch.length, strict=True
    ):
        predicted = row[1:][m]  # the tokens the masked predictions are scored against
        assert predicted.tolist() == row[start:length].tolist()
        assert predicted[-1] == EOS


def test_bad_names_and_formats_are_one_line_errors():
    with pytest.raises(ConfigError, match="arithmetic tasks are addition, multiplication"):
        ArithmeticTask("subtraction")
    with pytest.raises(ConfigError, match="hint_vocab must be an integer >= 1"):
        ArithmeticFormat(index_hints=True, hint_vocab=0)
