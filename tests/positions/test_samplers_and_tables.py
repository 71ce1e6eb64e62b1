"""Position and distance samplers: properties, seeding, uniformity, errors."""

from __future__ import annotations

import math

import pytest
import torch

from randpos.positions import (
    EVAL_MODES,
    contiguous_distances,
    contiguous_positions,
    randomized_distances,
    randomized_positions,
    sample_distances,
    sample_positions,
    spread_distances,
    spread_positions,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_sorted_unique_in_range(rows: torch.Tensor, lo: int, hi: int) -> None:
    assert rows.dtype == torch.long
    assert bool((rows[..., 1:] > rows[..., :-1]).all()), "rows must be strictly increasing"
    assert int(rows.min()) >= lo and int(rows.max()) < hi


def test_contiguous():
    pos = contiguous_positions(3, 7)
    assert pos.shape == (3, 7)
    assert torch.equal(pos, torch.arange(7).expand(3, 7))


@pytest.mark.parametrize("per_sequence", [False, True])
@pytest.mark.parametrize(("length", "max_position"), [(1, 1), (5, 5), (40, 2048), (1500, 2048)])
def test_randomized_sorted_unique_in_range(length, max_position, per_sequence):
    pos = randomized_positions(4, length, max_position, gen(), per_sequence=per_sequence)
    assert pos.shape == (4, length)
    assert_sorted_unique_in_range(pos, 0, max_position)
    if length == max_position:  # the only possible subset
        assert torch.equal(pos, contiguous_positions(4, length))


def test_randomized_is_seeded_by_the_generator_only():
    a = randomized_positions(2, 10, 100, gen(1))
    torch.manual_seed(123)  # the global RNG must not matter
    b = randomized_positions(2, 10, 100, gen(1))
    c = randomized_positions(2, 10, 100, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_shared_vs_per_sequence():
    shared = randomized_positions(8, 10, 1000, gen())
    assert bool((shared == shared[:1]).all()), "default: one draw for the whole batch"
    per = randomized_positions(8, 10, 1000, gen(), per_sequence=True)
    assert len({tuple(r.tolist()) for r in per}) == 8


def test_randomized_covers_range_roughly_uniformly():
    # every value appears, and each value's frequency is close to its expected T/L
    length, max_position, draws = 8, 64, 4000
    pos = randomized_positions(draws, length, max_position, gen(), per_sequence=True)
    counts = torch.bincount(pos.flatten(), minlength=max_position).double()
    expected = draws * length / max_position  # 500
    assert bool((counts > 0).all())
    # binomial std ~ sqrt(500 * (1 - 1/8)) ~ 21; 6 std keeps this far from flaky
    assert float((counts - expected).abs().max()) < 6 * math.sqrt(expected)
    # the first sampled position is the minimum of 8 of 64: not pinned to 0
    assert 0 < float(pos[:, 0].double().mean()) < 15


def test_randomized_subsets_are_uniform():
    # all C(5, 2) = 10 subsets of a 2-of-5 draw are about equally likely
    pos = randomized_positions(5000, 2, 5, gen(), per_sequence=True)
    codes = pos[:, 0] * 5 + pos[:, 1]
    counts = torch.bincount(codes, minlength=25)[codes.unique()]
    assert len(counts) == 10
    assert float(counts.double().std() / counts.double().mean()) < 0.1


def test_spread():
    pos = spread_positions(2, 5, 16)
    assert torch.equal(pos[0], torch.tensor([0, 3, 6, 9, 12]))
    for length in (1, 7, 100, 2047, 2048):
        assert_sorted_unique_in_range(spread_positions(1, length, 2048), 0, 2048)


@pytest.mark.parametrize("mode", EVAL_MODES)
def test_sample_positions_dispatch(mode):
    pos = sample_positions(mode, 3, 20, 64, gen())
    assert pos.shape == (3, 20)
    assert_sorted_unique_in_range(pos, 0, 64)
    with pytest.raises(ValueError, match="exceeds max_position"):
        sample_positions(mode, 3, 65, 64, gen())


def test_errors():
    with pytest.raises(ValueError, match="max_position 16"):
        randomized_positions(1, 17, 16, gen())
    with pytest.raises(ValueError, match="at least 17"):
        randomized_distances(1, 17, 16, gen())
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            randomized_positions(bad, 4, 16, gen())
        with pytest.raises(ValueError, match="positive"):
            randomized_positions(1, bad, 16, gen())
        with pytest.raises(ValueError, match="positive"):
            randomized_positions(1, 4, bad, gen())
        with pytest.raises(ValueError, match="positive"):
            contiguous_positions(1, bad)
    with pytest.raises(ValueError, match="valid modes"):
        sample_positions("shuffled", 1, 4, 16, gen())


@pytest.mark.parametrize("both_sides", [False, True])
def test_randomized_distances(both_sides):
    table = randomized_distances(5, 30, 64, gen(), both_sides=both_sides)
    assert table.shape == (5, 2, 30)
    assert bool((table[:, :, 0] == 0).all())
    assert_sorted_unique_in_range(table[:, :, 1:], 1, 64)
    same_sides = torch.equal(table[:, 0], table[:, 1])
    assert same_sides != both_sides
    assert not torch.equal(table[0], table[1]), "tables (layers) are independent draws"
    assert torch.equal(table, randomized_distances(5, 30, 64, gen(), both_sides=both_sides))


def test_distance_tables_edge_cases_and_modes():
    assert torch.equal(randomized_distances(2, 1, 8, gen()), torch.zeros(2, 2, 1, dtype=torch.long))
    full = randomized_distances(1, 8, 8, gen())  # T-1 = L-1: every distance 1..L-1 is used
    assert torch.equal(full[0, 0], torch.arange(8))
    assert torch.equal(contiguous_distances(3, 4), torch.arange(4).expand(3, 2, 4))
    assert torch.equal(spread_distances(1, 4, 16)[0, 0], torch.tensor([0, 4, 8, 12]))
    for mode in EVAL_MODES:
        table = sample_distances(mode, 2, 10, 64, gen())
        assert table.shape == (2, 2, 10) and bool((table[:, :, 0] == 0).all())
        assert_sorted_unique_in_range(table, 0, 64)
