"""Positional encodings: registry, hooks, closed forms and invariances (independent oracles)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from numerics import EPS64, f64_atol, magnitude

from randpos.encodings import PE_NAMES_1D as PE_NAMES
from randpos.encodings import PositionalEncoding, get_encoding, register
from randpos.encodings.alibi import alibi_slopes
from randpos.encodings.base import BiasWithSink, toeplitz_index
from randpos.model import ModelConfig
from randpos.positions import contiguous_distances, randomized_distances, randomized_positions

CONFIG = ModelConfig(max_position=2048)
B, H, T, D = 2, CONFIG.num_heads, 9, CONFIG.width
d = D // H


def config_for(name: str, config: ModelConfig = CONFIG) -> ModelConfig:
    """``config``, made causal for encodings that exist only for causal attention."""
    if get_encoding(name).causal_only:
        return dataclasses.replace(config, causal=True)
    return config


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str, config: ModelConfig = CONFIG, seed: int = 0) -> PositionalEncoding:
    pe = get_encoding(name)(config_for(name, config))
    pe.reset_parameters(gen(seed))
    return pe.double()  # float64 so oracles agree to ~1e-10


def qk(batch: int = B, length: int = T, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    q = torch.randn(batch, H, length, d, generator=g, dtype=torch.float64)
    k = torch.randn(batch, H, length, d, generator=g, dtype=torch.float64)
    return q, k


def layer_input(batch: int = B, length: int = T, seed: int = 0) -> torch.Tensor:
    """A layer input x (B, T, D) for the encodings whose bias reads features of it (FoX)."""
    return torch.randn(batch, length, D, generator=gen(seed + 100), dtype=torch.float64)


def logits(pe, q, k, positions, layer=0, distances=None) -> torch.Tensor:
    """Attention logits (B, H, T, T) as the model forms them from the hooks (a sink-form
    bias's keys only; its sink is not a logit of a key)."""
    if pe.has_rotate:
        q, k = pe.rotate(q, k, positions, layer)
    out = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if pe.has_bias:
        kwargs = {}
        if pe.has_features:
            kwargs["features"] = pe.features(layer_input(q.shape[0], q.shape[-2]), layer)
        bias = pe.bias(q, k, positions, layer, distances, **kwargs)
        out = out + (bias.bias if isinstance(bias, BiasWithSink) else bias)
    return out


def sorted_positions(length=T, max_position=1000, seed=0, batch=B) -> torch.Tensor:
    return randomized_positions(batch, length, max_position, gen(seed), per_sequence=True)


# Oracle checks run in float64, code under test included (build() makes every encoding float64).
# Their rounding bound is numerics.f32_atol's in float64: EPS64 x depth x sqrt(width) x scale.
# Where sines and cosines of p w enter (positions p < 2048, w <= 1), the angle p w itself carries
# an error of ~EPS64 x |p w| (w from a pow, then the product, each rounded), so a value of size s
# built from them is off by up to ~EPS64 x 2048 x s: such scales include ANGLE.
ANGLE = 2048.0
#: the encodings whose logits are built from sines and cosines of positions
ANGULAR = ("relative", "rope", "xpos", "sandwich")


def logit_atol(name: str, q: torch.Tensor, k: torch.Tensor, out: torch.Tensor, angle=ANGLE):
    """Rounding bound of float64 logits ``out`` of encoding ``name`` computed along two paths:
    EPS64 x 4 roundings x sqrt(64) (relative's W_R projection, the longest dot product) x the
    size of their terms (sum_c |q_c k_c| / sqrt(d), or max|logit| if larger), times the largest
    angle for the encodings built from sines and cosines."""
    terms = max(magnitude(q.abs() @ k.abs().transpose(-1, -2)) / math.sqrt(d), magnitude(out))
    return f64_atol(terms * (angle if name in ANGULAR else 1.0), depth=4, width=D)


# --- registry ---------------------------------------------------------------------------------


def test_registry_names():
    for name in ("none", "sincos", "learned", "relative", "rope", "alibi"):
        assert name in PE_NAMES
        assert get_encoding(name).name == name


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*sincos"):
        get_encoding("rotary")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register("rope")(type("Again", (PositionalEncoding,), {}))


@pytest.mark.parametrize("name", PE_NAMES)
def test_hooks_return_well_shaped_tensors(name):
    pe = build(name)
    pos = sorted_positions()
    q, k = qk()
    x = torch.zeros(B, T, D, dtype=torch.float64)
    assert pe.embed(x, pos).shape == (B, T, D)
    q2, k2 = pe.rotate(q, k, pos, 0)
    assert q2.shape == q.shape and k2.shape == k.shape
    bias = logits(pe, q, k, pos) - q2 @ k2.transpose(-1, -2) / math.sqrt(d) if pe.has_bias else None
    if bias is not None:
        assert torch.broadcast_shapes(bias.shape, (B, H, T, T)) == (B, H, T, T)
    assert pe.has_embed or pe.has_rotate or pe.has_bias or name == "none"


# --- invariances ------------------------------------------------------------------------------

# encodings that act inside attention are relative: logits see only position differences
ATTENTION_LEVEL = [n for n in PE_NAMES if not get_encoding(n)(config_for(n)).has_embed]


@pytest.mark.numerics
@pytest.mark.parametrize("name", ATTENTION_LEVEL)
def test_attention_logits_invariant_to_global_shift(name):
    pe = build(name)
    q, k = qk()
    half = (get_encoding(name).relative_below or 2000) // 2  # FIRE: relative below 512 only
    pos = sorted_positions(max_position=half)
    shifted = pos + half  # still < max_position = 2048
    want = logits(pe, q, k, pos)
    atol = logit_atol(name, q, k, want)
    torch.testing.assert_close(logits(pe, q, k, shifted), want, atol=atol, rtol=0)


@pytest.mark.parametrize("name", ["relative", "rope", "alibi"])
def test_attention_level_pes_depend_on_positions(name):
    pe = build(name)
    q, k = qk()
    pos = sorted_positions()
    spread = pos * 2
    base = logits(pe, q, k, pos)
    change = (logits(pe, q, k, spread) - base).abs().max()
    assert change > 100 * logit_atol(name, q, k, base)


def test_none_ignores_positions():
    pe = build("none")
    q, k = qk()
    assert torch.equal(logits(pe, q, k, sorted_positions(seed=1)), q @ k.transpose(-1, -2) / 8**0.5)


@pytest.mark.parametrize("name", ["sincos", "learned"])
def test_absolute_pes_depend_on_positions(name):
    pe = build(name)
    x = torch.zeros(1, T, D, dtype=torch.float64)
    a = pe.embed(x, sorted_positions(batch=1, seed=1))
    b = pe.embed(x, sorted_positions(batch=1, seed=2))
    # sinusoids of angles < 2048 (or a table lookup): rounding below EPS64 x 4 x 2048 x max|value|
    assert (a - b).abs().max() > 100 * f64_atol(ANGLE * magnitude(b), depth=4)


# --- closed forms -----------------------------------------------------------------------------


@pytest.mark.numerics
def test_sincos_closed_form():
    pe = build("sincos")
    pos = torch.tensor([[0, 1, 5, 2047]])
    out = pe.embed(torch.zeros(1, 4, D, dtype=torch.float64), pos)[0]
    # w (a pow), p w and sin/cos each within an ulp, of an angle < 2048, values <= 1
    atol = f64_atol(ANGLE, depth=4)  # 1.8e-12
    for row, p in enumerate(pos[0].tolist()):
        for i in range(D // 2):
            w = 10000 ** (-2 * i / D)
            assert out[row, i].item() == pytest.approx(math.sin(p * w), abs=atol)
            assert out[row, D // 2 + i].item() == pytest.approx(math.cos(p * w), abs=atol)


def test_learned_is_a_table_lookup():
    pe = build("learned")
    assert pe.table.shape == (CONFIG.max_position, D)
    pos = torch.tensor([[0, 3, 2047]])
    # a lookup added to zeros: exact
    assert torch.equal(
        pe.embed(torch.zeros(1, 3, D, dtype=torch.float64), pos)[0], pe.table[[0, 3, 2047]]
    )


def reference_slopes(n: int) -> list[float]:
    """The ALiBi paper's recipe, written independently: start = ratio = 2^(-8/P)."""

    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_two(closest) + reference_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", [1, 2, 3, 6, 8, 12, 16])
def test_alibi_slopes(heads):
    # Python floats: the reference's start^(i+1) carries i + 1 times start's rounding (a pow,
    # within an ulp), plus its own pow and product, ours one pow: <= (heads + 3) EPS64 relative
    rel = (heads + 3) * EPS64
    assert alibi_slopes(heads) == pytest.approx(reference_slopes(heads), rel=rel)


def test_alibi_slopes_known_values():
    # powers of two: 2^k is exact, so is the pow that returns it
    assert alibi_slopes(8) == [2.0**-h for h in range(1, 9)]
    assert alibi_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]


@pytest.mark.parametrize("heads", [8, 6])
def test_alibi_matches_closed_form(heads):
    config = ModelConfig(width=heads * 8, num_heads=heads)
    pe = build("alibi", config)
    pos = sorted_positions(batch=2, max_position=500)
    q = torch.zeros(2, heads, T, 8, dtype=torch.float64)
    bias = pe.bias(q, q, pos, 0).expand(2, heads, T, T)
    slopes = alibi_slopes(heads)
    # 8 and 6 heads: every slope is a power of two, every penalty an integer or a half, so each
    # product is exact, here and in the oracle
    for b in range(2):
        for h in range(heads):
            for i in range(T):
                for j in range(T):
                    dist = abs(int(pos[b, j]) - int(pos[b, i]))
                    want = slopes[h] * (-dist + (0.5 if j < i else 0.0))
                    assert bias[b, h, i, j].item() == want


def rotate_complex(x: torch.Tensor, p: int) -> torch.Tensor:
    """Oracle: pair (2m, 2m+1) as a complex number times e^{i p theta_m}."""
    z = torch.view_as_complex(x.reshape(-1, 2).contiguous())
    theta = torch.tensor([10000 ** (-2 * m / d) for m in range(d // 2)], dtype=torch.float64)
    return torch.view_as_real(z * torch.exp(1j * p * theta)).reshape(-1)


@pytest.mark.numerics
def test_rope_matches_complex_rotation():
    pe = build("rope")
    q, k = qk(batch=1)
    pos = sorted_positions(batch=1, max_position=2048)
    rq, rk = pe.rotate(q, k, pos, 0)
    # a rotation by angles < 2048 (theta, p theta, cos/sin each within an ulp): each pair moves
    # by up to EPS64 x 4 x 2048 x its length
    atol = f64_atol(ANGLE * 2**0.5 * magnitude(q, k), depth=4)
    for h in range(H):
        for t in range(T):
            p = int(pos[0, t])
            torch.testing.assert_close(
                rq[0, h, t], rotate_complex(q[0, h, t], p), atol=atol, rtol=0
            )
            torch.testing.assert_close(
                rk[0, h, t], rotate_complex(k[0, h, t], p), atol=atol, rtol=0
            )


@pytest.mark.numerics
def test_rope_scores_depend_only_on_position_differences():
    pe = build("rope")
    g = gen(3)
    q = torch.randn(1, H, 1, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, H, 1, d, generator=g, dtype=torch.float64)

    def score(pq: int, pk: int) -> torch.Tensor:
        rq, _ = pe.rotate(q, q, torch.tensor([[pq]]), 0)
        _, rk = pe.rotate(k, k, torch.tensor([[pk]]), 0)
        return (rq * rk).sum(-1)

    # both rotations by angles < 2048, then sum_c q_c k_c: EPS64 x 4 x 2048 x sum_c |q_c k_c|
    atol = f64_atol(ANGLE * magnitude((q * k).abs().sum(-1)), depth=4)
    for delta in (-700, -3, 0, 1, 50, 1999):
        lo, hi = max(0, -delta), 2047 - max(0, delta)  # query positions keeping both in [0, 2048)
        base = score(lo, lo + delta)
        for pq in ((lo + hi) // 2, hi):
            torch.testing.assert_close(score(pq, pq + delta), base, atol=atol, rtol=0)
    # and they do depend on the difference
    assert (score(0, 1) - score(0, 2)).abs().max() > 100 * atol


def relative_oracle(pe, q, k, rel: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """Brute force: builds R for every (i, j) pair, (B, T, T, D) -> bias (B, H, T, T)."""
    i = torch.arange(D // 2, dtype=torch.float64)
    w = 10000 ** (-2 * i / D)
    angles = rel.double().unsqueeze(-1) * w
    r = torch.cat([angles.sin(), angles.cos()], -1)  # (B, T, T, D)
    proj = r @ pe.w_r[layer].T  # (B, T, T, D): W_R R(x_ij)
    proj = proj.unflatten(-1, (H, d)).permute(0, 3, 1, 2, 4)  # (B, H, T, T, d)
    u, v = pe.u[layer], pe.v[layer]
    content = (k * u[None, :, None]).sum(-1).unsqueeze(2)  # (B, H, 1, T)
    position = ((q + v[None, :, None]).unsqueeze(3) * proj).sum(-1)  # (B, H, T, T)
    return (content + position) / math.sqrt(d)


@pytest.mark.numerics
def test_relative_matches_brute_force_for_arbitrary_positions():
    pe = build("relative", seed=4)
    q, k = qk()
    pos = sorted_positions(max_position=2048)
    rel = pos.unsqueeze(1) - pos.unsqueeze(2)  # (B, T, T): p_j - p_i
    for layer in (0, 3):
        want = relative_oracle(pe, q, k, rel, layer)
        # sines of angles < 2048 (the angle-difference identity vs the difference's sine)
        atol = logit_atol("relative", q, k, want)
        torch.testing.assert_close(pe.bias(q, k, pos, layer), want, rtol=0, atol=atol)


# --- the distance reading ---------------------------------------------------------------------

DISTANCE_PES = [n for n in PE_NAMES if get_encoding(n).uses_distances]


def offset_value(table: torch.Tensor, delta: int) -> int:
    """Intended signed semantics: +a_delta right, -b_|delta| left."""
    return int(table[0, delta]) if delta >= 0 else -int(table[1, -delta])


@pytest.mark.numerics
@pytest.mark.parametrize("both_sides", [False, True])
def test_relative_with_distances_matches_table(both_sides):
    pe = build("relative", seed=5)
    q, k = qk()
    table = randomized_distances(1, T, 2048, gen(6), both_sides=both_sides)
    rel = torch.tensor([[offset_value(table[0], j - i) for j in range(T)] for i in range(T)])
    pos = sorted_positions()  # ignored under the distance reading
    want = relative_oracle(pe, q, k, rel.expand(B, T, T))
    atol = logit_atol("relative", q, k, want)  # sines of distances < 2048
    torch.testing.assert_close(pe.bias(q, k, pos, 0, table), want, rtol=0, atol=atol)


@pytest.mark.parametrize("both_sides", [False, True])
def test_alibi_with_distances_matches_table(both_sides):
    pe = build("alibi")
    q, k = qk()
    table = randomized_distances(1, T, 2048, gen(7), both_sides=both_sides)
    bias = pe.bias(q, k, sorted_positions(), 0, table)[0]  # (H, T, T)
    slopes = alibi_slopes(H)
    # powers of two times integers or halves: exact, here and in the oracle
    for h in range(H):
        for i in range(T):
            for j in range(T):
                if j > i:
                    want = -slopes[h] * int(table[0, 0, j - i])
                elif j < i:
                    want = slopes[h] * (-int(table[0, 1, i - j]) + 0.5)
                else:
                    want = 0.0
                assert bias[h, i, j].item() == want


@pytest.mark.numerics
@pytest.mark.parametrize("name", DISTANCE_PES)
def test_distance_reading_is_toeplitz(name):
    pe = build(name)
    # identical q, k at every position: then the logits can only vary with the offset
    q, k = qk(batch=1, length=1)
    q, k = q.expand(1, H, T, d), k.expand(1, H, T, d)
    table = randomized_distances(1, T, 2048, gen(8), both_sides=True)
    out = logits(pe, q, k, sorted_positions(batch=1), distances=table)[0]  # (H, T, T)
    index = toeplitz_index(T)
    # the bias of an offset is gathered from one value; q . k of equal rows is computed at other
    # places of one product, which may round differently: no angle factor (equal angles)
    atol = logit_atol(name, q, k, out, angle=1.0)
    for offset in range(-(T - 1), T):
        values = out[:, index == offset + T - 1]  # (H, count)
        torch.testing.assert_close(values, values[:, :1].expand_as(values), atol=atol, rtol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["relative", "alibi"])
def test_identity_distances_equal_contiguous_positions(name):
    pe = build(name)
    q, k = qk()
    pos = torch.arange(T).expand(B, T)
    want = logits(pe, q, k, pos)
    atol = logit_atol(name, q, k, want, angle=T)  # positions and distances below T
    got = logits(pe, q, k, pos, distances=contiguous_distances(1, T))
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("name", DISTANCE_PES)
def test_per_layer_tables(name):
    pe = build(name)
    q, k = qk()
    pos = sorted_positions()
    tables = randomized_distances(CONFIG.num_layers, T, 2048, gen(9))
    for layer in (0, 2):
        per_layer = pe.bias(q, k, pos, layer, tables)
        # the same table row either way: one computation twice, bit for bit
        assert torch.equal(per_layer, pe.bias(q, k, pos, layer, tables[layer : layer + 1]))
    base = pe.bias(q, k, pos, 2, tables[:1])
    change = (pe.bias(q, k, pos, 2, tables) - base).abs().max()
    assert change > 100 * logit_atol(name, q, k, base)


def test_relative_reference_bug_reproduces_released_lookup():
    # docs/reference-system.md §4.2's demonstration: L = 16, T = 5; printed value = position whose
    # sinusoid is used
    config = ModelConfig(max_position=16)
    pe = get_encoding("relative_reference_bug")(config)
    a = torch.tensor([0, 3, 7, 11, 12])
    table = torch.stack([a, a])
    used = pe.offset_values(table, 5)[toeplitz_index(5)]  # (T, T)
    assert used[0].tolist() == [15, 15, 15, 15, 15]
    assert used[1].tolist() == [13, 15, 15, 15, 15]
    assert used[4].tolist() == [4, 5, 9, 13, 15]


def test_distance_table_validation():
    pe = build("alibi")
    good = randomized_distances(1, T, 2048, gen())
    pe.check_distances(good, T)
    pe.check_distances(randomized_distances(CONFIG.num_layers, T + 3, 2048, gen()), T)
    with pytest.raises(ValueError, match="shape"):
        pe.check_distances(randomized_distances(2, T, 2048, gen()), T)  # neither 1 nor layers
    with pytest.raises(ValueError, match="shape"):
        pe.check_distances(good[:, :, :-1], T)
    with pytest.raises(ValueError, match="integer"):
        pe.check_distances(good.double(), T)
    with pytest.raises(ValueError, match=r"\[0, 2048\)"):
        pe.check_distances(good + 2048, T)
    bad = good.clone()
    bad[0, 1, 0] = 1
    with pytest.raises(ValueError, match="must be 0"):
        pe.check_distances(bad, T)
