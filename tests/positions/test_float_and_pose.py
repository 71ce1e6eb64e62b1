"""The newer position samplers: Random Float Sampling and PoSE's chunked skips."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close_f32
from tiny import TINY_BASE

from randpos.core.fields import ConfigError
from randpos.encodings import ENCODINGS
from randpos.loop.training import train
from randpos.model import ModelConfig, Transformer
from randpos.positions import float_positions, plan_positions, pose_positions, sample_positions
from randpos.workloads import resolve_config
from randpos.workloads.config import TrainConfig


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("length,L", [(1, 2), (7, 64), (40, 2048), (64, 64)])
def test_float_positions_are_sorted_continuous_draws_in_range(length, L):
    p = float_positions(4, length, L, gen())
    assert p.dtype == torch.float64 and p.shape == (4, length)
    assert bool((p >= 0).all()) and bool((p < L).all())
    assert bool((p[:, 1:] > p[:, :-1]).all())  # strictly increasing
    assert torch.equal(p, p[:1].expand_as(p))  # shared by the batch by default
    rows = float_positions(4, length, L, gen(), per_sequence=True)
    assert length == 1 or not torch.equal(rows[0], rows[1])
    assert torch.equal(float_positions(4, length, L, gen(3)), float_positions(4, length, L, gen(3)))


def test_float_positions_are_uniform_over_the_range():
    # 20,000 draws of one position: the mean of U[0, L) is L/2, its sd L/sqrt(12)
    p = float_positions(20_000, 1, 100, gen(), per_sequence=True)
    assert abs(p.mean().item() - 50.0) < 4 * (100 / 12**0.5) / 20_000**0.5
    assert (p != p.round()).float().mean() > 0.99  # not integers


@pytest.mark.parametrize("length,L", [(1, 1), (2, 8), (9, 64), (40, 2048)])
def test_pose_positions_are_two_contiguous_chunks_rooted_at_zero(length, L):
    p = pose_positions(256, length, L, gen(), per_sequence=True)
    assert p.dtype == torch.long and bool((p[:, 0] == 0).all())
    assert bool((p < L).all())
    steps = p[:, 1:] - p[:, :-1]  # (B, T-1): 1 inside a chunk, 1 + u at the one boundary
    assert bool((steps >= 1).all()) and bool(((steps > 1).sum(1) <= 1).all())
    for row in p.tolist():
        # the first chunk is 0..r-1 with 1 <= r <= (T+1)//2; the rest is contiguous after it
        r = next((i for i in range(1, length) if row[i] != i), length)
        assert 1 <= r <= max(1, (length + 1) // 2) or r == length
        assert row[r:] == list(range(row[r], row[r] + length - r)) if r < length else True


def test_pose_skips_cover_the_whole_range():
    p = pose_positions(4000, 10, 100, gen(), per_sequence=True)
    assert p[:, -1].max().item() == 99  # the largest skip u = L - T reaches the end
    assert p[:, -1].min().item() == 9  # and u = 0 keeps the chunks adjacent
    first = (p == torch.arange(10)).cumprod(1).sum(1)  # length of the first chunk (with u > 0)
    lengths = first[p[:, -1] > 9]
    assert set(lengths.tolist()) <= set(range(1, 6)) and len(set(lengths.tolist())) == 5


def test_sample_positions_dispatches_on_the_sampler():
    a = sample_positions("random", 2, 5, 50, gen(), sampler="float")
    b = sample_positions("random", 2, 5, 50, gen(), sampler="pose")
    assert a.is_floating_point() and not b.is_floating_point()
    c = sample_positions("contiguous", 2, 5, 50, gen(), sampler="float")
    assert torch.equal(c, torch.arange(5).expand(2, 5))


def tiny(**changes) -> TrainConfig:
    base = dict(TINY_BASE, steps=6, batch_size=8, log_every=3, randomized=True, max_position=64)
    return resolve_config(base, **changes)


@pytest.mark.parametrize("randomize", ["float", "pose"])
def test_a_run_trains_and_evaluates_with_each_sampler(randomize):
    config = tiny(pe="sincos", randomize=randomize)
    plan = plan_positions(config.positions, config.num_layers, 3, 9, gen(), mode="random")
    assert plan.positions.is_floating_point() == (randomize == "float")
    summary = train(config, progress=False)
    assert all(0.0 <= a <= 1.0 for a in summary["per_length"].values())
    assert summary["randomize"] == randomize


def test_float_positions_need_an_encoding_that_takes_them():
    takers = sorted(n for n, cls in ENCODINGS.items() if cls.float_positions)
    assert {"none", "sincos", "alibi", "relative"} <= set(takers)
    with pytest.raises(ConfigError, match="float.*learned"):
        tiny(pe="learned", randomize="float")
    model = Transformer(ModelConfig(pe="learned", max_position=64), generator=gen())
    with pytest.raises(ValueError, match="positions must be an integer tensor"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.rand(1, 4, dtype=torch.float64))


@pytest.mark.numerics
@pytest.mark.parametrize(
    "pe",
    sorted(n for n, c in ENCODINGS.items() if c.float_positions and c.position_dims in (None, 1)),
)
def test_float_positions_between_integers_give_outputs_between(pe):
    """Encodings with continuous formulas: a float position is a valid input, integer-valued
    floats give the integer outputs, and a small shift moves the output a little."""
    cls = ENCODINGS[pe]
    cfg = ModelConfig(
        pe=pe,
        max_position=64,
        causal=cls.causal_only,
        num_layers=2,
        width=16,
        num_heads=2,
        ff_width=32,
    )
    model = Transformer(cfg, generator=gen()).eval()
    tokens = torch.randint(0, 3, (2, 6), generator=gen(1))
    ints = torch.tensor([[0, 3, 8, 9, 20, 40]] * 2)
    with torch.no_grad():
        exact = model(tokens, ints)
        as_float = model(tokens, ints.to(torch.float64))
        nudged = model(tokens, ints.to(torch.float64) + 1e-4)
    # integer vs float64 positions: other kernels up to the encodings' float64 casts, so equal
    # to float32 rounding, EPS32 x 2 layers x sqrt(32) (the feed-forward width) x max|logit|
    assert_close_f32(as_float, exact, depth=2, width=32)
    assert (nudged - exact).abs().max() < 1e-2  # continuity (a nudge of 1e-4), not rounding
