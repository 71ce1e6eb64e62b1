"""The contract every registered encoding keeps, checked for the whole registry (a new encoding
is covered by registering it): its name, hooks and flags, its own options with their defaults
written once, construction from an EncodingShape without touching global randomness, seeded
initialization, and hooks that take positions as data and return the documented shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from randpos.encodings import ENCODINGS, build_encoding, get_encoding
from randpos.encodings.base import (
    HOOKS,
    BiasWithSink,
    EncodingShape,
    normalize_options,
    option_owners,
)
from randpos.model import ModelConfig, Transformer
from randpos.positions import randomized_positions, sample_grid_positions

B, T, H, D, LAYERS, L = 2, 7, 4, 32, 2, 64


def shape_for(cls) -> EncodingShape:
    return EncodingShape(
        width=D, num_heads=H, num_layers=LAYERS, max_position=L, causal=cls.causal_only
    )


def positions_for(cls, generator: torch.Generator) -> torch.Tensor:
    """Sorted random positions of the kind the encoding takes: (B, T) or a 2D grid (B, N, 2)."""
    if cls.position_dims == 2:
        return sample_grid_positions("random", B, 2, 3, L, generator)  # N = 6
    return randomized_positions(B, T, L, generator, per_sequence=True)


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_name_hooks_and_flags(name):
    cls = get_encoding(name)
    assert cls.name == name
    hooks = cls.overridden_hooks()
    assert set(hooks) <= set(HOOKS)
    assert bool(hooks) == (name != "none")  # NoPE is the one encoding without a hook
    if "features" in hooks:
        assert "bias" in hooks  # features are read by the bias only
    assert cls.position_dims in (1, 2, None)
    if cls.uses_distances:
        assert "bias" in hooks  # the distance reading feeds attention biases
    if not cls.randomizable:
        assert not cls.uses_distances  # nothing to randomize, no distance tables either


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_options_have_one_home_and_their_defaults(name):
    cls = get_encoding(name)
    if cls.Options is None:
        assert cls.parse_options({}) is None
        return
    defaults = cls.Options()
    assert cls.parse_options({}) == defaults and cls.parse_options(None) == defaults
    for f in dataclasses.fields(cls.Options):
        assert option_owners()[f.name] is cls.Options  # declared once across the registry
        # spelling a default out is the same as leaving it out (the stored form drops it)
        assert normalize_options({f.name: getattr(defaults, f.name)}) == {}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_built_from_a_shape_seeded_and_without_global_randomness(name):
    cls = get_encoding(name)
    state = torch.get_rng_state()
    a = build_encoding(name, shape_for(cls))
    assert torch.equal(torch.get_rng_state(), state)  # construction draws nothing
    assert a.shape == shape_for(cls) and a.max_position == L and a.head_width == D // H
    b = build_encoding(name, shape_for(cls))
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # initialization reads only its generator
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)  # the same code on the same draws: exact


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_hooks_take_positions_as_data_and_return_the_documented_shapes(name):
    cls = get_encoding(name)
    g = torch.Generator().manual_seed(0)
    pe = build_encoding(name, shape_for(cls))
    pe.reset_parameters(g)
    pos = positions_for(cls, g)
    n = pos.shape[1]
    x = torch.randn(B, n, D, generator=g)
    q, k = (torch.randn(B, H, n, D // H, generator=g) for _ in range(2))
    with torch.no_grad():
        out = pe.embed(x, pos)
        assert out.shape == (B, n, D) and bool(torch.isfinite(out).all())
        rq, rk = pe.rotate(q, k, pos, 0)
        assert rq.shape == q.shape and rk.shape == k.shape
        assert bool(torch.isfinite(rq).all() and torch.isfinite(rk).all())
        kwargs = {}
        if pe.has_features:
            features = pe.features(x, LAYERS - 1)
            assert features.shape[:3] == (B, H, n) and features.dim() == 4
            assert bool(torch.isfinite(features).all())
            kwargs["features"] = features
        bias = pe.bias(rq, rk, pos, LAYERS - 1, **kwargs)
        sink = None
        if isinstance(bias, BiasWithSink):
            bias, sink = bias
            assert torch.broadcast_shapes(sink.shape, (B, H, n)) == (B, H, n)
            assert bool(torch.isfinite(sink).all())
        if bias is not None:
            assert torch.broadcast_shapes(bias.shape, (B, H, n, n)) == (B, H, n, n)
            # finite, but for keys a sink-form bias hides from a query (-inf)
            assert bool((torch.isfinite(bias) | (bias == float("-inf"))).all())
            assert sink is not None or bool(torch.isfinite(bias).all())
    if "embed" not in cls.overridden_hooks():
        assert out is x  # the defaults pass their input through untouched
    if "rotate" not in cls.overridden_hooks():
        assert rq is q and rk is k


@pytest.mark.parametrize(
    "name", [n for n, c in ENCODINGS.items() if not c.reads_positions and c.position_dims != 2]
)
def test_encodings_that_read_no_positions_give_outputs_independent_of_them(name):
    """reads_positions = False: the model's logits are the same whatever position values it is
    given (contiguous, shifted, random, float where taken): the same code on the same inputs,
    so bit for bit."""
    cls = get_encoding(name)
    config = ModelConfig(pe=name, causal=True, dropout=0.0, max_position=L, vocab_size=5)
    model = Transformer(config, generator=torch.Generator().manual_seed(0)).eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (B, T), generator=g)
    base = model(tokens, torch.arange(T)[None])
    others = [torch.arange(T)[None] + 40, randomized_positions(B, T, L, g, per_sequence=True)]
    if cls.float_positions:
        others.append(torch.rand(B, T, generator=g, dtype=torch.float64).cumsum(-1))
    for positions in others:
        assert torch.equal(model(tokens, positions), base)
