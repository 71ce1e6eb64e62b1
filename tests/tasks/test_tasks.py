"""Tests of randpos.tasks against independent brute-force oracles (docs/reference-system.md §1).

The oracles below re-derive every target from the token input with plain Python (ints,
recursion, lists); they share no code with the library. Each oracle also asserts the structure
of the input (token ranges, grammar, separators), so a sampler that drifts from the reference's
input distribution fails here even when its targets are self-consistent.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from randpos.tasks import TASK_LEVELS, TASK_NAMES, Batch, Task, get_task

REFERENCE_TABLE = {
    # name: (level, input vocab, output classes, output length as a function of n')
    "even_pairs": ("regular", 2, 2, lambda n: 1),
    "modular_arithmetic": ("regular", 9, 5, lambda n: 1),
    "parity_check": ("regular", 2, 2, lambda n: 1),
    "cycle_navigation": ("regular", 3, 5, lambda n: 1),
    "stack_manipulation": ("dcf", 5, 3, lambda n: n + 1),
    "reverse_string": ("dcf", 2, 2, lambda n: n),
    "modular_arithmetic_brackets": ("dcf", 11, 5, lambda n: 1),
    "solve_equation": ("dcf", 11, 5, lambda n: 1),
    "duplicate_string": ("cs", 2, 2, lambda n: 2 * n),
    "missing_duplicate_string": ("cs", 4, 2, lambda n: 1),
    "odds_first": ("cs", 2, 2, lambda n: n),
    "binary_addition": ("cs", 3, 3, lambda n: n + 1),
    "binary_multiplication": ("cs", 3, 3, lambda n: n),
    "compute_sqrt": ("cs", 2, 2, lambda n: (n + 1) // 2),
    "bucket_sort": ("cs", 5, 5, lambda n: n),
}

# Every length 1..100 (covers all the small-length quirks), plus a few long ones.
LENGTHS = list(range(1, 101)) + [127, 128, 257, 500]


def batch_size_for(n: int) -> int:
    return 24 if n <= 100 else 4


# ---------------------------------------------------------------------------------------------
# Oracles: (inputs as a list of ints, requested length n) -> (targets, mask)


def all_true(targets: list[int]) -> tuple[list[int], list[bool]]:
    return targets, [True] * len(targets)


def assert_tokens(x: list[int], allowed: range | set[int]) -> None:
    assert all(t in allowed for t in x), f"token outside {allowed}: {x}"


def oracle_even_pairs(x, n):
    assert len(x) == n
    assert_tokens(x, range(2))
    return all_true([sum(a != b for a, b in zip(x, x[1:], strict=False)) % 2])


def oracle_modular_arithmetic(x, n):
    assert len(x) == (n if n % 2 else n - 1)  # even lengths are reduced by one
    assert_tokens(x[0::2], range(5))
    assert_tokens(x[1::2], {5, 6, 7})
    text = "".join("0123456789+-*"[t] if t < 5 else "+-*"[t - 5] for t in x)
    return all_true([eval(text) % 5])  # Python's own precedence and exact integers


def oracle_parity_check(x, n):
    assert len(x) == n
    assert_tokens(x, range(2))
    return all_true([sum(x) % 2])


def oracle_cycle_navigation(x, n):
    assert len(x) == n
    assert_tokens(x, range(3))
    position = 0
    for t in x:
        position = (position + {0: -1, 1: 0, 2: 1}[t]) % 5
    return all_true([position])


def stack_split(x):
    """Length of the leading run of stack symbols (the initial stack)."""
    s = 0
    while s < len(x) and x[s] in (0, 1):
        s += 1
    return s


def oracle_stack_manipulation(x, n):
    assert len(x) == n
    s = stack_split(x)
    assert s >= 1 and (s == 1 if n == 1 else s <= n - 1)
    assert_tokens(x[s:], {2, 3, 4})
    stack = list(x[:s])
    for action in x[s:]:
        if action == 2:
            if stack:
                stack.pop()
        else:
            stack.append(action - 3)
    out = stack[::-1] + [2]
    mask = [True] * len(out)
    out += [0] * (n + 1 - len(out))
    return out, mask + [False] * (n + 1 - len(mask))


def oracle_reverse_string(x, n):
    assert len(x) == n
    assert_tokens(x, range(2))
    return all_true(x[::-1])


BRACKET_CHARS = dict(enumerate("01234+-*()x="))
EQUATION_CHARS = dict(enumerate("01234+-()x="))


def parse(text: str) -> tuple[int, int]:
    """(value, left length of the top split or 0) of one expression of the reference grammar:
    d | -d | (d) | (-d) | (E op E), asserting that the whole text is exactly one expression."""

    def expr(i: int) -> tuple[int, int, bool, int]:  # value, end, is_atom, left length
        c = text[i]
        if c.isdigit():
            return int(c), i + 1, True, 0
        if c == "-":
            assert text[i + 1].isdigit(), text
            return -int(text[i + 1]), i + 2, True, 0
        assert c == "(", text
        left, j, left_atom, _ = expr(i + 1)
        if text[j] == ")":  # (d) or (-d) only
            assert left_atom, text
            return left, j + 1, False, 0
        op = text[j]
        right, k, _, _ = expr(j + 1)
        assert text[k] == ")", text
        value = {"+": left + right, "-": left - right, "*": left * right}[op]
        return value % 5, k + 1, False, j - i - 1

    value, end, _, split = expr(0)
    assert end == len(text), text
    return value % 5, split


def oracle_modular_arithmetic_brackets(x, n):
    assert len(x) == n
    assert_tokens(x, range(10))  # x (10) and = (11) never occur
    return all_true([parse("".join(BRACKET_CHARS[t] for t in x))[0]])


def oracle_solve_equation(x, n):
    assert len(x) == n
    if n < 3:
        assert x == [0] * n
        return all_true([0])
    text = "".join(EQUATION_CHARS[t] for t in x)
    lhs, rhs = text[:-2], text[-1]
    assert text[-2] == "=" and rhs.isdigit() and lhs.count("x") == 1 and "=" not in lhs, text
    assert "*" not in text
    solutions = [d for d in range(5) if parse(lhs.replace("x", str(d)))[0] == int(rhs)]
    assert len(solutions) == 1, text
    return all_true(solutions)


def oracle_duplicate_string(x, n):
    assert len(x) == n
    assert_tokens(x, range(2))
    return all_true(x + x)


def oracle_missing_duplicate_string(x, n):
    assert len(x) == n
    if n == 1:
        assert x == [1]
        return all_true([1])
    half = n // 2
    body = x[: 2 * half]
    assert body.count(2) == 1 and x[2 * half :] == ([3] if n % 2 else [])
    assert_tokens(body, {0, 1, 2})
    i = body.index(2)
    first, second = body[:half], body[half:]
    j = i % half
    assert all(first[k] == second[k] for k in range(half) if k != j)
    return all_true([(second if i < half else first)[j]])


def oracle_odds_first(x, n):
    assert len(x) == n
    assert_tokens(x, range(2))
    return all_true([x[i] for i in range(1, n, 2)] + [x[i] for i in range(0, n, 2)])


def le_int(bits: list[int]) -> int:
    return sum(b << i for i, b in enumerate(bits))


def terminated_output(value: int, length: int) -> tuple[list[int], list[bool]]:
    bits = [int(c) for c in reversed(bin(value)[2:])]  # little-endian, "0" for zero
    out = bits + [2]
    assert len(out) <= length
    return out + [0] * (length - len(out)), [True] * len(out) + [False] * (length - len(out))


def binary_operands(x, n):
    assert len(x) == n
    assert_tokens(x, range(3))
    assert x.count(2) == 1, x
    a = x.index(2)
    assert 1 <= a <= n - 2
    left, right = le_int(x[:a]), le_int(x[a + 1 :])
    assert 1 <= left and 1 <= right  # operands are drawn from [1, 2^len - 1]
    return left, right


def oracle_binary_addition(x, n):
    if n <= 2:
        assert_tokens(x, range(2))
        value = le_int(x)
        assert value <= 2**n - 2
        return terminated_output(value, n + 1)
    left, right = binary_operands(x, n)
    return terminated_output(left + right, n + 1)


def oracle_binary_multiplication(x, n):
    if n <= 2:
        assert_tokens(x, range(2))
        assert le_int(x) <= 2**n - 2
        return ([2], [True]) if n == 1 else ([0, 2], [True, True])
    left, right = binary_operands(x, n)
    return terminated_output(left * right, n)


def oracle_compute_sqrt(x, n):
    assert len(x) == n
    assert_tokens(x, range(2))
    value = int("".join(map(str, x)), 2)
    assert 1 <= value <= 2**n - 1
    width = (n + 1) // 2
    return all_true([int(c) for c in format(math.isqrt(value), f"0{width}b")])


def oracle_bucket_sort(x, n):
    assert len(x) == n
    assert_tokens(x, range(5))
    return all_true(sorted(x))


ORACLES = {name: globals()[f"oracle_{name}"] for name in TASK_NAMES}


def check_against_oracle(task: Task, batch: Batch, n: int) -> None:
    oracle = ORACLES[task.name]
    for x, y, m in zip(
        batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist(), strict=True
    ):
        want_y, want_m = oracle(x, n)
        assert (y, m) == (want_y, want_m), f"{task.name} n={n} input={x}"


def sample(name: str, batch_size: int, n: int, seed: int = 0) -> Batch:
    return get_task(name).sample(batch_size, n, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Registry and declared sizes


def test_registry_names_and_levels():
    assert TASK_NAMES == tuple(REFERENCE_TABLE)
    assert TASK_LEVELS == {name: row[0] for name, row in REFERENCE_TABLE.items()}
    for name in TASK_NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name


@pytest.mark.parametrize("name", TASK_NAMES)
def test_declared_sizes(name):
    level, vocab, classes, out_len = REFERENCE_TABLE[name]
    task = get_task(name)
    assert (task.level, task.input_vocab_size, task.output_vocab_size) == (level, vocab, classes)
    for n in range(1, 60):
        assert task.output_length(n) == out_len(n)
        assert task.input_length(n) == (n - 1 if name == "modular_arithmetic" and n % 2 == 0 else n)
    assert task.is_classification == (out_len(10) == 1)


# ---------------------------------------------------------------------------------------------
# Every sample at every length against the oracle


@pytest.mark.parametrize("name", TASK_NAMES)
def test_samples_match_oracle(name):
    task = get_task(name)
    gen = torch.Generator().manual_seed(1234)
    for n in LENGTHS:
        batch = task.sample(batch_size_for(n), n, gen)
        n_in = task.input_length(n)
        k = task.output_length(n_in)
        assert batch.inputs.shape == (batch_size_for(n), n_in)
        assert batch.targets.shape == batch.mask.shape == (batch_size_for(n), k)
        assert batch.inputs.dtype == batch.targets.dtype == torch.long
        assert batch.mask.dtype == torch.bool
        assert 0 <= int(batch.inputs.min()) and int(batch.inputs.max()) < task.input_vocab_size
        assert 0 <= int(batch.targets.min()) and int(batch.targets.max()) < task.output_vocab_size
        check_against_oracle(task, batch, n)
        # solve() recomputes the same targets and mask from the inputs alone.
        again = task.solve(batch.inputs)
        assert torch.equal(again.targets, batch.targets) and torch.equal(again.mask, batch.mask)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_oracle_check_is_not_vacuous(name):
    """A single wrong target token (or mask entry) anywhere is caught."""
    task = get_task(name)
    batch = sample(name, 4, 9)
    bad_targets = batch.targets.clone()
    bad_targets[2, -1] = (bad_targets[2, -1] + 1) % task.output_vocab_size
    with pytest.raises(AssertionError):
        check_against_oracle(task, Batch(batch.inputs, bad_targets, batch.mask), 9)
    bad_mask = batch.mask.clone()
    bad_mask[1, 0] = False
    with pytest.raises(AssertionError):
        check_against_oracle(task, Batch(batch.inputs, batch.targets, bad_mask), 9)


# ---------------------------------------------------------------------------------------------
# Worked examples (docs/reference-system.md §1); each also appears in the task's docstring.

EXAMPLES = [
    # (task, input, targets, mask or None for all True)
    ("even_pairs", [0, 1, 1, 1, 1, 0, 0, 0], [0], None),
    ("even_pairs", [0, 1, 1, 0, 1], [1], None),
    ("modular_arithmetic", [4, 5, 2, 5, 3], [4], None),
    ("modular_arithmetic", [2, 7, 2, 6, 2, 7, 4], [1], None),
    ("parity_check", [0, 1, 1, 0, 1], [1], None),
    ("parity_check", [0, 1, 1, 1, 1, 0, 0, 0], [0], None),
    ("cycle_navigation", [0, 0], [3], None),
    ("cycle_navigation", [1, 1, 0, 2, 0, 2, 2, 1], [1], None),
    ("stack_manipulation", [1, 3, 2, 3, 3], [0, 0, 1, 2, 0, 0], [1, 1, 1, 1, 0, 0]),
    ("stack_manipulation", [0, 1, 0, 2, 2], [0, 2, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]),
    ("reverse_string", [0, 1, 1, 0, 1], [1, 0, 1, 1, 0], None),
    ("reverse_string", [1, 1, 0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0, 1, 1], None),
    ("modular_arithmetic_brackets", [8, 4, 6, 0, 9], [4], None),
    ("modular_arithmetic_brackets", [8, 8, 6, 2, 9, 7, 4, 9], [2], None),
    ("modular_arithmetic_brackets", [8, 0, 6, 8, 6, 3, 9, 9], [3], None),
    ("solve_equation", [7, 9, 8, 10, 4], [4], None),
    ("solve_equation", [7, 6, 9, 6, 3, 8, 10, 1], [1], None),
    ("duplicate_string", [0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 0, 1, 1, 0, 1], None),
    ("duplicate_string", [1, 0], [1, 0, 1, 0], None),
    ("missing_duplicate_string", [1, 1, 2, 1, 3], [1], None),
    ("missing_duplicate_string", [1, 1, 0, 0, 1, 1, 2, 0], [0], None),
    ("odds_first", [0, 1, 1, 0, 1], [1, 0, 0, 1, 1], None),
    ("odds_first", [0, 1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1, 1, 0], None),
    ("binary_addition", [1, 2, 1, 0, 1], [0, 1, 1, 2, 0, 0], [1, 1, 1, 1, 0, 0]),
    ("binary_addition", [0, 1, 2, 1, 0], [1, 1, 2, 0, 0, 0], [1, 1, 1, 0, 0, 0]),
    ("binary_multiplication", [1, 2, 1, 0, 1], [1, 0, 1, 2, 0], [1, 1, 1, 1, 0]),
    (
        "binary_multiplication",
        [1, 0, 0, 1, 2, 0, 1, 1],
        [0, 1, 1, 0, 1, 1, 2, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
    ),
    ("compute_sqrt", [1, 1, 0, 0, 1, 1, 1, 0], [1, 1, 1, 0], None),
    ("compute_sqrt", [0, 0, 1, 1, 1], [0, 1, 0], None),
    ("bucket_sort", [2, 0, 0, 4, 3], [0, 0, 2, 3, 4], None),
    ("bucket_sort", [1, 2, 1, 2, 4, 4, 3, 0], [0, 1, 1, 2, 2, 3, 4, 4], None),
]


@pytest.mark.parametrize(("name", "inputs", "targets", "mask"), EXAMPLES)
def test_worked_examples(name, inputs, targets, mask):
    task = get_task(name)
    batch = task.solve(torch.tensor([inputs]))
    assert batch.targets.tolist() == [targets]
    assert batch.mask.tolist() == [[bool(v) for v in (mask or [1] * len(targets))]]
    # The oracles agree with the worked examples of docs/reference-system.md §1 too (they are
    # checked against the same truth).
    assert ORACLES[name](inputs, len(inputs))[0] == targets
    # The example is documented in the class docstring.
    compact = str(inputs).replace(" ", "")
    assert compact in type(task).__doc__, f"{name} docstring lacks example {compact}"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_docstrings_state_level_and_examples(name):
    doc = type(get_task(name)).__doc__
    assert "Examples::" in doc
    level_words = {"regular": "regular", "dcf": "deterministic CF", "cs": "context-sensitive"}
    assert level_words[TASK_LEVELS[name]] in doc


def test_modular_arithmetic_reduces_even_lengths():
    for n in (2, 8, 40, 500):
        assert sample("modular_arithmetic", 3, n).inputs.shape == (3, n - 1)
    assert sample("modular_arithmetic", 3, 7).inputs.shape == (3, 7)
    # Lengths 2k and 2k+1 are the same problem: with one seed, the same batch.
    assert torch.equal(
        sample("modular_arithmetic", 5, 8, seed=3).inputs,
        sample("modular_arithmetic", 5, 7, seed=3).inputs,
    )


def test_degenerate_lengths():
    # solve_equation n < 3: all-zero input, class 0.
    for n in (1, 2):
        batch = sample("solve_equation", 50, n)
        assert batch.inputs.eq(0).all() and batch.targets.eq(0).all()
    # missing_duplicate_string n = 1: input [1], target 1.
    batch = sample("missing_duplicate_string", 20, 1)
    assert batch.inputs.eq(1).all() and batch.targets.eq(1).all()
    # binary_addition n = 1: input [0], target [0, 2]; n = 2 covers the numbers 0, 1, 2.
    batch = sample("binary_addition", 20, 1)
    assert batch.inputs.eq(0).all() and batch.targets.tolist() == [[0, 2]] * 20
    seen = {tuple(x) for x in sample("binary_addition", 300, 2).inputs.tolist()}
    assert seen == {(0, 0), (1, 0), (0, 1)}
    # binary_multiplication n <= 2: constant placeholder targets.
    assert sample("binary_multiplication", 20, 1).targets.tolist() == [[2]] * 20
    batch = sample("binary_multiplication", 300, 2)
    assert batch.targets.tolist() == [[0, 2]] * 300
    assert {tuple(x) for x in batch.inputs.tolist()} == {(0, 0), (1, 0), (0, 1)}
    # stack_manipulation n = 1: a single random bit, both values occur.
    batch = sample("stack_manipulation", 200, 1)
    assert set(batch.inputs.flatten().tolist()) == {0, 1}


# ---------------------------------------------------------------------------------------------
# Input distributions (cheap sanity checks; bounds are many standard deviations wide)


def assert_roughly_uniform(counts: Counter, support: list, total: int, slack: float = 0.3):
    assert set(counts) == set(support), (sorted(counts), support)
    expected = total / len(support)
    for value in support:
        assert abs(counts[value] - expected) < slack * expected, (value, counts[value], expected)


def test_stack_length_is_uniform_over_1_to_n_minus_1():
    n, size = 7, 3000
    inputs = sample("stack_manipulation", size, n).inputs.tolist()
    assert_roughly_uniform(Counter(stack_split(x) for x in inputs), list(range(1, n)), size)
    actions = Counter(t for x in inputs for t in x[stack_split(x) :])
    assert_roughly_uniform(actions, [2, 3, 4], sum(actions.values()))


def test_modular_arithmetic_symbols_uniform():
    inputs = sample("modular_arithmetic", 500, 21).inputs
    assert_roughly_uniform(Counter(inputs[:, 1::2].flatten().tolist()), [5, 6, 7], 500 * 10)
    assert_roughly_uniform(Counter(inputs[:, 0::2].flatten().tolist()), list(range(5)), 500 * 11)


def test_brackets_split_and_operators_uniform():
    size = 2500
    inputs = sample("modular_arithmetic_brackets", size, 9).inputs.tolist()
    splits = Counter(parse("".join(BRACKET_CHARS[t] for t in x))[1] for x in inputs)
    assert_roughly_uniform(splits, [1, 2, 3, 4, 5], size)  # l uniform in {1, ..., n-4}
    ops = Counter(
        x[1 + l] for x, l in ((x, parse("".join(BRACKET_CHARS[t] for t in x))[1]) for x in inputs)
    )
    assert_roughly_uniform(ops, [5, 6, 7], size)
    # Small exact lengths follow the grammar's fixed shapes.
    assert sample("modular_arithmetic_brackets", 50, 2).inputs[:, 0].eq(6).all()
    assert sample("modular_arithmetic_brackets", 50, 3).inputs[:, [0, 2]].tolist() == [[8, 9]] * 50
    assert (
        sample("modular_arithmetic_brackets", 50, 4).inputs[:, [0, 1, 3]].tolist()
        == [[8, 6, 9]] * 50
    )


def test_solve_equation_hidden_digit_follows_the_walk_rule():
    """The digit replaced by x is chosen with probability (gap before it)/m, not uniformly.

    For each sample, q_j = (number of characters whose rightward cyclic walk ends at digit j)/m.
    Under the reference rule, E[q_x] = sum_j q_j^2; under a uniform choice it would be
    sum_j q_j / D = 1/D. The statistic separates the two by many standard errors.
    """
    n, size = 14, 4000
    inputs = sample("solve_equation", size, n, seed=7).inputs.tolist()
    m = n - 2
    observed, expected, uniform, variance = 0.0, 0.0, 0.0, 0.0
    for x in inputs:
        lhs = x[:m]
        digits = [i for i, t in enumerate(lhs) if t < 5 or t == 9]
        q = {}
        for k, j in enumerate(digits):
            prev = digits[k - 1] if k > 0 else digits[-1] - m
            q[j] = (j - prev) / m
        x_at = lhs.index(9)
        second = sum(v * v for v in q.values())
        observed += q[x_at]
        expected += second
        uniform += 1 / len(digits)
        variance += sum(v**3 for v in q.values()) - second**2
    stderr = math.sqrt(variance)
    assert abs(observed - expected) < 5 * stderr
    assert abs(observed - uniform) > 10 * stderr


def test_binary_operand_lengths_and_values():
    n, size = 8, 3000
    inputs = sample("binary_addition", size, n).inputs.tolist()
    left_lengths = Counter(x.index(2) for x in inputs)
    assert_roughly_uniform(left_lengths, list(range(1, n - 1)), size)
    # Operands are uniform in [1, 2^a - 1]: for a = 3 the values 1..7 occur evenly, including
    # those with a high-order zero at the end of their segment.
    values = Counter(le_int(x[:3]) for x in inputs if x.index(2) == 3)
    assert_roughly_uniform(values, list(range(1, 8)), sum(values.values()), slack=0.45)
    # Multiplication shares the sampler.
    inputs = sample("binary_multiplication", size, n).inputs.tolist()
    assert_roughly_uniform(Counter(x.index(2) for x in inputs), list(range(1, n - 1)), size)


def test_compute_sqrt_values_uniform_and_nonzero():
    size = 3500
    inputs = sample("compute_sqrt", size, 3).inputs.tolist()
    values = Counter(int("".join(map(str, x)), 2) for x in inputs)
    assert_roughly_uniform(values, list(range(1, 8)), size)


def test_missing_duplicate_position_uniform():
    n, size = 9, 3000
    inputs = sample("missing_duplicate_string", size, n).inputs.tolist()
    assert_roughly_uniform(Counter(x.index(2) for x in inputs), list(range(8)), size)


# ---------------------------------------------------------------------------------------------
# Seeding and RNG hygiene


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_batch_other_seed_other_batch(name):
    for n in (5, 20):  # (binary tasks at n = 3 have a single possible input, [1, 2, 1])
        a = sample(name, 16, n, seed=11)
        b = sample(name, 16, n, seed=11)
        c = sample(name, 16, n, seed=12)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.mask, b.mask)
        assert not torch.equal(a.inputs, c.inputs)
    # Consecutive draws from one generator differ (its state advances).
    gen = torch.Generator().manual_seed(5)
    task = get_task(name)
    assert not torch.equal(task.sample(16, 20, gen).inputs, task.sample(16, 20, gen).inputs)


def test_global_rngs_untouched():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    gen = torch.Generator().manual_seed(0)
    for name in TASK_NAMES:
        for n in (1, 2, 3, 9, 30):
            get_task(name).sample(4, n, gen)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid names are: even_pairs, modular_arithmetic"):
        get_task("copy_string")
    with pytest.raises(ValueError, match="unknown task"):
        get_task(None)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "4"])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        get_task("parity_check").sample(batch_size, 5, torch.Generator())


@pytest.mark.parametrize("length", [0, -3, 2.0, None])
def test_bad_length(length):
    with pytest.raises(ValueError, match="length must be an integer >= 1"):
        get_task("reverse_string").sample(2, length, torch.Generator())


def test_bad_generator_and_device():
    task = get_task("bucket_sort")
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        task.sample(2, 5, 0)
    with pytest.raises(ValueError, match="differs from the generator's device"):
        task.sample(2, 5, torch.Generator(), device="meta")
    with pytest.raises(ValueError, match="differs from the generator's device"):
        task.sample(2, 5, torch.Generator(), device="cuda")
    with pytest.raises(ValueError, match="device must be a torch.device"):
        task.sample(2, 5, torch.Generator(), device="banana")
    # The generator's own device, named either way, is fine and changes nothing.
    plain = task.sample(2, 5, torch.Generator().manual_seed(1))
    for device in ("cpu", torch.device("cpu")):
        same = task.sample(2, 5, torch.Generator().manual_seed(1), device=device)
        assert torch.equal(plain.inputs, same.inputs)


def test_solve_rejects_malformed_arrays():
    task = get_task("parity_check")
    with pytest.raises(ValueError, match="LongTensor"):
        task.solve(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.long"):
        task.solve(torch.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", TASK_NAMES)
def test_cuda_samples_match_oracle(name):
    task = get_task(name)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (1, 2, 3, 4, 5, 8, 13, 40, 41, 100, 257, 500):
        batch = task.sample(16, n, gen, device="cuda")
        assert batch.inputs.is_cuda and batch.targets.is_cuda and batch.mask.is_cuda
        check_against_oracle(task, batch.to("cpu"), n)
    a = task.sample(8, 30, torch.Generator(device="cuda").manual_seed(3))
    b = task.sample(8, 30, torch.Generator(device="cuda").manual_seed(3))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    with pytest.raises(ValueError, match="differs from the generator's device"):
        task.sample(2, 5, gen, device="cpu")
