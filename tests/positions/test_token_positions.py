"""Positions read from the tokens (randpos.positions.tokens): Abacus digit indices and coupled
position ids against examples worked by hand, against each paper's rule written out directly,
their offsets, and their causality (what decoding relies on)."""

from __future__ import annotations

import pytest
import torch

from randpos.core.fields import ConfigError
from randpos.positions import (
    PositionSpec,
    TokenKinds,
    TokenPositionSpec,
    draw_offsets,
    plan_positions,
    significance,
    token_positions,
)
from randpos.tasks.arithmetic import (
    EOS,
    EQUALS,
    HINT_BASE,
    PLUS,
    ArithmeticFormat,
    ArithmeticTask,
)

P, E, Q = PLUS, EOS, EQUALS
ABACUS = TokenPositionSpec("abacus")
COUPLED = TokenPositionSpec("coupled")


def kinds(hints: int = 0) -> torch.Tensor:
    return TokenKinds(
        HINT_BASE + hints, tuple(range(10)), tuple(range(HINT_BASE, HINT_BASE + hints))
    ).table()


def positions(spec, tokens: list[int], offset: int = 0, hints: int = 0) -> list[int]:
    batch = torch.tensor([tokens])
    return token_positions(spec, batch, kinds(hints), torch.tensor([[offset]]))[0].tolist()


# 123 + 456 = 579 and 98 + 7 = 105, least significant digit first (worked by hand)
SUM = [3, 2, 1, P, 6, 5, 4, Q, 9, 7, 5, E]
UNEVEN = [8, 9, P, 7, Q, 5, 0, 1, E]
PADDED = [8, 9, P, 7, 0, Q, 5, 0, 1, E]  # the same sum zero-padded (Cho et al.'s format)


