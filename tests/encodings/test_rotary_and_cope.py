"""The rotary zoo (xpos, RoPE scaling) and CoPE against independent oracles.

Oracles: plain ``rope`` (xPos without decay, RoPE scaling at factor 1, bit for bit), complex-number
rotations with the xPos decay written from the paper, brute-force loops over CoPE's formula, NoPE
(CoPE at initialization), and Hugging Face's ``ROPE_INIT_FUNCTIONS`` for every scaling type.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from numerics import EPS32, EPS64, assert_close_f32, f32_atol, f64_atol, magnitude

from randpos.encodings import get_encoding
from randpos.encodings.base import EncodingShape, inverse_frequencies
from randpos.encodings.cope import CopeOptions
from randpos.encodings.rope import ROPE_SCALING_TYPES, RotaryOptions, rope_inverse_frequencies
from randpos.encodings.xpos import XPosEncoding
from randpos.model import ModelConfig, Transformer
from randpos.positions import randomized_positions

SHAPE = ModelConfig(max_position=2048, causal=True).encoding_shape()  # the reference's widths
B, H, T = 2, SHAPE.num_heads, 9
d = SHAPE.head_width
L = SHAPE.max_position


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def qk(batch=B, length=T, heads=H, width=d, seed=0, dtype=torch.float64):
    g = gen(seed)
    q = torch.randn(batch, heads, length, width, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, length, width, generator=g, dtype=dtype)
    return q, k


def positions(max_position=2048, seed=0, batch=B, length=T) -> torch.Tensor:
    return randomized_positions(batch, length, max_position, gen(seed), per_sequence=True)


def encoding(name: str, shape: EncodingShape = SHAPE, options=None, **kwargs):
    """``name`` for a model of ``shape`` with ``options`` (pe.NAME values), in float64."""
    cls = get_encoding(name)
    pe = cls(shape, cls.parse_options(options), **kwargs)
    pe.reset_parameters(gen())
    return pe.double()


def rope(options: RotaryOptions | None = None, shape: EncodingShape = SHAPE):
    return get_encoding("rope")(shape, options)


def scaled(kind, factor, **fields) -> RotaryOptions:
    return RotaryOptions(scaling=kind, factor=factor, **fields)


def scores(pe, q, k, pos) -> torch.Tensor:
    rq, rk = pe.rotate(q, k, pos, 0)
    return rq @ rk.transpose(-1, -2)  # (B, H, T, T)


def build_model(pe: str, seed: int = 0, **overrides) -> Transformer:
    small = {"num_layers": 2, "width": 32, "num_heads": 4, "ff_width": 64, "max_position": 64}
    fields = {"pe": pe, "causal": True, **small, **overrides}  # head width 8, as SHAPE
    return Transformer(ModelConfig(**fields), generator=gen(seed))


def model_inputs(seed=0, batch=B, length=T, max_position=64):
    g = gen(seed)
    tokens = torch.randint(0, 3, (batch, length), generator=g)
    return tokens, randomized_positions(batch, length, max_position, g, per_sequence=True)


# --- rounding bounds ---------------------------------------------------------------------------
# float32 models (build_model): two forwards along different code paths differ by up to EPS32 x
# 2 layers x sqrt(64) (the feed-forward width, the longest dot product) x max|logit|.
MODEL_DEPTH, MODEL_WIDTH = 2, 64
# float64 encodings and oracles: numerics.f32_atol's bound in float64, EPS64 x depth x
# sqrt(width) x scale. An angle p theta of a position p < 2048 (theta <= 1) carries an error of
# ~EPS64 x 2048 (theta from a pow, the product), so what is built from its cosine and sine is off
# by up to EPS64 x 2048 x its size: such scales include ANGLE.
ANGLE = 2048.0


def score_terms(rq: torch.Tensor, rk: torch.Tensor) -> float:
    """max over pairs of sum_c |rq_c rk_c|: the size of the terms of the scores rq . rk."""
    return magnitude(rq.abs() @ rk.abs().transpose(-1, -2))


# --- causal-only and capability flags ----------------------------------------------------------


@pytest.mark.parametrize("name", ["xpos", "cope"])
def test_causal_only_encodings_refuse_bidirectional_models(name):
    cls = get_encoding(name)
    assert cls.causal_only
    with pytest.raises(ValueError, match=f"^{name} is causal-only: set causal=true"):
        cls(dataclasses.replace(SHAPE, causal=False))
    with pytest.raises(ValueError, match="causal"):
        Transformer(ModelConfig(pe=name))
    Transformer(ModelConfig(pe=name, causal=True, num_layers=1))  # fine when causal


def test_capabilities():
    xpos, cope, rope = (get_encoding(n) for n in ("xpos", "cope", "rope"))
    assert xpos.randomizable and xpos.float_positions and not xpos.uses_distances
    assert not cope.randomizable and not cope.uses_distances
    assert rope.float_positions and not rope.causal_only
    assert encoding("xpos").has_rotate and not encoding("xpos").has_bias
    assert encoding("cope").has_bias and not encoding("cope").has_rotate
    assert sum(p.numel() for p in encoding("xpos").parameters()) == 0


# --- xpos --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["int", "float"])
def test_xpos_without_decay_is_rope_bit_for_bit(dtype, kind):
    plain = rope()
    # zeta^0 = 1 exactly (IEEE pow(x, +-0) = 1 in every kernel), and x * 1, x / 1 are exact
    flat = XPosEncoding(SHAPE, scale_base=math.inf)
    q, k = qk(dtype=dtype)
    pos = positions() if kind == "int" else positions().double() + 0.37
    for got, want in zip(flat.rotate(q, k, pos, 0), plain.rotate(q, k, pos, 0), strict=True):
        assert torch.equal(got, want)
    # and whole models: same weights, same logits, bit for bit
    tokens, pos = model_inputs()
    a, b = build_model("xpos").eval(), build_model("rope").eval()
    a.pe = XPosEncoding(a.config, scale_base=math.inf)
    assert torch.equal(a(tokens, pos), b(tokens, pos))


def xpos_oracle(x: torch.Tensor, p: float, center: float, sign: int, base=512.0, gamma=0.4):
    """One (d,) vector: pair m as a complex number times e^{i p theta_m} zeta_m^{sign (p-c)/S},
    zeta_m from torchscale's (2m + gamma d) / ((1 + gamma) d)."""
    width = x.shape[-1]
    z = torch.view_as_complex(x.reshape(-1, 2).contiguous())
    out = []
    for m in range(width // 2):
        theta = 10000 ** (-2 * m / width)
        zeta = (2 * m + gamma * width) / ((1 + gamma) * width)
        angle = p * theta
        out.append(
            z[m] * complex(math.cos(angle), math.sin(angle)) * zeta ** (sign * (p - center) / base)
        )
    return torch.view_as_real(torch.stack(out)).reshape(-1)


@pytest.mark.numerics
def test_xpos_matches_closed_form():
    pe = encoding("xpos")
    assert pe.center == 1024.0
    q, k = qk(batch=1, length=5)
    pos = torch.tensor([[0.0, 3.0, 700.5, 1500.0, 2047.0]], dtype=torch.float64)
    rq, rk = pe.rotate(q, k, pos, 0)
    for h in (0, 5):
        for t in range(5):
            p = float(pos[0, t])
            for got, x, sign in ((rq, q, +1), (rk, k, -1)):
                want = xpos_oracle(x[0, h, t], p, 1024.0, sign)
                # rotated by an angle < 2048, scaled by a pow: EPS64 x 4 x 2048 x max|value|
                atol = f64_atol(ANGLE * magnitude(want), depth=4)
                torch.testing.assert_close(got[0, h, t], want, atol=atol, rtol=0)


@pytest.mark.numerics
def test_xpos_scores_are_shift_invariant():
    pe = encoding("xpos")
    q, k = qk()
    pos = positions(max_position=1000)

    def atol(at):  # angles < 2048, then 8-term sums: EPS64 x 4 x 2048 x sum_c |rq_c rk_c|
        return f64_atol(ANGLE * score_terms(*pe.rotate(q, k, at, 0)), depth=4)

    base = scores(pe, q, k, pos)
    for shift in (1, 500, 1047):
        torch.testing.assert_close(scores(pe, q, k, pos + shift), base, rtol=0, atol=atol(pos))
    floats = pos.double() * 0.9 + 0.25
    want = scores(pe, q, k, floats)
    torch.testing.assert_close(scores(pe, q, k, floats + 321.5), want, rtol=0, atol=atol(floats))


@pytest.mark.numerics
def test_xpos_decays_by_zeta_per_pair():
    """A probe with one nonzero pair m: the xpos score is the rope score times
    zeta_m^((p_i - p_j) / 512), zeta_m < 1, so past keys are damped more the farther they are."""
    xpos, rope = encoding("xpos"), encoding("rope")
    pos = torch.tensor([[10, 37, 300, 900, 1801]])
    delta = (pos.unsqueeze(-1) - pos.unsqueeze(-2)).double()  # (1, T, T): p_i - p_j
    for m in (0, 1, d // 2 - 1):
        q = torch.zeros(1, 1, 5, d, dtype=torch.float64)
        q[..., 2 * m], q[..., 2 * m + 1] = 1.0, 0.5
        zeta = (m / (d // 2) + 0.4) / 1.4
        assert 0 < zeta < 1
        decay = zeta ** (delta / 512)
        # the same angles; the scales (a pow each, exact exponents) enter through products and
        # the rotation's differences: 8 roundings of terms of size 2 |q|^2 max(decay)
        atol = f64_atol(2 * (q[0, 0, 0] ** 2).sum() * magnitude(decay), depth=8)
        torch.testing.assert_close(
            scores(xpos, q, q, pos), scores(rope, q, q, pos) * decay, atol=atol, rtol=0
        )


# --- cope --------------------------------------------------------------------------------------


def cope_with_table(npos=None, seed=1, scale=0.5):
    pe = encoding("cope", options={"npos": npos})
    with torch.no_grad():
        pe.table.copy_(
            torch.randn(pe.table.shape, generator=gen(seed), dtype=torch.float64) * scale
        )
    return pe


def test_cope_table_and_npos():
    pe = encoding("cope")
    assert pe.table.shape == (SHAPE.num_layers, d, SHAPE.max_position + 1)
    assert torch.equal(pe.table, torch.zeros_like(pe.table))
    assert encoding("cope", options={"npos": 16}).table.shape[-1] == 16
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="pe.npos"):
            get_encoding("cope").parse_options({"npos": bad})
        with pytest.raises(ValueError, match="pe.npos"):
            CopeOptions(npos=bad)


def cope_brute_force(pe, q, k, layer=0) -> list:
    """Plain-Python floats, straight from the paper's formula; [b][h][i][j] for j <= i."""
    width = q.shape[-1]
    table = pe.table[layer].tolist()  # (d, P)
    cap = pe.npos - 1
    out = []
    for b in range(q.shape[0]):
        per_head = []
        for h in range(q.shape[1]):
            qs, ks = q[b, h].tolist(), k[b, h].tolist()
            rows = []
            for i in range(len(qs)):
                dot = [sum(x * y for x, y in zip(qs[i], ks[j], strict=True)) for j in range(i + 1)]
                gates = [1 / (1 + math.exp(-v / math.sqrt(width))) for v in dot]
                row = []
                z = [
                    sum(qs[i][c] * table[c][t] for c in range(width))
                    for t in range(min(cap, i + 1) + 1)
                ]
                for j in range(i + 1):
                    p = min(sum(gates[j : i + 1]), cap)
                    lo, hi = math.floor(p), math.ceil(p)
                    row.append(((p - lo) * z[hi] + (1 - (p - lo)) * z[lo]) / math.sqrt(width))
                rows.append(row)
            per_head.append(rows)
        out.append(per_head)
    return out


@pytest.mark.numerics
@pytest.mark.parametrize("chunk", [None, 1, 13])
@pytest.mark.parametrize("npos", [None, 3])
def test_cope_matches_brute_force(npos, chunk, monkeypatch):
    """Also with the query rows in chunks (down to one row per chunk): the same numbers."""
    if chunk is not None:
        monkeypatch.setattr("randpos.encodings.cope.COPE_CHUNK_ELEMENTS", chunk)
    pe = cope_with_table(npos)
    q, k = qk(batch=2, length=6)
    for layer in (0, 3):
        got = pe.bias(q, k, positions(length=6), layer)  # (B, H, T, T)
        want = cope_brute_force(pe, q, k, layer)
        # z = q . e / sqrt(d) sums 8 terms of size <= zt; p sums up to 6 gates, each within
        # EPS64 (1 + sum_c |q_c k_c| / sqrt(d) / 4) (sigmoid's slope <= 1/4), and an error in p
        # moves b by up to 2 zt: EPS64 x 2 x 6 x sqrt(8) x zt x (1 + the q . k terms / 4)
        zt = magnitude(q.abs() @ pe.table[layer].abs()) / math.sqrt(d)
        qk_terms = score_terms(q, k) / math.sqrt(d)
        atol = f64_atol(zt * (1 + qk_terms / 4), depth=2 * 6, width=d)
        for b in range(2):
            for h in range(H):
                for i in range(6):
                    for j in range(i + 1):
                        assert got[b, h, i, j].item() == pytest.approx(want[b][h][i][j], abs=atol)


def test_cope_with_open_gates_is_a_relative_table():
    """All gates 1 (q . k huge): p_ij = i - j + 1, an exact lookup of e (clamped to npos - 1)."""
    pe = cope_with_table(5)
    q = torch.full((1, H, T, d), 30.0, dtype=torch.float64)
    # sigmoid(2546) is exactly 1 (exp(-2546) underflows to 0), so the positions are integers
    torch.testing.assert_close(
        pe.context_positions(q, q)[0, 0],
        torch.tensor(
            [[min(i - j + 1, 4) if j <= i else 0 for j in range(T)] for i in range(T)],
            dtype=torch.float64,
        ),
        rtol=0,
        atol=0,
    )
    bias = pe.bias(q, q, positions(), 2)
    z = q @ pe.table[2] / math.sqrt(d)  # (1, H, T, P)
    # interpolation weights exactly 0 and 1 of the same product q @ e: bit for bit
    for i in range(T):
        for j in range(i + 1):
            assert torch.equal(bias[0, :, i, j], z[0, :, i, min(i - j + 1, 4)])


def test_cope_ignores_positions():
    pe = cope_with_table()
    q, k = qk()
    a = pe.bias(q, k, positions(seed=1), 0)
    assert torch.equal(a, pe.bias(q, k, positions(seed=2), 0))
    assert torch.equal(a, pe.bias(q, k, positions(seed=2).double() + 0.5, 0))
    m = build_model("cope").eval()
    tokens, pos = model_inputs()
    assert torch.equal(m(tokens, pos), m(tokens, torch.arange(T).expand(B, T)))


def test_cope_gradient_reaches_the_gates():
    pe = cope_with_table()
    q, k = qk()
    k.requires_grad_(True)  # k enters only through the gates, hence through p
    pe.bias(q, k, positions(), 0).tril().square().sum().backward()
    assert bool(k.grad.abs().sum() > 0) and bool(torch.isfinite(k.grad).all())


@pytest.mark.numerics
@pytest.mark.parametrize("attention", ["math", "fast"])
def test_cope_at_initialisation_equals_none(attention):
    nope = build_model("none", attention=attention, seed=3)
    cope = build_model("cope", attention=attention, seed=5)
    missing, unexpected = cope.load_state_dict(nope.state_dict(), strict=False)
    assert missing == ["pe.table"] and unexpected == []
    assert torch.equal(cope.pe.table, torch.zeros_like(cope.pe.table))
    tokens, pos = model_inputs()
    exact = attention == "math"  # math path: a zero bias is added, the logits are unchanged
    for train in (False, True):
        nope.train(train)
        cope.train(train)
        a, b = cope(tokens, pos, generator=gen(7)), nope(tokens, pos, generator=gen(7))
        if exact:
            assert torch.equal(a, b)
        else:  # SDPA with a float mask vs its causal kernel
            assert_close_f32(a, b, depth=MODEL_DEPTH, width=MODEL_WIDTH)
    a.square().mean().backward()  # the table learns from the first step
    assert bool(cope.pe.table.grad.abs().sum() > 0)


def test_cope_never_materializes_a_pair_by_width_tensor():
    """No (B, H, T, T, d) or (B, T, T, d) intermediate: q . e is (B, H, T, P), then gathered."""
    from torch.overrides import TorchFunctionMode

    length, npos = 24, 8
    pe = cope_with_table(npos)
    q, k = qk(length=length)
    largest = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple) else (out,):
                if isinstance(t, torch.Tensor):
                    largest.append(t.numel())
            return out

    with Record():
        pe.bias(q, k, positions(length=length), 0)
    assert len(largest) > 5  # the mode saw the computation
    assert max(largest) <= B * H * length * max(length, npos)


@pytest.mark.numerics
@pytest.mark.parametrize("pe", ["cope", "xpos", "rope"])
def test_causal_fast_path_equals_math_path(pe):
    fast = build_model(pe, attention="fast").eval()
    math_ = build_model(pe, attention="math").eval()
    if pe == "cope":  # a nonzero table, so the bias matters
        for m in (fast, math_):
            with torch.no_grad():
                m.pe.table.copy_(torch.randn(m.pe.table.shape, generator=gen(4)))
    tokens, pos = model_inputs()
    with torch.no_grad():
        want = math_(tokens, pos)
        assert_close_f32(fast(tokens, pos), want, depth=MODEL_DEPTH, width=MODEL_WIDTH)
    # causal: later tokens never change earlier outputs
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 3
    with torch.no_grad():
        got, want = fast(changed, pos)[:, :5], fast(tokens, pos)[:, :5]
        assert_close_f32(got, want, depth=MODEL_DEPTH, width=MODEL_WIDTH)


# --- RoPE scaling: defaults, exactness, validation ---------------------------------------------


def test_rope_scaling_defaults():
    c = RotaryOptions()
    assert (c.theta, c.scaling, c.factor) == (10000.0, "none", 1.0)
    assert (c.original_max_position_embeddings, c.attention_factor) == (None, None)
    assert (c.beta_fast, c.beta_slow, c.low_freq_factor, c.high_freq_factor) == (32, 1, 1, 4)
    assert ROPE_SCALING_TYPES == ("none", "linear", "ntk", "dynamic", "yarn", "llama3")


def committed_rope(q, k, pos):
    """The rotation as committed before RoPE scaling existed (a verbatim-semantics copy)."""
    width = q.shape[-1]
    angles = pos.to(torch.float64).unsqueeze(-1) * inverse_frequencies(width // 2, width)
    cos, sin = angles.cos().to(q.dtype).unsqueeze(1), angles.sin().to(q.dtype).unsqueeze(1)

    def rot(x):
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)

    return rot(q), rot(k)


@pytest.mark.parametrize(
    "scaling", [("none", 1.0), ("linear", 1.0), ("ntk", 1.0), ("dynamic", 1.0), ("dynamic", 8.0)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_scalings_are_plain_rope_bit_for_bit(scaling, dtype):
    # dynamic at any factor leaves RoPE unchanged while every position < L0 (= max_position here)
    # factor 1: x / 1, pow(1, y) = 1 and base * 1 are exact (IEEE), so the same numbers
    kind, factor = scaling
    options = RotaryOptions(scaling=kind, factor=factor)
    pe = rope(options, dataclasses.replace(SHAPE, num_heads=4))  # head width 16
    q, k = qk(dtype=dtype, width=16, heads=4)
    pos = positions()
    pos[0, -1] = 2047  # the largest position allowed: seq_len = 2048 = L0
    for got, want in zip(pe.rotate(q, k, pos, 0), committed_rope(q, k, pos), strict=True):
        assert torch.equal(got, want)
    inv, factor = rope_inverse_frequencies(16, options, L, seq_len=2048)
    assert torch.equal(inv, inverse_frequencies(8, 16)) and factor == 1.0


def test_linear_scaling_is_position_interpolation():
    pe, plain = rope(scaled("linear", 4.0)), rope()
    q, k = qk()
    pos = positions()
    # p (theta / 4) and (p / 4) theta: dividing by 4 is exact, so the angles are the same
    # numbers and so is everything after them
    for got, want in zip(pe.rotate(q, k, pos, 0), plain.rotate(q, k, pos / 4.0, 0), strict=True):
        assert torch.equal(got, want)


def test_ntk_endpoints_and_test_vectors():
    inv, _ = rope_inverse_frequencies(128, scaled("ntk", 2.0), L)
    plain = inverse_frequencies(64, 128)
    assert inv[0].item() == 1.0
    # (base s^(d/(d-2)))^e / base^e = 1/s for e = -(d-2)/d: s^(d/(d-2)) (a pow of a rounded
    # exponent), the product, two pows and the division, each within an ulp: 8 EPS64
    assert (inv[-1] / plain[-1]).item() == pytest.approx(0.5, rel=8 * EPS64)  # last pair: 1/s
    # the notes' base' has 7 digits (+-0.005), which the power -2/128 shrinks
    rel = 0.005 / 20221.26 * 2 / 128
    assert inv[1].item() == pytest.approx(20221.26 ** (-2 / 128), rel=rel)  # base' (notes §8)


def test_dynamic_test_vector_and_threshold():
    config = scaled("dynamic", 2.0, original_max_position_embeddings=2048)
    inv, _ = rope_inverse_frequencies(128, config, L, seq_len=8192)
    # the notes' base has 7 digits (+-0.005), which the power -2/128 shrinks
    assert inv[1].item() == pytest.approx(72195.86 ** (-2 / 128), rel=0.005 / 72195.86 * 2 / 128)
    for seq_len in (None, 1, 2048, torch.tensor(2048)):  # unchanged while l <= L0
        assert torch.equal(
            rope_inverse_frequencies(128, config, L, seq_len)[0], inverse_frequencies(64, 128)
        )
    # the encoding uses max(positions) + 1, a tensor (no device sync)
    pe = rope(config)
    pos = torch.tensor([[0, 5, 4000]])
    assert torch.equal(pe.frequencies(pos)[0], rope_inverse_frequencies(d, config, L, 4001)[0])


def test_yarn_test_vector():
    config = scaled("yarn", 4.0, original_max_position_embeddings=4096)
    inv, factor = rope_inverse_frequencies(128, config, L)
    plain = inverse_frequencies(64, 128)
    assert factor == pytest.approx(1.1386294, rel=0.5e-7 / 1.1386294)  # 8 digits given
    # outside the ramp the blend weights are exactly 0 and 1, the division by s = 4 is exact and
    # inv's pow is plain's: the ratios are exactly 1 and 1/4
    assert inv[0].item() == 1.0 and (inv[63] / plain[63]).item() == 0.25
    ratio = inv / plain
    assert torch.equal(ratio[:21], torch.ones(21, dtype=torch.float64))  # pairs <= low = 20
    assert torch.equal(ratio[46:], torch.full((18,), 0.25, dtype=torch.float64))  # >= high
    assert bool(((ratio[21:46] < 1) & (ratio[21:46] > 0.25)).all())
    explicit = rope_inverse_frequencies(128, dataclasses.replace(config, attention_factor=1.5), L)
    assert explicit[1] == 1.5 and torch.equal(explicit[0], inv)


def test_llama3_test_vector():
    config = scaled("llama3", 8.0, theta=500000.0, original_max_position_embeddings=8192)
    inv, factor = rope_inverse_frequencies(128, config, L)
    ratio = inv / torch.pow(500000.0, -2.0 * torch.arange(64, dtype=torch.float64) / 128)
    kept, divided = ratio == 1.0, (ratio - 0.125).abs() < 1e-15
    smoothed = ~(kept | divided)
    assert (int(kept.sum()), int(smoothed.sum()), int(divided.sum())) == (29, 6, 29)
    assert int(smoothed.nonzero()[0]) == 29 and factor == 1.0


@pytest.mark.numerics
def test_attention_factor_scales_cos_and_sin():
    config = scaled("yarn", 16.0, original_max_position_embeddings=512)
    pe = rope(config)
    inv, factor = rope_inverse_frequencies(d, config, L)
    assert factor == pytest.approx(0.1 * math.log(16) + 1)
    q, k = qk()
    pos = positions()
    rq, rk = pe.rotate(q, k, pos, 0)
    angles = pos.double().unsqueeze(-1) * inv
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
    z = torch.view_as_complex(q.unflatten(-1, (-1, 2)).contiguous()) * torch.complex(cos, sin)
    # the same angles here (< 2048) and in the encoding; cos, sin, the complex product and the
    # factor each within an ulp: EPS64 x 4 x factor sqrt(2) max|q|
    atol = f64_atol(factor * 2**0.5 * magnitude(q), depth=4)
    torch.testing.assert_close(rq, torch.view_as_real(z).flatten(-2) * factor, atol=atol, rtol=0)
    # so the logits scale by factor^2 against the same frequencies without the factor
    unscaled = rope(config)
    unscaled.frequencies = lambda p: (inv, 1.0)
    # same angles; the factors' products and the 8-term sums round otherwise
    want = scores(unscaled, q, k, pos) * factor**2
    atol = f64_atol(factor**2 * score_terms(*unscaled.rotate(q, k, pos, 0)), depth=4, width=d)
    torch.testing.assert_close(scores(pe, q, k, pos), want, atol=atol, rtol=0)
    assert rk.shape == k.shape


@pytest.mark.parametrize(
    ("field", "value", "others"),
    [
        ("scaling", "ntk-aware", {}),
        ("factor", 0.5, {"scaling": "linear"}),
        ("factor", 2.0, {}),  # no effect with scaling="none"
        ("theta", 0.0, {}),
        ("theta", float("nan"), {}),
        ("original_max_position_embeddings", 0, {"scaling": "yarn"}),
        ("beta_fast", 0.5, {"scaling": "yarn"}),
        ("beta_slow", -1.0, {"scaling": "yarn"}),
        ("low_freq_factor", "one", {"scaling": "llama3"}),
        ("high_freq_factor", 0.5, {"scaling": "llama3"}),
        ("attention_factor", -1.0, {"scaling": "yarn"}),
        ("attention_factor", 1.2, {"scaling": "linear"}),
    ],
)
@pytest.mark.parametrize("pe", ["rope", "xpos"])
def test_bad_rope_fields_name_the_field(pe, field, value, others):
    config = ModelConfig(pe=pe, causal=True, num_layers=1, pe_options={**others, field: value})
    with pytest.raises(ValueError, match=f"^pe.{field}[=\\s]") as info:
        Transformer(config)
    assert "\n" not in str(info.value)


def test_head_width_two_refuses_ntk():
    with pytest.raises(ValueError, match="num_heads: the head width 2"):
        Transformer(ModelConfig(pe="rope", width=16, num_heads=8, pe_options={"scaling": "ntk"}))


@pytest.mark.parametrize("kind", ["linear", "ntk", "dynamic", "yarn", "llama3"])
def test_scaled_models_run_and_xpos_shares_the_scaling(kind):
    options = {"scaling": kind, "factor": 4.0, "original_max_position_embeddings": 16}
    m = build_model("rope", pe_options=options).eval()
    tokens, pos = model_inputs()
    out = m(tokens, pos)
    assert bool(torch.isfinite(out).all())
    plain = build_model("rope").eval()(tokens, pos)
    rounding = f32_atol(plain, depth=MODEL_DEPTH, width=MODEL_WIDTH)
    assert float((out - plain).detach().abs().max()) > 100 * rounding
    flat = XPosEncoding(m.config.encoding_shape(), m.pe.options, scale_base=math.inf)
    q, k = qk(dtype=torch.float32)
    for got, want in zip(flat.rotate(q, k, pos, 0), m.pe.rotate(q, k, pos, 0), strict=True):
        assert torch.equal(got, want)


# --- RoPE scaling: Hugging Face oracle ---------------------------------------------------------

FACTORS = (1.0, 2.0, 4.0, 8.0, 16.0)
HEAD_WIDTHS = (8, 16, 64, 128)
L0 = 4096


def hf_rope(kind: str, factor: float, head_width: int, theta: float, seq_len=None, **extra):
    """HF's (inv_freq, attention_factor) for a tiny LlamaConfig (no weights), any 4.45+ API.

    The config is built so that every HF version reads the same numbers: ``rope_scaling`` is
    accepted by the old layout (``config.rope_scaling``) and converted to ``rope_parameters``
    by the new one; yarn takes L0 from ``max_position_embeddings`` (the versions that prefer
    ``original_max_position_embeddings`` default it to that); llama3 reads it from the dict.
    """
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    transformers.logging.set_verbosity_error()
    rope = {"rope_type": kind, "factor": factor, **extra}
    max_positions = L0
    if kind == "llama3":
        rope.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=L0)
        max_positions = int(2 * factor * L0)  # above L0, as HF's validation wants
    config = transformers.LlamaConfig(
        hidden_size=2 * head_width,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=8,
        num_hidden_layers=1,
        vocab_size=8,
        max_position_embeddings=max_positions,
        rope_theta=theta,
        rope_scaling=rope,
    )
    if kind == "default":
        init = ROPE_INIT_FUNCTIONS.get("default")  # gone from the table in transformers 5
        if init is None:
            from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

            init = LlamaRotaryEmbedding.compute_default_rope_parameters
    else:
        init = ROPE_INIT_FUNCTIONS[kind]
    inv_freq, attention_factor = init(config, device=torch.device("cpu"), seq_len=seq_len)
    return inv_freq, float(attention_factor)


def ours(kind, factor, head_width, theta, seq_len=None, **fields):
    options = RotaryOptions(
        scaling=kind, factor=factor, theta=theta, original_max_position_embeddings=L0, **fields
    )
    return rope_inverse_frequencies(head_width, options, 65536, seq_len)


def assert_same(mine, theirs):
    (inv, factor), (hf_inv, hf_factor) = mine, theirs
    assert inv.dtype == torch.float64 and inv.shape == hf_inv.shape
    # HF computes in float32: its pow (within an ulp), reciprocal and the yarn / llama3 blends
    # round up to ~7 times, ours once when cast: rtol 8 EPS32, no absolute slack
    torch.testing.assert_close(inv.to(hf_inv.dtype), hf_inv, rtol=8 * EPS32, atol=0.0)
    # the attention factor: the same Python-float formula (0.1 ln s + 1) on both sides
    assert factor == pytest.approx(hf_factor, rel=4 * EPS64)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("head_width", HEAD_WIDTHS)
def test_hf_oracle_none_linear_llama3(head_width, theta):
    assert_same(ours("none", 1.0, head_width, theta), hf_rope("default", 1.0, head_width, theta))
    for factor in FACTORS:
        for kind in ("linear", "llama3"):
            mine = ours(kind, factor, head_width, theta)
            assert_same(mine, hf_rope(kind, factor, head_width, theta))


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("head_width", HEAD_WIDTHS)
def test_hf_oracle_yarn(head_width, theta):
    for factor in FACTORS:
        assert_same(
            ours("yarn", factor, head_width, theta), hf_rope("yarn", factor, head_width, theta)
        )
        for fields in ({"beta_fast": 16.0, "beta_slow": 2.0}, {"attention_factor": 1.25}):
            mine = ours("yarn", factor, head_width, theta, **fields)
            assert_same(mine, hf_rope("yarn", factor, head_width, theta, **fields))


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("head_width", HEAD_WIDTHS)
def test_hf_oracle_dynamic(head_width, theta):
    for factor in FACTORS:
        for seq_len in (None, 17, L0, L0 + 1, 3 * L0 + 5, 20 * L0):
            mine = ours("dynamic", factor, head_width, theta, seq_len)
            assert_same(mine, hf_rope("dynamic", factor, head_width, theta, seq_len=seq_len))
        tensor = torch.tensor(3 * L0 + 5)  # as the encoding passes it
        assert_same(
            ours("dynamic", factor, head_width, theta, tensor),
            hf_rope("dynamic", factor, head_width, theta, seq_len=3 * L0 + 5),
        )


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("head_width", HEAD_WIDTHS)
def test_hf_oracle_static_ntk_through_dynamic(head_width, theta):
    """HF has no static NTK type; its dynamic formula at l = L0 (2s - 1) / s has
    s l / L0 - (s - 1) = s exactly, i.e. base * s^(d/(d-2)): the static NTK base."""
    for factor in FACTORS:
        seq_len = int(L0 * (2 * factor - 1) / factor)
        assert seq_len == L0 * (2 * factor - 1) / factor  # exact for these factors
        mine = ours("ntk", factor, head_width, theta)
        assert_same(mine, hf_rope("dynamic", factor, head_width, theta, seq_len=seq_len))


# --- scaling at test time only (train_scaling=False) -----------------------------------------


def test_scaling_at_test_time_only_is_plain_rope_in_training_and_scaled_in_eval():
    """``train_scaling=False``: in training mode the rotation is plain RoPE's with the same
    base (bit for bit: the same code on the same options), in eval mode the scaled one's."""
    yarn = dict(scaling="yarn", factor=16.0, original_max_position_embeddings=128)
    test_time = rope(RotaryOptions(theta=500.0, train_scaling=False, **yarn)).double()
    always, plain = rope(RotaryOptions(theta=500.0, **yarn)), rope(RotaryOptions(theta=500.0))
    q, k = qk()
    pos = positions()
    test_time.train()
    for got, want in zip(test_time.rotate(q, k, pos, 0), plain.rotate(q, k, pos, 0), strict=True):
        assert torch.equal(got, want)
    test_time.eval()
    for got, want in zip(test_time.rotate(q, k, pos, 0), always.rotate(q, k, pos, 0), strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="pe.train_scaling"):
        RotaryOptions(train_scaling=False)  # nothing to apply at test time
    with pytest.raises(ValueError, match="pe.train_scaling"):
        encoding("rope2d_axial", options={"train_scaling": False, **yarn})