def test_abacus_indices_by_hand():
    # each number counts its digits from 1 (the units); every other token is 0
    assert positions(ABACUS, SUM) == [1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert positions(ABACUS, UNEVEN) == [1, 2, 0, 1, 0, 1, 2, 3, 0]
    # the training offset k moves every digit's index, never the other tokens'
    assert positions(ABACUS, UNEVEN, offset=5) == [6, 7, 0, 6, 0, 6, 7, 8, 0]


def test_coupled_ids_by_hand():
    # equal significance, equal id across a, b and the answer; other tokens take the start
    assert positions(COUPLED, PADDED) == [1, 2, 0, 1, 2, 0, 1, 2, 3, 0]
    assert positions(COUPLED, PADDED, offset=4) == [5, 6, 4, 5, 6, 4, 5, 6, 7, 4]


def cho_ids(tokens: list[int], start: int) -> list[int]:
    """Cho et al.'s rule as their public code states it for a zero-padded addition whose
    numbers are written most significant digit first (D = the operands' digits): a digit of
    significance s gets start + D + 1 - s, the separators start + D + 1. Written out here
    from the numbers' lengths alone, independently of randpos' implementation."""
    runs, current = [], []
    for t in tokens:
        if t < 10:
            current.append(t)
        else:
            runs.append(current)
            current = []
    D = len(runs[0])
    end = start + D + 1
    out = []
    for run in runs:
        out += [end - s for s in range(1, len(run) + 1)]  # least significant first here
        out.append(end)  # the separator (or EOS) after the run
    return out


@pytest.mark.parametrize("start", [1, 7])
def test_coupled_ids_are_the_mirror_image_of_cho_et_al(start):
    task = ArithmeticTask("addition", ArithmeticFormat(zero_pad=True))
    batch = task.sample(20, 6, torch.Generator().manual_seed(0))
    for row, length in zip(batch.tokens.tolist(), batch.length.tolist(), strict=True):
        row = row[:length]
        ours = positions(COUPLED, row)
        theirs = cho_ids(row, start)
        end = theirs[-1]  # start + D + 1, the separators' id
        assert [end - t for t in theirs] == ours  # one is the other reflected


def test_index_hints_take_the_significance_of_their_digit():
    # hints h_i before digits: 21 + 3 = 24 as "h0 1 h1 2 + h0 3 = h0 4 h1 2"
    h0, h1 = HINT_BASE, HINT_BASE + 1
    tokens = [h0, 1, h1, 2, P, h0, 3, Q, h0, 4, h1, 2, E]
    assert positions(ABACUS, tokens, hints=2) == [1, 1, 2, 2, 0, 1, 1, 0, 1, 1, 2, 2, 0]


def test_significance_restarts_at_every_number_and_matches_a_loop():
    g = torch.Generator().manual_seed(4)
    table = kinds(3)
    tokens = torch.randint(0, HINT_BASE + 3, (50, 40), generator=g)
    got = significance(tokens, table)
    for row, out in zip(tokens.tolist(), got.tolist(), strict=True):
        expected, digits = [], 0
        for t in row:
            if t < 10:
                digits += 1
                expected.append(digits)
            elif t >= HINT_BASE:
                expected.append(digits + 1)
            else:
                digits = 0
                expected.append(0)
        assert out == expected


@pytest.mark.parametrize("spec", [ABACUS, COUPLED], ids=["abacus", "coupled"])
def test_positions_are_causal_so_decoding_can_extend_them(spec):
    # a token's position depends on it and the tokens before it only: the last column of every
    # prefix's positions is that column of the whole sequence's
    task = ArithmeticTask("multiplication", ArithmeticFormat(index_hints=True, hint_vocab=9))
    batch = task.sample(8, 7, torch.Generator().manual_seed(1))
    table = kinds(9)
    offsets = torch.arange(8)[:, None]
    whole = token_positions(spec, batch.tokens, table, offsets)
    for t in range(1, batch.tokens.shape[1] + 1):
        prefix = token_positions(spec, batch.tokens[:, :t], table, offsets)
        assert torch.equal(prefix[:, -1], whole[:, t - 1])


def test_offsets_are_uniform_in_training_and_zero_otherwise():
    spec = TokenPositionSpec("abacus", max_offset=9, per_sequence=True)
    g = torch.Generator().manual_seed(0)
    draws = draw_offsets(spec, 5000, g)
    assert draws.shape == (5000, 1)
    counts = torch.bincount(draws.flatten(), minlength=10).double()
    # 5000 draws over 10 values: each count is 500 +- 4 standard deviations
    assert (counts - 500).abs().max() < 4 * (5000 * 0.1 * 0.9) ** 0.5
    assert draw_offsets(TokenPositionSpec("abacus", 9), 5, g).shape == (1, 1)  # one per batch
    assert int(draw_offsets(spec, 5, g, mode="contiguous").abs().sum()) == 0
    assert spec.positions_needed(41) == 9 + 41 + 1


def test_plan_positions_reads_the_tokens_after_drawing_the_attention_positions():
    task = ArithmeticTask("addition")
    batch = task.sample(4, 5, torch.Generator().manual_seed(0))
    T = batch.tokens.shape[1]
    spec = PositionSpec(sampler="random", max_position=64)
    reading = (TokenPositionSpec("abacus", max_offset=20), kinds())
    plain = plan_positions(spec, 2, 4, T, torch.Generator().manual_seed(9))
    plan = plan_positions(
        spec, 2, 4, T, torch.Generator().manual_seed(9), tokens=batch.tokens, reading=reading
    )
    assert torch.equal(plan.positions, plain.positions)  # the attention's draw comes first
    assert plain.embed_positions is None and "embed_positions" not in plain.model_kwargs()
    rank = significance(batch.tokens, kinds())
    k = plan.embed_positions - rank
    assert len(set(k[rank > 0].tolist())) == 1  # one offset for the batch
    assert torch.equal(plan.model_kwargs()["embed_positions"], plan.embed_positions)


def test_bad_specs_are_one_line_errors():
    with pytest.raises(ConfigError, match="source"):
        TokenPositionSpec("digits")
    with pytest.raises(ConfigError, match="max_offset must be an integer >= 0"):
        TokenPositionSpec("abacus", max_offset=-1)
